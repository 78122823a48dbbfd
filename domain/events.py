"""The event model (SPEC E1), published on Redis ``whatsapp:events``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVENTS_CHANNEL = "whatsapp:events"


class EventType(StrEnum):
    QR = "qr"
    PAIRING_CODE = "pairing_code"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    REPLACED = "replaced"
    LOGGED_OUT = "logged_out"
    PAUSED = "paused"
    RESUMED = "resumed"
    FAILED = "failed"
    MESSAGE = "message"
    MESSAGE_SENT = "message_sent"
    ERROR = "error"


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """One thing that happened to one company.

    Serialised with camelCase keys: ``{"type", "companyId", "timestamp", ...}``;
    type-specific fields go in ``data`` and are flattened on the wire.
    """

    model_config = ConfigDict(frozen=True)

    type: EventType
    company_id: str
    timestamp: datetime = Field(default_factory=_now)
    data: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.data)
        body.update(
            type=self.type.value,
            companyId=self.company_id,
            timestamp=self.timestamp.isoformat(),
        )
        return body

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_wire(), separators=(",", ":"), default=str)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Event:
        rest = {k: v for k, v in body.items() if k not in {"type", "companyId", "timestamp"}}
        return cls(
            type=EventType(body["type"]),
            company_id=str(body["companyId"]),
            timestamp=datetime.fromisoformat(str(body["timestamp"])),
            data=rest,
        )
