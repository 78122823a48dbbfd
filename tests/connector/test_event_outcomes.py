"""What each whatsmeow event does to a session (SPEC S3-S5), with neonize's own event types.

``outcome_for_event`` is the one place a whatsmeow event becomes a session outcome; the session
workflow's tests (tests/sessions/test_lifecycle.py) show what each outcome does: ``replaced`` waits
for a relink and never dials again, ``logged_out`` deletes the credentials, a temporary ban waits
for its expiry, the rest back off and reconnect.
"""

from __future__ import annotations

from typing import Any

import pytest
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
)

from connector.neonize_transport import outcome_for_event
from domain.session import HoldOutcomeKind

LOGGED_OUT_REASON = LoggedOutEv.DESCRIPTOR.fields_by_name["Reason"].enum_type.values_by_name["LOGGED_OUT"].number
SPAM_BAN = TemporaryBanEv.DESCRIPTOR.fields_by_name["Code"].enum_type.values_by_name["SEND_TO_TOO_MANY_PEOPLE"].number
GENERIC_FAILURE = ConnectFailureEv.DESCRIPTOR.fields_by_name["Reason"].enum_type.values_by_name["GENERIC"].number


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        # 440: another client took the number; reconnecting would fight it (the old system's loop).
        (StreamReplacedEv(), HoldOutcomeKind.REPLACED),
        (LoggedOutEv(OnConnect=False, Reason=LOGGED_OUT_REASON), HoldOutcomeKind.LOGGED_OUT),
        (LoggedOutEv(OnConnect=True, Reason=LOGGED_OUT_REASON), HoldOutcomeKind.LOGGED_OUT),
        (TemporaryBanEv(Code=SPAM_BAN, Expire=7200), HoldOutcomeKind.TEMP_BANNED),
        (ConnectFailureEv(Reason=GENERIC_FAILURE, Message="failure"), HoldOutcomeKind.DIAL_FAILED),
        # 405: this client is too old for WhatsApp; retrying cannot help, an operator must update it.
        (ClientOutdatedEv(), HoldOutcomeKind.CLIENT_OUTDATED),
        (StreamErrorEv(Code="503"), HoldOutcomeKind.DROPPED),
        (DisconnectedEv(), HoldOutcomeKind.DROPPED),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, HoldOutcomeKind) else v.value,
)
def test_terminal_events_end_the_session_the_way_the_spec_says(event: Any, kind: HoldOutcomeKind) -> None:
    outcome = outcome_for_event(event)
    assert outcome is not None and outcome.kind is kind, outcome


def test_a_temporary_ban_waits_for_its_expiry() -> None:
    outcome = outcome_for_event(TemporaryBanEv(Code=SPAM_BAN, Expire=7200))
    assert outcome is not None and outcome.ban_expires_s == 7200
    assert "ban" in outcome.detail


def test_a_440_says_so() -> None:
    outcome = outcome_for_event(StreamReplacedEv())
    assert outcome is not None and "440" in outcome.detail


# A missed keepalive is not a drop: whatsmeow restores the socket itself (the transport only gives up
# after NEONIZE_KEEPALIVE_GRACE_S, see tests/connector/test_neonize_model.py).
@pytest.mark.parametrize("event", [ConnectedEv(), PairStatusEv(), MessageEv(), KeepAliveTimeoutEv(ErrorCount=3)],
                         ids=lambda e: type(e).__name__)
def test_other_events_end_nothing(event: Any) -> None:
    assert outcome_for_event(event) is None
