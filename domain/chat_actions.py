"""The contract of what the API asks a session's connector to do in or about a chat (issue 11.4-11.6):
mark messages read, show typing or recording, react to a message, check a number, read a group.

Each is one activity on the queue of the connector that holds the session (``connector.<id>``),
run for the API by a short ``ConnectorCall`` workflow; the typing shown before a send is the
``SendMessage`` workflow's own (domain.send). Errors cross processes as ``ApplicationError`` types:
``NotConnected`` (the session is not held here), ``NotFoundOnWhatsApp`` (no such group or message),
``WhatsAppRefused`` (WhatsApp answered with an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

ACTIVITY_MARK_READ = "mark_read"  # MarkReadRequest -> None
ACTIVITY_SEND_PRESENCE = "send_chat_presence"  # PresenceRequest -> None
ACTIVITY_SEND_REACTION = "send_reaction"  # ReactionRequest -> SendResult
ACTIVITY_CHECK_CONTACT = "check_contact"  # ContactCheck -> ContactInfo
ACTIVITY_GROUP_INFO = "group_info"  # GroupInfoRequest -> GroupInfo

ERROR_NOT_FOUND = "NotFoundOnWhatsApp"
ERROR_REFUSED = "WhatsAppRefused"


class ChatPresenceState(StrEnum):
    TYPING = "typing"  # "typing…"
    RECORDING = "recording"  # "recording audio…"
    PAUSED = "paused"  # stop showing either


@dataclass
class MarkReadRequest:
    company_id: str
    chat: str  # JID of the chat
    sender: str  # JID of who wrote the messages (the chat itself in a one-to-one chat)
    message_ids: list[str]


@dataclass
class PresenceRequest:
    company_id: str
    chat: str
    state: ChatPresenceState


@dataclass
class ReactionRequest:
    company_id: str
    chat: str
    message_id: str  # the message reacted to
    emoji: str  # "" takes the reaction back
    sender: str | None = None  # who wrote that message; None: this session's own message


@dataclass
class ContactCheck:
    company_id: str
    phone: str  # E.164 digits


@dataclass
class ContactInfo:
    phone: str
    on_whatsapp: bool
    jid: str | None = None
    lid: str | None = None  # the number's hidden-user id, where the session's store knows it
    business_name: str | None = None  # a verified business name, if WhatsApp gave one


@dataclass
class GroupInfoRequest:
    company_id: str
    group: str  # …@g.us


@dataclass
class GroupParticipant:
    jid: str
    phone: str | None = None
    lid: str | None = None
    is_admin: bool = False
    is_super_admin: bool = False
    display_name: str | None = None


@dataclass
class GroupInfo:
    jid: str
    subject: str
    owner: str | None = None
    topic: str | None = None
    created_at: int | None = None  # unix seconds
    participants: list[GroupParticipant] = field(default_factory=list)
