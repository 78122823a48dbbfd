"""Each nightly job's alerts, through the real workflows and activities (only the alert channel is
recorded): a job that fails says so at once (critical), a job that succeeds with something to look at
says that (warning), and a plain success is one info line. The backup's failure alert is in
test_backup.py, the restore test's missed RTO in test_disaster_recovery.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from bench.store_data import device_jid, fill_device
from domain.jobs import JobInput
from domain.session import SessionAlert
from domain.settings import Settings
from tests.jobs.conftest import worker_recording_alerts
from workflows.jobs import BackupWorkflow, CleanupWorkflow, RestoreTestWorkflow


@pytest.fixture
def alerts() -> list[SessionAlert]:
    return []


def _of(alerts: list[SessionAlert], severity: str) -> list[str]:
    return [a.text for a in alerts if a.severity == severity]


async def _run(env: WorkflowEnvironment, settings: Settings, workflow: Any, **job: Any) -> Any:
    return await env.client.execute_workflow(workflow, JobInput(trigger="test", **job), id=f"job-{uuid.uuid4()}",
                                             task_queue=settings.temporal_core_queue)


async def test_a_restore_test_without_a_backup_fails_with_one_critical_alert(
        dev_env: WorkflowEnvironment, jobs_settings: Any, alerts: list[SessionAlert], tmp_path: Path) -> None:
    settings = jobs_settings(dev_env.client, data_dir=tmp_path / "empty")
    async with worker_recording_alerts(dev_env.client, settings, alerts):
        with pytest.raises(WorkflowFailureError):
            await _run(dev_env, settings, RestoreTestWorkflow.run)
    assert [a.severity for a in alerts] == ["critical"], alerts
    assert alerts[0].text.startswith("restore-test FAILED: ")


async def test_a_cleanup_above_the_warning_size_warns_and_a_small_one_does_not(
        dev_env: WorkflowEnvironment, jobs_settings: Any, store_dsn: str, alerts: list[SessionAlert]) -> None:
    conn = await asyncpg.connect(store_dsn)
    try:
        await fill_device(conn, device_jid(1), secrets=12)
        await conn.execute("UPDATE whatsmeow_message_secrets SET first_seen = now() - interval '60 days'")
    finally:
        await conn.close()
    settings = jobs_settings(dev_env.client, cleanup_warn_rows=10)
    async with worker_recording_alerts(dev_env.client, settings, alerts):
        await _run(dev_env, settings, CleanupWorkflow.run)
        assert _of(alerts, "warning") == ["cleanup: cleanup deleted 12 rows (more than 10)"], alerts
        assert len(_of(alerts, "info")) == 1 and "key cleanup deleted 12 rows" in _of(alerts, "info")[0]
        alerts.clear()
        await _run(dev_env, settings, CleanupWorkflow.run)  # nothing left to delete
    assert [a.severity for a in alerts] == ["info"], alerts
    assert "key cleanup deleted 0 rows" in alerts[0].text


async def test_a_backup_that_cannot_reach_its_second_location_warns(
        dev_env: WorkflowEnvironment, jobs_settings: Any, alerts: list[SessionAlert], tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.write_text("a file where the share's directory should be")  # the share is not mounted, say
    settings = jobs_settings(dev_env.client, backup_copy_dir=share)
    async with worker_recording_alerts(dev_env.client, settings, alerts):
        result = await _run(dev_env, settings, BackupWorkflow.run)
    assert result.status == "succeeded"  # the backup itself counts
    (warning,) = _of(alerts, "warning")
    assert warning.startswith("backup: ") and "not copied to the second location" in warning
    (info,) = _of(alerts, "info")
    assert "backup verified" in info and "NOT copied" in info
