"""A PostgreSQL outage (SPEC D3): connected sessions stay connected, a reconnect waits with
backoff instead of failing for good, and everything recovers by itself when the database is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cli.embedded import EmbeddedPostgres, free_port
from domain.states import SessionState
from storage import Database, migrate
from tests.sessions.conftest import session_stack

pytestmark = pytest.mark.timeout(120)


async def test_postgres_outage_keeps_sessions_and_recovers(dev_env, make_settings, redis_client, tmp_path: Path):
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    await asyncio.to_thread(pg.start)
    db = Database(pg.dsn)
    try:
        await migrate(db)
        async with session_stack(
            dev_env.client, make_settings, db, redis_client, env=None, search_attributes=False,
            backoff_base_s=0.5, backoff_cap_s=2.0, backoff_max_attempts=50, alert_grace_s=0.5, database_url=pg.dsn,
        ) as s:
            steady, dropped = "company_d3_steady", "company_d3_dropped"
            for cid in (steady, dropped):
                assert (await s.initialize(cid)).state is SessionState.QR
                await s.sim.scan(cid)
                await s.wait_state(cid, SessionState.CONNECTED)

            await asyncio.to_thread(pg.stop, "immediate")
            s.sim.drop(dropped, "network drop during the database outage")
            # The dropped session cannot read its credentials: it backs off, attempt after attempt.
            st = await s.wait_for(dropped, lambda st: st.state is SessionState.BACKOFF and st.attempt >= 2,
                                  timeout=30)
            assert st.last_error and "Connect" in st.last_error, st  # it is the database that is missing
            # The other one never noticed.
            assert (await s.status(steady)).state is SessionState.CONNECTED

            await asyncio.to_thread(pg.start)
            back = await s.wait_state(dropped, SessionState.CONNECTED, timeout=30)
            assert back.qr is None  # stored credentials, no new pairing
            assert (await s.status(steady)).state is SessionState.CONNECTED
            assert not [e for e in s.events if e["type"] == "qr" and e["companyId"] == dropped][1:]
    finally:
        await db.close()
        await asyncio.to_thread(pg.stop, "immediate")
