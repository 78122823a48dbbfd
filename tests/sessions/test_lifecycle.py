"""Session lifecycle on the time-skipping server with the simulator (SPEC S2-S5, S10, H4)."""

from __future__ import annotations

from domain.states import SessionState


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
