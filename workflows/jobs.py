"""The nightly jobs (SPEC B1-B3): backup, restore test, key cleanup.

Each workflow is the same frame around one activity that does the work:
open a ``job_runs`` row → run → close the row (metrics are updated there) →
notify; on failure the row says why, an alert goes out at once (SPEC H4) and
the workflow fails, so the Temporal UI shows it too. Temporal Schedules start
them (activities.schedules); the API and the CLI start them on demand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain.jobs import NON_RETRYABLE, JobFinish, JobInput, JobResult, JobStart

_QUICK = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


def _summary(kind: str, details: dict[str, Any]) -> str:
    prefix = "dry run: " if details.get("dry_run") else ""
    if kind == "backup":
        if details.get("dry_run"):
            return f"{prefix}backup of {details.get('total_rows')} rows would be written"
        copy = details.get("copy")
        copied = "" if not copy else (f", copied to {copy.get('dir')}" if copy.get("ok") else ", NOT copied")
        return (f"backup verified: {details.get('total_rows')} rows, {details.get('size_bytes')} bytes, "
                f"{details.get('duration_s')} s{copied}")
    if kind == "restore-test":
        return (f"restore test passed: {details.get('tables')} tables match, RTO {details.get('rto_s')} s "
                f"(target {details.get('rto_target_s')} s)")
    would = "would delete" if details.get("dry_run") else "deleted"
    rows = details.get("rows_to_delete") if details.get("dry_run") else details.get("rows_deleted")
    media = details.get("media") or {}
    media_part = (f"; media: {media.get('rows_to_delete', 0)} older than {media.get('max_age_days')} days, "
                  f"{media.get('blobs_to_delete', 0)} files ({media.get('bytes_to_free', 0)} bytes)") if media else ""
    statuses = details.get("message_status")
    expired = (f"; {statuses.get('rows_to_delete')} expired message statuses"
               if isinstance(statuses, dict) and statuses.get("rows_to_delete") else "")
    return f"{prefix}key cleanup {would} {rows} rows{media_part}{expired}"


async def _run_job(kind: str, activity_name: str, job: JobInput, *, timeout: timedelta) -> JobResult:
    info = workflow.info()
    run_id: int = await workflow.execute_activity(
        "record_job_start", JobStart(kind, info.workflow_id, job.dry_run), result_type=int,
        start_to_close_timeout=timedelta(seconds=30), retry_policy=_QUICK,
    )
    workflow.set_current_details(f"{kind} running (job_runs id {run_id})")
    try:
        details: dict[str, Any] = await workflow.execute_activity(
            activity_name, job, result_type=dict,
            start_to_close_timeout=timeout,
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=10),
                                     non_retryable_error_types=NON_RETRYABLE),
        )
    except ActivityError as err:
        cause = err.cause
        message = str(cause.message if isinstance(cause, ApplicationError) else cause or err)
        await workflow.execute_activity(
            "record_job_finish", JobFinish(run_id, "failed", {"dry_run": job.dry_run}, message),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=_QUICK,
        )
        await _alert(f"{kind} FAILED: {message}", "critical")
        workflow.set_current_details(f"{kind} failed: {message}")
        raise ApplicationError(f"{kind} failed: {message}", type="JobFailed", non_retryable=True) from err
    await workflow.execute_activity(
        "record_job_finish", JobFinish(run_id, "succeeded", details), result_type=float,
        start_to_close_timeout=timedelta(seconds=30), retry_policy=_QUICK,
    )
    for warning in details.get("warnings", []):
        await _alert(f"{kind}: {warning}", "warning")
    summary = _summary(kind, details)
    await _alert(summary, "info")
    workflow.set_current_details(summary)
    return JobResult(kind, run_id, "succeeded", job.dry_run, details)


async def _alert(text: str, severity: str) -> None:
    # The payload is domain.session.SessionAlert's fields.
    await workflow.execute_activity(
        "send_alert", {"text": text, "severity": severity}, result_type=str,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=2)),
    )


@workflow.defn(name="BackupWorkflow")
class BackupWorkflow:
    """pg_dump → manifest → verify the file against the manifest → retention (SPEC B1)."""

    @workflow.run
    async def run(self, job: JobInput) -> JobResult:
        return await _run_job("backup", "run_backup", job, timeout=timedelta(hours=2))


@workflow.defn(name="RestoreTestWorkflow")
class RestoreTestWorkflow:
    """Newest verified backup → scratch database → counts vs manifest → RTO (SPEC B2)."""

    @workflow.run
    async def run(self, job: JobInput) -> JobResult:
        return await _run_job("restore-test", "run_restore_test", job, timeout=timedelta(hours=2))


@workflow.defn(name="CleanupWorkflow")
class CleanupWorkflow:
    """Delete what no live session needs; report sizes and ages (SPEC B3)."""

    @workflow.run
    async def run(self, job: JobInput) -> JobResult:
        return await _run_job("cleanup", "run_cleanup", job, timeout=timedelta(hours=1))


