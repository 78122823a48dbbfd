"""Failed incoming messages (issue #15.1): list, redeliver, discard.

A message whose company handler failed for the whole retry window waits here
until someone acts. The admin sees every company's; a company key its own
(a company's back end may redeliver once its webhook is fixed). Redeliver and
discard send the same signal as the Temporal UI and wait (``?wait=``, 30 s by
default) for the outcome: 200 done, 502 the handler failed again (the message
stays, its attempts counted), 202 not done yet (the worker may be down).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import CompanyDep, CtxDep, PrincipalDep, parse_company_id
from api.errors import COMPANY_ROUTE, ApiError, route_answers, with_errors
from domain.company import COMPANY_ID_PATTERN
from domain.inbox import SIGNAL_DISCARD, SIGNAL_REDELIVER
from infra.failed_messages import FailedMessageNotFound, request_action
from storage import failed_messages as store

router = APIRouter(prefix="/api/inbox", tags=["inbox"])

_MESSAGE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
MessageIdPath = Annotated[str, Path(description="the WhatsApp message id", max_length=200,
                                    json_schema_extra={"pattern": f"^{_MESSAGE_ID.pattern}$"})]


class FailedMessageRow(BaseModel):
    company_id: str = Field(alias="companyId")
    message_id: str = Field(alias="messageId")
    chat: str
    sender: str | None
    sender_phone: str | None = Field(alias="senderPhone")
    push_name: str | None = Field(alias="pushName")
    text: str | None
    message_type: str | None = Field(alias="messageType")
    sent_at: str = Field(alias="sentAt")
    failed_at: str = Field(alias="failedAt")
    last_attempt_at: str = Field(alias="lastAttemptAt")
    attempts: int
    error: str | None
    workflow_id: str | None = Field(alias="workflowId")


class FailedList(BaseModel):
    success: Literal[True]
    count: int
    total: int = Field(description="all waiting (of the company, or everywhere), beyond the limit")
    messages: list[FailedMessageRow]


class ActionOutcome(BaseModel):
    success: bool
    company_id: str = Field(alias="companyId")
    message_id: str = Field(alias="messageId")
    status: Literal["redelivered", "discarded", "pending", "failed"]
    attempts: int | None
    message: str | None = None


ACTION_ANSWERS = route_answers(
    ActionOutcome, with_errors(COMPANY_ROUTE, 502, why={
        404: "no failed message with this id waits for this company",
        502: "the handler failed again: the message still waits (its attempts counted)"}),
    description="redelivered or discarded",
    s202={"model": ActionOutcome, "description": "requested; not finished within ?wait= seconds"})


@router.get("/failed", summary="Failed messages waiting for an operator, oldest first", response_model=None,
            responses=route_answers(FailedList, COMPANY_ROUTE))
async def list_failed(
    ctx: CtxDep,
    principal: PrincipalDep,
    company: Annotated[str | None, Query(description="only this company (a company key: always its own)",
                                         json_schema_extra={"pattern": COMPANY_ID_PATTERN})] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    company_id = parse_company_id(company) if company is not None else None
    if not principal.is_admin:
        if company_id is not None and company_id != principal.company_id:
            raise ApiError(403, "forbidden", f"this key may not access company {company_id}")
        company_id = principal.company_id
    rows = await store.list_waiting(ctx.db, company_id, limit)
    total = (await store.summary(ctx.db, company_id)).total
    return {"success": True, "count": len(rows), "total": total, "messages": [r.to_json() for r in rows]}


async def _act(ctx: CtxDep, company_id: str, message_id: str, action: str, actor: str, wait: float) -> JSONResponse:
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ApiError(422, "validation_error",
                       "message_id: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':', '@' or '-'")
    try:
        outcome = await request_action(ctx.client, ctx.settings, ctx.db, company_id, message_id, action, actor, wait)
    except FailedMessageNotFound as exc:
        raise ApiError(404, "failed_message_not_found", str(exc), companyId=company_id, messageId=message_id) from None
    body: dict[str, Any] = {"success": outcome.status in ("redelivered", "discarded"), "companyId": company_id,
                            "messageId": message_id, "status": outcome.status, "attempts": outcome.attempts}
    if outcome.status == "failed":
        return JSONResponse({**body, "code": "handler_failed", "error": f"the handler failed again: {outcome.error}; "
                             "the message still waits"}, status_code=502)
    if outcome.status == "pending":
        return JSONResponse({**body, "success": True, "message": f"{action} requested; not finished within "
                             f"{wait:g} s (is the worker running?). GET /api/inbox/failed shows when it is"},
                            status_code=202)
    return JSONResponse(body, status_code=200)


@router.post("/failed/{company_id}/{message_id}/redeliver",
             summary="Run the company's handler on the message again (and send its reply)", response_model=None,
             responses=ACTION_ANSWERS)
async def redeliver(ctx: CtxDep, company_id: CompanyDep, message_id: MessageIdPath, principal: PrincipalDep,
                    wait: Annotated[float, Query(ge=0, le=120)] = 30.0) -> JSONResponse:
    return await _act(ctx, company_id, message_id, SIGNAL_REDELIVER, principal.name, wait)


@router.post("/failed/{company_id}/{message_id}/discard", summary="Give the message up (recorded in the audit)",
             response_model=None, responses=ACTION_ANSWERS)
async def discard(ctx: CtxDep, company_id: CompanyDep, message_id: MessageIdPath, principal: PrincipalDep,
                  wait: Annotated[float, Query(ge=0, le=120)] = 30.0) -> JSONResponse:
    return await _act(ctx, company_id, message_id, SIGNAL_DISCARD, principal.name, wait)
