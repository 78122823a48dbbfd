"""The production worker (``build_worker``) as its own process, so a test can SIGKILL it."""

from __future__ import annotations

import asyncio

from activities.worker import WorkerDeps, build_worker
from domain.settings import Settings
from infra.redis import EventPublisher, redis_client
from infra.temporal import connect_temporal
from storage import Database


async def main() -> None:
    settings = Settings(_env_file=None)
    client = await connect_temporal(settings)
    db = Database(settings.database_dsn)
    redis = redis_client(settings)
    deps = WorkerDeps(settings, client, db, redis, EventPublisher(redis, settings.events_channel))
    async with build_worker(deps):
        print("worker ready", flush=True)
        await asyncio.Event().wait()
