"""Benchmark: N simulated companies from cold start to all connected, and reconnect-all after SIGKILL.

Everything real but WhatsApp: a Temporal dev server (own ports, WAL sqlite),
embedded PostgreSQL and Redis (or TEST_DATABASE_URL / TEST_REDIS_URL), the
session workflows in this process, the connector as a subprocess
(``python -m cli.main connector``, WA_TRANSPORT=simulator). Companies are
already paired (device rows in PostgreSQL), so "cold start" is what a deploy
looks like: the connector starts, starts every stored company's workflow,
and each reconnects from its credentials.

Prints JSON lines, beside the bare Temporal round trips measured in the same run:

    .venv/bin/python -m bench.sessions --sessions 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.sessions import SessionActivities
from cli.embedded import EmbeddedPostgres, EmbeddedRedis, TemporalDevConfig, TemporalDevServer, free_port
from cli.processes import ConnectorProcess
from domain.session import SessionAlert
from domain.settings import Settings
from infra.redis import EventPublisher, redis_client
from storage import Database, migrate
from workflows.session import SessionWorkflow


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


@workflow.defn(name="BenchNoop", sandboxed=False)
class BenchNoop:
    @workflow.run
    async def run(self) -> int:
        return 1


@activity.defn(name="bench_noop_activity")
async def bench_noop_activity() -> int:
    return 1


@workflow.defn(name="BenchOneActivity", sandboxed=False)
class BenchOneActivity:
    @workflow.run
    async def run(self) -> int:
        result: int = await workflow.execute_activity(
            bench_noop_activity, start_to_close_timeout=timedelta(seconds=10)
        )
        return result


@activity.defn(name="send_alert")
async def log_alert(alert: SessionAlert) -> str:
    return "bench"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def count_connected(client: Client) -> int:
    res = await client.count_workflows('WorkflowType = "SessionWorkflow" AND SessionState = "connected" '
                                       'AND ExecutionStatus = "Running"')
    return res.count


async def wait_all_connected(client: Client, n: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await count_connected(client) >= n:
            return time.monotonic() - started
        await asyncio.sleep(0.25)  # measuring, not scheduling: a poll of visibility
    raise TimeoutError(f"not all {n} sessions connected within {timeout:.0f}s "
                       f"(connected: {await count_connected(client)})")


async def baseline(client: Client, queue: str, rounds: int) -> dict[str, float]:
    async with Worker(client, task_queue=queue, workflows=[BenchNoop, BenchOneActivity],
                      activities=[bench_noop_activity]):
        out: dict[str, float] = {}
        for wf in ("BenchNoop", "BenchOneActivity"):
            t0 = time.monotonic()
            for _ in range(rounds):
                await client.execute_workflow(wf, id=f"bench-{uuid.uuid4()}", task_queue=queue)
            out[wf] = (time.monotonic() - t0) / rounds * 1000
    return out


async def actions_per_session(client: Client, sample: list[str]) -> dict[str, float]:
    counted = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, EventType.EVENT_TYPE_TIMER_STARTED,
        EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    }
    actions = events = 0
    for cid in sample:
        async for ev in client.get_workflow_handle(f"session-{cid}").fetch_history_events():
            events += 1
            actions += ev.event_type in counted
    return {"actions": actions / len(sample), "history_events": events / len(sample)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--heartbeat-timeout", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    n = args.sessions
    tmp = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    servers: list[Any] = []
    procs: list[ConnectorProcess] = []
    temporal = TemporalDevServer(
        TemporalDevConfig(port=free_port(), ui_port=free_port(), db_filename="temporal.db",
                          search_attributes={"CompanyId": "Keyword", "SessionState": "Keyword"},
                          sqlite_pragmas={"journal_mode": "wal", "synchronous": "normal"}),
        tmp / "temporal", ui=False,
    )
    try:
        await asyncio.to_thread(temporal.start)
        servers.append(temporal)
        dsn = os.environ.get("TEST_DATABASE_URL")
        if not dsn:
            pg = EmbeddedPostgres(tmp / "pg", free_port())
            await asyncio.to_thread(pg.start)
            servers.append(pg)
            dsn = pg.dsn
        redis_url = os.environ.get("TEST_REDIS_URL")
        if not redis_url:
            rd = EmbeddedRedis(tmp / "redis", free_port())
            await asyncio.to_thread(rd.start)
            servers.append(rd)
            redis_url = rd.url
        settings = Settings(
            _env_file=None, environment="test", data_dir=tmp, database_url=dsn, redis_url=redis_url,
            temporal_address=temporal.address, connector_id="bench1", wa_transport="simulator",
            hold_heartbeat_timeout_s=args.heartbeat_timeout, temporal_core_queue="bench-core",
            temporal_connector_queue="bench-conn",
        )
        client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
        base = await baseline(client, "bench-baseline", 20)
        emit(metric="temporal_baseline_ms", serial_workflow_no_activity=round(base["BenchNoop"], 1),
             serial_workflow_one_activity=round(base["BenchOneActivity"], 1))

        db = Database(dsn, max_size=10)
        await migrate(db)
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
        redis = redis_client(settings)
        acts = SessionActivities(db, EventPublisher(redis, settings.events_channel))
        async with Worker(client, task_queue=settings.temporal_core_queue, workflows=[SessionWorkflow],
                          activities=[log_alert, *acts.activities()],
                          max_concurrent_workflow_tasks=200):
            conn1 = ConnectorProcess(settings, "bench1", tmp, temporal.address).start()
            procs.append(conn1)
            assert conn1.proc is not None
            t_cold = await wait_all_connected(client, n, args.timeout)
            await asyncio.sleep(2)
            rss = rss_mb(conn1.proc.pid)
            per = await actions_per_session(client, random.sample(companies, min(20, n)))
            emit(metric="cold_start_all_connected", sessions=n, wall_s=round(t_cold, 1),
                 sessions_per_s=round(n / t_cold, 1), connector_rss_mb=round(rss, 1),
                 temporal_actions_per_session=round(per["actions"], 1),
                 history_events_per_session=round(per["history_events"], 1),
                 heartbeats_per_session_per_min=round(60 / (0.8 * args.heartbeat_timeout), 1),
                 ratio_to_one_activity_round_trip=round(t_cold / n * 1000 / base["BenchOneActivity"], 2))

            # Reconnect-all is measured from the connector's own "connected" events (Redis):
            # a visibility count would still show the killed connector's sessions as connected
            # until each one's heartbeat timeout fires.
            pubsub = redis.pubsub()
            await pubsub.subscribe(settings.events_channel)
            conn1.kill()
            killed_at = time.monotonic()
            conn2 = ConnectorProcess(settings, "bench2", tmp, temporal.address).start()
            procs.append(conn2)
            back: set[str] = set()
            first_back: float | None = None
            while len(back) < n and time.monotonic() - killed_at < args.timeout:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                ev = json.loads(msg["data"])
                if ev.get("type") == "connected" and ev.get("connector") == "bench2":
                    back.add(ev["companyId"])
                    first_back = first_back or time.monotonic() - killed_at
            t_all = time.monotonic() - killed_at
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            emit(metric="reconnect_all_after_sigkill", sessions=n, reconnected=len(back),
                 first_reconnected_s=round(first_back or 0, 1), all_reconnected_s=round(t_all, 1),
                 heartbeat_timeout_s=args.heartbeat_timeout)
        await db.close()
        await redis.aclose()
    finally:
        for p in procs:
            p.stop()
        for srv in reversed(servers):
            await asyncio.to_thread(srv.stop)


if __name__ == "__main__":
    asyncio.run(main())
