"""Session lifecycle on the time-skipping server with the simulator (SPEC S2-S5, S10, H4)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from bench.store_data import fill_device
from connector.simulator import SimulatorTransport
from domain.inbox import INBOX_WORKFLOW, SIGNAL_INBOX_MESSAGE, InboxWorkflowInput, IncomingMessage, inbox_workflow_id
from domain.session import ERROR_NOT_CONNECTED, SendRequest, SessionStatus
from domain.states import SessionState
from infra.sessions import logout_session, remove_session, session_status, signal_session
from storage import Database
from tests.sessions.conftest import WA_TRANSPORTS, SessionStack, session_stack


async def connect(s: SessionStack, company_id: str) -> SessionStatus:
    first = await s.initialize(company_id)
    assert first.state is SessionState.QR
    await s.sim.scan(company_id)
    return await s.wait_state(company_id, SessionState.CONNECTED)


def delay_of(st: SessionStatus) -> float:
    assert st.next_retry_at is not None and st.since is not None
    return (st.next_retry_at - st.since).total_seconds()


async def test_qr_scan_connects_and_credentials_persist(ts_stack, company_id, db):
    async with ts_stack() as s:
        first = await s.initialize(company_id)
        assert first.state is SessionState.QR
        assert first.qr and first.qr.startswith("2@")
        jid = await s.sim.scan(company_id)
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == jid
        assert st.holder_queue == s.settings.connector_own_queue
        assert await db.fetchval("SELECT device_jid FROM companies WHERE company_id = $1", company_id) == jid
        assert await db.fetchval("SELECT count(*) FROM sim_devices WHERE company_id = $1", company_id) == 1
        again = await s.initialize(company_id)
        assert again.state is SessionState.CONNECTED and again.qr is None and again.jid == jid
        types = [e["type"] for e in s.events if e["companyId"] == company_id]
        assert "qr" in types and "connected" in types


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_qr_rotates_then_expires_to_logged_out_without_device(ts_stack, company_id, db):
    async with ts_stack(qr_first_timeout_s=0.6, qr_next_timeout_s=0.3, qr_total_timeout_s=1.5) as s:
        first = await s.initialize(company_id)
        assert first.state is SessionState.QR
        st = await s.wait_state(company_id, SessionState.LOGGED_OUT, timeout=10)
        assert st.jid is None and st.qr is None
        assert "not scanned" in (st.last_error or "")
        qr_events = [e for e in s.events if e["companyId"] == company_id and e["type"] == "qr"]
        assert len(qr_events) >= 3 and len({e["qr"] for e in qr_events}) == len(qr_events)
        assert await s.device_rows(company_id) == 0
        assert s.alerts == []
        # Not a dead end: initialize again gives a fresh QR.
        second = await s.initialize(company_id)
        assert second.state is SessionState.QR and second.qr and second.qr != first.qr


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_pairing_code_path(ts_stack, company_id):
    async with ts_stack() as s:
        res = await s.initialize(company_id, pairing_phone="79991234567")
        assert res.state is SessionState.QR
        assert res.pairing_code and len(res.pairing_code) == 9 and res.pairing_code[4] == "-"
        await s.sim.control(company_id, "pair", {})
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.phone == "79991234567" and st.jid and st.jid.startswith("79991234567")
        assert any(e["type"] == "pairing_code" for e in s.events if e["companyId"] == company_id)


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_pairing_code_asked_while_a_qr_is_showing(ts_stack, company_id):
    async with ts_stack() as s:
        first = await s.initialize(company_id)
        assert first.state is SessionState.QR and first.pairing_code is None
        res = await s.initialize(company_id, pairing_phone="79997654321")
        assert res.state is SessionState.QR and res.pairing_code
        assert s.sim.held == [company_id]  # still one connection for the company
        await s.sim.scan(company_id)
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.phone == "79997654321"


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_transient_drop_backs_off_exponentially_then_connects(ts_stack, company_id):
    async with ts_stack(backoff_base_s=60, backoff_cap_s=3600, backoff_max_attempts=10) as s:
        connected = await connect(s, company_id)
        s.sim.fail_dials(company_id, 6)
        s.sim.drop(company_id)
        delays = []
        for attempt in range(1, 8):  # the drop, then six failed dials
            st = await s.wait_for(company_id, lambda x, a=attempt: x.state is SessionState.BACKOFF and x.attempt == a)
            delays.append(delay_of(st))
            await s.skip(delays[-1] - 0.3)  # the last 0.3 s pass in real time
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == connected.jid and st.attempt == 0
        for n, d in enumerate(delays, start=1):
            nominal = min(3600, 60 * 2 ** (n - 1))
            assert 0.75 * nominal <= d <= nominal, delays
        assert all(b / a >= 1.5 for a, b in itertools.pairwise(delays[:6])), delays  # below the cap
        assert sum(delays) > 5000  # 1.5-2 hours of simulated time
        assert s.sim.dials[company_id] == 1 + 7  # pairing + 6 failed dials + the one that worked
        # Down for hours: exactly one grace alert, none for the recovery.
        assert len(s.alerts) == 1 and s.alerts[0].severity == "warning"


async def test_sessions_dropped_together_do_not_reconnect_in_one_burst(ts_stack):
    # A network blip drops every session at once: each backs off for its own share of the
    # nominal delay (jitter), so a thousand of them do not dial WhatsApp in the same instant.
    companies = [f"company_j{n}{uuid.uuid4().int % 10**8}" for n in range(5)]
    async with ts_stack(backoff_base_s=60, backoff_cap_s=3600) as s:
        for cid in companies:
            await connect(s, cid)
        for cid in companies:
            s.sim.drop(cid)
        delays = [delay_of(await s.wait_for(cid, lambda x: x.state is SessionState.BACKOFF and x.attempt == 1))
                  for cid in companies]
        assert all(45 <= d <= 60 for d in delays), delays  # 60 s less up to 25 %
        assert len(set(delays)) == len(delays), delays  # each its own


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_max_attempts_fail_with_alert_then_relink_recovers(ts_stack, company_id):
    async with ts_stack(backoff_base_s=1, backoff_cap_s=10, backoff_max_attempts=3) as s:
        connected = await connect(s, company_id)
        s.sim.fail_dials(company_id, 100)
        s.sim.drop(company_id)
        for attempt in range(1, 4):
            st = await s.wait_for(company_id, lambda x, a=attempt: x.state is SessionState.BACKOFF and x.attempt == a)
            await s.skip(delay_of(st) - 0.3)
        st = await s.wait_state(company_id, SessionState.FAILED)
        await s.wait_alerts(lambda alerts: any(a.severity == "critical" and "failed" in a.text for a in alerts))
        dials = s.sim.dials[company_id]
        await s.skip(6 * 3600)
        assert (await s.status(company_id)).state is SessionState.FAILED
        assert s.sim.dials[company_id] == dials  # nothing retries behind the operator's back
        s.sim.fail_dials(company_id, 0)
        await signal_session(s.client, company_id, "relink")
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == connected.jid and st.qr_sequence == connected.qr_sequence


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_replaced_waits_a_day_for_relink_with_one_alert(ts_stack, company_id):
    async with ts_stack() as s:
        connected = await connect(s, company_id)
        qr_before = [e for e in s.events if e["type"] == "qr"]
        dials = s.sim.dials[company_id]
        s.sim.replace(company_id)
        st = await s.wait_state(company_id, SessionState.REPLACED)
        await s.skip(24 * 3600)
        st = await s.status(company_id)
        assert st.state is SessionState.REPLACED
        assert s.sim.dials[company_id] == dials
        assert len(s.alerts) == 1 and "440" in s.alerts[0].text and s.alerts[0].severity == "critical"
        assert any(e["type"] == "replaced" for e in s.events if e["companyId"] == company_id)
        await signal_session(s.client, company_id, "relink")
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == connected.jid
        assert [e for e in s.events if e["type"] == "qr"] == qr_before  # no new QR
        assert len(s.alerts) == 1


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_logout_from_phone_deletes_credentials(ts_stack, company_id, db):
    async with ts_stack() as s:
        await connect(s, company_id)
        await s.sim.logout_from_phone(company_id)
        st = await s.wait_state(company_id, SessionState.LOGGED_OUT)
        assert st.jid is None
        assert await s.device_rows(company_id) == 0
        assert await db.fetchval("SELECT device_jid FROM companies WHERE company_id = $1", company_id) is None
        alerts = await s.wait_alerts(lambda alerts: len(alerts) >= 1)
        assert len(alerts) == 1 and alerts[0].severity == "critical"
        dials = s.sim.dials[company_id]
        await s.skip(3600)
        assert s.sim.dials[company_id] == dials  # never loops on a logout
        again = await s.initialize(company_id)
        assert again.state is SessionState.QR and again.qr


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_drop_shorter_than_grace_sends_no_alert_longer_sends_one(ts_stack, company_id):
    # The time-skipping server cannot skip while a hold is running, so the
    # "connected again" stretches run in real time: a short grace keeps that brief.
    async with ts_stack(backoff_base_s=1, backoff_cap_s=60, alert_grace_s=3) as s:
        await connect(s, company_id)
        # Short: one drop, reconnected after the first backoff (≤ 1 s) — within the 3 s grace.
        s.sim.drop(company_id)
        await s.wait_state(company_id, SessionState.BACKOFF)
        await s.wait_state(company_id, SessionState.CONNECTED)
        await asyncio.sleep(3.5)
        assert s.alerts == []
        # Long: three failed dials keep it down ≥ 0.75 + 1.5 + 3 + 6 s (skipped).
        s.sim.fail_dials(company_id, 3)
        s.sim.drop(company_id)
        for attempt in (1, 2, 3, 4):
            st = await s.wait_for(company_id, lambda x, a=attempt: x.state is SessionState.BACKOFF and x.attempt == a)
            await s.skip(delay_of(st) - 0.3)
        await s.wait_state(company_id, SessionState.CONNECTED)
        assert len(s.alerts) == 1 and s.alerts[0].severity == "warning" and "down since" in s.alerts[0].text


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_temporary_ban_waits_for_expiry(ts_stack, company_id):
    async with ts_stack() as s:
        await connect(s, company_id)
        dials = s.sim.dials[company_id]
        s.sim.ban(company_id, 7200)
        st = await s.wait_state(company_id, SessionState.BACKOFF)
        assert delay_of(st) == pytest.approx(7200, abs=1)
        await s.skip(3600)
        assert s.sim.dials[company_id] == dials
        await s.skip(3599.7)
        await s.wait_state(company_id, SessionState.CONNECTED)
        assert s.sim.dials[company_id] == dials + 1


@pytest.fixture
async def store_db(store_dsn: str) -> AsyncIterator[Database]:
    """A project database that also holds the real whatsmeow store schema."""
    database = Database(store_dsn)
    yield database
    await database.close()


async def linked_in_store(db: Database, jid: str) -> None:
    """The rows whatsmeow keeps for a linked device (the simulator keeps its own in sim_devices)."""
    async with db.connection() as conn:
        await fill_device(conn, jid, pre_keys=3, sessions=2, identity_keys=2, secrets=2)


async def store_rows(db: Database, jid: str) -> int:
    return int(await db.fetchval(
        """SELECT (SELECT count(*) FROM whatsmeow_device WHERE jid = $1)
                  + (SELECT count(*) FROM whatsmeow_pre_keys WHERE jid = $1)
                  + (SELECT count(*) FROM whatsmeow_sessions WHERE our_jid = $1)""", jid))


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_pause_resume_logout_remove(ts_stack, company_id, db):
    async with ts_stack() as s:
        connected = await connect(s, company_id)
        await signal_session(s.client, company_id, "pause")
        await s.wait_state(company_id, SessionState.PAUSED)
        assert s.sim.status(company_id) is None  # the connection is closed, not logged out
        assert await s.device_rows(company_id) == 1
        await signal_session(s.client, company_id, "resume")
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == connected.jid
        types = [e["type"] for e in s.events if e["companyId"] == company_id]
        assert "paused" in types and "resumed" in types

        st = await logout_session(s.client, company_id)
        assert st.state is SessionState.LOGGED_OUT and st.jid is None
        assert await s.device_rows(company_id) == 0
        assert s.sim.status(company_id) is None

        await connect(s, company_id)  # linked again, then removed while connected
        st = await remove_session(s.client, company_id)
        assert st.state is SessionState.STOPPED
        assert await session_status(s.client, company_id) is None
        assert s.alerts == []  # pause, logout and remove are the operator's own: nobody is alerted
        assert await db.fetchval(
            "SELECT removed_at IS NOT NULL FROM companies WHERE company_id = $1", company_id
        )


async def test_logout_and_remove_without_a_connection_delete_the_device_from_the_whatsmeow_store(
    ts_env, make_settings, store_db, redis_client, company_id
):
    # A connected session is logged out by its transport (neonize deletes its own device rows); a
    # session nobody holds (paused, replaced, failed) is cleaned by the workflow alone.
    db = store_db
    async with session_stack(ts_env.client, make_settings, db, redis_client, env=ts_env,
                             search_attributes=False) as s:
        first = await connect(s, company_id)
        assert first.jid
        await linked_in_store(db, first.jid)
        await signal_session(s.client, company_id, "pause")
        await s.wait_state(company_id, SessionState.PAUSED)
        assert await store_rows(db, first.jid) == 1 + 3 + 2  # paused: credentials kept
        st = await logout_session(s.client, company_id)
        assert st.state is SessionState.LOGGED_OUT and st.jid is None
        assert await store_rows(db, first.jid) == 0  # the device and its keys left the store
        assert await db.fetchval("SELECT count(*) FROM sim_devices WHERE company_id = $1", company_id) == 0

        second = await connect(s, company_id)  # a new QR, a new device
        assert second.jid
        await linked_in_store(db, second.jid)
        s.sim.replace(company_id)
        await s.wait_state(company_id, SessionState.REPLACED)
        assert await store_rows(db, second.jid) == 1 + 3 + 2  # 440: kept for the relink
        st = await remove_session(s.client, company_id)
        assert st.state is SessionState.STOPPED
        assert await store_rows(db, second.jid) == 0
        assert await db.fetchval(
            "SELECT removed_at IS NOT NULL AND device_jid IS NULL FROM companies WHERE company_id = $1", company_id
        )


async def test_reconnects_count_the_same_device_coming_back(ts_stack, company_id):
    async with ts_stack(backoff_base_s=0.2, backoff_cap_s=1) as s:
        st = await connect(s, company_id)
        assert st.reconnects == 0  # the first pairing is not a reconnect
        s.sim.drop(company_id)
        st = await s.wait_for(company_id, lambda x: x.state is SessionState.CONNECTED and x.reconnects == 1)
        s.sim.replace(company_id)
        await s.wait_state(company_id, SessionState.REPLACED)
        await signal_session(s.client, company_id, "relink")
        st = await s.wait_for(company_id, lambda x: x.state is SessionState.CONNECTED and x.reconnects == 2)
        await signal_session(s.client, company_id, "pause")
        await s.wait_state(company_id, SessionState.PAUSED)
        await signal_session(s.client, company_id, "resume")
        st = await s.wait_for(company_id, lambda x: x.state is SessionState.CONNECTED and x.reconnects == 3)
        assert st.attempt == 0
        # A logout and a new pairing is a new device: its count starts again.
        await logout_session(s.client, company_id)
        st = await connect(s, company_id)
        assert st.reconnects == 0


RECEIVED: list[IncomingMessage] = []


@workflow.defn(name=INBOX_WORKFLOW, sandboxed=False)
class StandInInbox:
    """Stands in for the real InboxWorkflow: proves the connector's signal-with-start arrives."""

    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self, inp: InboxWorkflowInput) -> int:
        await workflow.wait_condition(lambda: self.count >= 2, timeout=timedelta(minutes=5))
        return self.count

    @workflow.signal(name=SIGNAL_INBOX_MESSAGE)
    def message(self, msg: IncomingMessage) -> None:
        RECEIVED.append(msg)
        self.count += 1


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_send_and_incoming_messages(ts_stack, company_id):
    async with ts_stack(extra_workflows=(StandInInbox,)) as s:
        req = SendRequest(company_id=company_id, to="79990000002@s.whatsapp.net", text="hi")
        with pytest.raises(ApplicationError) as err:
            await s.connector.send_message(req)
        assert err.value.type == ERROR_NOT_CONNECTED and err.value.non_retryable
        await connect(s, company_id)
        sent = await s.connector.send_message(req)
        assert [m.message_id for m in s.sim.outbox[company_id]] == [sent.message_id]

        chat = "79990000003@s.whatsapp.net"
        await s.sim.incoming(company_id, "one", chat=chat)
        await s.sim.incoming(company_id, "two", chat=chat)
        await s.spooled_handed_over()
        handle = s.client.get_workflow_handle(inbox_workflow_id(company_id, chat))
        assert await handle.result() == 2
        assert [m.text for m in RECEIVED if m.company_id == company_id] == ["one", "two"]
        assert sum(1 for e in s.events if e["type"] == "message" and e["companyId"] == company_id) == 2


@pytest.mark.parametrize("wa", WA_TRANSPORTS, indirect=True)
async def test_client_outdated_fails_with_an_alert_instead_of_retrying(ts_stack, company_id):
    async with ts_stack(backoff_base_s=1, backoff_cap_s=10) as s:
        connected = await connect(s, company_id)
        await s.sim.control(company_id, "outdated", {})  # WhatsApp refuses this client version (405)
        st = await s.wait_state(company_id, SessionState.FAILED)
        assert "outdated" in (st.last_error or "")
        alerts = await s.wait_alerts(lambda alerts: len(alerts) >= 1)
        assert [a.severity for a in alerts] == ["critical"] and "update neonize" in alerts[0].text
        dials = s.sim.dials[company_id]
        await s.skip(6 * 3600)
        assert (await s.status(company_id)).state is SessionState.FAILED
        assert s.sim.dials[company_id] == dials  # not retried forever
        if isinstance(s.sim, SimulatorTransport):
            await s.sim.control(company_id, "outdated", {"times": 0})  # neonize updated
        else:
            s.sim.runtime.server.clear(connected.jid)
        await signal_session(s.client, company_id, "relink")
        st = await s.wait_state(company_id, SessionState.CONNECTED)
        assert st.jid == connected.jid
