"""Client-side operations on the nightly jobs, shared by the API and the CLI.

Start a job now, read its run history and latest figures (``job_runs``), list,
pause, unpause and trigger its Temporal Schedule. Nothing here runs a job: the
worker does (workflows.jobs, activities.backup / cleanup).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.schedules import job_schedules
from domain.jobs import JOB_KINDS, JOB_WORKFLOW_TYPES, JobInput, JobResult
from domain.settings import Settings
from infra.metrics import JobFigures as MetricsJobFigures
from storage import Database


class UnknownJob(ValueError):
    pass


class JobAlreadyRunning(RuntimeError):
    def __init__(self, kind: str, workflow_id: str) -> None:
        super().__init__(f"a manual {kind} run is already running (workflow {workflow_id})")
        self.workflow_id = workflow_id


class UnknownSchedule(LookupError):
    pass


def _check_kind(kind: str) -> None:
    if kind not in JOB_KINDS:
        raise UnknownJob(f"unknown job {kind!r}: one of {', '.join(JOB_KINDS)}")


def default_dry_run(kind: str) -> bool:
    """Manual cleanups are dry runs unless asked otherwise (SPEC B3); backups and restore tests are real."""
    return kind == "cleanup"


def manual_workflow_id(settings: Settings, kind: str) -> str:
    # One id per kind: a second manual run while one is running is refused, not doubled.
    return f"{settings.temporal_core_queue}-{kind}-manual"


async def start_job(client: Client, settings: Settings, kind: str, *, dry_run: bool | None = None,
                    verbose: bool = False, trigger: str = "api") -> WorkflowHandle[Any, JobResult]:
    """Start one run of a job now; raises JobAlreadyRunning when a manual run of it is in progress."""
    _check_kind(kind)
    job = JobInput(dry_run=default_dry_run(kind) if dry_run is None else dry_run, verbose=verbose, trigger=trigger)
    workflow_id = manual_workflow_id(settings, kind)
    try:
        handle: WorkflowHandle[Any, JobResult] = await client.start_workflow(
            JOB_WORKFLOW_TYPES[kind],
            job,
            id=workflow_id,
            task_queue=settings.temporal_core_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            result_type=JobResult,
            static_summary=f"manual {kind}" + (" (dry run)" if job.dry_run else ""),
        )
    except WorkflowAlreadyStartedError:
        raise JobAlreadyRunning(kind, workflow_id) from None
    return handle


@dataclass
class JobRun:
    id: int
    kind: str
    workflow_id: str | None
    status: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    details: dict[str, Any]
    error: str | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return out


async def list_job_runs(db: Database, kind: str, limit: int = 20) -> list[JobRun]:
    """The newest runs of one job, newest first."""
    import json

    _check_kind(kind)
    rows = await db.fetch(
        """SELECT id, kind, workflow_id, status, dry_run, started_at, finished_at, duration_s, details, error
           FROM job_runs WHERE kind = $1 ORDER BY started_at DESC, id DESC LIMIT $2""",
        kind, limit,
    )
    runs = []
    for r in rows:
        details = r["details"]
        runs.append(JobRun(
            id=r["id"], kind=r["kind"], workflow_id=r["workflow_id"], status=r["status"], dry_run=r["dry_run"],
            started_at=r["started_at"], finished_at=r["finished_at"], duration_s=r["duration_s"],
            details=json.loads(details) if isinstance(details, str) else dict(details or {}), error=r["error"],
        ))
    return runs


@dataclass
class LatestJobFigures:
    """The latest figures of the jobs, read from ``job_runs`` (for the API's /metrics, SPEC H2).

    Dry runs are left out: they back nothing up and delete nothing.
    """

    last_status: dict[str, str] = field(default_factory=dict)  # kind → "succeeded" | "failed" | "running"
    last_finished_at: dict[str, float] = field(default_factory=dict)  # kind → unix time
    last_success_at: dict[str, float] = field(default_factory=dict)
    last_duration_s: dict[str, float] = field(default_factory=dict)
    backup_size_bytes: int | None = None
    backup_total_rows: int | None = None
    backup_duration_s: float | None = None
    backup_copied: bool | None = None  # None: no second location configured
    restore_rto_s: float | None = None
    cleanup_rows_deleted_last: int | None = None
    cleanup_rows_deleted_total: int = 0


async def latest_job_figures(db: Database) -> LatestJobFigures:
    figures = LatestJobFigures()
    rows = await db.fetch(
        """SELECT DISTINCT ON (kind) kind, status, finished_at, duration_s FROM job_runs
           WHERE NOT dry_run AND finished_at IS NOT NULL ORDER BY kind, finished_at DESC"""
    )
    for r in rows:
        figures.last_status[r["kind"]] = r["status"]
        figures.last_finished_at[r["kind"]] = r["finished_at"].timestamp()
        if r["duration_s"] is not None:
            figures.last_duration_s[r["kind"]] = float(r["duration_s"])
    rows = await db.fetch(
        """SELECT DISTINCT ON (kind) kind, finished_at, details FROM job_runs
           WHERE NOT dry_run AND status = 'succeeded' ORDER BY kind, finished_at DESC"""
    )
    for r in rows:
        figures.last_success_at[r["kind"]] = r["finished_at"].timestamp()
        details = _json(r["details"])
        if r["kind"] == "backup":
            figures.backup_size_bytes = _int(details.get("size_bytes"))
            figures.backup_total_rows = _int(details.get("total_rows"))
            duration = details.get("duration_s")
            figures.backup_duration_s = float(duration) if isinstance(duration, int | float) else None
            copy = details.get("copy")
            figures.backup_copied = bool(copy.get("ok")) if isinstance(copy, dict) else None
        elif r["kind"] == "restore-test" and details.get("rto_s") is not None:
            figures.restore_rto_s = float(details["rto_s"])
        elif r["kind"] == "cleanup":
            figures.cleanup_rows_deleted_last = _int(details.get("rows_deleted"))
    figures.cleanup_rows_deleted_total = int(await db.fetchval(
        """SELECT coalesce(sum((details->>'rows_deleted')::bigint), 0) FROM job_runs
           WHERE kind = 'cleanup' AND status = 'succeeded' AND NOT dry_run"""
    ))
    return figures


def job_metrics_provider(db: Database, rto_target_s: float | None = None
                         ) -> Callable[[], Awaitable[MetricsJobFigures]]:
    """For ``infra.metrics.register_job_metrics``: the API's /metrics figures, from ``job_runs``."""

    async def provide() -> MetricsJobFigures:
        latest = await latest_job_figures(db)
        return MetricsJobFigures(
            last_backup_timestamp=latest.last_success_at.get("backup"),
            last_backup_size_bytes=latest.backup_size_bytes,
            last_backup_success=(latest.last_status["backup"] == "succeeded") if "backup" in latest.last_status
            else None,
            last_restore_rto_seconds=latest.restore_rto_s,
            keys_cleaned_total=latest.cleanup_rows_deleted_total if "cleanup" in latest.last_status else None,
            last_backup_duration_seconds=latest.backup_duration_s,
            last_backup_rows=latest.backup_total_rows,
            last_backup_copied=latest.backup_copied,
            restore_rto_target_seconds=rto_target_s,
        )

    return provide


def _json(value: Any) -> dict[str, Any]:
    import json

    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


# --------------------------------------------------------------------------- schedules


def _schedule_kind(settings: Settings, schedule_id: str) -> str:
    for job in job_schedules(settings):
        if job.schedule_id == schedule_id:
            return job.kind
    raise UnknownSchedule(f"unknown schedule {schedule_id!r}: one of "
                          + ", ".join(j.schedule_id for j in job_schedules(settings)))


async def list_schedules(client: Client, settings: Settings) -> list[dict[str, Any]]:
    """Every job schedule as Temporal describes it (missing ones are listed as such)."""
    out = []
    for job in job_schedules(settings):
        try:
            desc = await client.get_schedule_handle(job.schedule_id).describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            out.append({"id": job.schedule_id, "kind": job.kind, "cron": job.cron, "exists": False, "paused": None})
            continue
        action = desc.schedule.action
        cron: str | None = None
        if isinstance(action, ScheduleActionStartWorkflow) and action.memo and "cron" in action.memo:
            raw = action.memo["cron"]
            cron = client.data_converter.payload_converter.from_payload(raw, str) if isinstance(raw, Payload) else raw
        recent = [
            {"scheduledAt": a.scheduled_at.isoformat(), "startedAt": a.started_at.isoformat(),
             "workflowId": a.action.workflow_id
             if isinstance(a.action, ScheduleActionExecutionStartWorkflow) else None}
            for a in desc.info.recent_actions[-5:]
        ]
        out.append({
            "id": job.schedule_id,
            "kind": job.kind,
            "exists": True,
            "cron": cron,  # as the last worker start set it (Temporal keeps it as calendars)
            "workflowType": action.workflow if isinstance(action, ScheduleActionStartWorkflow) else None,
            "paused": desc.schedule.state.paused,
            "note": desc.schedule.state.note,
            "nextRuns": [t.isoformat() for t in desc.info.next_action_times[:3]],
            "recentActions": recent,
            "runningWorkflows": [w.workflow_id for w in desc.info.running_actions
                                 if isinstance(w, ScheduleActionExecutionStartWorkflow)],
        })
    return out


async def pause_schedule(client: Client, settings: Settings, schedule_id: str, note: str | None = None) -> None:
    _schedule_kind(settings, schedule_id)
    await client.get_schedule_handle(schedule_id).pause(note=note or "paused via waorch")


async def unpause_schedule(client: Client, settings: Settings, schedule_id: str, note: str | None = None) -> None:
    _schedule_kind(settings, schedule_id)
    await client.get_schedule_handle(schedule_id).unpause(note=note or "unpaused via waorch")


async def trigger_schedule(client: Client, settings: Settings, schedule_id: str) -> str:
    """Run the schedule's action now (overlap policy applies); returns the job kind."""
    kind = _schedule_kind(settings, schedule_id)
    await client.get_schedule_handle(schedule_id).trigger()
    return kind
