"""A failed incoming message outlives the namespace retention (issue #15.1, SPEC M4, M6).

With a 3 s retention, the chat's closed inbox workflow is deleted by Temporal while the test watches;
the message whose handler failed is still listed, its workflow still waits, and an operator's
``redeliver`` (the signal the Temporal UI sends) delivers it once the receiver is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli.embedded import wait_until
from domain.inbox import SIGNAL_REDELIVER, failed_message_workflow_id, inbox_workflow_id
from storage import failed_messages
from tests.inbox.conftest import inbox_stack
from tests.ops.conftest import SHORT_RETENTION

pytestmark = pytest.mark.timeout(180)

CHAT = "79990000003@s.whatsapp.net"


async def _deleted(handle: Any) -> bool:
    try:
        await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def test_failed_message_is_still_there_after_the_retention_passed(ops_env, make_settings, db, redis_client):
    async with inbox_stack(ops_env, make_settings, db, redis_client, inbox_retry_window_s=1.0,
                           inbox_idle_s=1.0) as s:
        await s.set_handler("webhook", url=s.receiver.url)
        s.receiver.status = 500
        lost = await s.inject("запишите меня на пятницу", chat=CHAT)

        async def kept() -> bool:
            return await failed_messages.get(s.db, s.company_id, lost) is not None

        await wait_until(kept, 60, interval=0.2)
        inbox = s.client.get_workflow_handle(inbox_workflow_id(s.company_id, CHAT))

        async def inbox_closed() -> bool:
            return (await inbox.describe()).status == WorkflowExecutionStatus.COMPLETED

        await wait_until(inbox_closed, 30, interval=0.2)
        closed_at = time.monotonic()

        async def inbox_gone() -> bool:
            return await _deleted(inbox)

        await wait_until(inbox_gone, 60, interval=0.5)  # the retention is real: Temporal deleted it
        assert time.monotonic() - closed_at >= SHORT_RETENTION.total_seconds() - 0.5
        await asyncio.sleep(SHORT_RETENTION.total_seconds() + 1)  # and then some more

        waiting = await failed_messages.list_waiting(s.db, s.company_id)
        assert [(m.message_id, m.message.text) for m in waiting] == [(lost, "запишите меня на пятницу")]
        failed = s.client.get_workflow_handle(failed_message_workflow_id(s.company_id, lost))
        assert (await failed.describe()).status == WorkflowExecutionStatus.RUNNING
        assert s.receiver.hook() == []

        s.receiver.status = 200
        await failed.signal(SIGNAL_REDELIVER)
        assert await failed.result() == "redelivered"
        assert [d.body["messageId"] for d in s.receiver.hook()] == [lost]
        await s.wait(lambda: len(s.outbox()) >= 1, 30, "the reply")
        assert [e.quoted for e in s.outbox()] == [lost]
        assert await failed_messages.list_waiting(s.db, s.company_id) == []
