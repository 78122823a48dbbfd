"""The worker process: every workflow, and the activities that touch PostgreSQL,
pg_dump, webhooks and notifications (task queue ``wa-core``). Stateless."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.worker import Worker

from activities.backup import BackupActivities
from activities.cleanup import CleanupActivities
from activities.event_relay import EventRelay
from activities.failed_messages import FailedMessageActivities
from activities.inbox import InboxActivities
from activities.jobs_common import JobRecorder
from activities.media import MediaActivities
from activities.notify import Notifier
from activities.schedules import ensure_schedules
from activities.sessions import SessionActivities
from domain.settings import Settings
from infra.process import stop_event_on_signals
from infra.redis import EventPublisher, redis_client
from infra.sentry import sentry_interceptors
from infra.temporal import connect_temporal
from storage import Database, migrate
from workflows import ALL_WORKFLOWS

log = logging.getLogger("waorch.worker")


@dataclass
class WorkerDeps:
    settings: Settings
    client: Client
    db: Database
    redis: aioredis.Redis
    events: EventPublisher


def build_activities(deps: WorkerDeps) -> list[Callable[..., Any]]:
    """Every activity of the core queue, bound to its dependencies."""
    notifier = Notifier(deps.settings)
    sessions = SessionActivities(deps.db, deps.events)
    jobs = JobRecorder(deps.db)
    backup = BackupActivities(deps.settings)
    cleanup = CleanupActivities(deps.settings, deps.db)
    return [
        notifier.send_alert, *sessions.activities(),
        jobs.record_job_start, jobs.record_job_finish, backup.run_backup, backup.run_restore_test,
        cleanup.run_cleanup,
        *InboxActivities(deps.settings, deps.db, deps.redis, deps.client).activities(),
        *FailedMessageActivities(deps.db).activities(),
        *MediaActivities(deps.settings, deps.db, deps.client, deps.events).activities(),
    ]


def build_worker(deps: WorkerDeps) -> Worker:
    return Worker(
        deps.client,
        task_queue=deps.settings.temporal_core_queue,
        workflows=ALL_WORKFLOWS,
        activities=build_activities(deps),
        max_concurrent_activities=100,
        # One session workflow per company: a workflow not in the cache is replayed on its next task.
        max_cached_workflows=deps.settings.worker_max_cached_workflows,
        interceptors=sentry_interceptors(),  # no-op list without SENTRY_DSN (SPEC H5)
    )


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    client = await connect_temporal(settings, identity=f"worker@{settings.connector_id}")
    db = Database(settings.database_dsn, max_size=settings.db_pool_max)
    await migrate(db)
    redis = redis_client(settings)
    deps = WorkerDeps(settings, client, db, redis, EventPublisher(redis, settings.events_channel))
    stop = stop or stop_event_on_signals()
    worker = build_worker(deps)
    # Nightly jobs (SPEC B4): schedules exist once any worker has started; job metrics on a port.
    await ensure_schedules(client, settings)
    metrics_server = None
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        from activities.jobs_common import JOB_METRICS

        metrics_server, _ = start_http_server(settings.worker_metrics_port, addr="127.0.0.1", registry=JOB_METRICS)
    relay = EventRelay(settings, client, db)  # state events → company event webhooks (SPEC E2)
    await relay.start()
    log.info("worker started task_queue=%s workflows=%d", settings.temporal_core_queue, len(ALL_WORKFLOWS))
    try:
        async with worker:
            await stop.wait()
    finally:
        await relay.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        await db.close()
        await redis.aclose()
        log.info("worker stopped")
