"""The ``message_status`` table: the latest status of each sent message (issue 11.3).

The connector writes it as the server ack and the receipts arrive (connector.activities); the API
reads it for ``GET …/messages/{id}``; the cleanup job deletes rows not changed for
``MESSAGE_STATUS_MAX_AGE_DAYS``. A status only moves forward (``server`` → ``delivered`` → ``read`` →
``played``): a late or repeated receipt changes nothing but the time of its own step, if that was
not known yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.receipts import MessageStatus
from storage.db import Database

_RECORD = """
INSERT INTO message_status (company_id, message_id, chat, status, ack, server_at, delivered_at, read_at, played_at)
SELECT $1, m, $3, $4, $5,
       CASE WHEN $4 = 'server' THEN $6::timestamptz END, CASE WHEN $4 = 'delivered' THEN $6::timestamptz END,
       CASE WHEN $4 = 'read' THEN $6::timestamptz END, CASE WHEN $4 = 'played' THEN $6::timestamptz END
FROM unnest($2::text[]) AS m
ON CONFLICT (company_id, message_id) DO UPDATE SET
    chat = COALESCE(message_status.chat, EXCLUDED.chat),
    status = CASE WHEN EXCLUDED.ack > message_status.ack THEN EXCLUDED.status ELSE message_status.status END,
    ack = GREATEST(message_status.ack, EXCLUDED.ack),
    server_at = COALESCE(message_status.server_at, EXCLUDED.server_at),
    delivered_at = COALESCE(message_status.delivered_at, EXCLUDED.delivered_at),
    read_at = COALESCE(message_status.read_at, EXCLUDED.read_at),
    played_at = COALESCE(message_status.played_at, EXCLUDED.played_at),
    updated_at = now()
"""

# Rows the cleanup job deletes (and counts in a dry run): not changed for $1 days.
EXPIRED_WHERE = "updated_at < now() - make_interval(days => $1)"


@dataclass
class MessageStatusRow:
    company_id: str
    message_id: str
    chat: str | None
    status: MessageStatus
    server_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    played_at: datetime | None
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        def at(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "companyId": self.company_id, "messageId": self.message_id, "chat": self.chat,
            "status": self.status.value, "ack": self.status.ack,
            "serverAt": at(self.server_at), "deliveredAt": at(self.delivered_at), "readAt": at(self.read_at),
            "playedAt": at(self.played_at), "updatedAt": at(self.updated_at),
        }


async def record_status(db: Database, company_id: str, message_ids: list[str], status: MessageStatus,
                        chat: str | None, at: datetime) -> None:
    """Move each message's status forward to ``status`` (never back); remember when ``status`` happened."""
    if message_ids:
        await db.execute(_RECORD, company_id, message_ids, chat, status.value, status.ack, at)


async def message_status(db: Database, company_id: str, message_id: str) -> MessageStatusRow | None:
    row = await db.fetchrow(
        """SELECT company_id, message_id, chat, status, server_at, delivered_at, read_at, played_at, updated_at
           FROM message_status WHERE company_id = $1 AND message_id = $2""",
        company_id, message_id,
    )
    if row is None:
        return None
    return MessageStatusRow(row["company_id"], row["message_id"], row["chat"], MessageStatus(row["status"]),
                            row["server_at"], row["delivered_at"], row["read_at"], row["played_at"],
                            row["updated_at"])
