"""The nightly jobs' Temporal Schedules (SPEC B4): list, pause, unpause, trigger. Admin only."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import AdminDep, CtxDep
from api.errors import ApiError
from infra.jobs import UnknownSchedule, list_schedules, pause_schedule, trigger_schedule, unpause_schedule

router = APIRouter(prefix="/api/schedules", tags=["schedules"])


class ScheduleNote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = None


@router.get("")
async def schedules(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    return {"success": True, "schedules": await list_schedules(ctx.client, ctx.settings)}


@router.post("/{schedule_id}/{action}")
async def schedule_action(schedule_id: str, action: Literal["pause", "unpause", "trigger"], ctx: CtxDep,
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
