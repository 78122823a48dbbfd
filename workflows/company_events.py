"""``CompanyEvents``: a company's state events to its event webhook (SPEC E2), durably and in order.

The inbox delivers ``message`` / ``message_sent`` events itself; every other event
(``qr``, ``connected``, ``disconnected``, ``replaced``, ``logged_out``, …) reaches
this workflow, one per company (id ``events-<company_id>``), by signal-with-start
from the worker's event relay (activities/event_relay.py). Events are posted one at
a time in arrival order with the same activity and retry policy as the inbox's
event deliveries; an event whose delivery fails for the whole retry window is
logged and skipped, so one bad hour never blocks the next day's events. Ids already
delivered are dropped (every worker's relay sees every event). The workflow ends
after an idle period and continues-as-new past a size, so history stays bounded.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.company_events import (
        COMPANY_EVENTS_WORKFLOW,
        MAX_EVENTS_PER_RUN,
        SEEN_IDS,
        SIGNAL_COMPANY_EVENT,
        CompanyEventsInput,
    )
    from domain.inbox import ACTIVITY_DELIVER_EVENT, InboxEvent
    from workflows.inbox import handler_retry_options

@workflow.defn(name=COMPANY_EVENTS_WORKFLOW, sandboxed=False)
class CompanyEventsWorkflow:
    @workflow.init
    def __init__(self, inp: CompanyEventsInput) -> None:
        self._pending: deque[InboxEvent] = deque(inp.pending)
        self._seen: deque[str] = deque(inp.seen, maxlen=SEEN_IDS)
        self._delivered = inp.delivered_before
        self._given_up = 0
        self._current: str | None = None  # the id being delivered right now

    @workflow.signal(name=SIGNAL_COMPANY_EVENT)
    def event(self, event: InboxEvent) -> None:
        eid = event.event_id
        if eid == self._current or eid in self._seen or any(p.event_id == eid for p in self._pending):
            return
        self._pending.append(event)

    @workflow.query(name="status")
    def status(self) -> dict[str, int]:
        return {"pending": len(self._pending), "delivered": self._delivered, "given_up": self._given_up}

    @workflow.run
    async def run(self, inp: CompanyEventsInput) -> int:
        t = inp.tuning
        handled_this_run = 0
        while True:
            try:
                await workflow.wait_condition(lambda: bool(self._pending), timeout=timedelta(seconds=t.idle_s))
            except TimeoutError:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._pending:
                    return self._delivered
            event = self._pending.popleft()
            self._current = event.event_id
            workflow.set_current_details(f"delivering {event.type} ({len(self._pending)} waiting)")
            try:
                await workflow.execute_activity(
                    ACTIVITY_DELIVER_EVENT, event, **handler_retry_options(t), summary=f"{event.type} event",
                )
                self._delivered += 1
            except ActivityError as err:
                self._given_up += 1
                workflow.logger.warning("event webhook delivery given up: %s %s", event.event_id, err.cause)
            self._seen.append(event.event_id)
            self._current = None
            handled_this_run += 1
            if handled_this_run >= MAX_EVENTS_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(CompanyEventsInput(
                    inp.company_id, t, list(self._pending), list(self._seen), self._delivered,
                ))
