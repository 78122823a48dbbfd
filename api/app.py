"""The FastAPI application: REST, WebSocket events, health, metrics, onboarding and operator pages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from temporalio.client import Client

from api.deps import AppContext
from api.errors import install_error_handlers
from api.events import EventHub, HolderLiveness, LastEvents
from api.routes import all_routers
from domain.settings import Settings
from infra.admin_key import load_or_create_admin_key
from infra.alerts import Alert, AlertSender
from infra.jobs import job_metrics_provider
from infra.metrics import EventCounters, counters_key
from infra.probes import InfraProbes, probe_redis_client
from infra.ratelimit import RateLimiter
from infra.redis import EventPublisher
from infra.sentry import init_sentry
from infra.temporal import connect_temporal
from infra.watchdog import Watchdog
from storage import Database, migrate
from storage.blobs import blob_store

log = logging.getLogger("waorch.api")


def api_redis_client(settings: Settings) -> aioredis.Redis:
    """Redis for request paths: one quick retry, so a Redis outage costs milliseconds, not seconds
    (the limiter then goes in-process and health says degraded)."""
    return aioredis.from_url(
        settings.redis_dsn, decode_responses=True, socket_connect_timeout=1, socket_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
    )


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    """Build the app. Tests pass ``client`` (a test environment's); processes let it connect."""
    init_sentry(settings, "api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = client or await connect_temporal(settings, identity="api", interactive=True)
        db = Database(settings.database_dsn, max_size=settings.db_pool_max)
        await migrate(db)
        redis = api_redis_client(settings)
        if settings.api_admin_key is not None:
            admin_key = settings.api_admin_key.get_secret_value()
        else:
            admin_key, created = load_or_create_admin_key(settings.data_dir)
            if created:
                print(f"generated admin API key (shown once, kept in {settings.data_dir}/admin.key): {admin_key}")
        counters = EventCounters(redis, settings.redis_prefix)
        limiter = RateLimiter(
            redis, prefix=settings.redis_prefix, limit=settings.rate_limit_count,
            window_s=settings.rate_limit_window_s, counters_key=counters_key(settings.redis_prefix),
        )
        contact_limiter = RateLimiter(
            redis, prefix=settings.redis_prefix, limit=settings.contact_check_limit_count,
            window_s=settings.contact_check_window_s, counters_key=counters_key(settings.redis_prefix),
            name="contact-checks",
        )
        holders = HolderLiveness()
        last_events = LastEvents(redis, settings.redis_prefix)
        hub = EventHub(settings.redis_dsn, settings.events_channel, counters, holders, last_events)
        await hub.start()
        try:  # events published right after start-up must reach WebSocket clients
            await asyncio.wait_for(hub.subscribed.wait(), 3.0)
        except TimeoutError:
            log.warning("events: Redis subscription not ready yet; it keeps retrying")
        probe_redis = probe_redis_client(settings)
        probes = InfraProbes(settings, temporal, db, probe_redis)
        # Alerts when the worker cannot send them (issue #15.2): this process watches the infrastructure.
        alerts = AlertSender(settings)

        async def alert(text: str, severity: str) -> str:
            return await alerts.deliver(Alert(text=text, severity=severity))

        watchdog = Watchdog(settings, probes, alert, lease_redis=probe_redis)
        app.state.ctx = AppContext(
            settings, temporal, db, redis, admin_key, limiter=limiter, contact_limiter=contact_limiter,
            counters=counters, events=hub,
            publisher=EventPublisher(redis, settings.events_channel),
            job_metrics=job_metrics_provider(db, settings.restore_rto_target_s),
            probes=probes, watchdog=watchdog, holders=holders,
            last_events=last_events, blobs=blob_store(settings),
        )
        if settings.watchdog_enabled:
            await watchdog.start()
        try:
            yield
        finally:
            await watchdog.stop()
            await hub.stop()
            await db.close()
            await redis.aclose()
            await probe_redis.aclose()

    app = FastAPI(
        title="waorch",
        version="0.1.0",
        description="Durable multi-tenant WhatsApp sessions on Temporal",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in all_routers(settings):
        app.include_router(router)
    return app
