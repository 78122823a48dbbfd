"""Nightly jobs on demand (SPEC B1-B3): ``POST /api/jobs/{kind}``, ``GET /api/jobs/{kind}/runs``. Admin only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.alias_generators import to_camel
from temporalio.client import WorkflowFailureError

from api.deps import AdminDep, CtxDep
from api.errors import ADMIN_ROUTE, ApiError, route_answers, with_errors
from infra.jobs import JobAlreadyRunning, list_job_runs, start_job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

JobKind = Literal["backup", "restore-test", "cleanup"]


class JobRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # Strict: ``"verbose": 0`` or ``"wait": "no"`` is a 422, not a guess (the schema says boolean).
    dry_run: StrictBool | None = Field(default=None, description="default: true for cleanup, false otherwise")
    verbose: StrictBool = False
    wait: StrictBool = Field(default=False, description="answer with the result once the run has finished")


class JobStarted(BaseModel):
    success: bool = Field(description="false when the run (waited for) failed")
    kind: JobKind
    workflow_id: str = Field(alias="workflowId")
    run_id: str | None = Field(alias="runId")
    status: str | None = Field(default=None, description="with wait: the run's outcome (failed when it failed)")
    dry_run: bool | None = Field(default=None, alias="dryRun")
    job_run_id: int | None = Field(default=None, alias="jobRunId")
    details: dict[str, Any] | None = None
    error: str | None = None
    code: str | None = None


class JobRunRow(BaseModel):
    id: int
    kind: str
    workflow_id: str | None
    status: str
    dry_run: bool
    started_at: str
    finished_at: str | None
    duration_s: float | None
    details: dict[str, Any]
    error: str | None


class JobRuns(BaseModel):
    success: Literal[True]
    kind: JobKind
    runs: list[JobRunRow]


@router.post("/{kind}", status_code=202, summary="Run a nightly job now (optionally waiting for its result)",
             response_model=None, responses=route_answers(
                 JobStarted, with_errors(ADMIN_ROUTE, 409, why={409: "a run of this job is running already"}),
                 status=202, description="started", s200={"model": JobStarted,
                                                          "description": "finished (with wait): its result"}))
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


@router.get("/{kind}/runs", summary="The newest runs of a job", response_model=None,
            responses=route_answers(JobRuns, ADMIN_ROUTE))
async def job_runs(kind: JobKind, ctx: CtxDep, _: AdminDep,
                   limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    runs = await list_job_runs(ctx.db, kind, limit)
    return {"success": True, "kind": kind, "runs": [r.to_json() for r in runs]}
