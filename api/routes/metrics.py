"""``GET /metrics`` (Prometheus text, SPEC H2) and ``GET /api/whatsapp/metrics`` (the same as JSON, H3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from api.deps import AdminDep, CtxDep
from api.errors import ADMIN_ROUTE, error_answers, route_answers
from api.routes.sessions import metrics_snapshot

router = APIRouter(tags=["metrics"])


class SessionCounts(BaseModel):
    total: int
    connected: int
    disconnected: int
    by_state: dict[str, int] = Field(alias="byState")


class MetricsAnswer(BaseModel):
    success: Literal[True]
    metrics: dict[str, Any] = Field(description="sessions, counters, jobs, connectors (the Prometheus figures)")
    sessions: SessionCounts
    timestamp: str


@router.get("/metrics", summary="Prometheus metrics (no key needed)", response_class=Response,
            responses=route_answers(None, error_answers(503), description="Prometheus text exposition format",
                                    s200={"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}))
async def prometheus(ctx: CtxDep) -> Response:
    snapshot = await metrics_snapshot(ctx)
    return Response(snapshot.to_prometheus(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/whatsapp/metrics", summary="Metrics as JSON (admin)", response_model=None,
            responses=route_answers(MetricsAnswer, ADMIN_ROUTE))
async def metrics_json(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    snapshot = await metrics_snapshot(ctx)
    by_state = snapshot.sessions_by_state
    return {
        "success": True,
        "metrics": snapshot.to_json(),
        "sessions": {
            "total": snapshot.total_sessions,
            "connected": snapshot.active_connections,
            "disconnected": snapshot.total_sessions - snapshot.active_connections,
            "byState": by_state,
        },
        "timestamp": datetime.now(UTC).isoformat(),
    }
