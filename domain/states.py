"""Session states (SPEC S11): one vocabulary for API, events and search attributes."""

from __future__ import annotations

from enum import StrEnum


class SessionState(StrEnum):
    STARTING = "starting"
    QR = "qr"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    REPLACED = "replaced"
    LOGGED_OUT = "logged_out"
    PAUSED = "paused"
    FAILED = "failed"
    STOPPED = "stopped"
    # An addition to S11 (issue 11.8): held and connected, but sent messages get no server ack.
    DEGRADED = "degraded"

    @property
    def is_healthy(self) -> bool:
        return self is SessionState.CONNECTED

    @property
    def holds_connection(self) -> bool:
        """A connector holds a live connection: sends may go out (a degraded session's send is its probe)."""
        return self in {SessionState.CONNECTED, SessionState.DEGRADED}

    @property
    def needs_operator(self) -> bool:
        """States a session leaves only by a human action (relink, initialize, resume)."""
        return self in {
            SessionState.REPLACED,
            SessionState.LOGGED_OUT,
            SessionState.FAILED,
            SessionState.PAUSED,
        }
