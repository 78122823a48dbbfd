"""Helpers of the API tests of issue 11.3-11.8 (beyond text): a stack with its own settings, the events
published on Redis, and what the simulated phone was asked to do."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from temporalio.client import Client

from cli.embedded import wait_until
from domain.settings import Settings
from tests.api.conftest import ADMIN, Api, run_connector_inprocess, run_worker, serve_asgi


@contextlib.asynccontextmanager
async def stack_with(client: Client, settings: Settings, **overrides: Any) -> AsyncIterator[Api]:
    """API + worker + in-process simulator connector, on ``settings`` with ``overrides``."""
    settings = settings.model_copy(update=overrides)
    async with (
        run_worker(settings, client),
        run_connector_inprocess(settings),
        serve_asgi(settings, client) as api,
    ):
        yield api


@contextlib.asynccontextmanager
async def published(redis_url: str, settings: Settings) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event published on the test's channel while the block runs, in order."""
    redis = aioredis.from_url(redis_url, decode_responses=True)
    pubsub = redis.pubsub()
    await pubsub.subscribe(settings.events_channel)
    seen: list[dict[str, Any]] = []

    async def collect() -> None:
        with contextlib.suppress(asyncio.CancelledError, aioredis.ConnectionError):
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    seen.append(json.loads(msg["data"]))

    task = asyncio.create_task(collect())
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


async def wait_for_event(seen: list[dict[str, Any]], timeout: float = 15, **match: Any) -> dict[str, Any]:
    """The first published event whose fields include ``match``."""
    found: list[dict[str, Any]] = []

    async def present() -> bool:
        found[:] = [e for e in seen if all(e.get(k) == v for k, v in match.items())]
        return bool(found)

    await wait_until(present, timeout, interval=0.05)
    return found[0]


async def phone_actions(api: Api, company_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    resp = await api.http.get(f"/api/simulator/{company_id}/actions", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    actions: list[dict[str, Any]] = resp.json()["actions"]
    return [a for a in actions if kind is None or a["kind"] == kind]


async def control(api: Api, company_id: str, action: str, **body: Any) -> dict[str, Any]:
    resp = await api.http.post(f"/api/simulator/{company_id}/{action}", json=body or None, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result
