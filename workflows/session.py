"""SessionWorkflow: the single owner of one company's WhatsApp session (SPEC S1-S11, H4).

A *hold* is one attempt at a connection: the short ``hold_session`` activity on the shared
connector queue claims the company for one connector process and starts its client; the
connection then lives in that process, costing Temporal nothing while idle. The connector reports
what happens by signal (``qr``, ``pairing_code``, ``connected``, ``disconnected``) and how the hold
ended (``hold_ended``). If its process dies, another connector adopts the hold under the same id
(connector/holds.py) and, when the queue that reaches it changed, says ``connected`` again.

This workflow decides what happens when a hold ends: durable exponential backoff with jitter,
waiting for a relink after 440, deleting credentials after a logout, waiting out a temporary ban.
Handlers only record requests; the run loop is the one place that acts on them, so no two
coroutines ever drive the session at once.

"Connected but dead" (issue 11.8): when a send of the current hold got no server ack in time the
holder signals ``degraded``. The session is then ``degraded``, and the first time it asks for one
re-hold (the ``_restart_hold`` path: release, hold again); degraded again after that, it starts a
down episode, so an alert goes out under the H4 grace rules unless a send is acknowledged first
(``delivering``: connected again). The count of re-holds is carried through continue-as-new and
cleared by an acknowledged send or an operator (relink, pause, logout).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
)
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from domain.session import (
        ACTIVITY_DELETE_CREDENTIALS,
        ACTIVITY_END_HOLD,
        ACTIVITY_HOLD_SESSION,
        ACTIVITY_LOGOUT_DEVICE,
        ACTIVITY_PUBLISH_EVENT,
        ACTIVITY_RELEASE_SESSION,
        ACTIVITY_SEND_ALERT,
        ERROR_CONNECTOR_SHUTDOWN,
        ERROR_HELD_ELSEWHERE,
        QUERY_STATUS,
        SEARCH_ATTRIBUTE_COMPANY_ID,
        SEARCH_ATTRIBUTE_SESSION_STATE,
        SESSION_WORKFLOW,
        SIGNAL_CONNECTED,
        SIGNAL_DEGRADED,
        SIGNAL_DELIVERING,
        SIGNAL_DISCONNECTED,
        SIGNAL_HOLD_ENDED,
        SIGNAL_PAIRING_CODE,
        SIGNAL_PAUSE,
        SIGNAL_QR,
        SIGNAL_RELINK,
        SIGNAL_RESUME,
        UPDATE_INITIALIZE,
        UPDATE_LOGOUT,
        UPDATE_REMOVE,
        ConnectedSignal,
        CredentialsDeletion,
        DegradedSignal,
        DeliveringSignal,
        DisconnectedSignal,
        HeldElsewhere,
        HoldEndedSignal,
        HoldOutcome,
        HoldOutcomeKind,
        HoldRequest,
        HoldStarted,
        InitializeRequest,
        InitializeResult,
        PairingCodeSignal,
        QrSignal,
        ReleaseRequest,
        SessionAlert,
        SessionEventRequest,
        SessionStatus,
        SessionWorkflowInput,
    )
    from domain.states import SessionState

COMPANY_ID_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE_COMPANY_ID)
SESSION_STATE_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE_SESSION_STATE)

HISTORY_KEEP = 30
RELEASE_TIMEOUT = timedelta(seconds=30)
WAITING_STATES = frozenset({SessionState.REPLACED, SessionState.LOGGED_OUT, SessionState.FAILED})


def backoff_delay_s(attempt: int, base_s: float, cap_s: float, rnd: float) -> float:
    """Delay before reconnect ``attempt`` (1-based): base·2^(n-1), capped, minus up to 25 % jitter.

    The jitter only shortens the wait, so consecutive delays still at least
    grow by 1.5x until the cap, and a thousand sessions dropped together do
    not reconnect in one burst.
    """
    raw = min(cap_s, base_s * 2 ** min(attempt - 1, 60))
    return float(raw * (0.75 + 0.25 * rnd))


# Not sandboxed: it imports only domain/ (passed through anyway) and does no I/O, and a sandbox per
# run is most of the worker's CPU once there are thousands of sessions (bench/scale.py).
@workflow.defn(name=SESSION_WORKFLOW, sandboxed=False)
class SessionWorkflow:
    @workflow.init
    def __init__(self, inp: SessionWorkflowInput) -> None:
        self._inp = inp
        self._st = inp.carried or SessionStatus(
            company_id=inp.company_id, state=SessionState.STARTING, since=workflow.now()
        )
        self._pairing_phone = inp.pairing_phone
        # Requests recorded by handlers, acted on by the run loop.
        self._relink = False
        self._pause = False
        self._resume = False
        self._logout = False
        self._remove = False
        self._init = False
        self._restart_hold = False
        # The current hold attempt: its id (also in self._st.hold_id) and how it ended, once it has.
        self._hold_id = self._st.hold_id or ""
        self._hold_ended: HoldOutcome | None = None
        self._hold_connected = self._st.state.holds_connection and bool(self._hold_id)
        # Connectors that said "connected" for a hold this workflow no longer has: to be closed.
        self._stale_holders: list[tuple[str, str]] = []
        # Grace-period alerts (SPEC H4).
        self._down_since: datetime | None = None
        self._down_episode = 0
        self._alerts_sending = 0
        self._alert_tasks: set[asyncio.Task[None]] = set()
        self._finished = False

    # ------------------------------------------------------------------ run loop

    @workflow.run
    async def run(self, inp: SessionWorkflowInput) -> SessionStatus:
        self._publish_state(force=True)
        if inp.down_since is not None and self._st.state is not SessionState.CONNECTED:
            self._start_down_episode(since=inp.down_since)  # the grace period goes on across runs
        while True:
            if self._remove:
                await self._do_remove()
                return self._st
            if self._logout:
                await self._do_logout()
                continue
            state = self._st.state
            if self._pause and state is not SessionState.PAUSED:
                self._pause = False
                self._calm_down()
                self._set_state(SessionState.PAUSED)
                await self._event("paused")
                continue
            if state is SessionState.PAUSED:
                self._pause = False
                await workflow.wait_condition(
                    lambda: self._resume or self._relink or self._init or self._logout or self._remove
                )
                if self._logout or self._remove:
                    continue
                self._clear_wakers()
                self._st.attempt = 0
                self._set_state(SessionState.CONNECTING)
                await self._event("resumed")
                continue
            if state in WAITING_STATES:
                await workflow.wait_condition(
                    lambda: self._relink or self._init or self._logout or self._remove or self._pause
                )
                if self._logout or self._remove or self._pause:
                    continue
                self._clear_wakers()
                self._st.attempt = 0
                self._set_state(SessionState.CONNECTING)
                continue
            if state is SessionState.BACKOFF:
                await self._wait_backoff()
                if self._logout or self._remove or self._pause:
                    continue
                if self._relink or self._init:
                    self._st.attempt = 0
                self._clear_wakers()
                self._set_state(SessionState.CONNECTING)
                await self._event("reconnecting", attempt=str(self._st.attempt))
            await self._continue_as_new_if_suggested()
            if not self._hold_id:
                started = await self._start_hold()
                if isinstance(started, tuple):
                    await self._after_hold(started)
                    continue
            outcome = await self._wait_hold()
            if outcome is None:
                continue  # continue-as-new is due while the hold goes on: the next run waits for it
            await self._after_hold(outcome)

    def _may_continue_as_new(self) -> bool:
        return (
            workflow.info().is_continue_as_new_suggested()
            and self._alerts_sending == 0
            and not self._any_request()
            and self._hold_ended is None
            and not self._stale_holders
        )

    async def _continue_as_new_if_suggested(self) -> None:
        if self._may_continue_as_new():
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._may_continue_as_new():
                # A grace timer still sleeping is not lost: its start goes with the new run; so
                # does a hold that is still on (its id and holder are in the carried status).
                workflow.continue_as_new(
                    dataclasses.replace(
                        self._inp, carried=self._st, pairing_phone=self._pairing_phone,
                        down_since=self._down_since,
                    )
                )

    def _any_request(self) -> bool:
        return any(
            (self._relink, self._pause, self._resume, self._logout, self._remove, self._init, self._restart_hold)
        )

    def _clear_wakers(self) -> None:
        self._relink = self._resume = self._init = False

    async def _wait_backoff(self) -> None:
        due = self._st.next_retry_at
        remaining = (due - workflow.now()).total_seconds() if due else 0.0
        if remaining <= 0:
            return
        try:
            await workflow.wait_condition(
                lambda: self._relink or self._init or self._logout or self._remove or self._pause,
                timeout=timedelta(seconds=remaining),
            )
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ one hold attempt

    async def _start_hold(self) -> HoldStarted | tuple[HoldOutcome, bool]:
        """Ask any live connector to hold the session; returns who holds it, or how the ask failed
        (the outcome, and whether to try again at once)."""
        hold_id = str(workflow.uuid4())
        self._hold_ended = None
        self._hold_connected = False
        self._restart_hold = False
        self._clear_wakers()  # this attempt is what relink / initialize / resume asked for
        if self._st.state not in (SessionState.STARTING, SessionState.CONNECTING):
            self._set_state(SessionState.CONNECTING)
        req = HoldRequest(
            company_id=self._inp.company_id,
            workflow_id=workflow.info().workflow_id,
            jid=self._st.jid,
            new_device=self._st.jid is None,
            pairing_phone=self._pairing_phone,
            hold_id=hold_id,
        )
        # Signals of this hold may arrive before the activity's answer (a fast connect).
        self._hold_id = self._st.hold_id = hold_id
        try:
            started: HoldStarted = await workflow.execute_activity(
                ACTIVITY_HOLD_SESSION,
                req,
                task_queue=self._inp.connector_queue,
                result_type=HoldStarted,
                # Bounds the wait for a live connector too: none taking it is a failed attempt.
                schedule_to_close_timeout=timedelta(seconds=self._inp.hold_start_timeout_s),
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"hold {self._inp.company_id}",
            )
        except ActivityError as err:
            self._forget_hold()
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == ERROR_HELD_ELSEWHERE:
                # A live connector still has a hold of this company that this workflow no longer
                # has: close it there, then try again at once.
                other = HeldElsewhere(**cause.details[0]) if cause.details else None
                released = other is not None and await self._release(other.holder_queue, other.hold_id, logout=False)
                return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, "held by another connector"), released
            if isinstance(cause, ApplicationError) and cause.type == ERROR_CONNECTOR_SHUTDOWN:
                return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, str(cause.message)), False
            if isinstance(cause, ActivityTimeoutError):
                # No connector answered in time; one may have claimed it and died: nobody may adopt it.
                await self._end_hold_record(hold_id)
                return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, "no connector took the session in time"), False
            return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"hold failed: {cause or err}"), False
        if self._hold_id == hold_id:
            self._st.holder_queue = started.holder_queue
            self._st.holder = started.holder
        return started

    async def _wait_hold(self) -> tuple[HoldOutcome, bool] | None:
        """Wait until the current hold ends or a request ends it; None when continue-as-new is due first."""
        hold_id = self._hold_id
        await workflow.wait_condition(
            lambda: self._hold_ended is not None or self._pause or self._logout or self._remove
            or self._restart_hold or bool(self._stale_holders) or self._may_continue_as_new()
        )
        await self._release_stale()
        if self._hold_ended is not None:
            outcome = self._hold_ended
        elif self._pause or self._logout or self._remove or self._restart_hold:
            # Asked to stop: the holder closes it (and unlinks the device on logout / remove). A holder
            # that cannot be reached has its hold forgotten, so no connector adopts it; if it is alive,
            # it sees its row gone and closes the connection within seconds.
            queue = self._st.holder_queue
            if not (queue and await self._release(queue, hold_id, logout=self._logout or self._remove)):
                await self._end_hold_record(hold_id)
            outcome = HoldOutcome(HoldOutcomeKind.STOPPED, "stopped on request")
        else:
            return None
        self._forget_hold()
        return outcome, False

    def _forget_hold(self) -> None:
        self._hold_id = ""
        self._hold_ended = None
        self._st.hold_id = None
        self._st.holder_queue = None
        self._st.holder = None
        self._st.qr = None
        self._st.pairing_code = None

    async def _release(self, queue: str, hold_id: str, *, logout: bool) -> bool:
        """Ask the connector on ``queue`` to close that hold's connection (logout: and unlink the device).

        Returns whether it had the connection and closed it.
        """
        try:
            released: bool = await workflow.execute_activity(
                ACTIVITY_LOGOUT_DEVICE if logout else ACTIVITY_RELEASE_SESSION,
                ReleaseRequest(self._inp.company_id, hold_id),
                task_queue=queue,
                result_type=bool,
                schedule_to_close_timeout=RELEASE_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
            return released
        except ActivityError as err:
            workflow.logger.warning("release failed company_id=%s error=%s", self._inp.company_id, err.cause)
            return False

    async def _release_stale(self) -> None:
        while self._stale_holders:
            queue, hold_id = self._stale_holders.pop(0)
            await self._release(queue, hold_id, logout=False)

    async def _end_hold_record(self, hold_id: str) -> None:
        await workflow.execute_activity(
            ACTIVITY_END_HOLD,
            ReleaseRequest(self._inp.company_id, hold_id),
            task_queue=self._inp.core_queue,
            result_type=bool,
            start_to_close_timeout=timedelta(seconds=30),
        )

    async def _after_hold(self, result: tuple[HoldOutcome, bool]) -> None:
        """Act on how a hold ended; ``retry_now``: the cause is gone already, hold again without waiting."""
        outcome, retry_now = result
        kind = outcome.kind
        was_connected = self._hold_connected
        self._hold_connected = False
        if kind is HoldOutcomeKind.STOPPED and self._any_request():
            return  # pause / logout / remove / restart: the run loop goes on from the request
        if kind is HoldOutcomeKind.REPLACED:
            self._calm_down()
            self._st.last_error = outcome.detail or "connection replaced (440)"
            self._set_state(SessionState.REPLACED)
            await self._alert(
                f"WhatsApp session of {self._inp.company_id} was replaced by another client (440); "
                "not reconnecting until relink", "critical",
            )
            return
        if kind is HoldOutcomeKind.LOGGED_OUT:
            self._calm_down()
            await self._delete_credentials(mark_removed=False)
            self._st.last_error = outcome.detail or "logged out"
            self._set_state(SessionState.LOGGED_OUT)
            if not (self._logout or self._remove):  # not what an operator's logout caused
                await self._alert(f"WhatsApp session of {self._inp.company_id} was logged out; needs a new QR",
                                  "critical")
            return
        if kind is HoldOutcomeKind.PAIRING_TIMEOUT:
            self._calm_down()
            self._st.jid = None
            self._st.phone = None
            self._pairing_phone = None
            self._st.last_error = outcome.detail or "pairing not completed in time"
            self._set_state(SessionState.LOGGED_OUT)
            return
        if kind is HoldOutcomeKind.CLIENT_OUTDATED:
            # Retrying cannot help: WhatsApp refuses this client version until neonize is updated.
            self._calm_down()
            self._st.last_error = outcome.detail or "client outdated (405)"
            self._st.next_retry_at = None
            self._set_state(SessionState.FAILED)
            await self._event("failed", reason=self._st.last_error)
            await self._alert(
                f"WhatsApp refuses the client version of {self._inp.company_id} (405 outdated): update neonize, "
                "then relink", "critical",
            )
            return
        if kind is HoldOutcomeKind.TEMP_BANNED:
            self._start_down_episode()
            wait = max(outcome.ban_expires_s or self._inp.backoff_cap_s, 1.0)
            self._st.last_error = outcome.detail or "temporarily banned"
            self._st.next_retry_at = workflow.now() + timedelta(seconds=wait)
            self._set_state(SessionState.BACKOFF)
            await self._alert(
                f"WhatsApp temporarily banned company {self._inp.company_id}; retrying in {wait:.0f}s", "critical"
            )
            return
        # Transient: dropped, dial failed, or stopped for no reason we asked for.
        self._st.last_error = outcome.detail or kind.value
        self._start_down_episode()
        if was_connected:
            self._st.attempt = 0
        if retry_now:
            self._st.next_retry_at = None
            self._set_state(SessionState.CONNECTING)
            return
        self._st.attempt += 1
        if self._st.attempt > self._inp.backoff_max_attempts:
            self._calm_down()
            self._st.next_retry_at = None
            self._set_state(SessionState.FAILED)
            await self._event("failed", reason=self._st.last_error)
            await self._alert(
                f"WhatsApp session of {self._inp.company_id} failed after {self._inp.backoff_max_attempts} "
                f"reconnect attempts ({self._st.last_error}); waiting for relink", "critical",
            )
            return
        delay = backoff_delay_s(
            self._st.attempt, self._inp.backoff_base_s, self._inp.backoff_cap_s, workflow.random().random()
        )
        self._st.next_retry_at = workflow.now() + timedelta(seconds=delay)
        self._set_state(SessionState.BACKOFF)

    # ------------------------------------------------------------------ logout / remove

    async def _do_logout(self) -> None:
        self._calm_down()
        await self._delete_credentials(mark_removed=False)
        self._st.last_error = "logged out by request"
        self._set_state(SessionState.LOGGED_OUT)
        self._clear_wakers()
        self._pause = False
        self._logout = False

    async def _do_remove(self) -> None:
        self._calm_down()
        await self._delete_credentials(mark_removed=True)
        self._set_state(SessionState.STOPPED)
        self._finished = True
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _delete_credentials(self, *, mark_removed: bool) -> None:
        await workflow.execute_activity(
            ACTIVITY_DELETE_CREDENTIALS,
            CredentialsDeletion(self._inp.company_id, mark_removed=mark_removed),
            task_queue=self._inp.core_queue,
            result_type=int,
            start_to_close_timeout=timedelta(seconds=30),
        )
        self._st.jid = None
        self._st.phone = None
        self._pairing_phone = None

    # ------------------------------------------------------------------ alerts and events

    def _start_down_episode(self, since: datetime | None = None) -> None:
        if self._down_since is not None:
            return
        self._down_since = since or workflow.now()
        self._down_episode += 1
        task = asyncio.create_task(self._grace_alert(self._down_episode))
        self._alert_tasks.add(task)
        task.add_done_callback(self._alert_tasks.discard)

    def _calm_down(self) -> None:
        """The session is down on purpose or has already alerted: no grace alert for this episode."""
        self._down_since = None
        self._down_episode += 1

    async def _grace_alert(self, episode: int) -> None:
        assert self._down_since is not None
        elapsed = (workflow.now() - self._down_since).total_seconds()
        await workflow.sleep(timedelta(seconds=max(self._inp.alert_grace_s - elapsed, 0.001)))
        if self._down_episode == episode and self._down_since is not None:
            self._alerts_sending += 1
            how = "connected but not delivering" if self._st.state is SessionState.DEGRADED else "down"
            try:
                await self._alert(
                    f"WhatsApp session of {self._inp.company_id} {how} since {self._down_since:%H:%M:%S} UTC "
                    f"({self._st.last_error or 'disconnected'})", "warning",
                )
            finally:
                self._alerts_sending -= 1

    async def _alert(self, text: str, severity: str) -> None:
        await workflow.execute_activity(
            ACTIVITY_SEND_ALERT,
            SessionAlert(text=text, company_id=self._inp.company_id, severity=severity),
            task_queue=self._inp.core_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )

    async def _event(self, kind: str, **data: str) -> None:
        await workflow.execute_activity(
            ACTIVITY_PUBLISH_EVENT,
            SessionEventRequest(company_id=self._inp.company_id, type=kind, data=data),
            task_queue=self._inp.core_queue,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )

    def _set_state(self, state: SessionState) -> None:
        if state is self._st.state:
            self._publish_state(force=False)
            return
        self._st.state = state
        self._st.since = workflow.now()
        if state is not SessionState.BACKOFF:
            self._st.next_retry_at = None
        if state.needs_operator:
            self._st.degraded_reholds = 0  # a person takes over: a later degradation re-holds once again
        self._st.history.append(f"{workflow.now():%Y-%m-%dT%H:%M:%S}Z {state.value}")
        del self._st.history[:-HISTORY_KEEP]
        self._publish_state(force=True)

    def _publish_state(self, *, force: bool) -> None:
        st = self._st
        detail = f"**{st.state.value}**"
        if st.jid:
            detail += f" · {st.phone or st.jid}"
        if st.state is SessionState.BACKOFF and st.next_retry_at:
            detail += f" · attempt {st.attempt}, next at {st.next_retry_at:%H:%M:%S}"
        if st.last_error and st.state is not SessionState.CONNECTED:
            detail += f" · {st.last_error}"
        workflow.set_current_details(detail)
        if force and self._inp.search_attributes:
            workflow.upsert_search_attributes(
                [COMPANY_ID_KEY.value_set(self._inp.company_id), SESSION_STATE_KEY.value_set(st.state.value)]
            )

    # ------------------------------------------------------------------ connector signals

    def _stale(self, hold_id: str) -> bool:
        return bool(hold_id) and hold_id != self._hold_id

    @workflow.signal(name=SIGNAL_QR)
    def on_qr(self, sig: QrSignal) -> None:
        if self._stale(sig.hold_id):
            return
        self._st.qr = sig.code
        self._st.qr_sequence = sig.sequence
        self._st.holder_queue = sig.holder_queue
        self._set_state(SessionState.QR)

    @workflow.signal(name=SIGNAL_PAIRING_CODE)
    def on_pairing_code(self, sig: PairingCodeSignal) -> None:
        if self._stale(sig.hold_id):
            return
        self._st.pairing_code = sig.code
        self._st.holder_queue = sig.holder_queue
        self._set_state(SessionState.QR)

    @workflow.signal(name=SIGNAL_CONNECTED)
    def on_connected(self, sig: ConnectedSignal) -> None:
        if sig.hold_id != self._hold_id or not self._hold_id or self._hold_ended is not None:
            # A connector resumed a hold this workflow has given up (adopted it meanwhile): close it.
            if sig.hold_id and (sig.holder_queue, sig.hold_id) not in self._stale_holders:
                self._stale_holders.append((sig.holder_queue, sig.hold_id))
            return
        self._hold_connected = True
        st = self._st
        if st.jid is None:
            st.reconnects = 0  # a first pairing, or a new one after a logout: a new device
        elif not st.state.holds_connection or sig.holder_queue != st.holder_queue:
            st.reconnects += 1  # the same device back after a drop, relink, resume or adoption
        st.jid = sig.jid
        st.phone = sig.phone or st.phone
        st.holder_queue = sig.holder_queue
        st.holder = sig.holder or st.holder
        st.attempt = 0
        st.last_error = None
        st.qr = None
        st.pairing_code = None
        self._calm_down()
        self._set_state(SessionState.CONNECTED)

    @workflow.signal(name=SIGNAL_HOLD_ENDED)
    def on_hold_ended(self, sig: HoldEndedSignal) -> None:
        if sig.hold_id and sig.hold_id == self._hold_id and self._hold_ended is None:
            self._hold_ended = sig.outcome

    @workflow.signal(name=SIGNAL_DISCONNECTED)
    def on_disconnected(self, sig: DisconnectedSignal) -> None:
        if self._stale(sig.hold_id) or not self._st.state.holds_connection:
            return
        self._st.last_error = sig.reason
        self._start_down_episode()
        self._set_state(SessionState.CONNECTING)

    @workflow.signal(name=SIGNAL_DEGRADED)
    def on_degraded(self, sig: DegradedSignal) -> None:
        if sig.hold_id != self._hold_id or self._st.state is not SessionState.CONNECTED:
            return
        self._st.last_error = sig.reason
        self._set_state(SessionState.DEGRADED)
        if self._st.degraded_reholds == 0:
            self._st.degraded_reholds = 1
            self._restart_hold = True  # the run loop releases this hold and holds the session again, once
        else:
            self._start_down_episode()  # the re-hold did not help: alert after the grace period (H4)

    @workflow.signal(name=SIGNAL_DELIVERING)
    def on_delivering(self, sig: DeliveringSignal) -> None:
        if sig.hold_id != self._hold_id or self._st.state is not SessionState.DEGRADED:
            return
        self._st.degraded_reholds = 0
        self._st.last_error = None
        self._calm_down()
        self._set_state(SessionState.CONNECTED)

    # ------------------------------------------------------------------ operator signals

    @workflow.signal(name=SIGNAL_RELINK)
    def relink(self) -> None:
        if self._st.state in (SessionState.CONNECTED, SessionState.QR) or self._finished:
            return
        if self._st.state is SessionState.DEGRADED:
            # Held but not delivering: reconnect with the stored credentials, and a later degradation
            # re-holds once again before it alerts.
            self._st.degraded_reholds = 0
            self._restart_hold = True
            return
        self._relink = True

    @workflow.signal(name=SIGNAL_PAUSE)
    def pause(self) -> None:
        if self._st.state is not SessionState.PAUSED and not self._finished:
            self._pause = True

    @workflow.signal(name=SIGNAL_RESUME)
    def resume(self) -> None:
        if self._st.state is SessionState.PAUSED or self._pause:
            self._pause = False
            self._resume = True

    # ------------------------------------------------------------------ updates and query

    @workflow.update(name=UPDATE_INITIALIZE)
    async def initialize(self, req: InitializeRequest) -> InitializeResult:
        if self._st.state is not SessionState.CONNECTED:
            if req.pairing_phone and req.pairing_phone != self._pairing_phone:
                self._pairing_phone = req.pairing_phone
                self._st.pairing_code = None
                if self._hold_id and not self._hold_connected:
                    self._restart_hold = True  # the running attempt pairs by QR: start one that pairs by code
            if self._st.state in WAITING_STATES or self._st.state in (SessionState.PAUSED, SessionState.BACKOFF):
                self._init = True
                self._pause = False
            try:
                await workflow.wait_condition(
                    self._initialize_ready, timeout=timedelta(seconds=self._inp.initialize_wait_s)
                )
            except TimeoutError:
                pass
        st = self._st
        return InitializeResult(
            state=st.state, qr=st.qr, pairing_code=st.pairing_code, jid=st.jid, phone=st.phone
        )

    def _initialize_ready(self) -> bool:
        st = self._st
        if self._init or self._restart_hold:
            return False
        if st.state.holds_connection:
            return True
        if st.state is SessionState.QR:
            return bool(st.pairing_code) if self._pairing_phone else bool(st.qr)
        return st.state in WAITING_STATES or st.state in (SessionState.PAUSED, SessionState.STOPPED)

    @initialize.validator
    def _validate_initialize(self, req: InitializeRequest) -> None:
        if self._finished or self._remove:
            raise ApplicationError("session is being removed", type="SessionRemoved", non_retryable=True)

    @workflow.update(name=UPDATE_LOGOUT)
    async def logout(self) -> SessionStatus:
        self._logout = True
        await workflow.wait_condition(lambda: not self._logout)
        return self._st

    @logout.validator
    def _validate_logout(self) -> None:
        if self._finished or self._remove:
            raise ApplicationError("session is being removed", type="SessionRemoved", non_retryable=True)

    @workflow.update(name=UPDATE_REMOVE)
    async def remove(self) -> SessionStatus:
        self._remove = True
        await workflow.wait_condition(lambda: self._finished)
        return self._st

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> SessionStatus:
        return self._st
