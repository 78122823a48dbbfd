from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from connector import whatsmeow_model
from connector.devices import DeviceDirectory
from connector.neonize_transport import NeonizeTransport
from tests.sessions.conftest import (  # noqa: F401  (shared fixtures)
    company_id,
    model_runtime,
    store_dsn,
    ts_stack,
    wa,
    wa_store,
)


class Listener:
    """Records what a transport tells the connector, as the hold's listener would hear it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.messages: list[Any] = []
        self.receipts: list[Any] = []
        self.qrs: list[str] = []
        self.jid: str | None = None

    async def qr(self, code, sequence, expires_at) -> None:
        self.calls.append("qr")
        self.qrs.append(code)

    async def pairing_code(self, code) -> None:
        self.calls.append("pairing_code")

    async def connected(self, jid, phone, push_name) -> None:
        self.calls.append("connected")
        self.jid = jid

    async def disconnected(self, reason) -> None:
        self.calls.append("disconnected")

    async def message(self, msg) -> None:
        self.calls.append("message")
        self.messages.append(msg)

    async def receipt(self, receipt) -> None:
        self.calls.append("receipt")
        self.receipts.append(receipt)


@pytest.fixture
async def store(store_dsn, db) -> DeviceDirectory:  # noqa: F811
    return DeviceDirectory(db)


@pytest.fixture
def model(model_runtime) -> Iterator[whatsmeow_model.GoRuntime]:  # noqa: F811
    yield model_runtime


@pytest.fixture
async def model_transport(model, store_dsn, store) -> AsyncIterator[NeonizeTransport]:  # noqa: F811
    transport = NeonizeTransport(store_dsn, store, client_factory=whatsmeow_model.NewClient, connector_id="t")
    transport.tuning.stop_timeout_s = 5
    transport.tuning.leak_grace_s = 0.3
    yield transport
    await transport.close()
