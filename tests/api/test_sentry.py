"""SPEC H5: Sentry is a no-op without a DSN; with one, a failing activity is reported once,
tagged with component, operation and company id (and never carries the message text)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from domain.send import SendMessageInput
from domain.session import SendRequest
from domain.settings import Settings
from infra.sentry import close_sentry, init_sentry, sentry_enabled, sentry_interceptors
from workflows.send import ConnectorCallWorkflow, SendMessageWorkflow

pytestmark = pytest.mark.timeout(60)


class Captured(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event" and item.payload.json is not None:
                self.events.append(item.payload.json)


@activity.defn(name="send_message")
async def failing_send(req: SendRequest) -> None:
    raise ApplicationError("the phone is on fire", type="Boom", non_retryable=True)


async def test_sentry_off_without_dsn_and_reports_activity_failures_with_tags(
    client: Client, api_settings: Settings
) -> None:
    assert init_sentry(api_settings, "worker") is False and sentry_interceptors() == []
    captured = Captured()
    settings = api_settings.model_copy(update={"sentry_dsn": SecretStr("https://public@sentry.invalid/1")})
    try:
        assert init_sentry(settings, "connector", transport=captured) is True and sentry_enabled()
        core, conn = f"core-{uuid.uuid4().hex[:6]}", f"conn-{uuid.uuid4().hex[:6]}"
        cid = f"company_s{uuid.uuid4().hex[:8]}"
        async with (
            Worker(client, task_queue=core, workflows=[SendMessageWorkflow, ConnectorCallWorkflow]),
            Worker(client, task_queue=conn, activities=[failing_send], interceptors=sentry_interceptors()),
        ):
            with pytest.raises(WorkflowFailureError):
                await client.execute_workflow(
                    SendMessageWorkflow.run,
                    SendMessageInput(SendRequest(cid, "79001234567@s.whatsapp.net", "secret text"), conn),
                    id=f"send-{cid}-x", task_queue=core,
                )
    finally:
        close_sentry()
    assert not sentry_enabled()
    reported = [e for e in captured.events if e.get("tags", {}).get("company_id") == cid]
    assert len(reported) == 1, captured.events
    tags = reported[0]["tags"]
    assert tags["component"] == "connector" and tags["operation"] == "send_message"
    assert "secret text" not in str(reported[0])
