"""The connector's activities: hold a session, and the per-connector operations on it.

``hold_session`` runs on the shared queue (any live connector may take a
session); it lives as long as the connection, heartbeating, and turns the
transport's callbacks into signals to the session workflow and events on
Redis (SPEC E1). The other activities run on this connector's own queue,
which the workflow and the API reach through ``SessionStatus.holder_queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from connector.devices import DeviceDirectory
from connector.transport import NotConnectedError, Transport, TransportControlError
from domain.events import Event, EventType
from domain.inbox import INBOX_WORKFLOW, SIGNAL_INBOX_MESSAGE, InboxWorkflowInput, IncomingMessage, inbox_workflow_id
from domain.session import (
    ACTIVITY_HOLD_SESSION,
    ACTIVITY_LOGOUT_DEVICE,
    ACTIVITY_RELEASE_SESSION,
    ACTIVITY_SEND_MESSAGE,
    ACTIVITY_TRANSPORT_CONTROL,
    ACTIVITY_TRANSPORT_OUTBOX,
    ERROR_CONNECTOR_SHUTDOWN,
    ERROR_NOT_CONNECTED,
    SIGNAL_CONNECTED,
    SIGNAL_DISCONNECTED,
    SIGNAL_PAIRING_CODE,
    SIGNAL_QR,
    ConnectedSignal,
    DisconnectedSignal,
    HoldOutcome,
    HoldOutcomeKind,
    HoldRequest,
    OutboxEntry,
    PairingCodeSignal,
    QrSignal,
    SendRequest,
    SendResult,
    TransportCommand,
)
from domain.settings import Settings
from infra.redis import EventPublisher

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


class _HoldListener:
    """Transport callbacks of one hold attempt → workflow signals + Redis events."""

    def __init__(self, acts: ConnectorActivities, req: HoldRequest) -> None:
        self._acts = acts
        self._req = req
        self._wf = acts.client.get_workflow_handle(req.workflow_id)
        self._queue = acts.settings.connector_own_queue

    async def _signal(self, name: str, payload: Any) -> None:
        try:
            await self._wf.signal(name, payload)
        except Exception as exc:  # the workflow may be gone; the connection must not crash for it
            log.warning("signal failed company_id=%s signal=%s error=%s", self._req.company_id, name, exc)

    async def _event(self, kind: EventType, **data: Any) -> None:
        await self._acts.events.publish(Event(type=kind, company_id=self._req.company_id, data=data))

    async def qr(self, code: str, sequence: int, expires_at: datetime | None) -> None:
        await self._signal(SIGNAL_QR, QrSignal(code, sequence, self._queue, expires_at, self._req.hold_id))
        await self._event(EventType.QR, qr=code, sequence=sequence,
                          expiresAt=expires_at.isoformat() if expires_at else None)

    async def pairing_code(self, code: str) -> None:
        await self._signal(SIGNAL_PAIRING_CODE, PairingCodeSignal(code, self._queue, self._req.hold_id))
        await self._event(EventType.PAIRING_CODE, pairingCode=code)

    async def connected(self, jid: str, phone: str | None, push_name: str | None) -> None:
        await self._acts.devices.remember(self._req.company_id, jid, phone, push_name)
        await self._signal(
            SIGNAL_CONNECTED, ConnectedSignal(jid, self._queue, phone, push_name, self._req.hold_id)
        )
        await self._event(EventType.CONNECTED, jid=jid, phone=phone, connector=self._acts.settings.connector_id)
        log.info("connected company_id=%s jid=%s", self._req.company_id, jid)

    async def disconnected(self, reason: str) -> None:
        await self._signal(SIGNAL_DISCONNECTED, DisconnectedSignal(reason, self._req.hold_id))

    async def message(self, msg: IncomingMessage) -> None:
        await self._acts.deliver_incoming(msg)


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


class ConnectorActivities:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        transport: Transport,
        devices: DeviceDirectory,
        events: EventPublisher,
    ) -> None:
        self.settings = settings
        self.client = client
        self.transport = transport
        self.devices = devices
        self.events = events
        self._shutting_down = asyncio.Event()
        self._holds: dict[str, asyncio.Task[Any]] = {}
        self._chat_order = KeyedLocks()

    @property
    def held(self) -> list[str]:
        return sorted(self._holds)

    async def shutdown(self, timeout: float = 15.0) -> None:
        """SIGTERM (SPEC S9): close every connection without logout and fail every hold
        as "connector shutting down", so each session is re-held by the next connector."""
        self._shutting_down.set()
        pending = [t for t in self._holds.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        await self.transport.close()

    # ------------------------------------------------------------------ shared queue

    @activity.defn(name=ACTIVITY_HOLD_SESSION)
    async def hold_session(self, req: HoldRequest) -> HoldOutcome:
        cid = req.company_id
        if self._shutting_down.is_set():
            raise ApplicationError("connector shutting down", type=ERROR_CONNECTOR_SHUTDOWN, non_retryable=True)
        current = asyncio.current_task()
        assert current is not None
        self._holds[cid] = current
        try:
            return await self._hold(req)
        finally:
            if self._holds.get(cid) is current:
                del self._holds[cid]

    async def _hold(self, req: HoldRequest) -> HoldOutcome:
        cid = req.company_id
        jid = await self.devices.device_jid(cid) or req.jid
        if jid and not await self.transport.device_exists(jid):
            log.warning("stored device missing from the store company_id=%s jid=%s: pairing anew", cid, jid)
            jid = None
        log.info("hold start company_id=%s resume=%s", cid, bool(jid))
        outcome_f = await self.transport.start(
            cid, jid=jid, pairing_phone=req.pairing_phone, listener=_HoldListener(self, req)
        )
        hb = activity.info().heartbeat_timeout
        interval = max(0.5, hb.total_seconds() / 3) if hb else 5.0
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(self._shutting_down.wait())
        try:
            while not outcome_f.done():
                activity.heartbeat()
                waits: set[asyncio.Future[Any]] = {outcome_f, stop_wait}
                await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                if stop_wait.done() and not outcome_f.done():
                    await self.transport.stop(cid)
                    raise ApplicationError(
                        "connector shutting down", type=ERROR_CONNECTOR_SHUTDOWN, non_retryable=True
                    )
        except asyncio.CancelledError:
            # Cancelled by the workflow (pause, logout, remove) or by worker shutdown: close, keep credentials.
            await asyncio.shield(self.transport.stop(cid))
            raise
        finally:
            stop_wait.cancel()
        outcome = outcome_f.result()
        log.info("hold end company_id=%s outcome=%s detail=%s", cid, outcome.kind.value, outcome.detail)
        kind = _OUTCOME_EVENTS.get(outcome.kind)
        if kind is not None:
            await self.events.publish(
                Event(type=kind, company_id=cid, data={"reason": outcome.detail, "outcome": outcome.kind.value})
            )
        return outcome

    async def deliver_incoming(self, msg: IncomingMessage) -> None:
        """Signal-with-start the chat's inbox workflow (ordered, de-duplicated there) and publish the event.

        Messages of one chat are handed over one at a time in arrival order: the
        transports call this from their own threads/tasks, so without the per-chat
        lock two messages could overtake each other on the way to Temporal. A
        failed hand-off is retried (Temporal briefly unreachable) before it is
        reported as an error event; WhatsApp has already acknowledged the message.
        """
        key = inbox_workflow_id(msg.company_id, msg.chat)
        async with self._chat_order.hold(key):  # events of one chat leave in order too
            if await self._signal_inbox(msg):
                event = Event(
                    type=EventType.MESSAGE, company_id=msg.company_id,
                    data={"messageId": msg.message_id, "chat": msg.chat, "sender": msg.sender,
                          "text": msg.text, "messageType": msg.message_type},
                )
            else:
                event = Event(
                    type=EventType.ERROR, company_id=msg.company_id,
                    data={"reason": "incoming message not handed to Temporal", "messageId": msg.message_id,
                          "chat": msg.chat},
                )
            await self.events.publish(event)

    async def _signal_inbox(self, msg: IncomingMessage) -> bool:
        delays = [0.2, 0.5, 1, 2, 5, 10, 15]  # ~34 s on top of the client's own RPC retries
        for attempt in range(len(delays) + 1):
            try:
                await self.client.start_workflow(
                    INBOX_WORKFLOW,
                    InboxWorkflowInput(msg.company_id, msg.chat),
                    id=inbox_workflow_id(msg.company_id, msg.chat),
                    task_queue=self.settings.temporal_core_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    start_signal=SIGNAL_INBOX_MESSAGE,
                    start_signal_args=[msg],
                )
                return True
            except RPCError as exc:
                if attempt == len(delays):
                    log.error("incoming message lost company_id=%s message_id=%s error=%s",
                              msg.company_id, msg.message_id, exc.status.name)
                    return False
                log.warning("incoming message hand-off retry company_id=%s attempt=%d error=%s",
                            msg.company_id, attempt + 1, exc.status.name)
                await asyncio.sleep(delays[attempt])
        return False

    # ------------------------------------------------------------------ own queue

    @activity.defn(name=ACTIVITY_SEND_MESSAGE)
    async def send_message(self, req: SendRequest) -> SendResult:
        try:
            result = await self.transport.send(req.company_id, req.to, req.text, req.quoted)
        except NotConnectedError as exc:
            raise ApplicationError(str(exc), type=ERROR_NOT_CONNECTED, non_retryable=True) from exc
        await self.events.publish(
            Event(type=EventType.MESSAGE_SENT, company_id=req.company_id,
                  data={"messageId": result.message_id, "to": req.to})
        )
        return result

    @activity.defn(name=ACTIVITY_RELEASE_SESSION)
    async def release_session(self, company_id: str) -> bool:
        if self.transport.status(company_id) is None:
            return False
        await self.transport.stop(company_id)
        return True

    @activity.defn(name=ACTIVITY_LOGOUT_DEVICE)
    async def logout_device(self, company_id: str) -> bool:
        if self.transport.status(company_id) is None:
            return False
        await self.transport.logout(company_id)
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
            "SELECT message_id, to_jid, text, sent_at, quoted FROM transport_outbox WHERE company_id = $1 ORDER BY id",
            company_id,
        )
        return [OutboxEntry(r["message_id"], r["to_jid"], r["text"], r["sent_at"], r["quoted"]) for r in rows]

    def shared_queue_activities(self) -> list[Any]:
        return [self.hold_session, self.transport_outbox]

    def own_queue_activities(self) -> list[Any]:
        return [self.send_message, self.release_session, self.logout_device,
                self.transport_control, self.transport_outbox]
