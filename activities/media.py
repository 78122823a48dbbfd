"""Worker-side activities of incoming media (issue #11): where to download, and giving a download up.

The download itself runs on the connector that holds the session (``download_media``,
connector/activities.py); the inbox workflow asks here which queue that is, and, when the download
finally fails, records the failure (the message then goes on to the handler with it named).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from domain.events import Event, EventType
from domain.media import ACTIVITY_MEDIA_FAILED, ACTIVITY_MEDIA_HOLDER, MediaDescriptor, MediaFailure
from domain.session import ERROR_NOT_CONNECTED
from domain.settings import Settings
from domain.states import SessionState
from infra.redis import EventPublisher
from infra.sessions import session_status
from storage import Database
from storage.media import MediaRows

log = logging.getLogger("waorch.media")


class MediaActivities:
    def __init__(self, settings: Settings, db: Database, client: Client, events: EventPublisher) -> None:
        self._settings = settings
        self._rows = MediaRows(db)
        self._client = client
        self._events = events

    @activity.defn(name=ACTIVITY_MEDIA_HOLDER)
    async def media_download_queue(self, company_id: str) -> str:
        """The queue of the connector holding the session; ``NotConnected`` (retried) until there is one."""
        status = await session_status(self._client, company_id)
        if status is None or status.state is not SessionState.CONNECTED or not status.holder_queue:
            state = status.state.value if status else "none"
            raise ApplicationError(f"company {company_id} is not connected (state: {state}): media waits",
                                   type=ERROR_NOT_CONNECTED)
        return status.holder_queue

    @activity.defn(name=ACTIVITY_MEDIA_FAILED)
    async def mark_media_failed(self, failure: MediaFailure) -> MediaDescriptor:
        descriptor = await self._rows.failed(failure.company_id, failure.media_id, failure.error)
        log.warning("media download given up company_id=%s media_id=%s error=%s", failure.company_id,
                    failure.media_id, failure.error[:200])
        row = await self._rows.get(failure.company_id, failure.media_id)
        await self._events.publish(Event(
            type=EventType.MESSAGE_MEDIA, company_id=failure.company_id,
            data={"messageId": row.message_id if row else None, "chat": row.chat if row else None,
                  "media": descriptor.to_wire(self._settings.api_base_url, failure.company_id)}))
        return descriptor

    def activities(self) -> list[Callable[..., Any]]:
        return [self.media_download_queue, self.mark_media_failed]
