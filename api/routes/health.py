"""``GET /health`` (SPEC H1): ok / degraded / down from real checks."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CtxDep

router = APIRouter(tags=["health"])


async def _check(name: str, probe: Any, timeout: float = 2.0) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe, timeout)
        return {"name": name, "status": "ok"}
    except Exception as exc:  # a health check reports, it never raises
        return {"name": name, "status": "down", "error": f"{type(exc).__name__}: {exc}"[:200]}


@router.get("/health")
async def health(ctx: CtxDep) -> JSONResponse:
    checks = await asyncio.gather(
        _check("temporal", ctx.client.service_client.check_health()),
        _check("postgres", ctx.db.ping()),
        _check("redis", ctx.redis.ping()),
    )
    by_name = {c["name"]: c for c in checks}
    if by_name["temporal"]["status"] != "ok" or by_name["postgres"]["status"] != "ok":
        status = "down"
    elif any(c["status"] != "ok" for c in checks):
        status = "degraded"
    else:
        status = "ok"
    return JSONResponse({"status": status, "checks": checks}, status_code=503 if status == "down" else 200)
