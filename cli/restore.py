"""``waorch restore <backup>``: a verified backup becomes the configured database again (issue #15.7).

The steps, each printed as it happens (docs/disaster-recovery.md is the runbook around them):

1. the backup must be a verified one (its manifest beside it) and still match it
   (size and sha256); ``latest`` takes the newest in BACKUP_DIR, else in BACKUP_COPY_DIR;
2. no session may be held by a connector (connected, connecting, showing a QR): a live
   connection keeps writing its keys, and a restore under it would mix old and new
   ones. Refused unless ``--force``; also refused when Temporal cannot be asked (an
   embedded Temporal that is not running cannot hold sessions, so that is fine);
3. the dump is restored into a new database beside the configured one and its row
   counts are compared with the manifest: a mismatch stops here, nothing replaced;
4. only then the configured database (if it still exists) is renamed aside to
   ``<db>_before_restore_<time>`` (kept: drop it once satisfied) and the restored one
   takes its name. Connections to the old one are closed; the services reconnect.

With the embedded PostgreSQL (no DATABASE_URL) and the stack stopped, the command
starts the embedded server itself for the restore and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from activities.backup import (
    NoVerifiedBackup,
    drop_database,
    dsn_with_database,
    quote_ident,
    read_backup,
    restore_into,
    select_tools,
    verified_backups,
)
from activities.jobs_common import Target
from cli.embedded import EmbeddedPostgres, port_open
from domain.session import SEARCH_ATTRIBUTE_SESSION_STATE, SESSION_WORKFLOW
from domain.settings import Settings
from domain.states import SessionState

# States in which a connector holds the session's connection (and writes its keys).
HELD_STATES = (SessionState.CONNECTED, SessionState.DEGRADED, SessionState.CONNECTING, SessionState.QR)


class RestoreRefused(Exception):
    """Nothing was changed: the reason says what to do."""


@dataclass
class RestoreReport:
    backup: str
    database: str
    kept_as: str | None
    tables: int
    rows: int
    restore_s: float
    total_s: float


def find_backup(settings: Settings, name: str) -> Path:
    """A path, a file name in BACKUP_DIR / BACKUP_COPY_DIR, or ``latest``."""
    places = [settings.resolved_backup_dir, *([settings.backup_copy_dir] if settings.backup_copy_dir else [])]
    if name == "latest":
        for place in places:
            found = verified_backups(place)
            if found:
                return found[-1][1]
        raise RestoreRefused("no verified backup in " + " or ".join(str(p) for p in places))
    path = Path(name)
    if path.is_file():
        return path
    for place in places:
        if (place / name).is_file():
            return place / name
    raise RestoreRefused(f"backup {name!r} not found (a path, a file name in " +
                         " or ".join(str(p) for p in places) + ", or 'latest')")


async def held_sessions(settings: Settings) -> list[str] | None:
    """Companies whose session a connector holds now; None when Temporal cannot be asked."""
    from infra.temporal import connect_temporal

    if settings.uses_embedded_temporal and not port_open(settings.temporal_port or 7233):
        return []  # the embedded Temporal is not running: no connector can hold a session
    try:
        client = await connect_temporal(settings, wait_s=5)
        states = " OR ".join(f'{SEARCH_ATTRIBUTE_SESSION_STATE} = "{s.value}"' for s in HELD_STATES)
        query = (f'WorkflowType = "{SESSION_WORKFLOW}" AND ExecutionStatus = "Running" '
                 f'AND TaskQueue = "{settings.temporal_core_queue}" AND ({states})')
        return sorted([wf.id.removeprefix("session-") async for wf in client.list_workflows(query, limit=1000)])
    except Exception:
        return None


async def _swap(admin_dsn: str, database: str, staging: str, stamp: str) -> str | None:
    """Rename the configured database aside (if it exists) and the restored one into its place."""
    kept = f"{database[:30]}_before_restore_{stamp}"
    conn = await asyncpg.connect(admin_dsn, timeout=30)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if exists:
            await conn.execute(f"ALTER DATABASE {quote_ident(database)} ALLOW_CONNECTIONS false")
            try:
                for attempt in range(20):
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
                    try:
                        await conn.execute(f"ALTER DATABASE {quote_ident(database)} RENAME TO {quote_ident(kept)}")
                        break
                    except asyncpg.ObjectInUseError:
                        if attempt == 19:
                            raise
                        await asyncio.sleep(0.25)
            except BaseException:
                await conn.execute(f"ALTER DATABASE {quote_ident(database)} ALLOW_CONNECTIONS true")
                raise
            await conn.execute(f"ALTER DATABASE {quote_ident(kept)} ALLOW_CONNECTIONS true")
        try:
            await conn.execute(f"ALTER DATABASE {quote_ident(staging)} RENAME TO {quote_ident(database)}")
        except BaseException:
            if exists:  # put the old one back: never leave the service without its database
                await conn.execute(f"ALTER DATABASE {quote_ident(kept)} RENAME TO {quote_ident(database)}")
            raise
    finally:
        await conn.close()
    return kept if exists else None


async def restore(settings: Settings, backup: str, *, force: bool = False,
                  say: Callable[[str], None] = print) -> RestoreReport:
    """Restore ``backup`` into the configured database (see the module doc); raises RestoreRefused."""
    t0 = time.monotonic()
    dump = find_backup(settings, backup)
    try:
        manifest = read_backup(dump)
    except Exception as exc:
        raise RestoreRefused(str(exc)) from None
    rows = int(manifest["total_rows"])
    say(f"backup {dump}: {len(manifest['tables'])} tables, {rows} rows, made {manifest.get('created_at')}; "
        "size and sha256 match its manifest")

    held = await held_sessions(settings)
    if held is None and not force:
        raise RestoreRefused("cannot ask Temporal whether sessions are connected: stop every connector, then "
                             "run again with --force")
    if held and not force:
        shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
        raise RestoreRefused(f"{len(held)} session(s) are held by a connector ({shown}): a restore under a live "
                             "connection mixes old and new keys. Stop the connectors (or `waorch sessions pause` "
                             "them), then restore; --force to restore anyway")
    if held:
        say(f"warning: restoring while {len(held)} session(s) are held (--force)")

    embedded: EmbeddedPostgres | None = None
    if settings.uses_embedded_postgres and not port_open(settings.postgres_port):
        embedded = EmbeddedPostgres(settings.data_dir.resolve() / "postgres", settings.postgres_port)
        say(f"starting the embedded PostgreSQL on port {settings.postgres_port} for the restore")
        await asyncio.to_thread(embedded.start)
    try:
        report = await _restore_database(settings, dump, manifest, say)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    report.total_s = round(time.monotonic() - t0, 3)
    say(f"done in {report.total_s:.1f} s: {report.database} is the backup of {manifest.get('created_at')}"
        + (f"; the database as it was is kept as {report.kept_as} (DROP DATABASE it once satisfied)"
           if report.kept_as else ""))
    say("next: start the services (waorch up, or worker/connector/api); sessions reconnect with the restored "
        "credentials; `waorch sessions list` shows any that need a relink or a new QR")
    return report


async def _restore_database(settings: Settings, dump: Path, manifest: dict[str, Any],
                            say: Callable[[str], None]) -> RestoreReport:
    dsn = settings.database_dsn
    database = Target.from_dsn(dsn).database
    admin_dsn = dsn_with_database(dsn, "postgres")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    staging = f"{database[:30]}_restore_{stamp}"
    conn = await asyncpg.connect(admin_dsn, timeout=30)
    try:
        tools, versions = await select_tools(settings.pg_bin_dir, conn)
    finally:
        await conn.close()
    say(f"restoring into a new database {staging} with {versions['pg_dump_version']} tools …")
    try:
        restore_s = await restore_into(tools, admin_dsn, dump, manifest, staging)
    except BaseException:
        await drop_database(admin_dsn, staging)
        raise
    say(f"restored in {restore_s:.1f} s; every table's rows match the manifest")
    kept = await _swap(admin_dsn, database, staging, stamp)
    say(f"{database} replaced" + (f" (the old one renamed to {kept})" if kept else " (it did not exist)"))
    try:
        conn = await asyncpg.connect(dsn_with_database(dsn, database), timeout=30)
        try:
            await conn.execute(
                "INSERT INTO audit (actor, action, details) VALUES ('cli', 'restore', $1::jsonb)",
                json.dumps({"backup": dump.name, "keptAs": kept, "rows": manifest["total_rows"]}),
            )
        finally:
            await conn.close()
    except Exception as exc:  # the restore is done; a missing audit row must not say otherwise
        say(f"warning: the restore is not in the audit table: {type(exc).__name__}")
    return RestoreReport(dump.name, database, kept, len(manifest["tables"]), int(manifest["total_rows"]),
                         round(restore_s, 3), 0.0)


def run_restore(settings: Settings, backup: str, force: bool) -> int:
    try:
        asyncio.run(restore(settings, backup, force=force))
    except RestoreRefused as exc:
        print(f"restore refused: {exc}")
        return 1
    except NoVerifiedBackup as exc:
        print(f"restore refused: {exc}")
        return 1
    except Exception as exc:
        print(f"restore failed (the configured database is replaced only as the last step, so it is as it "
              f"was): {type(exc).__name__}: {exc}")
        return 1
    return 0
