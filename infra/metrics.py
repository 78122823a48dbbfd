"""Metrics (SPEC H2, H3): one snapshot, rendered as JSON or Prometheus text.

Where the figures come from, so every API process reports the same numbers:

* sessions by state / active connections: the session workflows themselves
  (Temporal visibility), read when the metrics are asked for;
* messages sent/received, QR codes, reconnect attempts, errors: counted from
  the events on ``whatsapp:events`` into one Redis hash. Each event is counted
  once however many API processes subscribe (a short-lived "seen" key per
  event, set atomically with the increment);
* rate-limited requests: counted by the limiter in the same hash (in-process
  while Redis is down);
* backup / restore / cleanup figures: from a provider the jobs code registers
  with :func:`register_job_metrics` (none registered → not reported);
* each connector's leaked client threads and WhatsApp-store connections: the
  connector writes them to a Redis hash whenever they change
  (:func:`publish_connector_figures`); the API reports the connectors that poll
  their queue now (a killed connector's figures are dropped).

Counters survive API restarts (they live in Redis); events published while no
API process is subscribed are not counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from domain.events import EventType
from domain.states import SessionState
from storage.incoming_spool import SpoolSummary

log = logging.getLogger("waorch.metrics")

COUNTER_NAMES = (
    "messages_sent",
    "messages_received",
    "qr_codes_generated",
    "reconnect_attempts",
    "errors",
    "rate_limited",
    "failed_reconnects",
)

# Which counters each event type moves. ``failed``: a session that gave up reconnecting (SPEC S3),
# the old back end's ``failedReconnects``.
EVENT_COUNTER: dict[str, tuple[str, ...]] = {
    EventType.MESSAGE_SENT.value: ("messages_sent",),
    EventType.MESSAGE.value: ("messages_received",),
    EventType.QR.value: ("qr_codes_generated",),
    EventType.RECONNECTING.value: ("reconnect_attempts",),
    EventType.ERROR.value: ("errors",),
    EventType.FAILED.value: ("errors", "failed_reconnects"),
}
# Events whose reason becomes the ``lastError`` of the metrics (kept in the counters hash).
LAST_ERROR_EVENTS = frozenset({EventType.ERROR.value, EventType.FAILED.value})
LAST_ERROR_FIELD = "last_error"

# KEYS[1] seen marker, KEYS[2] counters hash; ARGV[1] marker ttl (s), ARGV[2] last error ("" = keep),
# ARGV[3..] fields to increment.
_COUNT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[2]) end
  for i = 3, #ARGV do redis.call('HINCRBY', KEYS[2], ARGV[i], 1) end
  return 1
end
return 0
"""


def counters_key(prefix: str) -> str:
    return f"{prefix}whatsapp:metrics"


def connectors_key(prefix: str) -> str:
    return f"{prefix}whatsapp:connectors"


@dataclass
class ConnectorFigures:
    """What one connector cannot give back (SPEC: bounded resources); see connector.transport.TransportLeaks."""

    connector_id: str
    leaked_threads: int = 0
    store_connections: int | None = None
    clients_started: int = 0
    updated_at: float = 0.0
    # Media kinds the connector cannot send, each with why (ffmpeg/ffprobe missing; issue #11).
    media_unavailable: dict[str, str] = field(default_factory=dict)


async def publish_connector_figures(redis: aioredis.Redis, prefix: str, figures: ConnectorFigures) -> None:
    figures.updated_at = time.time()
    try:
        await redis.hset(connectors_key(prefix), figures.connector_id, json.dumps(dataclasses.asdict(figures)))
    except (aioredis.RedisError, OSError) as exc:
        log.warning("connector figures not published error=%s", type(exc).__name__)


async def read_connector_figures(redis: aioredis.Redis, prefix: str) -> list[ConnectorFigures]:
    try:
        raw: dict[Any, Any] = await redis.hgetall(connectors_key(prefix))
    except (aioredis.RedisError, OSError):
        return []
    out = []
    for value in raw.values():
        with contextlib.suppress(ValueError, TypeError):
            out.append(ConnectorFigures(**json.loads(value)))
    return sorted(out, key=lambda f: f.connector_id)


@dataclass
class JobFigures:
    """Figures of the nightly jobs (SPEC H2); ``None`` where a job never ran."""

    last_backup_timestamp: float | None = None
    last_backup_size_bytes: float | None = None
    last_backup_success: bool | None = None
    last_restore_rto_seconds: float | None = None
    keys_cleaned_total: float | None = None
    # The last verified backup: how long it took, how many rows it holds, whether its second copy was
    # checked (None: no second location configured); the RTO target restore tests are judged by.
    last_backup_duration_seconds: float | None = None
    last_backup_rows: float | None = None
    last_backup_copied: bool | None = None
    restore_rto_target_seconds: float | None = None


    def last_backup_age_seconds(self) -> float | None:
        if self.last_backup_timestamp is None:
            return None
        return max(0.0, round(time.time() - self.last_backup_timestamp, 1))


JobMetricsProvider = Callable[[], Awaitable[JobFigures]]
_job_provider: JobMetricsProvider | None = None


def register_job_metrics(provider: JobMetricsProvider | None) -> None:
    """Hook for the jobs code: ``provider()`` returns the latest :class:`JobFigures`.

    The API calls it on every metrics request (errors are logged, figures then omitted).
    """
    global _job_provider
    _job_provider = provider


async def job_figures(provider: JobMetricsProvider | None = None) -> JobFigures | None:
    """The jobs' figures from ``provider`` (the app's own), else from the registered one."""
    provider = provider or _job_provider
    if provider is None:
        return None
    try:
        return await provider()
    except Exception as exc:  # metrics report, they never fail the request
        log.warning("job metrics unavailable error=%s", type(exc).__name__)
        return None


class EventCounters:
    """The Redis-backed counters, with an in-process overlay while Redis is down."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._key = counters_key(prefix)
        self._script = redis.register_script(_COUNT_ONCE)
        self.local: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # The reason of the newest error/failed event (as of the last read; in-process while Redis is down).
        self.last_error: str | None = None

    async def count_event(self, raw: str, event_type: str, reason: str | None = None) -> None:
        """Count one event as published (``raw`` is its JSON, used as its identity); an error's
        ``reason`` becomes the last error."""
        names = EVENT_COUNTER.get(event_type)
        if names is None:
            return
        last_error = (reason or event_type)[:300] if event_type in LAST_ERROR_EVENTS else ""
        seen = f"{self._prefix}whatsapp:metrics:seen:{hashlib.sha1(raw.encode()).hexdigest()}"
        try:
            await self._script(keys=[seen, self._key], args=[600, last_error, *names])
        except (aioredis.RedisError, OSError):
            for name in names:
                self.local[name] += 1
            if last_error:
                self.last_error = last_error

    async def read(self, extra_local: Mapping[str, int] | None = None) -> dict[str, int]:
        values = dict(self.local)
        for name, value in (extra_local or {}).items():
            values[name] = values.get(name, 0) + value
        try:
            stored: dict[Any, Any] = await self._redis.hgetall(self._key)
        except (aioredis.RedisError, OSError):
            stored = {}
        for raw_name, raw_value in stored.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            if name == LAST_ERROR_FIELD:
                self.last_error = raw_value.decode() if isinstance(raw_value, bytes) else str(raw_value)
                continue
            values[name] = values.get(name, 0) + int(raw_value)
        return values


@dataclass
class MetricsSnapshot:
    sessions_by_state: dict[str, int]
    counters: dict[str, int]
    jobs: JobFigures | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    connectors: list[ConnectorFigures] = field(default_factory=list)
    last_error: str | None = None
    # Incoming messages: failed ones waiting for an operator (PostgreSQL); the backlog (messages
    # queued longer than INBOX_BACKLOG_ALERT_S) as the watchdog last saw it. None: unknown.
    failed_messages: int | None = None
    inbox_backlog: int | None = None
    # Incoming messages WhatsApp delivered that Temporal does not have yet (the spool in PostgreSQL),
    # and the age of the oldest; a growing spool means Temporal is not taking them. None: unknown.
    spool: SpoolSummary | None = None

    @property
    def total_sessions(self) -> int:
        return sum(self.sessions_by_state.values())

    @property
    def active_connections(self) -> int:
        return sum(self.sessions_by_state.get(s.value, 0) for s in SessionState if s.holds_connection)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "totalSessions": self.total_sessions,
            "activeConnections": self.active_connections,
            "sessionsByState": {s.value: self.sessions_by_state.get(s.value, 0) for s in SessionState},
            "messagesSent": self.counters.get("messages_sent", 0),
            "messagesReceived": self.counters.get("messages_received", 0),
            "qrCodesGenerated": self.counters.get("qr_codes_generated", 0),
            "reconnectAttempts": self.counters.get("reconnect_attempts", 0),
            "errors": self.counters.get("errors", 0),
            "rateLimitedRequests": self.counters.get("rate_limited", 0),
            # The old back end's names (README "Coming from the old system").
            "failedReconnects": self.counters.get("failed_reconnects", 0),
            "lastError": self.last_error,
            "failedMessages": self.failed_messages,
            "inboxBacklog": self.inbox_backlog,
            "incomingSpool": None if self.spool is None else self.spool.to_json(),
        }
        body["connectors"] = [
            {"connectorId": c.connector_id, "leakedThreads": c.leaked_threads,
             "storeConnections": c.store_connections, "clientsStarted": c.clients_started}
            for c in self.connectors
        ]
        if self.jobs is not None:
            body["jobs"] = {
                "lastBackupTimestamp": self.jobs.last_backup_timestamp,
                "lastBackupSizeBytes": self.jobs.last_backup_size_bytes,
                "lastBackupSuccess": self.jobs.last_backup_success,
                "lastRestoreRtoSeconds": self.jobs.last_restore_rto_seconds,
                "keysCleanedTotal": self.jobs.keys_cleaned_total,
                "lastBackupAgeSeconds": self.jobs.last_backup_age_seconds(),
                "lastBackupDurationSeconds": self.jobs.last_backup_duration_seconds,
                "lastBackupRows": self.jobs.last_backup_rows,
                "lastBackupCopied": self.jobs.last_backup_copied,
                "restoreRtoTargetSeconds": self.jobs.restore_rto_target_seconds,
            }
        return body

    def to_prometheus(self) -> bytes:
        """Prometheus text exposition, built fresh from this snapshot."""
        registry = CollectorRegistry(auto_describe=False)
        by_state = Gauge("whatsapp_sessions", "Sessions by state", ["state"], registry=registry)
        for state in SessionState:
            by_state.labels(state=state.value).set(self.sessions_by_state.get(state.value, 0))
        Gauge("whatsapp_active_connections", "Connected sessions", registry=registry).set(self.active_connections)
        counters = {
            "messages_sent": ("whatsapp_messages_sent", "Messages sent"),
            "messages_received": ("whatsapp_messages_received", "Messages received"),
            "qr_codes_generated": ("whatsapp_qr_codes_generated", "QR codes generated"),
            "reconnect_attempts": ("whatsapp_reconnect_attempts", "Reconnect attempts"),
            "errors": ("whatsapp_errors", "Errors (error and failed events)"),
            "rate_limited": ("whatsapp_rate_limited_requests", "Send requests refused by the rate limit"),
            "failed_reconnects": ("whatsapp_failed_reconnects", "Sessions that gave up reconnecting (failed)"),
        }
        for key, (name, doc) in counters.items():
            Counter(name, doc, registry=registry).inc(self.counters.get(key, 0))
        leaked = Gauge("whatsapp_connector_leaked_client_threads",
                       "Client threads that never returned after their client stopped", ["connector"],
                       registry=registry)
        store = Gauge("whatsapp_connector_store_connections",
                      "PostgreSQL connections held by the connector's WhatsApp store", ["connector"], registry=registry)
        for c in self.connectors:
            leaked.labels(connector=c.connector_id).set(c.leaked_threads)
            if c.store_connections is not None:
                store.labels(connector=c.connector_id).set(c.store_connections)
        if self.failed_messages is not None:
            Gauge("whatsapp_inbox_failed_messages", "Incoming messages whose handler failed, waiting for an operator",
                  registry=registry).set(self.failed_messages)
        if self.inbox_backlog is not None:
            Gauge("whatsapp_inbox_backlog_messages", "Incoming messages queued longer than INBOX_BACKLOG_ALERT_S",
                  registry=registry).set(self.inbox_backlog)
        if self.spool is not None:
            Gauge("whatsapp_incoming_spool_messages", "Incoming messages spooled, not yet handed to Temporal",
                  registry=registry).set(self.spool.messages)
            Gauge("whatsapp_incoming_spool_oldest_seconds", "Age of the oldest spooled incoming message (0: none)",
                  registry=registry).set(self.spool.oldest_s or 0.0)
        jobs = self.jobs
        if jobs is not None:
            figures = {
                "whatsapp_last_backup_timestamp_seconds": ("Time of the last backup", jobs.last_backup_timestamp),
                "whatsapp_last_backup_size_bytes": ("Size of the last backup", jobs.last_backup_size_bytes),
                "whatsapp_last_backup_success": (
                    "1 if the last backup succeeded",
                    None if jobs.last_backup_success is None else float(jobs.last_backup_success),
                ),
                "whatsapp_last_restore_rto_seconds": ("RTO of the last restore test", jobs.last_restore_rto_seconds),
                "whatsapp_keys_cleaned": ("Session keys removed by cleanup", jobs.keys_cleaned_total),
                "whatsapp_last_backup_age_seconds": ("Seconds since the last verified backup",
                                                     jobs.last_backup_age_seconds()),
                "whatsapp_last_backup_duration_seconds": ("Duration of the last verified backup (dump + verify)",
                                                          jobs.last_backup_duration_seconds),
                "whatsapp_last_backup_rows": ("Rows in the last verified backup", jobs.last_backup_rows),
                "whatsapp_last_backup_copy_ok": (
                    "1 if the last backup was copied to BACKUP_COPY_DIR and checked there",
                    None if jobs.last_backup_copied is None else float(jobs.last_backup_copied),
                ),
                "whatsapp_restore_rto_target_seconds": ("RTO target restore tests are judged by",
                                                        jobs.restore_rto_target_seconds),
            }
            for name, (doc, value) in figures.items():
                if value is not None:
                    Gauge(name, doc, registry=registry).set(value)
        return generate_latest(registry)
