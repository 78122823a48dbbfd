"""The transport protocol: what the connector needs from a WhatsApp implementation.

Two implementations: :mod:`connector.neonize_transport` (real WhatsApp through
whatsmeow) and :mod:`connector.simulator` (SPEC O5). A transport owns the
clients; the connector's activities (:mod:`connector.activities`) turn its
callbacks into workflow signals and Redis events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from domain.chat_actions import ChatPresenceState, ContactInfo, GroupInfo
from domain.inbox import IncomingMessage
from domain.media import MediaRef
from domain.receipts import MessageReceipt
from domain.session import HoldOutcome, SendResult


class NotConnectedError(RuntimeError):
    """The company has no connected client in this connector."""


class TransportControlError(ValueError):
    """A phone-side control (tests, demos) that the transport cannot apply now, or at all."""


class MediaGoneError(RuntimeError):
    """An incoming media WhatsApp no longer has (expired, deleted): downloading again will not help."""


class MediaUnavailableError(RuntimeError):
    """This connector cannot send the media kind (neonize needs ffmpeg/ffprobe for it)."""


class WhatsAppRefusedError(RuntimeError):
    """WhatsApp (or whatsmeow) answered a request with an error; the message is its reason."""


class NotFoundOnWhatsAppError(WhatsAppRefusedError):
    """WhatsApp has no such thing: a group that does not exist, or one this number is not in."""


class NoServerAckError(WhatsAppRefusedError):
    """A send gave up waiting for the server's acknowledgement: it is unknown whether it went out."""


@dataclass
class TransportLeaks:
    """Resources a transport holds that it cannot give back (SPEC: bounded resources)."""

    leaked_threads: int = 0  # client threads that never returned after their client was stopped
    store_connections: int | None = None  # PostgreSQL connections of the WhatsApp store (None: not counted)
    clients_started: int = 0


class SessionListener(Protocol):
    """Callbacks a transport makes while it holds one company's connection."""

    async def qr(self, code: str, sequence: int, expires_at: datetime | None) -> None: ...

    async def pairing_code(self, code: str) -> None: ...

    async def connected(self, jid: str, phone: str | None, push_name: str | None) -> None: ...

    async def disconnected(self, reason: str) -> None: ...

    async def message(self, msg: IncomingMessage) -> None: ...

    async def receipt(self, receipt: MessageReceipt) -> None:
        """Messages this session sent were delivered, read or played (issue 11.3)."""
        ...


@dataclass
class LinkStatus:
    company_id: str
    connected: bool
    jid: str | None = None


class Transport(Protocol):
    name: str

    async def start(
        self, company_id: str, *, jid: str | None, pairing_phone: str | None, listener: SessionListener
    ) -> asyncio.Future[HoldOutcome]:
        """Begin connecting (stored device ``jid``, or a fresh pairing when None).

        Returns a future resolved with how this connection ended; it is resolved
        exactly once, by a terminal event, :meth:`stop` or :meth:`logout`.
        """
        ...

    async def stop(self, company_id: str) -> None:
        """Close the connection and keep the credentials (SPEC S9). Bounded in time."""
        ...

    async def logout(self, company_id: str) -> None:
        """Unlink the device at WhatsApp and forget the credentials."""
        ...

    async def pair_code(self, company_id: str, phone: str) -> str:
        """Ask for a pairing code for ``phone`` on a connection waiting to pair."""
        ...

    async def send(self, company_id: str, to: str, text: str, quoted: str | None = None,
                   quoted_sender: str | None = None) -> SendResult:
        """Send a text, as a reply to message ``quoted`` (written by ``quoted_sender``: by default the
        recipient, or who the transport remembers wrote it) when given; raises
        :class:`NotConnectedError` when not connected here."""
        ...

    # ---- media (issue #11)

    async def send_media(self, company_id: str, to: str, media: MediaRef, data: bytes) -> SendResult:
        """Send a photo, video, audio, voice note, document or sticker (``data``: its checked bytes).

        Raises :class:`NotConnectedError`, :class:`MediaUnavailableError`.
        """
        ...

    async def download_media(self, company_id: str, source: str) -> bytes:
        """The bytes of an incoming media (``source``: the download key the transport gave its descriptor).

        Raises :class:`NotConnectedError`, :class:`MediaGoneError` (not worth retrying); anything else
        is worth another attempt.
        """
        ...

    def media_unavailable(self) -> dict[str, str]:
        """Media kinds this transport cannot send here, each with why (empty: all of them)."""
        ...

    def status(self, company_id: str) -> LinkStatus | None: ...

    async def device_exists(self, jid: str) -> bool:
        """Whether the transport's own store still holds credentials for ``jid``."""
        ...

    async def close(self) -> None:
        """Stop every connection without logging out (graceful shutdown)."""
        ...

    async def control(self, company_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """A phone-side action (scan, drop, 440, logout, incoming, …): the simulator, or neonize's model.

        Raises :class:`TransportControlError` where it does not apply.
        """
        ...

    async def leaks(self) -> TransportLeaks:
        """What this transport could not give back: leaked threads, store connections."""
        ...

    # Chat actions and lookups (issue 11.4-11.6). Each raises NotConnectedError when the company is
    # not connected here, WhatsAppRefusedError (or NotFoundOnWhatsAppError) when WhatsApp says no.
    # A send (text or reaction) returns only once WhatsApp's server acknowledged it (whatsmeow's
    # SendMessage waits for that ack); one that gave up waiting raises NoServerAckError.

    async def mark_read(self, company_id: str, chat: str, sender: str, message_ids: list[str]) -> None:
        """Send read receipts for messages received in ``chat`` from ``sender``."""
        ...

    async def send_presence(self, company_id: str, chat: str, state: ChatPresenceState) -> None:
        """Show "typing…" / "recording…" in ``chat``, or stop showing it."""
        ...

    async def send_reaction(self, company_id: str, chat: str, message_id: str, emoji: str,
                            sender: str | None) -> SendResult:
        """React to a message (``sender``: who wrote it, None for this session's own); "" takes it back."""
        ...

    async def check_contact(self, company_id: str, phone: str) -> ContactInfo:
        """Whether ``phone`` (E.164 digits) is on WhatsApp, with its JID, and its LID where known."""
        ...

    async def group_info(self, company_id: str, group: str) -> GroupInfo:
        """Subject and participants of a ``…@g.us`` group this number is in."""
        ...


@runtime_checkable
class ResourceReporting(Protocol):
    """A transport that calls ``on_resources`` whenever its leak figures may have changed."""

    on_resources: Callable[[], Awaitable[None]] | None
