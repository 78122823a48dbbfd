"""A model of neonize 0.5.2's ``NewClient`` and of the Go code under it, for tests and benchmarks.

``NEONIZE_CLIENT=model`` (refused when ``ENVIRONMENT=production``) makes the
connector's real :class:`~connector.neonize_transport.NeonizeTransport` drive
this class instead of neonize's: no fake WhatsApp server is possible
(whatsmeow's websocket address is fixed and its handshake checks WhatsApp's own key), so the transport's
handling of whatsmeow's behaviour is proven
against a model of that behaviour. The model emits neonize's own protobuf
event classes (:mod:`neonize.events`) through neonize's own dispatcher
(:class:`neonize.events.Event`, fed addresses the way Go's cgo callbacks feed
it), and keeps its store in the real whatsmeow tables of PostgreSQL.

What it follows, by source (neonize master, ``goneonize/main.go`` and
``goneonize/utils/encoder.go``; whatsmeow ``client.go``, ``qrchan.go``,
``keepalive.go``, ``connectionevents.go``, ``pair.go``, ``pair-code.go``):

* ``NewClient.__init__`` (neonize ``client.py``): ``uuid`` is ``jid.User`` when
  a jid is given (the ``uuid`` argument is then ignored), and a
  ``weakref.finalize`` calls Go ``Stop(uuid)`` when the object is collected —
  stopping whichever client owns that uuid by then.
* ``Neonize()`` (main.go): writes ``StopSignal[uuid]``, opens a store container
  (one PostgreSQL connection, never closed: here a real connection), writes
  ``eventChannel[uuid]``, loads the device (``GetDevice`` for a jid missing from
  the store gives a nil device: a nil-pointer abort), writes ``clients[uuid]``.
  A new device takes ``GetQRChannel`` + ``Connect``; it hands every ``code`` item
  to the QR callback and every other item (``success``, ``timeout``,
  ``error``, ``err-…``) to the private ``__onLoginStatus`` hook, then calls
  ``FetchMe``, which loops ``for cli.ID == nil { sleep }`` without looking at
  the context: after a QR channel that ended without pairing, that thread never
  returns. ``CallbackFunction`` then delivers the ``Device`` event (code 0, which
  sets ``client.me``) and every queued event (a channel of 100) until ``Stop``.
* ``Stop(id)``: reads ``clients[id]``, ``Disconnect()`` (blocks while a dial holds
  the socket lock), then deletes the three map entries. ``GetMe`` dereferences
  ``clients[id].Store``: after ``Stop`` a nil-pointer abort.
* Go's maps are unlocked: a read that meets a write aborts the process
  ("concurrent map read and map write"). The model treats the whole span from
  ``Neonize()``'s first write to its last, and ``Stop``'s deletes, as a write
  window, and any other call that enters one is fatal. *Guess:* Go faults only
  when a read meets one of the writes themselves; the model widens that to the
  span so that a race shows up in every run instead of in some.
* whatsmeow ``onDisconnect``/``autoReconnect``: a socket the server or the
  network closes, unless a disconnect was expected, emits ``Disconnected`` and
  reconnects by itself after 0 s, 2 s, 4 s … (``AutoReconnectErrors × 2 s``);
  ``Disconnect()`` sets the expect-disconnect flag, which cancels that loop.
* ``keepAliveLoop``: a failed keepalive emits ``KeepAliveTimeout`` (error count,
  last success) and the socket stays; a later success emits
  ``KeepAliveRestored``; failing for more than 3 minutes forces a reconnect.
* ``qrchan.go``: six codes, the first for 60 s and the rest for 20 s, then
  ``timeout`` and a disconnect; ``ClientOutdated`` → ``err-client-outdated``,
  ``PairSuccess`` → ``success``, ``PairError`` → ``error``, ``Disconnected`` →
  ``timeout``, ``Connected``/``ConnectFailure``/``LoggedOut``/``TemporaryBan`` →
  ``err-unexpected-state``. A ``Disconnect()`` while codes are showing stops the
  emitter without closing the channel, so ``Neonize()`` waits on it for good.
* ``pair.go``: pairing saves the device, expects a disconnect and emits
  ``PairSuccess``; the server then sends stream error 515 and whatsmeow
  reconnects (``connectionevents.go``), after which ``Connected`` comes.
* ``handleConnectFailure``: logged out (device rows deleted, ``LoggedOut`` with
  ``OnConnect``), temporary ban (``TemporaryBan`` with ``Expire`` seconds),
  client outdated (405) and other failures end the socket with no reconnect;
  ``handleStreamError``: ``conflict type=replaced`` → ``StreamReplaced``,
  ``401 device_removed`` → ``LoggedOut`` and the device deleted.
* ``encoder.go``: ``MessageInfo.Timestamp`` is ``UnixMilli()``,
  ``SendResponse.Timestamp`` is ``Unix()`` (seconds); ``MessageSource`` carries
  ``SenderAlt``/``RecipientAlt`` and the addressing mode.

Media (issue #11): ``send_image``, ``send_video``, ``send_audio`` (``ptt=True``), ``send_document``,
``send_sticker`` and their ``build_*`` builders are neonize's own functions (Pillow thumbnails, ffprobe
lengths, sticker conversion with ffmpeg, libmagic types); under them ``upload`` (Go ``Upload``) keeps
the bytes on the model's media servers (:class:`ModelServer` ``.media``) and answers neonize's
``UploadResponse``, and ``send_message`` records what the recipient's phone gets (transport_outbox.media).
:meth:`PhoneSide.incoming_media` sends ImageMessage, VideoMessage, AudioMessage (PTT for a voice note),
DocumentMessage or StickerMessage in a ``MessageEv``; ``download_any`` (Go ``DownloadAny``) fetches it
back, failing as whatsmeow names it ("download failed with status code 503/410/404", "invalid media
SHA256 hash"). *Guesses*: the upload's direct path and encrypted hash (nothing here encrypts), the
mimetype a sending phone sets, ``MessageInfo.Type``/``MediaType`` of media messages, the thumbnail.

Beyond text (issue 11.3-11.8), from whatsmeow ``send.go``, ``receipt.go``, ``presence.go``,
``user.go``, ``group.go`` and neonize's ``client.py``:

* ``SendMessage`` returns only once the server acknowledged the message node (the response's id
  and timestamp); it gives up with "timed out waiting for message send response" after the request
  timeout (``timing.send_timeout_s``; *guess*: 75 s, whatsmeow's default request timeout), and a
  socket closed while it waits fails it at once (*guess*: "websocket disconnected before message send
  returned response"). The server can stop acknowledging (:meth:`PhoneSide.stop_acks`, kept by
  :class:`ModelServer` per device, so it outlives reconnects): "connected but dead".
* Receipts come as ``ReceiptEv`` (neonize event code 18) with the message ids, the chat and, in a
  group, the member as ``Sender``; types ``DELIVERED``, ``READ``, ``PLAYED``. *Guess*: the encoder's
  receipt ``Timestamp`` is ``Unix()`` seconds, as ``SendResponse``'s.
* ``build_reply_message`` (and its helpers ``_make_quoted_message``, ``_parse_mention``,
  ``_parse_group_mention``) are neonize's own Python code, run here unchanged; ``build_reaction``
  follows whatsmeow's ``BuildReaction`` / ``BuildMessageKey`` (``fromMe`` when the sender is this
  number; ``participant`` only in a group); a reaction is then sent like any message.
* ``mark_read``, ``send_chat_presence``, ``is_on_whatsapp`` and ``get_group_info`` need a live socket
  ("websocket not connected" otherwise); ``mark_read`` with no id fails ("no message IDs specified").
  ``is_on_whatsapp`` answers every number as registered unless :meth:`PhoneSide.contact` said
  otherwise; a LID the server tells is stored in ``whatsmeow_lid_map`` as whatsmeow does after a
  usync query. ``get_group_info`` of a group the server does not know fails with whatsmeow's
  ``ErrGroupNotFound`` ("group not found"); one without this number with ``ErrNotInGroup``.
* ``connect(proxy_settings)`` keeps the ``ProxySettings`` it was given (``NewClient.proxy_address``):
  no network is dialled either way, so the proxy changes nothing else.
* Read marks, presence and reactions are recorded in ``transport_actions``, like texts in
  ``transport_outbox``; every message object sent is kept in :attr:`ModelServer.sent` (this process).

*Guesses* beyond the sources: dial and handshake take ``timing.dial_s``; the
515 restart comes ``timing.restart_515_s`` after pairing; a stalled dial gives
up after ``timing.dial_timeout_s`` (whatsmeow's own depends on the network);
pairing codes are derived from the phone number; device numbers count from 1.
The timings are knobs so that tests run in seconds.

The "phone side" (scan, confirm a pairing code, drop, 440, logout, ban,
outdated, connect failure, keepalive timeout/restore, incoming messages) is
:class:`PhoneSide`, reached through :meth:`NewClient.phone` (the transport's
``control``) or :data:`RUNTIME` ``.server`` for the next dials of a device.

Invariant: never two live sockets for one device, checked across processes
through :mod:`connector.live_sockets`; every breach (and every call that would
abort Go) is recorded there and fails the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
import uuid as uuidlib
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from neonize.client import NewClient as NeonizeClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    Event,
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
from neonize.exc import (
    DownloadError,
    GetGroupInfoError,
    IsOnWhatsAppError,
    LogoutError,
    MarkReadError,
    NeonizeError,
    PairPhoneError,
    SendMessageError,
    SendPresenceError,
    UploadError,
)
from neonize.proto import Neonize_pb2 as neonize_proto
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as E2EMessage
from neonize.utils.jid import JID

from connector.live_sockets import LiveSockets

log = logging.getLogger("waorch.model")

EVENT_CODES: dict[type[Any], int] = {
    neonize_proto.Device: 0, PairStatusEv: 2, ConnectedEv: 3, KeepAliveTimeoutEv: 4, KeepAliveRestoredEv: 5,
    LoggedOutEv: 6, StreamReplacedEv: 7, TemporaryBanEv: 8, ConnectFailureEv: 9, ClientOutdatedEv: 10,
    StreamErrorEv: 11, DisconnectedEv: 12, MessageEv: 17, ReceiptEv: 18,
}  # neonize.events.EVENT_TO_INT
EVENT_CHANNEL_SIZE = 100  # main.go: make(chan *MessageEvent, 100)


class GoFatalError(RuntimeError):
    """What would abort the whole process in Go (nil pointer, concurrent map access)."""


@dataclass
class ModelTiming:
    dial_s: float = 0.005
    dial_timeout_s: float = 15.0
    qr_first_s: float = 60.0  # qrchan.go: the first of six codes
    qr_next_s: float = 20.0
    qr_codes: int = 6
    restart_515_s: float = 0.05
    reconnect_step_s: float = 2.0  # client.go autoReconnect: AutoReconnectErrors × 2 s
    first_reconnect_s: float = 0.0  # client.go: the first retry comes after 0 × 2 s
    keepalive_max_fail_s: float = 180.0  # keepalive.go KeepAliveMaxFailTime
    map_write_s: float = 0.01  # the store round trips inside Neonize()'s write span
    callback_delay_s: float = 0.0  # between CallbackFunction taking an event and Python running it
    send_timeout_s: float = 75.0  # SendMessage gives up waiting for the server's ack (guess: request timeout)

    def follow_settings(self, settings: Any) -> None:
        """A connector process on the model: QR rotation as configured (whatsmeow's is 60 s, then 20 s)."""
        self.qr_first_s = settings.qr_first_timeout_s
        self.qr_next_s = settings.qr_next_timeout_s
        rest = max(settings.qr_total_timeout_s - settings.qr_first_timeout_s, 0.0)
        self.qr_codes = 1 + math.ceil(rest / settings.qr_next_timeout_s)


@dataclass
class ServerPlan:
    """What the server (or the network) does to the next dials of one device (or of new devices)."""

    steps: deque[str] = field(default_factory=deque)


class ModelServer:
    """WhatsApp's side, per process: fault plans for the next dials, dial counts, stalls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, deque[str]] = defaultdict(deque)
        self.dials: dict[str, int] = defaultdict(int)  # per device jid, or "new" for fresh pairings
        self.stall_released = threading.Event()
        # WhatsApp's media servers: plaintext by direct path, and what the next downloads of one meet
        # ("fail": HTTP 503, "gone": HTTP 410), one step per download.
        self.media: dict[str, bytes] = {}
        self.media_plans: dict[str, deque[str]] = defaultdict(deque)
        # Beyond text: devices whose sends the server takes but does not acknowledge, WhatsApp's
        # directory of numbers (phone → registered, LID) and groups, every message object sent.
        self._silent: set[str] = set()
        self.contacts: dict[str, tuple[bool, str | None]] = {}
        self.groups: dict[str, Any] = {}  # group jid → neonize GroupInfo
        self.sent: list[tuple[str | None, str, E2EMessage]] = []  # (device, to, message)

    def plan(self, device: str | None, *steps: str) -> None:
        """Queue what the next dials of ``device`` (None: of new devices) meet, one step per dial.

        Steps: ``ok``, ``refuse`` (dial error), ``stall`` (the dial hangs until
        :meth:`release_stalls` or the dial timeout), ``logged_out``, ``ban:<seconds>``,
        ``outdated``, ``failure:<reason>``, ``drop`` (socket closed right after the handshake).
        """
        with self._lock:
            self._plans[device or "new"].extend(steps)

    def clear(self, device: str | None) -> None:
        with self._lock:
            self._plans.pop(device or "new", None)

    def next_step(self, device: str | None) -> str:
        key = device or "new"
        with self._lock:
            self.dials[key] += 1
            plan = self._plans.get(key)
            return plan.popleft() if plan else "ok"

    def release_stalls(self) -> None:
        self.stall_released.set()

    def keep_media(self, data: bytes, kind: str) -> tuple[str, bytes]:
        """Store ``data`` as an upload would: (direct path, media key). *Guess*: the path's shape."""
        direct_path = f"/v/t62.{kind}-24/model-{uuidlib.uuid4().hex}"
        with self._lock:
            self.media[direct_path] = data
        return direct_path, os.urandom(32)

    def download_step(self, direct_path: str) -> str:
        with self._lock:
            plan = self.media_plans.get(direct_path)
            if plan and plan[0] == "gone":
                return "gone"
            return plan.popleft() if plan else ("ok" if direct_path in self.media else "missing")

    def stop_acks(self, device: str | None, stop: bool = True) -> None:
        with self._lock:
            (self._silent.add if stop else self._silent.discard)(device or "new")

    def acks_stopped(self, device: str | None) -> bool:
        with self._lock:
            return (device or "new") in self._silent


class GoRuntime:
    """The loaded Go library of one process: its global maps, its fatal errors, its server."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._writers: dict[int, str] = {}
        self.clients: dict[bytes, GoClient] = {}
        self.stop_signal: dict[bytes, threading.Event] = {}
        self.event_channel: dict[bytes, queue.Queue[tuple[int, bytes] | None]] = {}
        self.timing = ModelTiming()
        self.server = ModelServer()
        self.exiting = threading.Event()  # set by unload(): the process is gone
        self._registries: dict[str, LiveSockets] = {}
        self.containers_opened = 0
        self.fatal_errors: list[str] = []

    # -- Go's unlocked maps
    def read(self, uuid: bytes, what: str, dsn: str | None = None) -> GoClient | None:
        with self._guard:
            if self._writers:
                writer = next(iter(self._writers.values()))
                self._fatal_locked(f"concurrent map read and map write: {what} while {writer}", dsn)
            return self.clients.get(uuid)

    @contextlib.contextmanager
    def write(self, what: str, dsn: str | None = None) -> Iterator[None]:
        token = id(threading.current_thread()) ^ time.monotonic_ns()
        with self._guard:
            if self._writers:
                writer = next(iter(self._writers.values()))
                self._fatal_locked(f"concurrent map writes: {what} while {writer}", dsn)
            self._writers[token] = what
        try:
            yield
        finally:
            with self._guard:
                self._writers.pop(token, None)

    def _fatal_locked(self, detail: str, dsn: str | None) -> None:
        self.fatal_errors.append(detail)
        threading.Thread(target=self.record_breach, args=("go_fatal", detail, dsn), daemon=True).start()
        raise GoFatalError(detail)

    def fatal(self, detail: str, dsn: str | None) -> GoFatalError:
        self.fatal_errors.append(detail)
        self.record_breach("go_fatal", detail, dsn)
        return GoFatalError(detail)

    def registry(self, dsn: str) -> LiveSockets:
        with self._guard:
            reg = self._registries.get(dsn)
            if reg is None:
                reg = self._registries[dsn] = LiveSockets(dsn)
            return reg

    def record_breach(self, kind: str, detail: str, dsn: str | None, device: str | None = None) -> None:
        if dsn is None:
            log.error("transport invariant breached kind=%s detail=%s", kind, detail)
            return
        self.registry(dsn).breach(kind, detail, device=device)

    # -- Go's exported Stop (also what neonize's finalizer calls)
    def stop(self, uuid: bytes, dsn: str | None = None) -> None:
        client = self.read(uuid, "Stop", dsn)
        if client is not None:
            client.disconnect()
        with self.write("Stop", dsn):
            time.sleep(self.timing.map_write_s)
            self.clients.pop(uuid, None)
            cancel = self.stop_signal.pop(uuid, None)
            if cancel is not None:
                cancel.set()
            self.event_channel.pop(uuid, None)

    def unload(self) -> None:
        """The process ends: every thread of the library returns, every container closes (tests' teardown)."""
        self.exiting.set()
        for cancel in list(self.stop_signal.values()):
            cancel.set()
        for reg in list(self._registries.values()):
            reg.close_connection()

    def reset(self) -> None:
        """A fresh library for the next test in this process (after :meth:`unload`)."""
        self.unload()
        self.clients.clear()
        self.stop_signal.clear()
        self.event_channel.clear()
        self._registries.clear()
        self.timing = ModelTiming()
        self.server = ModelServer()
        self.exiting = threading.Event()
        self.fatal_errors = []


RUNTIME = GoRuntime()


def _jid_proto(text: str) -> JID:
    user, _, server = text.partition("@")
    user, _, device = user.partition(":")
    return JID(User=user, Device=int(device or 0), Server=server or "s.whatsapp.net", RawAgent=0, Integrator=0,
               IsEmpty=False)


def _empty_jid() -> JID:
    return JID(User="", Device=0, Server="", RawAgent=0, Integrator=0, IsEmpty=True)  # EncodeJidProto(EmptyJID)


def _device(jid: str, push_name: str) -> Any:
    return neonize_proto.Device(JID=_jid_proto(jid), Platform="", BussinessName="", PushName=push_name,
                                Initialized=True)


def _pair_status(jid: str | None, error: str | None) -> Any:
    """encoder.go EncodePairSuccess / EncodePairError."""
    ev = PairStatusEv(ID=_jid_proto(jid) if jid else _empty_jid(), BusinessName="", Platform="",
                      Status=neonize_proto.PairStatus.ERROR if error else neonize_proto.PairStatus.SUCCESS)
    if error:
        ev.Error = error
    return ev


def _jid_text(jid: JID) -> str:
    device = f":{jid.Device}" if jid.Device else ""
    return f"{jid.User}{device}@{jid.Server}"


class GoSqlDB:
    """The ``*sql.DB`` neonize's ``getDB`` opens for each client's store container (never closed).

    Go's database/sql is a pool: a connection that went bad (the server restarted, the socket closed)
    is discarded when a query meets it, and the next query dials a new one (``database/sql``
    ``putConn``/``driver.ErrBadConn``). The query that met the bad connection fails with the driver's
    error. *Guess*: one connection at a time is enough for what the model runs (the pool would open
    more under concurrent queries); lib/pq's retry of a query that never reached the server is not
    modelled (that query fails too, once).
    """

    def __init__(self, dsn: str, conn: psycopg.Connection) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection | None = conn
        self._lock = threading.Lock()

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                conn = self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        try:
            return conn.execute(query, params)
        except psycopg.OperationalError:
            if conn.closed or conn.broken:
                with self._lock:
                    if self._conn is conn:
                        self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            raise


class GoClient:
    """whatsmeow's ``Client`` plus neonize's per-uuid Go state, for one ``Neonize()`` call."""

    def __init__(self, uuid: bytes, dsn: str, container: GoSqlDB, device: str | None,
                 push_name: str, qr_cb: Callable[[int, int], None], login_cb: Callable[[int, int], None]) -> None:
        self.uuid = uuid
        self.dsn = dsn
        self.container = container
        self.device = device
        self.push_name = push_name
        self._qr_cb = qr_cb
        self._login_cb = login_cb
        self.socket_lock = threading.Lock()
        self.socket: str | None = None  # the registry's id ("" for a socket with no device yet)
        self.expected_disconnect = threading.Event()
        self.auto_reconnect_errors = 0
        self.logged_in = False
        self.events: queue.Queue[tuple[int, bytes] | None] = queue.Queue(EVENT_CHANNEL_SIZE)
        self.qr_items: queue.Queue[str | None] | None = None
        self._qr_closed = threading.Event()
        self._stop_qrs = threading.Event()
        self.pending_code_phone: str | None = None
        self.keepalive_errors = 0
        self.last_keepalive_success = time.time()
        self.deleted = False
        self.lock = threading.Lock()
        self.socket_generation = 0  # a send waiting for its ack fails when its socket is gone

    # ------------------------------------------------------------------ events
    def dispatch(self, ev: Any) -> None:
        """whatsmeow dispatchEvent → neonize's eventHandler (encode, queue) and the QR channel's handler."""
        self._qr_handle(ev)
        code = EVENT_CODES[type(ev)]
        try:
            self.events.put((code, ev.SerializeToString()), timeout=30)
        except queue.Full:
            log.error("model event channel full uuid=%s", self.uuid.decode())

    # ------------------------------------------------------------------ QR channel (qrchan.go)
    def open_qr_channel(self) -> None:
        self.qr_items = queue.Queue(8)

    def _qr_close(self, item: str | None) -> None:
        if self.qr_items is None or self._qr_closed.is_set():
            return
        self._qr_closed.set()
        if item is not None:
            self.qr_items.put(item)
        self.qr_items.put(None)

    def _qr_handle(self, ev: Any) -> None:
        if self.qr_items is None or self._qr_closed.is_set():
            return
        item: str | None
        if isinstance(ev, ClientOutdatedEv):
            item = "err-client-outdated"
        elif isinstance(ev, PairStatusEv):
            item = "success" if ev.Status == neonize_proto.PairStatus.SUCCESS else "error"
        elif isinstance(ev, DisconnectedEv):
            item = "timeout"
        elif isinstance(ev, ConnectedEv | ConnectFailureEv | LoggedOutEv | TemporaryBanEv):
            item = "err-unexpected-state"
        else:
            return
        self._stop_qrs.set()
        self._qr_close(item)

    def emit_qrs(self) -> None:
        t = RUNTIME.timing
        for n in range(t.qr_codes):
            if self._qr_closed.is_set():
                return
            assert self.qr_items is not None
            self.qr_items.put(f"2@MODEL{uuidlib.uuid4().hex[:24]},{self.uuid.decode()},{n + 1}")
            timeout = t.qr_first_s if n == 0 else t.qr_next_s
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._stop_qrs.is_set() or self.expected_disconnect.is_set() or RUNTIME.exiting.is_set():
                    return  # qrchan.go: stop signal or expected disconnect: the channel stays open
                time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
        if not self._qr_closed.is_set():
            self._qr_close("timeout")
            self.disconnect()

    def qr_loop(self) -> None:
        """Neonize(): ``for evt := range qrChan`` — codes to the QR callback, the rest to __onLoginStatus."""
        assert self.qr_items is not None
        while True:
            try:
                item = self.qr_items.get(timeout=0.1)
            except queue.Empty:
                if RUNTIME.exiting.is_set():
                    return
                continue
            if item is None:
                return
            if item.startswith("2@"):
                _call_string_cb(self._qr_cb, self.uuid, item)
            else:
                _call_string_cb(self._login_cb, self.uuid, item)

    # ------------------------------------------------------------------ sockets (client.go)
    def connect(self, initial: bool) -> str:
        """ConnectContext / connect: dial under the socket lock. Returns an error text or ''."""
        with self.socket_lock:
            if self.deleted:
                return "device was deleted"
            if self.socket is not None:
                return "already connected"
            self.expected_disconnect.clear()
            step = RUNTIME.server.next_step(self.device)
            err = self._dial(step)
            if err:
                return err
            self.socket = self._open_socket()
            self.socket_generation += 1
        threading.Thread(target=self._after_handshake, args=(step,), name=f"{self.uuid.decode()}-handshake",
                         daemon=True).start()
        return ""

    def _dial(self, step: str) -> str:
        t = RUNTIME.timing
        if step == "refuse":
            time.sleep(t.dial_s)
            return "failed to dial whatsapp: dial tcp 127.0.0.1:443: connect: connection refused"
        if step == "stall":
            released = RUNTIME.server.stall_released.wait(t.dial_timeout_s)
            if not released:
                return "failed to dial whatsapp: i/o timeout"
            RUNTIME.server.stall_released.clear()
            return "failed to dial whatsapp: connection reset by peer"
        time.sleep(t.dial_s)
        return ""

    def _open_socket(self) -> str:
        if self.device is None:
            return ""  # a pairing socket belongs to no device yet
        return RUNTIME.registry(self.dsn).open(self.device, transport="neonize-model", company_id=None) or ""

    def _close_socket_locked(self) -> None:
        if self.socket:
            with contextlib.suppress(psycopg.Error):
                RUNTIME.registry(self.dsn).close(self.socket)
        self.socket = None
        self.logged_in = False

    def _after_handshake(self, step: str) -> None:
        time.sleep(RUNTIME.timing.dial_s)
        if self.socket is None:
            return
        if step == "logged_out":
            self.expected_disconnect.set()
            self.dispatch(LoggedOutEv(OnConnect=True, Reason=neonize_proto.LOGGED_OUT))
            self._delete_device()
            self.server_closes()
        elif step.startswith("ban:"):
            self.expected_disconnect.set()
            self.dispatch(TemporaryBanEv(Code=TemporaryBanEv.SEND_TO_TOO_MANY_PEOPLE, Expire=int(step[4:])))
            self.server_closes()
        elif step == "outdated":
            self.expected_disconnect.set()
            self.dispatch(ClientOutdatedEv())
            self.server_closes()
        elif step.startswith("failure:"):
            self.expected_disconnect.set()
            self.dispatch(ConnectFailureEv(Reason=int(step[8:]), Message="model connect failure",
                                           Raw=neonize_proto.Node(Tag="failure")))
            self.server_closes()
        elif step == "drop":
            self.server_closes()
        elif self.device is None:
            self.open_qr_emitter()
        else:
            self.logged_in = True
            self.auto_reconnect_errors = 0
            self.last_keepalive_success = time.time()
            self.dispatch(ConnectedEv(status=True))

    def open_qr_emitter(self) -> None:
        threading.Thread(target=self.emit_qrs, name=f"{self.uuid.decode()}-qr", daemon=True).start()

    def server_closes(self) -> None:
        """The server or the network ended the socket: onDisconnect(remote=true)."""
        with self.socket_lock:
            if self.socket is None:
                return
            self._close_socket_locked()
            expected = self.expected_disconnect.is_set()
        if not expected:
            self.dispatch(DisconnectedEv(status=True))
            threading.Thread(target=self.auto_reconnect, name=f"{self.uuid.decode()}-reconnect", daemon=True).start()

    def auto_reconnect(self) -> None:
        if self.device is None:
            return  # client.go: no reconnect without a stored ID
        while not RUNTIME.exiting.is_set():
            t = RUNTIME.timing
            errors = self.auto_reconnect_errors
            delay = errors * t.reconnect_step_s if errors else t.first_reconnect_s
            self.auto_reconnect_errors += 1
            if self.expected_disconnect.wait(delay):
                return
            err = self.connect(initial=False)
            if not err or err == "already connected":
                return
            if self.expected_disconnect.is_set():
                return

    def disconnect(self) -> None:
        """whatsmeow Disconnect(): waits for a dial that holds the socket lock, then closes."""
        with self.socket_lock:
            self.expected_disconnect.set()
            self._close_socket_locked()

    # ------------------------------------------------------------------ store
    def save_device(self, jid: str, push_name: str) -> None:
        with self.lock:
            self.container.execute(
                """INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,
                       signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,
                       adv_account_sig_key, adv_device_sig, platform, business_name, push_name, lid_migration_ts,
                       companion_meta_nonce)
                   VALUES (%s, 1, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s, 'model', '', %s, 0, '')
                   ON CONFLICT (jid) DO NOTHING""",
                # noise, identity, signed pre-key, its signature, adv key/details, account sig, its key, device sig
                (jid, *(os.urandom(n) for n in (32, 32, 32, 64, 32, 32, 64, 32, 64)), push_name),
            )

    def await_server_ack(self) -> str:
        """SendMessage waits for the server's ack of the message node: "" once it came, else an error."""
        generation = self.socket_generation
        deadline = time.monotonic() + RUNTIME.timing.send_timeout_s
        while RUNTIME.server.acks_stopped(self.device):
            if self.socket is None or self.socket_generation != generation or RUNTIME.exiting.is_set():
                return "websocket disconnected before message send returned response"
            if time.monotonic() >= deadline:
                return "timed out waiting for message send response"
            time.sleep(0.02)
        return ""

    def record_action(self, kind: str, chat: str | None, detail: dict[str, Any]) -> None:
        """What the phone was asked to do besides sending text (``transport_actions``, for tests)."""
        with self.lock:
            self.container.execute(
                """INSERT INTO transport_actions (company_id, transport, kind, chat, detail)
                   SELECT coalesce((SELECT company_id FROM companies WHERE device_jid = %s), %s),
                          'neonize-model', %s, %s, %s::jsonb""",
                (self.device, self.device, kind, chat, json.dumps(detail)),
            )

    def _delete_device(self) -> None:
        self.deleted = True
        if self.device:
            with self.lock, contextlib.suppress(psycopg.Error):
                self.container.execute("DELETE FROM whatsmeow_device WHERE jid = %s", (self.device,))


def _call_string_cb(cb: Callable[[int, int], None], uuid: bytes, text: str) -> None:
    """C.call_c_func_string: two C strings, passed to Python as addresses."""
    uid = ctypes.create_string_buffer(uuid)
    data = ctypes.create_string_buffer(text.encode())
    cb(ctypes.addressof(uid), ctypes.addressof(data))


class NewClient:
    """Stands in for ``neonize.client.NewClient``: the constructor, methods and attributes the transport uses."""

    def __init__(self, name: str, jid: JID | None = None, props: Any = None, uuid: str | None = None,
                 new_device: bool = False) -> None:
        self.name = name
        self.device_props = props
        self.new_device = new_device
        self.jid = jid
        self.uuid = (jid.User if jid else (uuid or name)).encode()
        self.event = Event(self)
        self.qr = self.event.qr
        self.connected = False
        self.me: Any = None
        self._go: GoClient | None = None
        self.proxy_address: str | None = None  # what connect() was given (ProxySettings.proxy_address)
        self._stop_finalizer = weakref.finalize(self, NewClient._release_ffi, self.uuid, RUNTIME, name)

    # neonize's own Python code, unchanged: it builds the reply message and calls Go only for a group
    # mention in the text (get_group_info, modelled below).
    build_reply_message = NeonizeClient.build_reply_message
    _make_quoted_message = NeonizeClient._make_quoted_message
    _parse_mention = NeonizeClient._parse_mention
    _parse_group_mention = NeonizeClient._parse_group_mention
    _generate_link_preview = NeonizeClient._generate_link_preview

    @staticmethod
    def _release_ffi(uuid: bytes, runtime: GoRuntime, dsn: str) -> None:
        with contextlib.suppress(Exception):
            runtime.stop(uuid, dsn)

    def __onLoginStatus(self, uuid: int, status: int) -> None:
        print(status)  # neonize 0.5.2 does exactly this

    def __onQr(self, uuid: int, qr_protoaddr: int) -> None:
        self.event._qr(self, ctypes.string_at(qr_protoaddr))

    # ------------------------------------------------------------------ the blocking call
    def connect(self, proxy_settings: Any = None) -> None:
        self.proxy_address = proxy_settings.proxy_address if proxy_settings is not None else None
        refs = (self.__onQr, self.__onLoginStatus, self.event.execute)
        holder: dict[str, Any] = {}
        done = threading.Event()

        def _worker() -> None:
            try:
                holder["err"] = self._neonize(*refs)
            except BaseException as exc:
                holder["exc"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=_worker, name=self.uuid.decode(), daemon=False)
        worker.start()
        while not done.is_set():
            done.wait(0.2)
        worker.join()
        if "exc" in holder:
            raise holder["exc"]
        if holder.get("err"):
            raise NeonizeError(holder["err"])

    def _neonize(self, qr_cb: Callable[[int, int], None], login_cb: Callable[[int, int], None],
                 event_cb: Callable[[bytes, int, int, int], None]) -> str:
        rt, uuid, dsn = RUNTIME, self.uuid, self.name
        cancel = threading.Event()
        with rt.write(f"Neonize({uuid.decode()})", dsn):
            rt.stop_signal[uuid] = cancel
            try:
                container = GoSqlDB(dsn, psycopg.connect(dsn, autocommit=True))  # getDB: never closed
                time.sleep(rt.timing.map_write_s)  # the upgrade's round trips
                container.execute("SELECT version, compat FROM whatsmeow_version LIMIT 1")
            except psycopg.Error as exc:
                return f"failed to upgrade database: {exc}".strip()
            rt.containers_opened += 1
            events: queue.Queue[tuple[int, bytes] | None] = queue.Queue(EVENT_CHANNEL_SIZE)
            rt.event_channel[uuid] = events
            device: str | None = None
            push_name = ""
            if self.jid is not None:  # GetDevice: the last store query before clients[uuid] is written
                row = container.execute("SELECT jid, push_name FROM whatsmeow_device WHERE jid = %s",
                                        (_jid_text(self.jid),)).fetchone()
                if row is None:
                    raise rt.fatal("nil pointer dereference: Neonize() with a jid missing from the store", dsn)
                device, push_name = row
            elif not self.new_device:
                row = container.execute("SELECT jid, push_name FROM whatsmeow_device ORDER BY jid LIMIT 1").fetchone()
                if row is not None:
                    device, push_name = row
            go = GoClient(uuid, dsn, container, device, push_name, qr_cb, login_cb)
            go.events = events
            self._go = go
            rt.clients[uuid] = go
        if go.device is None:
            go.open_qr_channel()
            err = go.connect(initial=True)
            if err:
                return err
            go.qr_loop()
        else:
            err = go.connect(initial=True)
            if err:
                return err
        while go.device is None:  # FetchMe: never looks at the context
            if rt.exiting.is_set():
                return ""
            time.sleep(0.1)
        me = _device(go.device, go.push_name)
        _deliver(event_cb, uuid, 0, me.SerializeToString())
        while not cancel.is_set() and not rt.exiting.is_set():  # CallbackFunction
            try:
                item = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                break
            if rt.timing.callback_delay_s:  # an event already taken is delivered even if Stop comes meanwhile
                time.sleep(rt.timing.callback_delay_s)
            _deliver(event_cb, uuid, item[0], item[1])
        return ""

    # ------------------------------------------------------------------ Go calls
    def _client(self, what: str) -> GoClient | None:
        return RUNTIME.read(self.uuid, what, self.name)

    def disconnect(self) -> None:
        client = self._client("Disconnect")
        if client is not None:
            client.disconnect()

    def stop(self) -> None:
        RUNTIME.stop(self.uuid, self.name)

    def logout(self) -> None:
        client = self._client("Logout")
        if client is None:
            raise LogoutError("client is nil")
        if client.device is None:
            raise LogoutError("not logged in")
        if client.socket is None:
            raise LogoutError("error sending logout request: websocket not connected")
        client.disconnect()
        client._delete_device()

    def PairPhone(self, phone: str, show_push_notification: bool, client_name: Any = None,
                  client_type: Any = None) -> str:
        client = self._client("PairPhone")
        if client is None:
            raise PairPhoneError("client is nil")
        digits = "".join(c for c in phone if c.isdigit())
        if len(digits) <= 6:
            raise PairPhoneError("phone number too short")
        if client.socket is None:
            raise PairPhoneError("websocket not connected")
        client.pending_code_phone = digits
        return pairing_code_for(digits)

    def send_message(self, to: JID | str, message: Any, *args: Any, **kwargs: Any) -> Any:
        client = self._client("SendMessage")
        if client is None:
            raise SendMessageError("client is nil")
        if client.socket is None or not client.logged_in:
            raise SendMessageError("websocket not connected")
        target = to if isinstance(to, str) else _jid_text(to)
        msg = message if isinstance(message, E2EMessage) else E2EMessage(conversation=str(message))
        error = client.await_server_ack()  # SendMessage returns once the server acknowledged the node
        if error:
            raise SendMessageError(error)
        message_id = "3EB0" + uuidlib.uuid4().hex[:16].upper()
        RUNTIME.server.sent.append((client.device, target, msg))
        if msg.HasField("reactionMessage"):
            r = msg.reactionMessage
            client.record_action("reaction", target, {
                "messageId": r.key.ID, "emoji": r.text, "fromMe": r.key.fromMe, "reactionId": message_id,
                "participant": r.key.participant or None})
        else:
            text = msg.conversation or msg.extendedTextMessage.text
            quoted = msg.extendedTextMessage.contextInfo.stanzaID or None
            media = _outbox_media(msg)
            if media is not None:
                text = media.get("caption") or ""
            with client.lock:
                client.container.execute(
                    """INSERT INTO transport_outbox (company_id, transport, message_id, to_jid, text, quoted, media)
                       SELECT coalesce((SELECT company_id FROM companies WHERE device_jid = %s), %s),
                              'neonize-model', %s, %s, %s, %s, %s::jsonb""",
                    (client.device, client.device, message_id, target, text, quoted,
                     None if media is None else json.dumps(media)),
                )
        timings = neonize_proto.MessageDebugTimings(Queue=0, Marshal=0, GetParticipants=0, GetDevices=0,
                                                    GroupEncrypt=0, PeerEncrypt=0, Send=0, Resp=0, Retry=0)
        return neonize_proto.SendResponse(ID=message_id, Timestamp=int(time.time()), ServerID=0,
                                          DebugTimings=timings)  # EncodeSendResponse: Unix() seconds

    # ------------------------------------------------------------------ media
    # neonize's own Python: the builders make the thumbnail (Pillow), read lengths with ffprobe and
    # convert stickers (ffmpeg), then call upload() and send_message(), which are the model's (Go's).
    send_image = NeonizeClient.send_image
    build_image_message = NeonizeClient.build_image_message
    send_video = NeonizeClient.send_video
    build_video_message = NeonizeClient.build_video_message
    send_audio = NeonizeClient.send_audio
    build_audio_message = NeonizeClient.build_audio_message
    send_document = NeonizeClient.send_document
    build_document_message = NeonizeClient.build_document_message
    send_sticker = NeonizeClient.send_sticker
    build_sticker_message = NeonizeClient.build_sticker_message

    def upload(self, binary: bytes, media_type: Any = None) -> Any:
        """Go ``Upload``: encrypts and uploads; answers where the media is and its keys and hashes.
        *Guess*: the encrypted hash is not the real AES-CBC+HMAC one (nothing here decrypts)."""
        client = self._client("Upload")
        if client is None:
            raise UploadError("client is nil")
        if client.socket is None or not client.logged_in:
            raise UploadError("failed to refresh media connections: websocket not connected")
        kind = getattr(media_type, "name", "MediaImage") if media_type is not None else "MediaImage"
        direct_path, media_key = RUNTIME.server.keep_media(bytes(binary), kind.removeprefix("Media").lower())
        return neonize_proto.UploadResponse(
            url="https://mmg.whatsapp.net" + direct_path + "?model=1", DirectPath=direct_path, Handle="",
            MediaKey=media_key, FileEncSHA256=hashlib.sha256(media_key + binary).digest(),
            FileSHA256=hashlib.sha256(binary).digest(), FileLength=len(binary),
        )

    def download_any(self, message: Any, path: str | None = None) -> bytes | None:
        """Go ``DownloadAny``: the media of an image, video, audio, document or sticker message.
        whatsmeow's errors name the HTTP status ("download failed with status code 410")."""
        client = self._client("DownloadAny")
        if client is None:
            raise DownloadError("client is nil")
        if client.socket is None or not client.logged_in:
            raise DownloadError("failed to refresh media connections: websocket not connected")
        part = next((getattr(message, f) for f in _MEDIA_FIELDS if message.HasField(f)), None)
        if part is None:
            raise DownloadError("no media found in message")  # whatsmeow ErrNothingDownloadableFound
        step = RUNTIME.server.download_step(part.directPath)
        if step != "ok":
            status = {"fail": 503, "gone": 410, "missing": 404}[step]
            raise DownloadError(f"download failed with status code {status}")
        data = RUNTIME.server.media[part.directPath]
        if hashlib.sha256(data).digest() != bytes(part.fileSHA256):
            raise DownloadError("invalid media SHA256 hash")  # whatsmeow ErrInvalidMediaSHA256
        if path:
            with open(path, "wb") as fh:
                fh.write(data)
            return None
        return data

    # ------------------------------------------------------------------ beyond text (issue 11.3-11.8)
    def _live(self, what: str, error: type[NeonizeError]) -> GoClient:
        client = self._client(what)
        if client is None:
            raise error("client is nil")
        if client.socket is None or not client.logged_in:
            raise error("websocket not connected")
        return client

    def mark_read(self, *message_ids: str, chat: JID, sender: JID, receipt: Any,
                  timestamp: int | None = None) -> None:
        client = self._live("MarkRead", MarkReadError)
        if not message_ids:
            raise MarkReadError("no message IDs specified")
        client.record_action("read", _jid_text(chat), {
            "messageIds": list(message_ids), "sender": _jid_text(sender),
            "receipt": receipt.value.decode() if isinstance(receipt.value, bytes) else str(receipt.value)})

    def send_chat_presence(self, jid: JID, state: Any, media: Any) -> None:
        client = self._live("SendChatPresence", SendPresenceError)
        kind = "paused" if state.name.endswith("PAUSED") else \
            "recording" if media.name.endswith("AUDIO") else "typing"
        client.record_action("presence", _jid_text(jid), {"state": kind})

    def build_reaction(self, chat: JID, sender: JID, message_id: str, reaction: str) -> E2EMessage:
        """whatsmeow BuildReaction: the key is "from me" unless the sender is another number; a group's
        key names the member (BuildMessageKey)."""
        client = self._client("BuildReaction")
        if client is None:
            raise SendMessageError("client is nil")
        msg = E2EMessage()
        key = msg.reactionMessage.key
        key.remoteJID = _jid_text(chat)
        key.ID = message_id
        own = (client.device or "").split("@")[0].split(":")[0]
        key.fromMe = not (sender.User and sender.User != own)
        if not key.fromMe and chat.Server not in ("s.whatsapp.net", "lid", "msgr"):
            key.participant = f"{sender.User}@{sender.Server}"
        msg.reactionMessage.text = reaction
        msg.reactionMessage.senderTimestampMS = int(time.time() * 1000)
        return msg

    def is_on_whatsapp(self, *numbers: str) -> list[Any]:
        client = self._live("IsOnWhatsApp", IsOnWhatsAppError)
        out = []
        for number in numbers:
            digits = number.lstrip("+")
            registered, lid = RUNTIME.server.contacts.get(digits, (True, None))
            if registered and lid:  # whatsmeow stores what usync told it
                with client.lock:
                    client.container.execute(
                        "INSERT INTO whatsmeow_lid_map (lid, pn) VALUES (%s, %s) ON CONFLICT DO NOTHING", (lid, digits))
            client.record_action("contact_check", None, {"phone": digits})
            out.append(neonize_proto.IsOnWhatsAppResponse(Query=number, JID=_jid_proto(f"{digits}@s.whatsapp.net"),
                                                          IsIn=registered))
        return out

    def get_group_info(self, jid: JID) -> Any:
        client = self._live("GetGroupInfo", GetGroupInfoError)
        group = _jid_text(jid)
        client.record_action("group_info", group, {})
        info = RUNTIME.server.groups.get(group)
        if info is None:
            raise GetGroupInfoError("group not found")
        own = (client.device or "").split("@")[0].split(":")[0]
        if not any(p.JID.User == own or p.PhoneNumber.User == own for p in info.Participants):
            raise GetGroupInfoError("you're not participating in that group")
        return neonize_proto.GroupInfo.FromString(info.SerializeToString())  # as Go encodes it

    def get_me(self) -> Any:
        client = self._client("GetMe")
        if client is None:
            raise RUNTIME.fatal("nil pointer dereference: GetMe after Stop", self.name)
        return _device(client.device or "", client.push_name)

    @property
    def is_connected(self) -> bool:
        client = self._client("IsConnected")
        return client is not None and client.socket is not None

    @property
    def is_logged_in(self) -> bool:
        client = self._client("IsLoggedIn")
        return client is not None and client.logged_in

    # ------------------------------------------------------------------ the world around it
    @property
    def phone(self) -> PhoneSide:
        if self._go is None:
            raise ModelControlError("the client has not reached WhatsApp yet")
        return PhoneSide(self._go)


def _deliver(event_cb: Callable[[bytes, int, int, int], None], uuid: bytes, code: int, data: bytes) -> None:
    """C.call_c_func_callback_bytes: neonize's Event.execute reads the bytes at an address."""
    buf = ctypes.create_string_buffer(data, len(data) or 1)
    try:
        event_cb(uuid, ctypes.addressof(buf), len(data), code)
    except Exception:  # a cgo callback's Python exception is printed by ctypes, Go goes on
        log.exception("model event callback raised code=%d", code)


# The media fields of a waE2E.Message, as the phone side names the kind it received.
_MEDIA_FIELDS = ("imageMessage", "videoMessage", "ptvMessage", "audioMessage", "documentMessage", "stickerMessage")
_KINDS = {"imageMessage": "image", "videoMessage": "video", "ptvMessage": "video", "audioMessage": "audio",
          "documentMessage": "document", "stickerMessage": "sticker"}


def _outbox_media(msg: Any) -> dict[str, Any] | None:
    """What a media message carried, as the phone that receives it sees it (transport_outbox.media)."""
    field = next((f for f in _MEDIA_FIELDS if msg.HasField(f)), None)
    if field is None:
        return None
    part = getattr(msg, field)
    names = part.DESCRIPTOR.fields_by_name
    kind = "voice" if field == "audioMessage" and part.PTT else _KINDS[field]
    return {"id": "", "kind": kind, "mimetype": part.mimetype, "sha256": bytes(part.fileSHA256).hex(),
            "size": int(part.fileLength), "caption": (part.caption or None) if "caption" in names else None,
            "filename": (part.fileName or None) if "fileName" in names else None,
            "ptt": bool(part.PTT) if "PTT" in names else None, "url": part.URL, "direct_path": part.directPath,
            "media_key": bool(part.mediaKey)}


def _complete(msg: Any) -> Any:
    """Every required field left unset gets its zero value, as Go's encoder writes every field."""
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None:
            if f.is_repeated:
                for item in getattr(msg, f.name):
                    _complete(item)
                continue
            if f.is_required and not msg.HasField(f.name):
                getattr(msg, f.name).SetInParent()
            if msg.HasField(f.name):
                _complete(getattr(msg, f.name))
        elif f.is_required and not msg.HasField(f.name):
            setattr(msg, f.name, f.default_value)
    return msg


def pairing_code_for(phone: str) -> str:
    h = hashlib.sha256(phone.encode()).hexdigest().upper()
    return f"{h[:4]}-{h[4:8]}"


class ModelControlError(ValueError):
    """A phone-side control that does not apply to the client's current state."""


class PhoneSide:
    """What the phone, WhatsApp's server or the network do to one client."""

    def __init__(self, go: GoClient) -> None:
        self._go = go

    @property
    def device(self) -> str | None:
        return self._go.device

    def scan(self, phone: str) -> str:
        """The phone scans the current QR: pair-success, device saved, then the 515 restart."""
        go = self._go
        if go.device is not None or go.qr_items is None:
            raise ModelControlError("no QR code is waiting to be scanned")
        if go.socket is None or go._qr_closed.is_set():
            raise ModelControlError("the QR code is no longer showing")
        with go.lock:
            row = go.container.execute("SELECT count(*) FROM whatsmeow_device WHERE jid LIKE %s",
                                       (f"{phone}:%",)).fetchone()
        number = 1 + int(row[0] if row else 0)
        jid = f"{phone}:{number}@s.whatsapp.net"
        go.push_name = f"Model {phone}"
        go.save_device(jid, go.push_name)
        go.device = jid
        go.expected_disconnect.set()  # pair.go: expect the disconnect of the 515 restart
        go.dispatch(_pair_status(jid, None))
        threading.Thread(target=self._restart_515, name=f"{go.uuid.decode()}-515", daemon=True).start()
        return jid

    def confirm_code(self) -> str:
        """The phone enters the pairing code the client asked for."""
        if self._go.pending_code_phone is None:
            raise ModelControlError("no pairing code was requested")
        return self.scan(self._go.pending_code_phone)

    def pair_error(self) -> None:
        go = self._go
        if go.device is not None or go.qr_items is None:
            raise ModelControlError("not pairing")
        go.disconnect()
        go.dispatch(_pair_status(None, "hmac mismatch"))

    def _restart_515(self) -> None:
        time.sleep(RUNTIME.timing.restart_515_s)
        go = self._go
        go.disconnect()  # handleStreamError 515: Disconnect, then connect again
        go.connect(initial=False)

    def drop(self) -> None:
        if self._go.socket is None:
            raise ModelControlError("no live socket")
        self._go.server_closes()

    def replace(self) -> None:
        go = self._go
        if go.socket is None:
            raise ModelControlError("no live socket")
        go.expected_disconnect.set()
        go.dispatch(StreamReplacedEv())
        go.server_closes()

    def logout(self) -> None:
        """Unlinked from the phone: stream error 401 device_removed."""
        go = self._go
        if go.socket is None:
            raise ModelControlError("no live socket")
        go.expected_disconnect.set()
        go.dispatch(LoggedOutEv(OnConnect=False, Reason=neonize_proto.LOGGED_OUT))
        go._delete_device()
        go.server_closes()

    def ban(self, expires_s: int) -> None:
        """A temporary ban. *Shortcut:* whatsmeow meets it as connect failure 402 on the next
        (auto-)reconnect; the model hands it to the live client at once, as that reconnect would."""
        go = self._go
        if go.socket is None:
            raise ModelControlError("no live socket")
        go.expected_disconnect.set()
        go.dispatch(TemporaryBanEv(Code=TemporaryBanEv.SEND_TO_TOO_MANY_PEOPLE, Expire=expires_s))
        go.server_closes()

    def stream_error(self, code: str = "500") -> None:
        go = self._go
        go.dispatch(StreamErrorEv(Code=code, Raw=neonize_proto.Node(Tag="stream:error")))
        go.server_closes()

    def keepalive_timeout(self, failing_for_s: float = 0.0) -> None:
        go = self._go
        if go.socket is None:
            raise ModelControlError("no live socket")
        go.keepalive_errors += 1
        if failing_for_s:
            go.last_keepalive_success = time.time() - failing_for_s
        go.dispatch(KeepAliveTimeoutEv(ErrorCount=go.keepalive_errors, LastSuccess=int(go.last_keepalive_success)))
        if time.time() - go.last_keepalive_success > RUNTIME.timing.keepalive_max_fail_s:
            go.disconnect()
            go.expected_disconnect.clear()
            threading.Thread(target=go.auto_reconnect, daemon=True).start()

    def keepalive_restore(self) -> None:
        go = self._go
        if go.keepalive_errors:
            go.keepalive_errors = 0
            go.last_keepalive_success = time.time()
            go.dispatch(KeepAliveRestoredEv())

    def incoming_media(self, kind: str, data: bytes, *, sender: str, chat: str | None = None,
                       caption: str | None = None, filename: str | None = None, mimetype: str | None = None,
                       message_id: str | None = None, failures: int = 0) -> str:
        """A photo, video, audio, voice note, document or sticker arrives: its bytes on the media servers
        (``failures`` downloads fail first, -1: every one, as expired), the message as neonize encodes it.

        *Guesses*: the mimetype a phone sets (libmagic's name, ``audio/ogg; codecs=opus`` for a voice
        note), ``MessageInfo.Type`` "media" and ``MediaType`` (``ptt`` for a voice note), the thumbnail.
        """
        import magic

        field = {"image": "imageMessage", "video": "videoMessage", "audio": "audioMessage", "voice": "audioMessage",
                 "document": "documentMessage", "sticker": "stickerMessage"}[kind]
        direct_path, media_key = RUNTIME.server.keep_media(data, kind)
        if failures:
            RUNTIME.server.media_plans[direct_path].extend(["gone"] if failures < 0 else ["fail"] * failures)
        body = E2EMessage()
        part = getattr(body, field)
        part.URL = "https://mmg.whatsapp.net" + direct_path + "?model=1"
        part.directPath = direct_path
        part.mediaKey = media_key
        part.fileSHA256 = hashlib.sha256(data).digest()
        part.fileEncSHA256 = hashlib.sha256(media_key + data).digest()
        part.fileLength = len(data)
        sniffed = "audio/ogg; codecs=opus" if kind == "voice" else magic.from_buffer(data, mime=True)
        part.mimetype = mimetype or sniffed
        names = part.DESCRIPTOR.fields_by_name
        if kind == "voice":
            part.PTT = True
        if caption and "caption" in names:
            part.caption = caption
        if filename and "fileName" in names:
            part.fileName = filename
        if "JPEGThumbnail" in names:
            part.JPEGThumbnail = b"\xff\xd8\xff\xe0model-thumbnail"
        media_type = "ptt" if kind == "voice" else kind
        return self._dispatch_message(body, sender=sender, chat=chat, message_id=message_id, msg_type="media",
                                      media_type=media_type)

    def _dispatch_message(self, body: Any, *, sender: str, chat: str | None, message_id: str | None,
                          msg_type: str, media_type: str) -> str:
        """A media message as neonize's Go side encodes it (see :meth:`incoming` for a text)."""
        go = self._go
        if go.socket is None or not go.logged_in:
            raise ModelControlError("not connected")
        chat = chat or sender
        mid = message_id or "3A" + uuidlib.uuid4().hex[:18].upper()
        source = neonize_proto.MessageSource(
            Chat=_jid_proto(chat), Sender=_jid_proto(sender), IsFromMe=False, IsGroup=chat.endswith("@g.us"),
            AddressingMode=neonize_proto.LID if sender.endswith("@lid") else neonize_proto.PN,
            SenderAlt=_empty_jid(), RecipientAlt=_empty_jid(), BroadcastListOwner=_empty_jid(),
        )
        info = neonize_proto.MessageInfo(
            MessageSource=source, ID=mid, ServerID=0, Type=msg_type, Pushname="Model sender",
            Timestamp=int(time.time() * 1000), Category="", Multicast=False, MediaType=media_type, Edit="",
        )
        go.dispatch(MessageEv(Info=info, Message=body, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False,
                              IsViewOnceV2Extension=False, IsDocumentWithCaption=False, IsLottieSticker=False,
                              IsEdit=False, UnavailableRequestID="", RetryCount=0))
        return mid

    # ------------------------------------------------------------------ beyond text (issue 11.3-11.8)
    def receipt(self, message_ids: list[str], status: str, *, chat: str, participant: str | None = None,
                timestamp_s: int | None = None) -> None:
        """The recipient's phone reports sent messages delivered, read or played (``ReceiptEv``)."""
        go = self._go
        if go.socket is None or not go.logged_in:
            raise ModelControlError("not connected")
        kinds = {"delivered": ReceiptEv.DELIVERED, "read": ReceiptEv.READ, "played": ReceiptEv.PLAYED}
        if status not in kinds:
            raise ModelControlError(f"receipt status {status!r}: use delivered, read or played")
        is_group = chat.endswith("@g.us")
        sender = participant if is_group and participant else chat
        source = neonize_proto.MessageSource(
            Chat=_jid_proto(chat), Sender=_jid_proto(sender), IsFromMe=False, IsGroup=is_group,
            AddressingMode=neonize_proto.PN, SenderAlt=_empty_jid(), RecipientAlt=_empty_jid(),
            BroadcastListOwner=_empty_jid(),
        )
        go.dispatch(ReceiptEv(MessageSource=source, MessageIDs=message_ids, Type=kinds[status],
                              Timestamp=timestamp_s if timestamp_s is not None else int(time.time())))

    def sent_to(self, message_id: str) -> str | None:
        """The chat this device sent ``message_id`` to (where its receipts come from)."""
        go = self._go
        with go.lock:
            row = go.container.execute("SELECT to_jid FROM transport_outbox WHERE message_id = %s",
                                       (message_id,)).fetchone()
        return str(row[0]) if row else None

    def stop_acks(self, stop: bool = True) -> None:
        """The server goes on taking this device's sends but acknowledges none (or again, ``stop=False``)."""
        RUNTIME.server.stop_acks(self._go.device, stop)

    @staticmethod
    def contact(phone: str, *, on_whatsapp: bool = True, lid: str | None = None) -> None:
        """What WhatsApp's directory answers for a number (and the LID it tells)."""
        RUNTIME.server.contacts[phone] = (on_whatsapp, lid)

    @staticmethod
    def group(group: str, subject: str, participants: list[str], admins: list[str] | None = None) -> None:
        """A group as WhatsApp's server knows it (its first participant owns it)."""
        owner = participants[0] if participants else None

        def member(jid: str) -> Any:
            return _complete(neonize_proto.GroupParticipant(
                JID=_jid_proto(jid), PhoneNumber=_jid_proto(jid) if jid.endswith("@s.whatsapp.net") else _empty_jid(),
                LID=_empty_jid(), IsAdmin=jid == owner or jid in (admins or []), IsSuperAdmin=jid == owner,
                DisplayName="", Error=0))

        info = neonize_proto.GroupInfo(
            JID=_jid_proto(group), OwnerJID=_jid_proto(owner) if owner else _empty_jid(),
            OwnerPN=_jid_proto(owner) if owner else _empty_jid(),
            GroupName=neonize_proto.GroupName(Name=subject, NameSetAt=int(time.time()), NameSetBy=_empty_jid()),
            GroupCreated=float(int(time.time())), Participants=[member(j) for j in participants],
        )
        RUNTIME.server.groups[group] = _complete(info)

    def incoming(self, text: str, *, sender: str, chat: str | None = None, sender_alt: str | None = None,
                 message_id: str | None = None, quoted: str | None = None, push_name: str = "Model sender",
                 timestamp_ms: int | None = None) -> str:
        """A message arrives, encoded as neonize's Go side encodes it (``UnixMilli`` timestamp)."""
        go = self._go
        if go.socket is None or not go.logged_in:
            raise ModelControlError("not connected")
        chat = chat or sender
        mid = message_id or "3A" + uuidlib.uuid4().hex[:18].upper()
        is_group = chat.endswith("@g.us")
        source = neonize_proto.MessageSource(
            Chat=_jid_proto(chat), Sender=_jid_proto(sender), IsFromMe=False, IsGroup=is_group,
            AddressingMode=neonize_proto.LID if sender.endswith("@lid") else neonize_proto.PN,
            SenderAlt=_jid_proto(sender_alt) if sender_alt else _empty_jid(), RecipientAlt=_empty_jid(),
            BroadcastListOwner=_empty_jid(),
        )
        info = neonize_proto.MessageInfo(
            MessageSource=source, ID=mid, ServerID=0, Type="text", Pushname=push_name,
            Timestamp=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),  # UnixMilli()
            Category="", Multicast=False, MediaType="", Edit="",
        )
        if quoted:
            body = E2EMessage()
            body.extendedTextMessage.text = text
            body.extendedTextMessage.contextInfo.stanzaID = quoted
        else:
            body = E2EMessage(conversation=text)
        go.dispatch(MessageEv(Info=info, Message=body, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False,
                              IsViewOnceV2Extension=False, IsDocumentWithCaption=False, IsLottieSticker=False,
                              IsEdit=False, UnavailableRequestID="", RetryCount=0))
        return mid
