"""The contract of the session workflow: its id, message names and payloads.

The API, the CLI, the connector and the workflow all import these names, so
a signal sent from the Temporal UI (``relink``, ``pause``, ``resume``) is the
same message the API sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from domain.media import MediaRef
from domain.states import SessionState

SESSION_WORKFLOW = "SessionWorkflow"

# Signals the connector sends while it holds a session.
SIGNAL_QR = "qr"
SIGNAL_PAIRING_CODE = "pairing_code"
SIGNAL_CONNECTED = "connected"
SIGNAL_DISCONNECTED = "disconnected"
SIGNAL_HOLD_ENDED = "hold_ended"  # the connection of one hold attempt is over (HoldEndedSignal)
# "Connected but dead" (issue 11.8): a sent message got no server ack in time (DegradedSignal), and
# a send of a degraded hold was acknowledged again (DeliveringSignal).
SIGNAL_DEGRADED = "degraded"
SIGNAL_DELIVERING = "delivering"
# Signals an operator sends (API, Temporal UI, `temporal workflow signal`, CLI).
SIGNAL_RELINK = "relink"
SIGNAL_PAUSE = "pause"
SIGNAL_RESUME = "resume"
# Updates (they answer), and the query.
UPDATE_INITIALIZE = "initialize"
UPDATE_LOGOUT = "logout"
UPDATE_REMOVE = "remove"
QUERY_STATUS = "status"

# Activities of the connector. hold_session runs on the shared queue "connector": it claims the
# session for one connector and starts its client, then returns (the connection lives on in that
# connector; how it ends comes back as the hold_ended signal). The others run on the holder's own
# queue "connector.<id>" (SessionStatus.holder_queue).
ACTIVITY_HOLD_SESSION = "hold_session"  # HoldRequest -> HoldStarted; HeldElsewhere if a live connector holds it
ACTIVITY_SEND_MESSAGE = "send_message"  # SendRequest -> SendResult; NotConnected if not held here
# Phone-side controls of the test transports (the simulator, or NEONIZE_CLIENT=model) on the holder's queue.
ACTIVITY_TRANSPORT_CONTROL = "transport_control"  # TransportCommand -> dict
ACTIVITY_TRANSPORT_OUTBOX = "transport_outbox"  # company_id -> list[OutboxEntry] (from PostgreSQL; any connector)
ACTIVITY_LOGOUT_DEVICE = "logout_device"  # ReleaseRequest -> bool (holder's queue: unlink the device at WhatsApp)
ACTIVITY_RELEASE_SESSION = "release_session"  # ReleaseRequest -> bool (holder's queue: close without logout)
# The connector drains (as on SIGTERM) and exits for its supervisor to start it again (waorch doctor --live).
ACTIVITY_RESTART_CONNECTOR = "restart_connector"  # reason: str -> bool
# Worker-side activities of the session workflow (core queue).
ACTIVITY_DELETE_CREDENTIALS = "delete_credentials"  # CredentialsDeletion -> int (rows deleted)
ACTIVITY_SEND_ALERT = "send_alert"  # SessionAlert -> channel (activities/notify.py)
ACTIVITY_PUBLISH_EVENT = "publish_session_event"  # SessionEventRequest -> None
ACTIVITY_END_HOLD = "end_hold"  # ReleaseRequest -> bool: forget a hold whose connector cannot be reached

# Search attributes of session workflows (registered on the dev server by temporal-dev.yaml).
SEARCH_ATTRIBUTE_COMPANY_ID = "CompanyId"
SEARCH_ATTRIBUTE_SESSION_STATE = "SessionState"

# ApplicationError types raised across processes.
ERROR_NOT_CONNECTED = "NotConnected"
ERROR_CONNECTOR_SHUTDOWN = "ConnectorShutdown"  # hold_session failed because its connector is stopping
ERROR_HELD_ELSEWHERE = "HeldElsewhere"  # hold_session: a live connector holds the company (details: HeldElsewhere)


def session_workflow_id(company_id: str) -> str:
    """Workflow id of a company's session: the system-wide lock of SPEC S1."""
    return f"session-{company_id}"


class HoldOutcomeKind(StrEnum):
    """How one ``hold_session`` attempt ended; the one mapping of transport events to outcomes."""

    DROPPED = "dropped"  # transient: network drop, keepalive timeout, stream error
    DIAL_FAILED = "dial_failed"  # transient: first dial did not succeed
    REPLACED = "replaced"  # error 440, never reconnect automatically
    LOGGED_OUT = "logged_out"  # device unlinked from the phone or server
    TEMP_BANNED = "temp_banned"  # wait ban_expires_s, then hold again
    PAIRING_TIMEOUT = "pairing_timeout"  # QR / pairing code not completed in time
    CLIENT_OUTDATED = "client_outdated"  # WhatsApp refuses this client version (405): failed until relink
    STOPPED = "stopped"  # cancelled on purpose (pause, logout, remove, shutdown)


@dataclass
class HoldRequest:
    company_id: str
    workflow_id: str
    jid: str | None = None
    new_device: bool = False
    pairing_phone: str | None = None
    # Identifies one hold attempt; signals carry it back so a stale attempt cannot move the state.
    # A connector that adopts the hold of a dead one keeps its id: the hold goes on, elsewhere.
    hold_id: str = ""
    # The workflow's previous hold, which it knows is over: a connector still listed for it is
    # not "holding elsewhere".
    previous_hold_id: str = ""


@dataclass
class HoldStarted:
    """``hold_session``'s answer: which connector now holds the session (its client is starting)."""

    holder_queue: str
    holder: str  # the connector process (incarnation) whose lease covers the hold


@dataclass
class HeldElsewhere:
    """Details of the ``HeldElsewhere`` error: a live connector still holds the company."""

    holder_queue: str
    hold_id: str


@dataclass
class ReleaseRequest:
    """Close (or log out) one company's connection on its holder, if it is still this hold."""

    company_id: str
    hold_id: str = ""  # empty: whatever hold the connector has for the company


@dataclass
class HoldOutcome:
    kind: HoldOutcomeKind
    detail: str = ""
    ban_expires_s: float | None = None


@dataclass
class QrSignal:
    code: str
    sequence: int
    holder_queue: str
    expires_at: datetime | None = None
    hold_id: str = ""


@dataclass
class PairingCodeSignal:
    code: str
    holder_queue: str
    hold_id: str = ""


@dataclass
class ConnectedSignal:
    jid: str
    holder_queue: str
    phone: str | None = None
    push_name: str | None = None
    hold_id: str = ""
    holder: str = ""  # incarnation of the connector holding it (changes when a hold is adopted)


@dataclass
class HoldEndedSignal:
    hold_id: str
    outcome: HoldOutcome


@dataclass
class DisconnectedSignal:
    reason: str
    hold_id: str = ""


@dataclass
class DegradedSignal:
    """A send of this hold got no server ack within ACK_TIMEOUT_S: connected, but not delivering."""

    hold_id: str
    reason: str


@dataclass
class DeliveringSignal:
    """A send of a hold that was degraded was acknowledged by the server again."""

    hold_id: str


@dataclass
class InitializeRequest:
    pairing_phone: str | None = None


@dataclass
class InitializeResult:
    state: SessionState
    qr: str | None = None
    pairing_code: str | None = None
    jid: str | None = None
    phone: str | None = None


@dataclass
class SessionStatus:
    company_id: str
    state: SessionState
    since: datetime | None = None
    jid: str | None = None
    phone: str | None = None
    holder_queue: str | None = None
    holder: str | None = None  # connector incarnation whose lease covers the connection
    hold_id: str | None = None
    attempt: int = 0  # the current run of failed reconnect attempts (0 once connected)
    # Connections re-established after the session's device first connected: drops, relinks, resumes,
    # a hold adopted by another connector. Carried through continue-as-new; a new pairing starts at 0.
    reconnects: int = 0
    next_retry_at: datetime | None = None
    last_error: str | None = None
    qr: str | None = None
    qr_sequence: int = 0
    pairing_code: str | None = None
    history: list[str] = field(default_factory=list)
    # Re-holds done because the session was degraded (no server ack): one at most, then an alert; back
    # to 0 once a send is acknowledged again, or when an operator takes over (pause, relink, logout).
    degraded_reholds: int = 0


@dataclass
class SendRequest:
    company_id: str
    to: str
    text: str
    quoted: str | None = None
    idempotency_key: str | None = None
    # A media send (issue #11): the stored media; ``text`` is then its caption or "".
    media: MediaRef | None = None
    # Who wrote the quoted message (a group member); None: the recipient, or as the connector remembers it.
    quoted_sender: str | None = None
    # The session was degraded when this was sent: its server ack says the session delivers again (also
    # to a connector that took the hold over and so never saw the degradation itself).
    session_degraded: bool = False


@dataclass
class SendResult:
    message_id: str
    timestamp: datetime


@dataclass
class TransportCommand:
    """A phone-side control: scan | pair | disconnect | replace | logout | ban | incoming | dial_fail | …"""

    company_id: str
    action: str
    params: dict[str, object] = field(default_factory=dict)


@dataclass
class OutboxEntry:
    message_id: str
    to: str
    text: str
    timestamp: datetime
    quoted: str | None = None
    media: MediaRef | None = None  # what a media send carried (its id is empty where the transport has none)


# The workflow's own configuration: workflows cannot read the environment, so the
# starter (infra.sessions.session_workflow_input) copies the settings in here.
@dataclass
class SessionWorkflowInput:
    company_id: str
    core_queue: str
    connector_queue: str
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    backoff_max_attempts: int = 20
    alert_grace_s: float = 10.0
    # How long a hold request may wait for a live connector to take it and start the client.
    hold_start_timeout_s: float = 60.0
    initialize_wait_s: float = 30.0
    # False on servers without the CompanyId/SessionState attributes (the time-skipping test server).
    search_attributes: bool = True
    pairing_phone: str | None = None
    # Carried through continue-as-new.
    carried: SessionStatus | None = None
    down_since: datetime | None = None  # a grace period still running (SPEC H4)


@dataclass
class CredentialsDeletion:
    company_id: str
    mark_removed: bool = False  # remove: also stamp companies.removed_at


@dataclass
class SessionAlert:
    """One alert (the ``send_alert`` activity's payload; ``infra.alerts.Alert`` is this class)."""

    text: str
    company_id: str | None = None
    severity: str = "warning"


@dataclass
class SessionEventRequest:
    """A state change seen by the workflow itself (reconnecting, failed, paused, resumed) for Redis."""

    company_id: str
    type: str
    data: dict[str, str] = field(default_factory=dict)
