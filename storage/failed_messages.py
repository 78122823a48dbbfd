"""The ``failed_messages`` table: incoming messages that wait for a person (issue #15.1).

A row is written when a company's handler failed for the whole retry window
(``FailedInboxMessage`` workflow, first activity) and deleted when an operator
redelivered or discarded the message (then an ``audit`` row says who, and
what). A row exists exactly while the message waits, whatever Temporal's
namespace retention does to closed workflows; the nightly backup carries it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.inbox import (
    FailedCompanyCount,
    FailedMessageRecord,
    FailedMessagesSummary,
    IncomingMessage,
    ParkResult,
    incoming_from_json,
    incoming_to_json,
)
from storage.db import Database


@dataclass
class FailedMessage:
    company_id: str
    message_id: str
    chat: str
    message: IncomingMessage
    error: str
    claim: str
    workflow_id: str
    attempts: int
    failed_at: datetime
    last_attempt_at: datetime

    def to_json(self) -> dict[str, Any]:
        m = self.message
        return {
            "companyId": self.company_id, "messageId": self.message_id, "chat": self.chat,
            "sender": m.sender, "senderPhone": m.sender_phone, "pushName": m.push_name, "text": m.text,
            "messageType": m.message_type, "sentAt": m.timestamp.isoformat(),
            "failedAt": self.failed_at.isoformat(), "lastAttemptAt": self.last_attempt_at.isoformat(),
            "attempts": self.attempts, "error": self.error, "workflowId": self.workflow_id,
        }


_COLUMNS = "company_id, message_id, chat, message, error, claim, workflow_id, attempts, failed_at, last_attempt_at"


def _row(r: Any) -> FailedMessage:
    raw = r["message"]
    return FailedMessage(
        company_id=r["company_id"], message_id=r["message_id"], chat=r["chat"],
        message=incoming_from_json(json.loads(raw) if isinstance(raw, str) else dict(raw)),
        error=r["error"], claim=r["claim"], workflow_id=r["workflow_id"], attempts=r["attempts"],
        failed_at=r["failed_at"], last_attempt_at=r["last_attempt_at"],
    )


async def park(db: Database, record: FailedMessageRecord) -> ParkResult:
    """Keep the message (idempotent: a repeated park changes nothing but the workflow id)."""
    msg = record.message
    async with db.connection() as conn, conn.transaction():
        # One company's failures are parked one at a time, so exactly one of them is its "first".
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('failed_messages:' || $1))", msg.company_id)
        others = int(await conn.fetchval(
            "SELECT count(*) FROM failed_messages WHERE company_id = $1 AND message_id <> $2",
            msg.company_id, msg.message_id,
        ))
        row = await conn.fetchrow(
            """INSERT INTO failed_messages (company_id, message_id, chat, message, error, claim, workflow_id)
               VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
               ON CONFLICT (company_id, message_id) DO UPDATE SET workflow_id = EXCLUDED.workflow_id
               RETURNING attempts, (xmax = 0) AS inserted""",
            msg.company_id, msg.message_id, msg.chat, json.dumps(incoming_to_json(msg)), record.error[:2000],
            record.claim, record.workflow_id,
        )
    assert row is not None
    return ParkResult(first_for_company=bool(row["inserted"]) and others == 0, attempts=int(row["attempts"]),
                      waiting_for_company=others + 1)


async def record_attempt(db: Database, company_id: str, message_id: str, error: str) -> int:
    """One more failed redelivery; returns the attempts so far (0: the row is gone)."""
    attempts = await db.fetchval(
        """UPDATE failed_messages SET attempts = attempts + 1, error = $3, last_attempt_at = now()
           WHERE company_id = $1 AND message_id = $2 RETURNING attempts""",
        company_id, message_id, error[:2000],
    )
    return int(attempts or 0)


async def resolve(db: Database, company_id: str, message_id: str, outcome: str, actor: str) -> bool:
    """The message was redelivered or discarded: delete its row, write who did it to the audit."""
    async with db.connection() as conn, conn.transaction():
        row = await conn.fetchrow(
            "DELETE FROM failed_messages WHERE company_id = $1 AND message_id = $2 RETURNING chat, attempts",
            company_id, message_id,
        )
        if row is None:
            return False
        await conn.execute(
            "INSERT INTO audit (actor, company_id, action, details) VALUES ($1, $2, $3, $4::jsonb)",
            actor[:200], company_id, f"failed_message.{outcome}",
            json.dumps({"messageId": message_id, "chat": row["chat"], "attempts": row["attempts"]}),
        )
    return True


async def get(db: Database, company_id: str, message_id: str) -> FailedMessage | None:
    r = await db.fetchrow(f"SELECT {_COLUMNS} FROM failed_messages WHERE company_id = $1 AND message_id = $2",
                          company_id, message_id)
    return _row(r) if r is not None else None


async def list_waiting(db: Database, company_id: str | None = None, limit: int = 100) -> list[FailedMessage]:
    """Waiting messages, oldest failure first (one company's, or every company's)."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM failed_messages WHERE $1::text IS NULL OR company_id = $1
            ORDER BY failed_at, company_id, message_id LIMIT $2""",
        company_id, limit,
    )
    return [_row(r) for r in rows]


async def summary(db: Database, company_id: str | None = None) -> FailedMessagesSummary:
    rows = await db.fetch(
        """SELECT company_id, count(*) AS waiting, min(failed_at) AS oldest FROM failed_messages
           WHERE $1::text IS NULL OR company_id = $1 GROUP BY company_id ORDER BY min(failed_at)""",
        company_id,
    )
    companies = [FailedCompanyCount(r["company_id"], int(r["waiting"]), r["oldest"]) for r in rows]
    return FailedMessagesSummary(total=sum(c.waiting for c in companies), companies=companies)
