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

    A number with a leading ``+`` is international. One without is read in
    ``default_region`` first (``8 999 123-45-67`` and ``999 123-45-67`` in ``RU``
    are ``79991234567``), then as international digits (``79991234567``,
    ``4915112345678``); with no region, only as international digits.

    Raises:
        InvalidAddress: not a valid number; the message names the region tried.
    """
    raw = text.strip()
    if raw.startswith("+"):
        readings: list[tuple[str, str | None]] = [(raw, None)]
    elif default_region:
        readings = [(raw, default_region), ("+" + raw, None)]
    else:
        readings = [("+" + raw, None)]
    problem = "not a valid phone number"
    for candidate, region in readings:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException as exc:
            problem = f"not a phone number: {exc}"
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
        problem = "not a valid phone number"
    if raw.startswith("+"):
        raise InvalidAddress(f"{raw!r} is {problem}")
    if default_region:
        raise InvalidAddress(f"{raw!r} is {problem} (tried as a {default_region} number, the "
                             "DEFAULT_PHONE_REGION, and as international digits)")
    raise InvalidAddress(f"{raw!r} is {problem} (tried as international digits: no DEFAULT_PHONE_REGION is set "
                         "for numbers without a leading +)")


def recipient_jid(to: str, default_region: str | None = None) -> Jid:
    """A recipient given as a JID (kept as is, ``@lid`` included) or a phone number."""
    if "@" in to:
        return parse_jid(to)
    return Jid(user=normalize_phone(to, default_region), server=USER_SERVER)


def phone_of(jid_text: str) -> str | None:
    """Phone digits of a JID string, or ``None`` for ``@lid``/group/unknown addresses."""
    try:
        return parse_jid(jid_text).phone
    except InvalidAddress:
        return None
