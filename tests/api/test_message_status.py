"""Message status (issue 11.3): the server ack of a send and the receipts of the recipient's phone
become ``message_ack`` events (Redis, WebSocket, event webhooks) and move the message's status
forward, which ``GET …/messages/{id}`` answers; a late receipt never moves it back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client

from activities.event_relay import EventRelay
from cli.embedded import wait_until
from domain.settings import Settings
from storage import Database
from tests.api.beyond_text import control, published, stack_with, wait_for_event
from tests.api.conftest import ADMIN, Api, company
from tests.inbox.conftest import serve_receiver

pytestmark = pytest.mark.timeout(120)


async def test_server_ack_and_receipts_move_the_status_forward(
    client: Client, api_settings: Settings, redis_url: str
) -> None:
    async with (
        stack_with(client, api_settings) as api,
        published(redis_url, api.settings) as events,
        serve_receiver() as hooks,
        event_relay(api) as _,
    ):
        cid, other = company(), company()
        events_url = hooks.url.replace("/hook", "/events")
        r = await api.http.put(f"/api/companies/{cid}/handler", json={"type": "none", "eventWebhookUrl": events_url},
                               headers=ADMIN)
        assert r.status_code == 200, r.text
        await api.connect(cid)
        sent = await api.http.post(f"/api/whatsapp/sessions/{cid}/send",
                                   json={"phone": "79001234567", "message": "Ваша запись подтверждена"}, headers=ADMIN)
        assert sent.status_code == 200, sent.text
        mid = sent.json()["messageId"]
        url = f"/api/whatsapp/sessions/{cid}/messages/{mid}"

        # The send returned once WhatsApp's server acknowledged it: status "server" at once.
        st = (await api.http.get(url, headers=ADMIN)).json()
        assert st["status"] == "server" and st["ack"] == 1 and st["chat"] == "79001234567@s.whatsapp.net", st
        assert st["serverAt"] and st["deliveredAt"] is None and st["readAt"] is None
        ack = await wait_for_event(events, type="message_ack", messageId=mid, status="server")
        assert ack["companyId"] == cid and ack["ack"] == 1 and ack["chat"] == "79001234567@s.whatsapp.net"

        await control(api, cid, "receipt", messageId=mid, status="delivered")
        await wait_for_event(events, type="message_ack", messageId=mid, status="delivered")
        await control(api, cid, "receipt", messageId=mid, status="read")
        await wait_for_event(events, type="message_ack", messageId=mid, status="read")
        st = (await api.http.get(url, headers=ADMIN)).json()
        assert st["status"] == "read" and st["ack"] == 3 and st["deliveredAt"] and st["readAt"], st
        delivered_at = st["deliveredAt"]

        # A late "delivered" (another device of the recipient) is an event, not a step back.
        await control(api, cid, "receipt", messageId=mid, status="delivered")

        async def two_delivered() -> bool:
            return sum(1 for e in events if e["type"] == "message_ack" and e.get("status") == "delivered") == 2

        await wait_until(two_delivered, 10)
        st = (await api.http.get(url, headers=ADMIN)).json()
        assert st["status"] == "read" and st["deliveredAt"] == delivered_at, st

        # The company's event webhook got every step (relayed by the worker, in order).
        def acks() -> list[dict[str, Any]]:
            return [d.body for d in hooks.deliveries if d.path == "/events" and d.body["type"] == "message_ack"]

        await wait_until(lambda: _true(len(acks()) >= 4), 30)
        assert [(a["messageId"], a["status"]) for a in acks()] == [
            (mid, "server"), (mid, "delivered"), (mid, "read"), (mid, "delivered")]

        # Unknown, malformed, and another company's.
        missing = await api.http.get(f"/api/whatsapp/sessions/{cid}/messages/3EB0NOTSENT", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["code"] == "message_not_found"
        assert "3EB0NOTSENT" in missing.json()["error"]
        bad = await api.http.get(f"/api/whatsapp/sessions/{cid}/messages/a%20b", headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"].startswith("message_id"), bad.text
        other_key = await api.issue_key(other)
        assert (await api.http.get(url, headers={"X-API-Key": other_key})).status_code == 403
        theirs = await api.http.get(f"/api/whatsapp/sessions/{other}/messages/{mid}", headers={"X-API-Key": other_key})
        assert theirs.status_code == 404  # the id belongs to another company: nothing to see


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def event_relay(api: Api) -> AsyncIterator[EventRelay]:
    """The worker process's event relay (Redis → company event webhooks), which the test worker lacks."""
    db = Database(api.settings.database_dsn)
    relay = EventRelay(api.settings, api.client, db)
    await relay.start()
    try:
        await relay.subscribed.wait()
        yield relay
    finally:
        await relay.stop()
        await db.close()
