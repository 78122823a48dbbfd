"""Sending (SPEC M1–M3, S7): idempotency keys, the per-company rate limit, Redis down."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.client import Client

from cli.embedded import EmbeddedRedis, free_port
from domain.settings import Settings
from storage import Database
from tests.api.conftest import (
    ADMIN,
    Api,
    company,
    connector_process,
    run_connector_inprocess,
    run_worker,
    serve_asgi,
)

pytestmark = pytest.mark.timeout(120)

MSG = {"phone": "79001234567", "message": "Ваша запись подтверждена!"}


async def _outbox(api: Api, cid: str) -> list[dict[str, object]]:
    resp = await api.http.get(f"/api/simulator/{cid}/outbox", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    messages: list[dict[str, object]] = resp.json()["messages"]
    return messages


async def test_same_idempotency_key_sends_once_also_concurrently(stack: Api) -> None:
    api = stack
    cid = company()
    await api.connect(cid)
    url = f"/api/whatsapp/sessions/{cid}/send"

    key = {**ADMIN, "Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = await api.http.post(url, json=MSG, headers=key)
    second = await api.http.post(url, json=MSG, headers=key)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["messageId"] == second.json()["messageId"]
    assert first.json()["timestamp"] == second.json()["timestamp"]

    burst_key = {**ADMIN, "Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    burst = await asyncio.gather(*(api.http.post(url, json={**MSG, "message": "burst"}, headers=burst_key)
                                   for _ in range(8)))
    assert all(r.status_code == 200 for r in burst), [r.text for r in burst]
    assert len({r.json()["messageId"] for r in burst}) == 1

    # Without a key every request is its own message.
    plain = await asyncio.gather(*(api.http.post(url, json={**MSG, "message": f"plain {i}"}, headers=ADMIN)
                                   for i in range(2)))
    assert len({r.json()["messageId"] for r in plain}) == 2

    outbox = await _outbox(api, cid)
    assert [m["text"] for m in outbox].count(MSG["message"]) == 1
    assert [m["text"] for m in outbox].count("burst") == 1
    assert len(outbox) == 4
    assert {m["messageId"] for m in outbox} == {
        first.json()["messageId"], burst[0].json()["messageId"], *(r.json()["messageId"] for r in plain)
    }


async def test_31st_message_in_a_minute_is_429_with_retry_after(stack: Api) -> None:
    api = stack
    assert api.settings.rate_limit_count == 30 and api.settings.rate_limit_window_s == 60
    cid, other = company(), company()
    await api.connect(cid)
    url = f"/api/whatsapp/sessions/{cid}/send"
    sent = await asyncio.gather(*(api.http.post(url, json={**MSG, "message": f"m{i}"}, headers=ADMIN)
                                  for i in range(30)))
    assert [r.status_code for r in sent] == [200] * 30
    over = await api.http.post(url, json={**MSG, "message": "m31"}, headers=ADMIN)
    assert over.status_code == 429 and over.json()["code"] == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert len(await _outbox(api, cid)) == 30
    # The limit is per company: another company's send is judged on its own (409: not connected, not 429).
    assert (await api.http.post(f"/api/whatsapp/sessions/{other}/send", json=MSG, headers=ADMIN)).status_code == 409
    metrics = (await api.http.get("/api/whatsapp/metrics", headers=ADMIN)).json()["metrics"]
    assert metrics["rateLimitedRequests"] >= 1


async def test_rate_limit_and_api_survive_redis_down(
    client: Client, make_settings, tmp_path: Path, api_settings: Settings
) -> None:
    """The API's own Redis stops: the limiter goes in-process and still refuses the 31st;
    sends still go out (worker and connector use the shared Redis)."""
    own = EmbeddedRedis(tmp_path / "redis", free_port())
    own.start()
    api_only = api_settings.model_copy(update={"redis_url": SecretStr(own.url)})
    try:
        async with (
            run_worker(api_settings, client),
            run_connector_inprocess(api_settings),
            serve_asgi(api_only, client) as api,
        ):
            cid = company()
            await api.connect(cid)
            url = f"/api/whatsapp/sessions/{cid}/send"
            first = await asyncio.gather(*(api.http.post(url, json={**MSG, "message": f"a{i}"}, headers=ADMIN)
                                           for i in range(10)))
            assert [r.status_code for r in first] == [200] * 10
            own.stop()
            health = await api.http.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            redis_check = next(c for c in health.json()["checks"] if c["name"] == "redis")
            assert redis_check["status"] == "down"
            rest = [await api.http.post(url, json={**MSG, "message": f"b{i}"}, headers=ADMIN) for i in range(20)]
            assert [r.status_code for r in rest] == [200] * 20, [r.text for r in rest if r.status_code != 200]
            over = await api.http.post(url, json={**MSG, "message": "c"}, headers=ADMIN)
            assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
            assert len(await _outbox(api, cid)) == 30
    finally:
        own.stop()


async def test_send_right_after_a_drop_is_409_not_a_new_session(stack: Api) -> None:
    """A burst of sends may reuse a recently seen "connected" status; a drop must still refuse at once."""
    api = stack
    cid = company()
    await api.connect(cid)
    url = f"/api/whatsapp/sessions/{cid}/send"
    assert (await api.http.post(url, json=MSG, headers=ADMIN)).status_code == 200
    drop = await api.http.post(f"/api/simulator/{cid}/disconnect", headers=ADMIN)
    assert drop.status_code == 200, drop.text
    refused = await api.http.post(url, json={**MSG, "message": "after the drop"}, headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["code"] == "not_connected", refused.text
    # The session reconnects by itself (backoff, stored device); the phone sent one message only.
    await api.connect_wait(cid)
    assert [m["text"] for m in await _outbox(api, cid)] == [MSG["message"]]
    running = await api.client.count_workflows(f'WorkflowId = "session-{cid}" AND ExecutionStatus = "Running"')
    assert running.count == 1


async def test_the_window_slides(client: Client, api_settings: Settings) -> None:
    """3 per 1.5 s: the 4th is refused until the oldest leaves the window, then admitted again.
    (The limiter runs before the session check, so admitted requests here answer 409: no session.)"""
    settings = api_settings.model_copy(update={"rate_limit_count": 3, "rate_limit_window_s": 1.5})
    async with serve_asgi(settings, client) as api:
        url = f"/api/whatsapp/sessions/{company()}/send"
        codes = [(await api.http.post(url, json=MSG, headers=ADMIN)).status_code for _ in range(3)]
        assert codes == [409, 409, 409]
        over = await api.http.post(url, json=MSG, headers=ADMIN)
        assert over.status_code == 429 and over.headers["Retry-After"] in ("1", "2")
        await asyncio.sleep(over.json()["retryAfter"] + 0.1)
        assert (await api.http.post(url, json=MSG, headers=ADMIN)).status_code == 409


async def test_send_to_a_session_whose_connector_stopped_is_409_at_once(
    client: Client, api_settings: Settings, tmp_path: Path
) -> None:
    """A connector stopped (SIGTERM) and nobody has taken its sessions over yet: the session workflow
    still says "connected" (a successor with the same id would take it back silently), but its status
    and a send say it is being taken over, at once, instead of a send waiting for a queue nobody polls
    (a 504 after the send timeout)."""
    async with run_worker(api_settings, client), serve_asgi(api_settings, client) as api:
        with connector_process(api_settings, client, tmp_path / "connector.log") as proc:
            cid = company()
            await api.connect(cid)
            assert (await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json=MSG, headers=ADMIN)
                    ).status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            started = time.monotonic()
            refused = await api.http.post(f"/api/whatsapp/sessions/{cid}/send",
                                          json={**MSG, "message": "after the stop"}, headers=ADMIN)
            assert refused.status_code == 409 and refused.json()["state"] == "connecting", refused.text
            assert "another is taking the connection over" in refused.json()["error"]
            assert time.monotonic() - started < 2
            status = await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)
            assert status.json()["status"] == "connecting", status.text
            db = Database(api_settings.database_dsn)  # no connector runs now: read what the phone sent
            try:
                sent = await db.fetch("SELECT text FROM transport_outbox WHERE company_id = $1", cid)
            finally:
                await db.close()
            assert [r["text"] for r in sent] == [MSG["message"]]
