"""Fault run: Temporal, PostgreSQL and Redis killed in turn under load; what each outage costs.

Production's shape on one machine: a Temporal dev server (file store), PostgreSQL and Redis as
separate processes, and the project's connector, worker and api as ``waorch`` processes against
them. Companies are paired (simulated phones) with a webhook handler served by this process.

Load, the whole run:

* sends through the api (``POST …/send``) at ``--send-rate`` per second, each with its own
  Idempotency-Key, retried with that key (5xx, 409, 429, timeouts) until accepted or
  ``--send-deadline`` passes, as a careful client does;
* incoming messages from the phone side at ``--incoming-rate`` per second over three chats per
  company, straight to the connector's simulated WhatsApp socket (``PHONE_SIDE_PORT``), so they arrive
  whether or not Temporal, PostgreSQL or Redis is up; each is retried with its id until the
  connector accepts it (WhatsApp redelivers what was not acknowledged).

Each service in turn is SIGKILLed, left down ``--down-seconds``, started again on its own data,
and the load goes on ``--settle-seconds`` more. One JSON line per service:

* sends started in that window: accepted, exactly once at the phone, missing, doubled;
* incoming accepted in that window: delivered once to the webhook, lost, out of chat order;
* reconnects caused by the outage (connection attempts counted by the simulated WhatsApp);
* seconds from the service being back until a send is accepted again;
* the API's answers to sends while the service was down, and from its return until that first acceptance.

    .venv/bin/python -m bench.outages --down-seconds 30
    .venv/bin/python -m bench.outages --services redis --down-seconds 5 --companies 4   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.common import emit
from bench.store_data import fill_device
from cli.embedded import EmbeddedPostgres, EmbeddedRedis, TemporalDevConfig, TemporalDevServer, free_port, wait_until
from cli.processes import ConnectorProcess, ServiceProcess
from connector.neonize_store import ensure_store_schema
from domain.settings import Settings
from storage import Database, migrate

ADMIN_KEY = "outages-admin-key-0123456789abcdef"
SERVICES = ("temporal", "postgresql", "redis")


# --------------------------------------------------------------------------- the backing services


class Backing:
    """Temporal, PostgreSQL and Redis as separate processes that can be SIGKILLed and started again."""

    def __init__(self, root: Path) -> None:
        self.temporal = TemporalDevServer(
            TemporalDevConfig(port=free_port(), ui_port=free_port(), db_filename="temporal.db",
                              search_attributes={"CompanyId": "Keyword", "SessionState": "Keyword"},
                              sqlite_pragmas={"journal_mode": "wal", "synchronous": "normal"}),
            root / "temporal", ui=False,
        )
        self.pg = EmbeddedPostgres(root / "pg", free_port())
        self.redis = EmbeddedRedis(root / "redis", free_port())

    def start(self, name: str) -> None:
        {"temporal": self.temporal.start, "postgresql": self.pg.start, "redis": self.redis.start}[name]()

    def kill(self, name: str) -> None:
        if name == "temporal":
            assert self.temporal.proc is not None
            self.temporal.proc.kill()
            self.temporal.proc.wait(10)
            self.temporal.proc = None
        elif name == "redis":
            assert self.redis.proc is not None
            self.redis.proc.kill()
            self.redis.proc.wait(10)
            self.redis.proc = None
        else:  # the postmaster and every backend: nothing may linger on its shared memory
            pid = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
            victims = [pid, *_children(pid)]
            for p in victims:
                _kill(p)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in victims) and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop_all(self) -> None:
        self.temporal.stop()
        self.redis.stop()
        self.pg.stop("immediate")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- what the run records


@dataclass
class Send:
    company: str
    key: str
    text: str
    started: float
    accepted_at: float | None = None
    attempts: int = 0


@dataclass
class Incoming:
    company: str
    chat: str
    message_id: str
    seq: int
    started: float
    accepted_at: float | None = None


@dataclass
class Record:
    sends: list[Send] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # message ids in webhook arrival order
    send_ok_at: list[float] = field(default_factory=list)
    send_answers: list[tuple[float, str]] = field(default_factory=list)  # (when, status code or error)


async def serve_webhook(record: Record, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    async def hook(request: Request) -> Response:
        body = await request.json()
        if body.get("messageId"):
            record.delivered.append(str(body["messageId"]))
        return Response(status_code=204)

    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    return server, asyncio.create_task(server.serve())


# --------------------------------------------------------------------------- load


async def send_load(api: httpx.AsyncClient, companies: list[str], rate: float, deadline_s: float,
                    record: Record, stop: asyncio.Event) -> None:
    tasks: set[asyncio.Task[None]] = set()
    for i in itertools.count():
        if stop.is_set():
            break
        s = Send(companies[i % len(companies)], f"out-{uuid.uuid4().hex[:16]}", f"send {i}", time.monotonic())
        record.sends.append(s)
        task = asyncio.create_task(_send_one(api, s, deadline_s, record))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks, return_exceptions=True)


async def _send_one(api: httpx.AsyncClient, s: Send, deadline_s: float, record: Record) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": s.key}
    while time.monotonic() - s.started < deadline_s:
        s.attempts += 1
        try:
            resp = await api.post(f"/api/whatsapp/sessions/{s.company}/send",
                                  json={"to": "79990001122@s.whatsapp.net", "message": s.text}, headers=headers)
            record.send_answers.append((time.monotonic(), f"{resp.status_code} {resp.json().get('code', '')}"))
            if resp.status_code == 200:
                s.accepted_at = time.monotonic()
                record.send_ok_at.append(s.accepted_at)
                return
            if resp.status_code not in (409, 429) and resp.status_code < 500:
                return  # refused for good (a bug in this run): counted as not accepted
        except httpx.HTTPError as exc:
            record.send_answers.append((time.monotonic(), type(exc).__name__))
        await asyncio.sleep(0.5)


async def incoming_load(phone: httpx.AsyncClient, chats: list[tuple[str, str]], rate: float, record: Record,
                        stop: asyncio.Event) -> None:
    seqs: Counter[str] = Counter()
    per_chat_lock: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    tasks: set[asyncio.Task[None]] = set()
    for i in itertools.count():
        if stop.is_set():
            break
        company, chat = chats[i % len(chats)]
        seqs[chat] += 1
        m = Incoming(company, chat, f"IN{i:06d}{uuid.uuid4().hex[:6].upper()}", seqs[chat], time.monotonic())
        record.incoming.append(m)
        task = asyncio.create_task(_incoming_one(phone, m, per_chat_lock[chat]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks, return_exceptions=True)


async def _incoming_one(phone: httpx.AsyncClient, m: Incoming, chat_lock: asyncio.Lock) -> None:
    async with chat_lock:  # one phone sends one chat's messages one after the other
        while True:
            try:
                resp = await phone.post(f"/phone/{m.company}/incoming",
                                        json={"text": f"m {m.seq}", "chat": m.chat, "sender": m.chat,
                                              "message_id": m.message_id})
                if resp.status_code == 200:
                    m.accepted_at = time.monotonic()
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)


async def dials(phone: httpx.AsyncClient) -> dict[str, int]:
    resp = await phone.get("/phone/stats")
    resp.raise_for_status()
    return {k: int(v) for k, v in resp.json()["dials"].items()}


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace, root: Path | None = None) -> list[dict[str, Any]]:
    """Run the fault sequence; return one result per service (also printed as JSON lines)."""
    root = root or Path(tempfile.mkdtemp(prefix="bench-outages-"))
    backing = Backing(root)
    procs: list[ServiceProcess] = []
    results: list[dict[str, Any]] = []
    for name in SERVICES:
        await asyncio.to_thread(backing.start, name)
    try:
        await asyncio.to_thread(backing.pg.create_database, "outages")
        dsn = backing.pg.dsn_for("outages")
        db = Database(dsn, max_size=4)
        await migrate(db)
        if args.transport == "model":
            await ensure_store_schema(dsn)
        hook_port, api_port, phone_port = free_port(), free_port(), free_port()
        companies = [f"company_out{i:03d}" for i in range(args.companies)]
        for i, cid in enumerate(companies):
            jid = f"7999{i:09d}:1@s.whatsapp.net"
            if args.transport == "model":  # a linked device in the whatsmeow store, as pairing leaves it
                async with db.connection() as conn:
                    await fill_device(conn, jid)
            else:
                await db.execute("INSERT INTO sim_devices (company_id, jid, phone) VALUES ($1, $2, $3)", cid, jid,
                                 jid.split(":")[0])
            await db.execute(
                """INSERT INTO companies (company_id, device_jid, handler, webhook_url, webhook_secret)
                   VALUES ($1, $2, 'webhook', $3, 'outage-secret-0123456789')""",
                cid, jid, f"http://127.0.0.1:{hook_port}/hook",
            )
        settings = Settings(
            _env_file=None, environment="test", data_dir=root / "data", database_url=dsn,
            redis_url=backing.redis.url, temporal_address=backing.temporal.address,
            wa_transport="neonize" if args.transport == "model" else "simulator", neonize_client=(
                "model" if args.transport == "model" else "neonize"),
            api_admin_key=ADMIN_KEY, api_port=api_port, rate_limit_count=10_000, log_level="WARNING",
            inbox_retry_initial_s=0.5, inbox_retry_max_interval_s=5.0,
        )
        record = Record()
        webhook, webhook_task = await serve_webhook(record, hook_port)
        target = backing.temporal.address
        procs = [
            ServiceProcess(settings, "worker", "w", root, target).start(),
            ConnectorProcess(settings, "out-c1", root, target, PHONE_SIDE_PORT=str(phone_port)).start(),
            ServiceProcess(settings, "api", "a", root, target).start(),
        ]
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
        phone = httpx.AsyncClient(base_url=f"http://127.0.0.1:{phone_port}", timeout=10)

        async def everyone_connected() -> bool:
            resp = await api.get("/api/whatsapp/sessions", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            rows = resp.json().get("sessions", []) if resp.status_code == 200 else []
            return sum(1 for r in rows if r.get("status") == "connected") >= len(companies)

        await wait_until(everyone_connected, 120, interval=0.5)
        chats = [(c, f"7999200{i:05d}@s.whatsapp.net") for i, c in
                 enumerate(c for c in companies for _ in range(3))]
        stop = asyncio.Event()
        loads = [
            asyncio.create_task(send_load(api, companies, args.send_rate, args.send_deadline, record, stop)),
            asyncio.create_task(incoming_load(phone, chats, args.incoming_rate, record, stop)),
        ]
        await asyncio.sleep(args.settle_seconds)
        windows: list[tuple[str, float, float, float, dict[str, int], dict[str, int]]] = []
        for name in args.services.split(","):
            before = await dials(phone)
            t_kill = time.monotonic()
            await asyncio.to_thread(backing.kill, name)
            await asyncio.sleep(args.down_seconds)
            await asyncio.to_thread(backing.start, name)
            t_back = time.monotonic()
            await asyncio.sleep(args.settle_seconds)
            t_end = time.monotonic()
            windows.append((name, t_kill, t_back, t_end, before, await dials(phone)))
        stop.set()
        await asyncio.gather(*loads)

        async def all_delivered() -> bool:
            accepted = {m.message_id for m in record.incoming if m.accepted_at is not None}
            return accepted <= set(record.delivered)

        try:
            await wait_until(all_delivered, args.drain_seconds, interval=0.5)
        except TimeoutError:
            pass
        # What each phone sent (kept in PostgreSQL by both test transports).
        outboxes: dict[str, Counter[str]] = {cid: Counter() for cid in companies}
        for row in await db.fetch("SELECT company_id, text FROM transport_outbox WHERE company_id = ANY($1)",
                                  companies):
            outboxes[row["company_id"]][row["text"]] += 1
        await db.close()
        for name, t_kill, t_back, t_end, before, after in windows:
            results.append(_judge(name, args, record, outboxes, t_kill, t_back, t_end, before, after))
            emit(results[-1])
        await api.aclose()
        await phone.aclose()
        webhook.should_exit = True
        await webhook_task
    finally:
        for p in procs:
            p.stop()
        await asyncio.to_thread(backing.stop_all)
    return results


def _judge(name: str, args: argparse.Namespace, record: Record, outboxes: dict[str, Counter[str]], t_kill: float,
           t_back: float, t_end: float, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    sends = [s for s in record.sends if t_kill <= s.started < t_end]
    accepted = [s for s in sends if s.accepted_at is not None]
    at_phone = [outboxes[s.company][s.text] for s in accepted]
    incoming = [m for m in record.incoming if t_kill <= m.started < t_end and m.accepted_at is not None]
    delivered = Counter(record.delivered)
    first_at = {mid: i for i, mid in reversed(list(enumerate(record.delivered)))}
    out_of_order = 0
    by_chat: dict[str, list[Incoming]] = defaultdict(list)
    for m in record.incoming:
        if m.accepted_at is not None and m.message_id in first_at:
            by_chat[m.chat].append(m)
    late = {m.message_id for m in incoming}
    for msgs in by_chat.values():
        msgs.sort(key=lambda m: m.seq)
        positions = [first_at[m.message_id] for m in msgs]
        out_of_order += sum(1 for a, b, m in zip(positions, positions[1:], msgs[1:], strict=False)
                            if b < a and m.message_id in late)
    back_ok = [t for t in record.send_ok_at if t >= t_back]
    recovering = Counter(a for t, a in record.send_answers if t_back <= t < (min(back_ok) if back_ok else t_end))
    while_down = Counter(a for t, a in record.send_answers if t_kill <= t < t_back)
    return {
        "service": name, "transport": args.transport, "down_s": args.down_seconds,
        "sends": {"started": len(sends), "accepted": len(accepted),
                  "exactly_once": sum(1 for n in at_phone if n == 1),
                  "missing": sum(1 for n in at_phone if n == 0), "doubled": sum(1 for n in at_phone if n > 1)},
        "incoming": {"accepted": len(incoming),
                     "delivered_once": sum(1 for m in incoming if delivered[m.message_id] == 1),
                     "delivered_twice_or_more": sum(1 for m in incoming if delivered[m.message_id] > 1),
                     "lost": sum(1 for m in incoming if delivered[m.message_id] == 0),
                     "out_of_order": out_of_order},
        "reconnects_caused": sum(after.get(c, 0) - before.get(c, 0) for c in after),
        "sends_accepted_again_after_s": round(min(back_ok) - t_back, 1) if back_ok else None,
        "answers_until_then": dict(recovering),
        "answers_while_down": dict(while_down),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", default=",".join(SERVICES))
    p.add_argument("--transport", choices=["simulator", "model"], default="simulator")
    p.add_argument("--companies", type=int, default=20)
    p.add_argument("--down-seconds", type=float, default=30.0)
    p.add_argument("--settle-seconds", type=float, default=20.0)
    p.add_argument("--send-rate", type=float, default=3.3)
    p.add_argument("--incoming-rate", type=float, default=10.0)
    p.add_argument("--send-deadline", type=float, default=120.0)
    p.add_argument("--drain-seconds", type=float, default=120.0)
    return p


if __name__ == "__main__":
    asyncio.run(run(parser().parse_args()))
