"""The API's side of SPEC E1: one Redis subscription per process, fanned out to WebSockets.

Events published by any process (connector, worker, API) on ``whatsapp:events``
reach every WebSocket client of every API process that may see them (X3: a
company key only its company; admin everything, optionally filtered).
The subscription has its own Redis connection with unlimited reconnects
(redis-py ``Retry``), and re-subscribes by itself after a Redis restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from domain.session import SessionStatus
from domain.states import SessionState
from infra.metrics import EventCounters
from infra.redis import EventSubscription
from storage import Database

log = logging.getLogger("waorch.api.events")

QUEUE_SIZE = 1000
# Events that carry no state change: they never invalidate a cached session status.
_NOT_STATE_CHANGES = frozenset({"message", "message_sent", "message_ack"})


class ConnectedCache:
    """Recently seen "connected" session statuses, so a burst of sends does not query the session
    workflow for each message. An entry lives ``ttl_s`` at most and is dropped at once by any
    state-change event of its company (connector and workflow publish them). A stale entry costs
    nothing unsafe: the connector refuses a send for a session it does not hold (409), and no send
    can start a session either way."""

    def __init__(self, ttl_s: float = 3.0) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, company_id: str) -> Any | None:
        entry = self._entries.get(company_id)
        if entry is None:
            return None
        if entry[0] < asyncio.get_running_loop().time():
            self._entries.pop(company_id, None)
            return None
        return entry[1]

    def put(self, company_id: str, status: Any) -> None:
        self._entries[company_id] = (asyncio.get_running_loop().time() + self.ttl_s, status)

    def invalidate(self, company_id: str) -> None:
        self._entries.pop(company_id, None)


class HolderLiveness:
    """Whether a connected session's connection is held by a live connector process right now.

    The session workflow hears "connected" once; when its connector stops or dies, another adopts
    the hold (connector/holds.py), and until then, or for good when the adopter has the same
    CONNECTOR_ID, the workflow's holder is out of date. The hold's row says who holds it now: a
    session whose holder stopped or was declared dead is being taken over, and a send queued for it
    would wait for a queue nobody polls. Unknown (database slow or down) counts as held; answers are
    kept ``ttl_s`` per company, and dropped by any state-change event of the company.
    """

    def __init__(self, ttl_s: float = 0.5, timeout_s: float = 0.3) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._answers: dict[str, tuple[float, bool]] = {}

    async def held(self, db: Database, pool: str, company_id: str) -> bool:
        now = asyncio.get_running_loop().time()
        hit = self._answers.get(company_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            gone = await asyncio.wait_for(db.fetchval(
                """SELECT l.dead_at IS NOT NULL OR l.released_at IS NOT NULL FROM session_holds h
                   JOIN connector_leases l ON l.incarnation = h.holder WHERE h.pool = $1 AND h.company_id = $2""",
                pool, company_id,
            ), self.timeout_s)
        except Exception:
            gone = None
        if len(self._answers) > 10_000:
            self._answers.clear()
        self._answers[company_id] = (now + self.ttl_s, not gone)
        return not gone

    def invalidate(self, company_id: str) -> None:
        self._answers.pop(company_id, None)

    async def current(self, db: Database, pool: str, status: SessionStatus) -> SessionStatus:
        """``status``, or, when it says connected (or degraded) but its connector stopped, ``connecting``."""
        if not status.state.holds_connection or await self.held(db, pool, status.company_id):
            return status
        return dataclasses.replace(status, state=SessionState.CONNECTING,
                                   last_error="its connector stopped; another is taking the connection over")


class LastEvents:
    """The latest event of each company (its type and time), for the operator page: one Redis hash
    that every API process writes as events go by (the same event, so the same value) and reads for
    the list. Events published while no API process is subscribed, or while Redis is down, are not
    seen: such a company has no entry (the page says "none seen") or an older one."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self.key = f"{prefix}whatsapp:last-event"

    async def record(self, company_id: str, event_type: str, timestamp: str) -> None:
        try:
            await self._redis.hset(self.key, company_id, json.dumps({"type": event_type, "timestamp": timestamp}))
        except (aioredis.RedisError, OSError):
            pass  # a live notification: the page still gets the event itself over the WebSocket

    async def read(self, company_ids: list[str]) -> dict[str, dict[str, str]]:
        """``{company: {"type", "timestamp"}}`` for the companies that have one; empty while Redis is down."""
        if not company_ids:
            return {}
        try:
            values: list[Any] = await self._redis.hmget(self.key, company_ids)
        except (aioredis.RedisError, OSError):
            return {}
        out: dict[str, dict[str, str]] = {}
        for company_id, raw in zip(company_ids, values, strict=True):
            if raw is None:
                continue
            try:
                body = json.loads(raw)
                out[company_id] = {"type": str(body["type"]), "timestamp": str(body["timestamp"])}
            except (ValueError, KeyError, TypeError):
                continue
        return out


@dataclass(eq=False)
class Subscriber:
    """One WebSocket client: the companies it may see (``None``: all) and its queue."""

    companies: frozenset[str] | None
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: int = 0

    def wants(self, company_id: str) -> bool:
        return self.companies is None or company_id in self.companies


class EventHub(EventSubscription):
    name = "event-hub"

    def __init__(self, redis_dsn: str, channel: str, counters: EventCounters | None,
                 holders: HolderLiveness | None = None, last_events: LastEvents | None = None) -> None:
        super().__init__(redis_dsn, channel)
        self._counters = counters
        self._last_events = last_events
        self._subscribers: set[Subscriber] = set()
        self.received = 0
        self.connected = ConnectedCache()
        self.holders = holders

    def add(self, companies: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(companies)
        self._subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def on_event(self, raw: str) -> None:
        try:
            body: dict[str, Any] = json.loads(raw)
            company_id = str(body["companyId"])
            event_type = str(body["type"])
            timestamp = str(body.get("timestamp") or "")
        except (ValueError, KeyError, TypeError):
            log.warning("event ignored: not an event object channel=%s", self.channel)
            return
        self.received += 1
        if event_type not in _NOT_STATE_CHANGES:
            self.connected.invalidate(company_id)
            if self.holders is not None:
                self.holders.invalidate(company_id)
        if self._counters is not None:
            reason = body.get("reason")
            await self._counters.count_event(raw, event_type, reason if isinstance(reason, str) else None)
        if self._last_events is not None and timestamp:
            await self._last_events.record(company_id, event_type, timestamp)
        for sub in list(self._subscribers):
            if not sub.wants(company_id):
                continue
            try:
                sub.queue.put_nowait(raw)
            except asyncio.QueueFull:
                sub.dropped += 1
