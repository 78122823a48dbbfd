"""Beyond text (issue 11.3-11.8) on the neonize transport, against the model of neonize's client: how
receipts, the server ack, replies, reactions, read marks, presence, number checks, groups and the
company's proxy map onto neonize's real calls and events (what WhatsApp would be sent, what the
connector is told)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from neonize.events import ReceiptEv
from neonize.proto import Neonize_pb2 as neonize_proto

from connector import whatsmeow_model
from connector.neonize_transport import NeonizeTransport
from connector.transport import NoServerAckError, NotConnectedError, NotFoundOnWhatsAppError, WhatsAppRefusedError
from domain.chat_actions import ChatPresenceState
from domain.receipts import MessageStatus
from tests.connector.test_neonize_model import PHONE, pair, resume, wait_for

pytestmark = pytest.mark.timeout(60)

CUSTOMER = "79990000001@s.whatsapp.net"
MEMBER = "79990000002@s.whatsapp.net"
GROUP = "120363000000000042@g.us"


def _phone(transport: NeonizeTransport, company: str) -> whatsmeow_model.PhoneSide:
    phone: whatsmeow_model.PhoneSide = transport._clients[company].client.phone
    return phone


async def _actions(db, company: str, kind: str) -> list[dict[str, Any]]:
    import json

    rows = await db.fetch("SELECT chat, detail FROM transport_actions WHERE company_id = $1 AND kind = $2 ORDER BY id",
                          company, kind)
    return [{"chat": r["chat"], **json.loads(r["detail"])} for r in rows]


async def test_receipts_of_sent_messages_become_status_steps(model_transport, db):
    _jid, listener = await pair(model_transport, "company_r")
    await db.execute("INSERT INTO companies (company_id, device_jid) VALUES ('company_r', $1)", _jid)
    sent = await model_transport.send("company_r", CUSTOMER, "hi")
    phone = _phone(model_transport, "company_r")
    phone.receipt([sent.message_id], "delivered", chat=CUSTOMER, timestamp_s=1_795_000_000)
    phone.receipt([sent.message_id, "OTHER"], "read", chat=CUSTOMER)
    phone.receipt(["G1"], "played", chat=GROUP, participant="79990000002:5@s.whatsapp.net")
    # Receipts about this number's other devices (its own reads, "sender") are not a step of a send.
    own = neonize_proto.MessageSource(
        Chat=whatsmeow_model._jid_proto(CUSTOMER), Sender=whatsmeow_model._jid_proto(_jid), IsFromMe=True,
        IsGroup=False, AddressingMode=neonize_proto.PN, SenderAlt=whatsmeow_model._empty_jid(),
        RecipientAlt=whatsmeow_model._empty_jid(), BroadcastListOwner=whatsmeow_model._empty_jid())
    phone._go.dispatch(ReceiptEv(MessageSource=own, MessageIDs=["IN1"], Timestamp=int(time.time()),
                                 Type=ReceiptEv.READ_SELF))
    phone._go.dispatch(ReceiptEv(MessageSource=own, MessageIDs=[sent.message_id], Timestamp=int(time.time()),
                                 Type=ReceiptEv.SENDER))
    phone._go.dispatch(ReceiptEv(MessageSource=own, MessageIDs=["IN2"], Timestamp=int(time.time()),
                                 Type=ReceiptEv.READ))
    await wait_for(lambda: len(listener.receipts) >= 3, what="three receipts")
    await asyncio.sleep(0.3)
    delivered, read, played = listener.receipts
    assert (delivered.status, delivered.message_ids, delivered.chat) == (MessageStatus.DELIVERED, [sent.message_id],
                                                                        CUSTOMER)
    assert delivered.timestamp == datetime.fromtimestamp(1_795_000_000, UTC)  # seconds, as SendResponse's
    assert (read.status, read.message_ids, read.participant) == (MessageStatus.READ, [sent.message_id, "OTHER"], None)
    assert (played.status, played.chat, played.participant) == (MessageStatus.PLAYED, GROUP, MEMBER)


async def test_a_send_returns_only_with_the_server_ack(model_transport, model):
    await pair(model_transport, "company_a")
    phone = _phone(model_transport, "company_a")
    phone.stop_acks()
    waiting = asyncio.create_task(model_transport.send("company_a", CUSTOMER, "anyone there?"))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # whatsmeow waits for the server's ack of the message node
    phone.stop_acks(False)
    sent = await asyncio.wait_for(waiting, 5)
    assert sent.message_id.startswith("3EB0")

    model.timing.send_timeout_s = 0.4
    phone.stop_acks()
    with pytest.raises(NoServerAckError, match="timed out waiting for message send response"):
        await model_transport.send("company_a", CUSTOMER, "lost?")
    model.timing.send_timeout_s = 30
    waiting = asyncio.create_task(model_transport.send("company_a", CUSTOMER, "and now?"))
    await asyncio.sleep(0.3)
    phone.drop()  # the socket goes while the send waits: it fails at once, as not connected
    with pytest.raises(NotConnectedError, match="websocket disconnected"):
        await asyncio.wait_for(waiting, 5)
    assert [m.conversation for _, _, m in model.server.sent] == ["anyone there?"]


async def test_a_reply_is_built_by_neonize_from_the_quoted_message(model_transport, model):
    await pair(model_transport, "company_q")
    phone = _phone(model_transport, "company_q")
    phone.incoming("Можно на 15:00?", sender="79990000002:3@s.whatsapp.net", chat=GROUP, message_id="M1")
    await asyncio.sleep(0.3)
    await model_transport.send("company_q", GROUP, "Да", quoted="M1")
    reply = model.server.sent[-1][2].extendedTextMessage
    assert reply.text == "Да" and reply.contextInfo.stanzaID == "M1"
    assert reply.contextInfo.participant == MEMBER  # the author, not the group
    assert reply.contextInfo.quotedMessage.conversation == "Можно на 15:00?"
    # A message no longer remembered: its id, the author given (or the recipient), an empty text.
    await model_transport.send("company_q", GROUP, "Ок", quoted="OLD", quoted_sender=CUSTOMER)
    await model_transport.send("company_q", CUSTOMER, "Ок", quoted="OLD2")
    (_, _, in_group), (_, to, direct) = model.server.sent[-2:]
    assert (in_group.extendedTextMessage.contextInfo.stanzaID, in_group.extendedTextMessage.contextInfo.participant
            ) == ("OLD", CUSTOMER)
    assert (to, direct.extendedTextMessage.contextInfo.participant) == (CUSTOMER, CUSTOMER)
    assert direct.extendedTextMessage.contextInfo.HasField("quotedMessage")


async def test_reactions_read_marks_and_presence(model_transport, model, db):
    jid, _ = await pair(model_transport, "company_x")
    await db.execute("INSERT INTO companies (company_id, device_jid) VALUES ('company_x', $1)", jid)
    mine = await model_transport.send_reaction("company_x", CUSTOMER, "IN1", "👍", CUSTOMER)
    await model_transport.send_reaction("company_x", CUSTOMER, "OUT1", "", None)
    await model_transport.send_reaction("company_x", GROUP, "G1", "🔥", MEMBER)
    keys = [m.reactionMessage for _, _, m in model.server.sent]
    assert [(k.key.remoteJID, k.key.ID, k.key.fromMe, k.key.participant, k.text) for k in keys] == [
        (CUSTOMER, "IN1", False, "", "👍"), (CUSTOMER, "OUT1", True, "", ""), (GROUP, "G1", False, MEMBER, "🔥")]
    assert mine.message_id and (await _actions(db, "company_x", "reaction"))[0]["reactionId"] == mine.message_id

    await model_transport.mark_read("company_x", CUSTOMER, CUSTOMER, ["IN1", "IN2"])
    with pytest.raises(WhatsAppRefusedError, match="no message IDs"):
        await model_transport.mark_read("company_x", CUSTOMER, CUSTOMER, [])
    for state in ChatPresenceState:
        await model_transport.send_presence("company_x", CUSTOMER, state)
    (read,) = await _actions(db, "company_x", "read")
    assert (read["chat"], read["messageIds"], read["sender"], read["receipt"]) == (CUSTOMER, ["IN1", "IN2"], CUSTOMER,
                                                                                   "read")
    assert [a["state"] for a in await _actions(db, "company_x", "presence")] == ["typing", "recording", "paused"]


async def test_number_checks_and_group_info(model_transport, model, db):
    await pair(model_transport, "company_n")
    phone = _phone(model_transport, "company_n")
    phone.contact("79990000007", on_whatsapp=False)
    phone.contact("79990000008", lid="123456789012345")
    on = await model_transport.check_contact("company_n", "79990000006")
    off = await model_transport.check_contact("company_n", "79990000007")
    lid = await model_transport.check_contact("company_n", "79990000008")
    assert (on.on_whatsapp, on.jid, on.lid) == (True, "79990000006@s.whatsapp.net", None)
    assert (off.on_whatsapp, off.jid) == (False, None)
    assert (lid.on_whatsapp, lid.lid) == (True, "123456789012345@lid")  # from the store's LID map

    phone.group(GROUP, "Салон", [f"{PHONE}@s.whatsapp.net", MEMBER], admins=[MEMBER])
    info = await model_transport.group_info("company_n", GROUP)
    assert (info.jid, info.subject, info.owner) == (GROUP, "Салон", f"{PHONE}@s.whatsapp.net")
    assert [(p.jid, p.phone, p.is_admin, p.is_super_admin) for p in info.participants] == [
        (f"{PHONE}@s.whatsapp.net", PHONE, True, True), (MEMBER, "79990000002", True, False)]
    with pytest.raises(NotFoundOnWhatsAppError, match="group not found"):
        await model_transport.group_info("company_n", "120363000000000099@g.us")
    phone.group("120363000000000098@g.us", "Без нас", [MEMBER])
    with pytest.raises(NotFoundOnWhatsAppError, match="not participating"):
        await model_transport.group_info("company_n", "120363000000000098@g.us")

    await model_transport.stop("company_n")
    for call in (model_transport.check_contact("company_n", "79990000006"),
                 model_transport.group_info("company_n", GROUP),
                 model_transport.mark_read("company_n", CUSTOMER, CUSTOMER, ["X"]),
                 model_transport.send_presence("company_n", CUSTOMER, ChatPresenceState.TYPING),
                 model_transport.send_reaction("company_n", CUSTOMER, "X", "👍", None)):
        with pytest.raises(NotConnectedError):
            await call


async def test_each_connect_dials_through_the_company_proxy_as_stored_then(model_transport, db, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s0cks-Secret"
    proxy = f"socks5://shop:{secret}@proxy.example.com:1080"
    await db.execute("INSERT INTO companies (company_id, proxy_url) VALUES ('company_p', $1)", proxy)
    jid, _ = await pair(model_transport, "company_p")
    assert model_transport._clients["company_p"].client.proxy_address == proxy  # neonize's ProxySettings
    await db.execute("UPDATE companies SET proxy_url = NULL, device_jid = $1 WHERE company_id = 'company_p'", jid)
    await model_transport.stop("company_p")
    await resume(model_transport, "company_p", jid)
    assert model_transport._clients["company_p"].client.proxy_address is None  # removed: direct
    assert secret not in caplog.text and "socks5://shop:***@proxy.example.com:1080" in caplog.text
