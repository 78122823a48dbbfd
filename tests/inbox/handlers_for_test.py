"""Handlers named by import path in tests (the ``callable`` handler type)."""

from __future__ import annotations

from typing import Any


async def shout(event: dict[str, Any]) -> dict[str, str]:
    return {"reply": str(event.get("text", "")).upper() + "!"}
