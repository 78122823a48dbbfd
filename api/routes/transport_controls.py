"""Phone-side controls of the test transports (SPEC O5): the simulator (``WA_TRANSPORT=simulator``) or
the model of neonize's client (``NEONIZE_CLIENT=model``); mounted only for those.

Each control is an activity on the queue of the connector that holds the
session (from its status), so it reaches the phone of that session in
whichever connector process holds it. The outbox (what the phone sent) is kept
in PostgreSQL and read through any connector.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from temporalio.client import WorkflowFailureError

from api.deps import CompanyDep, CtxDep
from api.errors import COMPANY_ROUTE, ApiError, route_answers, with_errors
from api.routes.sessions import require_status
from domain.send import CONNECTOR_CALL_WORKFLOW, ConnectorCallInput
from domain.session import (
    ACTIVITY_TRANSPORT_CONTROL,
    ACTIVITY_TRANSPORT_OUTBOX,
    OutboxEntry,
    TransportCommand,
)

router = APIRouter(prefix="/api/simulator", tags=["simulator"])

Action = Literal[
    "scan", "pair", "disconnect", "replace", "logout", "ban", "incoming", "dial_fail",
    # beyond text (issue 11.3-11.8): receipts of sent messages, a server that stops acknowledging sends
    # ("connected but dead") and again, WhatsApp's directory of numbers, a group
    "receipt", "stop_acks", "resume_acks", "contact", "group",
    # the model of neonize's client only:
    "pair_error", "outdated", "connect_failure", "stream_error", "keepalive_timeout", "keepalive_restore",
]


class ControlBody(BaseModel):
    """Optional details of a control; each applies to the actions named."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    phone: StrictStr | None = Field(default=None, pattern=r"^[0-9]{6,15}$", description="scan: the phone's number")
    expires_s: float | None = Field(default=None, alias="expiresS", gt=0, le=86400, description="ban: seconds")
    text: StrictStr | None = Field(default=None, min_length=1, max_length=4096, description="incoming: text")
    chat: StrictStr | None = Field(default=None, max_length=128, description="incoming: chat JID")
    sender: StrictStr | None = Field(default=None, max_length=128, description="incoming: sender JID")
    message_id: StrictStr | None = Field(default=None, alias="messageId", max_length=128,
                                         description="incoming: WhatsApp message id")
    sender_alt: StrictStr | None = Field(default=None, alias="senderAlt", max_length=128,
                                         description="incoming (model): the phone JID of an @lid sender")
    quoted: StrictStr | None = Field(default=None, max_length=128, description="incoming (model): quoted id")
    times: int | None = Field(default=None, ge=1, le=1000, description="dial_fail/outdated: how many dials")
    # incoming media (issue #11)
    media_type: Literal["image", "video", "audio", "voice", "document", "sticker"] | None = Field(
        default=None, alias="mediaType", description="incoming: a media message of this kind")
    media_base64: StrictStr | None = Field(default=None, alias="mediaBase64", description="incoming: its bytes")
    caption: StrictStr | None = Field(default=None, max_length=1024, description="incoming media: caption")
    filename: StrictStr | None = Field(default=None, max_length=255, description="incoming document: name")
    mimetype: StrictStr | None = Field(default=None, max_length=127, description="incoming media: its type")
    download_failures: int | None = Field(default=None, alias="downloadFailures", ge=-1, le=1000,
                                          description="incoming media: downloads that fail first (-1: expired)")
    reason: StrictStr | None = Field(default=None, max_length=200, description="disconnect: why")
    status: Literal["delivered", "read", "played"] | None = Field(default=None, description="receipt: which")
    participant: StrictStr | None = Field(default=None, max_length=128,
                                          description="receipt: the group member who sent it")
    on_whatsapp: StrictBool | None = Field(default=None, alias="onWhatsApp",
                                           description="contact: whether the number (phone) is on WhatsApp")
    lid: StrictStr | None = Field(default=None, pattern=r"^[0-9]{6,20}$", description="contact: the number's LID")
    group: StrictStr | None = Field(default=None, max_length=128, description="group: its JID (…@g.us)")
    subject: StrictStr | None = Field(default=None, max_length=100, description="group: its subject")
    participants: list[Annotated[StrictStr, Field(max_length=128)]] | None = Field(
        default=None, max_length=256, description="group: member JIDs, the owner first")
    admins: list[Annotated[StrictStr, Field(max_length=128)]] | None = Field(
        default=None, max_length=256, description="group: members who are admins")


class ControlAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    action: Action
    result: dict[str, Any] = Field(description="what the test phone reports")


class OutboxMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    message_id: str = Field(alias="messageId")
    to: str
    text: str
    timestamp: str
    quoted: str | None
    media: dict[str, Any] | None = None


class OutboxAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    count: int
    messages: list[OutboxMessage]


class ActionRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: str
    chat: str | None
    at: str


class ActionsAnswer(BaseModel):
    success: Literal[True]
    company_id: str = Field(alias="companyId")
    count: int
    actions: list[ActionRow]


NO_SESSION = {404: "the company has no session, or the path matches no route"}


async def _holder_queue(ctx: CtxDep, company_id: str) -> str:
    status = await require_status(ctx, company_id)
    if not status.holder_queue:
        raise ApiError(409, "not_held", f"no connector holds {company_id} now (state: {status.state.value})",
                       state=status.state.value)
    return status.holder_queue


@router.post("/{company_id}/{action}", summary="Drive the test phone: scan, disconnect, 440, logout, ban…",
             response_model=None, responses=route_answers(ControlAnswer, with_errors(
                 COMPANY_ROUTE, 409, 502, why={**NO_SESSION, 409: "no connector holds the session now",
                                               502: "the test phone refused the action"})))
async def control(
    ctx: CtxDep,
    company_id: CompanyDep,
    action: Action,
    body: Annotated[ControlBody | None, Body()] = None,
) -> dict[str, Any]:
    queue = await _holder_queue(ctx, company_id)
    params: dict[str, object] = body.model_dump(exclude_none=True) if body else {}
    result = await run_connector_activity(
        ctx, queue, ACTIVITY_TRANSPORT_CONTROL, TransportCommand(company_id, action, params), dict
    )
    return {"success": True, "companyId": company_id, "action": action, "result": result}


@router.get("/{company_id}/outbox", summary="What the test phone has sent", response_model=None,
            responses=route_answers(OutboxAnswer, with_errors(COMPANY_ROUTE, 502, why=NO_SESSION)))
async def outbox(ctx: CtxDep, company_id: CompanyDep) -> dict[str, Any]:
    await require_status(ctx, company_id)  # 404 for a company without a session
    # Any connector answers (the record is in PostgreSQL), also when none holds the session.
    entries: list[OutboxEntry] = await run_connector_activity(
        ctx, ctx.settings.temporal_connector_queue, ACTIVITY_TRANSPORT_OUTBOX, company_id, list[OutboxEntry]
    )
    return {"success": True, "companyId": company_id, "count": len(entries), "messages": [
        {"messageId": e.message_id, "to": e.to, "text": e.text, "timestamp": e.timestamp.isoformat(),
         "quoted": e.quoted, **({"media": dataclasses.asdict(e.media)} if e.media is not None else {})}
        for e in entries
    ]}


@router.get("/{company_id}/actions", summary="What the test phone was asked to do besides sending text",
            response_model=None, responses=route_answers(ActionsAnswer, with_errors(COMPANY_ROUTE, why=NO_SESSION)))
async def actions(ctx: CtxDep, company_id: CompanyDep) -> dict[str, Any]:
    """Read marks, presence, reactions, number checks, group reads and each dial's proxy (masked), oldest
    first, from PostgreSQL (``transport_actions``): also after the connector that did them is gone."""
    await require_status(ctx, company_id)  # 404 for a company without a session
    rows = await ctx.db.fetch(
        "SELECT kind, chat, detail, at FROM transport_actions WHERE company_id = $1 ORDER BY id", company_id)
    return {"success": True, "companyId": company_id, "count": len(rows), "actions": [
        {"kind": r["kind"], "chat": r["chat"], "at": r["at"].isoformat(),
         **(json.loads(r["detail"]) if isinstance(r["detail"], str) else dict(r["detail"]))} for r in rows
    ]}


async def run_connector_activity(ctx: CtxDep, queue: str, name: str, arg: Any, result_type: Any) -> Any:
    """Run one activity of a connector's own queue through a short ``ConnectorCall`` workflow."""
    try:
        return await ctx.client.execute_workflow(
            CONNECTOR_CALL_WORKFLOW,
            ConnectorCallInput(activity=name, queue=queue, arg=arg),
            id=f"connector-call-{uuid.uuid4().hex}",
            task_queue=ctx.settings.temporal_core_queue,
            result_type=result_type,
        )
    except WorkflowFailureError as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ApiError(502, "connector_error", f"{name} failed: {cause}") from None
