"""The nightly jobs' Temporal Schedules (SPEC B4), created idempotently at worker start.

Temporal has no upsert for schedules: create, and when the id exists update it
to the wanted spec (a changed cron in settings takes effect at the next start).
A paused schedule stays paused across updates: pausing is an operator's decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from domain.jobs import JOB_WORKFLOW_TYPES, JobInput
from domain.settings import Settings

log = logging.getLogger("waorch.schedules")


@dataclass(frozen=True)
class JobSchedule:
    kind: str
    schedule_id: str
    cron: str


def job_schedules(settings: Settings) -> list[JobSchedule]:
    """One schedule per job; ids carry the core queue, so two deployments in one namespace never collide."""
    prefix = settings.temporal_core_queue
    return [
        JobSchedule("backup", f"{prefix}-backup", settings.backup_cron),
        JobSchedule("cleanup", f"{prefix}-cleanup", settings.cleanup_cron),
        JobSchedule("restore-test", f"{prefix}-restore-test", settings.restore_test_cron),
        JobSchedule("failed-messages", f"{prefix}-failed-messages", settings.failed_messages_reminder_cron),
    ]


def build_schedule(
    settings: Settings, job: JobSchedule, *, paused: bool = False, note: str | None = None
) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            JOB_WORKFLOW_TYPES[job.kind],
            JobInput(dry_run=False, trigger="schedule"),
            id=f"{job.schedule_id}-scheduled",  # Temporal appends the scheduled time
            task_queue=settings.temporal_core_queue,
            # Temporal stores a cron as calendars; the memo keeps the expression readable.
            memo={"cron": job.cron, "kind": job.kind},
            static_summary=f"scheduled {job.kind} ({job.cron} UTC)",
        ),
        spec=ScheduleSpec(cron_expressions=[job.cron], time_zone_name="UTC"),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=note or f"waorch nightly {job.kind} ({job.cron} UTC)", paused=paused),
    )


async def ensure_schedules(client: Client, settings: Settings) -> list[str]:
    """Create or update every job schedule; returns ``["<id>: created|updated", …]``."""
    done = []
    for job in job_schedules(settings):
        try:
            await client.create_schedule(job.schedule_id, build_schedule(settings, job))
            done.append(f"{job.schedule_id}: created")
        except ScheduleAlreadyRunningError:
            def update(current: ScheduleUpdateInput, job: JobSchedule = job) -> ScheduleUpdate:
                state = current.description.schedule.state  # an operator's pause (and its note) stays
                return ScheduleUpdate(schedule=build_schedule(
                    settings, job, paused=state.paused, note=state.note if state.paused else None))

            await client.get_schedule_handle(job.schedule_id).update(update)
            done.append(f"{job.schedule_id}: updated")
        log.info("schedule ensured id=%s kind=%s cron=%s", job.schedule_id, job.kind, job.cron)
    return done
