"""``GET /metrics`` (Prometheus text, SPEC H2) and ``GET /api/whatsapp/metrics`` (the same as JSON, H3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import AdminDep, CtxDep
from api.routes.sessions import metrics_snapshot

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (no key needed)", response_class=Response)
async def prometheus(ctx: CtxDep) -> Response:
    snapshot = await metrics_snapshot(ctx)
    return Response(snapshot.to_prometheus(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/whatsapp/metrics", summary="Metrics as JSON (admin)")
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
