"""WhatsApp addresses (SPEC M1, M5).

A JID is ``user[:device]@server``. ``@lid`` addresses are opaque ids, not
phone numbers: they keep their suffix end to end and are never turned into a
``@s.whatsapp.net`` address by guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers

USER_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
KNOWN_SERVERS = frozenset({USER_SERVER, LID_SERVER, GROUP_SERVER, "c.us", "broadcast", "newsletter"})

_JID = re.compile(r"^(?P<user>[0-9A-Za-z.\-]{1,64})(?:[:.](?P<device>[0-9]{1,5}))?@(?P<server>[a-z.]{1,32})$")


class InvalidAddress(ValueError):
    """Raised for a phone number or JID that cannot be used as a recipient."""


@dataclass(frozen=True, slots=True)
class Jid:
    user: str
    server: str
    device: int = 0

    def __str__(self) -> str:
        return f"{self.user}@{self.server}"

    @property
    def is_lid(self) -> bool:
        return self.server == LID_SERVER

    @property
    def is_group(self) -> bool:
        return self.server == GROUP_SERVER

    @property
    def phone(self) -> str | None:
        """E.164 digits for a phone-number JID; ``None`` for ``@lid`` and groups."""
        if self.server in (USER_SERVER, "c.us") and self.user.isdigit():
            return self.user
        return None


def parse_jid(text: str) -> Jid:
    """Parse ``user[:device]@server``; the device suffix is kept apart, not lost.

    Raises:
        InvalidAddress: not a JID of a known WhatsApp server.
    """
    match = _JID.match(text.strip())
    if not match or match["server"] not in KNOWN_SERVERS:
        raise InvalidAddress(f"{text!r} is not a WhatsApp JID (user@s.whatsapp.net, @lid or @g.us)")
    server = USER_SERVER if match["server"] == "c.us" else match["server"]
    return Jid(user=match["user"], server=server, device=int(match["device"] or 0))


def normalize_phone(text: str, default_region: str | None = None) -> str:
    """Validate a phone number with ``phonenumbers``; return its E.164 digits (no ``+``).

    Raises:
        InvalidAddress: not a valid number.
    """
    raw = text.strip()
    candidate = raw if raw.startswith("+") or default_region else "+" + raw
    try:
        number = phonenumbers.parse(candidate, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress(f"{raw!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidAddress(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def recipient_jid(to: str) -> Jid:
    """A recipient given as a JID (kept as is, ``@lid`` included) or a phone number."""
    if "@" in to:
        return parse_jid(to)
    return Jid(user=normalize_phone(to), server=USER_SERVER)


def phone_of(jid_text: str) -> str | None:
    """Phone digits of a JID string, or ``None`` for ``@lid``/group/unknown addresses."""
    try:
        return parse_jid(jid_text).phone
    except InvalidAddress:
        return None
