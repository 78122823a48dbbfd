"""``POST …/send`` (SPEC M1–M3, S7; DESIGN "Sending").

validate → rate limit → the session must be connected (409 otherwise; a send
never starts a session) → ``SendMessage`` workflow with id
``send-<company>-<Idempotency-Key>`` → its activity on the holder's queue.

Idempotency: the workflow id is the key. A running send with the key is
joined (``USE_EXISTING``), a completed one answers with its first result
(``ALLOW_DUPLICATE_FAILED_ONLY`` refuses a second run, and we read the first);
a failed one may run again, so a retry after an error can still succeed.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)

from api.deps import CompanyDep, CtxDep
from api.errors import ApiError
from domain.addresses import InvalidAddress, Jid, recipient_jid
from domain.events import Event, EventType
from domain.send import SEND_WORKFLOW, SendMessageInput, send_workflow_id
from domain.session import ERROR_NOT_CONNECTED, SendRequest, SendResult
from domain.settings import Settings
from domain.states import SessionState
from infra.sessions import session_status

log = logging.getLogger("waorch.api.send")

router = APIRouter(prefix="/api/whatsapp", tags=["messages"])

MAX_TEXT = 4096
SEND_EXECUTION_TIMEOUT = timedelta(seconds=45)
# The connector publishes ``message_sent`` when it has sent (it sees every send, also the
# inbox replies); the API would only duplicate it.
API_PUBLISHES_MESSAGE_SENT = False
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# WhatsApp message ids are letters and digits; this also keeps them safe in a URL path.
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class SendOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    quoted: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=MESSAGE_ID_PATTERN,
                                     description="id of the message to reply to")
    quoted_sender: StrictStr | None = Field(
        default=None, alias="quotedSender", max_length=256,
        description="who wrote the quoted message (phone or JID): needed in a group for a message the "
                    "connector no longer remembers; default: the recipient")
    typing: StrictBool = Field(default=False, description="show \"typing…\" for a time proportional to the text "
                                                          "(SEND_TYPING_*; at most SEND_TYPING_MAX_S) before sending")

    @model_validator(mode="after")
    def _sender_needs_quote(self) -> SendOptions:
        if self.quoted_sender is not None and self.quoted is None:
            raise ValueError("quotedSender goes with quoted")
        return self

    def quoted_sender_jid(self, settings: Settings) -> str | None:
        """``quotedSender`` as a JID; raises ApiError 422 naming the field."""
        if self.quoted_sender is None:
            return None
        try:
            return str(recipient_jid(self.quoted_sender, settings.default_phone_region))
        except InvalidAddress as exc:
            raise ApiError(422, "validation_error", f"options.quotedSender: {exc}",
                           details=[{"field": "options.quotedSender", "message": str(exc)}]) from None


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: StrictStr | None = Field(default=None, max_length=256,
                                    description="phone number, e.g. 79001234567, +7 900 123-45-67 or, with "
                                                "DEFAULT_PHONE_REGION=RU, 8 900 123-45-67")
    to: StrictStr | None = Field(default=None, max_length=256,
                                 description="a phone number or a JID (@s.whatsapp.net, @lid, @g.us)")
    message: StrictStr = Field(min_length=1, max_length=MAX_TEXT, description="text, 1-4096 characters")
    options: SendOptions | None = None

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value

    @model_validator(mode="after")
    def _one_recipient(self) -> SendBody:
        if (self.phone is None) == (self.to is None):
            raise ValueError("give exactly one of 'phone' or 'to'")
        return self

    def recipient(self, default_region: str | None) -> Jid:
        """The recipient as a JID; a number without ``+`` is read in ``default_region`` first.

        Raises:
            ApiError: 422 naming the field and the region tried.
        """
        field, value = ("to", self.to) if self.to is not None else ("phone", self.phone or "")
        try:
            return recipient_jid(value, default_region)
        except InvalidAddress as exc:
            raise ApiError(422, "validation_error", f"{field}: {exc}",
                           details=[{"field": field, "message": str(exc)}]) from None


def _failure_type(exc: BaseException) -> tuple[str | None, BaseException]:
    """The ApplicationError type (if any) at the root of a workflow failure, and the root."""
    cause: BaseException = exc
    while cause.__cause__ is not None and isinstance(cause, WorkflowFailureError | ActivityError):
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return cause.type, cause
    return None, cause


@router.post("/sessions/{company_id:path}/send", summary="Send a text message (idempotent with Idempotency-Key)")
async def send(
    ctx: CtxDep,
    company_id: CompanyDep,
    body: SendBody,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(description="a retried request with the same key returns the first result")
    ] = None,
) -> dict[str, Any]:
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ApiError(422, "validation_error",
                       "Idempotency-Key: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    jid = body.recipient(ctx.settings.default_phone_region)
    recipient = str(jid)
    assert ctx.limiter is not None
    t0 = time.perf_counter()
    decision = await ctx.limiter.check(company_id, idempotency_key)
    t_limit = time.perf_counter()
    if not decision.allowed:
        raise ApiError(
            429, "rate_limited",
            f"rate limit: {decision.limit} messages per {ctx.limiter.window_s:g} s for {company_id}",
            headers={"Retry-After": decision.retry_after_header}, retryAfter=decision.retry_after_s,
        )
    # S7: only a connected session may send, and nothing here can start a session.
    cache = ctx.events.connected if ctx.events is not None else None
    status = cache.get(company_id) if cache is not None else None
    if status is None:
        status = await session_status(ctx.client, company_id)
        if cache is not None and status is not None and status.state is SessionState.CONNECTED:
            cache.put(company_id, status)
    t_status = time.perf_counter()
    if status is not None:
        status = await ctx.holders.current(ctx.db, ctx.settings.connector_pool, status)
    # A degraded session (connected, sends not acknowledged) still sends: each send is the probe that
    # says whether the server acknowledges again (issue 11.8).
    if status is None or not status.state.holds_connection or not status.holder_queue:
        if cache is not None:
            cache.invalidate(company_id)
        state = status.state.value if status else "none"
        why = f": {status.last_error}" if status and status.last_error else ""
        raise ApiError(409, "not_connected", f"company {company_id} is not connected (state: {state}){why}",
                       state=state, companyId=company_id)

    key = idempotency_key or uuid.uuid4().hex
    options = body.options or SendOptions()
    request = SendRequest(company_id=company_id, to=recipient, text=body.message, quoted=options.quoted,
                          idempotency_key=idempotency_key, quoted_sender=options.quoted_sender_jid(ctx.settings),
                          session_degraded=status.state is SessionState.DEGRADED)
    typing_s = ctx.settings.typing_seconds(body.message) if options.typing else 0.0
    wf_id = send_workflow_id(company_id, key)
    handle: WorkflowHandle[Any, SendResult]
    try:
        handle = await ctx.client.start_workflow(
            SEND_WORKFLOW,
            SendMessageInput(request=request, holder_queue=status.holder_queue, typing_s=typing_s),
            id=wf_id,
            # On the holder's own queue (the connector runs SendMessage there): its activity is
            # then dispatched eagerly. A holder that died meanwhile never picks it up, so the run
            # is bounded and ends as a timeout (504), after which the same key may be retried.
            task_queue=status.holder_queue,
            execution_timeout=SEND_EXECUTION_TIMEOUT + timedelta(seconds=typing_s),
            result_type=SendResult,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except WorkflowAlreadyStartedError:
        handle = ctx.client.get_workflow_handle(wf_id, result_type=SendResult)
    try:
        result: SendResult = await handle.result()
    except WorkflowFailureError as exc:
        kind, root = _failure_type(exc)
        if kind == ERROR_NOT_CONNECTED:
            if cache is not None:
                cache.invalidate(company_id)
            raise ApiError(409, "not_connected", f"company {company_id} is not connected: {root}",
                           state="disconnected", companyId=company_id) from None
        if isinstance(root, TemporalTimeoutError):
            raise ApiError(504, "send_timeout", "the connector did not confirm the send in time",
                           companyId=company_id) from None
        log.warning("send failed company_id=%s workflow_id=%s error=%s", company_id, wf_id, root)
        raise ApiError(502, "send_failed", f"send failed: {root}", companyId=company_id) from None
    t_sent = time.perf_counter()
    # Where the time went (W3C Server-Timing; shown by browsers' dev tools, read by bench/send.py).
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={ms:.1f}" for name, ms in (
            ("ratelimit", (t_limit - t0) * 1000), ("status", (t_status - t_limit) * 1000),
            ("send", (t_sent - t_status) * 1000),
        )
    )
    if API_PUBLISHES_MESSAGE_SENT and ctx.publisher is not None:
        await ctx.publisher.publish(Event(type=EventType.MESSAGE_SENT, company_id=company_id,
                                                 data={"messageId": result.message_id, "to": recipient}))
    return {
        "success": True,
        "companyId": company_id,
        "to": recipient,
        # The number as digits, as the old back end answered (None when sent to a JID).
        "phone": jid.phone if body.phone is not None else None,
        "messageId": result.message_id,
        "timestamp": result.timestamp.isoformat(),
        **_options_answer(options, typing_s, status.state),
    }


def _options_answer(options: SendOptions, typing_s: float, state: SessionState) -> dict[str, Any]:
    """What the send options did, and a word when the session is degraded (issue 11.4, 11.8)."""
    out: dict[str, Any] = {}
    if options.quoted:
        out["quoted"] = options.quoted
    if typing_s:
        out["typingS"] = round(typing_s, 3)
    if state is SessionState.DEGRADED:
        out["warning"] = ("the session is degraded: WhatsApp's server has not acknowledged a recent send; "
                          "check this message's status (GET …/messages/{id})")
    return out
