"""The one way every process connects to Temporal.

Every process that talks to Temporal (api, worker, connector; the sessions, sends
and jobs they start go through their clients) gets its client from
:func:`connect_temporal`, so TLS, mTLS, the API key and the SDK's metrics are set
in one place:

- ``TEMPORAL_TLS_CA`` (server roots; unset → the system's), ``TEMPORAL_TLS_CERT`` +
  ``TEMPORAL_TLS_KEY`` (mTLS), ``TEMPORAL_TLS_SERVER_NAME`` (the name the server
  certificate carries, when it is not the dialled host), ``TEMPORAL_API_KEY``
  (Temporal Cloud: sent as ``authorization: Bearer …``, implies TLS);
- ``TEMPORAL_SDK_METRICS_PORT``: the SDK's Prometheus endpoint (task slots, poll
  and schedule-to-start latency), one per process, set up before the first client.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RetryConfig, TLSConfig

from domain.settings import Settings

log = logging.getLogger("waorch.temporal")

# Words of the SDK's connect errors that no retry can fix: the certificates or the key are wrong.
_TLS_FAILURE_WORDS = ("certificate", "unknownissuer", "tls", "handshake", "x509", "alert", "unauthenticated")

_runtimes: dict[str, Runtime] = {}


class TemporalConfigError(RuntimeError):
    """The Temporal connection settings cannot work as given (a file missing, a certificate refused)."""


def _read(setting: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemporalConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TemporalConfigError(f"{setting}: {path} is not a PEM file (no -----BEGIN line)")
    return data


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """The ``tls=`` argument of ``Client.connect`` for these settings (``False``: plaintext)."""
    if not settings.temporal_uses_tls:
        return False
    return TLSConfig(
        server_root_ca_cert=_read("TEMPORAL_TLS_CA", settings.temporal_tls_ca) if settings.temporal_tls_ca else None,
        client_cert=_read("TEMPORAL_TLS_CERT", settings.temporal_tls_cert) if settings.temporal_tls_cert else None,
        client_private_key=_read("TEMPORAL_TLS_KEY", settings.temporal_tls_key) if settings.temporal_tls_key else None,
        domain=settings.temporal_tls_server_name,
    )


def sdk_runtime(settings: Settings) -> Runtime | None:
    """The process's SDK runtime exporting Prometheus metrics, or ``None`` (the SDK's default).

    One runtime per bind address per process: every client (and so every worker) of the
    process shares it, and the port is bound once.
    """
    if settings.temporal_sdk_metrics_port is None:
        return None
    bind = f"{settings.temporal_sdk_metrics_host}:{settings.temporal_sdk_metrics_port}"
    runtime = _runtimes.get(bind)
    if runtime is None:
        try:
            runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind)))
        except Exception as exc:
            raise TemporalConfigError(
                f"TEMPORAL_SDK_METRICS_PORT: cannot serve SDK metrics on {bind}: {exc}"
            ) from None
        _runtimes[bind] = runtime
        log.info("temporal sdk metrics on http://%s/metrics", bind)
    return runtime


def _is_tls_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _TLS_FAILURE_WORDS)


# For a process that answers people (the API): an RPC to an unreachable Temporal gives up after ~3 s
# (the caller answers 503 and the client retries), instead of the SDK's 10 s, and a Temporal that is
# back is found within a second, not after a backoff of up to 5 s.
INTERACTIVE_RETRY = RetryConfig(initial_interval_millis=100, max_interval_millis=1000, max_elapsed_time_millis=3000,
                                max_retries=10)


async def connect_temporal(settings: Settings, *, wait_s: float = 60.0, identity: str | None = None,
                           interactive: bool = False) -> Client:
    """Connect, waiting up to ``wait_s`` for the server (it may still be starting).

    ``interactive``: RPCs fail fast while Temporal is unreachable (:data:`INTERACTIVE_RETRY`).

    Raises:
        TemporalConfigError: a TLS file is unreadable, or the server refused the TLS
            handshake or the credentials (retrying cannot help; the message says which setting).
        RuntimeError: the server was not reachable within ``wait_s``.
    """
    tls = temporal_tls(settings)
    runtime = sdk_runtime(settings)
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    deadline = asyncio.get_running_loop().time() + wait_s
    delay = 0.2
    while True:
        try:
            return await Client.connect(
                settings.temporal_target,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                tls=tls,
                api_key=api_key,
                runtime=runtime,
                identity=identity,
                retry_config=INTERACTIVE_RETRY if interactive else None,
            )
        except RuntimeError as exc:
            if tls is not False and _is_tls_failure(exc):
                raise TemporalConfigError(
                    f"Temporal at {settings.temporal_target} refused the TLS connection: {exc}. Check "
                    "TEMPORAL_TLS_CA (the CA of the server's certificate), TEMPORAL_TLS_SERVER_NAME (a name "
                    "in it), TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY (mTLS) and TEMPORAL_API_KEY"
                ) from None
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("temporal not reachable yet target=%s error=%s", settings.temporal_target, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
