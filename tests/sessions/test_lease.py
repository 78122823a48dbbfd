"""Connector liveness by lease (SPEC S1, S9, O8): a connector cut off from its coordination stops
its own connections before another may take them; one store alone going away changes nothing.

Two real connector processes; one of them reaches PostgreSQL and Redis only through loopback TCP
proxies, which the test cuts, while the other keeps its direct path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.faults import TcpProxy
from cli.embedded import wait_until
from cli.processes import ConnectorProcess
from tests.sessions.conftest import WA_TRANSPORTS, pydantic_client, session_stack
from tests.sessions.test_restarts import (
    all_connected,
    assert_clean_history,
    seed_paired,
    sessions_exist,
    statuses,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def via(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
def companies() -> list[str]:
    return [f"company_{uuid.uuid4().int % 10**9}" for _ in range(4)]


async def cut_off_pair(stack: AsyncExitStack, s, database_dsn: str, redis_url: str, tmp_path,
                       wa_env: dict[str, Any] | None = None):
    """A victim connector behind proxies to PostgreSQL and Redis holding every session, and a peer."""
    wa_env = dict(wa_env or {})
    database_dsn = wa_env.pop("DATABASE_URL", database_dsn)
    pg_proxy = await TcpProxy(urlsplit(database_dsn).port or 5432).start()
    redis_proxy = await TcpProxy(urlsplit(redis_url).port or 6379).start()
    stack.push_async_callback(pg_proxy.cut)
    stack.push_async_callback(redis_proxy.cut)
    target = s.client.service_client.config.target_host
    victim = ConnectorProcess(s.settings, "v-" + uuid.uuid4().hex[:6], tmp_path, target,
                              DATABASE_URL=via(database_dsn, pg_proxy), REDIS_URL=via(redis_url, redis_proxy),
                              **wa_env)
    victim.start()
    stack.callback(victim.stop)
    return victim, pg_proxy, redis_proxy


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_connector_cut_off_from_both_stores_exits_before_its_sessions_move(
    dev_env, make_settings, db, redis_client, database_dsn, redis_url, tmp_path, companies, wa, wa_env
):
    # Never two holders: the invariant is also checked on the transports' own live sockets (a breach
    # fails the test: tests/conftest.py), the simulator's and the model of neonize's client's alike.
    client = pydantic_client(dev_env.client)
    await seed_paired(db, companies, wa)
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                          with_connector=False)
        )
        s.companies.update(companies)
        victim, pg_proxy, redis_proxy = await cut_off_pair(stack, s, database_dsn, redis_url, tmp_path, wa_env)
        await wait_until(lambda: sessions_exist(client, companies), 30, interval=0.2)  # it starts them itself
        await all_connected(client, companies, 30, {victim.queue})
        peer = ConnectorProcess(s.settings, "p-" + uuid.uuid4().hex[:6], tmp_path,
                                s.client.service_client.config.target_host, **wa_env).start()
        stack.callback(peer.stop)
        await asyncio.sleep(2)  # the peer is watching

        await pg_proxy.cut()
        await redis_proxy.cut()
        cut_at = time.time()
        assert victim.proc is not None

        async def exited() -> bool:
            return victim.proc.poll() is not None

        await wait_until(exited, s.settings.lease_fence_s + 5, interval=0.02)
        exited_at = time.time()
        assert victim.proc.returncode == 75, victim.log()  # it fenced itself: its sockets are closed
        assert "lease lost" in victim.log()

        await all_connected(client, companies, 40, {peer.queue})
        declared = await db.fetchval("SELECT dead_at FROM connector_leases WHERE connector_id = $1",
                                     victim.connector_id)
        # Nobody may take the sessions before the victim is gone, and it goes within the fence time.
        assert declared is not None and declared.timestamp() > exited_at, (declared, exited_at)
        assert exited_at - cut_at < s.settings.lease_fence_s + 2
        held = await db.fetch("SELECT company_id, holder FROM session_holds WHERE company_id = ANY($1)", companies)
        assert {r["company_id"] for r in held} == set(companies)
        assert {r["holder"].split(":")[0] for r in held} == {peer.connector_id}
        assert_clean_history(await statuses(client, companies))


@pytest.mark.parametrize("store", ["postgresql", "redis"])
async def test_one_lease_store_gone_changes_nothing(
    dev_env, make_settings, db, redis_client, database_dsn, redis_url, tmp_path, companies, store
):
    client = pydantic_client(dev_env.client)
    await seed_paired(db, companies)
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                          with_connector=False)
        )
        s.companies.update(companies)
        victim, pg_proxy, redis_proxy = await cut_off_pair(stack, s, database_dsn, redis_url, tmp_path)
        await wait_until(lambda: sessions_exist(client, companies), 30, interval=0.2)
        await all_connected(client, companies, 30, {victim.queue})
        peer = ConnectorProcess(s.settings, "p-" + uuid.uuid4().hex[:6], tmp_path,
                                s.client.service_client.config.target_host).start()
        stack.callback(peer.stop)
        await asyncio.sleep(2)

        proxy = pg_proxy if store == "postgresql" else redis_proxy
        await proxy.cut()
        # Well past the lease's TTL, the fence time and the peer's window, in that one store.
        await asyncio.sleep(s.settings.lease_ttl_s + s.settings.lease_fence_s + 4)
        assert victim.proc is not None and victim.proc.poll() is None, victim.log()
        assert await db.fetchval("SELECT dead_at FROM connector_leases WHERE connector_id = $1",
                                 victim.connector_id) is None
        sts = await statuses(client, companies)
        assert {st.holder_queue for st in sts} == {victim.queue}
        await proxy.restore()
        await asyncio.sleep(2)
        assert victim.proc.poll() is None
        await all_connected(client, companies, 10, {victim.queue})
        assert_clean_history(await statuses(client, companies))
