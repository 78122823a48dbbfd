"""Restarts are invisible (SPEC S1, S9, O3, O8): a real dev server, real connector processes.

The session workflows run in-process here; the connections live in connector
subprocesses. Companies are "already paired" (device rows in PostgreSQL), so
every (re)connection must come from the stored credentials — a QR anywhere is
a failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType

from cli.embedded import TemporalDevConfig, TemporalDevServer, free_port, wait_until
from cli.processes import ConnectorProcess
from domain.session import ACTIVITY_HOLD_SESSION, SessionStatus, session_workflow_id
from domain.states import SessionState
from infra.sessions import initialize_session, list_sessions, session_status
from tests.sessions.conftest import WA_TRANSPORTS, pydantic_client, session_stack

pytestmark = pytest.mark.slow

BAD_STATES = {SessionState.QR, SessionState.LOGGED_OUT, SessionState.FAILED, SessionState.REPLACED}


async def seed_paired(db, companies: list[str], wa: str = "simulator") -> None:
    """Companies already paired: device rows in the transport's store and companies.device_jid."""
    for cid in companies:
        jid = f"7999{random.randrange(10**9):09d}:1@s.whatsapp.net"
        if wa == "model":  # a whatsmeow_device row, as pairing leaves it (keys are random here)
            await db.execute(
                """INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,
                       signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,
                       adv_account_sig_key, adv_device_sig, platform, business_name, push_name, lid_migration_ts,
                       companion_meta_nonce)
                   VALUES ($1, 1, $2, $3, $4, 1, $5, $6, $7, $8, $9, $10, 'model', '', 'seeded', 0, '')""",
                jid, *(os.urandom(n) for n in (32, 32, 32, 64, 32, 32, 64, 32, 64)),
            )
        else:
            await db.execute("INSERT INTO sim_devices (company_id, jid, phone) VALUES ($1, $2, $3)", cid, jid,
                             jid.split(":")[0])
        await db.execute("INSERT INTO companies (company_id, device_jid) VALUES ($1, $2)", cid, jid)


async def device_rows(db, companies: list[str], wa: str) -> int:
    if wa == "model":
        return int(await db.fetchval(
            """SELECT count(*) FROM whatsmeow_device d JOIN companies c ON c.device_jid = d.jid
               WHERE c.company_id = ANY($1)""", companies))
    return int(await db.fetchval("SELECT count(*) FROM sim_devices WHERE company_id = ANY($1)", companies))


async def statuses(client, companies: list[str]) -> list[SessionStatus]:
    out = await asyncio.gather(*(session_status(client, c) for c in companies))
    assert all(s is not None for s in out)
    return [s for s in out if s is not None]


async def sessions_exist(client, companies: list[str]) -> bool:
    return all(s is not None for s in await asyncio.gather(*(session_status(client, c) for c in companies)))


async def all_connected(client, companies: list[str], timeout: float, holders: set[str] | None = None) -> None:
    async def ok() -> bool:
        sts = await statuses(client, companies)
        assert not [s for s in sts if s.state in BAD_STATES], [(s.company_id, s.state) for s in sts]
        return all(s.state is SessionState.CONNECTED and (holders is None or s.holder_queue in holders)
                   for s in sts)

    await wait_until(ok, timeout, interval=0.2)


def assert_clean_history(sts: list[SessionStatus]) -> None:
    for st in sts:
        assert st.qr_sequence == 0, st
        states = {h.split(" ", 1)[1] for h in st.history}
        assert states <= {"starting", "connecting", "connected"}, st.history


# The liveness period of a connector's holds: its lease's time to live (LEASE_TTL_S, default).
HOLD_PERIOD_S = 4.0


async def hold_attempts(client, company_id: str) -> tuple[str, int]:
    """(run id, hold_session activities scheduled in it) of the company's session workflow."""
    handle = client.get_workflow_handle(session_workflow_id(company_id))
    run_id = (await handle.describe()).run_id
    history = await client.get_workflow_handle(session_workflow_id(company_id), run_id=run_id).fetch_history()
    scheduled = [e for e in history.events if e.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                 and e.activity_task_scheduled_event_attributes.activity_type.name == ACTIVITY_HOLD_SESSION]
    return run_id, len(scheduled)


def hold_lines(connector: ConnectorProcess) -> tuple[Counter[str], Counter[str]]:
    """Holds started and ended per company, from the connector's log."""
    text = connector.log_path.read_text(errors="replace")
    return (Counter(re.findall(r"hold start company_id=(\S+)", text)),
            Counter(re.findall(r"hold end company_id=(\S+)", text)))


def open_holds(connectors: list[ConnectorProcess]) -> dict[str, list[str]]:
    """company → the queue of each live connector that has a hold of it open (started, not ended)."""
    out: dict[str, list[str]] = {}
    for c in connectors:
        if c.proc is None or c.proc.poll() is not None:
            continue  # a killed connector holds nothing, whatever its log says
        started, ended = hold_lines(c)
        for cid in started:
            out.setdefault(cid, []).extend([c.queue] * (started[cid] - ended[cid]))
    return out


async def assert_each_session_held_once_through(
    client, companies: list[str], connectors: list[ConnectorProcess], period_s: float, periods: float = 2.0
) -> None:
    """Through ``periods`` liveness periods (sampled, not a snapshot): every session stays connected,
    held by exactly one live connector — the same one all along, per the workflow and per the
    connectors' logs — and no hold is restarted (no new hold_session in the workflow's history,
    no new hold start in any connector's log)."""
    holders = {st.company_id: st.holder_queue for st in await statuses(client, companies)}
    attempts = {cid: await hold_attempts(client, cid) for cid in companies}
    starts = [hold_lines(c)[0] for c in connectors]
    deadline = time.monotonic() + periods * period_s + 0.5
    samples = 0
    while time.monotonic() < deadline:
        for st in await statuses(client, companies):
            assert st.state is SessionState.CONNECTED, (st.company_id, st.state, st.last_error)
            assert st.holder_queue == holders[st.company_id], (st.company_id, holders[st.company_id], st)
        opened = open_holds(connectors)
        assert {cid: opened.get(cid) for cid in companies} == {cid: [holders[cid]] for cid in companies}, opened
        samples += 1
        await asyncio.sleep(0.25)
    assert samples >= 2 * periods
    assert {cid: await hold_attempts(client, cid) for cid in companies} == attempts  # no hold restarted
    assert [hold_lines(c)[0] for c in connectors] == starts


@pytest.fixture
def companies() -> list[str]:
    return [f"company_{uuid.uuid4().int % 10**9}" for _ in range(4)]


async def test_concurrent_initialize_is_one_session_with_search_attributes(dev_env, make_settings, db, redis_client):
    digits = str(random.randrange(10**8, 10**9))
    async with session_stack(dev_env.client, make_settings, db, redis_client, env=None,
                             search_attributes=True) as s:
        a, b = await asyncio.gather(s.initialize(digits), s.initialize(f" company_{digits} "))
        cid = f"company_{digits}"
        s.companies.add(cid)
        assert a.state is SessionState.QR and b.state is SessionState.QR
        assert s.sim.dials[cid] == 1 and s.sim.held == [cid]  # one connection
        runs = [w async for w in s.client.list_workflows(f'WorkflowId = "session-{cid}"')]
        assert len(runs) == 1
        await s.sim.scan(cid)
        await s.wait_state(cid, SessionState.CONNECTED)

        async def listed() -> bool:
            return (cid, SessionState.CONNECTED) in await list_sessions(s.client)

        await wait_until(listed, 15, interval=0.2)
        found = [w async for w in s.client.list_workflows(f'CompanyId = "{cid}" AND SessionState = "connected"')]
        assert [w.id for w in found] == [f"session-{cid}"]


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_connector_sigkill_then_sigterm_sessions_come_back_without_qr(
    dev_env, make_settings, db, redis_client, tmp_path, companies, wa, wa_env
):
    client = pydantic_client(dev_env.client)
    await seed_paired(db, companies, wa)
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                          with_connector=False)
        )
        s.companies.update(companies)
        target = dev_env.client.service_client.config.target_host
        first = ConnectorProcess(s.settings, "c1-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        stack.callback(first.stop)
        # Nobody calls initialize: the connector starts every stored company's session itself.
        await wait_until(lambda: sessions_exist(client, companies), 30, interval=0.2)
        await all_connected(client, companies, 30, {first.queue})

        second = ConnectorProcess(s.settings, "c2-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        stack.callback(second.stop)
        await asyncio.sleep(2)  # the second one is up and watching its peers
        killed_at = await db.fetchval("SELECT now()")
        first.kill()  # SIGKILL: its lease expires in PostgreSQL and Redis; the second one adopts its holds
        await all_connected(client, companies, 40, {second.queue})
        declared = await db.fetchval("SELECT dead_at FROM connector_leases WHERE connector_id = $1", first.connector_id)
        assert declared is not None and (declared - killed_at).total_seconds() < 15, (declared, killed_at)

        assert second.terminate() == 0, second.log()  # SIGTERM: closes without logout
        assert await device_rows(db, companies, wa) == 4
        # The holds wait for the next connector; the lease says they may be taken at once.
        assert await db.fetchval("SELECT count(*) FROM session_holds WHERE company_id = ANY($1)", companies) == 4
        assert await db.fetchval("SELECT released_at IS NOT NULL FROM connector_leases WHERE connector_id = $1",
                                 second.connector_id)
        third = ConnectorProcess(s.settings, "c3-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        stack.callback(third.stop)
        await all_connected(client, companies, 40, {third.queue})
        sts = await statuses(client, companies)
        assert_clean_history(sts)
        assert not [e for e in s.events if e["type"] == "qr"]
        assert "alert severity" not in third.log_path.read_text()  # a stop asked for alerts nobody


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_two_connectors_each_session_held_once_steadily_and_after_failover(
    dev_env, make_settings, db, redis_client, tmp_path, companies, wa, wa_env
):
    client = pydantic_client(dev_env.client)
    await seed_paired(db, companies, wa)
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(
            session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                          with_connector=False)
        )
        s.companies.update(companies)
        target = dev_env.client.service_client.config.target_host
        one = ConnectorProcess(s.settings, "a-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        two = ConnectorProcess(s.settings, "b-" + uuid.uuid4().hex[:6], tmp_path, target, **wa_env).start()
        stack.callback(one.stop)
        stack.callback(two.stop)
        await asyncio.sleep(2)  # both polling
        await asyncio.gather(*(initialize_session(client, s.settings, c) for c in companies))
        await all_connected(client, companies, 30, {one.queue, two.queue})

        def held_events() -> list[str]:
            return sorted(e["companyId"] for e in s.events if e["type"] == "connected")

        # The connector signals the workflow before it publishes the event: the status may say connected
        # a moment before the event arrives. A second connection would show as a fifth event (and below).
        async def all_announced() -> bool:
            return len(held_events()) >= len(companies)

        await wait_until(all_announced, 10, interval=0.1)
        assert held_events() == sorted(companies)  # one connection each
        await assert_each_session_held_once_through(client, companies, [one, two], HOLD_PERIOD_S)
        sts = await statuses(client, companies)
        victim = one if any(st.holder_queue == one.queue for st in sts) else two
        survivor = two if victim is one else one
        victim.kill()
        await all_connected(client, companies, 40, {survivor.queue})
        await assert_each_session_held_once_through(client, companies, [survivor], HOLD_PERIOD_S)
        assert_clean_history(await statuses(client, companies))
        # One alert for the lost connector (not one per session), one when its sessions are held again.
        moved = len([st for st in sts if st.holder_queue == victim.queue])

        async def back_alert() -> bool:
            return "sessions of lost WhatsApp connector" in survivor.log_path.read_text()

        await wait_until(back_alert, 10, interval=0.2)
        log = survivor.log_path.read_text()
        assert log.count(f"alert severity=warning company_id=None text=WhatsApp connector {victim.connector_id} "
                         f"lost") == 1, log[-2000:]
        assert log.count(f"text=The {moved} sessions of lost WhatsApp connector {victim.connector_id} are held "
                         "again") == 1
        assert "alert severity=critical" not in log
        assert len([e for e in s.events if e["type"] == "connected"]) == len(companies) + len(
            [st for st in sts if st.holder_queue == victim.queue])  # one reconnection per moved session


async def test_temporal_dev_server_restart_keeps_sessions(make_settings, db, redis_client, tmp_path, companies):
    config = TemporalDevConfig(port=free_port(), ui_port=free_port(), db_filename="temporal.db",
                               search_attributes={"CompanyId": "Keyword", "SessionState": "Keyword"},
                               sqlite_pragmas={"journal_mode": "wal"})
    server = TemporalDevServer(config, tmp_path / "temporal", ui=False)
    await asyncio.to_thread(server.start)
    try:
        from temporalio.client import Client

        raw = await Client.connect(server.address)
        await seed_paired(db, companies)
        async with AsyncExitStack() as stack:
            s = await stack.enter_async_context(
                session_stack(raw, make_settings, db, redis_client, env=None, search_attributes=True,
                              with_connector=False)
            )
            s.companies.update(companies)
            conn = ConnectorProcess(s.settings, "r-" + uuid.uuid4().hex[:6], tmp_path, server.address).start()
            stack.callback(conn.stop)
            await asyncio.gather(*(initialize_session(s.client, s.settings, c) for c in companies))
            await all_connected(s.client, companies, 30, {conn.queue})

            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            await asyncio.sleep(5)  # workers and the connector find the server again
            await all_connected(s.client, companies, 60, {conn.queue})
            assert_clean_history(await statuses(s.client, companies))
            assert conn.proc is not None and conn.proc.poll() is None, conn.log()
    finally:
        await asyncio.to_thread(server.stop)


async def test_flapping_session_continues_as_new_and_keeps_its_state(dev_env, make_settings, db, redis_client):
    # dev_env suggests continue-as-new after 50 history events.
    cid = f"company_{uuid.uuid4().int % 10**9}"
    async with session_stack(dev_env.client, make_settings, db, redis_client, env=None, search_attributes=True,
                             backoff_base_s=0.05, backoff_cap_s=0.2, alert_grace_s=30) as s:
        await s.initialize(cid)
        jid = await s.sim.scan(cid)
        await s.wait_state(cid, SessionState.CONNECTED)
        handle = s.client.get_workflow_handle(f"session-{cid}")
        first_run = (await handle.describe()).run_id
        s.sim.flap(cid, times=6, interval_s=0.05)

        async def flapped_and_settled() -> bool:
            st = await s.status(cid)
            return s.sim.dials[cid] >= 7 and st.state is SessionState.CONNECTED

        await wait_until(flapped_and_settled, 60, interval=0.1)
        desc = await handle.describe()
        assert desc.run_id != first_run  # continued as new
        st = await s.status(cid)
        assert st.jid == jid and st.qr_sequence == 1
        assert s.alerts == []  # every flap was shorter than the grace period
