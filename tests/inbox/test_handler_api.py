"""The admin endpoint of the handler (SPEC M4, X1, X2) and the built-in echo handler end to end."""

from __future__ import annotations

import pytest

from tests.api.conftest import ADMIN, ADMIN_KEY, serve_asgi
from tests.inbox.conftest import SECRET


@pytest.mark.timeout(150)
async def test_echo_handler_set_through_the_api_replies_and_inbox_completes_when_idle(make_inbox):
    async with make_inbox(api_admin_key=ADMIN_KEY, inbox_idle_s=1.0) as s, \
            serve_asgi(s.settings, s.client) as api:
        cid = s.company_id
        r = await api.http.put(f"/api/companies/{cid}/handler", json={"type": "echo"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["handler"]["type"] == "echo"
        mid = await s.inject("hello there", chat="79991112233@s.whatsapp.net")
        await s.wait(lambda: len(s.outbox()) >= 1, 45, "the echo")
        (entry,) = s.outbox()
        assert (entry.to, entry.text, entry.quoted) == ("79991112233@s.whatsapp.net", "echo: hello there", mid)

        from temporalio.client import WorkflowExecutionStatus

        from cli.embedded import wait_until
        from domain.inbox import InboxSummary, inbox_workflow_id

        handle = s.client.get_workflow_handle(inbox_workflow_id(cid, "79991112233@s.whatsapp.net"),
                                              result_type=InboxSummary)

        async def completed() -> bool:
            status: WorkflowExecutionStatus | None = (await handle.describe()).status
            return status is WorkflowExecutionStatus.COMPLETED

        await wait_until(completed, 45, interval=0.2)  # idle → done; history expires with retention (M6)
        # WhatsApp redelivers the first message after the inbox ended: a new run starts, and drops it
        # (the id is claimed by the first run); the next new message is answered.
        await s.inject("hello there", chat="79991112233@s.whatsapp.net", message_id=mid)
        again = await s.inject("again", chat="79991112233@s.whatsapp.net")
        await s.handed_over()  # the new run exists: the handle's result is its own
        second_run = await handle.result()  # the new run, idle → done: every echo it would send is out
        assert (second_run.handled, second_run.last_message_id) == (2, again)
        assert [(e.text, e.quoted) for e in s.outbox()] == [("echo: hello there", mid), ("echo: again", again)]


@pytest.mark.timeout(150)
async def test_handler_endpoint_validates_and_never_returns_the_secret(make_inbox):
    async with make_inbox(api_admin_key=ADMIN_KEY, worker=False) as s, serve_asgi(s.settings, s.client) as api:
        cid = s.company_id
        url = f"/api/companies/{cid}/handler"
        cases = [
            ({"type": "webhook", "url": "ftp://example.com/x", "secret": SECRET}, "url"),
            ({"type": "webhook", "url": "javascript:alert(1)", "secret": SECRET}, "url"),
            ({"type": "webhook", "url": "https://example.com/hook"}, "secret"),
            ({"type": "webhook", "url": "https://example.com/hook", "secret": "short"}, "secret"),
            ({"type": "callable", "callable": "os.system('rm -rf /')"}, "callable"),
            ({"type": "callable"}, "callable"),
            ({"type": "shell"}, "type"),
            ({"type": "echo", "eventWebhookUrl": "file:///etc/passwd"}, "eventWebhookUrl"),
        ]
        for body, field in cases:
            r = await api.http.put(url, json=body, headers=ADMIN)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"].startswith(f"{field}:"), (body, r.text)

        body = {"type": "webhook", "url": "https://example.com/hook", "secret": SECRET,
                "eventWebhookUrl": "https://example.com/events"}
        r = await api.http.put(url, json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert SECRET not in r.text
        got = await api.http.get(url, headers=ADMIN)
        assert SECRET not in got.text
        assert got.json()["handler"] == {
            "type": "webhook", "url": "https://example.com/hook", "callable": None,
            "eventWebhookUrl": "https://example.com/events", "secretSet": True, "secretHint": "…" + SECRET[-4:],
        }
        # Changing the URL without a secret keeps the stored one.
        r = await api.http.put(url, json={"type": "webhook", "url": "https://example.com/v2"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["handler"]["secretSet"] is True
        assert await s.db.fetchval("SELECT webhook_secret FROM companies WHERE company_id = $1", cid) == SECRET

        # Admin only: a company key may not set its own handler.
        key = await api.issue_key(cid)
        r = await api.http.put(url, json={"type": "echo"}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403
        r = await api.http.put(url, json={"type": "echo"})
        assert r.status_code == 401
