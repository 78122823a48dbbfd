"""Beyond text (issue 11.3-11.6): a sent message's status, read marks, typing, reactions, number checks
and group info. Every route is company-scoped.

The status is read from PostgreSQL (the connector writes it as the server ack and the receipts come).
The rest is one activity on the queue of the connector that holds the session, run through a short
``ConnectorCall`` workflow: a session that holds no connection answers 409 at once, and nothing here
starts one (SPEC S7). A reaction is a message: it counts against the company's send rate limit.
Number checks have a window of their own, stricter than sends (bulk checks get numbers banned),
and each answer is cached (``CONTACT_CHECK_CACHE_S``); a cached answer uses no slot.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from api.deps import AppContext, CompanyDep, CtxDep
from api.errors import COMPANY_ROUTE, ApiError, route_answers, with_errors
from api.routes.messages import MESSAGE_ID_PATTERN
from domain.addresses import InvalidAddress, Jid, normalize_phone, parse_jid, recipient_jid
from domain.chat_actions import (
    ACTIVITY_CHECK_CONTACT,
    ACTIVITY_GROUP_INFO,
    ACTIVITY_MARK_READ,
    ACTIVITY_SEND_PRESENCE,
    ACTIVITY_SEND_REACTION,
    ERROR_NOT_FOUND,
    ERROR_REFUSED,
    ChatPresenceState,
    ContactCheck,
    ContactInfo,
    GroupInfo,
    GroupInfoRequest,
    MarkReadRequest,
    PresenceRequest,
    ReactionRequest,
)
from domain.receipts import MessageStatus
from domain.send import CONNECTOR_CALL_WORKFLOW, ConnectorCallInput
from domain.session import ERROR_NOT_CONNECTED, SendResult
from infra.ratelimit import Decision
from infra.sessions import session_status
from storage.message_status import message_status

log = logging.getLogger("waorch.api.chats")

router = APIRouter(prefix="/api/whatsapp", tags=["chats"])
CID = "/sessions/{company_id:path}"
CALL_TIMEOUT_S = 15.0

MessageIdPath = Annotated[str, Path(description="WhatsApp message id", pattern=MESSAGE_ID_PATTERN)]
PhonePath = Annotated[str, Path(description="phone number, e.g. 79001234567 or +7 900 123-45-67", max_length=64,
                                json_schema_extra={"pattern": r"^\s*\+?[0-9][0-9 ()./-]*\s*$"})]
GroupPath = Annotated[str, Path(description="group id: 120363…@g.us (or its digits)", max_length=128,
                                json_schema_extra={"pattern": r"^[0-9A-Za-z][0-9A-Za-z.-]{0,63}(?:@g\.us)?$"})]

# Routes that run an activity at the connector holding the session (_call_holder).
HOLDER_ROUTE = with_errors(COMPANY_ROUTE, 409, 502, 504, why={
    404: "WhatsApp does not know it (a number, a group, a message), or the path matches no route",
    409: "the session is not connected: nothing here starts one",
    502: "WhatsApp or the connector refused or failed the request",
    504: "the connector holding the session did not answer in time",
})


class CompanyAnswer(BaseModel):
    """What every answer of these routes starts with."""

    success: Literal[True]
    company_id: str = Field(alias="companyId")


class MessageStatusAnswer(CompanyAnswer):
    message_id: str = Field(alias="messageId")
    chat: str | None
    status: MessageStatus = Field(description="the furthest status reached")
    ack: int = Field(description="1 server, 2 delivered, 3 read, 4 played")
    server_at: str | None = Field(alias="serverAt")
    delivered_at: str | None = Field(alias="deliveredAt")
    read_at: str | None = Field(alias="readAt")
    played_at: str | None = Field(alias="playedAt")
    updated_at: str | None = Field(alias="updatedAt")


class ReadAnswer(CompanyAnswer):
    chat: str
    message_ids: list[str] = Field(alias="messageIds")


class PresenceAnswer(CompanyAnswer):
    chat: str
    state: ChatPresenceState


class ReactionAnswer(CompanyAnswer):
    chat: str
    message_id: str = Field(alias="messageId")
    emoji: str
    reaction_id: str = Field(alias="reactionId")
    timestamp: str


class ContactAnswer(CompanyAnswer):
    phone: str
    on_whatsapp: bool = Field(alias="onWhatsApp")
    jid: str | None
    lid: str | None
    business_name: str | None = Field(alias="businessName")
    checked_at: str = Field(alias="checkedAt")
    cached: bool


class GroupMember(BaseModel):
    jid: str
    phone: str | None
    lid: str | None
    is_admin: bool = Field(alias="isAdmin")
    is_super_admin: bool = Field(alias="isSuperAdmin")
    display_name: str | None = Field(alias="displayName")


class Group(BaseModel):
    jid: str
    subject: str | None
    owner: str | None
    topic: str | None
    created_at: str | None = Field(alias="createdAt")
    participant_count: int = Field(alias="participantCount")
    participants: list[GroupMember]


class GroupAnswer(CompanyAnswer):
    group: Group


def _address(field: str, value: str, ctx: AppContext) -> Jid:
    try:
        return recipient_jid(value, ctx.settings.default_phone_region)
    except InvalidAddress as exc:
        raise ApiError(422, "validation_error", f"{field}: {exc}", details=[{"field": field, "message": str(exc)}]
                       ) from None


def _author(field: str, chat: Jid, sender: str | None, ctx: AppContext) -> str:
    """Who wrote messages of ``chat``: ``sender`` if given, else the chat itself (a one-to-one chat)."""
    if sender is not None:
        return str(_address(field, sender, ctx))
    if chat.is_group:
        raise ApiError(422, "validation_error", f"{field}: needed for a message in a group (who wrote it)",
                       details=[{"field": field, "message": "needed for a message in a group"}])
    return str(chat)


# --------------------------------------------------------------------------- message status (11.3)


@router.get(CID + "/messages/{message_id}", summary="The latest status of a sent message: server, delivered, read, "
                                                    "played", response_model=None,
            responses=route_answers(MessageStatusAnswer, with_errors(COMPANY_ROUTE, why={
                404: "no status for this message (not sent through this service, or too old)"})))
async def get_message_status(ctx: CtxDep, company_id: CompanyDep, message_id: MessageIdPath) -> dict[str, Any]:
    try:
        row = await message_status(ctx.db, company_id, message_id)
    except Exception as exc:
        raise ApiError(503, "unavailable", f"message status unavailable now: {type(exc).__name__}",
                       headers={"Retry-After": "5"}) from None
    if row is None:
        raise ApiError(404, "message_not_found",
                       f"no status for message {message_id} of {company_id}: not sent through this service, or "
                       f"unchanged for more than {ctx.settings.message_status_max_age_days} days "
                       "(MESSAGE_STATUS_MAX_AGE_DAYS)", companyId=company_id, messageId=message_id)
    return {"success": True, **row.to_json()}


# --------------------------------------------------------------------------- read, typing, reactions (11.4)


class ReadBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    chat: StrictStr = Field(max_length=256, description="the chat: a phone number or a JID")
    message_ids: list[Annotated[StrictStr, Field(pattern=MESSAGE_ID_PATTERN)]] = Field(
        alias="messageIds", min_length=1, max_length=100, description="ids of received messages to mark read")
    sender: StrictStr | None = Field(default=None, max_length=256,
                                     description="who wrote them: needed in a group; default: the chat")


class PresenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chat: StrictStr = Field(max_length=256, description="the chat: a phone number or a JID")
    state: ChatPresenceState = Field(description="typing, recording (audio), or paused (stop showing either)")


class ReactionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    chat: StrictStr = Field(max_length=256, description="the chat: a phone number or a JID")
    message_id: StrictStr = Field(alias="messageId", pattern=MESSAGE_ID_PATTERN, description="the message reacted to")
    emoji: StrictStr = Field(max_length=32, description="one emoji, e.g. 👍; \"\" takes the reaction back")
    from_me: StrictBool = Field(default=False, alias="fromMe", description="the message is this session's own")
    sender: StrictStr | None = Field(default=None, max_length=256,
                                     description="who wrote the message: needed in a group; default: the chat")

    @field_validator("emoji")
    @classmethod
    def _emoji(cls, value: str) -> str:
        if any(c.isascii() and (c.isalnum() or c.isspace()) for c in value) or any(c.isspace() for c in value):
            raise ValueError("must be an emoji (or \"\" to take the reaction back), not text")
        return value


@router.post(CID + "/read", summary="Mark received messages as read (blue ticks)", response_model=None,
             responses=route_answers(ReadAnswer, HOLDER_ROUTE))
async def mark_read(ctx: CtxDep, company_id: CompanyDep, body: ReadBody) -> dict[str, Any]:
    chat = _address("chat", body.chat, ctx)
    sender = _author("sender", chat, body.sender, ctx)
    await _call_holder(ctx, company_id, ACTIVITY_MARK_READ,
                       MarkReadRequest(company_id, str(chat), sender, body.message_ids), None)
    return {"success": True, "companyId": company_id, "chat": str(chat), "messageIds": body.message_ids}


@router.post(CID + "/presence", summary="Show \"typing…\" or \"recording…\" in a chat, or stop showing it",
             response_model=None, responses=route_answers(PresenceAnswer, HOLDER_ROUTE))
async def presence(ctx: CtxDep, company_id: CompanyDep, body: PresenceBody) -> dict[str, Any]:
    chat = _address("chat", body.chat, ctx)
    await _call_holder(ctx, company_id, ACTIVITY_SEND_PRESENCE, PresenceRequest(company_id, str(chat), body.state),
                       None)
    return {"success": True, "companyId": company_id, "chat": str(chat), "state": body.state.value}


@router.post(CID + "/react", summary="React to a message with an emoji (\"\" takes it back); counts as a send",
             response_model=None, responses=route_answers(ReactionAnswer, with_errors(HOLDER_ROUTE, 429)))
async def react(ctx: CtxDep, company_id: CompanyDep, body: ReactionBody) -> dict[str, Any]:
    chat = _address("chat", body.chat, ctx)
    sender = None if body.from_me else _author("sender", chat, body.sender, ctx)
    queue = await _holder_queue(ctx, company_id)
    assert ctx.limiter is not None
    decision = await ctx.limiter.check(company_id)
    if not decision.allowed:
        raise _too_many(decision, f"rate limit: {decision.limit} messages per {ctx.limiter.window_s:g} s for "
                                  f"{company_id} (a reaction is a message)")
    result: SendResult = await _call_holder(
        ctx, company_id, ACTIVITY_SEND_REACTION,
        ReactionRequest(company_id, str(chat), body.message_id, body.emoji, sender), SendResult, queue=queue)
    return {"success": True, "companyId": company_id, "chat": str(chat), "messageId": body.message_id,
            "emoji": body.emoji, "reactionId": result.message_id, "timestamp": result.timestamp.isoformat()}


# --------------------------------------------------------------------------- number check (11.5)


@router.get(CID + "/contacts/{phone}", summary="Is this number on WhatsApp? Its JID, and its LID where known "
                                               "(cached; rate-limited more strictly than sends)",
            response_model=None, responses=route_answers(ContactAnswer, with_errors(HOLDER_ROUTE, 429)))
async def check_contact(ctx: CtxDep, company_id: CompanyDep, phone: PhonePath) -> dict[str, Any]:
    try:
        digits = normalize_phone(phone, ctx.settings.default_phone_region)
    except InvalidAddress as exc:
        raise ApiError(422, "validation_error", f"phone: {exc}", details=[{"field": "phone", "message": str(exc)}]
                       ) from None
    key = f"{ctx.settings.redis_prefix}whatsapp:contact:{company_id}:{digits}"
    cached = await _cache_get(ctx, key)
    if cached is not None:
        return {"success": True, "companyId": company_id, **cached, "cached": True}
    queue = await _holder_queue(ctx, company_id)  # a check that cannot run uses no slot
    limiter = ctx.contact_limiter
    assert limiter is not None
    decision = await limiter.check(company_id)
    if not decision.allowed:
        raise _too_many(decision, f"number checks: {decision.limit} per {limiter.window_s:g} s for {company_id} "
                                  "(CONTACT_CHECK_LIMIT_COUNT / CONTACT_CHECK_WINDOW_S; bulk checks get numbers "
                                  "banned)")
    info: ContactInfo = await _call_holder(ctx, company_id, ACTIVITY_CHECK_CONTACT, ContactCheck(company_id, digits),
                                           ContactInfo, queue=queue)
    answer = {"phone": info.phone, "onWhatsApp": info.on_whatsapp, "jid": info.jid, "lid": info.lid,
              "businessName": info.business_name, "checkedAt": datetime.now(UTC).isoformat()}
    await _cache_put(ctx, key, answer)
    return {"success": True, "companyId": company_id, **answer, "cached": False}


async def _cache_get(ctx: AppContext, key: str) -> dict[str, Any] | None:
    if ctx.settings.contact_check_cache_s <= 0:
        return None
    try:
        raw = await ctx.redis.get(key)
    except (aioredis.RedisError, OSError):  # no cache while Redis is down: the rate limit still holds
        return None
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _cache_put(ctx: AppContext, key: str, answer: dict[str, Any]) -> None:
    if ctx.settings.contact_check_cache_s <= 0:
        return
    try:
        await ctx.redis.set(key, json.dumps(answer), ex=ctx.settings.contact_check_cache_s)
    except (aioredis.RedisError, OSError) as exc:
        log.warning("number check not cached company_id=%s error=%s", key.rsplit(":", 2)[-2], type(exc).__name__)


# --------------------------------------------------------------------------- group info (11.6)


@router.get(CID + "/groups/{group_id}", summary="A group's subject and participants", response_model=None,
            responses=route_answers(GroupAnswer, HOLDER_ROUTE))
async def group_info(ctx: CtxDep, company_id: CompanyDep, group_id: GroupPath) -> dict[str, Any]:
    raw = group_id if "@" in group_id else f"{group_id}@g.us"
    try:
        group = parse_jid(raw)
        if not group.is_group:
            raise InvalidAddress(f"{group_id!r} is not a group (…@g.us)")
    except InvalidAddress as exc:
        raise ApiError(422, "validation_error", f"group_id: {exc}",
                       details=[{"field": "group_id", "message": str(exc)}]) from None
    info: GroupInfo = await _call_holder(ctx, company_id, ACTIVITY_GROUP_INFO,
                                         GroupInfoRequest(company_id, str(group)), GroupInfo)
    return {"success": True, "companyId": company_id, "group": {
        "jid": info.jid, "subject": info.subject, "owner": info.owner, "topic": info.topic,
        "createdAt": datetime.fromtimestamp(info.created_at, UTC).isoformat() if info.created_at else None,
        "participantCount": len(info.participants),
        "participants": [{"jid": p.jid, "phone": p.phone, "lid": p.lid, "isAdmin": p.is_admin,
                          "isSuperAdmin": p.is_super_admin, "displayName": p.display_name}
                         for p in info.participants],
    }}


# --------------------------------------------------------------------------- reaching the holder


def _too_many(decision: Decision, message: str) -> ApiError:
    return ApiError(429, "rate_limited", message, headers={"Retry-After": decision.retry_after_header},
                    retryAfter=decision.retry_after_s)


async def _holder_queue(ctx: AppContext, company_id: str) -> str:
    """The queue of the connector holding the company's connection; 409 when none does (S7)."""
    status = await session_status(ctx.client, company_id)
    if status is not None:
        status = await ctx.holders.current(ctx.db, ctx.settings.connector_pool, status)
    if status is None or not status.state.holds_connection or not status.holder_queue:
        state = status.state.value if status else "none"
        why = f": {status.last_error}" if status and status.last_error else ""
        raise ApiError(409, "not_connected", f"company {company_id} is not connected (state: {state}){why}",
                       state=state, companyId=company_id)
    return status.holder_queue


async def _call_holder(ctx: AppContext, company_id: str, activity: str, arg: Any, result_type: Any,
                       queue: str | None = None) -> Any:
    """One activity on the holder's queue; its refusal as 409 / 404 / 502, no answer in time as 504."""
    queue = queue or await _holder_queue(ctx, company_id)
    try:
        return await ctx.client.execute_workflow(
            CONNECTOR_CALL_WORKFLOW,
            ConnectorCallInput(activity=activity, queue=queue, arg=arg, timeout_s=CALL_TIMEOUT_S),
            id=f"connector-call-{uuid.uuid4().hex}",
            task_queue=ctx.settings.temporal_core_queue,
            result_type=result_type,
        )
    except WorkflowFailureError as exc:
        cause: BaseException = exc  # the first error that is not Temporal's wrapping of it
        while cause.__cause__ is not None and isinstance(cause, WorkflowFailureError | ActivityError):
            cause = cause.__cause__
        kind = cause.type if isinstance(cause, ApplicationError) else None
        message = str(cause.message if isinstance(cause, ApplicationError) else cause)
        if kind == ERROR_NOT_CONNECTED:
            raise ApiError(409, "not_connected", f"company {company_id} is not connected: {message}",
                           companyId=company_id) from None
        if kind == ERROR_NOT_FOUND:
            raise ApiError(404, "not_found_on_whatsapp", f"WhatsApp: {message}", companyId=company_id) from None
        if kind == ERROR_REFUSED:
            raise ApiError(502, "whatsapp_refused", f"WhatsApp refused: {message}", companyId=company_id) from None
        if isinstance(cause, TemporalTimeoutError):
            raise ApiError(504, "connector_timeout", "the connector holding the session did not answer in time",
                           companyId=company_id) from None
        log.warning("%s failed company_id=%s error=%s", activity, company_id, message)
        raise ApiError(502, "connector_error", f"{activity} failed: {message}", companyId=company_id) from None
