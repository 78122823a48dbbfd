"""The whatsmeow store is created once, serially, and records first_seen from the start (SPEC D1, B3)."""

from __future__ import annotations

import asyncio

import asyncpg

from connector.neonize_store import STORE_TABLES, ensure_store_schema


async def test_store_schema_is_created_idempotently_with_first_seen(database_dsn: str) -> None:
    version = await ensure_store_schema(database_dsn)
    again = await ensure_store_schema(database_dsn)
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


async def test_concurrent_callers_do_not_break_the_migration(database_dsn: str) -> None:
    versions = await asyncio.gather(*(ensure_store_schema(database_dsn) for _ in range(3)))
    assert len(set(versions)) == 1
