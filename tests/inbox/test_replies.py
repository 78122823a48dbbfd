"""Replies go through the send path: the company's rate limit, and never to our own messages."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from temporalio.common import WorkflowIDConflictPolicy

from cli.embedded import wait_until
from domain.inbox import (
    INBOX_WORKFLOW,
    SIGNAL_INBOX_MESSAGE,
    InboxSummary,
    InboxWorkflowInput,
    IncomingMessage,
    inbox_workflow_id,
)
from tests.inbox.test_inbox import summary

CHAT = "79995550000@s.whatsapp.net"


@pytest.mark.timeout(150)
async def test_replies_wait_for_the_rate_limit_and_keep_order(make_inbox):
    async with make_inbox(rate_limit_count=2, rate_limit_window_s=2.0) as s:
        await s.set_handler("echo")
        started = time.monotonic()
        ids = [await s.inject(f"r{i}", chat=CHAT) for i in range(5)]
        await s.wait(lambda: len(s.outbox()) >= 5, 60, "5 echoes")
        out = s.outbox()
        assert [e.quoted for e in out] == ids
        # 2 per 2 s: the 5th reply cannot go out before two full windows have passed.
        assert (out[4].timestamp - out[0].timestamp).total_seconds() >= 3.5
        assert time.monotonic() - started >= 3.5


@pytest.mark.timeout(150)
async def test_own_messages_are_not_answered(make_inbox):
    async with make_inbox() as s:
        await s.set_handler("echo")
        own = IncomingMessage(company_id=s.company_id, message_id="OWN0001", chat=CHAT, sender=CHAT,
                              timestamp=datetime.now(UTC), text="sent from the phone", from_me=True)
        # Exactly what the connector does for an incoming message.
        await s.client.start_workflow(
            INBOX_WORKFLOW, InboxWorkflowInput(s.company_id, CHAT), id=inbox_workflow_id(s.company_id, CHAT),
            task_queue=s.settings.temporal_core_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=SIGNAL_INBOX_MESSAGE, start_signal_args=[own],
        )
        theirs = await s.inject("a customer writes", chat=CHAT)

        async def both_handled() -> bool:
            info: InboxSummary = await summary(s, CHAT)
            return info.handled == 2 and info.pending == 0

        await wait_until(both_handled, 45)  # a reply is sent before its message counts as handled
        assert [(e.text, e.quoted) for e in s.outbox()] == [("echo: a customer writes", theirs)]


@pytest.mark.timeout(150)
async def test_company_without_a_handler_gets_the_settings_default(make_inbox):
    async with make_inbox(inbox_default_handler="echo") as s:
        mid = await s.inject("no handler configured", chat=CHAT)
        await s.wait(lambda: len(s.outbox()) >= 1, 45, "the default echo")
        assert [(e.text, e.quoted) for e in s.outbox()] == [("echo: no handler configured", mid)]
        await s.set_handler("none")  # the company's own choice wins over the default
        await s.inject("now silence", chat=CHAT)
        last = await s.inject("still silence", chat=CHAT)

        async def handled() -> bool:
            info: InboxSummary = await summary(s, CHAT)
            return bool(info.last_message_id == last)

        await wait_until(handled, 45)
        assert len(s.outbox()) == 1
