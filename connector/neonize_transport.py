"""The real WhatsApp transport: one sync neonize ``NewClient`` per company, each on its own thread.

Hazards handled here (NEONIZE.md):

* Go keeps per-client state in unlocked global maps: every ``connect()`` start
  and every ``stop()`` goes through one process-wide lock, starts staggered.
* A shared store resumes its *first* device without ``jid=``: the company's
  own device jid (``companies.device_jid``) is passed, after checking it is in
  ``whatsmeow_device`` (an unknown jid aborts the process); a fresh pairing
  uses ``new_device=True``.
* whatsmeow reconnects by itself after a drop; the session workflow owns the
  backoff, so the client is stopped on the first terminal event.
* The QR timeout is not surfaced to Python: our own timer stops the client.

:func:`outcome_for_event` is the one mapping of whatsmeow events to session outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.devices import DeviceDirectory
from connector.neonize_store import neonize_dsn
from connector.transport import LinkStatus, NotConnectedError, SessionListener
from domain.addresses import phone_of as phone_from_jid
from domain.inbox import IncomingMessage
from domain.session import HoldOutcome, HoldOutcomeKind, SendResult
from domain.settings import Settings

log = logging.getLogger("waorch.neonize")

# One lock for every connect() start and stop() in this process (Go's global maps).
_GO_LOCK = asyncio.Lock()
_START_STAGGER_S = 0.02
STOP_TIMEOUT_S = 20.0


def outcome_for_event(ev: Any) -> HoldOutcome | None:
    """The session outcome a whatsmeow event stands for, or None if it is not terminal."""
    from neonize.events import (
        ClientOutdatedEv,
        ConnectFailureEv,
        DisconnectedEv,
        KeepAliveTimeoutEv,
        LoggedOutEv,
        StreamErrorEv,
        StreamReplacedEv,
        TemporaryBanEv,
    )

    if isinstance(ev, StreamReplacedEv):
        return HoldOutcome(HoldOutcomeKind.REPLACED, "stream replaced (440)")
    if isinstance(ev, LoggedOutEv):
        return HoldOutcome(HoldOutcomeKind.LOGGED_OUT, f"logged out (reason {getattr(ev, 'Reason', '?')})")
    if isinstance(ev, TemporaryBanEv):
        expire = float(getattr(ev, "Expire", 0) or 0)
        return HoldOutcome(HoldOutcomeKind.TEMP_BANNED, f"temporary ban code {getattr(ev, 'Code', '?')}",
                           ban_expires_s=expire or None)
    if isinstance(ev, ConnectFailureEv):
        return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"connect failure (reason {getattr(ev, 'Reason', '?')})")
    if isinstance(ev, ClientOutdatedEv):
        return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, "client outdated")
    if isinstance(ev, StreamErrorEv):
        return HoldOutcome(HoldOutcomeKind.DROPPED, f"stream error {getattr(ev, 'Code', '')}".strip())
    if isinstance(ev, DisconnectedEv | KeepAliveTimeoutEv):
        return HoldOutcome(HoldOutcomeKind.DROPPED, type(ev).__name__)
    return None


def parse_jid(text: str) -> Any:
    """``user[:device]@server`` → neonize JID."""
    from neonize.utils.jid import JID

    user, _, server = text.partition("@")
    user, _, device = user.partition(":")
    return JID(User=user, Device=int(device or 0), Server=server or "s.whatsapp.net", RawAgent=0,
               Integrator=0, IsEmpty=False)


def jid_text(jid: Any) -> str:
    from neonize.utils.jid import Jid2String

    return str(Jid2String(jid))


class _Client:
    """One company's client, its thread and its outcome."""

    def __init__(self, company_id: str, client: Any, listener: SessionListener,
                 loop: asyncio.AbstractEventLoop, pairing_phone: str | None) -> None:
        self.company_id = company_id
        self.client = client
        self.listener = listener
        self.loop = loop
        self.pairing_phone = pairing_phone
        self.outcome: asyncio.Future[HoldOutcome] = loop.create_future()
        self.thread: threading.Thread | None = None
        self.connected = False
        self.jid: str | None = None
        self.qr_sequence = 0
        self.stopping = False
        self.deferred_stop = False
        self.qr_timer: asyncio.TimerHandle | None = None

    def resolve(self, outcome: HoldOutcome) -> None:
        """Thread-safe: the first terminal event wins."""
        def set_it() -> None:
            if not self.outcome.done():
                self.outcome.set_result(outcome)
        self.loop.call_soon_threadsafe(set_it)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a listener coroutine on the event loop from a Go thread."""
        asyncio.run_coroutine_threadsafe(fn(*args), self.loop)


class NeonizeTransport:
    name = "neonize"

    def __init__(self, dsn: str, devices: DeviceDirectory, *, settings: Settings | None = None,
                 proxy: str | None = None) -> None:
        self._dsn = neonize_dsn(dsn)
        self._devices = devices
        self._proxy = proxy
        s = settings
        self.qr_first_timeout_s = s.qr_first_timeout_s if s else 60.0
        self.qr_total_timeout_s = s.qr_total_timeout_s if s else 160.0
        self._clients: dict[str, _Client] = {}
        self._stopping: set[asyncio.Future[None]] = set()

    async def start(
        self, company_id: str, *, jid: str | None, pairing_phone: str | None, listener: SessionListener
    ) -> asyncio.Future[HoldOutcome]:
        from neonize.client import NewClient

        if company_id in self._clients:
            await self.stop(company_id)
        loop = asyncio.get_running_loop()
        if jid is not None:
            client = NewClient(self._dsn, jid=parse_jid(jid))
        else:
            client = NewClient(self._dsn, new_device=True, uuid=f"{company_id}-{loop.time():.0f}")
        entry = _Client(company_id, client, listener, loop, pairing_phone)
        self._register(entry)
        self._clients[company_id] = entry
        thread = threading.Thread(target=self._run, args=(entry,), name=f"wa-{company_id}", daemon=True)
        entry.thread = thread
        async with _GO_LOCK:
            thread.start()
            await asyncio.sleep(_START_STAGGER_S)
        entry.outcome.add_done_callback(lambda _f: self._after_outcome(entry))
        return entry.outcome

    def _run(self, entry: _Client) -> None:
        from neonize.exc import NeonizeError

        try:
            if self._proxy:
                from neonize._binder import ProxySettings

                entry.client.connect(ProxySettings(proxy_address=self._proxy))
            else:
                entry.client.connect()
        except NeonizeError as exc:
            entry.resolve(HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"dial failed: {exc}"[:300]))
            return
        except Exception as exc:  # never let a client thread die silently
            entry.resolve(HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"client error: {type(exc).__name__}"))
            return
        entry.resolve(HoldOutcome(HoldOutcomeKind.STOPPED, "stopped"))

    def _register(self, entry: _Client) -> None:
        from neonize.events import (
            ClientOutdatedEv,
            ConnectedEv,
            ConnectFailureEv,
            DisconnectedEv,
            KeepAliveTimeoutEv,
            LoggedOutEv,
            MessageEv,
            PairStatusEv,
            StreamErrorEv,
            StreamReplacedEv,
            TemporaryBanEv,
        )

        c = entry.client

        def late(entry: _Client) -> bool:
            """The attempt ended while dialling: stop the client now that stop() is quick."""
            if not entry.deferred_stop:
                return False
            entry.deferred_stop = False
            asyncio.run_coroutine_threadsafe(self._stop_client(entry), entry.loop)
            return True

        def on_qr(_client: Any, data: bytes) -> None:
            entry.qr_sequence += 1
            if late(entry):
                return
            seq = entry.qr_sequence
            timeout = self.qr_first_timeout_s if seq == 1 else 20.0
            expires = datetime.now(UTC) + timedelta(seconds=timeout)
            entry.call(entry.listener.qr, data.decode(), seq, expires)
            if seq == 1:
                entry.loop.call_soon_threadsafe(self._arm_qr_timer, entry)
                if entry.pairing_phone:
                    asyncio.run_coroutine_threadsafe(self._request_pair_code(entry), entry.loop)

        c.event.qr(on_qr)

        def on_connected(_client: Any, _ev: Any) -> None:
            try:
                me = c.get_me()
                jid = jid_text(me.JID)
                push_name = getattr(me, "PushName", None) or None
            except Exception:  # get_me can fail on an unregistered client; keep the session anyway
                jid, push_name = entry.jid or "", None
            entry.connected = True
            entry.jid = jid
            if late(entry):
                return
            if entry.qr_timer is not None:
                entry.loop.call_soon_threadsafe(entry.qr_timer.cancel)
            entry.call(entry.listener.connected, jid, phone_from_jid(jid) if jid else None, push_name)

        c.event(ConnectedEv)(on_connected)

        def on_pair(_client: Any, ev: Any) -> None:
            if getattr(ev, "Status", 0) == 1:
                entry.resolve(HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "pairing failed"))

        c.event(PairStatusEv)(on_pair)

        def on_terminal(_client: Any, ev: Any) -> None:
            outcome = outcome_for_event(ev)
            if outcome is None:
                return
            if outcome.kind is HoldOutcomeKind.DROPPED and entry.connected:
                entry.connected = False
                entry.call(entry.listener.disconnected, outcome.detail)
            entry.resolve(outcome)

        for ev_type in (StreamReplacedEv, LoggedOutEv, TemporaryBanEv, ConnectFailureEv, ClientOutdatedEv,
                        StreamErrorEv, DisconnectedEv, KeepAliveTimeoutEv):
            c.event(ev_type)(on_terminal)

        def on_message(_client: Any, ev: Any) -> None:
            try:
                msg = _incoming(entry.company_id, ev)
            except Exception as exc:
                log.warning("unreadable message company_id=%s error=%s", entry.company_id, type(exc).__name__)
                return
            entry.call(entry.listener.message, msg)

        c.event(MessageEv)(on_message)

    def _arm_qr_timer(self, entry: _Client) -> None:
        def expire() -> None:
            if not entry.connected and not entry.outcome.done():
                entry.outcome.set_result(HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "QR not scanned in time"))
        entry.qr_timer = entry.loop.call_later(self.qr_total_timeout_s, expire)

    async def _request_pair_code(self, entry: _Client) -> None:
        if not entry.pairing_phone:
            return
        try:
            code = await self.pair_code(entry.company_id, entry.pairing_phone)
        except Exception as exc:
            log.warning("pairing code failed company_id=%s error=%s", entry.company_id, type(exc).__name__)
            return
        await entry.listener.pairing_code(code)

    def _after_outcome(self, entry: _Client) -> None:
        """Whatever ended the attempt, stop the client: whatsmeow must not reconnect on its own."""
        if entry.qr_timer is not None:
            entry.qr_timer.cancel()
        if self._clients.get(entry.company_id) is entry:
            del self._clients[entry.company_id]
        task = asyncio.ensure_future(self._stop_client(entry))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_client(self, entry: _Client) -> None:
        if entry.stopping:
            return
        if self._dialling(entry) and entry.thread is not None and entry.thread.is_alive():
            # whatsmeow's stop() blocks until a running dial times out (15-60 s), holding the
            # process-wide lock all that time. Leave the dial to fail by itself; if it succeeds
            # instead, the first callback sees the attempt is over and stops the client then.
            entry.deferred_stop = True
            return
        entry.stopping = True
        async with _GO_LOCK:
            try:
                await asyncio.wait_for(asyncio.to_thread(entry.client.stop), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("stop did not return in %.0fs company_id=%s", STOP_TIMEOUT_S, entry.company_id)
            except Exception as exc:
                log.warning("stop failed company_id=%s error=%s", entry.company_id, type(exc).__name__)

    async def stop(self, company_id: str) -> None:
        entry = self._clients.get(company_id)
        if entry is None:
            return
        del self._clients[company_id]
        if not entry.outcome.done():
            entry.outcome.set_result(HoldOutcome(HoldOutcomeKind.STOPPED, "stopped"))
        await self._stop_client(entry)

    @staticmethod
    def _dialling(entry: _Client) -> bool:
        """No QR and no connection yet: the first dial is still running."""
        return not entry.connected and entry.qr_sequence == 0

    async def logout(self, company_id: str) -> None:
        entry = self._clients.get(company_id)
        if entry is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(entry.client.logout), STOP_TIMEOUT_S)
        except Exception as exc:
            log.warning("logout failed company_id=%s error=%s", company_id, type(exc).__name__)
        if entry.jid:
            await self._devices.db.execute("DELETE FROM whatsmeow_device WHERE jid = $1", entry.jid)
        await self._devices.forget(company_id)
        if not entry.outcome.done():
            entry.outcome.set_result(HoldOutcome(HoldOutcomeKind.LOGGED_OUT, "logged out by request"))

    async def pair_code(self, company_id: str, phone: str) -> str:
        entry = self._clients.get(company_id)
        if entry is None:
            raise NotConnectedError(f"company {company_id} has no client on this connector")
        code: str = await asyncio.to_thread(entry.client.PairPhone, phone, True)
        return code

    async def send(self, company_id: str, to: str, text: str, quoted: str | None = None) -> SendResult:
        entry = self._clients.get(company_id)
        if entry is None or not entry.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        from neonize.utils.jid import build_jid

        target = parse_jid(to) if "@" in to else build_jid(to)
        resp = await asyncio.to_thread(entry.client.send_message, target, text)
        return SendResult(message_id=str(resp.ID), timestamp=datetime.fromtimestamp(int(resp.Timestamp), UTC))

    def status(self, company_id: str) -> LinkStatus | None:
        entry = self._clients.get(company_id)
        return None if entry is None else LinkStatus(company_id, entry.connected, entry.jid)

    async def device_exists(self, jid: str) -> bool:
        return bool(await self._devices.db.fetchval("SELECT EXISTS (SELECT 1 FROM whatsmeow_device WHERE jid = $1)",
                                                    jid))

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(cid) for cid in list(self._clients)), return_exceptions=True)


def _incoming(company_id: str, ev: Any) -> IncomingMessage:
    info = ev.Info
    src = info.MessageSource
    chat = jid_text(src.Chat)
    sender = jid_text(src.Sender)
    msg = ev.Message
    text = msg.conversation or (msg.extendedTextMessage.text if msg.HasField("extendedTextMessage") else None)
    return IncomingMessage(
        company_id=company_id,
        message_id=str(info.ID),
        chat=chat,
        sender=sender,
        timestamp=datetime.fromtimestamp(int(info.Timestamp), UTC),
        text=text,
        sender_phone=phone_from_jid(sender),
        push_name=str(info.Pushname) or None,
        message_type=str(info.Type) or "text",
        from_me=bool(src.IsFromMe),
    )
