"""The incoming spool is bounded (SPOOL_MAX_PENDING): when it is full the transport's callback waits, so
the connector reads no further messages from WhatsApp (which keeps what was not read) instead of growing
without end; it lets go as soon as the drain hands messages to Temporal, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from cli.embedded import wait_until
from connector.spool import IncomingSpool
from domain.inbox import IncomingMessage
from storage import Database, incoming_spool

CHAT = "79990000001@s.whatsapp.net"


def message(i: int) -> IncomingMessage:
    return IncomingMessage(company_id="company_bound", message_id=f"M{i:03d}", chat=CHAT, sender=CHAT,
                           timestamp=datetime.now(UTC), text=f"m{i}")


async def test_a_full_spool_holds_the_callback_until_the_drain_makes_room(db: Database, tmp_path: Path) -> None:
    spool = IncomingSpool(db, "c-bound", "pool", tmp_path / "journal.jsonl", max_pending=10)
    await asyncio.gather(*(spool.put(message(i)) for i in range(10)))
    assert (await incoming_spool.summary(db)).messages == 10

    eleventh = asyncio.create_task(spool.put(message(10)))
    for _ in range(20):  # let it run as far as it can without the drain
        await asyncio.sleep(0)
    assert not eleventh.done()
    assert (await incoming_spool.summary(db)).messages == 10  # not written yet: its callback waits

    handed: list[str] = []

    async def hand_off(msg: IncomingMessage) -> bool:
        handed.append(msg.message_id)
        return True

    stop = asyncio.Event()
    drain = asyncio.create_task(spool.drain(hand_off, stop))
    try:
        await asyncio.wait_for(eleventh, 10)

        async def all_handed() -> bool:
            return (await incoming_spool.summary(db)).messages == 0 and len(handed) == 11

        await wait_until(all_handed, 10)
    finally:
        stop.set()
        await asyncio.wait_for(drain, 15)
    assert handed == [f"M{i:03d}" for i in range(11)]  # each once, in arrival order
