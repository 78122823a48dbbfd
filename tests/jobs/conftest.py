"""Jobs test harness: a real whatsmeow store (``store_dsn`` of tests/conftest.py), the project's
migrations, and an in-process worker on the dev server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from activities.worker import WorkerDeps, build_activities, build_worker
from domain.session import SessionAlert
from domain.settings import Settings
from infra.redis import EventPublisher
from storage import Database
from tests.conftest import PgServer
from workflows import ALL_WORKFLOWS

ADMIN_KEY = "jobs-admin-key-" + "y" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def jobs_settings(make_settings: Callable[..., Settings], store_dsn: str) -> Callable[..., Settings]:
    def make(client: Client | None = None, **overrides: Any) -> Settings:
        overrides.setdefault("database_url", store_dsn)
        overrides.setdefault("api_admin_key", ADMIN_KEY)
        return make_settings(client, **overrides)

    return make


async def scratch_databases_of(pg_server: PgServer, dsn: str) -> list[str]:
    from activities.backup import scratch_prefix

    database = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                                scratch_prefix(database))
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


@contextlib.asynccontextmanager
async def worker_deps(settings: Settings, client: Client) -> AsyncIterator[WorkerDeps]:
    """What the core worker's activities need, for this test's database and Redis; closed afterwards."""
    db = Database(settings.database_dsn)
    redis = aioredis.from_url(settings.redis_dsn, decode_responses=True)
    try:
        yield WorkerDeps(settings, client, db, redis, EventPublisher(redis, settings.events_channel))
    finally:
        await db.close()
        await redis.aclose()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, client: Client) -> AsyncIterator[Worker]:
    """The real core worker (every workflow and activity) on this test's queue."""
    async with worker_deps(settings, client) as deps, build_worker(deps) as worker:
        yield worker


def fake_pg_bin(tmp_path: Path, version: str) -> Path:
    """A pg_dump that says it is ``version`` and otherwise writes nothing (the 20-byte story)."""
    bin_dir = tmp_path / f"pg{version}"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        script = bin_dir / tool
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = "--version" ]; then echo "{tool} (PostgreSQL) {version}"; exit 0; fi\n'
            "exit 0\n"
        )
        script.chmod(0o755)
    return bin_dir


@contextlib.asynccontextmanager
async def worker_recording_alerts(client: Client, settings: Settings,
                                  alerts: list[SessionAlert]) -> AsyncIterator[None]:
    """The real core worker on this test's queue, with its alerts recorded in ``alerts`` instead of sent."""

    @activity.defn(name="send_alert")
    async def record_alert(alert: SessionAlert) -> str:
        alerts.append(alert)
        return "test"

    async with worker_deps(settings, client) as deps:
        acts = [a for a in build_activities(deps)
                if getattr(a, "__temporal_activity_definition").name != "send_alert"]
        async with Worker(client, task_queue=settings.temporal_core_queue, workflows=ALL_WORKFLOWS,
                          activities=[*acts, record_alert]):
            yield
