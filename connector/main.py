"""The connector process: the only owner of WhatsApp clients (SPEC S8).

It polls the shared queue ``connector`` (hold-a-session tasks, any live
connector may take one) and its own ``connector.<id>`` (sends, logouts,
simulator controls for the sessions it holds).

Start: migrate the project tables (and, for neonize, the whatsmeow store,
once and serially), register this process's lease (connector/lease.py), adopt
the holds that stopped or dead connectors left (a restarted connector takes
its own back), and start the session workflow of every company that has
stored credentials but no hold at all (idempotent: a running workflow is left
alone). SIGTERM (SPEC S9): close every connection without logout and release
the lease, so the holds go on at once on the next connector; a SIGKILLed
connector's holds are adopted once its lease has expired in both stores.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from connector.activities import ConnectorActivities
from connector.devices import DeviceDirectory
from connector.phone_side import serve_phone_side
from connector.transport import Transport
from domain.settings import Settings
from infra.process import stop_event_on_signals
from infra.redis import EventPublisher, redis_client
from infra.sentry import sentry_interceptors
from infra.sessions import ensure_session_started, running_session_companies, start_session_holding
from infra.temporal import connect_temporal
from storage import Database, migrate
from workflows.send import SendMessageWorkflow

log = logging.getLogger("waorch.connector")

# hold_session only claims and starts a client, then returns: a few at once is plenty.
HOLD_ACTIVITY_SLOTS = 100


@dataclass
class ConnectorInfo:
    connector_id: str
    transport: str
    own_queue: str


class ConnectorControl:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @activity.defn(name="describe_connector")
    async def describe_connector(self) -> ConnectorInfo:
        s = self._settings
        return ConnectorInfo(s.connector_id, s.wa_transport, s.connector_own_queue)


async def build_transport(settings: Settings, devices: DeviceDirectory) -> Transport:
    if settings.wa_transport == "simulator":
        from connector.simulator import SimulatorTransport

        return SimulatorTransport(
            devices,
            qr_first_timeout_s=settings.qr_first_timeout_s,
            qr_next_timeout_s=settings.qr_next_timeout_s,
            qr_total_timeout_s=settings.qr_total_timeout_s,
        )
    from connector.neonize_store import ensure_store_schema
    from connector.neonize_transport import NeonizeTransport

    await ensure_store_schema(settings.database_dsn)
    return NeonizeTransport(settings.database_dsn, devices, settings=settings)


def connector_workers(client: Client, settings: Settings, acts: ConnectorActivities) -> list[Worker]:
    """The two workers of a connector: the shared hold queue and this connector's own queue."""
    control = ConnectorControl(settings)
    interceptors = sentry_interceptors()  # no-op list without SENTRY_DSN (SPEC H5)
    shared = Worker(
        client,
        task_queue=settings.temporal_connector_queue,
        activities=acts.shared_queue_activities(),
        max_concurrent_activities=HOLD_ACTIVITY_SLOTS,
        graceful_shutdown_timeout=timedelta(seconds=5),
        interceptors=interceptors,
    )
    own = Worker(
        client,
        task_queue=settings.connector_own_queue,
        # SendMessage runs here, beside its one activity: Temporal then hands the activity
        # straight to this worker (eager dispatch) instead of matching it across queues,
        # which measured ~60 ms of p50 per send. The workflow code is deterministic and
        # does no I/O; the worker process still runs every other workflow.
        workflows=[SendMessageWorkflow],
        activities=[*acts.own_queue_activities(), control.describe_connector],
        max_concurrent_activities=200,
        graceful_shutdown_timeout=timedelta(seconds=5),
        interceptors=interceptors,
    )
    return [shared, own]


async def resume_stored_sessions(client: Client, settings: Settings, acts: ConnectorActivities) -> int:
    """Bring back every company with stored credentials and no hold; return how many.

    A company with a row in ``session_holds`` has a workflow whose hold goes on (adopted), and one
    whose workflow runs is that workflow's business (it may be waiting for a relink). The rest have
    no workflow: this connector connects each from its credentials and starts its workflow already
    holding the connection; one that does not connect gets its workflow started the usual way
    (it holds, backs off, reports)."""
    companies = await acts.devices.companies_without_hold()
    if not companies:
        return 0
    running = await running_session_companies(client)
    todo = [(c, jid) for c, jid in companies if running is None or c not in running]
    # Connectors starting together share the work: each takes about its share, in its own random
    # order; a company is claimed once (session_holds), whoever gets there first.
    random.shuffle(todo)
    share = math.ceil(len(todo) / max(await acts.holds.live_connectors(), 1) * 1.05) + 5
    await _bring_back(client, settings, acts, todo, direct=running is not None, share=share)
    return len(todo)


async def _bring_back(client: Client, settings: Settings, acts: ConnectorActivities,
                      companies: list[tuple[str, str]], *, direct: bool, share: int) -> None:
    sem = asyncio.Semaphore(50)
    resumed = 0

    async def start_holding(cid: str, hold_id: str, jid: str, phone: str | None, queue: str, holder: str) -> bool:
        return await start_session_holding(client, settings, cid, hold_id, jid, phone, queue, holder)

    async def one(cid: str, jid: str) -> None:
        nonlocal resumed
        async with sem:
            if resumed >= share:
                return  # the other connectors take the rest
            try:
                if direct and await acts.resume_without_workflow(cid, jid, start_holding):
                    resumed += 1
                    return
                if await acts.holds.is_held(cid):
                    return  # another connector took it meanwhile
                await ensure_session_started(client, settings, cid)
            except Exception as exc:
                log.warning("could not start session company_id=%s error=%s", cid, exc)

    await asyncio.gather(*(one(c, jid) for c, jid in companies))
    if companies:
        log.info("sessions brought back count=%d connected_directly=%d", len(companies), resumed)


async def run_connector(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or stop_event_on_signals()
    client = await connect_temporal(settings, identity=f"connector@{settings.connector_id}")
    db = Database(settings.database_dsn, max_size=settings.db_pool_max)
    await migrate(db)
    redis = redis_client(settings)
    devices = DeviceDirectory(db)
    transport = await build_transport(settings, devices)
    acts = ConnectorActivities(
        settings, client, transport, devices, EventPublisher(redis, settings.events_channel)
    )
    await acts.start()
    workers = connector_workers(client, settings, acts)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    log.info(
        "connector started id=%s transport=%s own_queue=%s",
        settings.connector_id, settings.wa_transport, settings.connector_own_queue,
    )
    try:
        async with serve_phone_side(transport, settings.phone_side_port):
            # Connectors started together see each other's leases first, so they share the resume.
            await asyncio.sleep(2 * settings.lease_renew_s)
            await resume_stored_sessions(client, settings, acts)
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        log.info("connector stopping id=%s held=%d", settings.connector_id, len(acts.held))
        await acts.shutdown()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
        await redis.aclose()
        log.info("connector stopped id=%s", settings.connector_id)
