"""The ``media`` table: one row per media a send carried or an incoming message brought (issue #11).

The bytes are in the blob store (storage/blobs.py) under ``sha256``; a row says whose media it is,
what it is and where its download stands. Rows are written once per id (``ON CONFLICT DO
NOTHING``): a message handed over twice, or a send retried with its idempotency key, names the
same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.media import MediaDescriptor, MediaKind, MediaRef, MediaState
from storage.db import Database

_COLUMNS = """company_id, id, direction, kind, state, mimetype, size, sha256, caption, filename, message_id, chat,
              source, error, attempts, created_at, stored_at"""


@dataclass
class MediaRow:
    company_id: str
    id: str
    direction: str  # "in" | "out"
    kind: MediaKind
    state: MediaState
    mimetype: str | None
    size: int | None
    sha256: str | None
    caption: str | None
    filename: str | None
    message_id: str | None
    chat: str | None
    source: str | None
    error: str | None
    attempts: int
    created_at: datetime
    stored_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> MediaRow:
        values = dict(row)
        values["kind"] = MediaKind(values["kind"])
        values["state"] = MediaState(values["state"])
        return cls(**values)

    def descriptor(self) -> MediaDescriptor:
        return MediaDescriptor(id=self.id, kind=self.kind, state=self.state, mimetype=self.mimetype,
                               size=self.size, sha256=self.sha256, caption=self.caption, filename=self.filename,
                               error=self.error)


class MediaRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_outgoing(self, company_id: str, ref: MediaRef) -> None:
        await self.db.execute(
            """INSERT INTO media (company_id, id, direction, kind, state, mimetype, size, sha256, caption, filename,
                                  stored_at)
               VALUES ($1, $2, 'out', $3, 'stored', $4, $5, $6, $7, $8, now())
               ON CONFLICT (company_id, id) DO NOTHING""",
            company_id, ref.id, ref.kind.value, ref.mimetype, ref.size, ref.sha256, ref.caption, ref.filename,
        )

    async def add_incoming(self, company_id: str, message_id: str, chat: str, media: MediaDescriptor) -> None:
        """A download to make: the row keeps the transport's download key (``source``)."""
        await self.db.execute(
            """INSERT INTO media (company_id, id, direction, kind, state, mimetype, size, sha256, caption, filename,
                                  message_id, chat, source, error)
               VALUES ($1, $2, 'in', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
               ON CONFLICT (company_id, id) DO NOTHING""",
            company_id, media.id, media.kind.value, media.state.value, media.mimetype, media.size, media.sha256,
            media.caption, media.filename, message_id, chat, media.source, media.error,
        )

    async def get(self, company_id: str, media_id: str) -> MediaRow | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM media WHERE company_id = $1 AND id = $2",
                                     company_id, media_id)
        return None if row is None else MediaRow.of(row)

    async def stored(self, company_id: str, media_id: str, *, sha256: str, size: int,
                     mimetype: str | None) -> MediaDescriptor:
        """The download is in the blob store: forget its download key."""
        row = await self.db.fetchrow(
            f"""UPDATE media SET state = 'stored', sha256 = $3, size = $4, mimetype = coalesce($5, mimetype),
                       source = NULL, error = NULL, stored_at = now(), attempts = attempts + 1
                WHERE company_id = $1 AND id = $2 RETURNING {_COLUMNS}""",
            company_id, media_id, sha256, size, mimetype,
        )
        if row is None:
            raise LookupError(f"no media {media_id} of {company_id}")
        return MediaRow.of(row).descriptor()

    async def attempt_failed(self, company_id: str, media_id: str, error: str) -> None:
        await self.db.execute(
            """UPDATE media SET attempts = attempts + 1, error = $3
               WHERE company_id = $1 AND id = $2 AND state = 'pending'""",
            company_id, media_id, error[:500],
        )

    async def failed(self, company_id: str, media_id: str, error: str) -> MediaDescriptor:
        """The download is given up: the message goes on with this failure named (a stored one stays stored)."""
        row = await self.db.fetchrow(
            f"""UPDATE media SET state = CASE WHEN state = 'stored' THEN state ELSE 'failed' END,
                       error = CASE WHEN state = 'stored' THEN error ELSE $3 END,
                       source = CASE WHEN state = 'stored' THEN source ELSE NULL END
                WHERE company_id = $1 AND id = $2 RETURNING {_COLUMNS}""",
            company_id, media_id, error[:500],
        )
        if row is None:
            raise LookupError(f"no media {media_id} of {company_id}")
        return MediaRow.of(row).descriptor()
