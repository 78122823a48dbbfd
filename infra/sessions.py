"""Client-side session operations shared by the API and the CLI (SPEC S2, O3, O7).

Everything here talks to the company's ``SessionWorkflow`` through Temporal;
nothing opens a WhatsApp connection (SPEC S8). Company ids are normalised
first, so ``962302`` and ``company_962302`` reach the same workflow (S1).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus, WorkflowQueryRejectedError
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from domain.company import normalize_company_id
from domain.session import (
    QUERY_STATUS,
    SEARCH_ATTRIBUTE_COMPANY_ID,
    SEARCH_ATTRIBUTE_SESSION_STATE,
    SESSION_WORKFLOW,
    SIGNAL_PAUSE,
    SIGNAL_RELINK,
    SIGNAL_RESUME,
    UPDATE_INITIALIZE,
    UPDATE_LOGOUT,
    UPDATE_REMOVE,
    InitializeRequest,
    InitializeResult,
    SessionStatus,
    SessionWorkflowInput,
    session_workflow_id,
)
from domain.settings import Settings
from domain.states import SessionState

COMPANY_ID_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE_COMPANY_ID)
SESSION_STATE_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE_SESSION_STATE)
OPERATOR_SIGNALS = frozenset({SIGNAL_RELINK, SIGNAL_PAUSE, SIGNAL_RESUME})


class SessionNotFound(LookupError):
    """The company has no running session workflow."""

    def __init__(self, company_id: str) -> None:
        super().__init__(f"no session for company {company_id}")
        self.company_id = company_id


def session_workflow_input(
    settings: Settings,
    company_id: str,
    *,
    pairing_phone: str | None = None,
    search_attributes: bool = True,
) -> SessionWorkflowInput:
    """The workflow input for ``company_id``, with every tunable copied from ``settings``."""
    return SessionWorkflowInput(
        company_id=normalize_company_id(company_id),
        core_queue=settings.temporal_core_queue,
        connector_queue=settings.temporal_connector_queue,
        backoff_base_s=settings.backoff_base_s,
        backoff_cap_s=settings.backoff_cap_s,
        backoff_max_attempts=settings.backoff_max_attempts,
        alert_grace_s=settings.alert_grace_s,
        hold_start_timeout_s=settings.hold_start_timeout_s,
        search_attributes=search_attributes,
        pairing_phone=pairing_phone,
    )


def _start_search_attributes(inp: SessionWorkflowInput) -> TypedSearchAttributes | None:
    if not inp.search_attributes:
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(COMPANY_ID_KEY, inp.company_id),
            SearchAttributePair(SESSION_STATE_KEY, SessionState.STARTING.value),
        ]
    )


def _start_options(settings: Settings, inp: SessionWorkflowInput) -> dict[str, Any]:
    """How every start of a session workflow looks: the id is the lock, the running one wins."""
    return {
        "id": session_workflow_id(inp.company_id),
        "task_queue": settings.temporal_core_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "search_attributes": _start_search_attributes(inp),
        "static_summary": f"WhatsApp session of {inp.company_id}",
    }


def start_session_operation(settings: Settings, inp: SessionWorkflowInput) -> WithStartWorkflowOperation[
    object, object
]:
    """The idempotent start of a session workflow (the running one wins: SPEC S1)."""
    return WithStartWorkflowOperation(SESSION_WORKFLOW, inp, **_start_options(settings, inp))


async def ensure_session_started(
    client: Client, settings: Settings, company_id: str, *, search_attributes: bool = True
) -> str:
    """Start the session workflow if it is not running (idempotent); return its workflow id."""
    inp = session_workflow_input(settings, company_id, search_attributes=search_attributes)
    handle = await client.start_workflow(SESSION_WORKFLOW, inp, **_start_options(settings, inp))
    return handle.id


async def start_session_holding(
    client: Client, settings: Settings, company_id: str, hold_id: str, jid: str, phone: str | None,
    holder_queue: str, holder: str,
) -> bool:
    """Start a company's session workflow already connected, under a hold a connector has open
    (connector.activities.resume_without_workflow). False when the workflow was running already."""
    inp = session_workflow_input(settings, company_id)
    now = datetime.now(UTC)
    inp.carried = SessionStatus(
        company_id=inp.company_id, state=SessionState.CONNECTED, since=now, jid=jid, phone=phone,
        holder_queue=holder_queue, holder=holder, hold_id=hold_id,
        history=[f"{now:%Y-%m-%dT%H:%M:%S}Z {SessionState.CONNECTED.value}"],
    )
    options = _start_options(settings, inp) | {"id_conflict_policy": WorkflowIDConflictPolicy.FAIL}
    try:
        await client.start_workflow(SESSION_WORKFLOW, inp, **options)
    except WorkflowAlreadyStartedError:
        return False
    return True


async def running_session_companies(client: Client) -> set[str] | None:
    """Companies whose session workflow runs, from visibility; None where the server cannot list
    (the time-skipping test server)."""
    query = f'WorkflowType = "{SESSION_WORKFLOW}" AND ExecutionStatus = "Running"'
    try:
        return {wf.id.removeprefix("session-") async for wf in client.list_workflows(query)}
    except RPCError:
        return None


async def initialize_session(
    client: Client,
    settings: Settings,
    company_id: str,
    pairing_phone: str | None = None,
    *,
    search_attributes: bool = True,
) -> InitializeResult:
    """Start (or reuse) the company's session and wait for a QR, a pairing code or "connected".

    Update-with-start with ``USE_EXISTING``: concurrent calls for one company
    reach one workflow, so there is never a second connection (SPEC S1/S2).

    Returns:
        The current QR (raw), pairing code, or the connected jid. If nothing of
        the kind appears within the workflow's wait, the current state (e.g.
        ``backoff``) with no code.
    """
    inp = session_workflow_input(
        settings, company_id, pairing_phone=pairing_phone, search_attributes=search_attributes
    )
    result: InitializeResult = await client.execute_update_with_start_workflow(
        UPDATE_INITIALIZE,
        InitializeRequest(pairing_phone=pairing_phone),
        start_workflow_operation=start_session_operation(settings, inp),
        result_type=InitializeResult,
    )
    return result


def _not_found(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND


async def session_status(client: Client, company_id: str) -> SessionStatus | None:
    """The session's status, or ``None`` if the company has no running session workflow."""
    cid = normalize_company_id(company_id)
    handle = client.get_workflow_handle(session_workflow_id(cid))
    for _ in range(3):
        try:
            status: SessionStatus = await handle.query(
                QUERY_STATUS, result_type=SessionStatus, reject_condition=QueryRejectCondition.NOT_OPEN
            )
        except WorkflowQueryRejectedError as exc:
            # A query that reached the run just as it continued as new: the next run is the session.
            if exc.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue
            return None
        except RPCError as exc:
            if _not_found(exc):
                return None
            raise
        return status
    return None


async def signal_session(client: Client, company_id: str, signal_name: str) -> None:
    """Send ``relink``, ``pause`` or ``resume`` (the same signal the Temporal UI sends).

    Raises:
        ValueError: not one of the operator signals.
        SessionNotFound: no running session for the company.
    """
    if signal_name not in OPERATOR_SIGNALS:
        raise ValueError(f"unknown session signal {signal_name!r}; use one of {sorted(OPERATOR_SIGNALS)}")
    cid = normalize_company_id(company_id)
    try:
        await client.get_workflow_handle(session_workflow_id(cid)).signal(signal_name)
    except RPCError as exc:
        if _not_found(exc):
            raise SessionNotFound(cid) from exc
        raise


async def _update(client: Client, company_id: str, update: str) -> SessionStatus:
    cid = normalize_company_id(company_id)
    handle = client.get_workflow_handle(session_workflow_id(cid))
    try:
        status: SessionStatus = await handle.execute_update(
            update, result_type=SessionStatus, rpc_timeout=timedelta(seconds=90)
        )
    except RPCError as exc:
        if _not_found(exc):
            raise SessionNotFound(cid) from exc
        raise
    return status


async def logout_session(client: Client, company_id: str) -> SessionStatus:
    """Log the device out (WhatsApp unlinks it), delete its credentials; state ``logged_out``.

    Raises:
        SessionNotFound: no running session for the company.
    """
    return await _update(client, company_id, UPDATE_LOGOUT)


async def remove_session(client: Client, company_id: str) -> SessionStatus:
    """Log out, delete credentials, mark the company removed and end its workflow (state ``stopped``).

    Raises:
        SessionNotFound: no running session for the company.
    """
    return await _update(client, company_id, UPDATE_REMOVE)


async def list_sessions(client: Client) -> list[tuple[str, SessionState]]:
    """(company id, state) of every running session, from visibility (dev server / cluster only).

    Visibility is eventually consistent: a state change shows up here within a second or so.
    """
    out: list[tuple[str, SessionState]] = []
    query = f'WorkflowType = "{SESSION_WORKFLOW}" AND ExecutionStatus = "Running"'
    async for wf in client.list_workflows(query):
        attrs = wf.typed_search_attributes
        cid = attrs.get(COMPANY_ID_KEY) or wf.id.removeprefix("session-")
        raw_state = attrs.get(SESSION_STATE_KEY) or SessionState.STARTING.value
        try:
            state = SessionState(raw_state)
        except ValueError:
            state = SessionState.STARTING
        out.append((cid, state))
    out.sort()
    return out
