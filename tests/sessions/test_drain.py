"""Bounded resources (issue #10, item 4): a connector past its leak threshold drains like a SIGTERM,
exits non-zero for the launcher to restart it, and its sessions are held again by another connector.

Connector processes run the real NeonizeTransport on the model of neonize's client: a pairing
whose QR expires leaves neonize's thread waiting in FetchMe for good, which is the leak.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import pytest

from cli.embedded import wait_until
from cli.processes import ConnectorProcess
from connector.main import EXIT_DRAINED
from domain.states import SessionState
from infra.metrics import read_connector_figures
from infra.sessions import initialize_session
from tests.sessions.conftest import pydantic_client, session_stack
from tests.sessions.test_restarts import (
    all_connected,
    assert_clean_history,
    seed_paired,
    sessions_exist,
    statuses,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("wa", ["model"], indirect=True)
async def test_leaking_connector_drains_exits_75_and_its_sessions_move(
    dev_env, make_settings, db, redis_client, tmp_path, wa, wa_env
):
    client = pydantic_client(dev_env.client)
    paired = [f"company_{uuid.uuid4().int % 10**9}" for _ in range(2)]
    pairing = f"company_{uuid.uuid4().int % 10**9}"
    await seed_paired(db, paired, wa)
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                          with_connector=False,
                          qr_first_timeout_s=0.6, qr_next_timeout_s=0.3, qr_total_timeout_s=1.2)
        )
        s.companies.update([*paired, pairing])
        target = dev_env.client.service_client.config.target_host
        leaky = ConnectorProcess(s.settings, "leaky-" + uuid.uuid4().hex[:6], tmp_path, target,
                                 CONNECTOR_LEAK_THRESHOLD="1", **wa_env).start()
        stack.callback(leaky.stop)
        await wait_until(lambda: sessions_exist(client, paired), 30, interval=0.2)
        await all_connected(client, paired, 30, {leaky.queue})

        # A new company's QR expires unscanned: neonize's thread of that pairing never returns.
        await initialize_session(client, s.settings, pairing)
        await s.wait_state(pairing, SessionState.LOGGED_OUT, timeout=30)
        assert leaky.proc is not None
        code = await asyncio.to_thread(leaky.proc.wait, 30)
        assert code == EXIT_DRAINED, leaky.log()
        full_log = leaky.log_path.read_text()
        assert "connector draining" in full_log and "leaked client threads" in full_log
        figures = {f.connector_id: f for f in await read_connector_figures(redis_client, s.settings.redis_prefix)}
        assert figures[leaky.connector_id].leaked_threads >= 1

        # Drained like a SIGTERM: its lease released, the holds wait for the next connector, which
        # holds them from the stored credentials, no QR.
        assert await db.fetchval("SELECT released_at IS NOT NULL FROM connector_leases WHERE connector_id = $1",
                                 leaky.connector_id)
        assert await db.fetchval("SELECT count(*) FROM session_holds WHERE company_id = ANY($1)", paired) == 2
        fresh = ConnectorProcess(s.settings, "fresh-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        stack.callback(fresh.stop)
        await all_connected(client, paired, 40, {fresh.queue})
        assert_clean_history(await statuses(client, paired))
