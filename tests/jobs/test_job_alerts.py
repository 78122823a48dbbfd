"""Each nightly job's alerts, through the real workflows and activities (only the alert channel is
recorded): a job that fails says so at once (critical), a job that succeeds with something to look at
says that (warning), and a plain success is one info line. The backup's failure alert is in
test_backup.py, the restore test's missed RTO in test_disaster_recovery.py."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.worker import WorkerDeps, build_activities
from bench.store_data import device_jid, fill_device
from domain.jobs import JobInput
from domain.session import SessionAlert
from domain.settings import Settings
from infra.redis import EventPublisher, redis_client
from storage import Database
from workflows import ALL_WORKFLOWS
from workflows.jobs import BackupWorkflow, CleanupWorkflow, RestoreTestWorkflow


@dataclass
class Recorded:
    alerts: list[SessionAlert] = field(default_factory=list)

    def of(self, severity: str) -> list[str]:
        return [a.text for a in self.alerts if a.severity == severity]


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@contextlib.asynccontextmanager
async def _worker(env: WorkflowEnvironment, settings: Settings, recorded: Recorded) -> AsyncIterator[None]:
    @activity.defn(name="send_alert")
    async def record_alert(alert: SessionAlert) -> str:
        recorded.alerts.append(alert)
        return "test"

    db = Database(settings.database_dsn)
    redis = redis_client(settings)
    deps = WorkerDeps(settings, env.client, db, redis, EventPublisher(redis, settings.events_channel))
    acts = [a for a in build_activities(deps) if getattr(a, "__temporal_activity_definition").name != "send_alert"]
    try:
        async with Worker(env.client, task_queue=settings.temporal_core_queue, workflows=ALL_WORKFLOWS,
                          activities=[*acts, record_alert]):
            yield
    finally:
        await db.close()
        await redis.aclose()


async def _run(env: WorkflowEnvironment, settings: Settings, workflow: Any, **job: Any) -> Any:
    return await env.client.execute_workflow(workflow, JobInput(trigger="test", **job), id=f"job-{uuid.uuid4()}",
                                             task_queue=settings.temporal_core_queue)


async def test_a_restore_test_without_a_backup_fails_with_one_critical_alert(
        dev_env: WorkflowEnvironment, jobs_settings: Any, recorded: Recorded, tmp_path: Path) -> None:
    settings = jobs_settings(dev_env.client, data_dir=tmp_path / "empty")
    async with _worker(dev_env, settings, recorded):
        with pytest.raises(WorkflowFailureError):
            await _run(dev_env, settings, RestoreTestWorkflow.run)
    assert [a.severity for a in recorded.alerts] == ["critical"], recorded.alerts
    assert recorded.alerts[0].text.startswith("restore-test FAILED: ")


async def test_a_cleanup_above_the_warning_size_warns_and_a_small_one_does_not(
        dev_env: WorkflowEnvironment, jobs_settings: Any, store_dsn: str, recorded: Recorded) -> None:
    conn = await asyncpg.connect(store_dsn)
    try:
        await fill_device(conn, device_jid(1), secrets=12)
        await conn.execute("UPDATE whatsmeow_message_secrets SET first_seen = now() - interval '60 days'")
    finally:
        await conn.close()
    settings = jobs_settings(dev_env.client, cleanup_warn_rows=10)
    async with _worker(dev_env, settings, recorded):
        await _run(dev_env, settings, CleanupWorkflow.run)
        assert recorded.of("warning") == ["cleanup: cleanup deleted 12 rows (more than 10)"], recorded.alerts
        assert len(recorded.of("info")) == 1 and "key cleanup deleted 12 rows" in recorded.of("info")[0]
        recorded.alerts.clear()
        await _run(dev_env, settings, CleanupWorkflow.run)  # nothing left to delete
    assert [a.severity for a in recorded.alerts] == ["info"], recorded.alerts
    assert "key cleanup deleted 0 rows" in recorded.alerts[0].text


async def test_a_backup_that_cannot_reach_its_second_location_warns(
        dev_env: WorkflowEnvironment, jobs_settings: Any, recorded: Recorded, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.write_text("a file where the share's directory should be")  # the share is not mounted, say
    settings = jobs_settings(dev_env.client, backup_copy_dir=share)
    async with _worker(dev_env, settings, recorded):
        result = await _run(dev_env, settings, BackupWorkflow.run)
    assert result.status == "succeeded"  # the backup itself counts
    (warning,) = recorded.of("warning")
    assert warning.startswith("backup: ") and "not copied to the second location" in warning
    (info,) = recorded.of("info")
    assert "backup verified" in info and "NOT copied" in info
