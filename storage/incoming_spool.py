"""What waits in the incoming spool (``incoming_spool``): messages WhatsApp has delivered that Temporal
does not have yet. The connectors write and drain it (``connector/spool.py``); the API reports it in
``/metrics`` and ``/health``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.db import Database


@dataclass(frozen=True)
class SpoolSummary:
    messages: int
    oldest_s: float | None  # age of the oldest message waiting; None when none waits

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "oldestSeconds": None if self.oldest_s is None else round(self.oldest_s, 1)}


async def summary(db: Database) -> SpoolSummary:
    """Every connector's spooled messages in PostgreSQL (a connector's on-disk journal, written while
    PostgreSQL is unreachable, is counted once it has been moved here)."""
    row = await db.fetchrow(
        "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(received_at))::float8 AS oldest FROM incoming_spool")
    if row is None:  # an aggregate always answers one row
        return SpoolSummary(0, None)
    return SpoolSummary(messages=int(row["n"]), oldest_s=None if row["oldest"] is None else float(row["oldest"]))
