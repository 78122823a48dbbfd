"""The real WhatsApp transport: one sync neonize ``NewClient`` per company, each on its own thread.

What neonize 0.5.2 and whatsmeow really do (read from neonize's Python package and Go sources and
from whatsmeow's, and measured on the library),
and how this module copes:

* **Go's global maps are unlocked.** ``Neonize()`` writes ``clients[uuid]`` and two
  more maps after store round trips; ``Stop`` deletes them; every other call
  (send, ``PairPhone``, logout, ``Disconnect``) reads them. :class:`GoCalls` is the
  one gate for every call into Go: a start holds it exclusively until Go has
  loaded the device on the client's own store connection (its last query
  before the map write, seen in ``pg_stat_activity``; bounded by
  ``NEONIZE_START_SETTLE_S``), a stop holds it exclusively; other calls share it
  for the instant of their map read. Go callbacks never call back into Go (``client.me`` instead
  of ``get_me()``, which aborts the process after ``stop()``).
* **whatsmeow reconnects by itself** after a drop. An attempt ends only after its
  client is dead: ``disconnect()`` (cancels the auto-reconnect, waits for a dial
  in flight), then ``stop()``. Until then the hold does not end, so the session
  workflow cannot start a second client on the device (two sockets on one
  device is a 440). A fresh pairing has no device yet: its hold ends at once.
* **uuid and finalizer.** With ``jid=`` neonize uses ``jid.User`` as the uuid and
  registers a ``weakref.finalize`` that calls Go ``Stop(uuid)`` at some later GC,
  stopping whichever client of that number then runs. Every client gets a
  unique uuid and its finalizer detached before ``connect()``.
* **The QR channel's end is reported only through the private
  ``__onLoginStatus`` hook** (``timeout``, ``error``, ``err-client-outdated``,
  ``err-unexpected-state``, ``success``); the hook is where a pairing attempt
  learns that it is over. After a channel that ended without pairing, neonize's
  thread waits in ``FetchMe`` for good: it is counted as leaked (``/metrics``)
  and a connector past ``CONNECTOR_LEAK_THRESHOLD`` drains and restarts.
* **A new-device attempt with no first QR** has a deadline
  (``QR_FIRST_TIMEOUT_S``), and **a scan** cancels the pairing deadline: the
  515 restart then gets ``NEONIZE_PAIRED_CONNECT_TIMEOUT_S`` to bring ``Connected``.
* **Keepalive timeouts** are tolerated for ``NEONIZE_KEEPALIVE_GRACE_S``
  (whatsmeow restores the socket or forces a reconnect by itself), then they are
  a drop.
* **Messages**: ``MessageEv.Info.Timestamp`` is in milliseconds; ``@lid`` senders'
  numbers come from ``SenderAlt``; senders lose their device part; status
  broadcasts and newsletters never reach the inbox.
* **Beyond text** (issue 11.3-11.8). ``send_message`` returns only once WhatsApp's server
  acknowledged the message (whatsmeow waits for the server's ack, and gives up with "timed out
  waiting for message send response"): that return *is* the server ack, so a send is awaited past
  ``ACK_TIMEOUT_S`` and the connector's deadline sees a dead connection. Receipts of sent messages
  come as ``ReceiptEv`` (delivered, read, played; the ``*_self``, ``sender``, ``retry``, … types
  are about other devices of this number and are dropped). Replies are built by neonize's
  ``build_reply_message`` from the quoted message as whatsmeow delivered it (a bounded memory of
  recent incoming messages) or, for one not in memory, from its id, author and an empty text.
  Reactions (``build_reaction``), read marks (``mark_read``), presence (``send_chat_presence``),
  number checks (``is_on_whatsapp``; the LID from the store's ``whatsmeow_lid_map``, read with SQL
  rather than ``get_lid_from_pn``, a call into Go that aborts the process on a stopped client) and
  groups (``get_group_info``) are calls into Go like any other, through the gate. Each connect dials
  through the company's proxy as stored then (``connect(ProxySettings(...))``).

:func:`outcome_for_event` is the one mapping of whatsmeow events to session outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import functools
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connector.devices import DeviceDirectory
from connector.media_tools import unavailable_media_kinds
from connector.neonize_store import neonize_dsn
from connector.transport import (
    LinkStatus,
    MediaGoneError,
    MediaUnavailableError,
    NoServerAckError,
    NotConnectedError,
    NotFoundOnWhatsAppError,
    SessionListener,
    TransportControlError,
    TransportLeaks,
    WhatsAppRefusedError,
)
from domain.addresses import GROUP_SERVER
from domain.addresses import phone_of as phone_from_jid
from domain.chat_actions import ChatPresenceState, ContactInfo, GroupInfo, GroupParticipant
from domain.inbox import IncomingMessage
from domain.media import MediaDescriptor, MediaKind, MediaRef, media_id
from domain.proxy import masked_proxy
from domain.receipts import MessageReceipt, MessageStatus
from domain.session import HoldOutcome, HoldOutcomeKind, SendResult
from domain.settings import Settings

log = logging.getLogger("waorch.neonize")

STOP_TIMEOUT_S = 20.0
# An incoming message waits this long, in its Go callback, for the spool to confirm it durable (the spool
# journals to disk within seconds when PostgreSQL is down; longer only when it is full: backpressure).
HAND_OVER_TIMEOUT_S = 120.0
_MAP_WRITE_MARGIN_S = 0.005  # after the last store query Go only builds the client and writes the map
# Chats that are not conversations with a customer: never handed to the inbox (no reply goes there).
IGNORED_CHAT_SERVERS = frozenset({"broadcast", "newsletter"})


def outcome_for_event(ev: Any) -> HoldOutcome | None:
    """The session outcome a whatsmeow event stands for, or None if it is not terminal."""
    from neonize.events import (
        ClientOutdatedEv,
        ConnectFailureEv,
        DisconnectedEv,
        LoggedOutEv,
        StreamErrorEv,
        StreamReplacedEv,
        TemporaryBanEv,
    )

    if isinstance(ev, StreamReplacedEv):
        return HoldOutcome(HoldOutcomeKind.REPLACED, "stream replaced (440)")
    if isinstance(ev, LoggedOutEv):
        when = " on connect" if getattr(ev, "OnConnect", False) else ""
        return HoldOutcome(HoldOutcomeKind.LOGGED_OUT, f"logged out{when} (reason {getattr(ev, 'Reason', '?')})")
    if isinstance(ev, TemporaryBanEv):
        expire = float(getattr(ev, "Expire", 0) or 0)
        return HoldOutcome(HoldOutcomeKind.TEMP_BANNED, f"temporary ban code {getattr(ev, 'Code', '?')}",
                           ban_expires_s=expire or None)
    if isinstance(ev, ConnectFailureEv):
        return HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"connect failure (reason {getattr(ev, 'Reason', '?')})")
    if isinstance(ev, ClientOutdatedEv):
        return HoldOutcome(HoldOutcomeKind.CLIENT_OUTDATED, "client outdated (405): update neonize")
    if isinstance(ev, StreamErrorEv):
        return HoldOutcome(HoldOutcomeKind.DROPPED, f"stream error {getattr(ev, 'Code', '')}".strip())
    if isinstance(ev, DisconnectedEv):
        return HoldOutcome(HoldOutcomeKind.DROPPED, "disconnected")
    return None


# What each item of whatsmeow's QR channel means when neonize hands it to __onLoginStatus.
LOGIN_STATUS_OUTCOMES: dict[str, HoldOutcome] = {
    "timeout": HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "QR not scanned in time"),
    "error": HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "pairing failed"),
    "err-client-outdated": HoldOutcome(HoldOutcomeKind.CLIENT_OUTDATED, "client outdated (405): update neonize"),
    "err-unexpected-state": HoldOutcome(HoldOutcomeKind.DIAL_FAILED, "connect failure before pairing"),
    "err-scanned-without-multidevice": HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT,
                                                   "scanned by a phone without multi-device"),
}


def parse_jid(text: str) -> Any:
    """``user[:device]@server`` → neonize JID."""
    from neonize.utils.jid import JID

    user, _, server = text.partition("@")
    user, _, device = user.partition(":")
    return JID(User=user, Device=int(device or 0), Server=server or "s.whatsapp.net", RawAgent=0,
               Integrator=0, IsEmpty=False)


def jid_text(jid: Any) -> str:
    """JID → ``user[:device]@server`` (whatsmeow's ``String()``)."""
    device = f":{jid.Device}" if getattr(jid, "Device", 0) else ""
    return f"{jid.User}{device}@{jid.Server}"


def non_ad(jid: Any) -> str:
    """whatsmeow's ``ToNonAD()``: the JID without its device part."""
    return f"{jid.User}@{jid.Server}"


class GoCalls:
    """The process-wide gate for calls into the Go library (its per-client maps are unlocked).

    Exclusive: a client's start (until Go has written its maps) and ``stop()``
    (which deletes them). Shared: every other call, for the instant of its map
    read — the call itself may go on (a send's network round trip, a
    ``Disconnect`` that waits for a dial) without holding the gate.
    """

    READ_GRACE_S = 0.05  # the map read is the first statement of every exported Go function

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:
            self._cond, self._loop, self._readers, self._writer = asyncio.Condition(), loop, 0, False
            self._writers_waiting = 0
        return self._cond

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        cond = self._condition()
        async with cond:
            self._writers_waiting += 1
            try:
                await cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with cond:
                self._writer = False
                cond.notify_all()

    async def call(self, fn: Callable[..., Any], *args: Any, timeout: float = STOP_TIMEOUT_S) -> Any:
        """Run a Go call that reads the maps; the gate is shared for its first ``READ_GRACE_S``."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._writer)
            self._readers += 1
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            await asyncio.wait({task}, timeout=self.READ_GRACE_S)
        finally:
            async with cond:
                self._readers -= 1
                cond.notify_all()
        return await asyncio.wait_for(task, timeout)

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Shared for the whole block: for neonize calls whose Go calls come after Python work (a media
        send builds its thumbnail first, then uploads, then sends). A start or stop waits for the block
        to end; a new block waits for a start or stop already waiting, so none of them starves."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
            self._readers += 1
        try:
            yield
        finally:
            async with cond:
                self._readers -= 1
                cond.notify_all()

    async def write(self, fn: Callable[..., Any], *args: Any, timeout: float = STOP_TIMEOUT_S) -> Any:
        async with self.exclusive():
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)


GO_CALLS = GoCalls()
_UUIDS = itertools.count(1)


@dataclass
class NeonizeTuning:
    qr_first_timeout_s: float = 60.0
    qr_total_timeout_s: float = 160.0
    start_settle_s: float = 0.1
    stop_timeout_s: float = 75.0
    paired_connect_timeout_s: float = 60.0
    keepalive_grace_s: float = 200.0
    leak_grace_s: float = 2.0  # a stopped client's thread still alive this long after is counted as leaked
    media_timeout_s: float = 120.0  # one media send (thumbnail, upload, send) or download
    # A send is awaited this long: past the connector's server-ack deadline (ACK_TIMEOUT_S), so the
    # deadline, not this wait, decides that a connection no longer delivers.
    send_timeout_s: float = 60.0 + STOP_TIMEOUT_S

    @classmethod
    def from_settings(cls, s: Settings | None) -> NeonizeTuning:
        if s is None:
            return cls()
        tuning = cls(s.qr_first_timeout_s, s.qr_total_timeout_s, s.neonize_start_settle_s, s.neonize_stop_timeout_s,
                     s.neonize_paired_connect_timeout_s, s.neonize_keepalive_grace_s,
                     send_timeout_s=s.ack_timeout_s + STOP_TIMEOUT_S)
        tuning.media_timeout_s = s.media_send_timeout_s
        return tuning


class _Client:
    """One company's client, its thread and the one way its attempt ends."""

    def __init__(self, company_id: str, client: Any, listener: SessionListener,
                 loop: asyncio.AbstractEventLoop, pairing_phone: str | None, device: str | None,
                 proxy: str | None = None) -> None:
        self.company_id = company_id
        self.proxy = proxy  # the company's proxy URL this client dials through (a secret)
        self.client = client
        self.listener = listener
        self.loop = loop
        self.pairing_phone = pairing_phone
        self.device = device  # the stored device this client resumes, or the one it just paired
        self.outcome: asyncio.Future[HoldOutcome] = loop.create_future()
        self.thread: threading.Thread | None = None
        self.first_sign = threading.Event()
        self.connected = False
        self.paired = False
        self.jid: str | None = None
        self.qr_sequence = 0
        self.ending: HoldOutcome | None = None
        self.dead = asyncio.Event()
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Future[Any]] = set()

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a Go thread: run ``fn`` on the event loop (never call into Go from a Go callback)."""
        self.first_sign.set()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
            self.loop.call_soon_threadsafe(fn, *args)

    def hand_over(self, msg: IncomingMessage) -> None:
        """From a Go thread: give an incoming message to the listener and return only once it is durable.

        whatsmeow has acknowledged it to WhatsApp already (neonize exposes no ``SynchronousAck``), so
        the connector's spool is its only copy: this Go callback waits for the spool's commit. That
        also keeps one client's messages in order, and holds whatsmeow back while the spool is full.
        """
        self.first_sign.set()
        try:
            done = asyncio.run_coroutine_threadsafe(self.listener.message(msg), self.loop)
        except RuntimeError:  # the loop is closed: the process is ending
            log.error("incoming message not kept: connector ending company_id=%s message_id=%s",
                      self.company_id, msg.message_id)
            return
        try:
            done.result(timeout=HAND_OVER_TIMEOUT_S)
        except Exception as exc:
            log.error("incoming message not confirmed durable company_id=%s message_id=%s error=%r",
                      self.company_id, msg.message_id, exc)

    def spawn(self, coro: Any, what: str) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("listener call failed company_id=%s call=%s error=%r", self.company_id, what,
                            t.exception())

        task.add_done_callback(done)

    def arm(self, name: str, delay_s: float, fn: Callable[[], None]) -> None:
        self.disarm(name)
        self.timers[name] = self.loop.call_later(delay_s, fn)

    def disarm(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()


class NeonizeTransport:
    name = "neonize"

    def __init__(self, dsn: str, devices: DeviceDirectory, *, settings: Settings | None = None,
                 proxy: str | None = None, client_factory: Callable[..., Any] | None = None,
                 connector_id: str | None = None) -> None:
        self._base_dsn = dsn
        self._app_name = store_application_name(connector_id or (settings.connector_id if settings else None))
        self._dsn = neonize_dsn(dsn, application_name=self._app_name)
        self._devices = devices
        self._proxy = proxy
        self._factory = client_factory
        self.tuning = NeonizeTuning.from_settings(settings)
        self.store_connection_cap = settings.neonize_store_max_connections if settings else None
        self._clients: dict[str, _Client] = {}
        self._ending: dict[str, _Client] = {}  # device jid → a client of it that is not dead yet
        self._zombies: list[_Client] = []  # stopped in Go, but neonize's thread never returned
        self.dials: dict[str, int] = {}
        self.clients_started = 0
        self.on_resources: Callable[[], Awaitable[None]] | None = None  # the connector's ResourceWatch
        self.recent = RecentMessages()  # incoming messages a reply may quote

    @property
    def store_dsn(self) -> str:
        return self._dsn

    def _new_client(self, company_id: str, jid: str | None) -> Any:
        factory = self._factory
        if factory is None:
            from neonize.client import NewClient

            factory = NewClient
        seq = next(_UUIDS)
        # Each client's store connection carries its own name: pg_stat_activity then shows when Go has
        # loaded the device (the last store query before it writes its client map), and counts them.
        dsn = neonize_dsn(self._base_dsn, application_name=client_application_name(self._app_name, seq))
        client = factory(dsn, jid=parse_jid(jid)) if jid else factory(dsn, new_device=True)
        # neonize would stop "whichever client has this uuid" from a finalizer at some later GC,
        # and with jid= the uuid is the phone number, shared by every client of the company.
        client._stop_finalizer.detach()
        client.uuid = f"{company_id}-{seq}".encode()
        return client

    # ------------------------------------------------------------------ protocol

    async def start(
        self, company_id: str, *, jid: str | None, pairing_phone: str | None, listener: SessionListener
    ) -> asyncio.Future[HoldOutcome]:
        if company_id in self._clients:
            await self.stop(company_id)
        if jid is not None and jid in self._ending:
            # The device's previous client has not finished dying: a second socket would be a 440.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ending[jid].dead.wait(), self.tuning.stop_timeout_s)
        loop = asyncio.get_running_loop()
        proxy = await self._devices.proxy_of(company_id) or self._proxy  # as stored now (issue 11.7)
        if self.store_connection_cap is not None:
            held = await self.store_connections()
            if held is not None and held >= self.store_connection_cap:
                # Every connect() leaves one store connection open for good: past the cap no new
                # client starts here (the connector drains and restarts; the session backs off).
                refused: asyncio.Future[HoldOutcome] = loop.create_future()
                refused.set_result(HoldOutcome(HoldOutcomeKind.DIAL_FAILED,
                                               f"store connection cap reached ({held}): connector draining"))
                if self.on_resources is not None:
                    await self.on_resources()
                return refused
        client = self._new_client(company_id, jid)
        entry = _Client(company_id, client, listener, loop, pairing_phone, jid, proxy)
        self._register(entry)
        self._clients[company_id] = entry
        self.dials[company_id] = self.dials.get(company_id, 0) + 1
        self.clients_started += 1
        thread = threading.Thread(target=self._run, args=(entry,), name=f"wa-{company_id}", daemon=True)
        entry.thread = thread
        if jid is None:
            entry.arm("first_qr", self.tuning.qr_first_timeout_s,
                      lambda: self._end(entry, HoldOutcome(HoldOutcomeKind.DIAL_FAILED,
                                                           "no QR code from WhatsApp in time")))
        async with GO_CALLS.exclusive():
            thread.start()
            # Go writes its maps for this client after its store round trips: hold the gate until then.
            await self._store_loaded(entry, application_name_of(client.name), resumed=jid is not None)
        return entry.outcome

    async def _store_loaded(self, entry: _Client, application_name: str | None, *, resumed: bool) -> None:
        """Wait until Go has loaded the device on the client's new store connection (or gave a sign of life).

        In ``Neonize()`` the last store query before ``clients[uuid] = client`` is ``GetDevice``
        (``… FROM whatsmeow_device``) for a stored device, the schema check (``… FROM
        whatsmeow_version``) for a new one; seen idle in pg_stat_activity, the map write follows
        without I/O. Bounded by ``NEONIZE_START_SETTLE_S``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.start_settle_s
        marker = "whatsmeow_device" if resumed else "whatsmeow_version"
        while loop.time() < deadline and not entry.first_sign.is_set():
            if application_name is not None:
                row = await self._devices.db.fetchrow(
                    "SELECT state, query FROM pg_stat_activity WHERE application_name = $1", application_name)
                if row is not None and row["state"] == "idle" and marker in (row["query"] or ""):
                    await asyncio.sleep(_MAP_WRITE_MARGIN_S)
                    return
            await asyncio.sleep(0.002)
        if not entry.first_sign.is_set():
            log.warning("client start not seen in the store within %.1fs company_id=%s: gate released",
                        self.tuning.start_settle_s, entry.company_id)

    def _run(self, entry: _Client) -> None:
        from neonize.exc import NeonizeError

        try:
            if entry.proxy:
                from neonize._binder import ProxySettings

                log.info("dialling through proxy company_id=%s proxy=%s", entry.company_id, masked_proxy(entry.proxy))
                entry.client.connect(ProxySettings(proxy_address=entry.proxy))
            else:
                entry.client.connect()
        except NeonizeError as exc:
            outcome = HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"dial failed: {exc}"[:300])
        except Exception as exc:  # never let a client thread die silently
            outcome = HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"client error: {type(exc).__name__}: {exc}"[:300])
        else:
            outcome = HoldOutcome(HoldOutcomeKind.STOPPED, "stopped")
        entry.on_loop(self._end, entry, outcome)

    def _register(self, entry: _Client) -> None:
        from neonize.events import (
            ClientOutdatedEv,
            ConnectedEv,
            ConnectFailureEv,
            DisconnectedEv,
            KeepAliveRestoredEv,
            KeepAliveTimeoutEv,
            LoggedOutEv,
            MessageEv,
            PairStatusEv,
            ReceiptEv,
            StreamErrorEv,
            StreamReplacedEv,
            TemporaryBanEv,
        )

        c = entry.client
        # Plain functions, not bound methods: neonize holds bound methods weakly.
        c.event.qr(lambda _c, data: entry.on_loop(self._on_qr, entry, data.decode()))
        c._NewClient__onLoginStatus = lambda _uuid, status: entry.on_loop(
            self._on_login_status, entry, ctypes.string_at(status).decode(errors="replace"))
        c.event(ConnectedEv)(lambda _c, _ev: entry.on_loop(self._on_connected, entry, _c.me))
        c.event(PairStatusEv)(lambda _c, ev: entry.on_loop(self._on_pair_status, entry, ev))
        c.event(KeepAliveTimeoutEv)(lambda _c, ev: entry.on_loop(self._on_keepalive, entry, False))
        c.event(KeepAliveRestoredEv)(lambda _c, ev: entry.on_loop(self._on_keepalive, entry, True))
        for ev_type in (StreamReplacedEv, LoggedOutEv, TemporaryBanEv, ConnectFailureEv, ClientOutdatedEv,
                        StreamErrorEv, DisconnectedEv):
            c.event(ev_type)(lambda _c, ev: entry.on_loop(self._on_terminal, entry, ev))

        def on_message(_client: Any, ev: Any) -> None:
            try:
                msg = incoming_message(entry.company_id, ev)
            except Exception as exc:
                log.warning("unreadable message company_id=%s error=%s: %s", entry.company_id,
                            type(exc).__name__, exc)
                return
            if msg is not None:
                self.recent.remember(entry.company_id, ev)
                entry.hand_over(msg)

        c.event(MessageEv)(on_message)
        c.event(ReceiptEv)(lambda _c, ev: entry.on_loop(self._on_receipt, entry, ev))

    # ------------------------------------------------------------------ events (on the loop)

    def _on_qr(self, entry: _Client, code: str) -> None:
        if entry.ending is not None:
            return
        entry.qr_sequence += 1
        seq = entry.qr_sequence
        timeout = self.tuning.qr_first_timeout_s if seq == 1 else 20.0
        expires = datetime.now(UTC) + timedelta(seconds=timeout)
        entry.spawn(entry.listener.qr(code, seq, expires), "qr")
        if seq == 1:
            entry.disarm("first_qr")
            entry.arm("pairing", self.tuning.qr_total_timeout_s,
                      lambda: self._end(entry, HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, "QR not scanned in time")))
            if entry.pairing_phone:
                entry.spawn(self._request_pair_code(entry), "pairing_code")

    def _on_login_status(self, entry: _Client, status: str) -> None:
        log.info("login status company_id=%s status=%s", entry.company_id, status)
        if status == "success":
            self._paired(entry)
            return
        if entry.paired:
            return
        outcome = LOGIN_STATUS_OUTCOMES.get(status) or HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT,
                                                                   f"pairing ended: {status}")
        if outcome.kind is HoldOutcomeKind.PAIRING_TIMEOUT and entry.qr_sequence == 0:
            outcome = HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"pairing ended before the first QR: {status}")
        self._end(entry, outcome)

    def _paired(self, entry: _Client) -> None:
        """The phone scanned (or entered the code): the device exists now; wait for the 515 restart."""
        if entry.paired:
            return
        entry.paired = True
        entry.disarm("pairing")
        entry.disarm("first_qr")
        entry.arm("paired_connect", self.tuning.paired_connect_timeout_s,
                  lambda: self._end(entry, HoldOutcome(HoldOutcomeKind.DROPPED, "paired, but never connected")))

    def _on_pair_status(self, entry: _Client, ev: Any) -> None:
        from neonize.proto.Neonize_pb2 import PairStatus

        if ev.Status == PairStatus.SUCCESS:
            entry.device = jid_text(ev.ID) if ev.HasField("ID") and ev.ID.User else entry.device
            self._paired(entry)
        else:
            self._end(entry, HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, f"pairing failed: {ev.Error}"[:300]))

    def _on_connected(self, entry: _Client, me: Any) -> None:
        if entry.ending is not None:
            return
        jid = jid_text(me.JID) if me is not None and me.JID.User else (entry.device or "")
        push_name = (getattr(me, "PushName", "") or None) if me is not None else None
        entry.connected = True
        entry.jid = jid or None
        entry.device = entry.device or entry.jid
        for name in ("first_qr", "pairing", "paired_connect", "keepalive"):
            entry.disarm(name)
        entry.spawn(entry.listener.connected(jid, phone_from_jid(jid) if jid else None, push_name), "connected")

    def _on_keepalive(self, entry: _Client, restored: bool) -> None:
        if restored:
            entry.disarm("keepalive")
            return
        if "keepalive" not in entry.timers and entry.ending is None:
            log.warning("keepalive timeout company_id=%s: waiting %.0fs for whatsmeow to recover",
                        entry.company_id, self.tuning.keepalive_grace_s)
            entry.arm("keepalive", self.tuning.keepalive_grace_s,
                      lambda: self._end(entry, HoldOutcome(HoldOutcomeKind.DROPPED, "keepalive failing")))

    def _on_terminal(self, entry: _Client, ev: Any) -> None:
        outcome = outcome_for_event(ev)
        if outcome is not None:
            self._end(entry, outcome)

    async def _request_pair_code(self, entry: _Client) -> None:
        assert entry.pairing_phone
        try:
            code = await self.pair_code(entry.company_id, entry.pairing_phone)
        except Exception as exc:
            log.warning("pairing code failed company_id=%s error=%s", entry.company_id, exc)
            self._end(entry, HoldOutcome(HoldOutcomeKind.PAIRING_TIMEOUT, f"pairing code request failed: {exc}"[:300]))
            return
        await entry.listener.pairing_code(code)

    # ------------------------------------------------------------------ how an attempt ends

    def _end(self, entry: _Client, outcome: HoldOutcome) -> None:
        """The first terminal cause wins; the outcome is given once the client is dead."""
        if entry.ending is not None:
            return
        entry.ending = outcome
        for name in list(entry.timers):
            entry.disarm(name)
        if entry.connected and outcome.kind is HoldOutcomeKind.DROPPED:
            entry.spawn(entry.listener.disconnected(outcome.detail), "disconnected")
        entry.connected = False
        if self._clients.get(entry.company_id) is entry:
            del self._clients[entry.company_id]
        if entry.device:
            self._ending[entry.device] = entry
        elif not entry.outcome.done():
            entry.outcome.set_result(outcome)  # no device, no second socket to fear: the hold ends now
        entry.spawn(self._teardown(entry), "teardown")

    async def _teardown(self, entry: _Client) -> None:
        try:
            # disconnect() sets whatsmeow's expect-disconnect flag (no more auto-reconnect) and
            # waits for a dial in flight; then stop() frees Go's maps, quickly, under the gate.
            await GO_CALLS.call(entry.client.disconnect, timeout=self.tuning.stop_timeout_s)
            await GO_CALLS.write(entry.client.stop, timeout=STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("client did not stop in %.0fs company_id=%s", self.tuning.stop_timeout_s, entry.company_id)
        except Exception as exc:
            log.warning("stop failed company_id=%s error=%s", entry.company_id, type(exc).__name__)
        finally:
            entry.dead.set()
            if entry.device and self._ending.get(entry.device) is entry:
                del self._ending[entry.device]
            if not entry.outcome.done():
                assert entry.ending is not None
                entry.outcome.set_result(entry.ending)
            entry.loop.call_later(self.tuning.leak_grace_s, self._watch_thread, entry)

    def _watch_thread(self, entry: _Client) -> None:
        if entry.thread is not None and entry.thread.is_alive():
            log.warning("client thread did not return company_id=%s: counted as leaked", entry.company_id)
            self._zombies.append(entry)
        if self.on_resources is not None:
            entry.spawn(self.on_resources(), "resources")

    async def stop(self, company_id: str) -> None:
        entry = self._clients.get(company_id)
        if entry is None:
            return
        self._end(entry, HoldOutcome(HoldOutcomeKind.STOPPED, "stopped"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(entry.outcome), self.tuning.stop_timeout_s + STOP_TIMEOUT_S)

    async def logout(self, company_id: str) -> None:
        entry = self._clients.get(company_id)
        if entry is None:
            return
        try:
            await GO_CALLS.call(entry.client.logout)
        except Exception as exc:
            log.warning("logout at WhatsApp failed company_id=%s error=%s", company_id, exc)
        device = entry.device or entry.jid
        if device:  # also when the client never connected: the credentials go either way
            await self._devices.db.execute("DELETE FROM whatsmeow_device WHERE jid = $1", device)
        await self._devices.forget(company_id)
        self._end(entry, HoldOutcome(HoldOutcomeKind.LOGGED_OUT, "logged out by request"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(entry.outcome), self.tuning.stop_timeout_s + STOP_TIMEOUT_S)

    async def pair_code(self, company_id: str, phone: str) -> str:
        entry = self._clients.get(company_id)
        if entry is None:
            raise NotConnectedError(f"company {company_id} has no client on this connector")
        code: str = await GO_CALLS.call(entry.client.PairPhone, phone, True)
        return code

    async def send(self, company_id: str, to: str, text: str, quoted: str | None = None,
                   quoted_sender: str | None = None) -> SendResult:
        entry = self._connected(company_id)
        from neonize.utils.jid import build_jid

        target = parse_jid(to) if "@" in to else build_jid(to)
        message: Any = text
        if quoted:
            quoted_ev = self.recent.quoted(company_id, quoted, chat=non_ad(target),
                                           sender=quoted_sender or non_ad(target))
            message = await GO_CALLS.call(entry.client.build_reply_message, text, quoted_ev)
        return await self._send(entry, target, message)

    # ------------------------------------------------------------------ beyond text (issue 11.3-11.8)

    def _connected(self, company_id: str) -> _Client:
        entry = self._clients.get(company_id)
        if entry is None or not entry.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        return entry

    async def _send(self, entry: _Client, target: Any, message: Any) -> SendResult:
        """``send_message``, which returns once WhatsApp's server acknowledged the message."""
        async with _refusals():
            resp = await GO_CALLS.call(entry.client.send_message, target, message,
                                       timeout=self.tuning.send_timeout_s)
        return SendResult(message_id=str(resp.ID), timestamp=datetime.fromtimestamp(int(resp.Timestamp), UTC))

    # ------------------------------------------------------------------ media (issue #11)

    async def send_media(self, company_id: str, to: str, media: MediaRef, data: bytes) -> SendResult:
        """neonize's ``send_image`` / ``send_video`` / ``send_audio`` (``ptt=True`` for a voice note) /
        ``send_document`` / ``send_sticker`` with the bytes (never a name or URL: neonize would open or
        fetch it itself). They build the thumbnail in Python first and call Go later, so the gate is
        held shared for the whole call, and until Go is done with the client even when it times out."""
        entry = self._clients.get(company_id)
        if entry is None or not entry.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        why = self.media_unavailable().get(media.kind.value)
        if why:
            raise MediaUnavailableError(f"a {media.kind.value} cannot be sent from connector {self._app_name}: {why}")
        from neonize.utils.jid import build_jid

        target = parse_jid(to) if "@" in to else build_jid(to)
        call = functools.partial(send_media_call, entry.client, target, media, data)
        async with GO_CALLS.shared():
            task = asyncio.ensure_future(asyncio.to_thread(call))
            try:
                resp = await asyncio.wait_for(asyncio.shield(task), self.tuning.media_timeout_s)
            except BaseException:
                await asyncio.wait({task}, timeout=self.tuning.stop_timeout_s)  # Go may still use the client
                raise
        return SendResult(message_id=str(resp.ID), timestamp=datetime.fromtimestamp(int(resp.Timestamp), UTC))

    async def download_media(self, company_id: str, source: str) -> bytes:
        """neonize's ``download_any`` on the media message the descriptor's source keeps."""
        entry = self._clients.get(company_id)
        if entry is None or not entry.connected:
            raise NotConnectedError(f"company {company_id} is not connected on this connector")
        from neonize.exc import DownloadError
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        message = Message.FromString(base64.b64decode(source))
        try:
            data = await GO_CALLS.call(entry.client.download_any, message, timeout=self.tuning.media_timeout_s)
        except DownloadError as exc:
            if any(code in str(exc) for code in ("404", "410")):  # whatsmeow: "download failed with status code 410"
                raise MediaGoneError(str(exc)) from None
            raise
        return bytes(data)

    def media_unavailable(self) -> dict[str, str]:
        return unavailable_media_kinds()

    async def mark_read(self, company_id: str, chat: str, sender: str, message_ids: list[str]) -> None:
        from neonize.utils.enum import ReceiptType

        entry = self._connected(company_id)
        call = functools.partial(entry.client.mark_read, *message_ids, chat=parse_jid(chat),
                                 sender=parse_jid(sender), receipt=ReceiptType.READ)
        async with _refusals():
            await GO_CALLS.call(call)

    async def send_presence(self, company_id: str, chat: str, state: ChatPresenceState) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        entry = self._connected(company_id)
        presence = ChatPresence.CHAT_PRESENCE_PAUSED if state is ChatPresenceState.PAUSED \
            else ChatPresence.CHAT_PRESENCE_COMPOSING
        media = ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO if state is ChatPresenceState.RECORDING \
            else ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
        async with _refusals():
            await GO_CALLS.call(entry.client.send_chat_presence, parse_jid(chat), presence, media)

    async def send_reaction(self, company_id: str, chat: str, message_id: str, emoji: str,
                            sender: str | None) -> SendResult:
        entry = self._connected(company_id)
        chat_jid = parse_jid(chat)
        # whatsmeow's BuildMessageKey: a sender that is this number makes the key "from me".
        author = parse_jid(sender or entry.jid or entry.device or "")
        async with _refusals():
            message = await GO_CALLS.call(entry.client.build_reaction, chat_jid, author, message_id, emoji)
        return await self._send(entry, chat_jid, message)

    async def check_contact(self, company_id: str, phone: str) -> ContactInfo:
        entry = self._connected(company_id)
        async with _refusals():
            answers = await GO_CALLS.call(entry.client.is_on_whatsapp, f"+{phone}")
        answer = next(iter(answers), None)
        if answer is None or not answer.IsIn:
            return ContactInfo(phone, False)
        business = answer.VerifiedName.Details.verifiedName if answer.HasField("VerifiedName") else ""
        # The store's LID map (whatsmeow fills it from what WhatsApp tells, usync answers included). Read
        # here rather than through get_lid_from_pn: no call into Go for a row of our own database.
        lid = await self._devices.db.fetchval("SELECT lid FROM whatsmeow_lid_map WHERE pn = $1", answer.JID.User)
        return ContactInfo(phone, True, non_ad(answer.JID), f"{lid}@lid" if lid else None, business or None)

    async def group_info(self, company_id: str, group: str) -> GroupInfo:
        entry = self._connected(company_id)
        async with _refusals():
            info = await GO_CALLS.call(entry.client.get_group_info, parse_jid(group))

        def jid_or_none(jid: Any) -> str | None:
            return non_ad(jid) if jid.User else None

        return GroupInfo(
            jid=non_ad(info.JID) if info.JID.User else group, subject=info.GroupName.Name,
            owner=jid_or_none(info.OwnerPN) or jid_or_none(info.OwnerJID), topic=info.GroupTopic.Topic or None,
            created_at=int(info.GroupCreated) or None,
            participants=[GroupParticipant(
                jid=non_ad(p.JID), phone=phone_from_jid(non_ad(p.PhoneNumber)) if p.PhoneNumber.User else
                phone_from_jid(non_ad(p.JID)), lid=jid_or_none(p.LID), is_admin=bool(p.IsAdmin),
                is_super_admin=bool(p.IsSuperAdmin), display_name=p.DisplayName or None) for p in info.Participants],
        )

    def _on_receipt(self, entry: _Client, ev: Any) -> None:
        receipt = receipt_of(entry.company_id, ev)
        if receipt is not None:
            entry.spawn(entry.listener.receipt(receipt), "receipt")

    def status(self, company_id: str) -> LinkStatus | None:
        entry = self._clients.get(company_id)
        return None if entry is None else LinkStatus(company_id, entry.connected, entry.jid)

    async def device_exists(self, jid: str) -> bool:
        return bool(await self._devices.db.fetchval("SELECT EXISTS (SELECT 1 FROM whatsmeow_device WHERE jid = $1)",
                                                    jid))

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(cid) for cid in list(self._clients)), return_exceptions=True)

    @property
    def held(self) -> list[str]:
        return sorted(self._clients)

    # ------------------------------------------------------------------ resources

    async def leaks(self) -> TransportLeaks:
        self._zombies = [z for z in self._zombies if z.thread is not None and z.thread.is_alive()]
        connections = await self.store_connections()
        return TransportLeaks(leaked_threads=len(self._zombies), store_connections=connections,
                              clients_started=self.clients_started)

    async def store_connections(self) -> int | None:
        """PostgreSQL connections the store holds for this connector (counted by their application_name)."""
        if not self._app_name:
            return None
        count: int = await self._devices.db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 OR application_name LIKE $2",
            self._app_name, self._app_name.replace("_", r"\_") + "-c%")
        return count

    # ------------------------------------------------------------------ phone side (the model only)

    async def control(self, company_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        entry = self._clients.get(company_id)
        if entry is None:
            raise TransportControlError(f"company {company_id} is not held by this connector")
        try:
            phone = entry.client.phone
        except AttributeError:
            raise TransportControlError("transport controls need NEONIZE_CLIENT=model") from None
        except ValueError as exc:
            raise TransportControlError(str(exc)) from None
        return await asyncio.to_thread(model_control, phone, entry, action, params)


def model_control(phone: Any, entry: _Client, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """One phone-side action on the model of neonize's client (connector.whatsmeow_model)."""
    from connector.simulator import simulated_phone
    from connector.whatsmeow_model import RUNTIME, ModelControlError

    def opt(name: str) -> str | None:
        value = params.get(name)
        return None if value is None else str(value)

    try:
        match action:
            case "scan" | "pair":
                if action == "pair" and phone._go.pending_code_phone:
                    return {"ok": True, "jid": phone.confirm_code()}
                number = opt("phone") or entry.pairing_phone or simulated_phone(entry.company_id)
                return {"ok": True, "jid": phone.scan(number)}
            case "pair_error":
                phone.pair_error()
            case "disconnect":
                phone.drop()
            case "replace":
                phone.replace()
            case "logout":
                phone.logout()
            case "ban":
                phone.ban(int(float(str(params.get("expires_s", 3600)))))
            case "dial_fail" | "outdated" | "connect_failure":
                step = {"dial_fail": "refuse", "outdated": "outdated",
                        "connect_failure": f"failure:{params.get('reason', 1)}"}[action]
                times = int(str(params.get("times", 1)))
                if times == 0:
                    RUNTIME.server.clear(phone.device)
                RUNTIME.server.plan(phone.device, *[step] * times)
                if params.get("drop", True) and entry.connected:
                    phone.drop()
            case "stream_error":
                phone.stream_error(str(params.get("code", "500")))
            case "keepalive_timeout":
                phone.keepalive_timeout(float(str(params.get("failing_for_s", 0))))
            case "keepalive_restore":
                phone.keepalive_restore()
            case "incoming" if params.get("media_type") is not None:
                data = base64.b64decode(str(params.get("media_base64", "")))
                mid = phone.incoming_media(
                    str(params["media_type"]), data, sender=opt("sender") or "79990000001@s.whatsapp.net",
                    chat=opt("chat"), caption=opt("caption"), filename=opt("filename"), mimetype=opt("mimetype"),
                    message_id=opt("message_id"), failures=int(str(params.get("download_failures", 0))),
                )
                return {"ok": True, "message_id": mid,
                        "media_id": media_id(entry.company_id, "in", mid)}
            case "receipt":
                ids = params.get("message_ids") or [params.get("message_id")]
                chat = opt("chat") or phone.sent_to(str(ids[0])) or "79990000001@s.whatsapp.net"
                phone.receipt([str(i) for i in ids if i], str(params.get("status", "delivered")), chat=chat,
                              participant=opt("participant"))
            case "stop_acks" | "resume_acks":
                phone.stop_acks(action == "stop_acks")
            case "contact":
                phone.contact(str(params.get("phone", "")), on_whatsapp=bool(params.get("on_whatsapp", True)),
                              lid=opt("lid"))
            case "group":
                phone.group(str(params.get("group", "")), str(params.get("subject", "Model group")),
                            [str(m) for m in params.get("participants") or []],
                            [str(a) for a in params.get("admins") or []])
            case "incoming":
                sender = opt("sender") or "79990000001@s.whatsapp.net"
                mid = phone.incoming(
                    str(params.get("text", "hello")), sender=sender, chat=opt("chat"), sender_alt=opt("sender_alt"),
                    message_id=opt("message_id"), quoted=opt("quoted"),
                )
                return {"ok": True, "message_id": mid}
            case _:
                raise TransportControlError(f"unknown transport control {action!r}")
    except ModelControlError as exc:
        raise TransportControlError(str(exc)) from None
    return {"ok": True}


def incoming_message(company_id: str, ev: Any) -> IncomingMessage | None:
    """A neonize ``MessageEv`` as the inbox's message; None for chats that are not conversations."""
    info = ev.Info
    src = info.MessageSource
    if src.Chat.Server in IGNORED_CHAT_SERVERS or src.Chat.User == "status":
        return None
    chat = non_ad(src.Chat)
    sender = non_ad(src.Sender)
    sender_phone = phone_from_jid(sender)
    if sender_phone is None and src.HasField("SenderAlt") and src.SenderAlt.User:
        sender_phone = phone_from_jid(non_ad(src.SenderAlt))  # an @lid sender's number
    msg = ev.Message
    text = msg.conversation or (msg.extendedTextMessage.text if msg.HasField("extendedTextMessage") else None)
    media = incoming_media(company_id, str(info.ID), msg)
    if media is not None:
        text = media.caption
    metadata: dict[str, str] = {}
    if msg.HasField("extendedTextMessage") and msg.extendedTextMessage.contextInfo.stanzaID:
        metadata["quoted"] = msg.extendedTextMessage.contextInfo.stanzaID
    return IncomingMessage(
        company_id=company_id,
        message_id=str(info.ID),
        chat=chat,
        sender=sender,
        timestamp=datetime.fromtimestamp(int(info.Timestamp) / 1000, UTC),  # UnixMilli() on the Go side
        text=text,
        sender_phone=sender_phone,
        push_name=str(info.Pushname) or None,
        message_type=media.kind.value if media is not None else (str(info.Type) or "text"),
        from_me=bool(src.IsFromMe),
        metadata=metadata,
        media=media,
    )


# The media fields of a waE2E.Message, and the kind each is (a voice note is an audioMessage with PTT).
MEDIA_FIELDS: dict[str, MediaKind] = {
    "imageMessage": MediaKind.IMAGE, "videoMessage": MediaKind.VIDEO, "ptvMessage": MediaKind.VIDEO,
    "audioMessage": MediaKind.AUDIO, "documentMessage": MediaKind.DOCUMENT, "stickerMessage": MediaKind.STICKER,
}
_NOT_FOR_DOWNLOAD = ("JPEGThumbnail", "pngThumbnail", "contextInfo")


def incoming_media(company_id: str, message_id: str, msg: Any) -> MediaDescriptor | None:
    """The media of an incoming ``waE2E.Message`` as a pending descriptor, or None for other messages.

    Its ``source`` is that message reduced to the one media field without thumbnails and context (what
    ``download_any`` needs: URL, direct path, media key, hashes, length), serialized, in base64.
    """
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    if msg.HasField("documentWithCaptionMessage") and msg.documentWithCaptionMessage.message.HasField(
            "documentMessage"):
        msg = msg.documentWithCaptionMessage.message
    field = next((name for name in MEDIA_FIELDS if msg.HasField(name)), None)
    if field is None:
        return None
    part = getattr(msg, field)
    kind = MEDIA_FIELDS[field]
    if kind is MediaKind.AUDIO and part.PTT:
        kind = MediaKind.VOICE
    reduced = Message()
    getattr(reduced, "videoMessage" if field == "ptvMessage" else field).CopyFrom(part)
    kept = getattr(reduced, "videoMessage" if field == "ptvMessage" else field)
    for name in _NOT_FOR_DOWNLOAD:
        if name in kept.DESCRIPTOR.fields_by_name:
            kept.ClearField(name)
    fields = part.DESCRIPTOR.fields_by_name
    return MediaDescriptor(
        id=media_id(company_id, "in", message_id), kind=kind,
        mimetype=part.mimetype or None, size=int(part.fileLength) or None,
        sha256=bytes(part.fileSHA256).hex() or None,
        caption=(part.caption or None) if "caption" in fields else None,
        filename=(part.fileName or None) if "fileName" in fields else None,
        source=base64.b64encode(reduced.SerializeToString()).decode(),
    )


def send_media_call(client: Any, target: Any, media: MediaRef, data: bytes) -> Any:
    """The neonize call for one media kind (on a thread: it blocks); returns its ``SendResponse``."""
    match media.kind:
        case MediaKind.IMAGE:
            return client.send_image(target, data, caption=media.caption)
        case MediaKind.VIDEO:
            return client.send_video(target, data, caption=media.caption)
        case MediaKind.AUDIO:
            return client.send_audio(target, data, ptt=False)
        case MediaKind.VOICE:
            return client.send_audio(target, data, ptt=True)
        case MediaKind.DOCUMENT:
            return client.send_document(target, data, caption=media.caption, title=media.filename,
                                        filename=media.filename, mimetype=media.mimetype)
        case MediaKind.STICKER:
            return client.send_sticker(target, data)


def receipt_of(company_id: str, ev: Any) -> MessageReceipt | None:
    """A ``ReceiptEv`` about messages this number sent, as a status step; None for the other kinds."""
    from neonize.proto.Neonize_pb2 import Receipt

    status = {Receipt.DELIVERED: MessageStatus.DELIVERED, Receipt.READ: MessageStatus.READ,
              Receipt.PLAYED: MessageStatus.PLAYED}.get(ev.Type)
    src = ev.MessageSource
    if status is None or src.IsFromMe or not ev.MessageIDs:
        return None
    # *Guess*: the encoder's receipt Timestamp is seconds (Unix()); a value in milliseconds is read as such.
    raw = int(ev.Timestamp)
    when = datetime.fromtimestamp(raw / 1000 if raw > 10**11 else raw, UTC) if raw > 0 else datetime.now(UTC)
    group = src.Chat.Server == GROUP_SERVER
    return MessageReceipt(company_id, [str(i) for i in ev.MessageIDs], status, non_ad(src.Chat), when,
                          participant=non_ad(src.Sender) if group and src.Sender.User else None)


class RecentMessages:
    """Incoming messages a reply may quote, as whatsmeow delivered them: a bounded memory across all
    companies (oldest forgotten first). A quote of a message not remembered is built from its id,
    author and chat with an empty text."""

    MAX_MESSAGES = 10_000
    MAX_BYTES = 4096  # a bigger message (a media one with its thumbnail) is remembered by its text only

    def __init__(self) -> None:
        self._lock = threading.Lock()  # Go threads remember, the event loop reads
        self._items: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = OrderedDict()

    def remember(self, company_id: str, ev: Any) -> None:
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        body = ev.Message.SerializeToString()
        if len(body) > self.MAX_BYTES:
            text = ev.Message.conversation or ev.Message.extendedTextMessage.text
            body = Message(conversation=text[: self.MAX_BYTES]).SerializeToString()
        item = (ev.Info.MessageSource.SerializeToString(), body)
        with self._lock:
            self._items[(company_id, str(ev.Info.ID))] = item
            self._items.move_to_end((company_id, str(ev.Info.ID)))
            while len(self._items) > self.MAX_MESSAGES:
                self._items.popitem(last=False)

    def quoted(self, company_id: str, message_id: str, *, chat: str, sender: str) -> Any:
        """The quoted message as neonize's ``build_reply_message`` takes it (a ``MessageEv``)."""
        from neonize.proto import Neonize_pb2 as neonize_proto
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

        with self._lock:
            item = self._items.get((company_id, message_id))
        ev = neonize_proto.Message()
        ev.Info.ID = message_id
        if item is not None:
            ev.Info.MessageSource.ParseFromString(item[0])
            ev.Message.ParseFromString(item[1])
        else:
            ev.Info.MessageSource.Chat.CopyFrom(parse_jid(chat))
            ev.Info.MessageSource.Sender.CopyFrom(parse_jid(sender))
            ev.Message.CopyFrom(Message(conversation=""))
        return ev


@contextlib.asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """neonize's errors of a call as the transport's: not connected, not found, refused, no server ack."""
    from neonize.exc import GetGroupInfoError

    try:
        yield
    except TimeoutError:
        raise
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        low = text.lower()
        if "timed out waiting for message send response" in low:
            raise NoServerAckError(text) from exc
        if "not connected" in low or "not logged in" in low or "websocket disconnected" in low:
            raise NotConnectedError(text) from exc
        if isinstance(exc, GetGroupInfoError) and ("not found" in low or "not participating" in low):
            raise NotFoundOnWhatsAppError(text) from exc
        if type(exc).__module__.startswith("neonize"):
            raise WhatsAppRefusedError(text) from exc
        raise


def store_application_name(connector_id: str | None) -> str | None:
    return f"waorch-store-{connector_id}"[:50] if connector_id else None


def client_application_name(connector_name: str | None, seq: int) -> str | None:
    return f"{connector_name}-c{seq}" if connector_name else None


def application_name_of(dsn: str) -> str | None:
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(dsn).query).get("application_name")
    return values[0] if values else None

