"""SPEC B3: cleanup deletes old message secrets, expired and orphaned privacy tokens and the
credentials of removed companies — never what a live session needs; dry-run counts the same
and deletes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.cleanup import cleanup_store
from bench.store_data import add_privacy_tokens, device_jid, fill_device
from domain.jobs import JobInput
from infra.jobs import latest_job_figures, list_job_runs
from storage import Database
from tests.jobs.conftest import running_worker
from workflows.jobs import CleanupWorkflow

pytestmark = pytest.mark.timeout(90)

LIVE = device_jid(10)
REMOVED = device_jid(11)
GONE = device_jid(12)  # a device row that no longer exists (whatsmeow deleted it on logout)

PER_DEVICE = {
    "whatsmeow_device": "jid", "whatsmeow_sessions": "our_jid", "whatsmeow_identity_keys": "our_jid",
    "whatsmeow_pre_keys": "jid", "whatsmeow_app_state_sync_keys": "jid", "whatsmeow_message_secrets": "our_jid",
    "whatsmeow_privacy_tokens": "our_jid",
}


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await fill_device(conn, LIVE, pre_keys=100, sessions=300, identity_keys=300, secrets=1500,
                          app_state_keys=20, privacy_tokens=50)
        await fill_device(conn, REMOVED, pre_keys=40, sessions=30, identity_keys=30, secrets=20, privacy_tokens=5)
        await conn.execute(
            """INSERT INTO companies (company_id, device_jid, removed_at) VALUES
               ('company_live', $1, NULL), ('company_removed', $2, now() - interval '1 day')""",
            LIVE, REMOVED,
        )
        # Ages whatsmeow does not keep: 1200 of the live device's secrets were first seen 40 days ago,
        # 100 are 10 days old, the rest new. Old sessions of the live device stay whatever their age.
        await conn.execute(
            """UPDATE whatsmeow_message_secrets SET first_seen = now() - interval '40 days'
               WHERE our_jid = $1 AND message_id IN (SELECT message_id FROM whatsmeow_message_secrets
                                                     WHERE our_jid = $1 ORDER BY message_id LIMIT 1200)""",
            LIVE,
        )
        await conn.execute(
            """UPDATE whatsmeow_message_secrets SET first_seen = now() - interval '10 days'
               WHERE our_jid = $1 AND first_seen > now() - interval '1 day'
                 AND message_id IN (SELECT message_id FROM whatsmeow_message_secrets
                                    WHERE our_jid = $1 ORDER BY message_id DESC LIMIT 100)""",
            LIVE,
        )
        await conn.execute(
            """INSERT INTO sim_devices (company_id, jid) VALUES ('company_removed', 'sim-removed@s.whatsapp.net'),
               ('company_live', 'sim-live@s.whatsapp.net')"""
        )
        await add_privacy_tokens(conn, LIVE, 7, age_days=60, start=1000)  # expired
        await add_privacy_tokens(conn, GONE, 3, age_days=1)  # orphaned
    finally:
        await conn.close()


async def _counts(dsn: str, jid: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t} WHERE {c} = $1", jid))
                for t, c in PER_DEVICE.items()}
    finally:
        await conn.close()


async def test_dry_run_then_cleanup_deletes_old_secrets_and_removed_credentials_and_keeps_the_live_session(
        store_dsn, jobs_settings):
    await _seed(store_dsn)
    settings = jobs_settings()
    live_before = await _counts(store_dsn, LIVE)
    db = Database(store_dsn)
    try:
        dry = await cleanup_store(settings, db, dry_run=True, verbose=True)
        assert await _counts(store_dsn, LIVE) == live_before  # dry run: nothing deleted
        assert (await _counts(store_dsn, REMOVED))["whatsmeow_device"] == 1

        real = await cleanup_store(settings, db, dry_run=False)
    finally:
        await db.close()

    assert dry["deleted"] == real["deleted"] and dry["rows_to_delete"] == real["rows_deleted"]
    assert dry["rows_deleted"] == 0
    assert real["deleted"] == {
        "old_message_secrets": 1200,
        "expired_privacy_tokens": 7,
        "orphan_privacy_tokens": 3,
        "removed_companies.whatsmeow_device": 1,
        "removed_companies.whatsmeow_pre_keys": 40,
        "removed_companies.whatsmeow_sessions": 30,
        "removed_companies.whatsmeow_identity_keys": 30,
        "removed_companies.whatsmeow_message_secrets": 20,
        "removed_companies.whatsmeow_privacy_tokens": 5,
        "removed_companies.sim_devices": 1,
    }
    # The live session keeps its device, keys, sessions, app-state keys and recent secrets and tokens.
    live_after = await _counts(store_dsn, LIVE)
    assert live_after == {**live_before, "whatsmeow_message_secrets": 300, "whatsmeow_privacy_tokens": 50}
    assert set((await _counts(store_dsn, REMOVED)).values()) == {0}
    assert await _counts(store_dsn, GONE) == dict.fromkeys(PER_DEVICE, 0)
    conn = await asyncpg.connect(store_dsn)
    assert [r["company_id"] for r in await conn.fetch("SELECT company_id FROM sim_devices")] == ["company_live"]
    await conn.close()

    ages = dry["age_distribution"]["whatsmeow_message_secrets"]
    assert ages["buckets"] == {"<1d": 220, "1-7d": 0, "7-14d": 100, "14-30d": 0, ">30d": 1200}
    assert ages["oldest"] < ages["newest"]
    assert dry["warnings"] == ["cleanup would delete 1337 rows (more than 1000)"]
    assert "whatsmeow_message_secrets" in real["sizes_before"] and real["bytes_freed"] >= 0
    assert any(name.startswith("whatsmeow_message_secrets") for name in dry["index_sizes_before"])
    assert dry["removed_company_device_jids"] == [REMOVED] and real["removed_company_devices"] == 1
    assert "removed_company_device_jids" not in real  # phone numbers only in a verbose report
    # Nothing old is left: a second run has nothing to do.
    db = Database(store_dsn)
    try:
        again = await cleanup_store(settings, db, dry_run=False)
    finally:
        await db.close()
    assert again["rows_deleted"] == 0 and again["warnings"] == []


async def test_cleanup_workflow_records_the_run_and_its_figures(dev_env: WorkflowEnvironment, store_dsn, jobs_settings):
    await _seed(store_dsn)
    conn = await asyncpg.connect(store_dsn)  # a run whose workflow was terminated yesterday
    await conn.execute(
        "INSERT INTO job_runs (kind, status, started_at) VALUES ('cleanup', 'running', now() - interval '1 day')"
    )
    await conn.close()
    settings = jobs_settings(dev_env.client, cleanup_warn_rows=5000)
    async with running_worker(settings, dev_env.client):
        result = await dev_env.client.execute_workflow(
            CleanupWorkflow.run, JobInput(dry_run=False, trigger="test"), id=f"cleanup-{uuid.uuid4()}",
            task_queue=settings.temporal_core_queue, execution_timeout=timedelta(seconds=60),
        )
    assert result.status == "succeeded" and result.details["rows_deleted"] == 1337
    db = Database(store_dsn)
    try:
        runs = await list_job_runs(db, "cleanup")
        figures = await latest_job_figures(db)
    finally:
        await db.close()
    assert [(r.status, r.dry_run) for r in runs] == [("succeeded", False), ("abandoned", False)]
    assert runs[0].details["deleted"]["old_message_secrets"] == 1200
    assert figures.cleanup_rows_deleted_last == 1337 and figures.cleanup_rows_deleted_total == 1337
