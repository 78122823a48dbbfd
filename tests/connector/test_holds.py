"""``session_holds`` claims on a real PostgreSQL: a company held by a live connector process is never
claimed by another (two holders of one number); it may be taken once its holder is declared dead,
released its lease, or ended the hold."""

from __future__ import annotations

import uuid

import pytest

from connector.holds import HeldElsewhereError, HoldTable
from connector.lease import Incarnation
from domain.session import HoldOutcome, HoldOutcomeKind
from storage import Database


async def _live(db: Database, pool: str, name: str) -> Incarnation:
    me = Incarnation(pool=pool, connector_id=name, incarnation=f"{name}:{uuid.uuid4().hex[:8]}",
                     own_queue=f"connector.{name}", host="elsewhere", process="1:1")
    await db.execute(
        """INSERT INTO connector_leases (incarnation, pool, connector_id, own_queue, host, process, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() + interval '1 hour')""",
        me.incarnation, me.pool, me.connector_id, me.own_queue, me.host, me.process)
    return me


async def test_a_live_holder_keeps_its_hold_until_it_is_dead_released_or_ended(db: Database) -> None:
    pool = f"test/{uuid.uuid4().hex[:8]}"
    a, b = await _live(db, pool, "a"), await _live(db, pool, "b")
    ha, hb = HoldTable(db, a), HoldTable(db, b)

    await ha.claim("company_h1", "hold-1", "session-company_h1", None, None)
    with pytest.raises(HeldElsewhereError) as refused:
        await hb.claim("company_h1", "hold-2", "session-company_h1", None, None)
    assert refused.value.holder.holder_queue == a.own_queue and refused.value.holder.hold_id == "hold-1"
    # Its own holder may claim again (a new hold of the same session).
    await ha.claim("company_h1", "hold-3", "session-company_h1", None, None)
    assert await ha.mine() == {"company_h1": "hold-3"}

    # An ended hold may be claimed by anyone; so may one whose holder was declared dead or released.
    await ha.claim("company_h2", "hold-4", "session-company_h2", None, None)
    await ha.claim("company_h3", "hold-5", "session-company_h3", None, None)
    await ha.mark_ended("company_h2", "hold-4", HoldOutcome(HoldOutcomeKind.DROPPED, "drop"))
    await hb.claim("company_h2", "hold-6", "session-company_h2", None, None)
    await db.execute("UPDATE connector_leases SET dead_at = now() WHERE incarnation = $1", a.incarnation)
    await hb.claim("company_h1", "hold-7", "session-company_h1", None, None)
    await hb.claim("company_h3", "hold-8", "session-company_h3", None, None)
    assert await hb.mine() == {"company_h1": "hold-7", "company_h2": "hold-6", "company_h3": "hold-8"}
