"""``GET /health`` (SPEC H1): ok / degraded / down from real checks.

down (503): Temporal or PostgreSQL unreachable — nothing durable can happen.
degraded (200): Redis unreachable (no live events, limiter in-process), no
worker or no connector polling its queue (nothing runs, or sessions cannot be
held), or any of these answering slower than ``HEALTH_PROBE_SLOW_S``. Every
probe is bounded by ``HEALTH_PROBE_TIMEOUT_S`` (5 s) and reports its latency; the
body names what is down and what is degraded. WhatsApp per company comes from
the session workflows (visibility), so it is right whichever process holds the
connection.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AppContext, CtxDep, extract_key, principal_for_key
from api.errors import ApiError, route_answers
from domain.send import SEND_WORKFLOW
from domain.states import SessionState
from infra.probes import InfraProbes, ProbeResult, probe_redis_client
from infra.sessions import list_sessions
from storage import failed_messages, incoming_spool

router = APIRouter(tags=["health"])

# Down: nothing durable can happen. Degraded when down or slow: the service works in part.
VITAL = ("temporal", "postgres")
SUPPORTING = ("redis", "worker", "connector")
# Degraded, never down: some media kinds cannot be sent (a connector lacks ffmpeg/ffprobe).
CAPABILITIES = ("media",)


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


async def _inbox(ctx: AppContext) -> dict[str, Any]:
    """Incoming messages: failed ones waiting for a person (PostgreSQL), the spool, and the backlog.
    Informative: the service is not less healthy for them (failed messages and the backlog alert on their own)."""
    summary = await failed_messages.summary(ctx.db)
    spool = await incoming_spool.summary(ctx.db)
    backlog = ctx.watchdog.backlog if ctx.watchdog is not None else None
    return {"failedMessages": summary.total,
            # Delivered by WhatsApp, not yet handed to Temporal (grows while Temporal is unreachable).
            "spool": spool.to_json(),
            "oldestFailedAt": summary.companies[0].oldest.isoformat() if summary.companies else None,
            # As the watchdog last saw it: messages queued longer than INBOX_BACKLOG_ALERT_S (null: unknown).
            "backlog": None if backlog is None else {"messages": backlog.messages, "chats": backlog.chats,
                                                     "oldestSeconds": round(backlog.oldest_s, 1)}}


async def _media(ctx: AppContext) -> dict[str, Any]:
    """Media kinds a live connector cannot send (ffmpeg/ffprobe missing there): degraded, naming them."""
    from api.routes.sessions import live_connector_figures

    unavailable = {f.connector_id: f.media_unavailable for f in await live_connector_figures(ctx)
                   if f.media_unavailable}
    kinds = sorted({kind for per in unavailable.values() for kind in per})
    return {"status": "degraded" if kinds else "ok", "unavailable": kinds, "connectors": unavailable}


async def _is_admin(ctx: AppContext, authorization: str | None, x_api_key: str | None) -> bool:
    key = extract_key(authorization, x_api_key)
    if not key:
        return False
    try:
        return (await principal_for_key(ctx, key)).is_admin
    except ApiError:
        return False


def overall(results: list[ProbeResult]) -> str:
    by_name = {r.name: r.status for r in results}
    if any(by_name.get(name) == "down" for name in VITAL):
        return "down"
    if any(by_name.get(name, "ok") != "ok" for name in (*VITAL, *SUPPORTING)):
        return "degraded"
    if any(by_name.get(name, "ok") == "degraded" for name in CAPABILITIES):
        return "degraded"
    return "ok"


def probes_of(ctx: AppContext) -> InfraProbes:
    """The app's probes (made at start-up); made on first use for a context built by hand."""
    if ctx.probes is None:
        ctx.probes = InfraProbes(ctx.settings, ctx.client, ctx.db, probe_redis_client(ctx.settings))
    return ctx.probes


class HealthCheck(BaseModel):
    """One probe: its status and latency, and what it found (its own fields)."""

    model_config = ConfigDict(extra="allow")

    name: str
    status: Literal["ok", "degraded", "down"]


class HealthAnswer(BaseModel):
    status: Literal["ok", "degraded", "down"]
    timestamp: str
    down: list[str] = Field(description="checks that are down")
    degraded: list[str] = Field(description="checks that are degraded")
    checks: list[HealthCheck]


@router.get("/health", summary="ok / degraded / down (503) with every check; details with the admin key",
            response_model=None,
            responses=route_answers(HealthAnswer, {}, description="ok or degraded", s503={
                "model": HealthAnswer, "description": "down: Temporal or PostgreSQL unreachable"}),
            # Public: a key (either scheme) is optional and only adds details.
            openapi_extra={"security": [{}, {"HTTPBearer": []}, {"APIKeyHeader": []}]})
async def health(ctx: CtxDep, request: Request) -> JSONResponse:
    authorization, x_api_key = request.headers.get("authorization"), request.headers.get("x-api-key")
    probes = probes_of(ctx)
    infra, whatsapp, pending, inbox, media = await asyncio.gather(
        probes.infrastructure(),
        probes.run("whatsapp", _sessions(ctx), judge_speed=False),
        probes.run("pending", _pending(ctx), judge_speed=False),
        probes.run("inbox", _inbox(ctx), judge_speed=False),
        probes.run("media", _media(ctx), judge_speed=False),
    )
    results = [*infra, whatsapp, pending, inbox, media]
    status = overall(results)
    checks = [r.to_json() for r in results]
    if not await _is_admin(ctx, authorization, x_api_key):
        # /health is public (SPEC X1): which companies exist and which hosts run processes is not.
        for check in checks:
            if check["name"] == "whatsapp" and "companies" in check:
                del check["companies"]
                check["unhealthy"] = len(check["unhealthy"])
            if "pollers" in check:
                check["pollers"] = len(check["pollers"])
            if check["name"] == "media":
                check.pop("connectors", None)
    return JSONResponse(
        {"status": status, "timestamp": datetime.now(UTC).isoformat(),
         "down": [r.name for r in results if r.status == "down"],
         "degraded": [r.name for r in results if r.status == "degraded"],
         "checks": checks},
        status_code=503 if status == "down" else 200,
    )
