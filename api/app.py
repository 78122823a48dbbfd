"""The FastAPI application: REST, WebSocket events, health, metrics, onboarding page."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from temporalio.client import Client

from domain.settings import Settings
from infra.redis import redis_client
from infra.temporal import connect_temporal
from storage import Database, migrate

log = logging.getLogger("waorch.api")


@dataclass
class AppState:
    settings: Settings
    client: Client
    db: Database
    redis: aioredis.Redis


async def _check(name: str, probe: Any, timeout: float = 2.0) -> dict[str, Any]:
    try:
        await asyncio.wait_for(probe, timeout)
        return {"name": name, "status": "ok"}
    except Exception as exc:  # a health check reports, it never raises
        return {"name": name, "status": "down", "error": f"{type(exc).__name__}: {exc}"[:200]}


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await connect_temporal(settings, identity="api")
        db = Database(settings.database_dsn, max_size=settings.db_pool_max)
        await migrate(db)
        redis = redis_client(settings)
        app.state.ctx = AppState(settings, client, db, redis)
        try:
            yield
        finally:
            await db.close()
            await redis.aclose()

    app = FastAPI(title="waorch", version="0.1.0", lifespan=lifespan)

    @app.get("/health", tags=["health"])
    async def health() -> JSONResponse:
        ctx: AppState = app.state.ctx
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

    return app
