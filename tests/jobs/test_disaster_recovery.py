"""Disaster recovery (issue #15.7): ``waorch restore`` puts a verified backup back as the configured database
(refusing while sessions are held, checking row counts, keeping the old database aside); every verified
backup is copied to a second location and checked there; restore tests are judged against an RTO target
and alert when they miss it; /metrics says how old, long, large and full the last backup is."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from activities.backup import create_verified_backup, manifest_path, sha256_of
from bench.store_data import device_jid, fill_device
from cli.processes import REPO, settings_env
from cli.restore import RestoreRefused, restore
from domain.jobs import JobInput
from domain.session import SessionAlert
from infra.jobs import job_metrics_provider
from infra.metrics import MetricsSnapshot
from storage import Database
from tests.conftest import PgServer
from tests.inbox.conftest import inbox_stack
from tests.jobs.conftest import worker_recording_alerts
from workflows.jobs import BackupWorkflow, RestoreTestWorkflow

pytestmark = pytest.mark.timeout(150)

KEY_TABLES = ("public.whatsmeow_pre_keys", "public.whatsmeow_sessions", "public.whatsmeow_device",
              "public.companies")


async def _counts(dsn: str, tables: tuple[str, ...] = KEY_TABLES) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()


async def _databases(pg_server: PgServer, prefix: str) -> list[str]:
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", prefix)
    finally:
        await conn.close()
    return [r["datname"] for r in rows]


async def _drop_kept(pg_server: PgServer, database: str) -> None:
    for name in await _databases(pg_server, database + "_"):
        await pg_server.drop_database(name)


def _manifest_counts(dump: Path) -> dict[str, int]:
    manifest = json.loads(manifest_path(dump).read_text())
    return {t: manifest["tables"][t]["rows"] for t in KEY_TABLES}


async def _filled(store_dsn: str) -> None:
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(1), pre_keys=1200, sessions=300)
    await conn.execute("INSERT INTO companies (company_id) VALUES ('company_before_backup')")
    await conn.close()


async def test_restore_replaces_a_damaged_database_and_keeps_the_old_one_aside(
        dev_env: WorkflowEnvironment, pg_server: PgServer, store_dsn: str, jobs_settings: Any, tmp_path: Path):
    await _filled(store_dsn)
    share = tmp_path / "share"
    settings = jobs_settings(dev_env.client, backup_copy_dir=share,
                             temporal_address=dev_env.client.service_client.config.target_host)
    backup = await create_verified_backup(settings, store_dsn)
    dump = Path(backup["file"])
    # The second location holds the same verified backup, checked there, private.
    assert backup["copy"]["ok"] is True and backup["copy"]["verified_sha256"] == backup["sha256"]
    copied = share / dump.name
    assert sha256_of(copied) == backup["sha256"] and manifest_path(copied).is_file()
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600 and stat.S_IMODE(share.stat().st_mode) == 0o700
    expected = _manifest_counts(dump)

    conn = await asyncpg.connect(store_dsn)  # the damage: keys lost, a row that came later
    await conn.execute("DELETE FROM whatsmeow_pre_keys")
    await conn.execute("INSERT INTO companies (company_id) VALUES ('company_after_backup')")
    await conn.close()

    said: list[str] = []
    report = await restore(settings, "latest", say=said.append)

    assert await _counts(store_dsn) == expected
    database = store_dsn.rsplit("/", 1)[1]
    assert report.kept_as is not None and report.kept_as in await _databases(pg_server, database + "_")
    kept = await _counts(store_dsn.rsplit("/", 1)[0] + "/" + report.kept_as)
    assert kept["public.whatsmeow_pre_keys"] == 0 and kept["public.companies"] == expected["public.companies"] + 1
    assert not [d for d in await _databases(pg_server, database + "_restore_")]  # no staging left
    conn = await asyncpg.connect(store_dsn)
    assert await conn.fetchval("SELECT count(*) FROM audit WHERE action = 'restore'") == 1
    await conn.close()
    assert any("every table's rows match the manifest" in line for line in said)
    await _drop_kept(pg_server, database)


async def test_database_gone_and_local_backups_lost_restore_from_the_second_location(
        dev_env: WorkflowEnvironment, pg_server: PgServer, store_dsn: str, jobs_settings: Any, tmp_path: Path):
    await _filled(store_dsn)
    settings = jobs_settings(dev_env.client, backup_copy_dir=tmp_path / "share",
                             temporal_address=dev_env.client.service_client.config.target_host)
    backup = await create_verified_backup(settings, store_dsn)
    expected = _manifest_counts(Path(backup["file"]))
    for f in settings.resolved_backup_dir.iterdir():  # the worker's disk is gone ...
        f.unlink()
    database = store_dsn.rsplit("/", 1)[1]
    await pg_server.drop_database(database)  # ... and so is the database

    res = subprocess.run([sys.executable, "-m", "cli.main", "restore", "latest"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=settings_env(settings, settings.temporal_target))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replaced (it did not exist)" in res.stdout and str(tmp_path / "share") in res.stdout
    assert await _counts(store_dsn) == expected


async def test_restore_refuses_while_a_session_is_held_and_a_mismatch_changes_nothing(
        dev_env: WorkflowEnvironment, make_settings: Any, db: Database, redis_client: Any, database_dsn: str,
        pg_server: PgServer):
    async with inbox_stack(dev_env, make_settings, db, redis_client) as s:  # one connected company
        settings = s.settings.model_copy(update={"temporal_address": dev_env.client.service_client.config.target_host})
        backup = await create_verified_backup(settings, database_dsn)
        await db.execute("INSERT INTO companies (company_id) VALUES ('company_marker')")

        with pytest.raises(RestoreRefused, match=f"1 session\\(s\\) are held by a connector \\({s.company_id}\\)"):
            await restore(settings, "latest", say=lambda _: None)
        assert await db.fetchval("SELECT count(*) FROM companies WHERE company_id = 'company_marker'") == 1

        # A backup whose restore does not match its manifest replaces nothing (--force past the session).
        manifest_file = manifest_path(Path(backup["file"]))
        manifest = json.loads(manifest_file.read_text())
        manifest["tables"]["public.schema_migrations"]["rows"] += 1
        manifest_file.write_text(json.dumps(manifest))
        with pytest.raises(Exception, match=r"public\.schema_migrations: .* restored, .* in the manifest"):
            await restore(settings, "latest", force=True, say=lambda _: None)
        assert await db.fetchval("SELECT count(*) FROM companies WHERE company_id = 'company_marker'") == 1
        database = database_dsn.rsplit("/", 1)[1]
        assert await _databases(pg_server, database + "_") == []  # staging dropped, nothing renamed


async def test_restore_test_is_judged_against_the_rto_target_and_metrics_describe_the_last_backup(
        dev_env: WorkflowEnvironment, store_dsn: str, jobs_settings: Any, tmp_path: Path):
    await _filled(store_dsn)
    settings = jobs_settings(dev_env.client, backup_copy_dir=tmp_path / "share", restore_rto_target_s=0.001)
    alerts: list[SessionAlert] = []
    db = Database(store_dsn)
    try:
        async with worker_recording_alerts(dev_env.client, settings, alerts):
            backup = await dev_env.client.execute_workflow(
                BackupWorkflow.run, JobInput(trigger="test"), id=f"backup-{uuid.uuid4()}",
                task_queue=settings.temporal_core_queue)
            assert backup.details["copy"]["ok"] is True
            assert [a.severity for a in alerts] == ["info"] and "copied to" in alerts[0].text

            missed = await dev_env.client.execute_workflow(
                RestoreTestWorkflow.run, JobInput(trigger="test"), id=f"restore-{uuid.uuid4()}",
                task_queue=settings.temporal_core_queue)
            assert missed.details["rto_met"] is False and missed.details["rto_target_s"] == 0.001
            warnings = [a for a in alerts if a.severity == "warning"]
            assert len(warnings) == 1 and "missed the target of 0.001 s" in warnings[0].text

        met = settings.model_copy(update={"restore_rto_target_s": 600.0})  # the default target
        async with worker_recording_alerts(dev_env.client, met, alerts):
            alerts.clear()
            ok = await dev_env.client.execute_workflow(
                RestoreTestWorkflow.run, JobInput(trigger="test"), id=f"restore-{uuid.uuid4()}",
                task_queue=met.temporal_core_queue)
            assert ok.details["rto_met"] is True and [a.severity for a in alerts] == ["info"]

        figures = await job_metrics_provider(db, met.restore_rto_target_s)()
    finally:
        await db.close()
    samples = {s.name: s.value for f in text_string_to_metric_families(
        MetricsSnapshot({}, {}, figures).to_prometheus().decode()) for s in f.samples}
    assert 0 <= samples["whatsapp_last_backup_age_seconds"] < 120
    assert samples["whatsapp_last_backup_duration_seconds"] == backup.details["duration_s"] > 0
    assert samples["whatsapp_last_backup_rows"] == backup.details["total_rows"] > 1500
    assert samples["whatsapp_last_backup_size_bytes"] == backup.details["size_bytes"]
    assert samples["whatsapp_last_backup_copy_ok"] == 1
    assert samples["whatsapp_restore_rto_target_seconds"] == 600


async def test_a_backup_that_cannot_be_copied_still_counts_and_the_job_says_why(store_dsn: str, jobs_settings: Any,
                                                                              tmp_path: Path):
    blocker = tmp_path / "share"
    blocker.write_text("a file where the share's directory should be")  # the share is not mounted, say
    settings = jobs_settings(backup_copy_dir=blocker)
    result = await create_verified_backup(settings, store_dsn)
    assert Path(result["file"]).is_file() and manifest_path(Path(result["file"])).is_file()  # it counts here
    assert result["copy"]["ok"] is False and str(blocker) in result["copy"]["dir"]
    # A warning: the backup job turns it into an alert (as the RTO warning above).
    assert len(result["warnings"]) == 1 and "not copied to the second location" in result["warnings"][0]
