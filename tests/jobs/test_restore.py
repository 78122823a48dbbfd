"""SPEC B2: the newest verified backup is restored into a scratch database, compared with its
manifest, timed (RTO), and the scratch database is dropped — also when the test fails midway."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.backup import create_verified_backup, manifest_path, scratch_name, scratch_prefix
from bench.store_data import device_jid, fill_device
from domain.jobs import JobInput
from infra.jobs import job_metrics_provider, latest_job_figures, list_job_runs
from storage import Database
from tests.conftest import PgServer
from tests.jobs.conftest import running_worker, scratch_databases_of
from workflows.jobs import RestoreTestWorkflow

pytestmark = pytest.mark.timeout(90)


def _bump_manifest(dump: Path, table: str) -> None:
    path = manifest_path(dump)
    manifest = json.loads(path.read_text())
    manifest["tables"][table]["rows"] += 1
    path.write_text(json.dumps(manifest))


async def _restore(env: WorkflowEnvironment, settings) -> object:
    return await env.client.execute_workflow(
        RestoreTestWorkflow.run, JobInput(trigger="test"), id=f"restore-{uuid.uuid4()}",
        task_queue=settings.temporal_core_queue, execution_timeout=timedelta(seconds=60),
    )


async def test_restore_test_matches_the_manifest_reports_rto_and_drops_the_scratch_database(
        dev_env: WorkflowEnvironment, pg_server: PgServer, store_dsn, jobs_settings):
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(1), pre_keys=2000, sessions=800, identity_keys=800, secrets=400)
    await conn.close()
    settings = jobs_settings(dev_env.client)
    backup = await create_verified_backup(settings, store_dsn)

    async with running_worker(settings, dev_env.client):
        result = await _restore(dev_env, settings)

    details = result.details  # type: ignore[attr-defined]
    assert details["backup"] == Path(backup["file"]).name
    assert details["total_rows"] == backup["total_rows"] and details["tables"] == backup["tables"]
    assert 0 < details["rto_s"] < 30
    assert details["scratch_database"].startswith(scratch_prefix(store_dsn.rsplit("/", 1)[1]))
    assert await scratch_databases_of(pg_server, store_dsn) == []
    db = Database(store_dsn)
    try:
        runs = await list_job_runs(db, "restore-test")
        figures = await latest_job_figures(db)
        exported = await job_metrics_provider(db)()  # what the API's /metrics reports
    finally:
        await db.close()
    assert [r.status for r in runs] == ["succeeded"]
    assert runs[0].details["rto_s"] == details["rto_s"] and runs[0].duration_s is not None
    assert figures.restore_rto_s == details["rto_s"] == exported.last_restore_rto_seconds
    assert exported.last_backup_timestamp is None  # the backup above ran outside a job: no job_runs row


async def test_failed_restore_test_leaves_no_scratch_database_and_is_recorded(
        dev_env: WorkflowEnvironment, pg_server: PgServer, store_dsn, jobs_settings):
    conn = await asyncpg.connect(store_dsn)
    await fill_device(conn, device_jid(2), pre_keys=1500)
    await conn.close()
    settings = jobs_settings(dev_env.client)
    backup = await create_verified_backup(settings, store_dsn)
    # The restore itself succeeds; the comparison afterwards fails (midway, with the scratch DB full).
    _bump_manifest(Path(backup["file"]), "public.whatsmeow_pre_keys")
    # A scratch database a crashed run left behind is swept too.
    database = store_dsn.rsplit("/", 1)[1]
    stale = scratch_name(database, now=time.time() - settings.backup_timeout_s - 60)
    running = scratch_name(database)  # as if another restore test were running right now
    admin = await asyncpg.connect(pg_server.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{stale}"')
    await admin.execute(f'CREATE DATABASE "{running}"')
    await admin.close()

    async with running_worker(settings, dev_env.client):
        with pytest.raises(WorkflowFailureError) as info:
            await _restore(dev_env, settings)

    assert "public.whatsmeow_pre_keys: 1500 restored, 1501 in the manifest" in str(info.value.cause)
    assert await scratch_databases_of(pg_server, store_dsn) == [running]
    db = Database(store_dsn)
    try:
        runs = await list_job_runs(db, "restore-test")
    finally:
        await db.close()
    assert [r.status for r in runs] == ["failed"]
    assert "does not match its manifest" in (runs[0].error or "")
