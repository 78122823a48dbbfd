"""docs/deploy.md, followed as written: the three systemd units of deploy/systemd/ run against an
external Temporal, PostgreSQL and Redis (the test's own servers, each behind TLS like a production
cluster: mTLS to Temporal, sslmode=verify-full to PostgreSQL, rediss:// to Redis), configured by the
shared env file deploy/waorch.env.example plus the per-service overrides the guide describes.

Each process is started exactly as systemd would: the unit's ExecStart, WorkingDirectory,
Environment= and EnvironmentFile= (and nothing inherited); stopped with the unit's KillSignal,
within its TimeoutStopSec.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from cli.embedded import free_port
from tests.production.tls import ThrowawayCA

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SHARED_ENV = REPO / "deploy" / "waorch.env.example"
INSTALL_BIN = "/opt/waorch/.venv/bin/"  # where the guide installs the project
ADMIN_KEY = "deploy-test-admin-key-" + uuid.uuid4().hex


def read_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: KEY=VALUE lines, # and ; comments, optional quotes."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip().isidentifier(), f"{path}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclass
class Unit:
    name: str
    service: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Unit:
        unit = cls(path.stem)
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section == "Service":
                key, _, value = line.partition("=")
                unit.service.setdefault(key.strip(), []).append(value.strip())
        return unit

    def one(self, key: str) -> str:
        (value,) = self.service[key]
        return value

    def environment(self, etc: Path) -> dict[str, str]:
        """Environment= first, then each EnvironmentFile= in order (a later file wins), as systemd does."""
        env: dict[str, str] = {}
        for assignment in self.service.get("Environment", []):
            for word in shlex.split(assignment):
                key, _, value = word.partition("=")
                env[key] = value
        for entry in self.service.get("EnvironmentFile", []):
            optional = entry.startswith("-")
            path = etc / Path(entry.lstrip("-")).relative_to("/etc/waorch")
            if not path.exists():
                assert optional, f"{self.name}: {entry} is required and missing"
                continue
            env.update(read_env_file(path))
        return env


@dataclass
class Service:
    unit: Unit
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start(unit: Unit, etc: Path, state_dir: Path, logs: Path) -> Service:
    command = shlex.split(unit.one("ExecStart"))
    assert command[0].startswith(INSTALL_BIN), command
    command[0] = str(Path(sys.executable).parent / command[0].removeprefix(INSTALL_BIN))
    assert unit.one("WorkingDirectory") == "/var/lib/waorch"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **unit.environment(etc)}
    log = logs / f"{unit.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=state_dir, stdout=out, stderr=subprocess.STDOUT)
    return Service(unit, proc, log)


async def stop(service: Service) -> float:
    """systemctl stop: KillSignal, then wait up to TimeoutStopSec (systemd would SIGKILL after it)."""
    assert service.unit.one("KillSignal") == "SIGTERM"
    budget = float(service.unit.one("TimeoutStopSec"))
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(service.proc.wait, budget)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        raise AssertionError(f"{service.unit.name} ignored SIGTERM for {budget:.0f} s:\n{service.tail()}") from None
    return time.monotonic() - started


async def test_the_three_units_serve_health_and_a_send_against_external_servers(
    tmp_path: Path, dev_env: WorkflowEnvironment, database_dsn: str, redis_url: str,
    tls_proxy: Callable[..., Any], ca: ThrowawayCA,
) -> None:
    # External servers, reachable only through TLS.
    temporal_port = int(dev_env.client.service_client.config.target_host.rsplit(":", 1)[1])
    temporal = await tls_proxy(temporal_port, alpn=("h2",), client_ca=ca.cert_path)
    postgres = await tls_proxy(urlsplit(database_dsn).port, postgres=True)
    redis = await tls_proxy(urlsplit(redis_url).port)
    client_cert = ca.issue("waorch-client", server=False)

    # /etc/waorch: the guide's shared file with this site's values, and the per-service overrides.
    etc = tmp_path / "etc"
    etc.mkdir()
    shared = read_env_file(SHARED_ENV)
    db_name = urlsplit(database_dsn).path
    api_port, metrics_ports = free_port(), {name: free_port() for name in ("connector", "worker", "api")}
    site = {
        "TEMPORAL_ADDRESS": temporal.address,
        "TEMPORAL_NAMESPACE": dev_env.client.namespace,
        "TEMPORAL_CORE_QUEUE": f"deploy-core-{uuid.uuid4().hex[:8]}",
        "TEMPORAL_CONNECTOR_QUEUE": f"deploy-conn-{uuid.uuid4().hex[:8]}",
        "TEMPORAL_TLS_CA": str(ca.cert_path),
        "TEMPORAL_TLS_CERT": str(client_cert.cert),
        "TEMPORAL_TLS_KEY": str(client_cert.key),
        "DATABASE_URL": f"postgresql://postgres@localhost:{postgres.port}{db_name}"
                        f"?sslmode=verify-full&sslrootcert={ca.cert_path}",
        "REDIS_URL": f"rediss://localhost:{redis.port}/0?ssl_ca_certs={ca.cert_path}",
        "REDIS_PREFIX": f"deploy{uuid.uuid4().hex[:8]}:",
        "API_ADMIN_KEY": ADMIN_KEY,
        "PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "DATA_DIR": str(tmp_path / "state"),
        "WA_TRANSPORT": "simulator",
    }
    assert set(site) - {"WA_TRANSPORT"} <= set(shared), "the example env file lacks a setting the guide needs"
    (etc / "waorch.env").write_text("".join(f"{k}={v}\n" for k, v in {**shared, **site}.items()))
    for name, port in metrics_ports.items():
        extra = f"API_HOST=127.0.0.1\nAPI_PORT={api_port}\n" if name == "api" else ""
        (etc / f"{name}.env").write_text(f"TEMPORAL_SDK_METRICS_PORT={port}\n{extra}")

    state = tmp_path / "state"
    state.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    services = [start(Unit.load(UNITS / f"waorch-{name}.service"), etc, state, logs)
                for name in ("connector", "worker", "api")]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = f"http://127.0.0.1:{api_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            health: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for s in services:
                    assert s.proc.poll() is None, f"{s.unit.name} exited {s.proc.returncode}:\n{s.tail()}"
                try:
                    resp = await http.get("/health")
                    health = resp.json()
                    if resp.status_code == 200 and health.get("status") == "ok":
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
            assert health.get("status") == "ok", (health, [s.tail() for s in services])

            cid = f"company_deploy{uuid.uuid4().hex[:8]}"
            init = await http.post(f"/api/whatsapp/sessions/{cid}/initialize", headers=admin)
            assert init.status_code == 200 and init.json()["qr"], init.text
            scan = await http.post(f"/api/simulator/{cid}/scan", headers=admin)
            assert scan.status_code == 200, scan.text
            status: dict[str, Any] = {}
            for _ in range(200):
                status = (await http.get(f"/api/whatsapp/sessions/{cid}/status", headers=admin)).json()
                if status.get("connected"):
                    break
                await asyncio.sleep(0.1)
            assert status.get("connected"), status

            sent = await http.post(f"/api/whatsapp/sessions/{cid}/send", headers={**admin, "Idempotency-Key": "k1"},
                                   json={"phone": "79001234567", "message": "deployed"})
            assert sent.status_code == 200, sent.text
            outbox = (await http.get(f"/api/simulator/{cid}/outbox", headers=admin)).json()
            assert [(m["messageId"], m["text"]) for m in outbox["messages"]] == [(sent.json()["messageId"], "deployed")]

            # Every process exports the Temporal SDK's metrics on its own port.
            for name, port in metrics_ports.items():
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                assert "temporal_request" in text, f"{name}: no SDK metrics on {port}"
            assert temporal.handshakes and postgres.handshakes and redis.handshakes
    finally:
        # systemctl stop, connector first (it hands its sessions over), each within its TimeoutStopSec.
        took = {}
        for service in services:
            if service.proc.poll() is None:
                took[service.unit.name] = await stop(service)
    # A clean stop: connector and worker handle SIGTERM and exit 0; uvicorn re-raises the SIGTERM after
    # its graceful shutdown, which systemd also counts as a clean exit.
    codes = {s.unit.name: s.proc.returncode for s in services}
    assert codes == {"waorch-connector": 0, "waorch-worker": 0, "waorch-api": codes["waorch-api"]}, (codes, took)
    assert codes["waorch-api"] in (0, -signal.SIGTERM), codes
