"""The contract of incoming-message processing (SPEC M4, E2): the inbox workflow's names and payloads.

The connector signals-with-start one ``InboxWorkflow`` per chat; the worker's
activities and the API's handler settings use the same names.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from domain.media import MediaDescriptor, MediaKind, MediaState

# Incoming messages (SPEC M4): the connector signals-with-start one inbox workflow per chat.
INBOX_WORKFLOW = "InboxWorkflow"
SIGNAL_INBOX_MESSAGE = "message"


def inbox_workflow_id(company_id: str, chat: str) -> str:
    return f"inbox-{company_id}-{chat}"


@dataclass
class InboxWorkflowInput:
    """The start argument the connector gives an inbox workflow it signals-with-start."""

    company_id: str
    chat: str


@dataclass
class IncomingMessage:
    company_id: str
    message_id: str  # WhatsApp message id: the de-duplication key
    chat: str  # chat JID, @lid/@g.us kept as they are
    sender: str  # sender JID as WhatsApp gave it
    timestamp: datetime
    text: str | None = None
    sender_phone: str | None = None
    push_name: str | None = None
    message_type: str = "text"
    from_me: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    # When the inbox workflow queued it (set there; the backlog's age is measured from it).
    received_at: datetime | None = None
    # A photo, video, voice note, document or sticker (issue #11); ``text`` is then its caption.
    media: MediaDescriptor | None = None



ACTIVITY_INBOX_TUNING = "inbox_tuning"  # None -> InboxTuning (local activity: settings of the worker)
ACTIVITY_HANDLE_INCOMING = "handle_incoming"  # HandleRequest -> HandleOutcome (local activity)
ACTIVITY_RESERVE_REPLY = "reserve_reply"  # ReplyReservation -> ReplySlot
ACTIVITY_DELIVER_EVENT = "deliver_inbox_event"  # InboxEvent -> int (HTTP status; 0 = no event webhook)
FAILED_MESSAGE_WORKFLOW = "FailedInboxMessage"
QUERY_INBOX = "inbox"

# A failed message waits for a person (issue #15.1): its row in PostgreSQL (failed_messages) is the
# durable copy; its FailedInboxMessage workflow stays running until an operator sends one of these
# signals (API, CLI, or "Send a Signal" in the Temporal UI; the optional argument names who).
SIGNAL_REDELIVER = "redeliver"
SIGNAL_DISCARD = "discard"
FAILED_ACTIONS = (SIGNAL_REDELIVER, SIGNAL_DISCARD)
QUERY_FAILED_MESSAGE = "failed_message"
ACTIVITY_PARK_FAILED = "park_failed_message"  # FailedMessageRecord -> ParkResult
ACTIVITY_FAILED_ATTEMPT = "record_failed_attempt"  # FailedAttempt -> int (attempts so far)
ACTIVITY_RESOLVE_FAILED = "resolve_failed_message"  # FailedResolution -> bool (a row was resolved)
ACTIVITY_FAILED_SUMMARY = "failed_messages_summary"  # None -> FailedMessagesSummary
FAILED_REMINDER_WORKFLOW = "FailedMessagesReminder"


def failed_message_workflow_id(company_id: str, message_id: str) -> str:
    return f"inbox-failed-{company_id}-{message_id}"


def message_event_id(company_id: str, message_id: str) -> str:
    """Stable id of the ``message`` event: the same on every retry and redelivery (X-Event-Id)."""
    return f"message-{company_id}-{message_id}"


@dataclass
class InboxTuning:
    """The worker's settings the workflow needs (workflows cannot read the environment)."""

    handler_attempt_timeout_s: float = 17.0
    retry_window_s: float = 3600.0
    retry_initial_s: float = 1.0
    retry_max_interval_s: float = 60.0
    reply_window_s: float = 600.0
    idle_s: float = 300.0
    max_messages_per_run: int = 500
    seen_ids: int = 2000
    # Incoming media (issue #11): one download attempt, and how long failed ones are retried.
    media_download_timeout_s: float = 120.0
    media_download_window_s: float = 300.0


@dataclass
class InboxEvent:
    """One event (E1 shape) for the company's event webhook (E2)."""

    company_id: str
    type: str
    event_id: str
    timestamp: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class InboxRunInput:
    """The start argument. The connector gives only company and chat; continue-as-new carries the rest."""

    company_id: str
    chat: str
    pending: list[IncomingMessage] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    tuning: InboxTuning | None = None
    handled_before: int = 0
    duplicates_before: int = 0
    last_message_id: str | None = None
    # Event-webhook deliveries still in flight at continue-as-new: the next run starts them again.
    events: list[InboxEvent] = field(default_factory=list)


@dataclass
class HandleRequest:
    message: IncomingMessage
    # Who may handle this WhatsApp id: "<workflow id>/<first run id>" of the inbox chain (kept
    # through continue-as-new and retries); another chain finding the id claimed drops it.
    claim: str


@dataclass
class HandleOutcome:
    handler: str  # "webhook" | "callable" | "echo" | "none" | "duplicate" (claimed by another run)
    reply: str | None = None
    # Set when the reply's rate-limit slot and the holder queue were already taken in the same activity.
    holder_queue: str | None = None
    event_webhook: bool = False


@dataclass
class ReplyReservation:
    company_id: str
    message_id: str


@dataclass
class ReplySlot:
    allowed: bool
    holder_queue: str | None = None
    retry_after_s: float = 0.0


@dataclass
class InboxSummary:
    company_id: str
    chat: str
    handled: int
    duplicates: int
    pending: int
    last_message_id: str | None = None
    oldest_pending_at: datetime | None = None  # when the oldest message not yet handled arrived


@dataclass
class FailedMessageInput:
    message: IncomingMessage
    error: str
    tuning: InboxTuning | None  # None: the worker's settings (a start by the API from the stored row)
    claim: str
    # Operator requests not yet served when the workflow continued as new.
    requests: list[OperatorRequest] = field(default_factory=list)


@dataclass
class OperatorRequest:
    action: str  # SIGNAL_REDELIVER | SIGNAL_DISCARD
    actor: str


@dataclass
class FailedMessageRecord:
    """What the failed_messages row keeps: enough to deliver the message again in the inbox's name."""

    message: IncomingMessage
    error: str
    claim: str
    workflow_id: str


@dataclass
class ParkResult:
    first_for_company: bool  # no other message of the company was waiting: alert
    attempts: int
    waiting_for_company: int


@dataclass
class FailedAttempt:
    company_id: str
    message_id: str
    error: str


@dataclass
class FailedResolution:
    company_id: str
    message_id: str
    outcome: str  # "redelivered" | "discarded"
    actor: str


@dataclass
class FailedMessageState:
    """The ``failed_message`` query: where this failed message stands."""

    company_id: str
    message_id: str
    chat: str
    error: str
    attempts: int = 1
    status: str = "waiting"  # waiting | redelivering | redelivered | discarded


@dataclass
class FailedCompanyCount:
    company_id: str
    waiting: int
    oldest: datetime


@dataclass
class FailedMessagesSummary:
    total: int = 0
    companies: list[FailedCompanyCount] = field(default_factory=list)


def incoming_to_json(msg: IncomingMessage) -> dict[str, Any]:
    """The message as stored in failed_messages.message (JSON; datetimes ISO 8601)."""
    out = asdict(msg)
    for key in ("timestamp", "received_at"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    return out


def incoming_from_json(data: dict[str, Any]) -> IncomingMessage:
    values = {k: v for k, v in data.items() if k in IncomingMessage.__dataclass_fields__}
    for key in ("timestamp", "received_at"):
        if isinstance(values.get(key), str):
            values[key] = datetime.fromisoformat(values[key])
    if isinstance(values.get("media"), dict):
        media = {k: v for k, v in values["media"].items() if k in MediaDescriptor.__dataclass_fields__}
        media["kind"] = MediaKind(media["kind"])
        media["state"] = MediaState(media.get("state", MediaState.PENDING))
        values["media"] = MediaDescriptor(**media)
    return IncomingMessage(**values)


# A handler of type "callable": ``package.module:function``.
CALLABLE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
