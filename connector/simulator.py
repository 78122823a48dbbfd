"""The WhatsApp simulator transport (SPEC O5, ``WA_TRANSPORT=simulator``).

It behaves like the neonize transport as the session workflow sees it:
rotating QR codes (first ``qr_first_timeout_s``, then ``qr_next_timeout_s``,
until ``qr_total_timeout_s``), "scan" or pairing-code confirmation to pair,
device credentials persisted in PostgreSQL (``sim_devices``, like
``whatsmeow_device``) so a restarted connector reconnects without a QR, and
injectable trouble: incoming messages, drops, 440, logout, temporary bans,
dial failures and flapping. Sent messages go to an outbox.

Beyond text (issue 11.3-11.8), as whatsmeow behaves: a send returns once WhatsApp's server
acknowledged it, and the server can be told to stop acknowledging (``stop_acks``: a send then waits
until ``resume_acks``, the connection's end, or ``send_ack_timeout_s``, whatsmeow's "timed out waiting
for message send response"); receipts (delivered, read, played) come when the phone side says so
(``receipt``); read marks, presence, reactions, number checks and group reads are recorded in
``transport_actions`` (PostgreSQL, like the outbox), and so is the proxy of each dial of a company
that has one (masked). Numbers are on WhatsApp unless ``contact`` says otherwise; groups exist once
``group`` made them.

Deterministic: nothing random but the QR payload; every injected event happens
when a test (or the ``transport_control`` activity) asks for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.devices import DeviceDirectory
from connector.live_sockets import LiveSockets
from connector.transport import (
    LinkStatus,
    MediaGoneError,
    NoServerAckError,
    NotConnectedError,
    NotFoundOnWhatsAppError,
    SessionListener,
    TransportControlError,
    TransportLeaks,
)
from domain.addresses import GROUP_SERVER, InvalidAddress, parse_jid, phone_of
from domain.chat_actions import ChatPresenceState, ContactInfo, GroupInfo, GroupParticipant
from domain.inbox import IncomingMessage
from domain.media import MediaDescriptor, MediaKind, MediaRef, media_id
from domain.proxy import masked_proxy
from domain.receipts import MessageReceipt, MessageStatus
from domain.session import HoldOutcome, HoldOutcomeKind, OutboxEntry, SendResult

log = logging.getLogger("waorch.simulator")


class SimulatorError(TransportControlError):
    """A control that does not apply to the company's current simulated state."""


@dataclass
class _Link:
    company_id: str
    listener: SessionListener
    outcome: asyncio.Future[HoldOutcome]
    pairing_phone: str | None
    jid: str | None = None
    phone: str | None = None
    connected: bool = False
    qr_sequence: int = 0
    pairing_code: str | None = None
    socket_id: str | None = None  # the live-socket registry's entry while connected
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    proxy: str | None = None  # the company's proxy this connection was dialled through
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def simulated_phone(company_id: str) -> str:
    """A stable fake phone number for a company (the "phone" that scans its QR)."""
    digits = int(hashlib.sha256(company_id.encode()).hexdigest()[:10], 16) % 10**9
    return f"7999{digits:09d}"


class SimulatorTransport:
    name = "simulator"

    def __init__(
        self,
        devices: DeviceDirectory,
        *,
        qr_first_timeout_s: float = 60.0,
        qr_next_timeout_s: float = 20.0,
        qr_total_timeout_s: float = 160.0,
        dial_delay_s: float = 0.0,
    ) -> None:
        self._devices = devices
        self.qr_first_timeout_s = qr_first_timeout_s
        self.qr_next_timeout_s = qr_next_timeout_s
        self.qr_total_timeout_s = qr_total_timeout_s
        self.dial_delay_s = dial_delay_s
        self._links: dict[str, _Link] = {}
        self._dial_failures: dict[str, int] = defaultdict(int)
        self._outdated: set[str] = set()  # companies whose next dials meet "client outdated" (405)
        self._flaps: dict[str, tuple[int, float]] = {}
        # What each phone sent, as this process saw it; the durable record is transport_outbox.
        self.outbox: dict[str, list[OutboxEntry]] = defaultdict(list)
        self.sockets = LiveSockets(devices.db.dsn)
        self.dials: dict[str, int] = defaultdict(int)  # connection attempts per company
        # Beyond text (issue 11.3-11.8): the server's acks, WhatsApp's directory, each dial's proxy.
        self.send_ack_timeout_s = 75.0
        self._silent: dict[str, asyncio.Event] = {}  # companies whose sends get no server ack (set: back)
        self._contacts: dict[str, ContactInfo] = {}
        self._groups: dict[str, GroupInfo] = {}
        self.proxies: dict[str, list[str | None]] = defaultdict(list)  # what each dial was given

    # ------------------------------------------------------------------ protocol

    async def start(
        self, company_id: str, *, jid: str | None, pairing_phone: str | None, listener: SessionListener
    ) -> asyncio.Future[HoldOutcome]:
        if company_id in self._links:
            await self.stop(company_id)
        loop = asyncio.get_running_loop()
        link = _Link(company_id, listener, loop.create_future(), pairing_phone)
        self._links[company_id] = link
        self.dials[company_id] += 1
        await self._dial_through_proxy(link)
        if company_id in self._outdated:
            self._end(link, HoldOutcome(HoldOutcomeKind.CLIENT_OUTDATED, "client outdated (405): update neonize"))
            return link.outcome
        if self._dial_failures[company_id] > 0:
            self._dial_failures[company_id] -= 1
            self._end(link, HoldOutcome(HoldOutcomeKind.DIAL_FAILED, "simulated dial failure"))
            return link.outcome
        device = await self._device(jid) if jid else None
        if device is not None:
            self._spawn(link, self._resume(link, device["jid"], device["phone"], device["push_name"]))
        else:
            self._spawn(link, self._pairing(link))
        return link.outcome

    async def stop(self, company_id: str) -> None:
        link = self._links.get(company_id)
        if link is not None:
            self._end(link, HoldOutcome(HoldOutcomeKind.STOPPED, "stopped"))

    async def logout(self, company_id: str) -> None:
        link = self._links.get(company_id)
        await self._delete_device(company_id)
        if link is not None:
            self._end(link, HoldOutcome(HoldOutcomeKind.LOGGED_OUT, "logged out by request"))

    async def pair_code(self, company_id: str, phone: str) -> str:
        link = self._require(company_id)
        if link.connected:
            raise SimulatorError("already connected")
        link.pairing_phone = phone
        link.pairing_code = self._pair_code_for(company_id, phone)
        return link.pairing_code

    async def send(self, company_id: str, to: str, text: str, quoted: str | None = None,
                   quoted_sender: str | None = None) -> SendResult:
        link = self._connected_link(company_id)
        await self._server_ack(link)
        now = datetime.now(UTC)
        entry = OutboxEntry(message_id=f"SIM{uuid.uuid4().hex[:16].upper()}", to=to, text=text, timestamp=now,
                            quoted=quoted)
        await self._devices.db.execute(
            """INSERT INTO transport_outbox (company_id, transport, message_id, to_jid, text, quoted, sent_at)
               VALUES ($1, 'simulator', $2, $3, $4, $5, $6)""",
            company_id, entry.message_id, to, text, quoted, now,
        )
        self.outbox[company_id].append(entry)
        return SendResult(message_id=entry.message_id, timestamp=now)

    # ------------------------------------------------------------------ media (issue #11)

    async def send_media(self, company_id: str, to: str, media: MediaRef, data: bytes) -> SendResult:
        link = self._links.get(company_id)
        if link is None or not link.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        now = datetime.now(UTC)
        entry = OutboxEntry(message_id=f"SIM{uuid.uuid4().hex[:16].upper()}", to=to, text=media.caption or "",
                            timestamp=now, media=media)
        await self._devices.db.execute(
            """INSERT INTO transport_outbox (company_id, transport, message_id, to_jid, text, sent_at, media)
               VALUES ($1, 'simulator', $2, $3, $4, $5, $6::jsonb)""",
            company_id, entry.message_id, to, entry.text, now, json.dumps(outbox_media(media)),
        )
        self.outbox[company_id].append(entry)
        return SendResult(message_id=entry.message_id, timestamp=now)

    async def download_media(self, company_id: str, source: str) -> bytes:
        """From the simulated media servers (``sim_media``, shared by every connector): a media planned to
        fail does so that many times (HTTP 503), one planned gone answers 410 every time."""
        if not self._connected(company_id):
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        ref = source.removeprefix("sim:")
        failing = await self._devices.db.fetchval(
            "UPDATE sim_media SET failures_left = failures_left - 1 WHERE ref = $1 AND failures_left > 0 "
            "RETURNING failures_left", ref)
        if failing is not None:
            raise RuntimeError("simulated media server error: HTTP 503")
        row = await self._devices.db.fetchrow("SELECT data, failures_left FROM sim_media WHERE ref = $1", ref)
        if row is None or row["failures_left"] < 0:
            raise MediaGoneError("simulated media server: HTTP 410 (media expired)")
        return bytes(row["data"])

    def media_unavailable(self) -> dict[str, str]:
        return {}  # the simulator converts nothing

    def status(self, company_id: str) -> LinkStatus | None:
        link = self._links.get(company_id)
        if link is None:
            return None
        return LinkStatus(company_id, link.connected, link.jid)

    async def device_exists(self, jid: str) -> bool:
        return await self._device(jid) is not None

    async def close(self) -> None:
        for company_id in list(self._links):
            await self.stop(company_id)
        await asyncio.to_thread(self.sockets.close_connection)

    async def leaks(self) -> TransportLeaks:
        return TransportLeaks(clients_started=sum(self.dials.values()))

    @property
    def held(self) -> list[str]:
        return sorted(self._links)

    # ------------------------------------------------------------------ controls (tests, transport_control)

    async def control(self, company_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Dispatch one :class:`~domain.session.TransportCommand`; returns a small JSON-able answer."""
        match action:
            case "scan" | "pair":
                jid = await self.scan(company_id, phone=_opt_str(params.get("phone")))
                return {"ok": True, "jid": jid}
            case "disconnect":
                self.drop(company_id, str(params.get("reason", "simulated network drop")))
            case "replace":
                self.replace(company_id)
            case "logout":
                await self.logout_from_phone(company_id)
            case "ban":
                self.ban(company_id, float(str(params.get("expires_s", 3600))))
            case "dial_fail":
                self.fail_dials(company_id, int(str(params.get("times", 1))))
                if params.get("drop", True) and self._connected(company_id):
                    self.drop(company_id, "simulated network drop")
            case "outdated":
                # WhatsApp refuses this client version from the next dial on (times=0: updated again).
                if int(str(params.get("times", 1))) == 0:
                    self._outdated.discard(company_id)
                else:
                    self._outdated.add(company_id)
                    if params.get("drop", True) and self._connected(company_id):
                        self.drop(company_id, "simulated network drop")
            case "flap":
                self.flap(company_id, int(str(params.get("times", 3))), float(str(params.get("interval_s", 0.5))))
            case "incoming":
                msg = await self.incoming(
                    company_id,
                    text=str(params.get("text", "hello")),
                    chat=_opt_str(params.get("chat")),
                    sender=_opt_str(params.get("sender")),
                    message_id=_opt_str(params.get("message_id")),
                    media=await self._phone_media(params),
                    quoted=_opt_str(params.get("quoted")),
                )
                answer: dict[str, Any] = {"ok": True, "message_id": msg.message_id}
                if msg.media is not None:
                    answer["media_id"] = msg.media.id
                return answer
            case "receipt" | "stop_acks" | "resume_acks" | "contact" | "group":
                return await self._beyond_text_control(company_id, action, params)
            case _:
                raise SimulatorError(f"unknown simulator action {action!r}")
        return {"ok": True}

    async def scan(self, company_id: str, phone: str | None = None) -> str:
        """The phone scans the current QR (or confirms the pairing code): the device is linked."""
        link = self._require(company_id)
        if link.connected:
            raise SimulatorError("already connected")
        if link.qr_sequence == 0:
            raise SimulatorError("no QR code shown yet")
        phone = phone or link.pairing_phone or simulated_phone(company_id)
        jid = f"{phone}:1@s.whatsapp.net"
        await self._devices.db.execute(
            """INSERT INTO sim_devices (company_id, jid, phone, push_name) VALUES ($1, $2, $3, $4)
               ON CONFLICT (company_id) DO UPDATE SET jid = EXCLUDED.jid, phone = EXCLUDED.phone""",
            company_id, jid, phone, f"Sim {company_id}",
        )
        for task in list(link.tasks):
            task.cancel()
        await self._connect(link, jid, phone, f"Sim {company_id}")
        return jid

    def drop(self, company_id: str, reason: str = "simulated network drop") -> None:
        link = self._require(company_id)
        self._spawn(link, self._drop(link, reason))

    def replace(self, company_id: str) -> None:
        self._end(self._require(company_id), HoldOutcome(HoldOutcomeKind.REPLACED, "stream replaced (440)"))

    async def logout_from_phone(self, company_id: str) -> None:
        link = self._require(company_id)
        await self._delete_device(company_id)  # whatsmeow deletes the device rows itself on LoggedOut
        self._end(link, HoldOutcome(HoldOutcomeKind.LOGGED_OUT, "logged out from the phone"))

    def ban(self, company_id: str, expires_s: float) -> None:
        self._end(
            self._require(company_id),
            HoldOutcome(HoldOutcomeKind.TEMP_BANNED, "temporary ban", ban_expires_s=expires_s),
        )

    def fail_dials(self, company_id: str, times: int) -> None:
        """The next ``times`` connection attempts of the company fail at dial time."""
        self._dial_failures[company_id] = times

    def flap(self, company_id: str, times: int, interval_s: float) -> None:
        """Drop now, and drop again ``interval_s`` after each of the next ``times - 1`` reconnects."""
        self._flaps[company_id] = (times - 1, interval_s)
        self.drop(company_id, "simulated flap")

    async def incoming(
        self,
        company_id: str,
        text: str,
        chat: str | None = None,
        sender: str | None = None,
        message_id: str | None = None,
        media: MediaDescriptor | None = None,
        quoted: str | None = None,
    ) -> IncomingMessage:
        link = self._require(company_id)
        if not link.connected:
            raise SimulatorError("not connected")
        sender = sender or "79990000001@s.whatsapp.net"
        message_id = message_id or f"SIMIN{uuid.uuid4().hex[:14].upper()}"
        if media is not None:
            media.id = media_id(company_id, "in", message_id)
        msg = IncomingMessage(
            company_id=company_id,
            message_id=message_id,
            chat=chat or sender,
            sender=sender,
            timestamp=datetime.now(UTC),
            text=text if media is None else media.caption,
            sender_phone=sender.split("@", 1)[0].split(":", 1)[0] if sender.endswith("@s.whatsapp.net") else None,
            push_name="Sim sender",
            message_type="text" if media is None else media.kind.value,
            media=media,
            metadata={"quoted": quoted} if quoted else {},
        )
        await link.listener.message(msg)
        return msg

    async def _phone_media(self, params: dict[str, Any]) -> MediaDescriptor | None:
        """An incoming control's media: put on the simulated media servers, described as WhatsApp would."""
        kind = params.get("media_type")
        if kind is None:
            return None
        try:
            data = base64.b64decode(str(params.get("media_base64", "")), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SimulatorError(f"media_base64: {exc}") from None
        if not data:
            raise SimulatorError("an incoming media needs media_base64")
        from infra.media_intake import sniff_mimetype

        ref = uuid.uuid4().hex
        failures = int(str(params.get("download_failures", 0)))
        await self._devices.db.execute(
            "INSERT INTO sim_media (ref, data, failures_left) VALUES ($1, $2, $3)", ref, data, failures)
        return MediaDescriptor(
            id="", kind=MediaKind(str(kind)), mimetype=_opt_str(params.get("mimetype")) or sniff_mimetype(data),
            size=len(data), sha256=hashlib.sha256(data).hexdigest(), caption=_opt_str(params.get("caption")),
            filename=_opt_str(params.get("filename")), source=f"sim:{ref}",
        )

    # ------------------------------------------------------------------ internals

    def _require(self, company_id: str) -> _Link:
        link = self._links.get(company_id)
        if link is None:
            raise SimulatorError(f"company {company_id} is not held by this connector")
        return link

    def _connected(self, company_id: str) -> bool:
        link = self._links.get(company_id)
        return link is not None and link.connected

    def _spawn(self, link: _Link, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)
        task.add_done_callback(_log_failure)

    def _end(self, link: _Link, outcome: HoldOutcome) -> None:
        if self._links.get(link.company_id) is link:
            del self._links[link.company_id]
        link.connected = False
        link.ended.set()
        if link.socket_id is not None:
            # Closed before the outcome is known, so the next hold of the device never overlaps it.
            self.sockets.close(link.socket_id)
            link.socket_id = None
        for task in list(link.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if not link.outcome.done():
            link.outcome.set_result(outcome)

    async def _device(self, jid: str) -> Any:
        return await self._devices.db.fetchrow("SELECT jid, phone, push_name FROM sim_devices WHERE jid = $1", jid)

    async def _delete_device(self, company_id: str) -> None:
        await self._devices.db.execute("DELETE FROM sim_devices WHERE company_id = $1", company_id)
        await self._devices.forget(company_id)

    @staticmethod
    def _pair_code_for(company_id: str, phone: str) -> str:
        h = hashlib.sha256(f"{company_id}:{phone}".encode()).hexdigest().upper()
        code = "".join(c for c in h if c.isalnum())[:8]
        return f"{code[:4]}-{code[4:]}"

    async def _resume(self, link: _Link, jid: str, phone: str | None, push_name: str | None) -> None:
        if self.dial_delay_s:
            await asyncio.sleep(self.dial_delay_s)
        await self._connect(link, jid, phone, push_name)

    async def _connect(self, link: _Link, jid: str, phone: str | None, push_name: str | None) -> None:
        link.socket_id = await asyncio.to_thread(self.sockets.open, jid, transport="simulator",
                                                 company_id=link.company_id)
        if self._links.get(link.company_id) is not link:  # ended while the socket opened
            if link.socket_id is not None:
                self.sockets.close(link.socket_id)
            link.socket_id = None
            return
        link.jid, link.phone, link.connected = jid, phone, True
        await link.listener.connected(jid, phone, push_name)
        flaps = self._flaps.get(link.company_id)
        if flaps and flaps[0] > 0:
            self._flaps[link.company_id] = (flaps[0] - 1, flaps[1])
            self._spawn(link, self._drop_later(link, flaps[1], "simulated flap"))

    async def _drop_later(self, link: _Link, delay_s: float, reason: str) -> None:
        await asyncio.sleep(delay_s)
        await self._drop(link, reason)

    async def _drop(self, link: _Link, reason: str) -> None:
        if link.connected:
            link.connected = False
            await link.listener.disconnected(reason)
        self._end(link, HoldOutcome(HoldOutcomeKind.DROPPED, reason))

    async def _pairing(self, link: _Link) -> None:
        """Rotate QR codes like WhatsApp does, then give up (SPEC S10)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.qr_total_timeout_s
        timeout = self.qr_first_timeout_s
        while True:
            link.qr_sequence += 1
            seq = link.qr_sequence
            code = f"2@SIM{uuid.uuid4().hex[:24]},{link.company_id},{seq}"
            expires = datetime.now(UTC) + timedelta(seconds=timeout)
            await link.listener.qr(code, seq, expires)
            if seq == 1 and link.pairing_phone:
                link.pairing_code = self._pair_code_for(link.company_id, link.pairing_phone)
                await link.listener.pairing_code(link.pairing_code)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(timeout, remaining))
            if loop.time() >= deadline - 1e-3:
                break
            timeout = self.qr_next_timeout_s
        self._end(link, HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "QR not scanned in time"))


    # ------------------------------------------------------------------ beyond text (issue 11.3-11.8)

    async def mark_read(self, company_id: str, chat: str, sender: str, message_ids: list[str]) -> None:
        self._connected_link(company_id)
        await self._record_action(company_id, "read", chat, {"sender": sender, "messageIds": message_ids})

    async def send_presence(self, company_id: str, chat: str, state: ChatPresenceState) -> None:
        self._connected_link(company_id)
        await self._record_action(company_id, "presence", chat, {"state": state.value})

    async def send_reaction(self, company_id: str, chat: str, message_id: str, emoji: str,
                            sender: str | None) -> SendResult:
        link = self._connected_link(company_id)
        await self._server_ack(link)  # a reaction is a message: the same server ack
        reaction_id = f"SIMR{uuid.uuid4().hex[:16].upper()}"
        await self._record_action(company_id, "reaction", chat, {
            "messageId": message_id, "emoji": emoji, "fromMe": sender is None, "sender": sender,
            "reactionId": reaction_id})
        return SendResult(message_id=reaction_id, timestamp=datetime.now(UTC))

    async def check_contact(self, company_id: str, phone: str) -> ContactInfo:
        self._connected_link(company_id)
        await self._record_action(company_id, "contact_check", None, {"phone": phone})
        return self._contacts.get(phone) or ContactInfo(phone, True, f"{phone}@s.whatsapp.net")

    async def group_info(self, company_id: str, group: str) -> GroupInfo:
        self._connected_link(company_id)
        await self._record_action(company_id, "group_info", group, {})
        info = self._groups.get(group)
        if info is None:
            raise NotFoundOnWhatsAppError("group not found")
        return info

    async def _beyond_text_control(self, company_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        match action:
            case "stop_acks":  # the server goes on taking sends but acknowledges none ("connected but dead")
                self._silent.setdefault(company_id, asyncio.Event())
            case "resume_acks":
                back = self._silent.pop(company_id, None)
                if back is not None:
                    back.set()
            case "receipt":
                link = self._require(company_id)
                status = MessageStatus(str(params.get("status", "delivered")))
                if status is MessageStatus.SERVER:
                    raise SimulatorError("the server ack comes with the send; a receipt is delivered, read or played")
                ids = [str(i) for i in _list(params.get("message_ids") or params.get("message_id"))]
                if not ids:
                    raise SimulatorError("receipt: give message_id")
                chat = _opt_str(params.get("chat")) or await self._devices.db.fetchval(
                    "SELECT to_jid FROM transport_outbox WHERE company_id = $1 AND message_id = $2",
                    company_id, ids[0]) or "79990000001@s.whatsapp.net"
                await link.listener.receipt(MessageReceipt(
                    company_id, ids, status, chat, datetime.now(UTC), participant=_opt_str(params.get("participant"))))
            case "contact":
                phone = str(params.get("phone", ""))
                lid = _opt_str(params.get("lid"))
                on = bool(params.get("on_whatsapp", True))
                self._contacts[phone] = ContactInfo(phone, on, f"{phone}@s.whatsapp.net" if on else None,
                                                    f"{lid}@lid" if lid and on else None)
            case "group":
                group = str(params.get("group", ""))
                try:
                    if parse_jid(group).server != GROUP_SERVER:
                        raise InvalidAddress(group)
                except InvalidAddress:
                    raise SimulatorError(f"group: {group!r} is not a …@g.us JID") from None
                admins = {str(a) for a in _list(params.get("admins"))}
                members = [str(p) for p in _list(params.get("participants"))]
                owner = members[0] if members else None
                self._groups[group] = GroupInfo(
                    group, str(params.get("subject", "Simulated group")), owner=owner,
                    participants=[GroupParticipant(m, phone_of(m), is_admin=m in admins or m == owner,
                                                   is_super_admin=m == owner) for m in members])
        return {"ok": True}

    def _connected_link(self, company_id: str) -> _Link:
        link = self._links.get(company_id)
        if link is None or not link.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        return link

    async def _server_ack(self, link: _Link) -> None:
        """Return once WhatsApp's server acknowledged the send: at once, unless it stopped acking."""
        back = self._silent.get(link.company_id)
        if back is None:
            return
        waits = [asyncio.ensure_future(back.wait()), asyncio.ensure_future(link.ended.wait())]
        try:
            await asyncio.wait(waits, timeout=self.send_ack_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if link.ended.is_set():
            raise NotConnectedError("websocket disconnected before the message send returned a response")
        if not back.is_set():
            raise NoServerAckError("timed out waiting for message send response")

    async def _dial_through_proxy(self, link: _Link) -> None:
        """Each dial uses the company's proxy as stored now; what it was given is recorded (masked)."""
        link.proxy = await self._devices.proxy_of(link.company_id)
        seen = self.proxies[link.company_id]
        if link.proxy is not None or (seen and seen[-1] is not None):
            await self._record_action(link.company_id, "dial", None, {"proxy": masked_proxy(link.proxy)})
        seen.append(link.proxy)

    async def _record_action(self, company_id: str, kind: str, chat: str | None, detail: dict[str, Any]) -> None:
        await self._devices.db.execute(
            "INSERT INTO transport_actions (company_id, transport, kind, chat, detail) VALUES ($1, 'simulator', $2, "
            "$3, $4::jsonb)", company_id, kind, chat, json.dumps(detail))



def outbox_media(media: MediaRef) -> dict[str, Any]:
    """What ``transport_outbox.media`` keeps of a media send."""
    return {"id": media.id, "kind": media.kind.value, "mimetype": media.mimetype, "sha256": media.sha256,
            "size": media.size, "caption": media.caption, "filename": media.filename}



def _list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("simulator task failed error=%r", task.exception())

