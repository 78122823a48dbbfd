"""The whatsmeow store is created once, serially, and records first_seen from the start (SPEC D1, B3)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from connector.neonize_store import STORE_TABLES, ensure_store_schema, neonize_dsn


async def test_store_schema_is_created_idempotently_with_first_seen(database_dsn: str) -> None:
    store = f"{database_dsn}?sslmode=disable"  # lib/pq requires TLS unless told otherwise; none here
    version = await ensure_store_schema(store)
    again = await ensure_store_schema(store)
    assert version == again >= 1
    conn = await asyncpg.connect(database_dsn)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(STORE_TABLES) <= tables
        default = await conn.fetchval(
            """SELECT column_default FROM information_schema.columns
               WHERE table_name = 'whatsmeow_message_secrets' AND column_name = 'first_seen'"""
        )
        assert default == "now()"  # every secret whatsmeow writes gets its time
    finally:
        await conn.close()


async def test_store_dsn_without_sslmode_follows_lib_pq_and_says_why(database_dsn: str) -> None:
    # No sslmode: lib/pq's default (TLS required) applies, not a forced sslmode=disable (issue #10, item 11).
    with pytest.raises(RuntimeError, match="SSL is not enabled on the server"):
        await ensure_store_schema(database_dsn)


def test_store_dsn_keeps_an_explicit_sslmode_and_names_its_connections() -> None:
    dsn = neonize_dsn("postgresql://u:p%40ss@db.example.com:5432/wa?sslmode=verify-full", application_name="waorch-x")
    assert dsn == "postgresql://u:p%40ss@db.example.com:5432/wa?sslmode=verify-full&application_name=waorch-x"
    assert neonize_dsn("postgresql://db.example.com/wa") == "postgresql://db.example.com/wa"


async def test_concurrent_callers_do_not_break_the_migration(database_dsn: str) -> None:
    versions = await asyncio.gather(*(ensure_store_schema(f"{database_dsn}?sslmode=disable") for _ in range(3)))
    assert len(set(versions)) == 1
