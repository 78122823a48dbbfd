"""Probes of the infrastructure, shared by ``GET /health`` and the watchdog (SPEC H1, issue #15).

Each probe is timed and bounded: a probe that does not answer within
``HEALTH_PROBE_TIMEOUT_S`` (5 s by default) is ``down``; one that answers, but
slower than ``HEALTH_PROBE_SLOW_S``, is ``degraded`` and says how slow. The old
system's false alarms came from a 2 s timeout on a slow but working service.

Liveness of the worker and of the connectors is read from Temporal: the pollers
of their task queues (``DescribeTaskQueue``). A poller counts while Temporal has
seen it within ``POLLER_STALE_S``; a worker that is idle re-polls about once a
minute, so that window must be longer than a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis.asyncio as aioredis
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from domain.settings import Settings
from storage import Database

ProbeStatus = Literal["ok", "degraded", "down"]

# The infrastructure the watchdog and /health watch, by check name, as an operator calls it.
SERVER_NAMES: dict[str, str] = {
    "temporal": "Temporal",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "worker": "the worker (no poller on its task queue)",
    "connector": "every connector (no poller on the connector queue)",
}


@dataclass
class ProbeResult:
    name: str
    status: ProbeStatus
    latency_ms: float
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "latencyMs": round(self.latency_ms, 1)}
        out.update(self.detail)
        if self.error:
            out["error"] = self.error
        return out


async def timed(name: str, probe: Awaitable[Any], timeout_s: float, slow_s: float) -> ProbeResult:
    """Run one probe within ``timeout_s``: down on error or timeout, degraded when slower than ``slow_s``.

    A probe may return a dict of details; a ``"status"`` in it (a probe that answered "down",
    such as a queue without pollers) wins over ok/degraded.
    """
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(probe, timeout_s)
    except TimeoutError:
        return ProbeResult(name, "down", (time.monotonic() - started) * 1000,
                           error=f"no answer within {timeout_s:g} s")
    except Exception as exc:  # a probe reports, it never raises
        return ProbeResult(name, "down", (time.monotonic() - started) * 1000,
                           error=f"{type(exc).__name__}: {exc}"[:200])
    latency_ms = (time.monotonic() - started) * 1000
    details = dict(detail) if isinstance(detail, dict) else {}
    answered = details.pop("status", None)
    status: ProbeStatus
    if answered == "down":
        status = "down"
    elif latency_ms > slow_s * 1000:
        status = "degraded"
        details["slow"] = f"answered in {latency_ms / 1000:.1f} s (slow above {slow_s:g} s)"
    else:
        status = "degraded" if answered == "degraded" else "ok"
    return ProbeResult(name, status, latency_ms, details)


def probe_redis_client(settings: Settings) -> aioredis.Redis:
    """A Redis connection for probes only: its socket timeout is the probe's, so a slow Redis is
    measured (degraded), not cut off by the request paths' short timeout."""
    timeout = settings.health_probe_timeout_s
    return aioredis.from_url(settings.redis_dsn, decode_responses=True, socket_connect_timeout=timeout,
                             socket_timeout=timeout + 1)


class InfraProbes:
    """The probes of one process (the API): Temporal, PostgreSQL, Redis, worker and connector pollers."""

    def __init__(self, settings: Settings, client: Client, db: Database, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.db = db
        self.redis = redis

    async def run(self, name: str, probe: Awaitable[Any], *, judge_speed: bool = True) -> ProbeResult:
        """``judge_speed=False`` for reports that are not servers (a visibility listing may be slow without
        anything being wrong): they are bounded by the timeout, never degraded for their latency."""
        s = self.settings
        slow_s = s.health_probe_slow_s if judge_speed else s.health_probe_timeout_s
        return await timed(name, probe, s.health_probe_timeout_s, slow_s)

    async def infrastructure(self) -> list[ProbeResult]:
        """Every server the service needs, probed at once."""
        return list(await asyncio.gather(
            self.run("temporal", self.client.service_client.check_health()),
            self.run("postgres", self.db.ping()),
            self.run("redis", self.redis.ping()),
            self.run("worker", self.pollers(self.settings.temporal_core_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)),
            self.run("connector", self.pollers(self.settings.temporal_connector_queue,
                                               TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)),
        ))

    async def pollers(self, queue: str, kind: TaskQueueType.ValueType) -> dict[str, Any]:
        """Live pollers of a task queue (``status: down`` when none): live worker or connector processes."""
        resp = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.client.namespace,
                task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=kind,
            )
        )
        fresh_after = datetime.now(UTC) - timedelta(seconds=self.settings.poller_stale_s)
        live = sorted({p.identity for p in resp.pollers
                       if p.last_access_time.ToDatetime(tzinfo=UTC) > fresh_after})
        return {"status": "ok" if live else "down", "pollers": live}
