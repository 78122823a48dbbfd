"""Read marks, typing / recording, reactions, replies and the "typing…" send option (issue 11.4), through
the API on the simulator: what the phone was asked to do, and what a caller gets for bad input."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.client import Client

from domain.settings import Settings
from tests.api.beyond_text import control, phone_actions, published, stack_with, wait_for_event
from tests.api.conftest import ADMIN, company

pytestmark = pytest.mark.timeout(120)

CUSTOMER = "79001234567@s.whatsapp.net"
GROUP = "120363000000000001@g.us"


async def test_read_presence_and_reactions_reach_the_phone(client: Client, api_settings: Settings) -> None:
    async with stack_with(client, api_settings, rate_limit_count=2) as api:
        cid = company()
        base = f"/api/whatsapp/sessions/{cid}"
        # Nothing held yet: 409 naming the state, and no session is started by it.
        r = await api.http.post(f"{base}/read", json={"chat": CUSTOMER, "messageIds": ["IN1"]}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["code"] == "not_connected" and r.json()["state"] == "none", r.text
        await api.connect(cid)

        r = await api.http.post(f"{base}/read", json={"chat": "+7 900 123-45-67", "messageIds": ["IN1", "IN2"]},
                                headers=ADMIN)
        assert r.status_code == 200 and r.json()["chat"] == CUSTOMER, r.text
        r = await api.http.post(f"{base}/read", json={"chat": GROUP, "messageIds": ["G1"],
                                                      "sender": "79001112233"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        (one, group) = await phone_actions(api, cid, "read")
        assert (one["chat"], one["messageIds"], one["sender"]) == (CUSTOMER, ["IN1", "IN2"], CUSTOMER)
        assert (group["chat"], group["sender"]) == (GROUP, "79001112233@s.whatsapp.net")

        for state in ("typing", "recording", "paused"):
            r = await api.http.post(f"{base}/presence", json={"chat": CUSTOMER, "state": state}, headers=ADMIN)
            assert r.status_code == 200 and r.json()["state"] == state, r.text
        assert [a["state"] for a in await phone_actions(api, cid, "presence")] == ["typing", "recording", "paused"]

        r = await api.http.post(f"{base}/react", json={"chat": CUSTOMER, "messageId": "IN1", "emoji": "👍"},
                                headers=ADMIN)
        assert r.status_code == 200 and r.json()["reactionId"], r.text
        r = await api.http.post(f"{base}/react", json={"chat": CUSTOMER, "messageId": "OUT1", "emoji": "",
                                                       "fromMe": True}, headers=ADMIN)
        assert r.status_code == 200, r.text
        # A reaction is a message: the company's send rate limit (2 here) counts it.
        r = await api.http.post(f"{base}/react", json={"chat": CUSTOMER, "messageId": "IN2", "emoji": "🙏"},
                                headers=ADMIN)
        assert r.status_code == 429 and r.headers["Retry-After"] and "reaction" in r.json()["error"], r.text
        thumbs, taken_back = await phone_actions(api, cid, "reaction")
        assert (thumbs["messageId"], thumbs["emoji"], thumbs["fromMe"], thumbs["sender"]) == ("IN1", "👍", False,
                                                                                              CUSTOMER)
        assert (taken_back["messageId"], taken_back["emoji"], taken_back["fromMe"]) == ("OUT1", "", True)

        bad = [
            ("read", {"chat": CUSTOMER, "messageIds": []}, "messageIds"),
            ("read", {"chat": CUSTOMER, "messageIds": ["a b"]}, "messageIds.0"),
            ("read", {"chat": GROUP, "messageIds": ["G1"]}, "sender"),
            ("read", {"chat": "12345", "messageIds": ["X"]}, "chat"),
            ("presence", {"chat": CUSTOMER, "state": "dancing"}, "state"),
            ("react", {"chat": CUSTOMER, "messageId": "IN1", "emoji": "ok"}, "emoji"),
            ("react", {"chat": GROUP, "messageId": "G1", "emoji": "🔥"}, "sender"),
            ("react", {"chat": CUSTOMER, "messageId": "IN1"}, "emoji"),
        ]
        for path, body, field in bad:
            r = await api.http.post(f"{base}/{path}", json=body, headers=ADMIN)
            assert r.status_code == 422, (path, body, r.text)
            assert r.json()["error"].startswith(f"{field}:"), (path, body, r.json())
        # Refused requests did nothing.
        assert len(await phone_actions(api, cid)) == 7


async def test_reply_quotes_the_message_and_incoming_replies_say_what_they_quote(
    client: Client, api_settings: Settings, redis_url: str
) -> None:
    async with stack_with(client, api_settings) as api, published(redis_url, api.settings) as events:
        cid = company()
        await api.connect(cid)
        incoming = await control(api, cid, "incoming", text="Можно на 15:00?", messageId="INQ1",
                                 sender=CUSTOMER, quoted="OUT0")
        event = await wait_for_event(events, type="message", messageId=incoming["message_id"])
        assert event["quoted"] == "OUT0" and event["text"] == "Можно на 15:00?"
        r = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", headers=ADMIN, json={
            "to": CUSTOMER, "message": "Да, записали", "options": {"quoted": "INQ1"}})
        assert r.status_code == 200 and r.json()["quoted"] == "INQ1", r.text
        outbox = (await api.http.get(f"/api/simulator/{cid}/outbox", headers=ADMIN)).json()["messages"]
        assert [(m["text"], m["quoted"]) for m in outbox] == [("Да, записали", "INQ1")]
        r = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", headers=ADMIN, json={
            "to": GROUP, "message": "x", "options": {"quotedSender": "79001112233"}})
        assert r.status_code == 422 and r.json()["error"].startswith("options:"), r.text


async def test_typing_option_shows_typing_for_the_text_length_without_holding_up_others(
    client: Client, api_settings: Settings
) -> None:
    async with stack_with(client, api_settings, send_typing_chars_per_s=20.0, send_typing_min_s=1.0,
                          send_typing_max_s=3.0) as api:
        slow, quick = company(), company()
        await asyncio.gather(api.connect(slow), api.connect(quick))
        text = "Здравствуйте! Напоминаем о записи завтра в 15:00."  # 49 characters: 2.45 s of typing

        async def send(cid: str, body: dict[str, object]) -> tuple[float, dict[str, object]]:
            started = time.monotonic()
            r = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json=body, headers=ADMIN)
            assert r.status_code == 200, r.text
            return time.monotonic() - started, r.json()

        typed_task = asyncio.create_task(send(slow, {"to": CUSTOMER, "message": text, "options": {"typing": True}}))
        await asyncio.sleep(0.3)  # the typing has begun: another company's send does not wait for it
        quick_s, _ = await send(quick, {"to": CUSTOMER, "message": text})
        typed_s, typed = await typed_task
        assert typed["typingS"] == pytest.approx(2.45)
        assert typed_s >= 2.45 and quick_s < 2.0, (typed_s, quick_s)
        (typing,) = await phone_actions(api, slow, "presence")
        assert typing["state"] == "typing" and typing["chat"] == CUSTOMER
        assert await phone_actions(api, quick, "presence") == []  # off by default
        # Bounded: a long text types for SEND_TYPING_MAX_S, no longer.
        long_s, long = await send(slow, {"to": CUSTOMER, "message": "x" * 1000, "options": {"typing": True}})
        assert long["typingS"] == 3.0 and 3.0 <= long_s < 10
