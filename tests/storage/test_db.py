"""Migrations (D1), retry policy (D2) and special-character passwords (D4) on a real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from cli.embedded import EmbeddedPostgres, free_port
from domain.settings import build_database_url
from storage import MIGRATIONS, Database, RetryPolicy, migrate


async def test_migrations_are_idempotent_and_concurrent_safe(database_dsn: str) -> None:
    dbs = [Database(database_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(d) for d in dbs))
        applied = sorted(v for r in results for v in r)
        assert applied == [v for v, _, _ in MIGRATIONS]  # each applied once in total
        assert await migrate(dbs[0]) == []  # and a second start applies nothing
        tables = {
            r["tablename"]
            for r in await dbs[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"companies", "api_keys", "job_runs", "audit", "schema_migrations"} <= tables
    finally:
        for d in dbs:
            await d.close()


async def test_non_transient_error_fails_at_once(db: Database) -> None:
    started = time.monotonic()
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.fetch("SELECT * FROM no_such_table")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO companies (company_id) VALUES ('c1'), ('c1')")
    assert time.monotonic() - started < 0.09  # no 100 ms retry sleep happened


@pytest.fixture
def own_pg(tmp_path: Path):
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    pg.start()
    yield pg
    pg.stop("immediate")


async def test_retries_when_server_is_down_then_gives_up(own_pg: EmbeddedPostgres) -> None:
    db = Database(own_pg.dsn)
    assert await db.fetchval("SELECT 41 + 1") == 42
    await asyncio.to_thread(own_pg.stop, "immediate")
    started = time.monotonic()
    with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        await db.fetchval("SELECT 1")
    elapsed = time.monotonic() - started
    # 3 retries: 100 + 200 + 400 ms of waiting, then the error surfaces.
    assert 0.69 <= elapsed < 3.0
    await db.close()


async def test_recovers_when_server_comes_back(own_pg: EmbeddedPostgres) -> None:
    db = Database(own_pg.dsn, retry=RetryPolicy(tries=8, first_delay_s=0.1, factor=1.5))
    await db.execute("CREATE TABLE t (v int)")
    await asyncio.to_thread(own_pg.stop, "immediate")
    restart = asyncio.create_task(asyncio.to_thread(own_pg.start))
    await db.execute("INSERT INTO t VALUES (1)")  # waits through the restart
    await restart
    assert await db.fetchval("SELECT count(*) FROM t") == 1
    await db.close()


async def test_password_with_special_characters(own_pg: EmbeddedPostgres) -> None:
    user, password = f"u{uuid.uuid4().hex[:6]}", "p@ss:w/rd#%?& é"
    admin = await asyncpg.connect(own_pg.dsn)
    await admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    await admin.close()
    # Require a real password check for this role (the rest of the test server trusts loopback).
    hba = own_pg.pgdata / "pg_hba.conf"
    hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    admin = await asyncpg.connect(own_pg.dsn)
    await admin.execute("SELECT pg_reload_conf()")
    await admin.close()

    good = build_database_url(user, password, "127.0.0.1", own_pg.port, "postgres")
    db = Database(good)
    assert await db.fetchval("SELECT current_user") == user
    await db.close()

    wrong = build_database_url(user, password + "x", "127.0.0.1", own_pg.port, "postgres")
    bad = Database(wrong)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await bad.fetchval("SELECT 1")
    await bad.close()
    assert password not in repr(bad) and password not in bad.where
