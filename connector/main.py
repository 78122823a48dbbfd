"""The connector process: the only owner of WhatsApp clients (SPEC S8).

It polls the shared queue ``connector`` (hold-a-session tasks, any live
connector may take one) and its own ``connector.<id>`` (sends, logouts,
simulator controls for the sessions it holds).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from temporalio import activity
from temporalio.worker import Worker

from domain.settings import Settings
from infra.process import stop_event_on_signals
from infra.temporal import connect_temporal

log = logging.getLogger("waorch.connector")


@dataclass
class ConnectorInfo:
    connector_id: str
    transport: str
    own_queue: str


class ConnectorControl:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @activity.defn(name="describe_connector")
    async def describe_connector(self) -> ConnectorInfo:
        s = self._settings
        return ConnectorInfo(s.connector_id, s.wa_transport, s.connector_own_queue)


async def run_connector(settings: Settings, stop: asyncio.Event | None = None) -> None:
    client = await connect_temporal(settings, identity=f"connector@{settings.connector_id}")
    stop = stop or stop_event_on_signals()
    control = ConnectorControl(settings)
    own = Worker(client, task_queue=settings.connector_own_queue, activities=[control.describe_connector])
    log.info("connector started id=%s transport=%s", settings.connector_id, settings.wa_transport)
    async with own:
        await stop.wait()
    log.info("connector stopped id=%s", settings.connector_id)
