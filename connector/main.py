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

Bounded resources: neonize leaves one PostgreSQL connection per ``connect()``
and a thread per pairing that ended without a device. Whenever those figures
change the connector publishes them (``/metrics``), and past
``NEONIZE_STORE_MAX_CONNECTIONS`` or ``CONNECTOR_LEAK_THRESHOLD`` it drains
through the SIGTERM path and exits with :data:`EXIT_DRAINED`: its holds are
adopted by the other connectors (or at the next start), and the launcher
restarts it, which gives every connection and thread back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from connector.activities import ConnectorActivities
from connector.devices import DeviceDirectory
from connector.phone_side import serve_phone_side
from connector.transport import ResourceReporting, Transport, TransportLeaks
from domain.session import ACTIVITY_RESTART_CONNECTOR
from domain.settings import Settings
from infra.metrics import ConnectorFigures, publish_connector_figures
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
EXIT_DRAINED = 75  # EX_TEMPFAIL: drained past a resource bound; start me again


@dataclass
class ConnectorInfo:
    connector_id: str
    transport: str
    own_queue: str


class ConnectorControl:
    def __init__(self, settings: Settings, drain: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._drain = drain

    @activity.defn(name="describe_connector")
    async def describe_connector(self) -> ConnectorInfo:
        s = self._settings
        return ConnectorInfo(s.connector_id, s.wa_transport, s.connector_own_queue)

    @activity.defn(name=ACTIVITY_RESTART_CONNECTOR)
    async def restart_connector(self, reason: str) -> bool:
        """Drain like a SIGTERM and exit with EXIT_DRAINED, for the supervisor to start this connector again."""
        if self._drain is None:
            return False
        log.warning("restart requested id=%s reason=%s", self._settings.connector_id, reason[:200])
        self._drain(f"restart requested: {reason[:200]}")
        return True


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
    factory = None
    if settings.neonize_client == "model":  # Settings refuses it in production
        from connector.whatsmeow_model import RUNTIME, NewClient

        factory = NewClient
        RUNTIME.timing.follow_settings(settings)
        log.warning("NEONIZE_CLIENT=model: WhatsApp is replaced by a model of neonize's client (tests only)")
    return NeonizeTransport(settings.database_dsn, devices, settings=settings, client_factory=factory)


class ResourceWatch:
    """Publishes the transport's leak figures when they change and drains the connector past a bound."""

    def __init__(self, settings: Settings, transport: Transport, redis: Any) -> None:
        self._settings = settings
        self._transport = transport
        self._redis = redis
        self.drain = asyncio.Event()
        self.reason = ""
        self._last: TransportLeaks | None = None

    async def check(self) -> None:
        s = self._settings
        try:
            leaks = await self._transport.leaks()
        except Exception as exc:  # a figure we cannot read is not a reason to stop serving
            log.warning("resource figures unavailable error=%s", type(exc).__name__)
            return
        if leaks != self._last:
            self._last = leaks
            await publish_connector_figures(self._redis, s.redis_prefix, ConnectorFigures(
                s.connector_id, leaks.leaked_threads, leaks.store_connections, leaks.clients_started,
                media_unavailable=self._transport.media_unavailable()))
        if self.drain.is_set():
            return
        if leaks.leaked_threads >= s.connector_leak_threshold:
            self.reason = f"{leaks.leaked_threads} leaked client threads (CONNECTOR_LEAK_THRESHOLD)"
        elif leaks.store_connections is not None and leaks.store_connections >= s.neonize_store_max_connections:
            self.reason = f"{leaks.store_connections} store connections (NEONIZE_STORE_MAX_CONNECTIONS)"
        else:
            return
        log.error("connector draining id=%s: %s", s.connector_id, self.reason)
        self.drain.set()

    def request_drain(self, reason: str) -> None:
        self.reason = reason
        self.drain.set()


def connector_workers(client: Client, settings: Settings, acts: ConnectorActivities,
                      drain: Callable[[str], None] | None = None) -> list[Worker]:
    """The two workers of a connector: the shared hold queue and this connector's own queue."""
    control = ConnectorControl(settings, drain)
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
        activities=[*acts.own_queue_activities(), control.describe_connector, control.restart_connector],
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


async def run_connector(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM (exit code 0) or a drain past a resource bound (:data:`EXIT_DRAINED`)."""
    stop = stop or stop_event_on_signals()
    client = await connect_temporal(settings, identity=f"connector@{settings.connector_id}")
    db = Database(settings.database_dsn, max_size=settings.db_pool_max)
    await migrate(db)
    redis = redis_client(settings)
    devices = DeviceDirectory(db)
    transport = await build_transport(settings, devices)
    watch = ResourceWatch(settings, transport, redis)
    if isinstance(transport, ResourceReporting):
        transport.on_resources = watch.check
    await watch.check()
    acts = ConnectorActivities(
        settings, client, transport, devices, EventPublisher(redis, settings.events_channel)
    )
    await acts.start()
    workers = connector_workers(client, settings, acts, drain=watch.request_drain)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    log.info(
        "connector started id=%s transport=%s own_queue=%s",
        settings.connector_id, settings.wa_transport, settings.connector_own_queue,
    )
    unavailable = transport.media_unavailable()
    if unavailable:  # neonize only warns at its first client, and the sends then fail deep inside
        log.warning("media kinds unavailable on this connector: %s",
                    "; ".join(f"{kind}: {why}" for kind, why in sorted(unavailable.items())))
    exit_code = 0
    try:
        async with serve_phone_side(transport, settings.phone_side_port):
            # Connectors started together see each other's leases first, so they share the resume.
            await asyncio.sleep(2 * settings.lease_renew_s)
            await resume_stored_sessions(client, settings, acts)
            stopped = asyncio.create_task(stop.wait())
            drained = asyncio.create_task(watch.drain.wait())
            done, _ = await asyncio.wait([stopped, drained, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            drained.cancel()
            if watch.drain.is_set():
                exit_code = EXIT_DRAINED  # the SIGTERM path below hands every session on
            for task in done:
                if task not in (stopped, drained) and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        log.info("connector stopping id=%s held=%d", settings.connector_id, len(acts.held))
        await acts.shutdown()
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
        await redis.aclose()
        log.info("connector stopped id=%s exit=%d", settings.connector_id, exit_code)
    return exit_code
