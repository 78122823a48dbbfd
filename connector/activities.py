"""The connector's activities, and the life of every connection it holds.

``hold_session`` (shared queue ``connector``: any live connector may take it) claims the company
in ``session_holds``, starts the transport's client and returns at once. The connection then lives
on in this process and costs Temporal nothing while it is idle: no heartbeat, no pending activity.
Liveness is the connector's lease instead (connector/lease.py). The transport's callbacks become
signals to the session workflow (``qr``, ``pairing_code``, ``connected``, ``disconnected``) and
events on Redis; how the connection ends becomes the ``hold_ended`` signal. The signals that move
the session (``connected``, ``hold_ended``) are retried until Temporal takes them, so a Temporal
outage delays them and loses none.

Every second (:meth:`ConnectorActivities.tick`) a connector declares dead peers, adopts the holds of
connectors that died or stopped (resuming each connection under the same hold id, and telling the
workflow only when the queue that reaches it changed), and closes any connection whose row is no
longer its own. That loop runs here, not in Temporal, because it is what keeps connections right
while Temporal is unreachable.

Incoming messages go through the spool (connector/spool.py): durable first, then handed to the
chat's inbox workflow in order. The other activities run on this connector's own queue: send,
release, logout and the transport's controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from connector.devices import DeviceDirectory
from connector.holds import HeldElsewhereError, HoldRow, HoldTable
from connector.lease import Incarnation, LeaseKeeper, PeerWatch
from connector.spool import IncomingSpool
from connector.transport import (
    MediaGoneError,
    MediaUnavailableError,
    NoServerAckError,
    NotConnectedError,
    NotFoundOnWhatsAppError,
    Transport,
    TransportControlError,
    WhatsAppRefusedError,
)
from domain.chat_actions import (
    ACTIVITY_CHECK_CONTACT,
    ACTIVITY_GROUP_INFO,
    ACTIVITY_MARK_READ,
    ACTIVITY_SEND_PRESENCE,
    ACTIVITY_SEND_REACTION,
    ERROR_NOT_FOUND,
    ERROR_REFUSED,
    ContactCheck,
    ContactInfo,
    GroupInfo,
    GroupInfoRequest,
    MarkReadRequest,
    PresenceRequest,
    ReactionRequest,
)
from domain.events import Event, EventType
from domain.inbox import INBOX_WORKFLOW, SIGNAL_INBOX_MESSAGE, InboxWorkflowInput, IncomingMessage, inbox_workflow_id
from domain.media import (
    ACTIVITY_DOWNLOAD_MEDIA,
    ERROR_MEDIA_GONE,
    ERROR_MEDIA_MISSING,
    ERROR_MEDIA_UNAVAILABLE,
    GENERIC_MIMETYPES,
    MediaDescriptor,
    MediaDownload,
    MediaKind,
    MediaRef,
    MediaState,
)
from domain.receipts import MessageReceipt, MessageStatus
from domain.session import (
    ACTIVITY_HOLD_SESSION,
    ACTIVITY_LOGOUT_DEVICE,
    ACTIVITY_RELEASE_SESSION,
    ACTIVITY_SEND_MESSAGE,
    ACTIVITY_TRANSPORT_CONTROL,
    ACTIVITY_TRANSPORT_OUTBOX,
    ERROR_CONNECTOR_SHUTDOWN,
    ERROR_HELD_ELSEWHERE,
    ERROR_NOT_CONNECTED,
    SIGNAL_CONNECTED,
    SIGNAL_DEGRADED,
    SIGNAL_DELIVERING,
    SIGNAL_DISCONNECTED,
    SIGNAL_HOLD_ENDED,
    SIGNAL_PAIRING_CODE,
    SIGNAL_QR,
    ConnectedSignal,
    DegradedSignal,
    DeliveringSignal,
    DisconnectedSignal,
    HoldEndedSignal,
    HoldOutcome,
    HoldOutcomeKind,
    HoldRequest,
    HoldStarted,
    OutboxEntry,
    PairingCodeSignal,
    QrSignal,
    ReleaseRequest,
    SendRequest,
    SendResult,
    TransportCommand,
    session_workflow_id,
)
from domain.settings import Settings
from infra.alerts import Alert, AlertSender
from infra.redis import EventPublisher
from storage.blobs import BlobMissing, blob_store
from storage.media import MediaRows
from storage.message_status import record_status

log = logging.getLogger("waorch.connector")

# What each way a hold ends looks like on the events channel.
_OUTCOME_EVENTS: dict[HoldOutcomeKind, EventType] = {
    HoldOutcomeKind.DROPPED: EventType.DISCONNECTED,
    HoldOutcomeKind.DIAL_FAILED: EventType.ERROR,
    HoldOutcomeKind.REPLACED: EventType.REPLACED,
    HoldOutcomeKind.LOGGED_OUT: EventType.LOGGED_OUT,
    HoldOutcomeKind.TEMP_BANNED: EventType.ERROR,
    HoldOutcomeKind.PAIRING_TIMEOUT: EventType.LOGGED_OUT,
    HoldOutcomeKind.CLIENT_OUTDATED: EventType.ERROR,
}
# Starts a session workflow that already holds a connection: (company, hold id, jid, phone, holder queue,
# holder) -> whether this call started it (False: it was running already).
StartWithHold = Callable[[str, str, str, str | None, str, str], Awaitable[bool]]
_SIGNAL_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # then every 5 s until Temporal takes it
VERIFY_EVERY_TICKS = 5
ADOPT_BATCH = 200


class KeyedLocks:
    """One FIFO lock per key, dropped when nobody holds or waits for it (no growth per chat)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class _Hold:
    """One connection this process holds, under one hold attempt of the company's session."""

    company_id: str
    hold_id: str
    workflow_id: str
    announced_queue: str | None = None
    outcome: asyncio.Future[HoldOutcome] | None = None
    # Why the connection was closed from this side; decides what the end reports.
    closing: str = ""  # "" | "request" (the workflow asked) | "shutdown" | "lost" (row no longer ours)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Set when the client connects: (jid, phone, push name). The resume of a session with no workflow
    # waits for it before it starts the workflow (resume_without_workflow).
    connected: asyncio.Future[tuple[str, str | None, str | None]] | None = None
    # "Connected but dead" (issue 11.8): server-ack deadlines of the sends in flight, and whether one
    # passed (the workflow was told: degraded) with no send acknowledged since.
    ack_deadlines: set[asyncio.TimerHandle] = field(default_factory=set)
    degraded: bool = False
    delivering_told: bool = False  # "delivering" signalled since the last degradation (once is enough)


class _HoldListener:
    """Transport callbacks of one hold → workflow signals and Redis events."""

    def __init__(self, acts: ConnectorActivities, hold: _Hold) -> None:
        self._acts = acts
        self._hold = hold

    async def qr(self, code: str, sequence: int, expires_at: datetime | None) -> None:
        h, acts = self._hold, self._acts
        await acts.signal(h, SIGNAL_QR, QrSignal(code, sequence, acts.me.own_queue, expires_at, h.hold_id),
                          durable=False)
        await acts.publish(h.company_id, EventType.QR, qr=code, sequence=sequence,
                           expiresAt=expires_at.isoformat() if expires_at else None)

    async def pairing_code(self, code: str) -> None:
        h, acts = self._hold, self._acts
        await acts.signal(h, SIGNAL_PAIRING_CODE, PairingCodeSignal(code, acts.me.own_queue, h.hold_id),
                          durable=False)
        await acts.publish(h.company_id, EventType.PAIRING_CODE, pairingCode=code)

    async def connected(self, jid: str, phone: str | None, push_name: str | None) -> None:
        h, acts = self._hold, self._acts
        await acts.devices.remember(h.company_id, jid, phone, push_name)
        if h.connected is not None and not h.connected.done():
            h.connected.set_result((jid, phone, push_name))
        queue = acts.me.own_queue
        if h.announced_queue != queue:
            sig = ConnectedSignal(jid, queue, phone, push_name, h.hold_id, acts.me.incarnation)
            if await acts.signal(h, SIGNAL_CONNECTED, sig, durable=True):
                h.announced_queue = queue
                with contextlib.suppress(Exception):
                    await acts.holds.announced(h.company_id, h.hold_id, queue)
        await acts.publish(h.company_id, EventType.CONNECTED, jid=jid, phone=phone,
                           connector=acts.settings.connector_id)
        log.info("connected company_id=%s jid=%s", h.company_id, jid)

    async def disconnected(self, reason: str) -> None:
        h = self._hold
        await self._acts.signal(h, SIGNAL_DISCONNECTED, DisconnectedSignal(reason, h.hold_id), durable=False)

    async def message(self, msg: IncomingMessage) -> None:
        await self._acts.deliver_incoming(msg)

    async def receipt(self, receipt: MessageReceipt) -> None:
        await self._acts.message_status(receipt)


class ConnectorActivities:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        transport: Transport,
        devices: DeviceDirectory,
        events: EventPublisher,
        *,
        redis: aioredis.Redis | None = None,
        me: Incarnation | None = None,
        fence: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.transport = transport
        self.devices = devices
        self.events = events
        self.redis = redis if redis is not None else events.client
        self.me = me or Incarnation.new(settings)
        self.lease = LeaseKeeper(settings, self.me, **({"fence": fence} if fence else {}))
        self.watch = PeerWatch(settings, self.me)
        self.holds = HoldTable(devices.db, self.me)
        self.spool = IncomingSpool(
            devices.db, self.me.incarnation, self.me.pool,
            settings.data_dir / "spool" / f"{settings.connector_id}.jsonl",
            max_pending=settings.spool_max_pending,
        )
        self._shutting_down = asyncio.Event()
        self._held: dict[str, _Hold] = {}
        self._chat_order = KeyedLocks()
        self._background: list[asyncio.Task[None]] = []
        self._ticks = 0
        self.adopted = 0
        self.lost_peers: list[str] = []
        self._taking_over: dict[str, tuple[str, int]] = {}  # dead incarnation -> (its id, sessions it held)
        self._alerts = AlertSender(settings)
        self.blobs = blob_store(settings)  # media of sends (read) and downloads (written)
        self.media = MediaRows(devices.db)

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    # ------------------------------------------------------------------ process life

    async def start(self) -> None:
        """Register the lease, then adopt, watch peers and drain the spool in the background."""
        await self.lease.register(self.devices.db.dsn, self.redis)
        self._background = [
            asyncio.create_task(self._tick_forever(), name="connector-tick"),
            asyncio.create_task(self.spool.drain(self._hand_off, self._shutting_down), name="spool-drain"),
        ]

    async def shutdown(self, timeout: float = 15.0) -> None:
        """SIGTERM (SPEC S9): close every connection without logout, keep their rows, release the lease:
        the holds go on at the next connector (a successor with this CONNECTOR_ID tells Temporal nothing)."""
        self._shutting_down.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        holds = list(self._held.values())
        for h in holds:
            h.closing = "shutdown"
        await asyncio.gather(*(self._stop_client(h) for h in holds), return_exceptions=True)
        closed = True
        try:
            await asyncio.wait_for(self.transport.close(), timeout)
        except Exception as exc:
            closed = False
            log.warning("connections not all closed in %.0fs error=%s: the lease is left to expire", timeout,
                        type(exc).__name__)
        for h in holds:
            await self.publish(h.company_id, EventType.DISCONNECTED, reason="connector shutting down",
                               connector=self.settings.connector_id)
        pending = [t for h in holds for t in h.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        # Released, the holds are adopted at once: only once every client is dead. Otherwise the lease
        # expires after this process has exited (and its sockets with it), and peers adopt then.
        if closed and self.lease.registered and not self.lease.fenced:
            await self.lease.release(self.devices.db.dsn, self.redis)
        else:
            self.lease.stop()

    async def _tick_forever(self) -> None:
        while not self._shutting_down.is_set():
            try:
                await self.tick()
            except Exception as exc:  # a store is down: the next tick tries again
                log.warning("liveness tick failed error=%s", type(exc).__name__)
            waiter = asyncio.ensure_future(self._shutting_down.wait())
            await asyncio.wait([waiter], timeout=self.settings.lease_renew_s)
            waiter.cancel()

    async def tick(self) -> None:
        """One round of coordination: declare dead peers, adopt orphaned holds, check my rows."""
        self._ticks += 1
        for peer in await self.watch.check(self.devices.db, self.redis):
            # This process declared it dead (exactly one watcher does): one alert for the connector,
            # not one per session, and one more once every session it held is held again.
            self.lost_peers.append(peer.incarnation)
            companies = await self.holds.of(peer.incarnation)
            for cid in companies:
                await self.publish(cid, EventType.DISCONNECTED, reason=f"connector {peer.connector_id} lost",
                                   connector=peer.connector_id)
            self._taking_over[peer.incarnation] = (peer.connector_id, len(companies))
            await self._alert(f"WhatsApp connector {peer.connector_id} lost ({peer.reason}); its {len(companies)} "
                              "sessions are being taken over by the other connectors", "warning")
        for incarnation, (connector_id, count) in list(self._taking_over.items()):
            if not await self.holds.of(incarnation):
                del self._taking_over[incarnation]
                await self._alert(f"The {count} sessions of lost WhatsApp connector {connector_id} are held again",
                                  "info")
        await self._adopt()
        if self._ticks % VERIFY_EVERY_TICKS == 0:
            await self._verify()

    async def _adopt(self) -> None:
        if self._shutting_down.is_set():
            return
        rows = await self.holds.adopt(held_now=len(self._held), capacity=self.settings.connector_max_sessions,
                                      batch=ADOPT_BATCH)
        if not rows:
            return
        self.adopted += len(rows)
        log.info("holds adopted count=%d", len(rows))
        sem = asyncio.Semaphore(50)

        async def one(row: HoldRow) -> None:
            async with sem:
                try:
                    await self._resume_adopted(row)
                except Exception as exc:
                    log.warning("adopted hold failed company_id=%s error=%s", row.company_id, exc)

        await asyncio.gather(*(one(r) for r in rows))

    async def _resume_adopted(self, row: HoldRow) -> None:
        hold = _Hold(row.company_id, row.hold_id, row.workflow_id, announced_queue=row.announced_queue)
        if row.ended is not None:
            # Its holder died after the connection ended and before the workflow heard of it.
            self._watch(hold, self._report_end(hold, row.ended))
            return
        # The device as stored now: a hold that began as a pairing has one only since its scan.
        jid = await self.devices.device_jid(row.company_id) or row.jid
        if jid and not await self.transport.device_exists(jid):
            self._watch(hold, self._report_end(hold, HoldOutcome(HoldOutcomeKind.LOGGED_OUT, "device gone")))
            return
        await self._start_client(hold, jid=jid, pairing_phone=row.pairing_phone)

    async def _verify(self) -> None:
        """Close every connection whose row is no longer this process's (the workflow gave it up)."""
        mine = await self.holds.mine()
        for cid, hold in list(self._held.items()):
            if mine.get(cid) != hold.hold_id and hold.outcome is not None and not hold.outcome.done():
                log.warning("hold no longer ours, closing company_id=%s hold_id=%s", cid, hold.hold_id)
                hold.closing = "lost"
                await self._stop_client(hold)

    # ------------------------------------------------------------------ one hold

    async def _start_client(self, hold: _Hold, *, jid: str | None, pairing_phone: str | None,
                            wait: bool = True) -> None:
        """Start the hold's client; ``wait=False`` returns at once and lets it start in the background
        (a transport may first wait for the device's previous client to die), a failed start ending
        the hold like any other dial failure."""
        log.info("hold start company_id=%s resume=%s hold_id=%s", hold.company_id, bool(jid), hold.hold_id)
        old = self._held.get(hold.company_id)
        if old is not None and old is not hold:
            old.closing = old.closing or "lost"
            await self._stop_client(old)
        self._held[hold.company_id] = hold
        if wait:
            await self._open(hold, jid, pairing_phone, raise_errors=True)
        else:
            self._watch(hold, self._open(hold, jid, pairing_phone, raise_errors=False))

    async def _open(self, hold: _Hold, jid: str | None, pairing_phone: str | None, *, raise_errors: bool) -> None:
        try:
            outcome = await self.transport.start(
                hold.company_id, jid=jid, pairing_phone=pairing_phone, listener=_HoldListener(self, hold)
            )
        except Exception as exc:
            if raise_errors:
                if self._held.get(hold.company_id) is hold:
                    del self._held[hold.company_id]
                raise
            log.warning("client start failed company_id=%s error=%r", hold.company_id, exc)
            outcome = asyncio.get_running_loop().create_future()
            outcome.set_result(HoldOutcome(HoldOutcomeKind.DIAL_FAILED, f"client start failed: {type(exc).__name__}"))
        hold.outcome = outcome
        self._watch(hold, self._await_end(hold, outcome))
        if hold.closing and not outcome.done():  # asked to close while it was starting
            await self._stop_client(hold)

    def _watch(self, hold: _Hold, coro: Any) -> None:
        task = asyncio.create_task(coro)
        hold.tasks.add(task)
        task.add_done_callback(hold.tasks.discard)

    async def _stop_client(self, hold: _Hold) -> None:
        if self._held.get(hold.company_id) is hold:
            await self.transport.stop(hold.company_id)

    async def _await_end(self, hold: _Hold, outcome_f: asyncio.Future[HoldOutcome]) -> None:
        outcome = await outcome_f
        if self._held.get(hold.company_id) is hold:
            del self._held[hold.company_id]
        for deadline in hold.ack_deadlines:  # the connection is over: its sends' acks cannot come
            deadline.cancel()
        hold.ack_deadlines.clear()
        log.info("hold end company_id=%s outcome=%s detail=%s closing=%s", hold.company_id, outcome.kind.value,
                 outcome.detail, hold.closing or "-")
        if hold.closing in ("shutdown", "lost"):
            return  # the row stays for the adopter, or is already someone else's
        kind = _OUTCOME_EVENTS.get(outcome.kind)
        if kind is not None:
            await self.publish(hold.company_id, kind, reason=outcome.detail, outcome=outcome.kind.value)
        if hold.closing == "request":
            await self._delete_row(hold)  # the workflow asked; it does not wait to hear it
            return
        await self._report_end(hold, outcome)

    async def _report_end(self, hold: _Hold, outcome: HoldOutcome) -> None:
        """Mark the row ended, tell the workflow (until it hears), then delete the row."""
        with contextlib.suppress(Exception):
            await self.holds.mark_ended(hold.company_id, hold.hold_id, outcome)
        if await self.signal(hold, SIGNAL_HOLD_ENDED, HoldEndedSignal(hold.hold_id, outcome), durable=True):
            await self._delete_row(hold)

    async def _delete_row(self, hold: _Hold) -> None:
        delay = 0.5
        while True:
            try:
                await self.holds.delete(hold.company_id, hold.hold_id)
                return
            except Exception as exc:  # PostgreSQL down: the row must not outlive the hold for long
                if self._shutting_down.is_set():
                    return
                log.warning("hold row not deleted yet company_id=%s error=%s", hold.company_id, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def signal(self, hold: _Hold, name: str, payload: Any, *, durable: bool) -> bool:
        """Signal the hold's workflow; ``durable`` ones are retried until Temporal takes them.

        Returns False when the workflow is gone (nothing to tell) or, for a non-durable signal,
        Temporal could not be reached right now.
        """
        handle = self.client.get_workflow_handle(hold.workflow_id)
        attempt = 0
        while True:
            try:
                await handle.signal(name, payload)
                return True
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return False
                if not durable or self._shutting_down.is_set():
                    log.warning("signal not delivered company_id=%s signal=%s error=%s", hold.company_id, name,
                                exc.status.name)
                    return False
            except Exception as exc:
                log.warning("signal failed company_id=%s signal=%s error=%s", hold.company_id, name, exc)
                return False
            await asyncio.sleep(_SIGNAL_RETRY_S[min(attempt, len(_SIGNAL_RETRY_S) - 1)])
            attempt += 1

    async def _alert(self, text: str, severity: str) -> None:
        try:
            await self._alerts.deliver(Alert(text=text, severity=severity))
        except Exception as exc:  # the alert channel is down: the log line above says it anyway
            log.warning("alert not delivered error=%s", type(exc).__name__)

    async def publish(self, company_id: str, kind: EventType, **data: Any) -> None:
        await self.events.publish(Event(type=kind, company_id=company_id, data=data))

    async def resume_without_workflow(self, company_id: str, jid: str, start: StartWithHold,
                                      timeout: float = 60.0) -> bool:
        """Connect a stored device whose company has no session workflow, then start the workflow
        already holding that connection: one workflow start, where a start that holds costs a task,
        an activity and a signal more (how thousands of sessions come back after Temporal lost its
        data, or on a first deployment). Returns False when the caller should start the workflow the
        usual way instead (the device did not connect, or the company is held or started elsewhere).
        """
        if not await self.transport.device_exists(jid):
            return False
        hold_id = f"resume-{uuid.uuid4()}"
        workflow_id = session_workflow_id(company_id)
        try:
            await self.holds.claim(company_id, hold_id, workflow_id, jid, None)
        except HeldElsewhereError:
            return False
        loop = asyncio.get_running_loop()
        # The workflow does not exist yet: nothing to announce "connected" to; its start says it.
        hold = _Hold(company_id, hold_id, workflow_id, announced_queue=self.me.own_queue,
                     connected=loop.create_future())
        await self._start_client(hold, jid=jid, pairing_phone=None)
        assert hold.outcome is not None and hold.connected is not None
        waits: list[asyncio.Future[Any]] = [hold.connected, hold.outcome]
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if hold.connected.done() and not hold.outcome.done():
            jid_now, phone, _push = hold.connected.result()
            if await start(company_id, hold_id, jid_now, phone, self.me.own_queue, self.me.incarnation):
                with contextlib.suppress(Exception):
                    await self.holds.announced(company_id, hold_id, self.me.own_queue)
                return True
        hold.closing = "request"  # not connected, or a workflow appeared meanwhile: hand it back
        await self._stop_client(hold)
        with contextlib.suppress(Exception):
            await self.holds.delete(company_id, hold_id)
        return False

    # ------------------------------------------------------------------ shared queue

    @activity.defn(name=ACTIVITY_HOLD_SESSION)
    async def hold_session(self, req: HoldRequest) -> HoldStarted:
        """Claim the company for this process and start its client; return at once (see module doc)."""
        cid = req.company_id
        if self._shutting_down.is_set():
            raise ApplicationError("connector shutting down", type=ERROR_CONNECTOR_SHUTDOWN, non_retryable=True)
        if len(self._held) >= self.settings.connector_max_sessions and cid not in self._held:
            raise ApplicationError("connector at its session limit", type=ERROR_CONNECTOR_SHUTDOWN,
                                   non_retryable=True)
        jid = await self.devices.device_jid(cid) or req.jid
        if jid and not await self.transport.device_exists(jid):
            log.warning("stored device missing from the store company_id=%s jid=%s: pairing anew", cid, jid)
            jid = None
        try:
            await self.holds.claim(cid, req.hold_id, req.workflow_id, jid, req.pairing_phone)
        except HeldElsewhereError as exc:
            raise ApplicationError(str(exc), exc.holder, type=ERROR_HELD_ELSEWHERE, non_retryable=True) from None
        hold = _Hold(cid, req.hold_id, req.workflow_id)
        # The client starts in the background: this activity only has to say who holds the session.
        await self._start_client(hold, jid=jid, pairing_phone=req.pairing_phone, wait=False)
        return HoldStarted(holder_queue=self.me.own_queue, holder=self.me.incarnation)

    # ------------------------------------------------------------------ incoming messages

    async def deliver_incoming(self, msg: IncomingMessage) -> None:
        """Durable first (the spool), then handed to Temporal in chat order by the spool's drain."""
        await self.spool.put(msg)

    async def _hand_off(self, msg: IncomingMessage) -> bool:
        """Signal-with-start the chat's inbox workflow (ordered, de-duplicated there); publish the event."""
        key = inbox_workflow_id(msg.company_id, msg.chat)
        async with self._chat_order.hold(key):
            if msg.media is not None and msg.media.source is not None:
                # The download key goes to the media row, not to Temporal; the inbox downloads from it.
                try:
                    await self.media.add_incoming(msg.company_id, msg.message_id, msg.chat, msg.media)
                except Exception as exc:
                    log.warning("incoming media not recorded company_id=%s message_id=%s error=%s",
                                msg.company_id, msg.message_id, type(exc).__name__)
                    return False
                msg = dataclasses.replace(msg, media=dataclasses.replace(msg.media, source=None))
            try:
                await self.client.start_workflow(
                    INBOX_WORKFLOW,
                    InboxWorkflowInput(msg.company_id, msg.chat),
                    id=key,
                    task_queue=self.settings.temporal_core_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    start_signal=SIGNAL_INBOX_MESSAGE,
                    start_signal_args=[msg],
                )
            except RPCError as exc:
                log.warning("incoming message hand-off failed company_id=%s message_id=%s error=%s",
                            msg.company_id, msg.message_id, exc.status.name)
                return False
            media = {} if msg.media is None else {
                "media": msg.media.to_wire(self.settings.api_base_url, msg.company_id)}
            await self.publish(msg.company_id, EventType.MESSAGE, messageId=msg.message_id, chat=msg.chat,
                               sender=msg.sender, text=msg.text, messageType=msg.message_type, **media,
                               **({"quoted": msg.metadata["quoted"]} if msg.metadata.get("quoted") else {}))
        return True

    # ------------------------------------------------------------------ own queue

    @activity.defn(name=ACTIVITY_SEND_MESSAGE)
    async def send_message(self, req: SendRequest) -> SendResult:
        if req.media is not None:
            return await self._send_media(req, req.media)
        try:
            result = await self._acknowledged(req.company_id, req.to, self.transport.send(
                req.company_id, req.to, req.text, req.quoted, quoted_sender=req.quoted_sender),
                session_degraded=req.session_degraded)
        except NotConnectedError as exc:
            raise ApplicationError(str(exc), type=ERROR_NOT_CONNECTED, non_retryable=True) from exc
        await self._server_acked(req.company_id, req.to, result, sent_event=True)
        return result

    # ------------------------------------------------------------------ media (issue #11)

    async def _send_media(self, req: SendRequest, media: MediaRef) -> SendResult:
        """A media send: its bytes from the blob store (the API put them there), then the transport."""
        link = self.transport.status(req.company_id)
        if link is None or not link.connected:  # before reading the store
            raise ApplicationError(f"company {req.company_id} is not connected on this connector",
                                   type=ERROR_NOT_CONNECTED, non_retryable=True)
        try:
            data = await self.blobs.get(media.sha256)
        except BlobMissing:
            raise ApplicationError(f"media {media.id} is not in the media store {self.blobs.where} (is MEDIA_STORE "
                                   "shared by the API and the connector?)", type=ERROR_MEDIA_MISSING,
                                   non_retryable=True) from None
        if hashlib.sha256(data).hexdigest() != media.sha256:
            raise ApplicationError(f"media {media.id} in the store does not match its sha256",
                                   type=ERROR_MEDIA_MISSING, non_retryable=True)
        try:
            result = await self.transport.send_media(req.company_id, req.to, media, data)
        except NotConnectedError as exc:
            raise ApplicationError(str(exc), type=ERROR_NOT_CONNECTED, non_retryable=True) from exc
        except MediaUnavailableError as exc:
            raise ApplicationError(str(exc), type=ERROR_MEDIA_UNAVAILABLE, non_retryable=True) from exc
        log.info("media sent company_id=%s message_id=%s kind=%s size=%d", req.company_id, result.message_id,
                 media.kind.value, media.size)
        await self.publish(req.company_id, EventType.MESSAGE_SENT, messageId=result.message_id, to=req.to,
                           media={"id": media.id, "type": media.kind.value, "mimetype": media.mimetype,
                                  "size": media.size, "sha256": media.sha256})
        # Its status as a text's (GET …/messages/{id}, message_ack). Not under the server-ack deadline:
        # a media send's time is mostly its upload, which says nothing about a dead connection.
        await self._server_acked(req.company_id, req.to, result, sent_event=False)
        return result

    @activity.defn(name=ACTIVITY_DOWNLOAD_MEDIA)
    async def download_media(self, req: MediaDownload) -> MediaDescriptor:
        """One attempt to download an incoming media into the blob store (the inbox workflow retries).

        Not retried here: a failure raises, named; ``MediaGone`` (expired at WhatsApp, over the size
        limit) is final, ``NotConnected`` sends the workflow to the session's current holder.
        """
        row = await self.media.get(req.company_id, req.media_id)
        if row is None:
            raise ApplicationError(f"no media {req.media_id} of {req.company_id}", type=ERROR_MEDIA_GONE,
                                   non_retryable=True)
        if row.state is not MediaState.PENDING or row.source is None:
            return row.descriptor()
        limit = self.settings.media_incoming_max_bytes
        if row.size is not None and row.size > limit:
            raise ApplicationError(f"media of {row.size} bytes is over MEDIA_INCOMING_MAX_BYTES ({limit})",
                                   type=ERROR_MEDIA_GONE, non_retryable=True)
        try:
            data = await self.transport.download_media(req.company_id, row.source)
        except NotConnectedError as exc:
            raise ApplicationError(str(exc), type=ERROR_NOT_CONNECTED, non_retryable=True) from exc
        except MediaGoneError as exc:
            raise ApplicationError(f"WhatsApp no longer has it: {exc}", type=ERROR_MEDIA_GONE,
                                   non_retryable=True) from exc
        except Exception as exc:
            error = f"download failed: {type(exc).__name__}: {exc}"[:300]
            with contextlib.suppress(Exception):
                await self.media.attempt_failed(req.company_id, req.media_id, error)
            raise ApplicationError(error, type="MediaDownloadFailed", non_retryable=True) from None
        if len(data) > limit:
            raise ApplicationError(f"media of {len(data)} bytes is over MEDIA_INCOMING_MAX_BYTES ({limit})",
                                   type=ERROR_MEDIA_GONE, non_retryable=True)
        sha256 = hashlib.sha256(data).hexdigest()
        if row.sha256 and row.sha256 != sha256:
            raise ApplicationError(f"downloaded media does not match the sha256 WhatsApp announced ({row.sha256})",
                                   type="MediaDownloadFailed", non_retryable=True)
        await self.blobs.put(data)
        descriptor = await self.media.stored(req.company_id, req.media_id, sha256=sha256, size=len(data),
                                             mimetype=_stored_mimetype(row.kind, row.mimetype, data))
        log.info("media stored company_id=%s media_id=%s kind=%s size=%d", req.company_id, req.media_id,
                 row.kind.value, len(data))
        await self.publish(req.company_id, EventType.MESSAGE_MEDIA, messageId=row.message_id, chat=row.chat,
                           media=descriptor.to_wire(self.settings.api_base_url, req.company_id))
        return descriptor

    # ------------------------------------------------------------------ beyond text (issue 11.3-11.8)

    async def _acknowledged(self, company_id: str, chat: str, send: Awaitable[SendResult], *,
                            session_degraded: bool = False) -> SendResult:
        """Run one send of the company's hold under its server-ack deadline (ACK_TIMEOUT_S).

        The transport's send returns only once WhatsApp's server acknowledged the message (as
        whatsmeow's does). A send that is still waiting at the deadline makes the hold degraded (the
        workflow re-holds once, then alerts); one acknowledged while degraded (as this hold saw it, or
        as the session said when the send was asked for) says it delivers again.
        The send runs shielded: if this activity is cancelled, its end still settles the deadline.
        """
        loop = asyncio.get_running_loop()
        hold = self._held.get(company_id)
        task: asyncio.Future[SendResult] = asyncio.ensure_future(send)
        if hold is not None:
            started = loop.time()
            deadline: asyncio.TimerHandle

            def expire() -> None:
                self._no_ack(hold, deadline, started)

            deadline = loop.call_later(self.settings.ack_timeout_s, expire)
            hold.ack_deadlines.add(deadline)

            def settle(done: asyncio.Future[SendResult]) -> None:
                error = None if done.cancelled() else done.exception()
                if done.cancelled() or isinstance(error, TimeoutError | NoServerAckError):
                    return  # no answer from the server: the deadline decides
                deadline.cancel()
                hold.ack_deadlines.discard(deadline)
                if error is None and self._held.get(company_id) is hold and (
                        hold.degraded or (session_degraded and not hold.delivering_told)):
                    hold.degraded, hold.delivering_told = False, True
                    self._watch(hold, self._report_delivering(hold))

            task.add_done_callback(settle)
        return await asyncio.shield(task)

    async def _server_acked(self, company_id: str, chat: str, result: SendResult, *, sent_event: bool) -> None:
        """Status ``server`` in PostgreSQL while the events go out: ``message_sent`` (a text), then
        ``message_ack``. Side by side, so the send's answer waits for one round trip, not two."""
        receipt = MessageReceipt(company_id, [result.message_id], MessageStatus.SERVER, chat, result.timestamp)

        async def announce() -> None:
            if sent_event:
                await self.publish(company_id, EventType.MESSAGE_SENT, messageId=result.message_id, to=chat)
            await self._publish_acks(receipt)

        await asyncio.gather(self._record_status(receipt), announce())

    def _no_ack(self, hold: _Hold, deadline: asyncio.TimerHandle, started: float) -> None:
        hold.ack_deadlines.discard(deadline)
        if hold.degraded or self._held.get(hold.company_id) is not hold or hold.closing:
            return
        hold.degraded, hold.delivering_told = True, False
        waited = asyncio.get_running_loop().time() - started
        reason = f"no server ack for a sent message in {waited:.0f} s: connected, but not delivering"
        log.warning("session degraded company_id=%s hold_id=%s waited_s=%.0f", hold.company_id, hold.hold_id, waited)
        self._watch(hold, self._report_degraded(hold, reason))

    async def _report_degraded(self, hold: _Hold, reason: str) -> None:
        await self.publish(hold.company_id, EventType.DEGRADED, reason=reason, connector=self.settings.connector_id)
        await self.signal(hold, SIGNAL_DEGRADED, DegradedSignal(hold.hold_id, reason), durable=True)

    async def _report_delivering(self, hold: _Hold) -> None:
        log.info("session delivers again company_id=%s hold_id=%s", hold.company_id, hold.hold_id)
        link = self.transport.status(hold.company_id)
        await self.publish(hold.company_id, EventType.CONNECTED, jid=link.jid if link else None,
                           reason="the server acknowledges sent messages again", connector=self.settings.connector_id)
        await self.signal(hold, SIGNAL_DELIVERING, DeliveringSignal(hold.hold_id), durable=True)

    async def message_status(self, receipt: MessageReceipt) -> None:
        """Move the messages' status forward in PostgreSQL, and publish one ``message_ack`` event each."""
        await self._record_status(receipt)
        await self._publish_acks(receipt)

    async def _record_status(self, receipt: MessageReceipt) -> None:
        try:
            await record_status(self.devices.db, receipt.company_id, receipt.message_ids, receipt.status,
                                receipt.chat, receipt.timestamp)
        except Exception as exc:  # the event still goes out; GET …/messages/{id} misses this step
            log.warning("message status not recorded company_id=%s status=%s error=%s", receipt.company_id,
                        receipt.status.value, type(exc).__name__)

    async def _publish_acks(self, receipt: MessageReceipt) -> None:
        for message_id in receipt.message_ids:
            extra = {"participant": receipt.participant} if receipt.participant else {}
            await self.publish(receipt.company_id, EventType.MESSAGE_ACK, messageId=message_id,
                               status=receipt.status.value, ack=receipt.status.ack, chat=receipt.chat,
                               at=receipt.timestamp.isoformat(), **extra)

    @activity.defn(name=ACTIVITY_MARK_READ)
    async def mark_read(self, req: MarkReadRequest) -> None:
        async with _whatsapp_errors():
            await self.transport.mark_read(req.company_id, req.chat, req.sender, req.message_ids)

    @activity.defn(name=ACTIVITY_SEND_PRESENCE)
    async def send_chat_presence(self, req: PresenceRequest) -> None:
        async with _whatsapp_errors():
            await self.transport.send_presence(req.company_id, req.chat, req.state)

    @activity.defn(name=ACTIVITY_SEND_REACTION)
    async def send_reaction(self, req: ReactionRequest) -> SendResult:
        async with _whatsapp_errors():
            result = await self._acknowledged(req.company_id, req.chat, self.transport.send_reaction(
                req.company_id, req.chat, req.message_id, req.emoji, req.sender))
        await self._server_acked(req.company_id, req.chat, result, sent_event=False)
        return result

    @activity.defn(name=ACTIVITY_CHECK_CONTACT)
    async def check_contact(self, req: ContactCheck) -> ContactInfo:
        async with _whatsapp_errors():
            return await self.transport.check_contact(req.company_id, req.phone)

    @activity.defn(name=ACTIVITY_GROUP_INFO)
    async def group_info(self, req: GroupInfoRequest) -> GroupInfo:
        async with _whatsapp_errors():
            return await self.transport.group_info(req.company_id, req.group)

    def _requested(self, req: ReleaseRequest) -> _Hold | None:
        hold = self._held.get(req.company_id)
        if hold is None or (req.hold_id and hold.hold_id != req.hold_id):
            return None
        hold.closing = "request"
        return hold

    @activity.defn(name=ACTIVITY_RELEASE_SESSION)
    async def release_session(self, req: ReleaseRequest) -> bool:
        hold = self._requested(req)
        if hold is None:
            return False
        await self._stop_client(hold)
        return True

    @activity.defn(name=ACTIVITY_LOGOUT_DEVICE)
    async def logout_device(self, req: ReleaseRequest) -> bool:
        hold = self._requested(req)
        if hold is None:
            return False
        await self.transport.logout(req.company_id)
        return True

    @activity.defn(name=ACTIVITY_TRANSPORT_CONTROL)
    async def transport_control(self, cmd: TransportCommand) -> dict[str, Any]:
        try:
            return await self.transport.control(cmd.company_id, cmd.action, cmd.params)
        except TransportControlError as exc:
            raise ApplicationError(str(exc), type="TransportControlError", non_retryable=True) from exc

    @activity.defn(name=ACTIVITY_TRANSPORT_OUTBOX)
    async def transport_outbox(self, company_id: str) -> list[OutboxEntry]:
        """What the company's phone sent, from PostgreSQL: it survives a connector's SIGKILL."""
        rows = await self.devices.db.fetch(
            """SELECT message_id, to_jid, text, sent_at, quoted, media::text AS media FROM transport_outbox
               WHERE company_id = $1 ORDER BY id""",
            company_id,
        )
        return [OutboxEntry(r["message_id"], r["to_jid"], r["text"], r["sent_at"], r["quoted"],
                            _outbox_media(r["media"])) for r in rows]

    def shared_queue_activities(self) -> list[Any]:
        return [self.hold_session, self.transport_outbox]

    def own_queue_activities(self) -> list[Any]:
        return [self.send_message, self.release_session, self.logout_device,
                self.transport_control, self.transport_outbox, self.download_media,
                self.mark_read, self.send_chat_presence, self.send_reaction, self.check_contact, self.group_info]


def _stored_mimetype(kind: MediaKind, announced: str | None, data: bytes) -> str | None:
    """The type of a downloaded media: read from its bytes, unless they say too little (a CSV document)."""
    from infra.media_intake import sniff_mimetype

    sniffed = sniff_mimetype(data)
    if sniffed is None or (sniffed in GENERIC_MIMETYPES and announced):
        return announced
    return sniffed


def _outbox_media(raw: str | None) -> MediaRef | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return MediaRef(value.get("id", ""), MediaKind(value["kind"]), value["mimetype"], value["sha256"], value["size"],
                    value.get("caption"), value.get("filename"))




@contextlib.asynccontextmanager
async def _whatsapp_errors() -> AsyncIterator[None]:
    """A transport's refusal as the ApplicationError type the API maps (409, 404, 502); never retried."""
    try:
        yield
    except NotConnectedError as exc:
        raise ApplicationError(str(exc), type=ERROR_NOT_CONNECTED, non_retryable=True) from exc
    except NotFoundOnWhatsAppError as exc:
        raise ApplicationError(str(exc), type=ERROR_NOT_FOUND, non_retryable=True) from exc
    except WhatsAppRefusedError as exc:
        raise ApplicationError(str(exc), type=ERROR_REFUSED, non_retryable=True) from exc
