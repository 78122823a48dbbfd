"""The operator page's API: the page itself is public and secret-free, its data is the admin's alone,
and each row says what the operator needs (state, phone, reconnects, last event, the Temporal UI link)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cli.embedded import wait_until
from domain.settings import Settings
from tests.api.conftest import ADMIN, ADMIN_KEY, Api, company, run_connector_inprocess, run_worker, serve_asgi

pytestmark = pytest.mark.timeout(120)
TEMPORAL_UI = "https://temporal.example.com/ui"


@pytest.fixture
async def ops_stack(client: Client, dev_env: WorkflowEnvironment,
                    make_settings: Callable[..., Settings]) -> AsyncIterator[Api]:
    """API + worker + in-process simulator connector, with the Temporal UI somewhere of its own."""
    settings = make_settings(dev_env.client, api_admin_key=ADMIN_KEY, temporal_ui_url=TEMPORAL_UI + "/",
                             temporal_address=dev_env.client.service_client.config.target_host)
    async with (
        run_worker(settings, client),
        run_connector_inprocess(settings),
        serve_asgi(settings, client) as served,
    ):
        yield served


async def test_the_page_is_served_to_anyone_and_carries_no_secret(api: Api) -> None:
    page = await api.http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert ADMIN_KEY not in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    # Only the page's own script runs, and it talks only to this origin: nothing injected can leak the key.
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["script-src"].startswith("'sha256-") and "unsafe-inline" not in csp["script-src"]
    assert csp["connect-src"] == "'self'"
    assert "dashboard" in (await api.http.get("/openapi.json")).json()["paths"]["/dashboard"]["get"]["tags"]


async def test_the_data_is_for_the_admin_key_only(api: Api) -> None:
    cid = company()
    key = await api.issue_key(cid)
    link = await api.http.post(f"/api/companies/{cid}/onboarding-link", headers=ADMIN)
    token = link.json()["token"]
    missing = await api.http.get("/api/whatsapp/dashboard")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
    for credential in (key, token):
        refused = await api.http.get("/api/whatsapp/dashboard", headers={"Authorization": f"Bearer {credential}"})
        assert refused.status_code == 403 and refused.json()["error"] == "this endpoint needs the admin key"
    ok = await api.http.get("/api/whatsapp/dashboard", headers=ADMIN)
    assert ok.status_code == 200 and ok.json()["success"] is True


async def _row(api: Api, cid: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    row: dict[str, Any] = {}

    async def seen() -> bool:
        nonlocal row
        body = (await api.http.get("/api/whatsapp/dashboard", headers=ADMIN)).json()
        row = next((r for r in body["sessions"] if r["companyId"] == cid), {})
        return bool(row) and check(row)

    try:
        await wait_until(seen, 30, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"{cid}: row never matched; last {row}") from None
    return row


async def test_rows_carry_reconnects_last_event_and_the_workflow_link(ops_stack: Api) -> None:
    api = ops_stack
    cid = company()
    await api.connect(cid)
    row = await _row(api, cid, lambda r: r["status"] == "connected")
    assert row["phone"] and row["reconnects"] == 0 and row["since"]
    assert row["lastEvent"]["type"] == "connected" and row["lastEvent"]["timestamp"]
    assert row["workflowUrl"] == f"{TEMPORAL_UI}/namespaces/{api.settings.temporal_namespace}/workflows/session-{cid}"
    body = (await api.http.get("/api/whatsapp/dashboard", headers=ADMIN)).json()
    assert body["temporalUi"] == {
        "url": TEMPORAL_UI, "namespace": api.settings.temporal_namespace,
        "workflowUrlTemplate": f"{TEMPORAL_UI}/namespaces/{api.settings.temporal_namespace}/workflows/"
                               "session-{companyId}",
    }
    assert body["counts"]["connected"] >= 1 and sum(body["counts"].values()) == body["count"]

    # A drop: the session reconnects by itself, and the row counts it and names the last event.
    assert (await api.http.post(f"/api/simulator/{cid}/disconnect", headers=ADMIN)).status_code == 200
    row = await _row(api, cid, lambda r: r["status"] == "connected" and r["reconnects"] == 1)
    assert row["lastEvent"]["type"] in {"connected", "reconnecting", "disconnected"}
    incoming = await api.http.post(f"/api/simulator/{cid}/incoming", json={"text": "hi"}, headers=ADMIN)
    assert incoming.status_code == 200
    await _row(api, cid, lambda r: r["lastEvent"]["type"] == "message")  # messages are events too
    status = (await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)).json()
    assert status["reconnects"] == 1 and status["reconnectAttempts"] == 0
    # The older list keeps its fields and gains the new ones.
    listed = (await api.http.get("/api/whatsapp/sessions", headers=ADMIN)).json()
    mine = next(s for s in listed["sessions"] if s["companyId"] == cid)
    assert {"connected", "status", "health", "phone", "jid", "reconnectAttempts"} <= set(mine)
    assert mine["reconnects"] == 1 and mine["lastEvent"]["type"] == "message"
