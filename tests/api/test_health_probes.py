"""/health does not cry wolf (issue #15.3): a slow PostgreSQL or Redis that answers is "degraded" with its
latency, never "down"; only a probe that does not answer within HEALTH_PROBE_TIMEOUT_S (5 s) is down.

The slowness is real: PostgreSQL behind a TCP proxy that holds every answer back, Redis busy in
``DEBUG SLEEP``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from temporalio.client import Client

from cli.embedded import EmbeddedRedis, free_port
from domain.settings import Settings
from tests.api.conftest import serve_asgi

pytestmark = pytest.mark.timeout(120)


class SlowLink:
    """A TCP proxy to ``target_port`` that holds each answer from the server back ``delay_s``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, slow: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if slow and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True))


def _check(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in body["checks"] if c["name"] == name)
    return found


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A Redis of this test alone: it is made to sleep."""
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    await asyncio.to_thread(server.start)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


async def _sleep_redis(url: str, seconds: float) -> None:
    r = aioredis.from_url(url)
    try:
        await r.execute_command("DEBUG", "SLEEP", seconds)  # type: ignore[no-untyped-call]
    finally:
        await r.aclose()


async def test_slow_postgres_is_degraded_with_its_latency_not_down(
    client: Client, api_settings: Settings, pg_server: Any, database_dsn: str
) -> None:
    target_port = int(database_dsn.rsplit(":", 1)[1].split("/")[0])
    async with SlowLink(target_port) as link:
        dsn = database_dsn.replace(f":{target_port}/", f":{link.port}/")
        settings = api_settings.model_copy(update={"database_url": SecretStr(dsn)})  # default 5 s / 1 s
        assert (settings.health_probe_timeout_s, settings.health_probe_slow_s) == (5.0, 1.0)
        async with serve_asgi(settings, client) as api:
            warm = await api.http.get("/health")  # opens the pool's connection at full speed
            assert _check(warm.json(), "postgres")["status"] == "ok", warm.text

            link.delay_s = 1.4  # a ping is two round trips (query, reset): ~2.8 s, past the old 2 s cut-off
            slow = await api.http.get("/health")
            assert slow.status_code == 200, slow.text
            body = slow.json()
            pg = _check(body, "postgres")
            assert pg["status"] == "degraded" and pg["latencyMs"] >= 2400, pg
            # Slow is not down: the service answers 200 and says what is slow.
            assert body["status"] == "degraded" and "postgres" in body["degraded"], body
            assert "postgres" not in body["down"], body


async def test_slow_redis_is_degraded_and_a_silent_one_is_down_after_the_timeout(
    client: Client, api_settings: Settings, own_redis: str
) -> None:
    settings = api_settings.model_copy(update={"redis_url": SecretStr(own_redis)})
    async with serve_asgi(settings, client) as api:
        assert _check((await api.http.get("/health")).json(), "redis")["status"] == "ok"

        sleeper = asyncio.create_task(_sleep_redis(own_redis, 3))
        await asyncio.sleep(0.3)
        body = (await api.http.get("/health")).json()
        await sleeper
        redis_check = _check(body, "redis")
        assert redis_check["status"] == "degraded" and redis_check["latencyMs"] >= 2000, redis_check
        assert "redis" in body["degraded"]

    # The timeout is a setting: a Redis silent for longer than it is down, and /health says so in time.
    short = settings.model_copy(update={"health_probe_timeout_s": 1.0, "health_probe_slow_s": 0.3})
    async with serve_asgi(short, client) as api:
        sleeper = asyncio.create_task(_sleep_redis(own_redis, 2.5))
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        body = (await api.http.get("/health")).json()
        took = asyncio.get_running_loop().time() - started
        await sleeper
        redis_check = _check(body, "redis")
        assert redis_check["status"] == "down" and "no answer within 1 s" in redis_check["error"], redis_check
        assert "redis" in body["down"] and took < 2.2
