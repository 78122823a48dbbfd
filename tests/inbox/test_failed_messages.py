"""Failed messages wait for a person (issue #15.1): listed, counted in /metrics and /health, redelivered or
discarded through the API, the CLI's API and a Temporal signal (as the UI sends it); one alert on a
company's first failure, a daily reminder while any remain, nothing for a company with none."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import WorkflowExecutionStatus

from api.app import create_app
from cli.embedded import wait_until
from domain.inbox import (
    FAILED_REMINDER_WORKFLOW,
    SIGNAL_DISCARD,
    FailedMessagesSummary,
    failed_message_workflow_id,
)
from storage import failed_messages
from tests.inbox.conftest import InboxStack

pytestmark = pytest.mark.timeout(180)

ADMIN_KEY = "failed-admin-key-" + "z" * 16
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = "79990000002@s.whatsapp.net"


@asynccontextmanager
async def api_of(s: InboxStack) -> AsyncIterator[httpx.AsyncClient]:
    """The real API on the inbox stack's settings, database and Temporal (in-process ASGI)."""
    settings = s.settings.model_copy(update={"api_admin_key": SecretStr(ADMIN_KEY)})
    app = create_app(settings, client=s.client)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     timeout=60) as http:
            yield http


async def _waiting(s: InboxStack, n: int) -> list[failed_messages.FailedMessage]:
    async def enough() -> bool:
        return len(await failed_messages.list_waiting(s.db, s.company_id)) >= n

    await wait_until(enough, 60, interval=0.2)
    return await failed_messages.list_waiting(s.db, s.company_id)


async def _remind(s: InboxStack) -> FailedMessagesSummary:
    result: FailedMessagesSummary = await s.client.execute_workflow(
        FAILED_REMINDER_WORKFLOW, id=f"remind-{uuid.uuid4()}", task_queue=s.settings.temporal_core_queue,
        result_type=FailedMessagesSummary,
    )
    return result


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _audit(s: InboxStack, message_id: str) -> list[tuple[str, str]]:
    rows = await s.db.fetch("SELECT actor, action FROM audit WHERE details->>'messageId' = $1 ORDER BY id",
                            message_id)
    return [(r["actor"], r["action"]) for r in rows]


async def test_failed_messages_are_listed_counted_redelivered_and_discarded(make_inbox: Any) -> None:
    async with make_inbox(inbox_retry_window_s=2.0) as s, api_of(s) as api:
        await s.set_handler("webhook", url=s.receiver.url)
        assert (await _remind(s)).total == 0 and s.alerts == []  # nothing waits: the reminder is silent

        s.receiver.status = 500
        first = await s.inject("первое", chat=CHAT)
        second = await s.inject("второе", chat=CHAT)
        rows = await _waiting(s, 2)
        assert [r.message_id for r in rows] == [first, second]

        listed = (await api.get("/api/inbox/failed", headers=ADMIN)).json()
        assert listed["total"] == 2 and [m["messageId"] for m in listed["messages"]] == [first, second]
        assert listed["messages"][0]["text"] == "первое" and "HTTP 500" in listed["messages"][0]["error"]
        await s.wait(lambda: bool(s.alerts), 15, "the first-failure alert")
        # One alert for the company's first failed message; the second adds to the count, not to the noise.
        assert [a.severity for a in s.alerts] == ["critical"] and first in s.alerts[0].text
        metrics = (await api.get("/metrics")).text
        assert _metric(metrics, "whatsapp_inbox_failed_messages") == 2
        health = (await api.get("/health")).json()
        assert next(c for c in health["checks"] if c["name"] == "inbox")["failedMessages"] == 2

        # The daily reminder while they remain: one alert with the count per company.
        reminded = await _remind(s)
        assert reminded.total == 2 and s.alerts[-1].severity == "warning"
        assert f"{s.company_id}: 2" in s.alerts[-1].text and len(s.alerts) == 2

        # Redeliver while the receiver is still down: 502, still waiting, the attempt counted.
        base = f"/api/inbox/failed/{s.company_id}"
        again = await api.post(f"{base}/{first}/redeliver", headers=ADMIN)
        assert again.status_code == 502 and again.json()["status"] == "failed", again.text
        assert again.json()["attempts"] == 2 and "still waits" in again.json()["error"]
        assert [r.message_id for r in await failed_messages.list_waiting(s.db, s.company_id)] == [first, second]

        s.receiver.status = 200
        done = await api.post(f"{base}/{first}/redeliver", headers=ADMIN)
        assert done.status_code == 200 and done.json()["status"] == "redelivered", done.text
        assert [d.body["messageId"] for d in s.receiver.hook()] == [first]
        await s.wait(lambda: len(s.outbox()) >= 1, 30, "the reply to the redelivered message")
        assert [(e.quoted, e.text) for e in s.outbox()] == [(first, "re: первое")]
        assert await _audit(s, first) == [("admin", "failed_message.redelivered")]

        # Discard from the Temporal UI: the same signal, no argument.
        handle = s.client.get_workflow_handle(failed_message_workflow_id(s.company_id, second))
        await handle.signal(SIGNAL_DISCARD)
        assert await handle.result() == "discarded"
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert await failed_messages.list_waiting(s.db, s.company_id) == []
        assert await _audit(s, second) == [("temporal-signal", "failed_message.discarded")]
        assert _metric((await api.get("/metrics")).text, "whatsapp_inbox_failed_messages") == 0
        assert [d.body["messageId"] for d in s.receiver.hook()] == [first]  # the discarded one never went out

        # Done is done: acting again is a 404 naming the message; a bad id is a 422.
        gone = await api.post(f"{base}/{second}/redeliver", headers=ADMIN)
        assert gone.status_code == 404 and second in gone.json()["error"]
        bad = await api.post(f"{base}/bad%20id/discard", headers=ADMIN)
        assert bad.status_code == 422 and bad.json()["error"].startswith("message_id:")
        assert (await _remind(s)).total == 0 and len(s.alerts) == 2  # none left: the reminder is silent


async def test_a_company_key_sees_and_acts_on_its_own_failed_messages_only(make_inbox: Any) -> None:
    async with make_inbox(inbox_retry_window_s=1.0) as s, api_of(s) as api:
        await s.set_handler("webhook", url=s.receiver.url)
        s.receiver.status = 500
        lost = await s.inject("lost", chat=CHAT)
        await _waiting(s, 1)
        issued = await api.post(f"/api/companies/{s.company_id}/keys", headers=ADMIN)
        own = {"X-API-Key": issued.json()["key"]}
        other = await api.post("/api/companies/company_someone_else/keys", headers=ADMIN)
        theirs = {"X-API-Key": other.json()["key"]}

        mine = (await api.get("/api/inbox/failed", headers=own)).json()
        assert [m["messageId"] for m in mine["messages"]] == [lost]
        assert (await api.get("/api/inbox/failed", headers=theirs)).json()["messages"] == []
        refused = await api.get(f"/api/inbox/failed?company={s.company_id}", headers=theirs)
        assert refused.status_code == 403
        assert (await api.post(f"/api/inbox/failed/{s.company_id}/{lost}/discard", headers=theirs)).status_code == 403

        discarded = await api.post(f"/api/inbox/failed/{s.company_id}/{lost}/discard", headers=own)
        assert discarded.status_code == 200 and discarded.json()["status"] == "discarded", discarded.text
        assert await _audit(s, lost) == [(f"company:{s.company_id}", "failed_message.discarded")]
