"""Worker-side activities of failed incoming messages (issue #15.1): keep, count, resolve.

The ``FailedInboxMessage`` workflow calls them; the rows live in PostgreSQL
(``storage.failed_messages``) so that Temporal's retention never decides when a
message that nobody handled disappears.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from temporalio import activity

from domain.inbox import (
    ACTIVITY_FAILED_ATTEMPT,
    ACTIVITY_FAILED_SUMMARY,
    ACTIVITY_PARK_FAILED,
    ACTIVITY_RESOLVE_FAILED,
    FailedAttempt,
    FailedMessageRecord,
    FailedMessagesSummary,
    FailedResolution,
    ParkResult,
)
from storage import Database
from storage import failed_messages as store

log = logging.getLogger("waorch.inbox")


class FailedMessageActivities:
    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn(name=ACTIVITY_PARK_FAILED)
    async def park_failed_message(self, record: FailedMessageRecord) -> ParkResult:
        result = await store.park(self._db, record)
        log.warning("inbox message waits for an operator company_id=%s message_id=%s chat=%s waiting=%d",
                    record.message.company_id, record.message.message_id, record.message.chat,
                    result.waiting_for_company)
        return result

    @activity.defn(name=ACTIVITY_FAILED_ATTEMPT)
    async def record_failed_attempt(self, attempt: FailedAttempt) -> int:
        return await store.record_attempt(self._db, attempt.company_id, attempt.message_id, attempt.error)

    @activity.defn(name=ACTIVITY_RESOLVE_FAILED)
    async def resolve_failed_message(self, resolution: FailedResolution) -> bool:
        done = await store.resolve(self._db, resolution.company_id, resolution.message_id, resolution.outcome,
                                   resolution.actor)
        log.info("failed message %s company_id=%s message_id=%s actor=%s", resolution.outcome,
                 resolution.company_id, resolution.message_id, resolution.actor)
        return done

    @activity.defn(name=ACTIVITY_FAILED_SUMMARY)
    async def failed_messages_summary(self) -> FailedMessagesSummary:
        return await store.summary(self._db)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.park_failed_message, self.record_failed_attempt, self.resolve_failed_message,
                self.failed_messages_summary]
