"""Timestamps the whatsmeow store does not keep, recorded by this project (SPEC B3).

whatsmeow's ``whatsmeow_message_secrets`` has no time column and grows forever
(whatsmeow deletes its rows only with the device), so age-based cleanup needs a ``first_seen`` column with a
default. It is added as soon as the store exists: by the connector right after
the store schema is created, and again by each cleanup run (a store created
after the project's migrations).
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger("waorch.store")


async def ensure_store_timestamps(conn: asyncpg.Connection) -> bool:
    """Add ``first_seen`` where whatsmeow keeps no time; False when the store does not exist yet."""
    if not await conn.fetchval("SELECT to_regclass('public.whatsmeow_message_secrets') IS NOT NULL"):
        return False
    has = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name = 'whatsmeow_message_secrets' AND column_name = 'first_seen')"""
    )
    if not has:
        await conn.execute(
            "ALTER TABLE whatsmeow_message_secrets"
            " ADD COLUMN IF NOT EXISTS first_seen timestamptz NOT NULL DEFAULT now()"
        )
        log.info("added first_seen to whatsmeow_message_secrets")
    return True
