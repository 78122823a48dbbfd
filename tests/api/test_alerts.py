"""Alerts reach Telegram (SPEC H4): a 440 makes the session workflow alert at once, the worker's
``send_alert`` posts it to the Bot API (a local stand-in here, via TELEGRAM_API_URL), and a
Telegram error is retried by Temporal until the message is delivered."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from temporalio.client import Client

from cli.embedded import wait_until
from domain.settings import Settings
from tests.api.conftest import ADMIN, company, run_connector_inprocess, run_worker, serve_asgi
from tests.telegram_standin import TelegramStandIn

pytestmark = pytest.mark.timeout(120)

BOT_TOKEN = "123456:telegram-test-token-AbCdEf"
CHAT_ID = "-1001234567890"


async def test_a_440_alert_reaches_the_telegram_chat_after_a_telegram_error(
    client: Client, api_settings: Settings
) -> None:
    with TelegramStandIn(fail_first=1) as telegram:
        settings = api_settings.model_copy(update={
            "telegram_bot_token": SecretStr(BOT_TOKEN), "telegram_chat_id": CHAT_ID,
            "telegram_api_url": telegram.url + "/",
        })
        async with (
            run_worker(settings, client),
            run_connector_inprocess(settings),
            serve_asgi(settings, client) as api,
        ):
            cid = company()
            await api.connect(cid)
            assert telegram.messages == [] and telegram.refused == 0  # connecting alerts nobody
            replaced = await api.http.post(f"/api/simulator/{cid}/replace", headers=ADMIN)
            assert replaced.status_code == 200, replaced.text

            async def delivered() -> bool:
                return len(telegram.messages) >= 1

            await wait_until(delivered, 30)  # the first attempt got a 500; Temporal retried it
            (sent,) = telegram.messages
            assert telegram.refused == 1
            assert sent.token == BOT_TOKEN
            assert sent.body["chat_id"] == CHAT_ID and sent.body["disable_web_page_preview"] is True
            text = sent.body["text"]
            assert text.startswith("🔴") and "440" in text and f"company: {cid}" in text, text
            status = (await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)).json()
            assert status["status"] == "replaced"
