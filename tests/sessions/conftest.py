"""An in-process session stack: the SessionWorkflow worker and a connector, both in the test's event
loop, so a test drives the phone directly.

The connector's transport is the simulator, or (``wa="model"``) the real NeonizeTransport on the
model of neonize's client (connector.whatsmeow_model). ``SessionStack.sim`` is the phone either
way: tests parametrized with ``@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)`` run
the same body on both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.sessions import SessionActivities
from cli.embedded import wait_until
from connector.activities import ConnectorActivities
from connector.devices import DeviceDirectory
from connector.main import connector_workers
from connector.simulator import SimulatorTransport
from domain.session import OutboxEntry, SessionAlert, SessionStatus, session_workflow_id
from domain.settings import Settings
from domain.states import SessionState
from infra.redis import EventPublisher
from infra.sessions import initialize_session, session_status
from storage import Database, incoming_spool
from workflows.session import SessionWorkflow


def pydantic_client(client: Client) -> Client:
    """The same server connection with the project's data converter (as infra.temporal uses)."""
    config = client.config()
    config["data_converter"] = pydantic_data_converter
    return Client(**config)


WA_TRANSPORTS = ["simulator", "model"]


async def _true(value: bool) -> bool:
    return value


class ModelPhone:
    """The simulator's test API (scan, drop, fail_dials, …) over NeonizeTransport on the model."""

    def __init__(self, transport: Any, dsn: str) -> None:
        from connector.whatsmeow_model import RUNTIME

        self.transport = transport
        self.runtime = RUNTIME
        self._dsn = dsn
        self.dials = transport.dials
        self.delivered: set[str] = set()  # message ids the connector has handed on (see session_stack)

    def _sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self._dsn, autocommit=True) as conn:
            rows: list[tuple[Any, ...]] = conn.execute(query, args).fetchall()
            return rows

    def _device(self, company_id: str) -> str | None:
        rows = self._sql("SELECT device_jid FROM companies WHERE company_id = %s", company_id)
        return rows[0][0] if rows else None

    def _control(self, company_id: str, action: str, **params: Any) -> dict[str, Any]:
        from connector.neonize_transport import model_control

        entry = self.transport._clients.get(company_id)
        if entry is None:
            raise AssertionError(f"{company_id} is not held")
        return model_control(entry.client.phone, entry, action, params)

    @property
    def held(self) -> list[str]:
        return list(self.transport.held)

    def status(self, company_id: str) -> Any:
        return self.transport.status(company_id)

    async def control(self, company_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.transport.control(company_id, action, params))

    async def scan(self, company_id: str, phone: str | None = None) -> str:
        params = {"phone": phone} if phone else {}
        return str((await self.control(company_id, "scan", params))["jid"])

    def drop(self, company_id: str, reason: str = "network drop") -> None:
        self._control(company_id, "disconnect")

    def replace(self, company_id: str) -> None:
        self._control(company_id, "replace")

    async def logout_from_phone(self, company_id: str) -> None:
        await self.control(company_id, "logout", {})

    def ban(self, company_id: str, expires_s: float) -> None:
        self._control(company_id, "ban", expires_s=expires_s)

    def fail_dials(self, company_id: str, times: int) -> None:
        device = self._device(company_id)
        self.runtime.server.clear(device)
        self.runtime.server.plan(device, *["refuse"] * times)

    async def incoming(self, company_id: str, text: str, chat: str | None = None, sender: str | None = None,
                       message_id: str | None = None) -> Any:
        sender = sender or "79990000001@s.whatsapp.net"
        result = await self.control(company_id, "incoming", {"text": text, "chat": chat or sender, "sender": sender,
                                                            "message_id": message_id})
        # Like the simulator's: return once the connector has handed the message on.
        await wait_until(lambda: _true(result["message_id"] in self.delivered), 10, interval=0.01)
        return result

    @property
    def outbox(self) -> dict[str, list[OutboxEntry]]:
        out: dict[str, list[OutboxEntry]] = {}
        for cid, mid, to, text, at, quoted in self._sql(
                "SELECT company_id, message_id, to_jid, text, sent_at, quoted FROM transport_outbox ORDER BY id"):
            out.setdefault(cid, []).append(OutboxEntry(mid, to, text, at, quoted))
        return out


@dataclass
class SessionStack:
    env: WorkflowEnvironment | None
    client: Client
    settings: Settings
    sim: Any  # SimulatorTransport, or ModelPhone on the model of neonize's client
    connector: ConnectorActivities
    db: Database
    alerts: list[SessionAlert]
    search_attributes: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    companies: set[str] = field(default_factory=set)

    async def device_rows(self, company_id: str) -> int:
        """Stored credentials of the company in the transport's own store (sim_devices / whatsmeow_device)."""
        if isinstance(self.sim, ModelPhone):
            return int(await self.db.fetchval(
                """SELECT count(*) FROM whatsmeow_device d JOIN companies c ON c.device_jid = d.jid
                   WHERE c.company_id = $1""", company_id))
        return int(await self.db.fetchval("SELECT count(*) FROM sim_devices WHERE company_id = $1", company_id))

    async def initialize(self, company_id: str, pairing_phone: str | None = None):
        self.companies.add(company_id)
        return await initialize_session(
            self.client, self.settings, company_id, pairing_phone, search_attributes=self.search_attributes
        )

    async def status(self, company_id: str) -> SessionStatus:
        st = await session_status(self.client, company_id)
        assert st is not None, f"no session for {company_id}"
        return st

    async def wait_for(
        self, company_id: str, check: Callable[[SessionStatus], bool], timeout: float = 15.0
    ) -> SessionStatus:
        async def ok() -> bool:
            return check(await self.status(company_id))

        try:
            await wait_until(ok, timeout, interval=0.05)
        except TimeoutError:
            st = await self.status(company_id)
            raise AssertionError(f"{company_id}: condition not met; status {st}") from None
        return await self.status(company_id)

    async def wait_alerts(self, check: Callable[[list[SessionAlert]], bool],
                          timeout: float = 10.0) -> list[SessionAlert]:
        """The alerts once ``check`` holds for them: a workflow sets its state (what ``wait_state`` sees)
        before its alert activity has run."""

        async def ok() -> bool:
            return check(self.alerts)

        try:
            await wait_until(ok, timeout, interval=0.05)
        except TimeoutError:
            raise AssertionError(f"alerts not as expected: {self.alerts}") from None
        return list(self.alerts)

    async def wait_state(self, company_id: str, state: SessionState, timeout: float = 15.0) -> SessionStatus:
        return await self.wait_for(company_id, lambda s: s.state is state, timeout)

    async def spooled_handed_over(self, timeout: float = 30.0) -> None:
        """Wait until every incoming message spooled so far is in Temporal (the spool is empty)."""

        async def empty() -> bool:
            return (await incoming_spool.summary(self.connector.spool.db)).messages == 0

        await wait_until(empty, timeout, interval=0.05)

    async def skip(self, seconds: float) -> None:
        """Advance Temporal time (time-skipping server only).

        The server cannot skip while an activity runs, so callers skip to just
        before a timer that would start a hold, and let the rest pass in real time.
        """
        assert self.env is not None
        await self.env.sleep(seconds)


@asynccontextmanager
async def session_stack(
    client: Client,
    make_settings: Callable[..., Settings],
    db: Database,
    redis_client: aioredis.Redis,
    *,
    env: WorkflowEnvironment | None,
    search_attributes: bool,
    extra_workflows: tuple[type, ...] = (),
    transport: Any = None,
    with_connector: bool = True,
    store_dsn: str | None = None,
    **overrides: Any,
) -> AsyncIterator[SessionStack]:
    client = pydantic_client(client)
    values: dict[str, Any] = {
        "qr_first_timeout_s": 2.0,
        "qr_next_timeout_s": 1.0,
        "qr_total_timeout_s": 4.0,
        "alert_grace_s": 10.0,
    }
    values.update(overrides)
    settings = make_settings(client, **values)
    alerts: list[SessionAlert] = []

    @activity.defn(name="send_alert")
    async def record_alert(alert: SessionAlert) -> str:
        alerts.append(alert)
        return "test"

    events = EventPublisher(redis_client, settings.events_channel)
    devices = DeviceDirectory(db)
    sim = SimulatorTransport(
        devices,
        qr_first_timeout_s=settings.qr_first_timeout_s,
        qr_next_timeout_s=settings.qr_next_timeout_s,
        qr_total_timeout_s=settings.qr_total_timeout_s,
    )
    phone: Any = sim
    if store_dsn is not None:  # the real NeonizeTransport on the model of neonize's client
        from connector.neonize_transport import NeonizeTransport
        from connector.whatsmeow_model import RUNTIME, NewClient

        RUNTIME.timing.follow_settings(settings)
        # whatsmeow retries 0 s after a drop; the transport stops it within milliseconds, and a
        # margin keeps the suite's dial counts exact (test_neonize_model covers the 0 s race).
        RUNTIME.timing.first_reconnect_s = 2.0
        model = NeonizeTransport(store_dsn, devices, settings=settings, client_factory=NewClient)
        model.tuning.stop_timeout_s = 10
        transport = transport or (lambda _devices: model)
        phone = ModelPhone(model, store_dsn)
    fences: list[str] = []
    connector = ConnectorActivities(settings, client, transport(devices) if transport else sim, devices, events,
                                    fence=fences.append)
    if isinstance(phone, ModelPhone):
        handed_on = connector.deliver_incoming

        async def deliver_incoming(msg: Any) -> None:
            await handed_on(msg)
            phone.delivered.add(msg.message_id)

        connector.deliver_incoming = deliver_incoming  # type: ignore[method-assign]
    session_acts = SessionActivities(db, events)
    core = Worker(
        client,
        task_queue=settings.temporal_core_queue,
        workflows=[SessionWorkflow, *extra_workflows],
        activities=[record_alert, *session_acts.activities()],
    )
    stack = SessionStack(env, client, settings, phone, connector, db, alerts, search_attributes)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(settings.events_channel)

    async def collect() -> None:
        with contextlib.suppress(aioredis.ConnectionError, asyncio.CancelledError):
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    stack.events.append(json.loads(msg["data"]))

    collector = asyncio.create_task(collect())
    async with AsyncExitStack() as stack_cm:
        await stack_cm.enter_async_context(core)
        if with_connector:
            await connector.start()
        for w in connector_workers(client, settings, connector) if with_connector else []:
            await stack_cm.enter_async_context(w)
        try:
            yield stack
        finally:
            # Pause each session first (its connection closes and its hold row goes), then terminate it.
            for cid in stack.companies:
                with contextlib.suppress(Exception):
                    if env is not None and await session_status(client, cid) is not None:
                        await client.get_workflow_handle(session_workflow_id(cid)).signal("pause")
                        await stack.wait_state(cid, SessionState.PAUSED, timeout=10)
                with contextlib.suppress(Exception):
                    await client.get_workflow_handle(session_workflow_id(cid)).terminate("test over")
            if with_connector:
                await connector.shutdown(timeout=5)
    collector.cancel()
    assert not fences, f"the in-process connector lost its lease: {fences}"
    await asyncio.gather(collector, return_exceptions=True)
    await pubsub.aclose()  # type: ignore[no-untyped-call]


@pytest.fixture(params=["simulator"])
def wa(request: pytest.FixtureRequest) -> str:
    """Which transport the stack's connector runs: tests opt into both with
    ``@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)``."""
    return str(request.param)


@pytest.fixture
def wa_store(wa: str, request: pytest.FixtureRequest) -> str | None:
    """For ``wa="model"``: the whatsmeow store DSN (schema created) and a fresh model runtime."""
    if wa != "model":
        return None
    request.getfixturevalue("model_runtime")
    return str(request.getfixturevalue("store_dsn"))


@pytest.fixture
def wa_env(wa: str, wa_store: str | None) -> dict[str, str]:
    """Environment of connector processes: the simulator, or the real transport on the model."""
    if wa == "model":
        assert wa_store is not None
        return {"WA_TRANSPORT": "neonize", "NEONIZE_CLIENT": "model", "DATABASE_URL": wa_store}
    return {}


@pytest.fixture
async def store_dsn(database_dsn: str, db) -> str:
    """The test database with the real whatsmeow schema; lib/pq needs sslmode spelled out (no TLS here)."""
    from connector.neonize_store import ensure_store_schema

    dsn = f"{database_dsn}?sslmode=disable"
    await ensure_store_schema(dsn)
    return dsn


@pytest.fixture
async def ts_stack(ts_env, make_settings, db, redis_client, wa_store) -> AsyncIterator[Callable[..., Any]]:
    """A factory: ``async with ts_stack(**settings_overrides) as s`` on the time-skipping server."""

    def make(extra_workflows: tuple[type, ...] = (), transport: Any = None, **overrides: Any):
        return session_stack(
            ts_env.client, make_settings, db, redis_client, env=ts_env, search_attributes=False,
            extra_workflows=extra_workflows, transport=transport, store_dsn=wa_store, **overrides,
        )

    yield make


@pytest.fixture
def company_id() -> str:
    return f"company_{uuid.uuid4().int % 10**9}"


@pytest.fixture
def model_runtime():
    """The model of neonize's Go library (connector.whatsmeow_model), fresh, with timings for tests."""
    from connector import whatsmeow_model

    rt = whatsmeow_model.RUNTIME
    rt.reset()
    t = rt.timing
    t.qr_first_s, t.qr_next_s, t.restart_515_s, t.dial_timeout_s = 2.0, 1.0, 0.05, 3.0
    yield rt
    rt.unload()
