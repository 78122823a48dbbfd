"""``session_holds``: which connector process holds which company's connection (SPEC S1, S9, O8).

At most one row per company. A connector opens a company's WhatsApp connection only after it owns
the row (``holder`` = its incarnation) and closes it when the row is no longer its own, so two
processes can never both hold one number. A row outlives the process that wrote it: when that
process is declared dead (connector/lease.py) or released its lease on a graceful stop, a live
connector *adopts* the row and resumes the connection under the same hold id. Adoption prefers the
successor with the same CONNECTOR_ID (same task queue: nothing to tell Temporal), then spreads the
rest over the live connectors.

A hold that ended is first marked ``ended`` (its outcome), then reported to the session workflow,
then deleted: a process that dies in between leaves a row that the adopter only reports and deletes,
it never reconnects it (a 440 must stay a 440).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from connector.lease import Incarnation
from domain.session import HeldElsewhere, HoldOutcome, HoldOutcomeKind
from storage import Database

# A row is an orphan when no live process holds its lease.
_ORPHAN = """(l.incarnation IS NULL OR l.dead_at IS NOT NULL OR l.released_at IS NOT NULL)"""
_LIVE = "dead_at IS NULL AND released_at IS NULL AND expires_at > now()"


class HeldElsewhereError(RuntimeError):
    def __init__(self, holder: HeldElsewhere) -> None:
        super().__init__(f"held by another connector ({holder.holder_queue})")
        self.holder = holder


@dataclass
class HoldRow:
    company_id: str
    hold_id: str
    workflow_id: str
    jid: str | None
    pairing_phone: str | None
    announced_queue: str | None
    ended: HoldOutcome | None


def _outcome(raw: str | None) -> HoldOutcome | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return HoldOutcome(HoldOutcomeKind(data["kind"]), data.get("detail", ""), data.get("ban_expires_s"))


class HoldTable:
    def __init__(self, db: Database, me: Incarnation) -> None:
        self.db = db
        self.me = me

    async def claim(self, company_id: str, hold_id: str, workflow_id: str, jid: str | None,
                    pairing_phone: str | None) -> None:
        """Make this process the company's holder, unless a live other process holds it.

        Raises:
            HeldElsewhereError: a live connector holds the company (its queue and hold id attached).
        """
        taken = await self.db.fetchval(
            f"""INSERT INTO session_holds AS h (company_id, hold_id, holder, workflow_id, jid, pairing_phone, pool)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (pool, company_id) DO UPDATE
                    SET hold_id = EXCLUDED.hold_id, holder = EXCLUDED.holder, workflow_id = EXCLUDED.workflow_id,
                        jid = EXCLUDED.jid, pairing_phone = EXCLUDED.pairing_phone, announced_queue = NULL,
                        ended = NULL, since = now()
                WHERE h.holder = EXCLUDED.holder OR h.ended IS NOT NULL OR NOT EXISTS (
                    SELECT 1 FROM connector_leases l WHERE l.incarnation = h.holder AND NOT {_ORPHAN})
                RETURNING company_id""",
            company_id, hold_id, self.me.incarnation, workflow_id, jid, pairing_phone, self.me.pool,
        )
        if taken is None:
            row = await self.db.fetchrow(
                """SELECT h.hold_id, l.own_queue FROM session_holds h
                   LEFT JOIN connector_leases l ON l.incarnation = h.holder
                   WHERE h.pool = $2 AND h.company_id = $1""",
                company_id, self.me.pool,
            )
            if row is None:  # ended and deleted in between: try once more
                return await self.claim(company_id, hold_id, workflow_id, jid, pairing_phone)
            raise HeldElsewhereError(HeldElsewhere(holder_queue=row["own_queue"] or "", hold_id=row["hold_id"]))

    async def announced(self, company_id: str, hold_id: str, queue: str) -> None:
        """The session workflow has been told that this process holds the hold on ``queue``."""
        await self.db.execute(
            "UPDATE session_holds SET announced_queue = $3 WHERE company_id = $1 AND hold_id = $2 AND holder = $4",
            company_id, hold_id, queue, self.me.incarnation,
        )

    async def mark_ended(self, company_id: str, hold_id: str, outcome: HoldOutcome) -> None:
        await self.db.execute(
            "UPDATE session_holds SET ended = $3::jsonb WHERE company_id = $1 AND hold_id = $2 AND holder = $4",
            company_id, hold_id,
            json.dumps({"kind": outcome.kind.value, "detail": outcome.detail, "ban_expires_s": outcome.ban_expires_s}),
            self.me.incarnation,
        )

    async def delete(self, company_id: str, hold_id: str) -> None:
        await self.db.execute(
            "DELETE FROM session_holds WHERE company_id = $1 AND hold_id = $2 AND holder = $3",
            company_id, hold_id, self.me.incarnation,
        )

    async def mine(self) -> dict[str, str]:
        """company id → hold id of every row this process holds."""
        rows = await self.db.fetch("SELECT company_id, hold_id FROM session_holds WHERE holder = $1",
                                   self.me.incarnation)
        return {r["company_id"]: r["hold_id"] for r in rows}

    async def adopt(self, *, held_now: int, capacity: int, batch: int) -> list[HoldRow]:
        """Take over orphaned rows: first those of this CONNECTOR_ID's earlier processes, then a fair
        share of the others (never rows whose CONNECTOR_ID has a live successor: they are its own)."""
        room = min(batch, capacity - held_now)
        if room <= 0:
            return []
        rows = await self._adopt(room, sticky=True)
        room -= len(rows)
        if room > 0:
            total, live = await self.db.fetchrow(
                f"""SELECT (SELECT count(*) FROM session_holds WHERE pool = $1),
                          (SELECT count(*) FROM connector_leases WHERE pool = $1 AND {_LIVE})""",
                self.me.pool,
            ) or (0, 1)
            share = math.ceil(total / max(live, 1) * 1.05) + 5
            room = min(room, share - held_now - len(rows))
            if room > 0:
                rows += await self._adopt(room, sticky=False)
        return rows

    async def _adopt(self, limit: int, *, sticky: bool) -> list[HoldRow]:
        same_id = "l.connector_id = $2" if sticky else (
            f"(l.connector_id IS DISTINCT FROM $2 AND NOT EXISTS (SELECT 1 FROM connector_leases s "
            f"WHERE s.pool = $4 AND s.connector_id = l.connector_id AND s.{_LIVE.replace(' AND ', ' AND s.')}))"
        )
        rows = await self.db.fetch(
            f"""WITH orphan AS (
                    SELECT h.company_id FROM session_holds h
                    LEFT JOIN connector_leases l ON l.incarnation = h.holder
                    WHERE h.pool = $4 AND {_ORPHAN} AND {same_id}
                    ORDER BY h.company_id LIMIT $3
                    FOR UPDATE OF h SKIP LOCKED)
                UPDATE session_holds h SET holder = $1, since = now()
                FROM orphan WHERE h.pool = $4 AND h.company_id = orphan.company_id
                RETURNING h.company_id, h.hold_id, h.workflow_id, h.jid, h.pairing_phone, h.announced_queue,
                          h.ended::text AS ended""",
            self.me.incarnation, self.me.connector_id, limit, self.me.pool,
        )
        return [HoldRow(r["company_id"], r["hold_id"], r["workflow_id"], r["jid"], r["pairing_phone"],
                        r["announced_queue"], _outcome(r["ended"])) for r in rows]

    async def live_connectors(self) -> int:
        count: int = await self.db.fetchval(f"SELECT count(*) FROM connector_leases WHERE pool = $1 AND {_LIVE}",
                                            self.me.pool)
        return count

    async def is_held(self, company_id: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM session_holds WHERE pool = $1 AND company_id = $2)", self.me.pool, company_id
        ))

    async def of(self, incarnation: str) -> list[str]:
        """The companies a (dead) process held."""
        rows = await self.db.fetch("SELECT company_id FROM session_holds WHERE pool = $1 AND holder = $2",
                                   self.me.pool, incarnation)
        return [r["company_id"] for r in rows]

    async def orphans(self) -> int:
        count: int = await self.db.fetchval(
            f"""SELECT count(*) FROM session_holds h LEFT JOIN connector_leases l ON l.incarnation = h.holder
                WHERE h.pool = $1 AND {_ORPHAN}""", self.me.pool,
        )
        return count
