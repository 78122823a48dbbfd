"""The nightly jobs' Temporal Schedules (SPEC B4): list, pause, unpause, trigger. Admin only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep, CtxDep
from api.errors import ADMIN_ROUTE, ApiError, route_answers, with_errors
from infra.jobs import UnknownSchedule, list_schedules, pause_schedule, trigger_schedule, unpause_schedule

router = APIRouter(prefix="/api/schedules", tags=["schedules"])


ScheduleIdPath = Annotated[str, Path(description="a schedule's id, as GET /api/schedules lists them",
                                     json_schema_extra={"pattern": r"^[A-Za-z0-9._-]{1,200}$"})]


class ScheduleNote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = None


class ScheduleList(BaseModel):
    success: Literal[True]
    schedules: list[dict[str, Any]] = Field(description="id, kind, cron, exists, paused, recent actions")


class ScheduleDone(BaseModel):
    success: Literal[True]
    id: str
    action: Literal["pause", "unpause", "trigger"]


@router.get("", summary="The nightly jobs' schedules", response_model=None,
            responses=route_answers(ScheduleList, ADMIN_ROUTE))
async def schedules(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    return {"success": True, "schedules": await list_schedules(ctx.client, ctx.settings)}


@router.post("/{schedule_id}/{action}", summary="Pause, unpause or trigger a schedule", response_model=None,
             responses=route_answers(ScheduleDone, with_errors(ADMIN_ROUTE, why={404: "no schedule with this id"})))
async def schedule_action(schedule_id: ScheduleIdPath, action: Literal["pause", "unpause", "trigger"], ctx: CtxDep,
                          principal: AdminDep, body: ScheduleNote | None = None) -> dict[str, Any]:
    note = (body.note if body else None) or f"{action} by {principal.name} via API"
    try:
        if action == "pause":
            await pause_schedule(ctx.client, ctx.settings, schedule_id, note)
        elif action == "unpause":
            await unpause_schedule(ctx.client, ctx.settings, schedule_id, note)
        else:
            await trigger_schedule(ctx.client, ctx.settings, schedule_id)
    except UnknownSchedule as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return {"success": True, "id": schedule_id, "action": action}
