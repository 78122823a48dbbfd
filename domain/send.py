"""The contract of sending (SPEC M1, M3): the send workflow's id and input, and connector calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain.session import SendRequest

SEND_WORKFLOW = "SendMessage"


def send_workflow_id(company_id: str, key: str) -> str:
    return f"send-{company_id}-{key}"


@dataclass
class SendMessageInput:
    request: SendRequest
    holder_queue: str
    timeout_s: float = 30.0
    # The send option "typing": the chat shows "typing…" this long (a durable timer) before the text goes.
    typing_s: float = 0.0


CONNECTOR_CALL_WORKFLOW = "ConnectorCall"


@dataclass
class ConnectorCallInput:
    """One activity of a connector's own queue, run for the API (simulator controls, outbox)."""

    activity: str
    queue: str
    arg: Any
    timeout_s: float = 15.0
