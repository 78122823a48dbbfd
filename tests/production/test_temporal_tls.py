"""Production Temporal connections: TLS, mTLS and clear errors, against the dev server behind a
TLS-terminating proxy (``temporal server start-dev`` cannot serve TLS itself)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from domain.settings import Settings
from infra.temporal import TemporalConfigError, connect_temporal
from tests.production.tls import ThrowawayCA


def dev_port(env: WorkflowEnvironment) -> int:
    return int(env.client.service_client.config.target_host.rsplit(":", 1)[1])


def temporal_settings(address: str, namespace: str, **values: Any) -> Settings:
    return Settings(_env_file=None, environment="test", temporal_address=address, temporal_namespace=namespace,
                    **values)


async def test_tls_with_the_servers_ca_reaches_temporal_and_plaintext_does_not(
    dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], ca: ThrowawayCA
) -> None:
    proxy = await tls_proxy(dev_port(dev_env), alpn=("h2",))
    ns = dev_env.client.namespace
    client = await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path))
    # A real round trip through TLS: the namespace answers a visibility query.
    assert await client.count_workflows(f"WorkflowId = 'nothing-{uuid.uuid4()}'") is not None
    assert proxy.handshakes >= 1

    with pytest.raises(RuntimeError):  # no TLS configured: the TLS-only endpoint is unusable
        await connect_temporal(temporal_settings(proxy.address, ns), wait_s=1)


async def test_mtls_needs_the_client_certificate(
    dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], ca: ThrowawayCA, other_ca: ThrowawayCA
) -> None:
    proxy = await tls_proxy(dev_port(dev_env), alpn=("h2",), client_ca=ca.cert_path)
    ns = dev_env.client.namespace
    mine = ca.issue("worker-client", server=False)
    client = await connect_temporal(temporal_settings(
        proxy.address, ns, temporal_tls_ca=ca.cert_path, temporal_tls_cert=mine.cert, temporal_tls_key=mine.key,
    ))
    assert await client.count_workflows(f"WorkflowId = 'nothing-{uuid.uuid4()}'") is not None

    stranger = other_ca.issue("stranger", server=False)
    for values in ({}, {"temporal_tls_cert": stranger.cert, "temporal_tls_key": stranger.key}):
        started = time.monotonic()
        with pytest.raises(TemporalConfigError, match=r"refused the TLS connection.*TEMPORAL_TLS_CERT"):
            await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path, **values))
        # Refused credentials fail at once with the settings to check, not after the 60 s start-up wait.
        assert time.monotonic() - started < 20


async def test_a_server_certificate_from_another_ca_fails_at_once_and_clearly(
    dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], other_ca: ThrowawayCA
) -> None:
    proxy = await tls_proxy(dev_port(dev_env), alpn=("h2",))
    started = time.monotonic()
    with pytest.raises(TemporalConfigError, match=r"UnknownIssuer.*Check TEMPORAL_TLS_CA"):
        await connect_temporal(temporal_settings(proxy.address, dev_env.client.namespace,
                                                 temporal_tls_ca=other_ca.cert_path))
    assert time.monotonic() - started < 20
    assert proxy.handshakes == 0


async def test_unreadable_or_inconsistent_tls_settings_are_named(tmp_path: Any) -> None:
    with pytest.raises(TemporalConfigError, match=r"TEMPORAL_TLS_CA: cannot read .*missing\.pem"):
        await connect_temporal(temporal_settings("127.0.0.1:1", "default", temporal_tls_ca=tmp_path / "missing.pem"))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(TemporalConfigError, match=r"TEMPORAL_TLS_CA: .* is not a PEM file"):
        await connect_temporal(temporal_settings("127.0.0.1:1", "default", temporal_tls_ca=not_pem))
    with pytest.raises(ValueError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        temporal_settings("127.0.0.1:1", "default", temporal_tls_cert=not_pem)
    with pytest.raises(ValueError, match="TEMPORAL_TLS=false contradicts"):
        temporal_settings("127.0.0.1:1", "default", temporal_tls=False, temporal_tls_ca=not_pem)


@pytest.mark.parametrize("command", ["worker", "connector"])
async def test_a_process_with_refused_certificates_exits_78_naming_the_setting(
    command: str, dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], other_ca: ThrowawayCA, tmp_path: Any
) -> None:
    """Exit 78 is what the systemd units do not restart on (RestartPreventExitStatus=78)."""
    proxy = await tls_proxy(dev_port(dev_env), alpn=("h2",))
    env = {
        "PATH": os.environ["PATH"], "TEMPORAL_ADDRESS": proxy.address, "TEMPORAL_TLS_CA": str(other_ca.cert_path),
        "DATA_DIR": str(tmp_path), "WA_TRANSPORT": "simulator", "ENVIRONMENT": "test",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", command, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 78, out.decode()
    assert "TEMPORAL_TLS_CA" in out.decode() and "Traceback" not in out.decode()


async def test_the_api_key_goes_with_every_request_over_tls(
    dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], ca: ThrowawayCA
) -> None:
    """Temporal Cloud's API-key mode: TLS, and ``authorization: Bearer <key>`` on each call."""
    key = f"cloud-key-{uuid.uuid4().hex}"
    proxy = await tls_proxy(dev_port(dev_env), alpn=("h2",), bearer=key)
    ns = dev_env.client.namespace
    client = await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path,
                                                      temporal_api_key=key))
    assert await client.count_workflows(f"WorkflowId = 'nothing-{uuid.uuid4()}'") is not None
    assert proxy.authorized_requests >= 2  # the connect's system-info call, then the query

    with pytest.raises(RuntimeError):
        client = await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path,
                                                          temporal_api_key="someone-elses-key"), wait_s=2)
        await client.count_workflows()
    assert proxy.refused >= 1


async def test_server_name_verifies_a_certificate_issued_for_another_host(
    dev_env: WorkflowEnvironment, tls_proxy: Callable[..., Any], ca: ThrowawayCA
) -> None:
    """TEMPORAL_TLS_SERVER_NAME: dialled by address, the frontend's certificate names temporal.internal."""
    proxy = await tls_proxy(dev_port(dev_env), hosts=("temporal.internal",), alpn=("h2",))
    ns = dev_env.client.namespace
    client = await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path,
                                                      temporal_tls_server_name="temporal.internal"))
    assert await client.count_workflows(f"WorkflowId = 'nothing-{uuid.uuid4()}'") is not None
    with pytest.raises(TemporalConfigError, match="TEMPORAL_TLS_SERVER_NAME"):
        await connect_temporal(temporal_settings(proxy.address, ns, temporal_tls_ca=ca.cert_path))
