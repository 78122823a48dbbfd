"""The FastAPI application: REST, WebSocket events, health, metrics, onboarding page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api.deps import AppContext
from api.errors import install_error_handlers
from api.routes import all_routers
from domain.settings import Settings
from infra.admin_key import load_or_create_admin_key
from infra.redis import redis_client
from infra.temporal import connect_temporal
from storage import Database, migrate

log = logging.getLogger("waorch.api")


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    """Build the app. Tests pass ``client`` (a test environment's); processes let it connect."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = client or await connect_temporal(settings, identity="api")
        db = Database(settings.database_dsn, max_size=settings.db_pool_max)
        await migrate(db)
        redis = redis_client(settings)
        if settings.api_admin_key is not None:
            admin_key = settings.api_admin_key.get_secret_value()
        else:
            admin_key, created = load_or_create_admin_key(settings.data_dir)
            if created:
                print(f"generated admin API key (shown once, kept in {settings.data_dir}/admin.key): {admin_key}")
        app.state.ctx = AppContext(settings, temporal, db, redis, admin_key)
        try:
            yield
        finally:
            await db.close()
            await redis.aclose()

    app = FastAPI(
        title="waorch",
        version="0.1.0",
        description="Durable multi-tenant WhatsApp sessions on Temporal",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in all_routers():
        app.include_router(router)
    return app
