"""The neonize transport, offline: real whatsmeow against the real PostgreSQL store, dials that fail.

No fake WhatsApp server is possible (whatsmeow's address is fixed and its handshake checks
WhatsApp's own key), so the failure paths are driven
through local proxies: one that closes every connection, one on a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from cli.embedded import free_port
from connector.devices import DeviceDirectory
from connector.neonize_transport import NeonizeTransport
from domain.session import HoldOutcomeKind
from domain.states import SessionState
from infra.sessions import ensure_session_started
from tests.connector.conftest import Listener


@pytest.fixture
async def closing_proxy() -> AsyncIterator[str]:
    """An HTTP proxy that accepts and closes every connection at once."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1024), 1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def stalling_proxy() -> AsyncIterator[str]:
    """An HTTP proxy that accepts and never answers: the dial hangs until whatsmeow gives up."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def test_client_on_real_store_dial_fails_through_closing_proxy_and_stop_is_bounded(
    store, store_dsn, closing_proxy, db
):
    transport = NeonizeTransport(store_dsn, store, proxy=closing_proxy)
    listener = Listener()
    outcome = await transport.start("company_1", jid=None, pairing_phone=None, listener=listener)
    result = await asyncio.wait_for(outcome, 30)
    assert result.kind is HoldOutcomeKind.DIAL_FAILED
    assert listener.calls == []
    started = time.monotonic()
    await transport.stop("company_1")
    await transport.close()
    assert time.monotonic() - started < 25
    assert transport.status("company_1") is None
    # The store is the real whatsmeow schema in PostgreSQL, and no device was invented.
    assert await db.fetchval("SELECT count(*) FROM whatsmeow_device") == 0
    assert not await transport.device_exists("79990000000:1@s.whatsapp.net")


async def test_dial_failure_becomes_backoff_not_crash(store, store_dsn, ts_stack, company_id, db):
    refused = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    # A device jid the store does not have must not reach whatsmeow (it would abort the process).
    await db.execute("INSERT INTO companies (company_id, device_jid) VALUES ($1, $2)", company_id,
                     "79990000000:1@s.whatsapp.net")

    def neonize(devices: DeviceDirectory) -> NeonizeTransport:
        return NeonizeTransport(store_dsn, devices, proxy=refused)

    async with ts_stack(transport=neonize, backoff_base_s=30) as s:
        s.companies.add(company_id)
        await ensure_session_started(s.client, s.settings, company_id, search_attributes=False)
        st = await s.wait_for(company_id, lambda x: x.state is SessionState.BACKOFF, 30)
        assert st.attempt == 1 and st.next_retry_at is not None
        assert "dial failed" in (st.last_error or "")
        assert s.connector.transport.status(company_id) is None


async def test_stop_during_a_stalled_dial_is_bounded(store, store_dsn, stalling_proxy, db):
    transport = NeonizeTransport(store_dsn, store, proxy=stalling_proxy)
    outcome = await transport.start("company_2", jid=None, pairing_phone=None, listener=Listener())
    await asyncio.sleep(1)
    assert not outcome.done()  # still dialling
    started = time.monotonic()
    await transport.stop("company_2")
    elapsed = time.monotonic() - started
    assert outcome.done() and outcome.result().kind is HoldOutcomeKind.STOPPED
    # whatsmeow's stop() would block until the dial times out, holding the process-wide lock:
    # a dialling client is left to fail by itself instead, and other clients are not held up.
    assert elapsed < 2
    assert transport.status("company_2") is None
    other = await transport.start("company_3", jid=None, pairing_phone=None, listener=Listener())
    await transport.stop("company_3")
    assert other.done()
    assert time.monotonic() - started < 4
