"""SPEC B4: the job schedules exist once per deployment however often workers start, show in
`temporal schedule list`, and the API lists, pauses and triggers them and starts jobs on demand."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.schedules import job_schedules
from activities.worker import run_worker
from api.app import create_app
from cli.embedded import free_port, venv_binary, wait_until
from domain.settings import Settings
from infra.jobs import list_job_runs, list_schedules
from storage import Database
from tests.jobs.conftest import ADMIN, running_worker

pytestmark = pytest.mark.timeout(120)


async def _start_worker_once(settings: Settings, client: Client) -> None:
    """Start the real worker entry point, wait until its schedules carry its crons, stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    wanted = {j.schedule_id: j.cron for j in job_schedules(settings)}

    async def ready() -> bool:
        if task.done():
            return True
        listed = {s["id"]: s["cron"] for s in await list_schedules(client, settings)}
        return listed == wanted

    try:
        await wait_until(ready, 30)
        if task.done():
            task.result()  # a crash fails the test with its own error
        if settings.worker_metrics_port:
            text = ""

            async def metrics_served() -> bool:
                nonlocal text
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics")).text
                return True

            await wait_until(metrics_served, 10)
            assert "waorch_backup_last_size_bytes" in text
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _our_schedule_ids(client: Client, prefix: str) -> list[str]:
    return sorted([s.id async for s in await client.list_schedules() if s.id.startswith(prefix)])


@contextlib.asynccontextmanager
async def _api(settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, client=client)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as http:
            yield http


async def test_schedules_are_created_once_survive_restarts_and_are_driven_from_the_api(
        dev_env: WorkflowEnvironment, store_dsn, jobs_settings):
    client = dev_env.client
    target = client.service_client.config.target_host
    settings = jobs_settings(client, temporal_address=target)
    prefix = settings.temporal_core_queue + "-"
    ids = {j.kind: j.schedule_id for j in job_schedules(settings)}

    await _start_worker_once(settings, client)
    await client.get_schedule_handle(ids["cleanup"]).pause(note="operator paused it")
    # Second start, with a changed cron: updated in place, not duplicated, the pause kept.
    restarted = settings.model_copy(update={"backup_cron": "15 2 * * *", "worker_metrics_port": free_port()})
    await _start_worker_once(restarted, client)

    assert await _our_schedule_ids(client, prefix) == sorted(ids.values())
    listed = await asyncio.to_thread(
        subprocess.run,
        [venv_binary("temporal"), "schedule", "list", "--address", target, "--namespace", client.namespace],
        capture_output=True, text=True, timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    for schedule_id in ids.values():
        assert listed.stdout.count(schedule_id) == 1, listed.stdout

    async with _api(settings, client) as http, running_worker(settings, client):
        assert (await http.get("/api/schedules")).status_code == 401
        body = (await http.get("/api/schedules", headers=ADMIN)).json()
        by_kind = {s["kind"]: s for s in body["schedules"]}
        assert by_kind["backup"]["cron"] == "15 2 * * *" and by_kind["backup"]["workflowType"] == "BackupWorkflow"
        assert by_kind["cleanup"]["paused"] is True and by_kind["restore-test"]["paused"] is False
        assert by_kind["cleanup"]["note"] == "operator paused it"
        assert by_kind["backup"]["nextRuns"][0].endswith("02:15:00+00:00")

        resp = await http.post(f"/api/schedules/{ids['cleanup']}/unpause", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert (await client.get_schedule_handle(ids["cleanup"]).describe()).schedule.state.paused is False
        assert (await http.post("/api/schedules/someone-elses/trigger", headers=ADMIN)).status_code == 404

        # A trigger from the API runs the workflow: a verified backup lands in job_runs and on disk.
        resp = await http.post(f"/api/schedules/{ids['backup']}/trigger", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        db = Database(store_dsn)
        try:
            async def backup_done() -> bool:
                runs = await list_job_runs(db, "backup")
                return bool(runs) and runs[0].status != "running"

            await wait_until(backup_done, 60, interval=0.2)
            (run,) = await list_job_runs(db, "backup")
        finally:
            await db.close()
        assert run.status == "succeeded" and (run.workflow_id or "").startswith(f"{ids['backup']}-scheduled")
        assert (settings.resolved_backup_dir / run.details["file"].rsplit("/", 1)[1]).exists()

        # On demand: a manual cleanup is a dry run unless asked otherwise.
        resp = await http.post("/api/jobs/cleanup", headers=ADMIN, json={"wait": True})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "succeeded" and resp.json()["dryRun"] is True
        runs = (await http.get("/api/jobs/cleanup/runs", headers=ADMIN)).json()["runs"]
        assert [(r["status"], r["dry_run"]) for r in runs] == [("succeeded", True)]
        assert (await http.post("/api/jobs/vacuum", headers=ADMIN)).status_code == 422
        resp = await http.post("/api/jobs/backup", headers=ADMIN, json={"dryRun": "maybe"})
        assert resp.status_code == 422 and "dryRun" in resp.json()["error"]
