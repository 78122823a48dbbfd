"""Redis client construction and event publishing (SPEC E1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

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

    @property
    def client(self) -> aioredis.Redis:
        return self._client

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


class EventSubscription:
    """One process's subscription to ``whatsapp:events``, kept alive across Redis restarts.

    Its connection retries without end (redis-py ``Retry``) and re-subscribes by
    itself; subclasses say what to do with each raw event in :meth:`on_event`.
    """

    name = "events"

    def __init__(self, redis_dsn: str, channel: str) -> None:
        self._redis = aioredis.from_url(
            redis_dsn, decode_responses=True, socket_connect_timeout=2, socket_timeout=None,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=-1),
        )
        self.channel = channel
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()

    async def on_event(self, raw: str) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscribed.set()
            log.info("events subscribed channel=%s by=%s", self.channel, self.name)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await self.on_event(str(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event subscription ended channel=%s by=%s", self.channel, self.name)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
