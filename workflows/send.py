"""``SendMessage``: one outgoing message, at most once per idempotency key (SPEC M1, M3, S7).

The API starts it with id ``send-<company>-<idempotency key>`` after checking
the session is connected, on the queue of the connector that holds the session
(``connector.<id>``): that connector runs this workflow and its one activity,
so the activity is dispatched eagerly instead of matched across queues. The activity is
attempted once: a retry after a lost answer could send the message twice, so
a failure is reported to the caller, who may retry with the same key (a failed
run may be re-run, a completed one only returns its result).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.chat_actions import ACTIVITY_SEND_PRESENCE, ChatPresenceState, PresenceRequest
    from domain.send import CONNECTOR_CALL_WORKFLOW, SEND_WORKFLOW, ConnectorCallInput, SendMessageInput
    from domain.session import ACTIVITY_SEND_MESSAGE, SendResult

# Not sandboxed: both workflows here only pass dataclasses to one activity, and a sandbox per
# run is most of the worker's CPU for a send (measured with bench/send.py).
@workflow.defn(name=SEND_WORKFLOW, sandboxed=False)
class SendMessageWorkflow:
    @workflow.run
    async def run(self, inp: SendMessageInput) -> SendResult:
        workflow.set_current_details(f"send to the connector queue {inp.holder_queue}")
        if inp.typing_s > 0:
            await self._show_typing(inp)
        result: SendResult = await workflow.execute_activity(
            ACTIVITY_SEND_MESSAGE,
            inp.request,
            task_queue=inp.holder_queue,
            result_type=SendResult,
            # Schedule-to-close also bounds the wait for a holder that died with the task queued.
            schedule_to_close_timeout=timedelta(seconds=inp.timeout_s),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        return result

    @staticmethod
    async def _show_typing(inp: SendMessageInput) -> None:
        """Show "typing…" in the chat, then wait on a durable timer: the wait holds no activity slot and
        no other send waits for it. A presence that fails does not stop the send (which then says why)."""
        req = inp.request
        try:
            await workflow.execute_activity(
                ACTIVITY_SEND_PRESENCE,
                PresenceRequest(req.company_id, req.to, ChatPresenceState.TYPING),
                task_queue=inp.holder_queue,
                schedule_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            workflow.logger.info("typing not shown company_id=%s error=%s", req.company_id, err.cause)
            return
        await workflow.sleep(timedelta(seconds=inp.typing_s))


@workflow.defn(name=CONNECTOR_CALL_WORKFLOW, sandboxed=False)
class ConnectorCallWorkflow:
    @workflow.run
    async def run(self, inp: ConnectorCallInput) -> Any:
        return await workflow.execute_activity(
            inp.activity,
            inp.arg,
            task_queue=inp.queue,
            schedule_to_close_timeout=timedelta(seconds=inp.timeout_s),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
