"""Verified backups and restore tests (SPEC B1, B2).

A backup counts only once the dump *file* has been checked against a manifest
written from the same snapshot: the old system wrote 20-byte "successful"
backups for days because its pg_dump was older than the server. So:

1. refuse at once when ``pg_dump``'s major version is older than the server's;
2. in one REPEATABLE READ transaction: export the snapshot, count every table,
   and hand the snapshot to ``pg_dump --snapshot`` — counts and dump see the
   same data, whatever is written meanwhile;
3. write a manifest (tables, row counts, sizes, checksum, versions) beside the dump;
4. verify the file: checksum, ``pg_restore -l`` reads it, and the rows of every
   table *counted from the file* (``pg_restore --data-only -f -``) equal the
   manifest. Only then are the two files renamed into place (0600, dir 0700)
   and retention (7 daily + 4 monthly) runs.

The restore test restores the newest verified backup into a scratch database,
compares counts with the manifest, measures the RTO and always drops the scratch
database (also stale ones a crashed run left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.jobs_common import PgTools, Target, ToolFailed, heartbeat, report_failure, run_tool, utcnow
from domain.jobs import JobInput
from domain.settings import Settings

log = logging.getLogger("waorch.backup")

MANIFEST_FORMAT = "waorch-backup/1"
_NAME_RE = re.compile(r"^waorch-(\d{8}T\d{6}Z)\.dump$")
_STAMP = "%Y%m%dT%H%M%SZ"
# A custom-format dump of even an empty database is a few kB; anything smaller is not a backup.
MIN_DUMP_BYTES = 1024


class BackupRefused(Exception):
    """The backup cannot be made correctly (wrong pg_dump): nothing was written."""


class VerificationFailed(Exception):
    """The dump file does not match its manifest: it does not count as a backup."""


class NoVerifiedBackup(Exception):
    pass


class RestoreMismatch(Exception):
    pass


# --------------------------------------------------------------------------- names and retention


def dump_name(at: datetime) -> str:
    return f"waorch-{at.astimezone(UTC).strftime(_STAMP)}.dump"


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name.removesuffix(".dump") + ".manifest.json")


def backup_time(dump: Path) -> datetime | None:
    match = _NAME_RE.match(dump.name)
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC) if match else None


def verified_backups(backup_dir: Path) -> list[tuple[datetime, Path]]:
    """Backups that passed verification (dump and manifest in place), oldest first."""
    found = []
    if not backup_dir.is_dir():
        return []
    for dump in backup_dir.glob("waorch-*.dump"):
        at = backup_time(dump)
        if at is not None and manifest_path(dump).is_file():
            found.append((at, dump))
    return sorted(found)


def plan_retention(times: list[datetime], keep_daily: int, keep_monthly: int) -> set[datetime]:
    """Which backups to keep: the newest of each of the last ``keep_daily`` days that have
    a backup, plus the first backup of each of the last ``keep_monthly`` months before those days.
    """
    by_day: dict[date, datetime] = {}
    for at in times:
        day = at.date()
        if day not in by_day or at > by_day[day]:
            by_day[day] = at
    daily_days = sorted(by_day, reverse=True)[:keep_daily]
    keep = {by_day[d] for d in daily_days}
    oldest_daily = min(daily_days) if daily_days else None
    first_of_month: dict[tuple[int, int], datetime] = {}
    for at in times:
        if oldest_daily is not None and at.date() >= oldest_daily:
            continue
        month = (at.year, at.month)
        if month not in first_of_month or at < first_of_month[month]:
            first_of_month[month] = at
    for month in sorted(first_of_month, reverse=True)[:keep_monthly]:
        keep.add(first_of_month[month])
    return keep


def apply_retention(backup_dir: Path, keep_daily: int, keep_monthly: int, *, dry_run: bool = False) -> list[str]:
    """Delete verified backups outside the retention; returns the names deleted (or that would be)."""
    backups = verified_backups(backup_dir)
    keep = plan_retention([at for at, _ in backups], keep_daily, keep_monthly)
    gone = []
    for at, dump in backups:
        if at in keep:
            continue
        gone.append(dump.name)
        if not dry_run:
            manifest_path(dump).unlink(missing_ok=True)  # manifest first: a dump without one never counts
            dump.unlink(missing_ok=True)
    return gone


# --------------------------------------------------------------------------- dump and verify


def _qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _tables(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
           ORDER BY 1, 2"""
    )
    return [(r["nspname"], r["relname"]) for r in rows]


async def count_tables(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """``{"public.t": {"rows": n, "bytes": total relation size}}`` for every table."""
    out: dict[str, dict[str, int]] = {}
    for schema, table in await _tables(conn):
        q = _qualified(schema, table)
        rows = await conn.fetchval(f"SELECT count(*) FROM {q}")
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", q)
        out[f"{schema}.{table}"] = {"rows": int(rows), "bytes": int(size)}
        heartbeat("counted", f"{schema}.{table}")
    return out


async def tool_major(tool: str) -> tuple[int, str]:
    from activities.jobs_common import parse_tool_version

    proc = await asyncio.create_subprocess_exec(
        tool, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        raise BackupRefused(f"{tool} --version failed (exit {proc.returncode}): {out.decode(errors='replace')[:200]}")
    return parse_tool_version(out.decode(errors="replace"))


def _candidate_bin_dirs() -> list[Path]:
    """Where a pg_dump may live: the embedded PostgreSQL's, Debian/Ubuntu's per-version dirs, PATH's."""
    dirs: list[Path] = []
    try:
        from storage.pg_tools import pg_bin_dir

        dirs.append(pg_bin_dir())
    except FileNotFoundError:
        pass
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    found = shutil.which("pg_dump")
    if found:
        dirs.append(Path(found).resolve().parent)
    unique = []
    for d in dirs:
        if d not in unique and (d / "pg_dump").is_file() and (d / "pg_restore").is_file():
            unique.append(d)
    return unique


async def server_version(conn: asyncpg.Connection) -> tuple[int, str]:
    num = int(await conn.fetchval("SHOW server_version_num"))
    return num // 10000, str(await conn.fetchval("SHOW server_version")).split()[0]


async def select_tools(pg_bin_dir: Path | None, conn: asyncpg.Connection) -> tuple[PgTools, dict[str, Any]]:
    """The client tools to use for this server, or BackupRefused (SPEC B1).

    A pg_dump older than the server cannot dump it (the old system's 20-byte
    "backups"). An explicit PG_BIN_DIR is used as given; otherwise the best of the
    tools found is taken: the server's own major version first, else the oldest newer one.
    """
    server_major, server_ver = await server_version(conn)
    if pg_bin_dir is not None:
        tools = PgTools(pg_bin_dir)
        if not await asyncio.to_thread(os.path.exists, tools.pg_dump):
            raise BackupRefused(f"pg_dump not found at {tools.pg_dump}: check PG_BIN_DIR")
        candidates = [tools]
    else:
        candidates = [PgTools(d) for d in await asyncio.to_thread(_candidate_bin_dirs)]
        if not candidates:
            raise BackupRefused("no pg_dump found: install the project (embedded PostgreSQL) or set PG_BIN_DIR")
    found = [(*(await tool_major(t.pg_dump)), t) for t in candidates]
    usable = sorted((major != server_major, major, ver, t) for major, ver, t in found if major >= server_major)
    if not usable:
        major, version, tools = max(found, key=lambda f: f[0])
        raise BackupRefused(
            f"pg_dump {version} is older than the PostgreSQL server {server_ver} "
            f"(major {major} < {server_major}); it cannot dump this server. Use a pg_dump of major "
            f"version >= {server_major}: set PG_BIN_DIR (the embedded PostgreSQL ships a matching one)"
        )
    _, _, version, tools = usable[0]
    return tools, {"pg_dump_version": version, "server_version": server_ver, "pg_bin_dir": str(tools.bin_dir)}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_COPY_RE = re.compile(r"^COPY (.+?) \(.*\) FROM stdin;$")


def _unquote_qualified(name: str) -> str:
    """``public."odd""name"`` → ``public.odd"name`` (pg_dump quotes only when needed)."""
    parts, cur, i, quoted = [], "", 0, False
    while i < len(name):
        ch = name[i]
        if quoted:
            if ch == '"' and i + 1 < len(name) and name[i + 1] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return ".".join(parts)


async def count_rows_in_dump(tools: PgTools, dump: Path) -> dict[str, int]:
    """Rows per table read from the dump file itself: the COPY blocks of ``pg_restore --data-only``.

    COPY text format escapes newlines inside values, so one line is one row.
    """
    proc = await asyncio.create_subprocess_exec(
        tools.pg_restore, "--data-only", "-f", "-", str(dump),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        limit=1 << 24,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    counts: dict[str, int] = {}
    current: str | None = None
    n = 0
    lines = 0
    try:
        async for raw in proc.stdout:
            lines += 1
            if lines % 200_000 == 0:
                heartbeat("verify", lines)
            if current is None:
                if raw.startswith(b"COPY "):
                    match = _COPY_RE.match(raw.decode(errors="replace").rstrip("\n"))
                    if match:
                        current, n = _unquote_qualified(match.group(1)), 0
            elif raw == b"\\.\n":
                counts[current] = counts.get(current, 0) + n
                current = None
            else:
                n += 1
    finally:
        if proc.returncode is None:
            await proc.wait()
    err = (await stderr_task).decode(errors="replace").strip()
    if proc.returncode != 0:
        raise VerificationFailed(f"pg_restore cannot read the dump (exit {proc.returncode}): {err[-500:]}")
    if current is not None:
        raise VerificationFailed(f"the dump ends inside the data of {current}")
    return counts


def _check_file(dump: Path, manifest: dict[str, Any]) -> list[str]:
    if not dump.is_file():
        return [f"missing dump file {dump.name}"]
    problems = []
    size = dump.stat().st_size
    if size < MIN_DUMP_BYTES:
        problems.append(f"dump is {size} bytes: not a backup")
    if size != manifest.get("size_bytes"):
        problems.append(f"size {size} != manifest {manifest.get('size_bytes')}")
    if sha256_of(dump) != manifest.get("sha256"):
        problems.append("sha256 differs from the manifest")
    return problems


async def verify_backup(tools: PgTools, dump: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Check the dump file against its manifest; raises VerificationFailed listing every problem."""
    problems = await asyncio.to_thread(_check_file, dump, manifest)
    file_counts: dict[str, int] = {}
    if not any(p.startswith("missing") for p in problems):
        try:
            file_counts = await count_rows_in_dump(tools, dump)
        except VerificationFailed as exc:
            problems.append(str(exc))
    expected = {t: v["rows"] for t, v in manifest.get("tables", {}).items()}
    if not expected:
        problems.append("manifest lists no tables")
    if not problems or file_counts:
        for table, rows in expected.items():
            got = file_counts.get(table, 0)
            if got != rows:
                problems.append(f"{table}: {got} rows in the file, {rows} in the database")
    if problems:
        raise VerificationFailed(f"backup {dump.name} failed verification: " + "; ".join(problems[:10]))
    return {"tables_verified": len(expected), "rows_verified": sum(expected.values())}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def _prepare_dir(backup_dir: Path) -> None:
    backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    backup_dir.chmod(0o700)


async def _store_and_project_versions(conn: asyncpg.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if await conn.fetchval("SELECT to_regclass('public.whatsmeow_version') IS NOT NULL"):
        out["store_schema_version"] = await conn.fetchval("SELECT max(version) FROM whatsmeow_version")
    if await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
        out["project_schema_version"] = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return out


async def create_verified_backup(settings: Settings, dsn: str, *, dry_run: bool = False,
                                 now: datetime | None = None) -> dict[str, Any]:
    """Dump, manifest, verify, retain. Returns what job_runs records; raises on any failure
    after removing what it wrote (a failed backup leaves no file that looks like one)."""
    backup_dir = settings.resolved_backup_dir
    at = now or utcnow()
    target = Target.from_dsn(dsn)
    t0 = time.monotonic()
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        tools, versions = await select_tools(settings.pg_bin_dir, conn)
        versions.update(await _store_and_project_versions(conn))
        if dry_run:
            tables = await count_tables(conn)
            return {
                "dry_run": True, "backup_dir": str(backup_dir), "file": dump_name(at),
                "tables": len(tables), "total_rows": sum(t["rows"] for t in tables.values()),
                "database_bytes": int(await conn.fetchval("SELECT pg_database_size(current_database())")),
                "would_delete_by_retention": apply_retention(
                    backup_dir, settings.backup_keep_daily, settings.backup_keep_monthly, dry_run=True),
                **versions,
            }
        _prepare_dir(backup_dir)
        final = backup_dir / dump_name(at)
        partial = final.with_name("." + final.name + ".partial")
        manifest_final = manifest_path(final)
        manifest_partial = manifest_final.with_name("." + manifest_final.name + ".partial")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # pg_dump keeps the mode
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                tables = await count_tables(conn)
                await run_tool(
                    [tools.pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-password",
                     "--file", str(partial)],
                    env=target.env, what="pg_dump",
                )
            dump_s = time.monotonic() - t0
            size = partial.stat().st_size
            manifest: dict[str, Any] = {
                "format": MANIFEST_FORMAT,
                "file": final.name,
                "created_at": at.isoformat(),
                "database": target.database,
                "tables": tables,
                "total_rows": sum(t["rows"] for t in tables.values()),
                "size_bytes": size,
                "sha256": sha256_of(partial),
                **versions,
            }
            t1 = time.monotonic()
            verified = await verify_backup(tools, partial, manifest)
            verify_s = time.monotonic() - t1
            manifest["verified_at"] = utcnow().isoformat()
            manifest["verify_s"] = round(verify_s, 3)
            _write_private(manifest_partial, json.dumps(manifest, indent=1, sort_keys=True))
            partial.chmod(0o600)
            partial.rename(final)
            manifest_partial.rename(manifest_final)  # last: from now on it counts as a backup
        except BaseException:
            partial.unlink(missing_ok=True)
            manifest_partial.unlink(missing_ok=True)
            raise
    finally:
        await conn.close()
    deleted = apply_retention(backup_dir, settings.backup_keep_daily, settings.backup_keep_monthly)
    result = {
        "dry_run": False, "file": str(final), "manifest": str(manifest_final),
        "size_bytes": size, "sha256": manifest["sha256"],
        "tables": len(tables), "total_rows": manifest["total_rows"],
        "row_counts": {t: v["rows"] for t, v in tables.items()},
        "dump_s": round(dump_s, 3), "verify_s": round(verify_s, 3),
        "deleted_by_retention": deleted, "kept": len(verified_backups(backup_dir)),
        **verified, **versions,
    }
    if settings.backup_copy_dir is not None:
        result["copy"] = await asyncio.to_thread(copy_to_second_location, settings, final, manifest)
        if not result["copy"]["ok"]:
            result["warnings"] = [f"the backup was not copied to the second location "
                                  f"{settings.backup_copy_dir}: {result['copy']['error']}"]
    result["duration_s"] = round(time.monotonic() - t0, 3)
    log.info("backup verified file=%s size_bytes=%d rows=%d duration_s=%.2f deleted=%d copied=%s",
             final.name, size, manifest["total_rows"], result["duration_s"], len(deleted),
             result.get("copy", {}).get("ok"))
    return result


def copy_to_second_location(settings: Settings, dump: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Copy a verified backup (dump, then manifest) to BACKUP_COPY_DIR and check the copy: same size and
    sha256 as the manifest says. Retention applies there too. Never raises: the local backup counts
    either way, and a failed copy is reported (the job alerts)."""
    copy_dir = settings.backup_copy_dir
    assert copy_dir is not None
    target = copy_dir / dump.name
    partial = copy_dir / f".{dump.name}.partial"
    try:
        _prepare_dir(copy_dir)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, dump.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        size, digest = partial.stat().st_size, sha256_of(partial)
        if size != manifest["size_bytes"] or digest != manifest["sha256"]:
            raise VerificationFailed(f"the copy differs from the manifest ({size} bytes, sha256 {digest[:12]}…)")
        partial.rename(target)
        _write_private(manifest_path(target), json.dumps(manifest, indent=1, sort_keys=True))  # last: it counts
        deleted = apply_retention(copy_dir, settings.backup_keep_daily, settings.backup_keep_monthly)
    except Exception as exc:
        with contextlib.suppress(OSError):  # the place itself may be what is broken
            partial.unlink(missing_ok=True)
        log.warning("backup copy failed copy_dir=%s error=%s", copy_dir, exc)
        return {"ok": False, "dir": str(copy_dir), "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "dir": str(copy_dir), "file": str(target), "verified_sha256": digest,
            "deleted_by_retention": deleted}


# --------------------------------------------------------------------------- restore test


SCRATCH_MARK = "_rt_"


def scratch_prefix(database: str) -> str:
    return database[:40] + SCRATCH_MARK


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=30)


async def drop_database(dsn: str, name: str) -> None:
    conn = await _admin(dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def scratch_name(database: str, now: float | None = None) -> str:
    """``<db>_rt_<unix time>_<random>``: the time lets a sweep skip a concurrent run's database."""
    return f"{scratch_prefix(database)}{int(now or time.time())}_{uuid.uuid4().hex[:6]}"


def scratch_is_stale(name: str, older_than_s: float, now: float | None = None) -> bool:
    """True for a scratch database created more than ``older_than_s`` ago (or with an unreadable name)."""
    stamp = name.rsplit(SCRATCH_MARK, 1)[-1].split("_", 1)[0]
    if not stamp.isdigit():
        return True
    return (now or time.time()) - int(stamp) > older_than_s


async def scratch_databases(dsn: str) -> list[str]:
    """Scratch databases of restore tests of this database still on the server."""
    prefix = scratch_prefix(Target.from_dsn(dsn).database)
    conn = await _admin(dsn)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


def dsn_with_database(dsn: str, database: str) -> str:
    from urllib.parse import quote, urlsplit

    return urlsplit(dsn)._replace(path="/" + quote(database, safe="")).geturl()


def read_backup(dump: Path) -> dict[str, Any]:
    """The manifest of a verified backup, after checking the dump still matches it (size and sha256).

    Raises:
        NoVerifiedBackup: no manifest beside the dump (it never passed verification).
        RestoreMismatch: the dump changed since it was verified.
    """
    manifest_file = manifest_path(dump)
    if not dump.is_file() or not manifest_file.is_file():
        raise NoVerifiedBackup(f"{dump} is not a verified backup (a dump with its .manifest.json beside it)")
    manifest: dict[str, Any] = json.loads(manifest_file.read_text())
    problems = _check_file(dump, manifest)
    if problems:
        raise RestoreMismatch(f"{dump.name} no longer matches its manifest: " + "; ".join(problems))
    return manifest


async def restore_into(tools: PgTools, dsn: str, dump: Path, manifest: dict[str, Any], database: str) -> float:
    """Restore ``dump`` into the new, empty ``database`` and compare its row counts with the manifest.
    Returns the seconds the restore took (the RTO of the data).

    Raises:
        RestoreMismatch: a table's rows differ from the manifest (the database is left for the caller to drop).
    """
    target = Target.from_dsn(dsn)
    t0 = time.monotonic()
    conn = await _admin(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {quote_ident(database)}")
    finally:
        await conn.close()
    await run_tool(
        [tools.pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--jobs=2",
         "--no-password", "--dbname", database, str(dump)],
        env=target.with_database(database).env, what="pg_restore",
    )
    rto_s = time.monotonic() - t0
    heartbeat("restored", round(rto_s, 2))
    conn = await asyncpg.connect(dsn_with_database(dsn, database), timeout=30)
    try:
        restored = await count_tables(conn)
    finally:
        await conn.close()
    mismatches = []
    for table, entry in manifest["tables"].items():
        got = restored.get(table, {}).get("rows")
        if got != entry["rows"]:
            mismatches.append(f"{table}: {got} restored, {entry['rows']} in the manifest")
    if mismatches:
        raise RestoreMismatch(f"restore of {dump.name} does not match its manifest: " + "; ".join(mismatches[:10]))
    return rto_s


async def restore_test(settings: Settings, dsn: str) -> dict[str, Any]:
    """Restore the newest verified backup into a scratch database and compare; always drop it.
    The RTO is judged against RESTORE_RTO_TARGET_S: a miss is a warning (the job alerts)."""
    backups = verified_backups(settings.resolved_backup_dir)
    if not backups:
        raise NoVerifiedBackup(f"no verified backup in {settings.resolved_backup_dir}")
    at, dump = backups[-1]
    manifest = read_backup(dump)
    # Left by a run that died before its finally could drop them; a younger one may be a
    # restore test running right now (a manual run beside the scheduled one): not touched.
    conn = await _admin(dsn)
    try:
        tools, _ = await select_tools(settings.pg_bin_dir, conn)
    finally:
        await conn.close()
    stale = [n for n in await scratch_databases(dsn) if scratch_is_stale(n, settings.backup_timeout_s)]
    for name in stale:
        await drop_database(dsn, name)
    scratch = scratch_name(Target.from_dsn(dsn).database)
    t0 = time.monotonic()
    try:
        rto_s = await restore_into(tools, dsn, dump, manifest, scratch)
    finally:
        await drop_database(dsn, scratch)
    target_s = settings.restore_rto_target_s
    result: dict[str, Any] = {
        "backup": dump.name, "backup_created_at": at.isoformat(), "scratch_database": scratch,
        "scratch_dropped": True, "stale_scratch_dropped": stale,
        "tables": len(manifest["tables"]), "total_rows": manifest["total_rows"],
        "rto_s": round(rto_s, 3), "rto_target_s": target_s, "rto_met": rto_s <= target_s,
        "duration_s": round(time.monotonic() - t0, 3),
    }
    if rto_s > target_s:
        result["warnings"] = [f"restore RTO {rto_s:.1f} s missed the target of {target_s:g} s "
                              f"(RESTORE_RTO_TARGET_S) for backup {dump.name}"]
    log.info("restore test passed backup=%s rto_s=%.2f target_s=%g tables=%d", dump.name, rto_s, target_s,
             len(manifest["tables"]))
    return result


# --------------------------------------------------------------------------- activities


_NON_RETRYABLE = (BackupRefused, VerificationFailed, NoVerifiedBackup, RestoreMismatch, ToolFailed)


def _as_application_error(exc: Exception) -> ApplicationError:
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=isinstance(exc, _NON_RETRYABLE))


class BackupActivities:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @activity.defn(name="run_backup")
    async def run_backup(self, job: JobInput) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(
                create_verified_backup(self._settings, self._settings.database_dsn, dry_run=job.dry_run),
                self._settings.backup_timeout_s,
            )
        except Exception as exc:
            report_failure(exc, "backup")
            raise _as_application_error(exc) from exc

    @activity.defn(name="run_restore_test")
    async def run_restore_test(self, job: JobInput) -> dict[str, Any]:
        if job.dry_run:
            backups = verified_backups(self._settings.resolved_backup_dir)
            if not backups:
                missing = NoVerifiedBackup(f"no verified backup in {self._settings.resolved_backup_dir}")
                raise _as_application_error(missing)
            return {"dry_run": True, "backup": backups[-1][1].name, "backups": len(backups)}
        try:
            return await asyncio.wait_for(
                restore_test(self._settings, self._settings.database_dsn), self._settings.backup_timeout_s
            )
        except Exception as exc:
            report_failure(exc, "restore-test")
            raise _as_application_error(exc) from exc
