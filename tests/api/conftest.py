"""API test harness: the real app (ASGI in-process, or uvicorn on a free port for WebSockets)
against the dev server, PostgreSQL and Redis of tests/conftest.py, with the worker and a
simulator connector running in-process (or the connector as a separate process)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from cli.embedded import free_port, terminate, wait_until
from cli.processes import settings_env
from domain.settings import Settings

ADMIN_KEY = "test-admin-key-" + "x" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
REPO = Path(__file__).resolve().parents[2]


def company() -> str:
    return f"company_t{uuid.uuid4().hex[:10]}"


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    client: Client

    async def issue_key(self, company_id: str) -> str:
        resp = await self.http.post(f"/api/companies/{company_id}/keys", headers=ADMIN)
        assert resp.status_code == 201, resp.text
        key: str = resp.json()["key"]
        return key

    async def connect(self, company_id: str) -> dict[str, Any]:
        """Initialize, scan the simulated QR, wait until the session says connected."""
        resp = await self.http.post(f"/api/whatsapp/sessions/{company_id}/initialize", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.json()["qr"]
        scan = await self.http.post(f"/api/simulator/{company_id}/scan", headers=ADMIN)
        assert scan.status_code == 200, scan.text
        return await self.connect_wait(company_id)

    async def connect_wait(self, company_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {}

        async def connected() -> bool:
            nonlocal body
            r = await self.http.get(f"/api/whatsapp/sessions/{company_id}/status", headers=ADMIN)
            body = r.json()
            return bool(body.get("connected"))

        await wait_until(connected, 20)
        return body


@contextlib.asynccontextmanager
async def serve_asgi(settings: Settings, client: Client) -> AsyncIterator[Api]:
    app = create_app(settings, client=client)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as http:
            yield Api(http, settings, client)


@contextlib.asynccontextmanager
async def serve_uvicorn(settings: Settings, client: Client) -> AsyncIterator[tuple[Api, int]]:
    """The app on a real socket (WebSockets), in this process."""
    app = create_app(settings, client=client)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: _started(server), 20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield Api(http, settings, client), port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def _started(server: uvicorn.Server) -> bool:
    return server.started


@contextlib.asynccontextmanager
async def run_worker(settings: Settings, client: Client) -> AsyncIterator[None]:
    """The workflow worker (every workflow + core activities) on this test's core queue."""
    from activities.worker import WorkerDeps, build_worker
    from infra.redis import EventPublisher, redis_client
    from storage import Database

    db = Database(settings.database_dsn)
    redis = redis_client(settings)
    deps = WorkerDeps(settings, client, db, redis, EventPublisher(redis, settings.events_channel))
    try:
        async with build_worker(deps):
            yield
    finally:
        await db.close()
        await redis.aclose()


@contextlib.asynccontextmanager
async def run_connector_inprocess(settings: Settings) -> AsyncIterator[None]:
    from connector.main import run_connector

    stop = asyncio.Event()
    task = asyncio.create_task(run_connector(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def connector_process(settings: Settings, client: Client, log_path: Path) -> Any:
    """The connector as its own OS process (``waorch connector``), as in production."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "connector"], cwd=REPO,
            env=settings_env(settings, client.service_client.config.target_host),
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        terminate(proc, 20)


@pytest.fixture
def client(dev_env: WorkflowEnvironment) -> Client:
    """The dev server with the project's data converter (pydantic), as every process connects."""
    config = dev_env.client.config()
    config["data_converter"] = pydantic_data_converter
    return Client(**config)


@pytest.fixture
def api_settings(dev_env: WorkflowEnvironment, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        dev_env.client, api_admin_key=ADMIN_KEY, temporal_address=dev_env.client.service_client.config.target_host
    )


@pytest.fixture
async def api(client: Client, api_settings: Settings) -> AsyncIterator[Api]:
    """The API alone (no worker, no connector)."""
    async with serve_asgi(api_settings, client) as served:
        yield served


@pytest.fixture
async def stack(client: Client, api_settings: Settings) -> AsyncIterator[Api]:
    """API + worker + in-process simulator connector."""
    async with (
        run_worker(api_settings, client),
        run_connector_inprocess(api_settings),
        serve_asgi(api_settings, client) as served,
    ):
        yield served
