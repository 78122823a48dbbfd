"""Simulator controls (SPEC O5), mounted only when ``WA_TRANSPORT=simulator``.

Each control is an activity on the queue of the connector that holds the
session (from its status), so it reaches the simulated phone of that session.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from temporalio.client import WorkflowFailureError

from api.deps import CompanyDep, CtxDep
from api.errors import ApiError
from api.routes.sessions import require_status
from domain.send import CONNECTOR_CALL_WORKFLOW, ConnectorCallInput
from domain.session import (
    ACTIVITY_SIMULATOR_CONTROL,
    ACTIVITY_SIMULATOR_OUTBOX,
    OutboxEntry,
    SimulatorCommand,
)

router = APIRouter(prefix="/api/simulator", tags=["simulator"])

Action = Literal["scan", "disconnect", "replace", "logout", "ban", "incoming"]


class ControlBody(BaseModel):
    """Optional details of a control; each applies to the actions named."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    phone: StrictStr | None = Field(default=None, pattern=r"^[0-9]{6,15}$", description="scan: the phone's number")
    reason: StrictStr | None = Field(default=None, max_length=200, description="disconnect: why")
    expires_s: float | None = Field(default=None, alias="expiresS", gt=0, le=86400, description="ban: seconds")
    text: StrictStr | None = Field(default=None, min_length=1, max_length=4096, description="incoming: text")
    chat: StrictStr | None = Field(default=None, max_length=128, description="incoming: chat JID")
    sender: StrictStr | None = Field(default=None, max_length=128, description="incoming: sender JID")
    message_id: StrictStr | None = Field(default=None, alias="messageId", max_length=128,
                                         description="incoming: WhatsApp message id")


async def _holder_queue(ctx: CtxDep, company_id: str) -> str:
    status = await require_status(ctx, company_id)
    if not status.holder_queue:
        raise ApiError(409, "not_held", f"no connector holds {company_id} now (state: {status.state.value})",
                       state=status.state.value)
    return status.holder_queue


@router.post("/{company_id}/{action}", summary="Drive the simulated phone: scan, disconnect, 440, logout, ban…")
async def control(
    ctx: CtxDep,
    company_id: CompanyDep,
    action: Action,
    body: Annotated[ControlBody | None, Body()] = None,
) -> dict[str, Any]:
    queue = await _holder_queue(ctx, company_id)
    params: dict[str, object] = body.model_dump(exclude_none=True) if body else {}
    result = await run_connector_activity(
        ctx, queue, ACTIVITY_SIMULATOR_CONTROL, SimulatorCommand(company_id, action, params), dict
    )
    return {"success": True, "companyId": company_id, "action": action, "result": result}


@router.get("/{company_id}/outbox", summary="What the simulated phone has sent")
async def outbox(ctx: CtxDep, company_id: CompanyDep) -> dict[str, Any]:
    queue = await _holder_queue(ctx, company_id)
    entries: list[OutboxEntry] = await run_connector_activity(
        ctx, queue, ACTIVITY_SIMULATOR_OUTBOX, company_id, list[OutboxEntry]
    )
    return {"success": True, "companyId": company_id, "count": len(entries), "messages": [
        {"messageId": e.message_id, "to": e.to, "text": e.text, "timestamp": e.timestamp.isoformat(),
         "quoted": e.quoted} for e in entries
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
