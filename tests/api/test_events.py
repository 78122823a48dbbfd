"""SPEC E1/X3 and H1 across processes: the connector runs as its own OS process (as in production);
its events reach WebSocket clients of the API (the old system lost "connected" exactly here),
each key sees only what it may, and /health reports WhatsApp from the real session state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from pydantic import SecretStr
from temporalio.client import Client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from cli.embedded import EmbeddedRedis, free_port, wait_until
from domain.events import Event, EventType
from domain.settings import Settings
from infra.redis import EventPublisher
from tests.api.conftest import ADMIN, ADMIN_KEY, company, connector_process, run_worker, serve_uvicorn

pytestmark = pytest.mark.timeout(120)


SEEN: dict[int, list[dict[str, Any]]] = {}


async def _next_event(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    """The next event on ``ws`` that ``match``es; every event read is kept in ``SEEN[id(ws)]``."""

    async def read() -> dict[str, Any]:
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            SEEN.setdefault(id(ws), []).append(event)
            if match(event):
                return event

    return await asyncio.wait_for(read(), timeout)


async def test_connector_process_events_reach_websockets_per_company(
    client: Client, api_settings: Settings, tmp_path: Path
) -> None:
    with connector_process(api_settings, client, tmp_path / "connector.log") as proc:
        async with run_worker(api_settings, client), serve_uvicorn(api_settings, client) as (api, port):
            ws_url = f"ws://127.0.0.1:{port}/api/whatsapp/events"
            a, b = company(), company()
            key_a = await api.issue_key(a)

            async def connector_polls() -> bool:
                checks = (await api.http.get("/health", headers=ADMIN)).json()["checks"]
                return bool(next(c for c in checks if c["name"] == "connector").get("pollers"))

            await wait_until(connector_polls, 30)

            # Handshakes are authorised like REST.
            for headers, query, status in (
                ({}, "", 401),
                ({"X-API-Key": "wa_wrong"}, "", 401),
                ({"X-API-Key": key_a}, f"?company={b}", 403),
                ({"X-API-Key": key_a}, "?company=%5Bobject%20Object%5D", 422),
            ):
                with pytest.raises(InvalidStatus) as refused:
                    async with websockets.connect(ws_url + query, additional_headers=headers):
                        pass
                assert refused.value.response.status_code == status

            async with (
                websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin_ws,
                websockets.connect(f"{ws_url}?apiKey={key_a}") as a_ws,
                websockets.connect(f"{ws_url}?company={b}", additional_headers=ADMIN) as b_only_ws,
            ):
                init_b = await api.http.post(f"/api/whatsapp/sessions/{b}/initialize", headers=ADMIN)
                assert init_b.status_code == 200 and init_b.json()["qr"], init_b.text
                init_a = await api.http.post(f"/api/whatsapp/sessions/{a}/initialize", headers={"X-API-Key": key_a})
                assert init_a.status_code == 200 and init_a.json()["qr"], init_a.text
                scan = await api.http.post(f"/api/simulator/{a}/scan", headers={"X-API-Key": key_a})
                assert scan.status_code == 200, scan.text

                # "connected" is published by the connector process and reaches both WebSockets.
                connected = await _next_event(a_ws, lambda e: e["type"] == "connected")
                assert connected["companyId"] == a and connected["connector"] == api_settings.connector_id
                assert connected["timestamp"]
                seen_by_admin = await _next_event(admin_ws, lambda e: e["type"] == "connected" and e["companyId"] == a)
                assert seen_by_admin["jid"] == connected["jid"]
                qr_b = await _next_event(b_only_ws, lambda e: e["type"] == "qr")
                assert qr_b["companyId"] == b

                # A message sent by A: its message_sent event too; and A's socket never carried B's events.
                sent = await api.http.post(f"/api/whatsapp/sessions/{a}/send", headers={"X-API-Key": key_a},
                                           json={"phone": "79001234567", "message": "hello"})
                assert sent.status_code == 200, sent.text
                msg_sent = await _next_event(a_ws, lambda e: e["type"] == "message_sent")
                assert msg_sent["messageId"] == sent.json()["messageId"]
                closing_probe = await api.http.post(f"/api/simulator/{a}/incoming", json={"text": "probe"},
                                                    headers={"X-API-Key": key_a})
                assert closing_probe.status_code == 200
                probe = await _next_event(a_ws, lambda e: e["type"] == "message")
                assert probe["companyId"] == a and probe["text"] == "probe"
                # A's socket carried A's events only (B's QR went out before A connected); the admin's both.
                assert {e["companyId"] for e in SEEN[id(a_ws)]} == {a}
                assert {"qr", "connected", "message_sent", "message"} <= {e["type"] for e in SEEN[id(a_ws)]}
                if all(e["companyId"] != b for e in SEEN[id(admin_ws)]):
                    await _next_event(admin_ws, lambda e: e["companyId"] == b)
                assert {e["companyId"] for e in SEEN[id(b_only_ws)]} == {b}

            # /health: WhatsApp per company from the session workflows, though the connector is another process.
            async def health_sees_a_connected() -> bool:
                body = (await api.http.get("/health", headers=ADMIN)).json()
                whatsapp = next(c for c in body["checks"] if c["name"] == "whatsapp")
                return bool(whatsapp["companies"].get(a) == "connected" and whatsapp["companies"].get(b) == "qr")

            await wait_until(health_sees_a_connected, 15)
            health = await api.http.get("/health", headers=ADMIN)
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            connector = next(c for c in health.json()["checks"] if c["name"] == "connector")
            assert any(api_settings.connector_id in p for p in connector["pollers"]), connector
            # Without the admin key /health is public: counts only, no company ids, no host names.
            public = (await api.http.get("/health")).json()
            assert a not in json.dumps(public) and api_settings.connector_id not in json.dumps(public)
            assert next(c for c in public["checks"] if c["name"] == "connector")["pollers"] >= 1
            assert proc.poll() is None


async def test_websocket_events_resume_after_a_redis_restart(
    client: Client, api_settings: Settings, tmp_path: Path
) -> None:
    own = EmbeddedRedis(tmp_path / "redis", free_port())
    own.start()
    settings = api_settings.model_copy(update={"redis_url": SecretStr(own.url)})
    cid = company()
    try:
        async with serve_uvicorn(settings, client) as (_api, port):
            async with websockets.connect(f"ws://127.0.0.1:{port}/api/whatsapp/events?company={cid}",
                                          additional_headers=ADMIN) as ws:
                own.stop()
                own.start()
                probe = aioredis.from_url(own.url, decode_responses=True)
                try:
                    async def resubscribed() -> bool:
                        counts = await probe.pubsub_numsub(settings.events_channel)
                        return bool(counts and counts[0][1] >= 1)

                    await wait_until(resubscribed, 20)
                    await EventPublisher(probe, settings.events_channel).publish(
                        Event(type=EventType.CONNECTED, company_id=cid, data={"jid": "1@s.whatsapp.net"})
                    )
                    event = await _next_event(ws, lambda e: e["type"] == "connected")
                    assert event["companyId"] == cid
                finally:
                    await probe.aclose()
    finally:
        own.stop()
