"""The one way every process connects to Temporal."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from domain.settings import Settings

log = logging.getLogger("waorch.temporal")


async def connect_temporal(settings: Settings, *, wait_s: float = 60.0, identity: str | None = None) -> Client:
    """Connect, waiting up to ``wait_s`` for the server (it may still be starting)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    delay = 0.2
    while True:
        try:
            kwargs = {"identity": identity} if identity else {}
            return await Client.connect(
                settings.temporal_target,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                **kwargs,  # type: ignore[arg-type]
            )
        except RuntimeError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("temporal not reachable yet target=%s error=%s", settings.temporal_target, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
