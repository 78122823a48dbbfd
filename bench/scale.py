"""Benchmark: thousands of simulated sessions over several connector processes, for two designs.

Everything real but WhatsApp: a Temporal dev server (file store, WAL) with its metrics port, an
embedded PostgreSQL and Redis, one ``waorch worker`` process and ``--connectors`` ``waorch connector``
processes (``WA_TRANSPORT=simulator``). Companies are already paired (device rows), as after a
migration. For each design it measures:

* ``first_start``: processes start, the connectors start every stored company's session workflow,
  until visibility counts all of them ``connected`` (what a deployment with no workflows sees);
* connector RSS;
* ``idle``: Temporal actions per second over ``--idle-seconds`` of nothing happening, from the
  server's own ``action`` counter (what Temporal Cloud bills), per session;
* ``failover``: SIGKILL one connector; time until every session it held has said ``connected`` from
  another connector (Redis events), beside the time ``bare`` takes: as many one-activity workflows as
  that connector held, started at once on the same server in the same run;
* ``restart``: SIGTERM every connector and the worker, start them again; time until every session
  has said ``connected`` again (what a deploy or a reboot sees).

Designs: ``lease`` is this checkout (per-connector lease, holds adopted); ``heartbeat`` is the
design before it (one heartbeating ``hold_session`` activity per session), run from a scratch
``git worktree`` of ``--heartbeat-rev`` with the same virtualenv.

    .venv/bin/python -m bench.scale --sessions 10000 --connectors 4
    .venv/bin/python -m bench.scale --sessions 1000 --designs lease      # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.common import emit
from cli.embedded import EmbeddedPostgres, EmbeddedRedis, TemporalDevConfig, TemporalDevServer, free_port
from cli.processes import REPO, ConnectorProcess, ServiceProcess
from domain.settings import Settings
from storage import Database, migrate

# The last commit whose sessions each kept one heartbeating hold_session activity.
HEARTBEAT_REV = "0d6ebda"


@activity.defn(name="bench_noop_activity")
async def bench_noop_activity() -> int:
    return 1


@workflow.defn(name="BenchOneActivity", sandboxed=False)
class BenchOneActivity:
    @workflow.run
    async def run(self) -> int:
        result: int = await workflow.execute_activity(
            bench_noop_activity, start_to_close_timeout=timedelta(seconds=120)
        )
        return result


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_actions(metrics_url: str, namespace: str) -> float:
    """The dev server's own count of billable actions in ``namespace`` so far."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("action{") and f'namespace="{namespace}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Holders:
    """Which connector last said ``connected`` for each company (Redis events), and when."""

    last: dict[str, tuple[str, float]] = field(default_factory=dict)

    def since(self, t0: float, *, exclude: str | None = None) -> set[str]:
        return {c for c, (conn, at) in self.last.items() if at >= t0 and conn != exclude}


async def follow_events(redis_url: str, channel: str, holders: Holders, ready: asyncio.Event) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    ready.set()
    try:
        async for msg in pubsub.listen():
            if msg.get("type") != "message":
                continue
            ev = json.loads(msg["data"])
            if ev.get("type") == "connected" and ev.get("connector"):
                holders.last[ev["companyId"]] = (ev["connector"], time.monotonic())
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await check():
            return time.monotonic() - t0
        await asyncio.sleep(interval)  # measuring, not scheduling: polls of the outcome
    raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")


async def connected_count(client: Client) -> int:
    res = await client.count_workflows('WorkflowType = "SessionWorkflow" AND SessionState = "connected" '
                                       'AND ExecutionStatus = "Running"')
    return res.count


async def bare_one_activity(client: Client, n: int) -> float:
    queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
    async with Worker(client, task_queue=queue, workflows=[BenchOneActivity], activities=[bench_noop_activity],
                      max_concurrent_workflow_tasks=100, max_concurrent_activities=500):
        starts = asyncio.Semaphore(200)
        # Results are long polls: thousands at once exceed the server's concurrent poller limit. The
        # workflows run whether or not someone waits; the last result still comes when the last ends.
        waits = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with starts:
                handle = await client.start_workflow("BenchOneActivity", id=f"{queue}-{i}", task_queue=queue)
            async with waits:
                await handle.result()

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.monotonic() - t0


def heartbeat_tree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="bench-heartbeat-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    return tree


async def run_design(name: str, tree: Path, args: argparse.Namespace, pg: EmbeddedPostgres,
                     redis_server: EmbeddedRedis, root: Path) -> None:
    n, conns = int(args.sessions), int(args.connectors)
    work = root / name
    temporal = TemporalDevServer(
        TemporalDevConfig(port=free_port(), ui_port=free_port(), metrics_port=free_port(),
                          db_filename="temporal.db",
                          search_attributes={"CompanyId": "Keyword", "SessionState": "Keyword"},
                          sqlite_pragmas={"journal_mode": "wal", "synchronous": "normal"}),
        work / "temporal", ui=False,
    )
    await asyncio.to_thread(temporal.start)
    metrics_url = f"http://127.0.0.1:{temporal.config.metrics_port}/metrics"
    db_name = f"bench_{name}"
    await asyncio.to_thread(pg.create_database, db_name)
    dsn = pg.dsn_for(db_name)
    prefix = f"bench-{name}:"
    extra = {"HOLD_HEARTBEAT_TIMEOUT_S": "20"} if name == "heartbeat" else {}
    settings = Settings(
        _env_file=None, environment="test", data_dir=work, database_url=dsn, redis_url=redis_server.url,
        redis_prefix=prefix, temporal_address=temporal.address, wa_transport="simulator",
        log_level="WARNING", db_pool_max=20,
        # Every process runs on this one machine; detect a killed connector as if it ran on another.
        lease_local_process_check=args.same_host_check,
    )
    procs: list[ServiceProcess] = []
    holders = Holders()
    ready = asyncio.Event()
    follower = asyncio.create_task(follow_events(redis_server.url, settings.events_channel, holders, ready))
    try:
        db = Database(dsn, max_size=5)
        if name == "lease":
            await migrate(db)
        else:  # the old tree migrates its own schema: let one of its processes do it first
            init = ServiceProcess(settings, "worker", "migrate", work, temporal.address, cwd=tree, **extra).start()
            await wait_for(lambda: db_has(db, "sim_devices"), 60, "old schema")
            init.stop()
        companies = [f"company_{i:06d}" for i in range(n)]
        async with db.connection() as conn:
            await conn.copy_records_to_table(
                "sim_devices", columns=["company_id", "jid", "phone"],
                records=[(c, f"7999{i:09d}:1@s.whatsapp.net", f"7999{i:09d}") for i, c in enumerate(companies)],
            )
            await conn.copy_records_to_table(
                "companies", columns=["company_id", "device_jid"],
                records=[(c, f"7999{i:09d}:1@s.whatsapp.net") for i, c in enumerate(companies)],
            )
        client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
        await ready.wait()

        def start_all() -> list[ServiceProcess]:
            started: list[ServiceProcess] = [
                ServiceProcess(settings, "worker", "w1", work, temporal.address, cwd=tree, **extra).start()
            ]
            for i in range(conns):
                started.append(ConnectorProcess(settings, f"bench-c{i + 1}", work, temporal.address, cwd=tree,
                                                **extra).start())
            return started

        t0 = time.monotonic()
        procs = start_all()

        async def all_connected() -> bool:
            return await connected_count(client) >= n

        first = await wait_for(all_connected, args.timeout, f"{name}: first start")
        await asyncio.sleep(3)
        rss = [round(rss_mb(p.pid), 1) for p in procs[1:]]
        emit(metric="first_start", design=name, sessions=n, connectors=conns, wall_s=round(first, 1),
             sessions_per_s=round(n / first, 1), connector_rss_mb=rss,
             rss_per_session_kb=round(sum(rss) * 1024 / n, 1),
             since_processes_started_s=round(time.monotonic() - t0, 1))

        await asyncio.sleep(10)  # let the start settle before counting
        a0, t_idle = await asyncio.to_thread(server_actions, metrics_url, "default"), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        a1, dt = await asyncio.to_thread(server_actions, metrics_url, "default"), time.monotonic() - t_idle
        emit(metric="idle_actions", design=name, sessions=n, seconds=round(dt, 1),
             actions_per_s=round((a1 - a0) / dt, 2), actions_per_session_per_s=round((a1 - a0) / dt / n, 6),
             target_per_session_per_s=0.004)

        victim = procs[1]
        assert isinstance(victim, ConnectorProcess)
        theirs = {c for c, (conn, _) in holders.last.items() if conn == victim.connector_id}
        emit(metric="spread", design=name, per_connector=[
            sum(1 for conn, _ in holders.last.values() if conn == p.name) for p in procs[1:]])
        killed = time.monotonic()
        victim.kill()

        async def moved() -> bool:
            return theirs <= holders.since(killed, exclude=victim.connector_id)

        failover = await wait_for(moved, args.timeout, f"{name}: failover", interval=0.2)
        bare = await bare_one_activity(client, len(theirs))
        emit(metric="failover", design=name, sessions_moved=len(theirs), wall_s=round(failover, 1),
             bare_one_activity_s=round(bare, 1), ratio_to_bare=round(failover / bare, 2), target_ratio=1.5)

        for p in procs:
            if p is not victim:
                p.terminate(60)
        restarted = time.monotonic()
        procs = start_all()

        async def back() -> bool:
            return len(holders.since(restarted)) >= n

        restart = await wait_for(back, args.timeout, f"{name}: restart", interval=0.2)
        emit(metric="restart", design=name, sessions=n, wall_s=round(restart, 1), target_s=60)
        await db.close()
    finally:
        follower.cancel()
        for p in procs:
            p.stop()
        await asyncio.to_thread(temporal.stop)


async def db_has(db: Database, table: str) -> bool:
    try:
        found = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{table}")
    except Exception:
        return False
    return bool(found)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--connectors", type=int, default=4)
    parser.add_argument("--designs", default="lease,heartbeat")
    parser.add_argument("--heartbeat-rev", default=HEARTBEAT_REV)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--same-host-check", action="store_true",
                        help="let a connector see at once that a peer on this machine died (default: lease only)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    pg = EmbeddedPostgres(root / "pg", free_port())
    redis_server = EmbeddedRedis(root / "redis", free_port())
    await asyncio.to_thread(pg.start)
    redis_server.start()
    trees: list[Path] = []
    try:
        for name in args.designs.split(","):
            tree = REPO if name == "lease" else heartbeat_tree(args.heartbeat_rev)
            if tree is not REPO:
                trees.append(tree)
            try:
                await run_design(name, tree, args, pg, redis_server, root)
            except TimeoutError as exc:
                emit(metric="error", design=name, error=str(exc))
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)
        redis_server.stop()
        await asyncio.to_thread(pg.stop, "immediate")


if __name__ == "__main__":
    asyncio.run(main())
