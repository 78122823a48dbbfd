"""Incoming messages end to end (SPEC M4, M6, E2): simulator → connector → InboxWorkflow → handler
→ reply through SendMessage → simulator outbox, on the dev server with PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
from temporalio.client import WorkflowExecutionStatus

from cli.embedded import wait_until
from domain.inbox import QUERY_INBOX, SIGNAL_DISCARD, InboxSummary, failed_message_workflow_id, inbox_workflow_id
from storage import failed_messages
from tests.inbox.conftest import SECRET, Delivery, InboxStack

CHAT = "79990000001@s.whatsapp.net"


def signed(d: Delivery) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), d.raw, hashlib.sha256).hexdigest()
    return d.signature is not None and hmac.compare_digest(d.signature, expected)


async def summary(s: InboxStack, chat: str = CHAT) -> InboxSummary:
    handle = s.client.get_workflow_handle(inbox_workflow_id(s.company_id, chat))
    result: InboxSummary = await handle.query(QUERY_INBOX, result_type=InboxSummary)
    return result


@pytest.mark.timeout(240)
async def test_hundred_messages_in_order_each_once_through_continue_as_new(make_inbox):
    # 40 messages per run: the 100 cross two continue-as-new, which carry the queue and the seen ids.
    async with make_inbox(inbox_max_messages_per_run=40) as s:
        await s.set_handler("webhook", url=s.receiver.url)
        ids = [await s.inject(f"m{i}", message_id=f"WAID{i:04d}") for i in range(100)]
        await s.inject("m7 again", message_id="WAID0007")  # WhatsApp redelivers an id still queued or done
        await s.wait(lambda: len(s.outbox()) >= 100, 150, "100 replies")
        # The duplicate arrived before this one, so once this is handled the duplicate was dropped.
        await s.inject("m5 again", message_id="WAID0005")
        last = await s.inject("last", message_id="WAIDLAST")
        await s.wait(lambda: len(s.outbox()) >= 101, 45, "the last reply")

        async def all_recorded() -> bool:
            return (await summary(s)).pending == 0

        await wait_until(all_recorded, 10)  # every message handled: a doubled delivery or reply is in by now
        hook = s.receiver.hook()
        assert [d.body["messageId"] for d in hook] == [*ids, last]  # in order, each exactly once
        assert [d.body["text"] for d in hook][:3] == ["m0", "m1", "m2"]
        assert all(signed(d) for d in hook)
        assert {d.event_id for d in hook} == {f"message-{s.company_id}-{i}" for i in [*ids, last]}
        out = s.outbox()
        assert [e.quoted for e in out] == [*ids, last]
        assert [e.text for e in out][:2] == ["re: m0", "re: m1"]
        assert all(e.to == CHAT for e in out)
        info = await summary(s)
        assert (info.handled, info.duplicates, info.last_message_id) == (101, 2, last)
        desc = await s.client.get_workflow_handle(inbox_workflow_id(s.company_id, CHAT)).describe()
        assert desc.run_id != desc.raw_description.workflow_execution_info.first_run_id  # continued as new


@pytest.mark.timeout(150)
async def test_webhook_down_then_recovers_delivers_everything_in_order(make_inbox):
    async with make_inbox() as s:
        await s.set_handler("webhook", url=s.receiver.url)
        s.receiver.status = 500
        ids = [await s.inject(f"down {i}") for i in range(5)]
        await s.wait(lambda: s.receiver.refused >= 4, 45, "retries against the failing receiver")
        assert s.receiver.hook() == []
        s.receiver.status = 200
        await s.wait(lambda: len(s.outbox()) >= 5, 60, "5 replies after recovery")

        async def all_handled() -> bool:
            info = await summary(s)
            return info.handled == 5 and info.pending == 0

        await wait_until(all_handled, 20)  # the inbox is done: nothing more can arrive
        hook = s.receiver.hook()
        assert [d.body["messageId"] for d in hook] == ids
        assert all(signed(d) for d in hook)
        # A signature made with another secret does not verify.
        assert not hmac.compare_digest(
            hook[0].signature or "", "sha256=" + hmac.new(b"wrong-secret", hook[0].raw, hashlib.sha256).hexdigest()
        )
        assert [e.quoted for e in s.outbox()] == ids
        assert s.alerts == []


@pytest.mark.timeout(150)
async def test_receiver_that_never_recovers_leaves_a_waiting_message_and_alert(make_inbox):
    async with make_inbox(inbox_retry_window_s=3.0) as s:
        await s.set_handler("webhook", url=s.receiver.url)
        s.receiver.status = 500
        lost = await s.inject("nobody hears this")
        failed = s.client.get_workflow_handle(failed_message_workflow_id(s.company_id, lost))

        async def kept() -> bool:
            return await failed_messages.get(s.db, s.company_id, lost) is not None

        await wait_until(kept, 60, interval=0.2)
        # Kept in PostgreSQL, its workflow waiting (running: no retention applies) for an operator.
        assert (await failed.describe()).status == WorkflowExecutionStatus.RUNNING
        await s.wait(lambda: bool(s.alerts), 15, "the alert")
        assert [a.severity for a in s.alerts] == ["critical"]
        assert lost in s.alerts[0].text and s.alerts[0].company_id == s.company_id
        assert s.receiver.hook() == []
        # The chat is not blocked: once the receiver is back the next message goes through.
        s.receiver.status = 200
        nxt = await s.inject("after the outage")
        await s.wait(lambda: len(s.outbox()) >= 1, 45, "the next reply")
        assert [d.body["messageId"] for d in s.receiver.hook()] == [nxt]
        assert (await failed.describe()).status == WorkflowExecutionStatus.RUNNING  # still waits for a person
        await failed.signal(SIGNAL_DISCARD, "test")
        assert await failed.result() == "discarded"


@pytest.mark.timeout(150)
async def test_callable_handler_replies_and_event_webhook_gets_signed_events(make_inbox):
    async with make_inbox() as s:
        await s.set_handler("callable", callable_path="tests.inbox.handlers_for_test:shout",
                            event_url=s.receiver.url.replace("/hook", "/events"))
        chat = "123456789012345@lid"  # @lid kept as it is, end to end (SPEC M5)
        mid = await s.inject("hi there", chat=chat)
        await s.wait(lambda: len(s.outbox()) >= 1, 45, "the callable's reply")
        (entry,) = s.outbox()
        assert (entry.to, entry.text, entry.quoted) == (chat, "HI THERE!", mid)
        await s.wait(lambda: len(s.receiver.deliveries) >= 2, 45, "two events")
        events = {d.body["type"]: d for d in s.receiver.deliveries}
        assert set(events) == {"message", "message_sent"}
        assert all(d.path == "/events" and signed(d) for d in events.values())
        msg = events["message"].body
        assert (msg["companyId"], msg["messageId"], msg["chat"], msg["sender"]) == (s.company_id, mid, chat, chat)
        assert events["message_sent"].body["messageId"] == entry.message_id
        assert events["message_sent"].body["inReplyTo"] == mid
        assert json.loads(events["message"].raw)["id"] == events["message"].event_id


@pytest.mark.timeout(150)
async def test_event_webhook_down_never_blocks_messages_and_catches_up(make_inbox):
    async with make_inbox(inbox_idle_s=1.0) as s:
        await s.set_handler("echo", event_url=s.receiver.url.replace("/hook", "/events"))
        s.receiver.status = 500
        ids = [await s.inject(f"e{i}") for i in range(3)]
        await s.wait(lambda: len(s.outbox()) >= 3, 45, "3 echoes while the event webhook is down")
        await s.wait(lambda: s.receiver.refused >= 3, 45, "refused event deliveries")
        await asyncio.sleep(1.5)  # past the idle period: the inbox stays open for its undelivered events
        handle = s.client.get_workflow_handle(inbox_workflow_id(s.company_id, CHAT))
        assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
        s.receiver.status = 200
        await s.wait(lambda: len({d.event_id for d in s.receiver.deliveries}) >= 6, 60, "6 events")
        got = s.receiver.deliveries
        assert sorted(d.body["messageId"] for d in got if d.body["type"] == "message") == sorted(ids)
        assert sorted(d.body["inReplyTo"] for d in got if d.body["type"] == "message_sent") == sorted(ids)
        assert all(signed(d) for d in s.receiver.deliveries)

        async def completed() -> bool:
            status: WorkflowExecutionStatus | None = (await handle.describe()).status
            return status is WorkflowExecutionStatus.COMPLETED

        await wait_until(completed, 45, interval=0.2)
