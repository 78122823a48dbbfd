"""The infrastructure watchdog (issue #15.2): alerts when what the alerts themselves depend on fails.

Workflow alerts are sent by an activity on the worker; when the worker, Temporal,
PostgreSQL, Redis or every connector is down, none of them can fire. So the API
process watches those from the outside, every ``WATCHDOG_INTERVAL_S``, with the
probes of ``/health`` (``infra.probes``), and sends through the one alert path
(``infra.alerts.AlertSender.deliver``, Telegram or the log, given by the API):

* once when a server has been down longer than ``WATCHDOG_GRACE_S`` (a restart
  shorter than that is silent), and once when it is back;
* worker and connectors count as down when no poller of theirs is fresh; while
  Temporal itself is down they are not judged (one cause, one alert);
* the inbox backlog: once when messages have been queued longer than
  ``INBOX_BACKLOG_ALERT_S`` (the old system alerted at 100 queued jobs; here the
  age of the oldest unhandled message says the same without depending on the
  traffic), once when it has cleared.

With several API processes one of them alerts: a lease in Redis (renewed each
round) elects it; while Redis is down every process alerts rather than none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from temporalio.client import Client

from domain.inbox import INBOX_WORKFLOW, QUERY_INBOX, InboxSummary
from domain.settings import Settings
from infra.probes import SERVER_NAMES, InfraProbes, ProbeResult

log = logging.getLogger("waorch.watchdog")

# (text, severity) → delivered; raises when the channel refuses. The API passes AlertSender.deliver's.
AlertSender = Callable[[str, str], Awaitable[object]]
# Judged only while Temporal answers: without it they cannot be seen, and Temporal's own alert says why.
NEEDS_TEMPORAL = frozenset({"worker", "connector", "backlog"})
# At most this many long-running chats are asked for their queue per round.
BACKLOG_CHATS_ASKED = 200


@dataclass
class Outage:
    """One watched thing's current trouble: since when, and whether the alert went out."""

    since: float | None = None
    alerted: bool = False
    error: str | None = None


@dataclass
class Backlog:
    chats: int = 0  # chats whose oldest unhandled message is older than the threshold
    messages: int = 0  # messages queued in those chats
    oldest_s: float = 0.0

    @property
    def behind(self) -> bool:
        return self.chats > 0


@dataclass
class Watchdog:
    settings: Settings
    probes: InfraProbes
    send: AlertSender
    lease_redis: aioredis.Redis | None = None
    outages: dict[str, Outage] = field(default_factory=dict)
    backlog: Backlog | None = None  # as last seen; None: not known (Temporal or the worker down)
    identity: str = field(default_factory=lambda: uuid.uuid4().hex)
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def backlog_count(self) -> int | None:
        return self.backlog.messages if self.backlog is not None else None

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="watchdog")

    async def stop(self) -> None:
        """End the loop at its next pause (a round in progress is bounded by the probe timeout). Not by
        cancellation alone: Python 3.11's ``wait_for`` can swallow a cancel that lands as a probe finishes."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=self.settings.health_probe_timeout_s + 2)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:  # the watchdog never dies of a bad round
                log.exception("watchdog round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.watchdog_interval_s)

    async def run_once(self) -> None:
        """One round: probe everything, move each outage on, alert where it is due."""
        results = {r.name: r for r in await self.probes.infrastructure()}
        temporal_up = results["temporal"].status != "down"
        backlog: Backlog | None = None
        if temporal_up:
            backlog = await self._backlog()
        self.backlog = backlog
        leader = await self._is_leader()
        now = time.monotonic()
        for name, result in results.items():
            if name in NEEDS_TEMPORAL and not temporal_up:
                continue
            await self._judge(name, result.status == "down", _reason(result), now, leader,
                              grace=self.settings.watchdog_grace_s)
        if backlog is not None:
            reason = (f"{backlog.messages} message(s) in {backlog.chats} chat(s) wait, the oldest for "
                      f"{_span(backlog.oldest_s)}" if backlog.behind else None)
            await self._judge("backlog", backlog.behind, reason, now, leader, grace=0.0)

    async def _judge(self, name: str, down: bool, reason: str | None, now: float, leader: bool,
                     grace: float) -> None:
        outage = self.outages.setdefault(name, Outage())
        if down:
            if outage.since is None:
                outage.since = now
                log.warning("watchdog: %s down error=%s", name, reason)
            outage.error = reason
            if not outage.alerted and now - outage.since >= grace:
                outage.alerted = await self._alert(name, _down_text(name, reason, now - outage.since,
                                                                   self.settings), "critical", leader)
            return
        if outage.since is None:
            return
        if outage.alerted:
            back = await self._alert(name, _back_text(name, now - outage.since), "info", leader)
            if not back:
                return  # keep the outage: say "back" on a later round
        else:
            log.info("watchdog: %s back within the grace, no alert", name)
        self.outages[name] = Outage()

    async def _alert(self, name: str, text: str, severity: str, leader: bool) -> bool:
        if not leader:
            log.info("watchdog: not the leader, alert left to it check=%s", name)
            return True
        try:
            await self.send(text, severity)
        except Exception as exc:
            log.warning("watchdog alert not delivered check=%s error=%s (tried again next round)",
                        name, type(exc).__name__)
            return False
        return True

    async def _is_leader(self) -> bool:
        """One alerting API process: a lease in Redis, renewed each round. Redis down: every process alerts."""
        if self.lease_redis is None:
            return True
        key = f"{self.settings.redis_prefix}whatsapp:watchdog:leader"
        ttl_ms = int(max(3 * self.settings.watchdog_interval_s, 1.0) * 1000)
        try:
            if await self.lease_redis.set(key, self.identity, nx=True, px=ttl_ms):
                return True
            if await self.lease_redis.get(key) == self.identity:
                await self.lease_redis.pexpire(key, ttl_ms)
                return True
            return False
        except (aioredis.RedisError, OSError):
            return True

    async def _backlog(self) -> Backlog | None:
        """Chats whose oldest unhandled message has waited longer than INBOX_BACKLOG_ALERT_S.

        Only inbox workflows started before that can hold such a message (an inbox that
        continued as new carries its queue but starts its clock again; it is seen once its
        new run is that old). None when the chats cannot be asked (no worker answers).
        """
        threshold = self.settings.inbox_backlog_alert_s
        client = self.probes.client
        since = datetime.now(UTC) - timedelta(seconds=threshold)
        query = (f'WorkflowType = "{INBOX_WORKFLOW}" AND ExecutionStatus = "Running" '
                 f'AND StartTime < "{since.isoformat().replace("+00:00", "Z")}"')
        try:
            handles = []
            async for wf in client.list_workflows(query, limit=BACKLOG_CHATS_ASKED):
                handles.append(wf.id)
            summaries = await asyncio.gather(*(_summary(client, wf_id, self.settings.health_probe_timeout_s)
                                               for wf_id in handles))
        except Exception as exc:
            log.info("watchdog: backlog unknown error=%s", type(exc).__name__)
            return None
        if any(s is None for s in summaries):
            return None
        backlog = Backlog()
        now = datetime.now(UTC)
        for summary in summaries:
            if summary is None or summary.oldest_pending_at is None:
                continue
            age = (now - summary.oldest_pending_at).total_seconds()
            if age > threshold:
                backlog.chats += 1
                backlog.messages += summary.pending
                backlog.oldest_s = max(backlog.oldest_s, age)
        return backlog


async def _summary(client: Client, workflow_id: str, timeout_s: float) -> InboxSummary | None:
    try:
        result: InboxSummary = await asyncio.wait_for(
            client.get_workflow_handle(workflow_id).query(QUERY_INBOX, result_type=InboxSummary), timeout_s)
    except Exception as exc:
        if "not found" in str(exc).lower() or "completed" in str(exc).lower():
            return InboxSummary("", "", 0, 0, 0)  # finished meanwhile: nothing queued
        raise
    return result


def _reason(result: ProbeResult) -> str | None:
    return result.error or ("no fresh poller" if "pollers" in result.detail else None)


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _down_text(name: str, reason: str | None, for_s: float, settings: Settings) -> str:
    if name == "backlog":
        return (f"inbox backlog: {reason} (alert above {_span(settings.inbox_backlog_alert_s)}). "
                "Is the company's handler slow or down? `waorch inbox failed list`, the Temporal UI's inbox workflows")
    what = SERVER_NAMES.get(name, name)
    return f"infrastructure: {what} down for {_span(for_s)}" + (f": {reason}" if reason else "") + \
        ". GET /health names what is down."


def _back_text(name: str, down_for_s: float) -> str:
    if name == "backlog":
        return f"inbox backlog cleared after {_span(down_for_s)}"
    return f"infrastructure: {SERVER_NAMES.get(name, name)} back after {_span(down_for_s)}"
