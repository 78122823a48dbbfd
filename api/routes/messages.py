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
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppContext, CompanyDep, CtxDep
from api.errors import COMPANY_ROUTE, ApiError, route_answers, with_errors
from domain.addresses import InvalidAddress, Jid, recipient_jid
from domain.events import Event, EventType
from domain.media import (
    CAPTIONED,
    ERROR_MEDIA_MISSING,
    ERROR_MEDIA_UNAVAILABLE,
    GENERIC_MIMETYPES,
    MAX_CAPTION,
    MediaKind,
    MediaRef,
    media_id,
    media_path,
)
from domain.send import SEND_WORKFLOW, SendMessageInput, send_workflow_id
from domain.session import ERROR_NOT_CONNECTED, SendRequest, SendResult
from domain.settings import Settings
from domain.states import SessionState
from infra.media_intake import MediaRejected, check_content, decode_base64, fetch_media
from infra.sessions import session_status
from storage.media import MediaRows

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


def exactly_one(*names: str) -> dict[str, Any]:
    """JSON schema: exactly one of these fields is given (present and not null), as the validators check."""
    return {"oneOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]}


_CAPTIONED_KINDS: list[Any] = sorted(k.value for k in CAPTIONED)


class MediaBody(BaseModel):
    """A photo, video, audio, voice note, document or sticker to send: its bytes by URL or base64 (issue #11)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [
        exactly_one("url", "base64"),
        # A caption only on the kinds that carry one.
        {"anyOf": [{"properties": {"type": {"enum": _CAPTIONED_KINDS}}},
                   {"properties": {"caption": {"type": "null"}}}]},
    ]})

    type: MediaKind = Field(description="image | video | audio | voice (a voice note, Ogg Opus) | document | "
                                        "sticker (WebP)")
    url: StrictStr | None = Field(default=None, min_length=8, max_length=2048,
                                  description="http(s) URL the API fetches the file from (public addresses only, "
                                              "unless MEDIA_FETCH_ALLOWED_NETWORKS allows others)")
    base64: StrictStr | None = Field(default=None, min_length=1,
                                     description="the file in standard base64, or a data:<type>;base64,… URI")
    caption: StrictStr | None = Field(default=None, max_length=MAX_CAPTION,
                                      description="text under an image, video or document")
    filename: StrictStr | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f]+$",
                                       description="the name a document is shown with (no path)")
    mimetype: StrictStr | None = Field(default=None, max_length=127, pattern=r"^[A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+"
                                                                           r"(\s*;.*)?$",
                                       description="what the file is; checked against its bytes (a mismatch is "
                                                   "a 422). Documents keep it; other kinds are named by their bytes")

    @model_validator(mode="after")
    def _one_source(self) -> MediaBody:
        if (self.url is None) == (self.base64 is None):
            raise ValueError("give exactly one of 'url' or 'base64'")
        if self.caption is not None and self.type not in CAPTIONED:
            raise ValueError(f"a {self.type.value} carries no caption on WhatsApp (only image, video and document)")
        return self


class SendBody(BaseModel):
    """Exactly one recipient (``phone`` or ``to``) and exactly one content (``message`` or ``media``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [
        exactly_one("phone", "to"), exactly_one("message", "media"),
        # A media message cannot quote another one yet.
        {"anyOf": [{"properties": {"media": {"type": "null"}}},
                   {"properties": {"options": {"anyOf": [{"type": "null"}, {"properties": {"quoted": {
                       "type": "null"}}}]}}}]},
    ]})

    phone: StrictStr | None = Field(default=None, max_length=256,
                                    description="phone number, e.g. 79001234567, +7 900 123-45-67 or, with "
                                                "DEFAULT_PHONE_REGION=RU, 8 900 123-45-67")
    to: StrictStr | None = Field(default=None, max_length=256,
                                 description="a phone number or a JID (@s.whatsapp.net, @lid, @g.us)")
    message: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_TEXT,
                                      description="text, 1-4096 characters (or give 'media')")
    media: MediaBody | None = Field(default=None, description="a media message instead of a text")
    options: SendOptions | None = None

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("message must not be blank")
        return value

    @model_validator(mode="after")
    def _one_recipient(self) -> SendBody:
        if (self.phone is None) == (self.to is None):
            raise ValueError("give exactly one of 'phone' or 'to'")
        if (self.message is None) == (self.media is None):
            raise ValueError("give either 'message' (a text) or 'media' (its caption goes in media.caption)")
        if self.media is not None and self.options is not None and self.options.quoted is not None:
            raise ValueError("options.quoted: a media message cannot quote another one yet; send it without quoting")
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


class SentMedia(BaseModel):
    id: str = Field(description="GET …/media/{id} serves it")
    type: MediaKind
    mimetype: str
    size: int
    sha256: str
    caption: str | None
    filename: str | None
    url: str


class SendAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    to: str = Field(description="the recipient's JID")
    phone: str | None = Field(description="the number as digits when sent to 'phone'; null when sent to 'to'")
    message_id: str = Field(alias="messageId")
    timestamp: str
    quoted: str | None = None
    typing_s: float | None = Field(default=None, alias="typingS", description="how long \"typing…\" was shown")
    warning: str | None = Field(default=None, description="the session is degraded")
    media: SentMedia | None = None


SEND_ERRORS = with_errors(COMPANY_ROUTE, 409, 413, 429, 502, 503, 504, why={
    409: "the session is not connected (state in `state`): a send never starts a session",
    502: "the send failed at the connector",
    503: "Temporal, the key store, or media sending (ffmpeg at the connector) is unavailable",
    504: "the connector did not confirm in time: retry with the same Idempotency-Key",
})


def _failure_type(exc: BaseException) -> tuple[str | None, BaseException]:
    """The ApplicationError type (if any) at the root of a workflow failure, and the root."""
    cause: BaseException = exc
    while cause.__cause__ is not None and isinstance(cause, WorkflowFailureError | ActivityError):
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return cause.type, cause
    return None, cause


@router.post("/sessions/{company_id:path}/send",
             summary="Send a text or a media message (idempotent with Idempotency-Key)", response_model=None,
             responses=route_answers(SendAnswer, SEND_ERRORS, description="sent: WhatsApp has the message", s200={
                 "headers": {"Server-Timing": {"description": "where the time went", "schema": {"type": "string"}}}}))
async def send(
    ctx: CtxDep,
    company_id: CompanyDep,
    body: SendBody,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(description="a retried request with the same key returns the first result",
                           json_schema_extra={"pattern": f"^{_IDEMPOTENCY_KEY.pattern}$"})
    ] = None,
) -> dict[str, Any]:
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ApiError(422, "validation_error",
                       "Idempotency-Key: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    jid = body.recipient(ctx.settings.default_phone_region)
    recipient = str(jid)
    # Media given inline is checked before anything else (no rate-limit slot for a file we refuse).
    inline = _inline_media(ctx, body.media) if body.media is not None and body.media.base64 is not None else None
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
    wf_id = send_workflow_id(company_id, key)
    media: MediaRef | None = None
    t_media = t_status
    if body.media is not None:
        media = await _stored_media(ctx, company_id, key, body.media, inline, wf_id if idempotency_key else None)
        t_media = time.perf_counter()
    timeout_s = ctx.settings.media_send_timeout_s if media is not None else SendMessageInput.timeout_s
    request = SendRequest(company_id=company_id, to=recipient,
                          text=body.message if body.message is not None else (media.caption if media else None) or "",
                          quoted=options.quoted, idempotency_key=idempotency_key, media=media,
                          quoted_sender=options.quoted_sender_jid(ctx.settings),
                          session_degraded=status.state is SessionState.DEGRADED)
    typing_s = ctx.settings.typing_seconds(request.text) if options.typing else 0.0
    handle: WorkflowHandle[Any, SendResult]
    try:
        handle = await ctx.client.start_workflow(
            SEND_WORKFLOW,
            SendMessageInput(request=request, holder_queue=status.holder_queue, timeout_s=timeout_s,
                             typing_s=typing_s),
            id=wf_id,
            # On the holder's own queue (the connector runs SendMessage there): its activity is
            # then dispatched eagerly. A holder that died meanwhile never picks it up, so the run
            # is bounded and ends as a timeout (504), after which the same key may be retried.
            task_queue=status.holder_queue,
            execution_timeout=(SEND_EXECUTION_TIMEOUT if media is None else timedelta(seconds=timeout_s + 15))
            + timedelta(seconds=typing_s),
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
        if kind in (ERROR_MEDIA_UNAVAILABLE, ERROR_MEDIA_MISSING):
            raise ApiError(503, "media_unavailable", f"media send refused by the connector: {root}",
                           companyId=company_id) from None
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
            *((("media", (t_media - t_status) * 1000),) if media is not None else ()),
            ("send", (t_sent - t_media) * 1000),
        )
    )
    if API_PUBLISHES_MESSAGE_SENT and ctx.publisher is not None:
        await ctx.publisher.publish(Event(type=EventType.MESSAGE_SENT, company_id=company_id,
                                                 data={"messageId": result.message_id, "to": recipient}))
    answer: dict[str, Any] = {
        "success": True,
        "companyId": company_id,
        "to": recipient,
        # The number as digits, as the old back end answered (None when sent to a JID).
        "phone": jid.phone if body.phone is not None else None,
        "messageId": result.message_id,
        "timestamp": result.timestamp.isoformat(),
        **_options_answer(options, typing_s, status.state),
    }
    if media is not None:
        answer["media"] = {"id": media.id, "type": media.kind.value, "mimetype": media.mimetype, "size": media.size,
                           "sha256": media.sha256, "caption": media.caption, "filename": media.filename,
                           "url": ctx.settings.api_base_url + media_path(company_id, media.id)}
    return answer


# ---------------------------------------------------------------------------------------- media sends


def _rejected(exc: MediaRejected) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


def _inline_media(ctx: AppContext, body: MediaBody) -> tuple[bytes, str]:
    """Base64 media, decoded and checked: (bytes, type read from them)."""
    assert body.base64 is not None
    limit = ctx.settings.media_max_bytes(body.type.value)
    try:
        data, uri_type = decode_base64(body.base64, body.type, limit)
        return data, check_content(body.type, data, body.mimetype or uri_type, limit)
    except MediaRejected as exc:
        raise _rejected(exc) from None


async def _stored_media(ctx: AppContext, company_id: str, key: str, body: MediaBody,
                        inline: tuple[bytes, str] | None, keyed_workflow: str | None) -> MediaRef:
    """The media of a send, in the blob store and the media table; what the send workflow carries."""
    mid = media_id(company_id, "out", key)
    rows = MediaRows(ctx.db)
    if keyed_workflow is not None and inline is None and await _already_sent(ctx, keyed_workflow):
        # A retry with its Idempotency-Key: the first request's media stands (its send answers below).
        row = await rows.get(company_id, mid)
        if row is not None and row.sha256 is not None and row.mimetype is not None and row.size is not None:
            return MediaRef(row.id, row.kind, row.mimetype, row.sha256, row.size, row.caption, row.filename)
    if inline is not None:
        data, mimetype = inline
    else:
        assert body.url is not None
        limit = ctx.settings.media_max_bytes(body.type.value)
        try:
            fetched = await fetch_media(body.url, body.type, limit, ctx.settings)
            # A server's Content-Type names a document's type when the bytes say too little (a CSV).
            served = fetched.content_type if fetched.content_type not in GENERIC_MIMETYPES else None
            declared = body.mimetype or (served if body.type is MediaKind.DOCUMENT else None)
            mimetype = check_content(body.type, fetched.data, declared, limit)
        except MediaRejected as exc:
            raise _rejected(exc) from None
        data = fetched.data
    sha256 = await ctx.blob_store().put(data)
    ref = MediaRef(mid, body.type, mimetype, sha256, len(data), body.caption, body.filename)
    await rows.add_outgoing(company_id, ref)
    return ref


async def _already_sent(ctx: AppContext, workflow_id: str) -> bool:
    """A send with this id runs or completed (a failed one may run again, with the media given now)."""
    try:
        described = await ctx.client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED)


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
