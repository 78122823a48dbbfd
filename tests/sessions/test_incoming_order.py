"""Incoming messages of one chat reach Temporal in arrival order, even when the transport
hands them over concurrently from its own threads (as neonize's Go callbacks do)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

from temporalio import workflow

from domain.inbox import INBOX_WORKFLOW, SIGNAL_INBOX_MESSAGE, InboxWorkflowInput, IncomingMessage, inbox_workflow_id

N = 40
ORDER: list[str] = []


@workflow.defn(name=INBOX_WORKFLOW, sandboxed=False)
class OrderRecordingInbox:
    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self, inp: InboxWorkflowInput) -> int:
        await workflow.wait_condition(lambda: self.count >= N, timeout=timedelta(minutes=5))
        return self.count

    @workflow.signal(name=SIGNAL_INBOX_MESSAGE)
    def message(self, msg: IncomingMessage) -> None:
        ORDER.append(msg.message_id)
        self.count += 1


async def test_concurrent_hand_offs_keep_chat_order(ts_stack, company_id):
    async with ts_stack(extra_workflows=(OrderRecordingInbox,)) as s:
        loop = asyncio.get_running_loop()
        chat = "79990000009@s.whatsapp.net"
        msgs = [
            IncomingMessage(company_id=company_id, message_id=f"M{i:03d}", chat=chat, sender=chat,
                            timestamp=datetime.now(UTC), text=f"text {i}")
            for i in range(N)
        ]
        futures = []

        def go_thread() -> None:  # the way a Go callback thread hands a message to the loop
            for m in msgs:
                futures.append(asyncio.run_coroutine_threadsafe(s.connector.deliver_incoming(m), loop))

        thread = threading.Thread(target=go_thread)
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        # Each is durable (spooled) now; the spool hands them to Temporal, in order, by itself.
        await s.spooled_handed_over()
        handle = s.client.get_workflow_handle(inbox_workflow_id(company_id, chat))
        assert await handle.result() == N
        assert ORDER == [m.message_id for m in msgs]
        assert sum(1 for e in s.events if e["type"] == "message") == N
        assert len(s.connector._chat_order) == 0  # no lock left behind per chat
