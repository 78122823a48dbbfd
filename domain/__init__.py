"""Vocabulary shared by every process: ids, states, events, addresses, settings. No I/O."""

from domain.addresses import InvalidAddress, Jid, normalize_phone, parse_jid, phone_of, recipient_jid
from domain.company import InvalidCompanyId, normalize_company_id
from domain.events import EVENTS_CHANNEL, Event, EventType
from domain.settings import Settings, build_database_url
from domain.states import SessionState

__all__ = [
    "EVENTS_CHANNEL",
    "Event",
    "EventType",
    "InvalidAddress",
    "InvalidCompanyId",
    "Jid",
    "SessionState",
    "Settings",
    "build_database_url",
    "normalize_company_id",
    "normalize_phone",
    "parse_jid",
    "phone_of",
    "recipient_jid",
]
