"""Drop-in for the old back end: every field its documented API showed is still there, under its old name.

The old system's API reference showed six REST endpoints and a WebSocket whose
events its clients read; its onboarding page read ``phoneNumber`` from the
``connected`` event it got over Redis. The field lists below are that reference,
written out here: a back end built against it must keep working with only the
URL and a key changed. Each list is checked against a running API (simulator
connector, real Temporal, PostgreSQL and Redis), so removing any one old field
from a response or an event fails this test with the field's name.

What still differs on purpose (the company-id form in responses, the WebSocket key,
renamed and dropped events) is in README "Coming from the old system".
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from temporalio.client import Client
from websockets.asyncio.client import ClientConnection

from domain.settings import Settings
from tests.api.conftest import ADMIN, Api, run_connector_inprocess, run_worker, serve_uvicorn

pytestmark = pytest.mark.timeout(120)

# Dotted paths: "a.b" is key b inside object a; "a[].b" is key b in every element of list a.
OLD_REST_FIELDS: dict[str, list[str]] = {
    "GET /api/whatsapp/sessions": [
        "success", "count", "sessions", "sessions[].companyId", "sessions[].connected", "sessions[].status",
        "sessions[].health", "metrics", "metrics.totalSessions", "metrics.activeConnections",
        "metrics.messagesSent", "metrics.messagesReceived",
    ],
    "POST /api/whatsapp/sessions/{id}/initialize": [
        "success", "companyId", "qr", "qrDataUrl", "qrTerminal", "message",
    ],
    "POST /api/whatsapp/sessions/{id}/send": [
        "success", "companyId", "phone", "messageId", "timestamp",
    ],
    "GET /api/whatsapp/sessions/{id}/status": [
        "success", "companyId", "connected", "status", "reconnectAttempts", "health", "health.healthy",
        "health.phoneNumber",
    ],
    "GET /api/whatsapp/sessions/{id}/health": [
        "success", "companyId", "healthy", "phoneNumber",
    ],
    "GET /api/whatsapp/metrics": [
        "success", "metrics", "metrics.totalSessions", "metrics.activeConnections", "metrics.failedReconnects",
        "metrics.messagesSent", "metrics.messagesReceived", "metrics.qrCodesGenerated", "metrics.errors",
        "metrics.lastError", "sessions", "sessions.total", "sessions.connected", "sessions.disconnected",
        "timestamp",
    ],
}
# Events on the WebSocket (and on Redis ``whatsapp:events``) as the old clients read them.
OLD_EVENT_FIELDS: dict[str, list[str]] = {
    "qr": ["type", "companyId", "qr"],
    "connected": ["type", "companyId", "phoneNumber"],
    "message": ["type", "companyId", "message"],
    "error": ["type", "companyId", "error"],
}


def missing(body: Any, paths: list[str]) -> list[str]:
    """The paths of ``paths`` that ``body`` lacks (a list path needs at least one element)."""
    gone = []
    for path in paths:
        if not _has(body, path.split(".")):
            gone.append(path)
    return gone


def _has(node: Any, parts: list[str]) -> bool:
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2]) if isinstance(node, dict) else None
        return isinstance(items, list) and bool(items) and all(_has(item, rest) for item in items)
    return isinstance(node, dict) and head in node and _has(node[head], rest)


def test_the_field_checker_names_what_is_missing() -> None:
    body = {"success": True, "sessions": [{"companyId": "c", "health": "healthy"}], "health": {"healthy": True}}
    assert missing(body, ["success", "sessions[].companyId", "health.healthy"]) == []
    assert missing(body, ["sessions[].connected", "health.phoneNumber", "count"]) == [
        "sessions[].connected", "health.phoneNumber", "count"]
    assert missing({"sessions": []}, ["sessions[].companyId"]) == ["sessions[].companyId"]


@pytest.fixture
async def served(client: Client, api_settings: Settings) -> AsyncIterator[tuple[Api, int]]:
    async with (
        run_worker(api_settings, client),
        run_connector_inprocess(api_settings),
        serve_uvicorn(api_settings, client) as (api, port),
    ):
        yield api, port


async def _event(ws: ClientConnection, kind: str, company_id: str, timeout: float = 30) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            if event.get("type") == kind and event.get("companyId") == company_id:
                return event

    return await asyncio.wait_for(read(), timeout)


async def test_every_field_of_the_old_api_reference_is_served(
    served: tuple[Api, int], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    api, port = served
    digits = str(random.randint(100_000, 999_999))  # the old clients wrote the bare number: "962302"
    cid = f"company_{digits}"
    base = f"/api/whatsapp/sessions/{digits}"
    problems: dict[str, list[str]] = {}

    def check(what: str, body: Any, paths: list[str]) -> None:
        gone = missing(body, paths)
        if gone:
            problems[what] = gone

    # The old back end's own subscriber read the connected event from Redis (its onboarding fix).
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(api_settings.events_channel)
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/whatsapp/events", additional_headers=ADMIN) as ws:
        init = await api.http.post(f"{base}/initialize", headers=ADMIN)
        assert init.status_code == 200, init.text
        check("POST /api/whatsapp/sessions/{id}/initialize", init.json(),
              OLD_REST_FIELDS["POST /api/whatsapp/sessions/{id}/initialize"])
        qr = await _event(ws, "qr", cid)
        check("event qr", qr, OLD_EVENT_FIELDS["qr"])

        phone = "79686484488"
        scan = await api.http.post(f"/api/simulator/{digits}/scan", json={"phone": phone}, headers=ADMIN)
        assert scan.status_code == 200, scan.text
        connected = await _event(ws, "connected", cid)
        check("event connected", connected, OLD_EVENT_FIELDS["connected"])
        assert connected.get("phoneNumber") == phone  # digits, as the old events had them
        on_redis = await _redis_event(pubsub, "connected", cid)
        assert on_redis.get("phoneNumber") == phone

        await api.connect_wait(digits)
        status = await api.http.get(f"{base}/status", headers=ADMIN)
        check("GET /api/whatsapp/sessions/{id}/status", status.json(),
              OLD_REST_FIELDS["GET /api/whatsapp/sessions/{id}/status"])
        health = await api.http.get(f"{base}/health", headers=ADMIN)
        assert health.status_code == 200
        check("GET /api/whatsapp/sessions/{id}/health", health.json(),
              OLD_REST_FIELDS["GET /api/whatsapp/sessions/{id}/health"])

        # The old request body: "phone", "message", "options.quoted".
        sent = await api.http.post(f"{base}/send", headers=ADMIN, json={
            "phone": "79001234567", "message": "Ваша запись подтверждена!", "options": {"quoted": "3EB0123456789"}})
        assert sent.status_code == 200, sent.text
        check("POST /api/whatsapp/sessions/{id}/send", sent.json(),
              OLD_REST_FIELDS["POST /api/whatsapp/sessions/{id}/send"])

        incoming = await api.http.post(f"/api/simulator/{digits}/incoming", json={"text": "Хочу записаться"},
                                       headers=ADMIN)
        assert incoming.status_code == 200, incoming.text
        message = await _event(ws, "message", cid)
        check("event message", message, OLD_EVENT_FIELDS["message"])
        assert message.get("message") == "Хочу записаться"

        banned = await api.http.post(f"/api/simulator/{digits}/ban", json={"expiresS": 600}, headers=ADMIN)
        assert banned.status_code == 200, banned.text
        error = await _event(ws, "error", cid)
        check("event error", error, OLD_EVENT_FIELDS["error"])
        assert error.get("error")
    await pubsub.aclose()  # type: ignore[no-untyped-call]

    listed = await api.http.get("/api/whatsapp/sessions", headers=ADMIN)
    check("GET /api/whatsapp/sessions", listed.json(), OLD_REST_FIELDS["GET /api/whatsapp/sessions"])

    async def error_counted() -> dict[str, Any]:
        while True:
            body: dict[str, Any] = (await api.http.get("/api/whatsapp/metrics", headers=ADMIN)).json()
            if body["metrics"].get("errors", 0) >= 1:
                return body
            await asyncio.sleep(0.2)

    metrics = await asyncio.wait_for(error_counted(), 15)
    check("GET /api/whatsapp/metrics", metrics, OLD_REST_FIELDS["GET /api/whatsapp/metrics"])
    assert metrics["metrics"].get("lastError"), metrics  # the reason of the error event above

    assert problems == {}, f"old fields missing: {problems}"


async def _redis_event(pubsub: Any, kind: str, company_id: str, timeout: float = 10) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            event: dict[str, Any] = json.loads(message["data"])
            if event.get("type") == kind and event.get("companyId") == company_id:
                return event

    return await asyncio.wait_for(read(), timeout)
