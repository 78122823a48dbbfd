"""``GET /health`` (SPEC H1): ok / degraded / down from real checks.

down (503): Temporal or PostgreSQL unreachable — nothing durable can happen.
degraded (200): Redis unreachable (no live events, limiter in-process) or no
connector polling its queue (sessions cannot be held or reconnected).
WhatsApp per company comes from the session workflows (visibility), so it is
right whichever process holds the connection.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.deps import AppContext, CtxDep, extract_key, principal_for_key
from api.errors import ApiError
from domain.send import SEND_WORKFLOW
from domain.states import SessionState
from infra.sessions import list_sessions

router = APIRouter(tags=["health"])

POLLER_FRESH = timedelta(minutes=2)


async def _check(name: str, probe: Any, timeout: float = 2.0) -> dict[str, Any]:
    try:
        detail = await asyncio.wait_for(probe, timeout)
        out: dict[str, Any] = {"name": name, "status": "ok"}
        if isinstance(detail, dict):
            out.update(detail)
            if detail.get("status"):
                out["status"] = detail["status"]
        return out
    except Exception as exc:  # a health check reports, it never raises
        return {"name": name, "status": "down", "error": f"{type(exc).__name__}: {exc}"[:200]}


async def _connector(ctx: AppContext) -> dict[str, Any]:
    """Pollers of the shared connector queue (DescribeTaskQueue), i.e. live connector processes."""
    live = await live_connector_pollers(ctx)
    return {"status": "ok" if live else "down", "pollers": live}


async def live_connector_pollers(ctx: AppContext) -> list[str]:
    """Identities (``connector@<id>``) of the connectors polling the shared queue lately."""
    resp = await ctx.client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=ctx.client.namespace,
            task_queue=TaskQueue(name=ctx.settings.temporal_connector_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    now = datetime.now(UTC)
    return sorted({p.identity for p in resp.pollers if p.last_access_time.ToDatetime(tzinfo=UTC) > now - POLLER_FRESH})


async def _sessions(ctx: AppContext) -> dict[str, Any]:
    states = await list_sessions(ctx.client)
    by_state: dict[str, int] = {}
    for _, state in states:
        by_state[state.value] = by_state.get(state.value, 0) + 1
    return {
        "total": len(states),
        "byState": by_state,
        "companies": {cid: state.value for cid, state in states},
        "unhealthy": [cid for cid, state in states if state is not SessionState.CONNECTED],
    }


async def _pending(ctx: AppContext) -> dict[str, Any]:
    count = await ctx.client.count_workflows(f'WorkflowType = "{SEND_WORKFLOW}" AND ExecutionStatus = "Running"')
    return {"sendsInFlight": count.count}


async def _is_admin(ctx: AppContext, authorization: str | None, x_api_key: str | None) -> bool:
    key = extract_key(authorization, x_api_key)
    if not key:
        return False
    try:
        return (await principal_for_key(ctx, key)).is_admin
    except ApiError:
        return False


@router.get("/health", summary="ok / degraded / down (503) with every check; details with the admin key")
async def health(
    ctx: CtxDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    checks = await asyncio.gather(
        _check("temporal", ctx.client.service_client.check_health()),
        _check("postgres", ctx.db.ping()),
        _check("redis", ctx.redis.ping()),
        _check("connector", _connector(ctx)),
        _check("whatsapp", _sessions(ctx)),
        _check("pending", _pending(ctx)),
    )
    by_name = {c["name"]: c for c in checks}
    if by_name["temporal"]["status"] != "ok" or by_name["postgres"]["status"] != "ok":
        status = "down"
    elif by_name["redis"]["status"] != "ok" or by_name["connector"]["status"] != "ok":
        status = "degraded"
    else:
        status = "ok"
    if not await _is_admin(ctx, authorization, x_api_key):
        # /health is public (SPEC X1): which companies exist and which hosts run connectors is not.
        for check in checks:
            if check["name"] == "whatsapp" and "companies" in check:
                del check["companies"]
                check["unhealthy"] = len(check["unhealthy"])
            if check["name"] == "connector" and "pollers" in check:
                check["pollers"] = len(check["pollers"])
    return JSONResponse(
        {"status": status, "timestamp": datetime.now(UTC).isoformat(), "checks": checks},
        status_code=503 if status == "down" else 200,
    )
