"""Redis client construction and event publishing (SPEC E1)."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from domain.events import Event
from domain.settings import Settings

log = logging.getLogger("waorch.events")


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.from_url(
        settings.redis_dsn, decode_responses=True, socket_connect_timeout=2, socket_timeout=5,
        health_check_interval=15,
    )


class EventPublisher:
    """Publishes events on ``whatsapp:events``. A Redis outage loses the live
    event (it is a notification, the state itself lives in Temporal) but never
    fails the caller."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel

    async def publish(self, event: Event) -> bool:
        try:
            await self._client.publish(self._channel, event.to_json())
            return True
        except (aioredis.RedisError, OSError) as exc:
            log.warning(
                "event not published company_id=%s type=%s error=%s",
                event.company_id, event.type.value, type(exc).__name__,
            )
            return False
