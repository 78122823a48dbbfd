"""A connector's lease is renewed in both stores all the time: through several lease lifetimes it never
lapses in PostgreSQL or in Redis (peers would declare a live process dead), and a lease no longer
renewed expires like a dead process's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from connector.lease import Incarnation, LeaseKeeper, lease_key
from domain.settings import Settings
from storage import Database


async def test_the_lease_never_lapses_in_either_store(make_settings: Callable[..., Settings], db: Database,
                                                      redis_client: aioredis.Redis) -> None:
    settings = make_settings(lease_renew_s=0.5, lease_ttl_s=1.5, lease_fence_s=2.0)
    fenced: list[str] = []
    keeper = LeaseKeeper(settings, Incarnation.new(settings), fence=fenced.append)
    await keeper.register(db.dsn, redis_client)
    key = lease_key(settings, keeper.me.incarnation)
    try:
        samples = 0
        deadline = time.monotonic() + 3 * settings.lease_ttl_s
        while time.monotonic() < deadline:
            left = await db.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM connector_leases "
                                     "WHERE incarnation = $1", keeper.me.incarnation)
            assert left is not None and left > 0, f"the lease lapsed in PostgreSQL ({left} s left)"
            assert await redis_client.pttl(key) > 0, "the lease lapsed in Redis"
            samples += 1
            await asyncio.sleep(0.1)
        assert samples > 10 and not fenced and keeper.pg_ok and keeper.redis_ok
        keeper.stop()
        await asyncio.sleep(settings.lease_ttl_s + 0.5)
        assert await redis_client.pttl(key) < 0  # it expires like a dead process's
    finally:
        keeper.stop()
