"""Client-side operations on failed incoming messages (issue #15.1), for the API.

Redeliver and discard are the same signals an operator sends from the Temporal UI,
sent with signal-with-start from the stored row: if the message's workflow is
gone (someone terminated it), a new one takes the message from PostgreSQL. The
caller then waits, bounded, for the outcome, read from the row: gone means done,
one more attempt means the handler failed again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from domain.inbox import (
    FAILED_MESSAGE_WORKFLOW,
    SIGNAL_DISCARD,
    FailedMessageInput,
    failed_message_workflow_id,
)
from domain.settings import Settings
from storage import Database
from storage import failed_messages as store


class FailedMessageNotFound(LookupError):
    def __init__(self, company_id: str, message_id: str) -> None:
        super().__init__(f"no failed message {message_id} of {company_id} is waiting "
                         "(never failed, or already redelivered or discarded)")


@dataclass
class ActionOutcome:
    status: str  # "redelivered" | "discarded" | "failed" (still waiting) | "pending" (not done within the wait)
    attempts: int
    error: str | None = None


async def request_action(client: Client, settings: Settings, db: Database, company_id: str, message_id: str,
                         action: str, actor: str, wait_s: float = 30.0) -> ActionOutcome:
    """Ask the message's workflow to ``redeliver`` or ``discard`` it, and wait up to ``wait_s`` for the result.

    Raises:
        FailedMessageNotFound: no such message waits.
    """
    row = await store.get(db, company_id, message_id)
    if row is None:
        raise FailedMessageNotFound(company_id, message_id)
    await client.start_workflow(
        FAILED_MESSAGE_WORKFLOW,
        FailedMessageInput(row.message, row.error, None, row.claim),
        id=failed_message_workflow_id(company_id, message_id),
        task_queue=settings.temporal_core_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal=action,
        start_signal_args=[actor],
        static_summary=f"failed message {message_id} of chat {row.chat}: waits for redeliver/discard",
    )
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        now = await store.get(db, company_id, message_id)
        if now is None:
            return ActionOutcome("discarded" if action == SIGNAL_DISCARD else "redelivered", row.attempts)
        if now.attempts > row.attempts:
            return ActionOutcome("failed", now.attempts, now.error)
        if asyncio.get_running_loop().time() >= deadline:
            return ActionOutcome("pending", now.attempts, now.error)
        await asyncio.sleep(0.2)
