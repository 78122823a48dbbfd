"""The neonize transport against the model of neonize's client (connector.whatsmeow_model).

Each test drives the real NeonizeTransport code path through whatsmeow's behaviour as the model
reproduces it from neonize's and whatsmeow's sources, and asserts what a user would see: the
outcome of the attempt, the device rows, the live sockets, what the inbox gets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from connector import whatsmeow_model
from connector.live_sockets import LiveSockets
from connector.neonize_transport import NeonizeTransport
from domain.session import HoldOutcomeKind
from tests.connector.conftest import Listener

PHONE = "79991112233"


async def wait_for(check, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not met in {timeout}s")


async def pair(transport: NeonizeTransport, company: str, phone: str = PHONE) -> tuple[str, Listener]:
    """A fresh pairing through QR + scan; returns the device jid once connected."""
    listener = Listener()
    outcome = await transport.start(company, jid=None, pairing_phone=None, listener=listener)
    await wait_for(lambda: "qr" in listener.calls, what="first QR")
    result = await transport.control(company, "scan", {"phone": phone})
    await wait_for(lambda: "connected" in listener.calls, what="connected after the scan")
    assert not outcome.done()
    return str(result["jid"]), listener


async def resume(transport: NeonizeTransport, company: str, jid: str) -> tuple[asyncio.Future[Any], Listener]:
    listener = Listener()
    outcome = await transport.start(company, jid=jid, pairing_phone=None, listener=listener)
    await wait_for(lambda: "connected" in listener.calls, what="resumed connection")
    return outcome, listener


async def test_incoming_message_as_the_go_side_encodes_it(model_transport, db):
    _jid, listener = await pair(model_transport, "company_1")
    sent_ms = int(datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp() * 1000)
    phone = model_transport._clients["company_1"].client.phone
    # A phone-number sender with a device part; an @lid sender whose number is in SenderAlt;
    # a status broadcast and a newsletter post, which are not conversations.
    phone.incoming("one", sender="79990000001:7@s.whatsapp.net", message_id="M1", timestamp_ms=sent_ms)
    phone.incoming("two", sender="123456789012345:4@lid", sender_alt="79990000002:4@s.whatsapp.net",
                   message_id="M2", quoted="M1")
    phone.incoming("status", sender="79990000003@s.whatsapp.net", chat="status@broadcast", message_id="M3")
    phone.incoming("news", sender="120363000000000@newsletter", message_id="M4")
    phone.incoming("three", sender="79990000001@s.whatsapp.net", message_id="M5")
    await wait_for(lambda: len(listener.messages) >= 3, what="three messages")
    await asyncio.sleep(0.2)
    one, two, three = listener.messages
    assert [m.message_id for m in listener.messages] == ["M1", "M2", "M5"]
    assert one.timestamp == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert one.sender == one.chat == "79990000001@s.whatsapp.net" and one.sender_phone == "79990000001"
    assert two.sender == two.chat == "123456789012345@lid"  # the @lid address is kept as it is
    assert two.sender_phone == "79990000002"  # the number comes from SenderAlt
    assert two.metadata == {"quoted": "M1"}
    assert abs((three.timestamp - datetime.now(UTC)).total_seconds()) < 60


async def test_drop_of_a_resumed_session_never_leaves_two_sockets(model_transport, model, store_dsn, db):
    jid, _ = await pair(model_transport, "company_2")
    await model_transport.stop("company_2")
    outcome, listener = await resume(model_transport, "company_2", jid)
    registry = LiveSockets(store_dsn)
    assert registry.live(jid) == 1
    old = model_transport._clients["company_2"].client
    old.phone.drop()  # whatsmeow reconnects by itself right away (0 s) unless stopped
    result = await asyncio.wait_for(outcome, 10)
    assert result.kind is HoldOutcomeKind.DROPPED and "disconnected" in listener.calls
    # The hold ended only once the old client was dead: whatsmeow's reconnect did not bring it back.
    assert model.read(old.uuid, "test") is None and registry.live(jid) == 0
    await asyncio.sleep(0.3)
    assert registry.live(jid) == 0
    # The session workflow's next attempt: one socket for the device, no breach (checked by the fixture).
    await resume(model_transport, "company_2", jid)
    assert registry.live(jid) == 1
    registry.close_connection()


async def test_collected_old_client_does_not_stop_the_running_one(model_transport, model):
    jid, _ = await pair(model_transport, "company_3")
    await model_transport.stop("company_3")
    outcome, _ = await resume(model_transport, "company_3", jid)
    old = model_transport._clients["company_3"].client
    await model_transport.stop("company_3")
    outcome, _ = await resume(model_transport, "company_3", jid)
    del old
    for _ in range(3):
        gc.collect()  # neonize's finalizer of a collected client calls Go Stop(uuid)
    await asyncio.sleep(0.3)
    entry = model_transport._clients["company_3"]
    assert entry.connected and not outcome.done()
    assert model.read(entry.client.uuid, "test") is not None  # still in Go's map: not stopped behind our back
    assert len({e.client.uuid for e in [entry]}) == 1 and entry.client.uuid != jid.split(":")[0].encode()


async def test_qr_expiry_ends_the_attempt_and_the_stuck_thread_is_counted(model_transport, model):
    model.timing.qr_first_s, model.timing.qr_next_s, model.timing.qr_codes = 0.3, 0.2, 3
    model_transport.tuning.qr_total_timeout_s = 60  # whatsmeow's own channel ends first
    listener = Listener()
    outcome = await model_transport.start("company_4", jid=None, pairing_phone=None, listener=listener)
    result = await asyncio.wait_for(outcome, 10)
    assert result.kind is HoldOutcomeKind.PAIRING_TIMEOUT and "not scanned" in result.detail
    assert listener.calls.count("qr") == 3
    # neonize's thread now waits in FetchMe for good: counted, and close() does not wait for it.
    await asyncio.sleep(0.8)
    leaks = await model_transport.leaks()
    assert leaks.leaked_threads == 1
    started = time.monotonic()
    await model_transport.close()
    assert time.monotonic() - started < 2


async def test_pairing_error_and_stop_while_qr_showing(model_transport, model):
    listener = Listener()
    outcome = await model_transport.start("company_5", jid=None, pairing_phone=None, listener=listener)
    await wait_for(lambda: "qr" in listener.calls)
    await model_transport.control("company_5", "pair_error", {})
    result = await asyncio.wait_for(outcome, 5)
    assert result.kind is HoldOutcomeKind.PAIRING_TIMEOUT and result.detail == "pairing failed"
    outcome = await model_transport.start("company_6", jid=None, pairing_phone=None, listener=Listener())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await model_transport.stop("company_6")
    assert time.monotonic() - started < 2 and outcome.result().kind is HoldOutcomeKind.STOPPED
    await asyncio.sleep(0.8)
    assert (await model_transport.leaks()).leaked_threads == 2


@pytest.mark.parametrize(("step", "kind", "detail"), [
    ("outdated", HoldOutcomeKind.CLIENT_OUTDATED, "outdated"),
    ("failure:1", HoldOutcomeKind.DIAL_FAILED, "connect failure"),
    ("drop", HoldOutcomeKind.DIAL_FAILED, "before the first QR"),
    ("stall", HoldOutcomeKind.DIAL_FAILED, "no QR code"),
])
async def test_new_device_attempt_without_a_first_qr_ends(model_transport, model, step, kind, detail):
    model_transport.tuning.qr_first_timeout_s = 1.0
    model.server.plan(None, step)
    listener = Listener()
    outcome = await model_transport.start("company_7", jid=None, pairing_phone=None, listener=listener)
    result = await asyncio.wait_for(outcome, 5)
    assert result.kind is kind and detail in result.detail, result
    assert listener.calls == []
    model.server.release_stalls()


@pytest.mark.parametrize(("step", "kind"), [
    ("logged_out", HoldOutcomeKind.LOGGED_OUT),
    ("ban:3600", HoldOutcomeKind.TEMP_BANNED),
    ("outdated", HoldOutcomeKind.CLIENT_OUTDATED),
    ("failure:1", HoldOutcomeKind.DIAL_FAILED),
])
async def test_terminal_event_before_connected_frees_the_client(model_transport, model, db, step, kind):
    jid, _ = await pair(model_transport, "company_8")
    await model_transport.stop("company_8")
    model.server.plan(jid, step)
    made: list[Any] = []
    new_client = model_transport._new_client

    def recording(cid: str, jid: str | None) -> Any:
        made.append(new_client(cid, jid))
        return made[-1]

    model_transport._new_client = recording
    listener = Listener()
    outcome = await model_transport.start("company_8", jid=jid, pairing_phone=None, listener=listener)
    result = await asyncio.wait_for(outcome, 5)
    assert result.kind is kind and "connected" not in listener.calls
    if kind is HoldOutcomeKind.TEMP_BANNED:
        assert result.ban_expires_s == 3600
    # Stopped in Go (map entry gone) and its threads returned: nothing leaks.
    (client,) = made
    assert model.read(client.uuid, "test") is None
    names = {client.uuid.decode(), "wa-company_8"}
    await wait_for(lambda: not [t for t in threading.enumerate() if t.name in names], what="client threads ended")
    rows = await db.fetchval("SELECT count(*) FROM whatsmeow_device WHERE jid = $1", jid)
    assert rows == (0 if kind is HoldOutcomeKind.LOGGED_OUT else 1)


async def test_store_connections_are_counted_by_application_name(model_transport, db):
    before = (await model_transport.leaks()).store_connections
    for n in range(3):
        outcome = await model_transport.start(f"company_9{n}", jid=None, pairing_phone=None, listener=Listener())
        await model_transport.stop(f"company_9{n}")
        assert outcome.done()
    # Each connect() opened a store container that is never closed (as neonize's does).
    assert (await model_transport.leaks()).store_connections == (before or 0) + 3


async def test_scan_just_before_the_pairing_deadline_keeps_the_device(model_transport, model, db):
    model_transport.tuning.qr_total_timeout_s = 0.6
    model.timing.restart_515_s = 0.6  # the 515 restart lands after the deadline
    listener = Listener()
    outcome = await model_transport.start("company_10", jid=None, pairing_phone=None, listener=listener)
    await wait_for(lambda: "qr" in listener.calls)
    await asyncio.sleep(0.3)
    result = await model_transport.control("company_10", "scan", {"phone": PHONE})
    await wait_for(lambda: "connected" in listener.calls, what="connected after the 515 restart")
    assert not outcome.done()
    assert listener.jid == result["jid"]
    assert await db.fetchval("SELECT count(*) FROM whatsmeow_device WHERE jid = $1", result["jid"]) == 1
    assert model.fatal_errors == []  # no get_me() on a stopped client


async def test_calls_into_go_never_overlap_a_client_start_or_stop(model_transport, model):
    _jid, _ = await pair(model_transport, "company_11")
    # The store round trips inside Neonize() between its first and last map write. Go's writes come
    # before any sign of life, so a start holds the gate until one (bounded by the settle time).
    model.timing.map_write_s = 0.04

    async def sends() -> None:
        for n in range(15):
            await model_transport.send("company_11", "79990000005", f"m{n}")
            await asyncio.sleep(0.01)

    async def starts() -> None:
        for n in range(3):
            await model_transport.start(f"company_11{n}", jid=None, pairing_phone=None, listener=Listener())
            await model_transport.stop(f"company_11{n}")

    await asyncio.gather(sends(), starts())
    assert model.fatal_errors == []


async def test_keepalive_timeout_is_not_a_drop_until_the_grace_ends(model_transport, model):
    model_transport.tuning.keepalive_grace_s = 0.8
    jid, _ = await pair(model_transport, "company_12")
    await model_transport.stop("company_12")
    outcome, listener = await resume(model_transport, "company_12", jid)
    await model_transport.control("company_12", "keepalive_timeout", {})
    await asyncio.sleep(0.3)
    await model_transport.control("company_12", "keepalive_restore", {})
    await asyncio.sleep(1.0)
    assert not outcome.done() and model_transport.status("company_12").connected
    await model_transport.control("company_12", "keepalive_timeout", {})
    result = await asyncio.wait_for(outcome, 5)
    assert result.kind is HoldOutcomeKind.DROPPED and result.detail == "keepalive failing"
    assert "disconnected" in listener.calls


async def test_send_carries_the_quoted_message(model_transport, db):
    await pair(model_transport, "company_13")
    sent = await model_transport.send("company_13", "79990000006@s.whatsapp.net", "re: hi", quoted="IN1")
    row = await db.fetchrow("SELECT message_id, to_jid, text, quoted FROM transport_outbox WHERE message_id = $1",
                            sent.message_id)
    assert tuple(row) == (sent.message_id, "79990000006@s.whatsapp.net", "re: hi", "IN1")
    assert abs((sent.timestamp - datetime.now(UTC)).total_seconds()) < 60  # seconds, not milliseconds


async def test_failed_pairing_code_request_ends_the_attempt(model_transport):
    outcome = await model_transport.start("company_14", jid=None, pairing_phone="123", listener=Listener())
    result = await asyncio.wait_for(outcome, 5)
    assert result.kind is HoldOutcomeKind.PAIRING_TIMEOUT and "pairing code request failed" in result.detail


async def test_listener_errors_are_logged_not_lost(model_transport, caplog):
    class Failing(Listener):
        async def qr(self, code, sequence, expires_at) -> None:
            raise RuntimeError("listener broke")

    caplog.set_level(logging.WARNING, "waorch.neonize")
    await model_transport.start("company_15", jid=None, pairing_phone=None, listener=Failing())
    await wait_for(lambda: "listener broke" in caplog.text, what="the listener's error in the log")


async def test_logout_of_a_resumed_client_not_connected_yet_deletes_the_device(model_transport, model, db):
    jid, _ = await pair(model_transport, "company_16")
    await model_transport.stop("company_16")
    model.timing.dial_timeout_s = 1.0
    model.server.plan(jid, "stall")
    outcome = await model_transport.start("company_16", jid=jid, pairing_phone=None, listener=Listener())
    await asyncio.sleep(0.2)
    await model_transport.logout("company_16")
    assert outcome.done() and outcome.result().kind is HoldOutcomeKind.LOGGED_OUT
    assert await db.fetchval("SELECT count(*) FROM whatsmeow_device WHERE jid = $1", jid) == 0


def test_model_keeps_neonize_uuid_and_finalizer_rules():
    from neonize.utils.jid import JID

    jid = JID(User="79991112233", Device=1, Server="s.whatsapp.net", RawAgent=0, Integrator=0, IsEmpty=False)
    client = whatsmeow_model.NewClient("postgresql://x", jid=jid, uuid="ignored")
    assert client.uuid == b"79991112233"  # neonize ignores uuid= when jid= is given
    assert client._stop_finalizer.alive
    other = whatsmeow_model.NewClient("postgresql://x", uuid="u1")
    assert other.uuid == b"u1"
    for c in (client, other):  # else their Stop(uuid) would run at some later GC, in another test
        c._stop_finalizer.detach()


async def test_no_client_starts_past_the_store_connection_cap(model_transport):
    held = (await model_transport.leaks()).store_connections or 0
    model_transport.store_connection_cap = held + 2
    told: list[int] = []

    async def on_resources() -> None:
        told.append(1)

    model_transport.on_resources = on_resources
    for n in range(2):
        await model_transport.start(f"company_17{n}", jid=None, pairing_phone=None, listener=Listener())
        await model_transport.stop(f"company_17{n}")
    outcome = await model_transport.start("company_172", jid=None, pairing_phone=None, listener=Listener())
    assert outcome.done() and outcome.result().kind is HoldOutcomeKind.DIAL_FAILED
    assert "store connection cap reached" in outcome.result().detail
    assert told  # the connector's ResourceWatch hears of it (and drains)
    assert (await model_transport.leaks()).store_connections == held + 2


async def test_connected_delivered_after_stop_does_not_call_into_go(model_transport, model):
    jid, _ = await pair(model_transport, "company_18")
    await model_transport.stop("company_18")
    # Go's CallbackFunction may hand over an event it took just before Stop: here, Connected.
    model.timing.callback_delay_s = 0.5
    listener = Listener()
    outcome = await model_transport.start("company_18", jid=jid, pairing_phone=None, listener=listener)
    await asyncio.sleep(0.2)
    await model_transport.stop("company_18")
    assert outcome.result().kind is HoldOutcomeKind.STOPPED
    await asyncio.sleep(1.5)  # the late events arrive now, after Stop freed Go's map entry
    assert model.fatal_errors == []  # get_me() here would dereference a nil client: a process abort
    assert "connected" not in listener.calls
