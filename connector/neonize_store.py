"""The whatsmeow store schema, created once, serially, before any client starts.

whatsmeow migrates its tables on the first ``connect()``; run concurrently
that migration fails (measured: 41 of 50 concurrent first starts on PostgreSQL). So the connector
(and the tests) call :func:`ensure_store_schema` once at start: a throw-away
client in a child process dials through a proxy on a closed loopback port,
which migrates the store and then fails the dial at once — on any machine,
with or without a route to WhatsApp. The child process keeps a Go panic away
from the caller.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from storage.whatsmeow import ensure_store_timestamps

STORE_TABLES = (
    "whatsmeow_device", "whatsmeow_identity_keys", "whatsmeow_sessions", "whatsmeow_sender_keys",
    "whatsmeow_pre_keys", "whatsmeow_app_state_sync_keys", "whatsmeow_app_state_version",
    "whatsmeow_app_state_mutation_macs", "whatsmeow_contacts", "whatsmeow_chat_settings",
    "whatsmeow_message_secrets", "whatsmeow_privacy_tokens", "whatsmeow_event_buffer",
    "whatsmeow_retry_buffer", "whatsmeow_lid_map", "whatsmeow_nct_salt", "whatsmeow_version",
)
_ENV_DSN = "WAORCH_STORE_DSN"
_MIGRATION_LOCK = 0x7761_6D73  # "wams"


def neonize_dsn(dsn: str, application_name: str | None = None) -> str:
    """The DSN handed to whatsmeow's store driver (lib/pq).

    An ``sslmode`` in the DSN is kept as it is; without one lib/pq's own default
    applies, which is ``require`` (a server without TLS refuses it with "SSL is
    not enabled on the server"): a loopback PostgreSQL without TLS needs
    ``?sslmode=disable`` in ``DATABASE_URL`` (the embedded one gets it from the
    launcher). ``application_name`` names the connector's store connections, so
    they can be counted in ``pg_stat_activity``.
    """
    if not application_name:
        return dsn
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "application_name"]
    query.append(("application_name", application_name))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def store_schema_version(dsn: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('public.whatsmeow_version') IS NOT NULL"):
            return None
        version: int | None = await conn.fetchval("SELECT max(version) FROM whatsmeow_version")
        return version
    finally:
        await conn.close()


async def ensure_store_schema(dsn: str, timeout: float = 60.0) -> int:
    """Create or upgrade the whatsmeow tables in ``dsn``; return the schema version.

    A session advisory lock makes concurrent callers (two connectors starting at
    once) migrate one after the other: whatsmeow's own migration is not safe to run
    concurrently. The store then gets the ``first_seen`` column age-based cleanup needs.
    """
    import asyncio

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        env = dict(os.environ, **{_ENV_DSN: neonize_dsn(dsn)})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector.neonize_store", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        version = await store_schema_version(dsn)
        if version is None:
            tail = out.decode(errors="replace")[-500:]
            raise RuntimeError(f"whatsmeow store migration failed (exit {proc.returncode}): {tail}")
        await ensure_store_timestamps(conn)
    finally:
        await conn.close()  # also releases the advisory lock
    return version


def _migrate_in_this_process() -> int:
    import logging
    import socket

    logging.disable(logging.WARNING)
    from neonize._binder import ProxySettings
    from neonize.client import NewClient
    from neonize.exc import NeonizeError

    with socket.socket() as s:  # a loopback port nobody listens on: the dial fails at once
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    client = NewClient(os.environ[_ENV_DSN])
    try:
        client.connect(ProxySettings(proxy_address=f"http://127.0.0.1:{closed_port}"))
    except NeonizeError as exc:
        print(f"dial ended: {exc}", file=sys.stderr)  # expected; shown when the store is missing after all
    return 0


if __name__ == "__main__":
    sys.exit(_migrate_in_this_process())
