"""``InboxWorkflow``: one chat's incoming messages, in arrival order, each once (SPEC M4, M6, E2).

The connector signals-with-start ``inbox-<company>-<chat>`` for every incoming
message (``connector.activities.deliver_incoming``). The signal handler only
queues: it drops a WhatsApp message id it has already seen (WhatsApp
redelivers) and appends the rest; the main loop handles the queue head to tail,
so one chat's messages reach the handler in the order they arrived, and chats
run in parallel.

Per message: ``handle_incoming`` (webhook, callable or echo; first a local
activity, then, if that fails, an activity retried by Temporal with backoff for
the retry window) → when the handler answers with a reply, the company's send
rate limit (the API's limiter) and the connector's ``send_message`` activity on
the holder's queue, attempted once exactly as ``SendMessage`` does it (a retry
after a lost answer could send twice). Not a ``SendMessage`` child workflow:
measured with ``bench/inbox.py`` (3 companies × 2 chats), a child per reply
gave 0.40 of the bare round trip's throughput, the activity 1.16. The WhatsApp
id is claimed in Redis for a day (the chain of runs that claimed it may handle
it; any other run drops it), so a redelivery after the inbox went idle is not
handled, nor replied to, twice.

A handler that keeps failing past the window does not block the chat and is
not lost: a ``FailedInboxMessage`` workflow (``inbox-failed-<company>-<message>``)
keeps it in PostgreSQL (``failed_messages``) and stays running, waiting for an
operator's ``redeliver`` or ``discard`` (API, CLI, or a signal from the Temporal
UI), for as long as that takes: the namespace retention applies to closed
workflows only, and the row is the durable copy either way. The first failed
message of a company alerts; a daily ``FailedMessagesReminder`` repeats it while
any remain. The inbox completes after an idle period and continues as new after
a number of messages, carrying the queue and the recent seen ids, so its history
stays small and expires with the namespace retention.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    TimeoutType,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from domain.inbox import (
        ACTIVITY_DELIVER_EVENT,
        ACTIVITY_FAILED_ATTEMPT,
        ACTIVITY_FAILED_SUMMARY,
        ACTIVITY_HANDLE_INCOMING,
        ACTIVITY_INBOX_TUNING,
        ACTIVITY_PARK_FAILED,
        ACTIVITY_RESERVE_REPLY,
        ACTIVITY_RESOLVE_FAILED,
        FAILED_MESSAGE_WORKFLOW,
        FAILED_REMINDER_WORKFLOW,
        INBOX_WORKFLOW,
        QUERY_FAILED_MESSAGE,
        QUERY_INBOX,
        SIGNAL_DISCARD,
        SIGNAL_INBOX_MESSAGE,
        SIGNAL_REDELIVER,
        FailedAttempt,
        FailedMessageInput,
        FailedMessageRecord,
        FailedMessagesSummary,
        FailedMessageState,
        FailedResolution,
        HandleOutcome,
        HandleRequest,
        InboxEvent,
        InboxRunInput,
        InboxSummary,
        InboxTuning,
        IncomingMessage,
        OperatorRequest,
        ParkResult,
        ReplyReservation,
        ReplySlot,
        failed_message_workflow_id,
        message_event_id,
    )
    from domain.media import (
        ACTIVITY_DOWNLOAD_MEDIA,
        ACTIVITY_MEDIA_FAILED,
        ACTIVITY_MEDIA_HOLDER,
        ERROR_MEDIA_GONE,
        MediaDescriptor,
        MediaDownload,
        MediaFailure,
        MediaState,
    )
    from domain.session import (
        ACTIVITY_SEND_ALERT,
        ACTIVITY_SEND_MESSAGE,
        ERROR_NOT_CONNECTED,
        SendRequest,
        SendResult,
        SessionAlert,
    )


def _message_event(msg: IncomingMessage) -> dict[str, Any]:
    event = {
        "messageId": msg.message_id, "chat": msg.chat, "sender": msg.sender, "senderPhone": msg.sender_phone,
        "pushName": msg.push_name, "text": msg.text, "messageType": msg.message_type,
        "sentAt": msg.timestamp.isoformat(), "fromMe": msg.from_me, "metadata": msg.metadata,
    }
    if msg.media is not None:  # its URL is made absolute by the activity that posts it (the API's base URL)
        event["media"] = msg.media.to_wire("", msg.company_id)
    return event


class _MessageProcessing:
    """Handler → reply → events for one message; shared by the inbox and the failed-message workflow."""

    def __init__(self, tuning: InboxTuning, claim: str) -> None:
        self.tuning = tuning
        self.claim = claim
        self.events: list[tuple[InboxEvent, asyncio.Future[Any]]] = []

    async def handle(self, msg: IncomingMessage, *, retry: bool = True) -> HandleOutcome:
        """The handler: first as a local activity (no task round trip: the common, healthy case), then,
        if that attempt fails, as an activity retried with backoff for the retry window — visible in
        the UI as a pending activity with its attempt count and last failure."""
        t = self.tuning
        request = HandleRequest(msg, self.claim)
        attempt_timeout = timedelta(seconds=t.handler_attempt_timeout_s)
        try:
            outcome: HandleOutcome = await workflow.execute_local_activity(
                ACTIVITY_HANDLE_INCOMING,
                request,
                result_type=HandleOutcome,
                start_to_close_timeout=attempt_timeout,
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"handle {msg.message_id}",
            )
        except FailureError:  # a failed local activity may surface as its bare cause (ApplicationError, timeout)
            outcome = await workflow.execute_activity(
                ACTIVITY_HANDLE_INCOMING,
                request,
                result_type=HandleOutcome,
                start_to_close_timeout=attempt_timeout,
                schedule_to_close_timeout=timedelta(seconds=t.retry_window_s) if retry else None,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=t.retry_initial_s),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=t.retry_max_interval_s),
                    maximum_attempts=0 if retry else 1,
                ),
                summary=f"handle {msg.message_id} (retrying)",
            )
        if outcome.handler == "duplicate":
            workflow.logger.info("message handled by another run, dropped message_id=%s", msg.message_id)
        if outcome.event_webhook:
            self._event(msg.company_id, "message", message_event_id(msg.company_id, msg.message_id),
                        _message_event(msg))
        return outcome

    async def store_media(self, msg: IncomingMessage) -> IncomingMessage:
        """Download the message's media into the blob store before its handler sees it (issue #11).

        Each attempt runs on the connector that holds the session now (asked for each time: a session
        may move), once; a failed one is tried again after a durable timer, with backoff, for the
        download window. Media that WhatsApp no longer has, or that are too large, fail at once. Either
        way the message goes on: with its media stored, or ``failed`` with the reason.
        """
        assert msg.media is not None
        t = self.tuning
        deadline = workflow.now() + timedelta(seconds=t.media_download_window_s)
        delay = t.retry_initial_s
        holder: str | None = None
        error = "not downloaded"
        while True:
            try:
                if holder is None:
                    holder = await workflow.execute_activity(
                        ACTIVITY_MEDIA_HOLDER, msg.company_id, result_type=str,
                        start_to_close_timeout=timedelta(seconds=10),
                        schedule_to_close_timeout=max(timedelta(seconds=1), deadline - workflow.now()),
                        retry_policy=RetryPolicy(
                            initial_interval=timedelta(seconds=t.retry_initial_s),
                            maximum_interval=timedelta(seconds=max(t.retry_max_interval_s, t.retry_initial_s))),
                    )
                media: MediaDescriptor = await workflow.execute_activity(
                    ACTIVITY_DOWNLOAD_MEDIA, MediaDownload(msg.company_id, msg.media.id), task_queue=holder,
                    result_type=MediaDescriptor,
                    schedule_to_start_timeout=timedelta(seconds=10),
                    start_to_close_timeout=timedelta(seconds=t.media_download_timeout_s),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    summary=f"download {msg.media.kind.value} of {msg.message_id}",
                )
                return dataclasses.replace(msg, media=media)
            except ActivityError as err:
                error = _root_message(err)
                if _root_type(err) == ERROR_MEDIA_GONE or workflow.now() >= deadline:
                    break
                if _not_sent(err) or isinstance(err.cause, TemporalTimeoutError):
                    holder = None  # ask again where the session is
            await workflow.sleep(delay)
            delay = min(delay * 2, t.retry_max_interval_s)
        failed: MediaDescriptor = await workflow.execute_activity(
            ACTIVITY_MEDIA_FAILED, MediaFailure(msg.company_id, msg.media.id, error), result_type=MediaDescriptor,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
        )
        return dataclasses.replace(msg, media=failed)

    async def reply(self, msg: IncomingMessage, outcome: HandleOutcome) -> SendResult:
        """Send the handler's reply through the send path (rate limit, connected holder, one attempt)."""
        assert outcome.reply is not None
        t = self.tuning
        holder = outcome.holder_queue
        deadline = workflow.now() + timedelta(seconds=t.reply_window_s)
        delay = t.retry_initial_s
        while True:
            while holder is None:
                slot: ReplySlot = await workflow.execute_activity(
                    ACTIVITY_RESERVE_REPLY,
                    ReplyReservation(msg.company_id, msg.message_id),
                    result_type=ReplySlot,
                    start_to_close_timeout=timedelta(seconds=10),
                    # Not connected → retried with backoff until the session is back or the window ends.
                    schedule_to_close_timeout=max(timedelta(seconds=1), deadline - workflow.now()),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=t.retry_max_interval_s)),
                )
                if slot.allowed:
                    holder = slot.holder_queue
                else:  # over the company's send rate limit: wait for the slot (a durable timer)
                    await workflow.sleep(max(0.05, slot.retry_after_s))
            try:
                result: SendResult = await workflow.execute_activity(
                    ACTIVITY_SEND_MESSAGE,
                    SendRequest(company_id=msg.company_id, to=msg.chat, text=outcome.reply,
                                quoted=msg.message_id, idempotency_key=f"reply-{msg.message_id}"),
                    task_queue=holder,
                    result_type=SendResult,
                    # As SendMessage: one attempt (a retry after a lost answer could send twice). A task
                    # never picked up (the holder died with it queued) times out schedule-to-start.
                    schedule_to_start_timeout=timedelta(seconds=10),
                    start_to_close_timeout=timedelta(seconds=20),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    summary=f"reply to {msg.message_id}",
                )
            except ActivityError as err:
                if not _not_sent(err) or workflow.now() >= deadline:
                    raise
                # Nothing went out (no session at the holder, or no holder took the task): try again.
                holder = None
                await workflow.sleep(delay)
                delay = min(delay * 2, t.retry_max_interval_s)
                continue
            if outcome.event_webhook:
                self._event(msg.company_id, "message_sent", f"message_sent-{msg.company_id}-{result.message_id}",
                            {"messageId": result.message_id, "to": msg.chat, "inReplyTo": msg.message_id})
            return result

    def _event(self, company_id: str, kind: str, event_id: str, data: dict[str, Any]) -> None:
        self.deliver(InboxEvent(company_id, kind, event_id, workflow.now().isoformat(), data))

    def deliver(self, event: InboxEvent) -> None:
        """Start one event-webhook delivery (E2); it runs beside the chat's messages, never blocking them."""
        t = self.tuning
        handle = workflow.start_activity(
            ACTIVITY_DELIVER_EVENT, event, **handler_retry_options(t), summary=f"{event.type} event",
        )
        handle.add_done_callback(self._delivered)
        self.events.append((event, handle))

    def _delivered(self, done: asyncio.Future[Any]) -> None:
        self.events = [(e, h) for e, h in self.events if h is not done]
        if not done.cancelled() and done.exception() is not None:
            workflow.logger.warning("event webhook delivery given up: %s", done.exception())

    def undelivered(self) -> list[InboxEvent]:
        return [e for e, h in self.events if not h.done()]


def handler_retry_options(t: InboxTuning) -> dict[str, Any]:
    """Timeouts and retries of a webhook call: one attempt bounded, retried with backoff for the window."""
    return {
        "start_to_close_timeout": timedelta(seconds=t.handler_attempt_timeout_s),
        "schedule_to_close_timeout": timedelta(seconds=t.retry_window_s),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=t.retry_initial_s),
            maximum_interval=timedelta(seconds=t.retry_max_interval_s),
        ),
    }


def _not_sent(err: ActivityError) -> bool:
    """The send surely did not happen: the holder refused (not connected) or never started the task."""
    cause = err.cause
    if isinstance(cause, TemporalTimeoutError):
        return cause.type is TimeoutType.SCHEDULE_TO_START
    return _root_type(err) == ERROR_NOT_CONNECTED


def _root_type(err: BaseException) -> str | None:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.type
        cause = cause.__cause__
    return None


def _root_message(err: BaseException) -> str:
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return str(cause) or type(cause).__name__


# Not sandboxed (like SendMessage): the code here uses only dataclasses and the workflow API, and
# the sandbox's per-activation cost is worker CPU taken from every message (measured with bench/inbox.py).
@workflow.defn(name=INBOX_WORKFLOW, sandboxed=False)
class InboxWorkflow:
    @workflow.init
    def __init__(self, inp: InboxRunInput) -> None:
        self._company_id = inp.company_id
        self._chat = inp.chat
        self._pending: list[IncomingMessage] = list(inp.pending)
        self._seen: list[str] = list(inp.seen)
        self._seen_set = set(self._seen)
        self._handled = inp.handled_before
        self._handled_this_run = 0
        self._duplicates = inp.duplicates_before
        self._last = inp.last_message_id
        self._tuning = inp.tuning

    @workflow.signal(name=SIGNAL_INBOX_MESSAGE)
    def message(self, msg: IncomingMessage) -> None:
        if msg.message_id in self._seen_set:
            self._duplicates += 1
            workflow.logger.info("duplicate dropped message_id=%s", msg.message_id)
            return
        self._seen.append(msg.message_id)
        self._seen_set.add(msg.message_id)
        if msg.received_at is None:
            msg = dataclasses.replace(msg, received_at=workflow.now())
        self._pending.append(msg)

    @workflow.query(name=QUERY_INBOX)
    def summary(self) -> InboxSummary:
        oldest = self._pending[0].received_at if self._pending else None
        return InboxSummary(self._company_id, self._chat, self._handled, self._duplicates, len(self._pending),
                            self._last, oldest)

    @workflow.run
    async def run(self, inp: InboxRunInput) -> InboxSummary:
        if self._tuning is None:
            self._tuning = await workflow.execute_local_activity(
                ACTIVITY_INBOX_TUNING, result_type=InboxTuning, start_to_close_timeout=timedelta(seconds=10)
            )
        tuning = self._tuning
        info = workflow.info()
        processing = _MessageProcessing(tuning, f"{info.workflow_id}/{info.first_execution_run_id}")
        for event in inp.events:
            processing.deliver(event)
        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=tuning.idle_s)
            except TimeoutError:
                # Idle: done once the event deliveries are (messages arriving meanwhile are served first).
                await workflow.wait_condition(lambda: bool(self._pending) or not processing.events)
                if not self._pending:
                    break  # a later message starts a new run (signal-with-start)
            while self._pending:
                msg = self._pending[0]
                await self._process(processing, msg)
                self._pending.pop(0)
                self._handled += 1
                self._handled_this_run += 1
                self._last = msg.message_id
                workflow.set_current_details(
                    f"chat {self._chat}: {self._handled} handled, {len(self._pending)} waiting, "
                    f"last {msg.message_id}"
                )
                if (self._handled_this_run >= tuning.max_messages_per_run
                        or workflow.info().is_continue_as_new_suggested()):
                    # Commit the handlers' local-activity results in a workflow task of their own first:
                    # a task that also carries continue-as-new is rejected when a message arrives during
                    # it, and its local activities (the webhook) would then run a second time.
                    await workflow.sleep(timedelta(milliseconds=10))
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    del self._seen[: max(0, len(self._seen) - tuning.seen_ids)]
                    workflow.continue_as_new(
                        InboxRunInput(self._company_id, self._chat, list(self._pending), list(self._seen),
                                      tuning, self._handled, self._duplicates, self._last,
                                      processing.undelivered())
                    )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.summary()

    async def _process(self, processing: _MessageProcessing, msg: IncomingMessage) -> None:
        if msg.media is not None and msg.media.state is MediaState.PENDING:
            msg = await processing.store_media(msg)
        try:
            outcome = await processing.handle(msg)
        except ActivityError as err:
            await self._give_up(processing, msg, err)
            return
        if outcome.reply:
            try:
                await processing.reply(msg, outcome)
            except ActivityError as err:
                await _alert(f"inbox: reply to message {msg.message_id} in chat {msg.chat} was not sent: "
                             f"{_root_message(err)}", msg.company_id)

    async def _give_up(self, processing: _MessageProcessing, msg: IncomingMessage, err: ActivityError) -> None:
        """The handler failed for the whole window: hand the message to a workflow that keeps it until an
        operator redelivers or discards it (it alerts), and go on with the chat."""
        tuning = processing.tuning
        wf_id = failed_message_workflow_id(msg.company_id, msg.message_id)
        reason = f"not handled after {tuning.retry_window_s:g} s: {_root_message(err)}"
        try:
            await workflow.start_child_workflow(
                FAILED_MESSAGE_WORKFLOW,
                FailedMessageInput(msg, reason, tuning, processing.claim),
                id=wf_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                static_summary=f"failed message {msg.message_id} of chat {msg.chat}: waits for redeliver/discard",
            )
        except WorkflowAlreadyStartedError:
            pass


async def _alert(text: str, company_id: str | None, severity: str = "warning") -> None:
    try:
        await workflow.execute_activity(
            ACTIVITY_SEND_ALERT,
            SessionAlert(text=text, company_id=company_id, severity=severity),
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(hours=1),
        )
    except ActivityError as err:  # an alert channel down for an hour must not fail the chat's inbox
        workflow.logger.warning("alert not delivered: %s (%s)", _root_message(err), text)


@workflow.defn(name=FAILED_MESSAGE_WORKFLOW, sandboxed=False)
class FailedInboxMessageWorkflow:
    """A message whose handler failed for the whole retry window, waiting for a person.

    It first keeps the message in PostgreSQL (the durable copy; alerting when it is the
    company's first waiting one), then waits, without a timeout, for a signal:
    ``redeliver`` runs the handler once more in the inbox's name (its claim on the
    message id) and sends the reply through the send path — on success the row is
    resolved and the workflow completes, on failure the row counts the attempt and it
    waits again; ``discard`` resolves the row and completes. Running workflows are not
    touched by the namespace retention.
    """

    @workflow.init
    def __init__(self, inp: FailedMessageInput) -> None:
        msg = inp.message
        self._state = FailedMessageState(msg.company_id, msg.message_id, msg.chat, inp.error)
        self._requests: list[OperatorRequest] = list(inp.requests)

    @workflow.signal(name=SIGNAL_REDELIVER)
    def redeliver(self, actor: str | None = None) -> None:
        self._requests.append(OperatorRequest(SIGNAL_REDELIVER, actor or "temporal-signal"))

    @workflow.signal(name=SIGNAL_DISCARD)
    def discard(self, actor: str | None = None) -> None:
        self._requests.append(OperatorRequest(SIGNAL_DISCARD, actor or "temporal-signal"))

    @workflow.query(name=QUERY_FAILED_MESSAGE)
    def state(self) -> FailedMessageState:
        return self._state

    def _details(self) -> None:
        st = self._state
        workflow.set_current_details(
            f"message {st.message_id} of chat {st.chat} waits for an operator ({st.attempts} attempt(s); "
            f"last error: {st.error}). Send the signal `redeliver` to deliver it again, or `discard`."
        )

    @workflow.run
    async def run(self, inp: FailedMessageInput) -> str:
        msg = inp.message
        tuning = inp.tuning
        if tuning is None:
            tuning = await workflow.execute_local_activity(
                ACTIVITY_INBOX_TUNING, result_type=InboxTuning, start_to_close_timeout=timedelta(seconds=10)
            )
        parked: ParkResult = await workflow.execute_activity(
            ACTIVITY_PARK_FAILED,
            FailedMessageRecord(msg, inp.error, inp.claim, workflow.info().workflow_id),
            result_type=ParkResult,
            start_to_close_timeout=timedelta(seconds=30),
            # Until PostgreSQL takes it: the message must not be lost.
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
        )
        self._state.attempts = parked.attempts
        if parked.first_for_company and not inp.requests:
            await _alert(f"inbox: message {msg.message_id} in chat {msg.chat} {inp.error}. It waits for an "
                         f"operator: `waorch inbox failed list`, then redeliver or discard (workflow "
                         f"{workflow.info().workflow_id}: signal redeliver/discard).",
                         msg.company_id, severity="critical")
        processing = _MessageProcessing(tuning, inp.claim)
        while self._state.status == "waiting":
            self._details()
            await workflow.wait_condition(lambda: bool(self._requests))
            request = self._requests.pop(0)
            if request.action == SIGNAL_DISCARD:
                await self._resolve("discarded", request.actor)
                break
            self._state.status = "redelivering"
            try:
                outcome = await processing.handle(msg, retry=False)
            except ActivityError as err:
                self._state.error = _root_message(err)
                self._state.attempts = await workflow.execute_activity(
                    ACTIVITY_FAILED_ATTEMPT, FailedAttempt(msg.company_id, msg.message_id, self._state.error),
                    result_type=int, start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
                )
                self._state.status = "waiting"
                if workflow.info().is_continue_as_new_suggested():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(FailedMessageInput(msg, self._state.error, tuning, inp.claim,
                                                                list(self._requests)))
                continue
            if outcome.reply:
                try:
                    await processing.reply(msg, outcome)
                except ActivityError as err:  # handled is handled: the reply's loss is reported, not retried
                    await _alert(f"inbox: reply to redelivered message {msg.message_id} in chat {msg.chat} was "
                                 f"not sent: {_root_message(err)}", msg.company_id)
            await self._resolve("redelivered", request.actor)
        workflow.set_current_details(f"message {msg.message_id}: {self._state.status}")
        await workflow.wait_condition(lambda: not processing.events)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state.status

    async def _resolve(self, outcome: str, actor: str) -> None:
        st = self._state
        await workflow.execute_activity(
            ACTIVITY_RESOLVE_FAILED, FailedResolution(st.company_id, st.message_id, outcome, actor),
            result_type=bool, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
        )
        st.status = outcome


@workflow.defn(name=FAILED_REMINDER_WORKFLOW, sandboxed=False)
class FailedMessagesReminderWorkflow:
    """Daily (a Temporal Schedule): while failed messages wait, say so once, with the count per company."""

    @workflow.run
    async def run(self, _: object = None) -> FailedMessagesSummary:
        summary: FailedMessagesSummary = await workflow.execute_activity(
            ACTIVITY_FAILED_SUMMARY, result_type=FailedMessagesSummary, start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
        if summary.total:
            shown = ", ".join(f"{c.company_id}: {c.waiting} (since {c.oldest:%Y-%m-%d %H:%M} UTC)"
                              for c in summary.companies[:10])
            more = f" and {len(summary.companies) - 10} more companies" if len(summary.companies) > 10 else ""
            await _alert(f"inbox: {summary.total} failed message(s) still wait for an operator — {shown}{more}. "
                         "`waorch inbox failed list`; redeliver or discard them.", None)
        workflow.set_current_details(f"{summary.total} failed message(s) waiting")
        return summary
