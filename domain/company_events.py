"""The contract of a company's event webhook workflow (SPEC E2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.inbox import InboxEvent, InboxTuning

COMPANY_EVENTS_WORKFLOW = "CompanyEvents"
SIGNAL_COMPANY_EVENT = "event"
MAX_EVENTS_PER_RUN = 500
SEEN_IDS = 500


def company_events_workflow_id(company_id: str) -> str:
    return f"events-{company_id}"


@dataclass
class CompanyEventsInput:
    company_id: str
    tuning: InboxTuning
    pending: list[InboxEvent] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    delivered_before: int = 0
