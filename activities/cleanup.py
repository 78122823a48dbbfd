"""Key cleanup (SPEC B3): delete what no live session needs, and say what it did.

whatsmeow keeps no timestamp on most rows, so age needs one of our own: a
``first_seen timestamptz DEFAULT now()`` column on ``whatsmeow_message_secrets``
(whatsmeow's INSERTs name their columns, so the default fills it). Rows that
existed before the column was added get the time it was added: they are
treated as new, never as old.

What goes, and only this:

* message secrets first seen more than N days ago (default 30);
* privacy tokens older than their lifetime (default 28 days);
* privacy tokens of devices that no longer exist (the one per-device table
  without ``ON DELETE CASCADE``);
* the device row — and through whatsmeow's cascades all its keys — of companies
  whose session was removed (``companies.removed_at``) while ``device_jid`` still
  names it (the remove path normally deletes it at once; this catches what it
  missed), unless a live company uses the same device; and their simulator
  devices (``sim_devices``).

Never touched: device rows of live companies, identity keys, app-state keys,
Signal sessions, pre-keys, contacts, ``lid_map`` (it has no owner column).
Everything is counted in one transaction; dry-run counts the same and rolls back.

Media (issue #11, :func:`cleanup_media`, reported under ``media`` with the same shape): rows of
``media`` older than ``MEDIA_MAX_AGE_DAYS`` (sent and received alike), then every blob that no
remaining row refers to and that was not written within the last hour (a send stores its bytes just
before its row; storing the same bytes again renews them). Dry-run counts both and deletes nothing.

The same job expires the project's own record of sent messages' status (``message_status``, issue
11.3): rows unchanged for ``MESSAGE_STATUS_MAX_AGE_DAYS``, in its own transaction (also where there
is no whatsmeow store: the simulator), reported apart under ``message_status``, not in the key
counts and their warning (one row per message sent: thousands a night are normal).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.jobs_common import heartbeat, report_failure
from domain.jobs import JobInput
from domain.settings import Settings
from storage import Database
from storage.blobs import BlobStore, blob_store
from storage.message_status import EXPIRED_WHERE
from storage.whatsmeow import ensure_store_timestamps

log = logging.getLogger("waorch.cleanup")

STORE_TABLE_PREFIX = "whatsmeow_"
# Scans, deletes and VACUUM on a big store can outlast the pool's 30 s command timeout.
_LONG_S = 1800.0


@contextlib.asynccontextmanager
async def dry_run_transaction(conn: asyncpg.Connection, dry_run: bool) -> AsyncIterator[None]:
    """A transaction whose deletes are counted, then rolled back on a dry run and committed otherwise."""
    tr = conn.transaction()
    await tr.start()
    try:
        yield
        if dry_run:
            await tr.rollback()
        else:
            await tr.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # the commit itself may be what failed
            await tr.rollback()
        raise
AGE_BUCKETS = (("<1d", 0, 1), ("1-7d", 1, 7), ("7-14d", 7, 14), ("14-30d", 14, 30), (">30d", 30, None))


async def table_sizes(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        """SELECT c.relname, pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
                  (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind = 'r' AND starts_with(c.relname, $1)
           ORDER BY c.relname""",
        STORE_TABLE_PREFIX,
    )
    return {r["relname"]: {"table_bytes": r["table_bytes"], "index_bytes": r["index_bytes"]} for r in rows}


async def index_sizes(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT i.relname, pg_relation_size(i.oid) AS bytes FROM pg_index x
           JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'public' AND starts_with(t.relname, $1) ORDER BY 1""",
        STORE_TABLE_PREFIX,
    )
    return {r["relname"]: r["bytes"] for r in rows}


async def age_distribution(conn: asyncpg.Connection, age_expr: str, table: str) -> dict[str, Any]:
    """Rows per age bucket, oldest and newest, of ``table`` by ``age_expr`` (a timestamptz)."""
    cases = ", ".join(
        f"count(*) FILTER (WHERE age >= interval '{lo} days'"
        + (f" AND age < interval '{hi} days')" if hi is not None else ")")
        + f' AS "{name}"'
        for name, lo, hi in AGE_BUCKETS
    )
    row = await conn.fetchrow(
        f"""SELECT {cases}, min(ts) AS oldest, max(ts) AS newest, count(*) AS total
            FROM (SELECT {age_expr} AS ts, now() - {age_expr} AS age FROM {table}) s""",
        timeout=_LONG_S,
    )
    assert row is not None
    return {
        "total": row["total"],
        "buckets": {name: row[name] for name, _, _ in AGE_BUCKETS},
        "oldest": row["oldest"].isoformat() if row["oldest"] else None,
        "newest": row["newest"].isoformat() if row["newest"] else None,
    }


_SECRETS_AGE = "first_seen"
_TOKENS_AGE = "to_timestamp(timestamp)"

# Devices of removed companies that no live company shares.
_REMOVED_DEVICES = """
    SELECT d.jid FROM whatsmeow_device d
    WHERE d.jid IN (SELECT device_jid FROM companies WHERE removed_at IS NOT NULL AND device_jid IS NOT NULL)
      AND d.jid NOT IN (SELECT device_jid FROM companies WHERE removed_at IS NULL AND device_jid IS NOT NULL)
"""

# Per-device tables that cascade from whatsmeow_device, and the column naming the device.
_CASCADING = {
    "whatsmeow_identity_keys": "our_jid", "whatsmeow_pre_keys": "jid", "whatsmeow_sessions": "our_jid",
    "whatsmeow_sender_keys": "our_jid", "whatsmeow_app_state_sync_keys": "jid",
    "whatsmeow_app_state_version": "jid", "whatsmeow_app_state_mutation_macs": "jid",
    "whatsmeow_contacts": "our_jid", "whatsmeow_chat_settings": "our_jid",
    "whatsmeow_message_secrets": "our_jid", "whatsmeow_nct_salt": "our_jid",
    "whatsmeow_event_buffer": "our_jid", "whatsmeow_retry_buffer": "our_jid",
}


async def _count(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await conn.fetchval(sql, *args, timeout=_LONG_S))


async def _companies_table(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('public.companies') IS NOT NULL"))


async def cleanup_store(settings: Settings, db: Database, *, dry_run: bool, verbose: bool = False) -> dict[str, Any]:
    """Run (or, with ``dry_run``, only count) the cleanup; returns the report job_runs records."""
    t0 = time.monotonic()
    days = settings.cleanup_max_age_days
    token_days = settings.privacy_token_max_age_days
    report: dict[str, Any] = {"dry_run": dry_run, "max_age_days": days, "privacy_token_max_age_days": token_days}
    async with db.connection() as conn:
        report["message_status"] = await expire_message_status(conn, settings.message_status_max_age_days,
                                                               dry_run=dry_run)
        if not await ensure_store_timestamps(conn):
            report.update(rows_to_delete=0, rows_deleted=0, deleted={}, warnings=[], note="no whatsmeow store yet")
            return report
        sizes_before = await table_sizes(conn)
        indexes_before = await index_sizes(conn) if verbose else {}
        report["age_distribution"] = {
            "whatsmeow_message_secrets": await age_distribution(conn, _SECRETS_AGE, "whatsmeow_message_secrets"),
            "whatsmeow_privacy_tokens": await age_distribution(conn, _TOKENS_AGE, "whatsmeow_privacy_tokens"),
        }
        heartbeat("measured")
        counts: dict[str, int] = {}
        removed: list[str] = []
        async with dry_run_transaction(conn, dry_run):
            # Devices of removed companies first: their cascades must not be counted twice below.
            if await _companies_table(conn):
                removed = [r["jid"] for r in await conn.fetch(_REMOVED_DEVICES)]
                if await conn.fetchval("SELECT to_regclass('public.sim_devices') IS NOT NULL"):
                    # The simulator transport's device credentials (same rule, keyed by company).
                    counts["removed_companies.sim_devices"] = await _count(
                        conn, "WITH d AS (DELETE FROM sim_devices WHERE company_id IN (SELECT company_id "
                        "FROM companies WHERE removed_at IS NOT NULL) RETURNING 1) SELECT count(*) FROM d")
            if removed:
                for table, col in _CASCADING.items():
                    n = await _count(conn, f"SELECT count(*) FROM {table} WHERE {col} = ANY($1::text[])", removed)
                    if n:
                        counts[f"removed_companies.{table}"] = n
                counts["removed_companies.whatsmeow_privacy_tokens"] = await _count(
                    conn, "WITH d AS (DELETE FROM whatsmeow_privacy_tokens WHERE our_jid = ANY($1::text[]) "
                    "RETURNING 1) SELECT count(*) FROM d", removed)
                counts["removed_companies.whatsmeow_device"] = await _count(
                    conn, "WITH d AS (DELETE FROM whatsmeow_device WHERE jid = ANY($1::text[]) RETURNING 1) "
                    "SELECT count(*) FROM d", removed)
            counts["old_message_secrets"] = await _count(
                conn, "WITH d AS (DELETE FROM whatsmeow_message_secrets "
                "WHERE first_seen < now() - make_interval(days => $1) RETURNING 1) SELECT count(*) FROM d", days)
            counts["expired_privacy_tokens"] = await _count(
                conn, "WITH d AS (DELETE FROM whatsmeow_privacy_tokens "
                "WHERE timestamp < extract(epoch FROM now() - make_interval(days => $1)) RETURNING 1) "
                "SELECT count(*) FROM d", token_days)
            counts["orphan_privacy_tokens"] = await _count(
                conn, "WITH d AS (DELETE FROM whatsmeow_privacy_tokens p WHERE NOT EXISTS "
                "(SELECT 1 FROM whatsmeow_device d WHERE d.jid = p.our_jid) RETURNING 1) SELECT count(*) FROM d")
            total = sum(counts.values())
        heartbeat("deleted", total)
        if not dry_run and total:
            for table in sizes_before:
                await conn.execute(f"VACUUM (ANALYZE) {table}", timeout=_LONG_S)
        sizes_after = await table_sizes(conn)
        before_bytes = sum(v["table_bytes"] + v["index_bytes"] for v in sizes_before.values())
        after_bytes = sum(v["table_bytes"] + v["index_bytes"] for v in sizes_after.values())
        report.update(
            rows_to_delete=total,
            rows_deleted=0 if dry_run else total,
            deleted={k: v for k, v in counts.items() if v},
            removed_company_devices=len(removed),
            sizes_before=sizes_before,
            sizes_after=sizes_after,
            bytes_before=before_bytes,
            bytes_after=after_bytes,
            # VACUUM makes the space reusable; files shrink only when their tail is empty.
            bytes_freed=before_bytes - after_bytes,
            warnings=[],
        )
        if verbose:
            report["removed_company_device_jids"] = removed  # phone numbers: only when asked for
            report["index_sizes_before"] = indexes_before
            report["index_sizes_after"] = await index_sizes(conn)
    if total > settings.cleanup_warn_rows:
        verb = "would delete" if dry_run else "deleted"
        report["warnings"].append(f"cleanup {verb} {total} rows (more than {settings.cleanup_warn_rows})")
    report["duration_s"] = round(time.monotonic() - t0, 3)
    log.info("cleanup dry_run=%s rows=%d freed_bytes=%d removed_devices=%d",
             dry_run, total, report["bytes_freed"], len(removed))
    return report


# A blob written this recently is never deleted: its row may be on its way.
MEDIA_BLOB_GRACE_S = 3600.0


async def cleanup_media(settings: Settings, db: Database, blobs: BlobStore, *, dry_run: bool) -> dict[str, Any]:
    """Delete (or count) media older than MEDIA_MAX_AGE_DAYS and the blobs no row refers to any more."""
    t0 = time.monotonic()
    days = settings.media_max_age_days
    report: dict[str, Any] = {"dry_run": dry_run, "max_age_days": days, "store": blobs.where, "warnings": []}
    async with db.connection() as conn:
        if not await conn.fetchval("SELECT to_regclass('public.media') IS NOT NULL"):
            report.update(rows_to_delete=0, rows_deleted=0, deleted={}, note="no media table yet")
            return report
        report["age_distribution"] = {"media": await age_distribution(conn, "created_at", "media")}
        async with dry_run_transaction(conn, dry_run):
            rows = await conn.fetch(
                "DELETE FROM media WHERE created_at < now() - make_interval(days => $1) RETURNING direction",
                days, timeout=_LONG_S)
            # What remains refers to these blobs (counted inside the transaction: a dry run sees the same).
            referenced = {r["sha256"] for r in await conn.fetch(
                "SELECT DISTINCT sha256 FROM media WHERE sha256 IS NOT NULL", timeout=_LONG_S)}
    heartbeat("media rows", len(rows))
    unreferenced = [(sha, size) for sha, size in await blobs.older_than(MEDIA_BLOB_GRACE_S) if sha not in referenced]
    deleted_blobs = 0
    if not dry_run:
        for sha, _size in unreferenced:
            try:
                deleted_blobs += await blobs.delete(sha)
            except Exception as exc:  # the next run tries again
                report["warnings"].append(f"media blob {sha[:12]}… not deleted: {type(exc).__name__}")
    received = sum(1 for r in rows if r["direction"] == "in")
    report.update(
        rows_to_delete=len(rows),
        rows_deleted=0 if dry_run else len(rows),
        deleted={k: v for k, v in {"media_received": received, "media_sent": len(rows) - received,
                                   "media_blobs": len(unreferenced)}.items() if v},
        blobs_to_delete=len(unreferenced),
        blobs_deleted=deleted_blobs,
        bytes_freed=0 if dry_run else sum(size for _, size in unreferenced),
        bytes_to_free=sum(size for _, size in unreferenced),
        duration_s=round(time.monotonic() - t0, 3),
    )
    log.info("media cleanup dry_run=%s rows=%d blobs=%d bytes=%d", dry_run, len(rows), len(unreferenced),
             report["bytes_to_free"])
    return report


async def expire_message_status(conn: asyncpg.Connection, max_age_days: int, *, dry_run: bool) -> dict[str, Any]:
    """Delete (dry run: count) the status rows of sent messages unchanged for ``max_age_days``."""
    if not await conn.fetchval("SELECT to_regclass('public.message_status') IS NOT NULL"):
        return {"max_age_days": max_age_days, "rows_to_delete": 0, "rows_deleted": 0}
    async with dry_run_transaction(conn, dry_run):
        n = await _count(conn, f"WITH d AS (DELETE FROM message_status WHERE {EXPIRED_WHERE} RETURNING 1) "
                               "SELECT count(*) FROM d", max_age_days)
    log.info("message status expired dry_run=%s rows=%d max_age_days=%d", dry_run, n, max_age_days)
    return {"max_age_days": max_age_days, "rows_to_delete": n, "rows_deleted": 0 if dry_run else n}


class CleanupActivities:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore | None = None) -> None:
        self._settings = settings
        self._db = db
        self._blobs = blobs or blob_store(settings)

    @activity.defn(name="run_cleanup")
    async def run_cleanup(self, job: JobInput) -> dict[str, Any]:
        try:
            report = await cleanup_store(self._settings, self._db, dry_run=job.dry_run, verbose=job.verbose)
            report["media"] = await cleanup_media(self._settings, self._db, self._blobs, dry_run=job.dry_run)
            report["warnings"] = [*report.get("warnings", []), *report["media"]["warnings"]]
            return report
        except Exception as exc:
            report_failure(exc, "cleanup")
            raise ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__) from exc
