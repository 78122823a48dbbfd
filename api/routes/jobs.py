"""Nightly jobs on demand (SPEC B1-B3): ``POST /api/jobs/{kind}``, ``GET /api/jobs/{kind}/runs``. Admin only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from temporalio.client import WorkflowFailureError

from api.deps import AdminDep, CtxDep
from api.errors import ApiError
from infra.jobs import JobAlreadyRunning, list_job_runs, start_job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

JobKind = Literal["backup", "restore-test", "cleanup"]


class JobRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    dry_run: bool | None = Field(default=None, description="default: true for cleanup, false otherwise")
    verbose: bool = False
    wait: bool = Field(default=False, description="answer with the result once the run has finished")


@router.post("/{kind}", status_code=202)
async def run_job(kind: JobKind, ctx: CtxDep, _: AdminDep, body: JobRequest | None = None) -> JSONResponse:
    req = body or JobRequest()
    try:
        handle = await start_job(ctx.client, ctx.settings, kind, dry_run=req.dry_run, verbose=req.verbose)
    except JobAlreadyRunning as exc:
        raise ApiError(409, "job_running", str(exc), workflowId=exc.workflow_id) from None
    payload: dict[str, Any] = {"success": True, "kind": kind, "workflowId": handle.id, "runId": handle.result_run_id}
    if not req.wait:
        return JSONResponse(payload, status_code=202)
    try:
        result = await handle.result()
    except WorkflowFailureError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        return JSONResponse({**payload, "success": False, "status": "failed", "error": message,
                             "code": "job_failed"}, status_code=200)
    return JSONResponse({**payload, "status": result.status, "dryRun": result.dry_run, "jobRunId": result.run_id,
                         "details": result.details}, status_code=200)


@router.get("/{kind}/runs")
async def job_runs(kind: JobKind, ctx: CtxDep, _: AdminDep,
                   limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    runs = await list_job_runs(ctx.db, kind, limit)
    return {"success": True, "kind": kind, "runs": [r.to_json() for r in runs]}
