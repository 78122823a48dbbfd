"""SPEC B1: a backup counts only when the dump file itself matches a manifest written
from the same snapshot; an old pg_dump is refused before anything is written."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.backup import (
    VerificationFailed,
    apply_retention,
    count_rows_in_dump,
    create_verified_backup,
    dump_name,
    manifest_path,
    sha256_of,
    verified_backups,
    verify_backup,
)
from activities.jobs_common import PgTools
from bench.store_data import device_jid, fill_device
from domain.jobs import JobInput
from infra.jobs import list_job_runs
from storage import Database
from tests.jobs.conftest import fake_pg_bin, running_worker
from workflows.jobs import BackupWorkflow

pytestmark = pytest.mark.timeout(90)


def _size(path: Path) -> int:
    return path.stat().st_size


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _truncate_copy(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


async def _db_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()


async def test_backup_of_thousands_of_key_rows_counts_match_in_manifest_database_and_file(store_dsn, jobs_settings):
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(1), pre_keys=2500, sessions=1500, identity_keys=1500, secrets=1000,
                      app_state_keys=200, privacy_tokens=300)
    await fill_device(conn, device_jid(2), pre_keys=800, sessions=10)
    await conn.close()
    settings = jobs_settings()

    result = await create_verified_backup(settings, store_dsn)

    dump = Path(result["file"])
    manifest = json.loads(manifest_path(dump).read_text())
    key_tables = ["public.whatsmeow_pre_keys", "public.whatsmeow_sessions", "public.whatsmeow_identity_keys",
                  "public.whatsmeow_message_secrets", "public.whatsmeow_device", "public.schema_migrations"]
    in_manifest = {t: manifest["tables"][t]["rows"] for t in key_tables}
    assert in_manifest["public.whatsmeow_pre_keys"] == 3300
    assert in_manifest == await _db_counts(store_dsn, key_tables)
    in_file = await count_rows_in_dump(PgTools.from_setting(None), dump)
    assert {t: in_file.get(t, 0) for t in manifest["tables"]} == {t: v["rows"] for t, v in manifest["tables"].items()}
    assert manifest["total_rows"] == result["total_rows"] > 7800
    assert manifest["sha256"] == sha256_of(dump) and manifest["size_bytes"] == _size(dump)
    assert manifest["pg_dump_version"].startswith("16") and manifest["store_schema_version"] >= 1
    # Files 0600 in a 0700 directory, and nothing half-written left behind.
    assert _mode(dump) == 0o600
    assert _mode(manifest_path(dump)) == 0o600
    assert _mode(dump.parent) == 0o700
    assert sorted(p.name for p in dump.parent.iterdir()) == sorted([dump.name, manifest_path(dump).name])


def _slow_pg_bin(tmp_path: Path) -> Path:
    """The real tools, with pg_dump starting half a second late: rows land between counting and dumping."""
    real = PgTools.from_setting(None).bin_dir
    bin_dir = tmp_path / "slow"
    bin_dir.mkdir()
    (bin_dir / "pg_restore").symlink_to(real / "pg_restore")
    script = bin_dir / "pg_dump"
    script.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] || sleep 0.5\nexec "{real / "pg_dump"}" "$@"\n')
    script.chmod(0o755)
    return bin_dir


async def test_rows_written_while_the_dump_runs_do_not_break_verification(store_dsn, jobs_settings, tmp_path):
    # Counts and dump share one exported snapshot: a session writing keys meanwhile is not a mismatch.
    settings = jobs_settings(pg_bin_dir=_slow_pg_bin(tmp_path))
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(4), pre_keys=3000, sessions=3000)
    writer = await asyncpg.connect(store_dsn)
    stop = asyncio.Event()

    async def write_keys() -> int:
        written = 0
        while not stop.is_set():
            await writer.execute(
                """INSERT INTO whatsmeow_sessions (our_jid, their_id, session)
                   SELECT $1, 'w' || $2::int || '-' || g, '\\x00' FROM generate_series(1, 50) g""",
                device_jid(4), written,
            )
            written += 50
        return written

    task = asyncio.create_task(write_keys())
    try:
        result = await create_verified_backup(settings, store_dsn)
    finally:
        stop.set()
        written = await task
        await writer.close()
    in_db = await conn.fetchval("SELECT count(*) FROM whatsmeow_sessions")
    await conn.close()
    dumped = result["row_counts"]["public.whatsmeow_sessions"]
    assert 3000 <= dumped < in_db == 3000 + written
    assert result["rows_verified"] == result["total_rows"]


async def test_dry_run_backup_writes_nothing(store_dsn, jobs_settings):
    settings = jobs_settings()
    result = await create_verified_backup(settings, store_dsn, dry_run=True)
    assert result["dry_run"] is True and result["tables"] > 17 and result["pg_dump_version"].startswith("16")
    assert not settings.resolved_backup_dir.exists()


async def test_truncated_or_empty_dump_fails_verification_even_with_a_matching_checksum(store_dsn, jobs_settings,
                                                                                        tmp_path):
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(3), pre_keys=3000, sessions=1000)
    await conn.close()
    result = await create_verified_backup(jobs_settings(), store_dsn)
    dump = Path(result["file"])
    manifest = json.loads(manifest_path(dump).read_text())
    tools = PgTools.from_setting(None)

    truncated = tmp_path / "truncated.dump"
    _truncate_copy(dump, truncated)
    with pytest.raises(VerificationFailed, match="sha256"):
        await verify_backup(tools, truncated, manifest)
    # A manifest written from the broken file (checksum and size match it) still fails:
    # the rows are counted from the file and compared with the database's counts.
    rewritten = {**manifest, "sha256": sha256_of(truncated), "size_bytes": _size(truncated)}
    with pytest.raises(VerificationFailed) as info:
        await verify_backup(tools, truncated, rewritten)
    assert "sha256" not in str(info.value)

    empty = tmp_path / "empty.dump"
    empty.write_bytes(b"")
    with pytest.raises(VerificationFailed, match="0 bytes"):
        await verify_backup(tools, empty, {**manifest, "sha256": sha256_of(empty), "size_bytes": 0})

    assert (await verify_backup(tools, dump, manifest))["rows_verified"] == manifest["total_rows"]


async def test_old_pg_dump_is_refused_with_the_version_and_no_successful_backup_is_written(
        dev_env: WorkflowEnvironment, store_dsn, jobs_settings, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="waorch.alerts")
    settings = jobs_settings(dev_env.client, pg_bin_dir=fake_pg_bin(tmp_path, "12.22"))
    async with running_worker(settings, dev_env.client):
        with pytest.raises(WorkflowFailureError) as info:
            await dev_env.client.execute_workflow(
                BackupWorkflow.run, JobInput(trigger="test"), id=f"backup-{uuid.uuid4()}",
                task_queue=settings.temporal_core_queue, execution_timeout=timedelta(seconds=60),
            )
    message = str(info.value.cause)
    assert "pg_dump 12.22 is older than the PostgreSQL server 16" in message
    assert "PG_BIN_DIR" in message
    backup_dir = settings.resolved_backup_dir
    assert not backup_dir.exists() or list(backup_dir.iterdir()) == []
    db = Database(store_dsn)
    try:
        runs = await list_job_runs(db, "backup")
    finally:
        await db.close()
    assert [r.status for r in runs] == ["failed"]
    assert "older than the PostgreSQL server" in (runs[0].error or "")
    # The failure alerts at once (SPEC H4): no success notification, one critical alert naming the cause.
    alerts = [r.getMessage() for r in caplog.records if r.name == "waorch.alerts"]
    assert len(alerts) == 1 and "severity=critical" in alerts[0] and "pg_dump 12.22" in alerts[0]


def _fake_backup(backup_dir: Path, at: datetime) -> None:
    dump = backup_dir / dump_name(at)
    dump.write_bytes(b"x")
    manifest_path(dump).write_text("{}")


def _simulate(backup_dir: Path, first: datetime, days: int) -> list[datetime]:
    backup_dir.mkdir(parents=True)
    for day in range(days):
        _fake_backup(backup_dir, first + timedelta(days=day))
        apply_retention(backup_dir, 7, 4)
        assert len(verified_backups(backup_dir)) <= 11
    return [at for at, _ in verified_backups(backup_dir)]


def test_retention_keeps_7_daily_and_4_monthly(tmp_path):
    # 60 nightly backups (Jan 15 - Mar 15): the 7 newest days, and the first backup of each
    # earlier month — 60 days reach back into only 3 months (Jan, Feb, Mar).
    first = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
    kept = _simulate(tmp_path / "sixty", first, 60)
    daily = [first + timedelta(days=d) for d in range(53, 60)]
    monthly = [first, datetime(2026, 2, 1, 3, tzinfo=UTC), datetime(2026, 3, 1, 3, tzinfo=UTC)]
    assert kept == sorted(monthly + daily)

    # Long enough to fill every slot: exactly 7 daily + 4 monthly, the oldest months dropped.
    kept = _simulate(tmp_path / "long", first, 160)
    assert len(kept) == 11
    assert kept[:4] == [datetime(2026, m, 1, 3, tzinfo=UTC) for m in (3, 4, 5, 6)]
    assert kept[4:] == [first + timedelta(days=d) for d in range(153, 160)]
    # A dump whose manifest is missing (verification never finished) is not a backup: never counted.
    (tmp_path / "long" / dump_name(first - timedelta(days=1))).write_bytes(b"x")
    assert len(verified_backups(tmp_path / "long")) == 11


def test_retention_dry_run_deletes_nothing(tmp_path):
    backup_dir = tmp_path / "b"
    backup_dir.mkdir()
    first = datetime(2026, 1, 1, 3, tzinfo=UTC)
    for day in range(20):
        _fake_backup(backup_dir, first + timedelta(days=day))
    would = apply_retention(backup_dir, 7, 4, dry_run=True)
    assert len(would) == 12
    assert len(verified_backups(backup_dir)) == 20
    shutil.rmtree(backup_dir)
