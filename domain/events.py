"""The event model (SPEC E1), published on Redis ``whatsapp:events``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from domain.addresses import phone_of

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
    # An incoming message's media was stored, or its download given up (issue #11): the final descriptor.
    MESSAGE_MEDIA = "message_media"
    ERROR = "error"
    # Additions to E1 (issue 11.3, 11.8): a sent message's status changed (server ack, delivered, read,
    # played); a session is connected but its sent messages get no server ack.
    MESSAGE_ACK = "message_ack"
    DEGRADED = "degraded"


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
        for old, value in _legacy_fields(self.type, body).items():
            body.setdefault(old, value)
        return body

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_wire(), separators=(",", ":"), default=str)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Event:
        kind = EventType(body["type"])
        rest = {k: v for k, v in body.items() if k not in {"type", "companyId", "timestamp"}}
        for old, value in _legacy_fields(kind, rest).items():
            if old in rest and rest[old] == value:
                del rest[old]  # to_wire adds it again: the event is the same
        return cls(
            type=kind,
            company_id=str(body["companyId"]),
            timestamp=datetime.fromisoformat(str(body["timestamp"])),
            data=rest,
        )


def _legacy_fields(kind: EventType, body: dict[str, Any]) -> dict[str, Any]:
    """The names the old back end's clients read, beside the new ones (nothing renamed or removed).

    ``connected`` carries ``phoneNumber`` (digits, as the old events had them), ``message``
    carries ``message`` (its text), ``error`` carries ``error`` (its reason). README "Coming
    from the old system" lists what still differs.
    """
    if kind is EventType.CONNECTED:
        phone = body.get("phone")
        if not phone and isinstance(body.get("jid"), str):
            phone = phone_of(body["jid"])
        return {"phoneNumber": phone}
    if kind is EventType.MESSAGE and "text" in body:
        return {"message": body["text"]}
    if kind is EventType.ERROR and "reason" in body:
        return {"error": body["reason"]}
    return {}
