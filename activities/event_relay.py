"""The worker's event relay (SPEC E2): Redis ``whatsapp:events`` → each company's ``CompanyEvents``.

Every state event any process publishes is handed to Temporal for the companies
that have an event webhook; from there delivery is durable (retried, in order).
The event id is a hash of the event as published, so the relays of several
workers hand over the same id and the workflow keeps one. Pub/sub delivers only
to live subscribers: an event published while no worker runs is not relayed
(the session's state itself is never lost; it lives in its workflow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.inbox import inbox_tuning_from
from domain.company_events import (
    COMPANY_EVENTS_WORKFLOW,
    SIGNAL_COMPANY_EVENT,
    CompanyEventsInput,
    company_events_workflow_id,
)
from domain.inbox import InboxEvent
from domain.settings import Settings
from infra.redis import EventSubscription
from storage import Database

log = logging.getLogger("waorch.events.relay")

# The inbox posts these itself, with the message's own stable ids.
INBOX_EVENT_TYPES = frozenset({"message", "message_sent"})
URL_CACHE_S = 10.0


class EventRelay(EventSubscription):
    name = "event-relay"

    def __init__(self, settings: Settings, client: Client, db: Database) -> None:
        super().__init__(settings.redis_dsn, settings.events_channel)
        self._settings = settings
        self._client = client
        self._db = db
        self._urls: dict[str, tuple[float, bool]] = {}
        self.relayed = 0

    async def on_event(self, raw: str) -> None:
        await self.relay(raw)

    async def _has_webhook(self, company_id: str) -> bool:
        now = time.monotonic()
        cached = self._urls.get(company_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        url = await self._db.fetchval(
            "SELECT event_webhook_url FROM companies WHERE company_id = $1 AND removed_at IS NULL", company_id
        )
        self._urls[company_id] = (now + URL_CACHE_S, bool(url))
        return bool(url)

    async def relay(self, raw: str) -> bool:
        """Hand one published event to its company's CompanyEvents workflow; False when not relayed."""
        try:
            body = json.loads(raw)
            kind, company_id, timestamp = str(body["type"]), str(body["companyId"]), str(body["timestamp"])
        except (ValueError, KeyError, TypeError):
            log.warning("event relay: unreadable event skipped")
            return False
        if kind in INBOX_EVENT_TYPES:
            return False
        try:
            if not await self._has_webhook(company_id):
                return False
            data = {k: v for k, v in body.items() if k not in {"type", "companyId", "timestamp"}}
            event = InboxEvent(company_id, kind, "evt-" + hashlib.sha256(raw.encode()).hexdigest()[:24],
                               timestamp, data)
            await self._client.start_workflow(
                COMPANY_EVENTS_WORKFLOW,
                CompanyEventsInput(company_id, inbox_tuning_from(self._settings)),
                id=company_events_workflow_id(company_id),
                task_queue=self._settings.temporal_core_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal=SIGNAL_COMPANY_EVENT,
                start_signal_args=[event],
                static_summary=f"event webhook deliveries of {company_id}",
            )
        except Exception as exc:  # the relay must outlive any one bad event or outage
            log.warning("event relay failed company_id=%s type=%s error=%s", company_id, kind, type(exc).__name__)
            return False
        self.relayed += 1
        return True
