"""A session "connected but dead" (issue 11.8), through the API on the simulator: when WhatsApp's server stops
acknowledging sends, the session becomes `degraded` (status, health, events) and is re-held once;
if that does not help it stays degraded and an alert goes out after the grace period (H4), unless a
send is acknowledged before (then nothing is sent: no false alarm)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client

from cli.embedded import wait_until
from domain.settings import Settings
from tests.api.beyond_text import control, published, stack_with, wait_for_event
from tests.api.conftest import ADMIN, Api, company
from tests.telegram_standin import TelegramStandIn

pytestmark = pytest.mark.timeout(150)

GRACE_S = 3.0


async def _status(api: Api, cid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)).json()
    return body


async def _wait_status(api: Api, cid: str, state: str, **fields: Any) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal last
        last = await _status(api, cid)
        return last["status"] == state and all(last.get(k) == v for k, v in fields.items())

    try:
        await wait_until(reached, 30, interval=0.05)
    except TimeoutError:
        raise AssertionError(f"{cid} not {state} {fields}: {last}") from None
    return last


def _send(api: Api, cid: str, text: str) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(api.http.post(f"/api/whatsapp/sessions/{cid}/send",
                                             json={"phone": "79001234567", "message": text}, headers=ADMIN))


async def test_a_session_whose_sends_get_no_server_ack_is_degraded_reheld_once_then_alerted(
    client: Client, api_settings: Settings, redis_url: str
) -> None:
    with TelegramStandIn() as telegram:
        async with stack_with(
            client, api_settings, ack_timeout_s=1.0, alert_grace_s=GRACE_S, telegram_api_url=telegram.url + "/",
            telegram_bot_token=SecretStr("123456:degraded-test-token"), telegram_chat_id="-100200300",
        ) as api, published(redis_url, api.settings) as events:
            cid = company()
            await api.connect(cid)
            await control(api, cid, "stop_acks")

            # 1. No server ack within ACK_TIMEOUT_S: degraded, and re-held once. The send that waited
            # on the old connection is refused (nothing is known to have gone out).
            first = _send(api, cid, "one")
            degraded = await wait_for_event(events, type="degraded", companyId=cid)
            assert "no server ack" in degraded["reason"]
            refused = await first
            assert refused.status_code == 409 and refused.json()["code"] == "not_connected", refused.text
            await _wait_status(api, cid, "connected", reconnects=1)
            kinds = [e["type"] for e in events if e["companyId"] == cid]
            assert kinds[kinds.index("degraded"):].count("connected") >= 1  # back, through the re-hold

            # 2. Still not acknowledging: degraded again, and this time it stays (no second re-hold) ...
            second = _send(api, cid, "two")
            st = await _wait_status(api, cid, "degraded")
            assert st["connected"] is False and "no server ack" in st["lastError"] and st["reconnects"] == 1
            # ... until the server acknowledges again within the grace period: the waiting send goes out,
            # the session is connected, and nobody is alerted (H4: no false alarm).
            await control(api, cid, "resume_acks")
            delivered = await second
            assert delivered.status_code == 200, delivered.text
            await _wait_status(api, cid, "connected", reconnects=1)
            await asyncio.sleep(GRACE_S + 0.5)
            assert telegram.messages == []

            # 3. It happens again later: one re-hold again (the count was cleared by the ack) ...
            await control(api, cid, "stop_acks")
            assert (await _send(api, cid, "three")).status_code == 409
            await _wait_status(api, cid, "connected", reconnects=2)
            # ... and when that does not help, degraded in status, health and the service's /health,
            # then an alert once the grace period has passed with the session still degraded.
            fourth = _send(api, cid, "four")
            st = await _wait_status(api, cid, "degraded")
            assert st["connected"] is False and st["reconnects"] == 2
            health = await api.http.get(f"/api/whatsapp/sessions/{cid}/health", headers=ADMIN)
            assert health.status_code == 503 and health.json()["status"] == "degraded"

            async def listed_degraded() -> bool:
                checks = (await api.http.get("/health", headers=ADMIN)).json()["checks"]
                wa = next(c for c in checks if c["name"] == "whatsapp")
                return bool(wa.get("companies", {}).get(cid) == "degraded" and cid in wa["unhealthy"])

            await wait_until(listed_degraded, 15)

            async def alerted() -> bool:
                return len(telegram.messages) == 1

            await wait_until(alerted, GRACE_S + 20)
            text = telegram.messages[0].body["text"]
            assert cid in text and "connected but not delivering" in text and "no server ack" in text, text
            # A degraded session still takes sends: each is the probe that may find the server acking again.
            fifth = _send(api, cid, "five")
            await asyncio.sleep(0.5)
            assert not fifth.done()
            await control(api, cid, "resume_acks")
            assert (await fourth).status_code == 200
            probe = await fifth
            assert probe.status_code == 200 and "degraded" in probe.json()["warning"], probe.text
            await _wait_status(api, cid, "connected")
            await asyncio.sleep(1)
            assert len(telegram.messages) == 1
            degraded_events = [e for e in events if e["type"] == "degraded" and e["companyId"] == cid]
            assert len(degraded_events) == 4
