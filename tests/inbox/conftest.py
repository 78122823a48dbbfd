"""Inbox test harness: real dev server, PostgreSQL and Redis; the worker (every workflow and
activity, alerts recorded), a simulator connector in this process, one connected company,
and a local HTTP receiver (Starlette on uvicorn) standing in for the company's webhook."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inbox import InboxActivities
from activities.worker import WorkerDeps, build_activities
from cli.embedded import free_port, wait_until
from cli.processes import settings_env
from connector.activities import ConnectorActivities
from connector.devices import DeviceDirectory
from connector.main import connector_workers
from connector.simulator import SimulatorTransport
from domain.session import OutboxEntry, SessionAlert
from domain.settings import Settings
from domain.states import SessionState
from infra.redis import EventPublisher
from infra.sessions import initialize_session, session_status
from storage import Database
from workflows import ALL_WORKFLOWS

REPO = Path(__file__).resolve().parents[2]
SECRET = "inbox-test-secret-0123456789"


@dataclass
class Delivery:
    event_id: str
    signature: str | None
    raw: bytes
    body: dict[str, Any]
    path: str


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers ``status`` (500 = down) and optionally a reply."""

    port: int
    deliveries: list[Delivery] = field(default_factory=list)
    status: int = 200
    reply: bool = True
    delay_s: float = 0.0
    refused: int = 0  # requests answered with a non-2xx status

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def first_seen(self, path: str = "/hook") -> list[str]:
        """Message ids in the order of their first delivery (a redelivery keeps its first place)."""
        out: list[str] = []
        seen: set[str] = set()
        for d in self.deliveries:
            if d.path == path and d.event_id not in seen:
                seen.add(d.event_id)
                out.append(d.body.get("messageId", d.event_id))
        return out

    def hook(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == "/hook"]

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status >= 300:
            self.refused += 1
            return Response("down", status_code=self.status)
        body = json.loads(raw)
        self.deliveries.append(Delivery(request.headers.get("x-event-id", ""),
                                        request.headers.get("x-signature-256"), raw, body, request.url.path))
        if self.reply and request.url.path == "/hook" and body.get("text"):
            return JSONResponse({"reply": f"re: {body['text']}"})
        return Response(status_code=204)


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(free_port())
    app = Starlette(routes=[Route("/hook", receiver._handle, methods=["POST"]),
                            Route("/events", receiver._handle, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=receiver.port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(_started(server), 10)
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def _started(server: uvicorn.Server) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(server.started)

    return check


def pydantic_client(client: Client) -> Client:
    config = client.config()
    config["data_converter"] = pydantic_data_converter
    return Client(**config)


@asynccontextmanager
async def core_worker(settings: Settings, client: Client, db: Database, redis: aioredis.Redis,
                      alerts: list[SessionAlert]) -> AsyncIterator[Worker]:
    """The worker of production (``build_activities``) with alerts recorded instead of sent."""

    @activity.defn(name="send_alert")
    async def record_alert(alert: SessionAlert) -> str:
        alerts.append(alert)
        return "test"

    deps = WorkerDeps(settings, client, db, redis, EventPublisher(redis, settings.events_channel))
    acts = [a for a in build_activities(deps) if getattr(a, "__temporal_activity_definition").name != "send_alert"]
    try:
        async with Worker(client, task_queue=settings.temporal_core_queue, workflows=ALL_WORKFLOWS,
                          activities=[*acts, record_alert], max_concurrent_activities=100) as worker:
            yield worker
    finally:
        for owner in {id(o): o for o in (getattr(a, "__self__", None) for a in acts)}.values():
            if isinstance(owner, InboxActivities):
                await owner.aclose()  # its HTTP client's keep-alive connections


@dataclass
class InboxStack:
    client: Client
    settings: Settings
    db: Database
    sim: SimulatorTransport
    receiver: Receiver
    company_id: str
    alerts: list[SessionAlert]
    exit: AsyncExitStack

    async def set_handler(self, kind: str, *, url: str | None = None, secret: str | None = SECRET,
                          callable_path: str | None = None, event_url: str | None = None) -> None:
        await self.db.execute(
            """INSERT INTO companies (company_id, handler, webhook_url, webhook_secret, handler_callable,
                                      event_webhook_url) VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (company_id) DO UPDATE SET handler = $2, webhook_url = $3, webhook_secret = $4,
                   handler_callable = $5, event_webhook_url = $6""",
            self.company_id, kind, url, secret, callable_path, event_url,
        )

    async def inject(self, text: str, *, chat: str = "79990000001@s.whatsapp.net",
                     message_id: str | None = None, sender: str | None = None) -> str:
        msg = await self.sim.incoming(self.company_id, text=text, chat=chat, sender=sender or chat,
                                      message_id=message_id)
        return msg.message_id

    async def handed_over(self, timeout: float = 30.0) -> None:
        """Wait until every message injected so far is in Temporal (the connector's spool is empty)."""

        async def empty() -> bool:
            return bool(await self.db.fetchval("SELECT count(*) FROM incoming_spool") == 0)

        await wait_until(empty, timeout, interval=0.05)

    def outbox(self) -> list[OutboxEntry]:
        return list(self.sim.outbox.get(self.company_id, []))

    async def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        async def ok() -> bool:
            return check()

        try:
            await wait_until(ok, timeout, interval=0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what} (receiver refused {self.receiver.refused})") from None


def inbox_settings(make_settings: Callable[..., Settings], client: Client, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "inbox_webhook_connect_timeout_s": 2.0,
        "inbox_webhook_timeout_s": 5.0,
        "inbox_retry_initial_s": 0.2,
        "inbox_retry_max_interval_s": 1.0,
        "inbox_idle_s": 30.0,
        "rate_limit_count": 1000,
        "qr_first_timeout_s": 30.0,
    }
    values.update(overrides)
    return make_settings(client, **values)


@asynccontextmanager
async def inbox_stack(
    dev_env: WorkflowEnvironment, make_settings: Callable[..., Settings], db: Database,
    redis_client: aioredis.Redis, *, worker: bool = True, **overrides: Any,
) -> AsyncIterator[InboxStack]:
    client = pydantic_client(dev_env.client)
    settings = inbox_settings(make_settings, client, **overrides)
    alerts: list[SessionAlert] = []
    async with AsyncExitStack() as stack, serve_receiver() as receiver:
        if worker:
            await stack.enter_async_context(core_worker(settings, client, db, redis_client, alerts))
        devices = DeviceDirectory(db)
        sim = SimulatorTransport(devices, qr_first_timeout_s=30.0, qr_next_timeout_s=30.0, qr_total_timeout_s=60.0)
        connector = ConnectorActivities(settings, client, sim, devices,
                                        EventPublisher(redis_client, settings.events_channel))
        await connector.start()
        for w in connector_workers(client, settings, connector):
            await stack.enter_async_context(w)
        company_id = f"company_i{uuid.uuid4().hex[:10]}"
        s = InboxStack(client, settings, db, sim, receiver, company_id, alerts, stack)
        if worker:
            await connect(s)
        try:
            yield s
        finally:
            await connector.shutdown(timeout=5)


async def connect(s: InboxStack) -> None:
    await initialize_session(s.client, s.settings, s.company_id)
    await s.sim.scan(s.company_id)

    async def connected() -> bool:
        st = await session_status(s.client, s.company_id)
        return st is not None and st.state is SessionState.CONNECTED and bool(st.holder_queue)

    await wait_until(connected, 60)


@pytest.fixture
async def make_inbox(dev_env, make_settings, db, redis_client) -> AsyncIterator[Callable[..., Any]]:
    def make(**overrides: Any) -> Any:
        return inbox_stack(dev_env, make_settings, db, redis_client, **overrides)

    yield make


def worker_env(settings: Settings, client: Client) -> dict[str, str]:
    """Environment of a worker subprocess with the same settings as ``settings``."""
    return settings_env(settings, client.service_client.config.target_host)


WORKER_MAIN = [sys.executable, "-c",
               "import asyncio; from tests.inbox.worker_main import main; asyncio.run(main())"]
