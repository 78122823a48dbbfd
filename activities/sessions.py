"""Worker-side activities of the session workflow: credentials in PostgreSQL, events on Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from temporalio import activity

from domain.events import Event, EventType
from domain.session import (
    ACTIVITY_DELETE_CREDENTIALS,
    ACTIVITY_END_HOLD,
    ACTIVITY_PUBLISH_EVENT,
    CredentialsDeletion,
    ReleaseRequest,
    SessionEventRequest,
)
from infra.redis import EventPublisher
from storage import Database

log = logging.getLogger("waorch.sessions")


async def delete_company_credentials(db: Database, company_id: str, *, mark_removed: bool = False) -> int:
    """Delete the company's device from the whatsmeow store and the simulator store (SPEC S5).

    Returns the number of device rows deleted. Idempotent: whatsmeow itself may
    already have deleted its rows on a logout from the phone.
    """
    deleted = 0
    async with db.connection() as conn, conn.transaction():
        jid = await conn.fetchval("SELECT device_jid FROM companies WHERE company_id = $1", company_id)
        if jid and await conn.fetchval("SELECT to_regclass('public.whatsmeow_device') IS NOT NULL"):
            # Per-device tables cascade from whatsmeow_device.
            deleted += int((await conn.execute("DELETE FROM whatsmeow_device WHERE jid = $1", jid)).split()[-1])
        deleted += int(
            (await conn.execute("DELETE FROM sim_devices WHERE company_id = $1", company_id)).split()[-1]
        )
        await conn.execute(
            """UPDATE companies SET device_jid = NULL, updated_at = now(),
                   removed_at = CASE WHEN $2 THEN now() ELSE removed_at END
               WHERE company_id = $1""",
            company_id, mark_removed,
        )
    log.info("credentials deleted company_id=%s rows=%d removed=%s", company_id, deleted, mark_removed)
    return deleted


class SessionActivities:
    def __init__(self, db: Database, events: EventPublisher) -> None:
        self._db = db
        self._events = events

    @activity.defn(name=ACTIVITY_DELETE_CREDENTIALS)
    async def delete_credentials(self, req: CredentialsDeletion) -> int:
        return await delete_company_credentials(self._db, req.company_id, mark_removed=req.mark_removed)

    @activity.defn(name=ACTIVITY_PUBLISH_EVENT)
    async def publish_session_event(self, req: SessionEventRequest) -> None:
        await self._events.publish(Event(type=EventType(req.type), company_id=req.company_id, data=dict(req.data)))

    @activity.defn(name=ACTIVITY_END_HOLD)
    async def end_hold(self, req: ReleaseRequest) -> bool:
        """Forget a hold whose connector the workflow could not reach, so no connector adopts it; a
        holder that is alive sees its row gone and closes the connection (connector/holds.py)."""
        status = await self._db.execute(
            "DELETE FROM session_holds WHERE company_id = $1 AND hold_id = $2", req.company_id, req.hold_id
        )
        return status.endswith(" 1")

    def activities(self) -> list[Callable[..., Any]]:
        """Every worker-side activity of the session workflow (the worker and the tests register these)."""
        return [self.delete_credentials, self.publish_session_event, self.end_hold]
