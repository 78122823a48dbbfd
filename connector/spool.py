"""Incoming messages made durable before the transport's callback returns (SPEC M4).

whatsmeow acknowledges a message to WhatsApp before our handler runs (neonize does not expose
``SynchronousAck``), so WhatsApp will not send it again: from that moment the connector is its only
copy. :meth:`IncomingSpool.put` therefore commits it to ``incoming_spool`` in PostgreSQL and only
then returns; :meth:`IncomingSpool.drain` hands spooled messages to Temporal (signal-with-start of the
chat's inbox workflow), oldest first and one at a time per chat, and deletes each once Temporal has
it. A Temporal outage only lets the spool grow; a connector that dies leaves its rows to whichever
connector adopts its holds (rows of a dead or released process are taken over with them).

When PostgreSQL itself is unreachable, ``put`` appends the message to a journal file on the
connector's disk (``DATA_DIR/spool/<connector id>.jsonl``, fsynced) instead, and keeps doing so until
the journal has been moved into PostgreSQL, so arrival order is kept. Windows that remain: between
WhatsApp's ack and the commit (a crash then loses the message), and a journal on a machine whose
connector never starts again.

Per-chat order across processes: a row is handed over only when no older row of its chat belongs to
another owner, and the inbox workflow drops a WhatsApp id it has already seen, so a message handed
over twice (its delete lost to a crash) is processed once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from domain.inbox import IncomingMessage
from storage import Database

log = logging.getLogger("waorch.spool")

_MESSAGE = TypeAdapter(IncomingMessage)
_ORPHAN_OWNERS = """SELECT incarnation FROM connector_leases
                     WHERE pool = $2 AND (dead_at IS NOT NULL OR released_at IS NOT NULL)"""

HandOff = Callable[[IncomingMessage], Awaitable[bool]]


class IncomingSpool:
    def __init__(self, db: Database, owner: str, pool: str, journal: Path, *, max_pending: int = 100_000,
                 batch: int = 500, put_timeout_s: float = 3.0) -> None:
        self.db = db
        self.owner = owner
        self.pool = pool
        self.journal = journal
        self.max_pending = max_pending
        self.batch = batch
        self.put_timeout_s = put_timeout_s
        self.pending = 0  # this process's rows and journal lines not yet handed over (approximate)
        self.handed_over = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._journal_lock = asyncio.Lock()
        self._queue: list[tuple[IncomingMessage, str, asyncio.Future[None]]] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._journaling = journal.exists() and journal.stat().st_size > 0

    # ------------------------------------------------------------------ put (the transport's callback)

    async def put(self, msg: IncomingMessage) -> None:
        """Return only once ``msg`` is durable (PostgreSQL, or the local journal if it is down).

        Messages are queued in the order ``put`` is called (before any await) and written by one
        writer in batches, in that order: concurrent callers (a transport's threads) keep arrival
        order, and a burst costs one commit, not one per message.
        """
        while self.pending >= self.max_pending:
            self._room.clear()
            log.warning("spool full pending=%d: holding WhatsApp until it drains", self.pending)
            await self._room.wait()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((msg, json.dumps(_MESSAGE.dump_python(msg, mode="json")), done))
        self._queued.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name="spool-writer")
        await done

    async def _write_forever(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            items = [(m, p) for m, p, _ in batch]
            try:
                if self._journaling:
                    raise RuntimeError("journal not yet moved to PostgreSQL")
                await asyncio.wait_for(self._insert(items), self.put_timeout_s)
            except Exception as exc:
                if not self._journaling:
                    log.warning("spool write failed, journaling on disk messages=%d error=%s", len(items),
                                type(exc).__name__)
                try:
                    await self._append_journal([p for _, p in items])
                except Exception as journal_exc:  # nowhere durable: tell the callers
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(journal_exc)
                    continue
            self._added(len(batch))
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _added(self, n: int) -> None:
        self.pending += n
        self._wake.set()

    async def _insert(self, items: list[tuple[IncomingMessage, str]]) -> None:
        await self.db.execute(
            """INSERT INTO incoming_spool (owner, company_id, chat, message_id, payload)
               SELECT $1, m.company_id, m.chat, m.message_id, m.payload::jsonb
               FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
                    AS m(company_id, chat, message_id, payload, n)
               ORDER BY m.n""",
            self.owner, [m.company_id for m, _ in items], [m.chat for m, _ in items],
            [m.message_id for m, _ in items], [p for _, p in items],
        )

    async def _append_journal(self, payloads: list[str]) -> None:
        async with self._journal_lock:
            self._journaling = True
            await asyncio.to_thread(_append_fsync, self.journal, payloads)

    async def _flush_journal(self) -> None:
        """Move the journal into PostgreSQL (in order, in one transaction), then empty it."""
        async with self._journal_lock:
            if not self._journaling:
                return
            lines = await asyncio.to_thread(_read_lines, self.journal)
            items = [(_MESSAGE.validate_python(json.loads(line)), line) for line in lines]
            if items:
                await self._insert(items)
            await asyncio.to_thread(self.journal.unlink, missing_ok=True)
            self._journaling = False
            log.info("spool journal moved to PostgreSQL messages=%d", len(items))

    # ------------------------------------------------------------------ drain (to Temporal)

    async def drain(self, hand_off: HandOff, stop: asyncio.Event, *, concurrency: int = 32) -> None:
        """Hand spooled messages to Temporal until ``stop`` is set.

        This is a queue consumer, woken by each ``put`` (or every second, to adopt rows that dead
        processes left): it runs in the connector because that is where the messages arrive and it
        must work while Temporal is unreachable.
        """
        delay = 0.0
        while not stop.is_set():
            self._wake.clear()
            try:
                if self._journaling:
                    await self._flush_journal()
                await self.adopt_orphans()
                progressed, failed = await self._drain_once(hand_off, concurrency)
            except Exception as exc:  # PostgreSQL down: try again shortly, nothing is lost
                log.warning("spool drain failed error=%s", type(exc).__name__)
                progressed, failed = False, True
            if failed:  # Temporal or PostgreSQL not there: back off (0.5 s doubling to 10 s)
                delay = min(max(delay * 2, 0.5), 10.0)
                await _first_of(stop, timeout=delay)
                continue
            delay = 0.0
            if not progressed:
                await _first_of(stop, self._wake, timeout=1.0)

    async def adopt_orphans(self) -> int:
        status = await self.db.execute(
            f"UPDATE incoming_spool SET owner = $1 WHERE owner IN ({_ORPHAN_OWNERS})", self.owner, self.pool
        )
        adopted = int(status.split()[-1])
        if adopted:
            self.pending += adopted
            log.info("spool rows adopted from stopped connectors count=%d", adopted)
        return adopted

    async def _drain_once(self, hand_off: HandOff, concurrency: int) -> tuple[bool, bool]:
        rows = await self.db.fetch(
            """SELECT s.id, s.chat, s.company_id, s.payload::text AS payload FROM incoming_spool s
               WHERE s.owner = $1 AND NOT EXISTS (
                   SELECT 1 FROM incoming_spool o WHERE o.company_id = s.company_id AND o.chat = s.chat
                     AND o.id < s.id AND o.owner <> s.owner)
               ORDER BY s.id LIMIT $2""",
            self.owner, self.batch,
        )
        if not rows:
            self.pending = 0
            self._room.set()
            return False, False
        chats: dict[tuple[str, str], list[Any]] = {}
        for row in rows:
            chats.setdefault((row["company_id"], row["chat"]), []).append(row)
        sem = asyncio.Semaphore(concurrency)
        failed = False

        async def one_chat(items: list[Any]) -> None:
            nonlocal failed
            async with sem:
                for row in items:
                    msg = _MESSAGE.validate_python(json.loads(row["payload"]))
                    if not await hand_off(msg):
                        failed = True
                        await self.db.execute(
                            "UPDATE incoming_spool SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                            row["id"], "Temporal did not take it",
                        )
                        return  # the rest of this chat waits: order first
                    await self.db.execute("DELETE FROM incoming_spool WHERE id = $1", row["id"])
                    self.handed_over += 1
                    self.pending = max(self.pending - 1, 0)

        await asyncio.gather(*(one_chat(items) for items in chats.values()))
        if self.pending < self.max_pending:
            self._room.set()
        return True, failed


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _append_fsync(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
