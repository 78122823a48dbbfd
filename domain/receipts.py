"""What happened to a sent message (issue 11.3): its status, and the receipts that move it.

A message sent through the service is ``server`` once WhatsApp's server acknowledged it (whatsmeow's
send returns only then), then ``delivered`` to the recipient's phone, ``read``, and, for a voice note
or a video, ``played``. Receipts may arrive late, twice or out of order (a group has one per member):
the status only ever moves forward. ``ack`` is the number gateways users come from use for the same
steps (1 server, 2 delivered, 3 read, 4 played).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class MessageStatus(StrEnum):
    SERVER = "server"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"

    @property
    def ack(self) -> int:
        """1 server, 2 delivered, 3 read, 4 played: higher is further along."""
        return _ACK[self]


_ACK = {MessageStatus.SERVER: 1, MessageStatus.DELIVERED: 2, MessageStatus.READ: 3, MessageStatus.PLAYED: 4}


@dataclass
class MessageReceipt:
    """One receipt from WhatsApp for messages this company sent (or the server ack of one send)."""

    company_id: str
    message_ids: list[str]
    status: MessageStatus
    chat: str  # the chat the messages went to (a group's JID for a group)
    timestamp: datetime
    participant: str | None = None  # who sent the receipt, in a group
    extra: dict[str, str] = field(default_factory=dict)
