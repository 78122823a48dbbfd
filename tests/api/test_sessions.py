"""Every session endpoint's happy path, driven through HTTP with the simulator transport (SPEC S2, O5)."""

from __future__ import annotations

from typing import Any

import pytest

from cli.embedded import wait_until
from tests.api.conftest import ADMIN, Api, company

pytestmark = pytest.mark.timeout(120)


async def _state(api: Api, cid: str, headers: dict[str, str]) -> str:
    resp = await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=headers)
    assert resp.status_code == 200, resp.text
    state: str = resp.json()["status"]
    return state


async def _wait_state(api: Api, cid: str, headers: dict[str, str], want: str, timeout: float = 20) -> None:
    async def reached() -> bool:
        return await _state(api, cid, headers) == want

    await wait_until(reached, timeout)


async def test_session_lifecycle_through_the_api(stack: Api) -> None:
    api = stack
    cid = company()
    key = {"X-API-Key": await api.issue_key(cid)}
    base = f"/api/whatsapp/sessions/{cid}"

    # initialize → a QR in three forms
    init = await api.http.post(f"{base}/initialize", headers=key)
    assert init.status_code == 200, init.text
    body = init.json()
    assert body["status"] == "qr" and body["qr"]
    assert body["qrDataUrl"].startswith("data:image/png;base64,")
    assert "█" in body["qrTerminal"] or "▀" in body["qrTerminal"]
    handle = api.client.get_workflow_handle(f"session-{cid}")
    first_run = (await handle.describe()).run_id
    # a second initialize returns the same session (same run, same QR), not a second one
    again = await api.http.post(f"{base}/initialize", headers=key)
    assert again.status_code == 200 and again.json()["status"] == "qr"
    assert again.json()["qr"] == body["qr"]
    assert (await handle.describe()).run_id == first_run

    async def visible() -> bool:
        return (await api.client.count_workflows(f'WorkflowId = "session-{cid}"')).count >= 1

    await wait_until(visible, 10)  # visibility is eventually consistent
    assert (await api.client.count_workflows(f'WorkflowId = "session-{cid}"')).count == 1

    qr = await api.http.get(f"{base}/qr", headers=key)
    assert qr.status_code == 200 and qr.json()["qr"] and qr.json()["qrDataUrl"].startswith("data:image/png")
    png = await api.http.get(f"{base}/qr", params={"format": "png"}, headers=key)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert (await api.http.get(f"{base}/qr", params={"format": "svg"}, headers=key)).status_code == 422

    health = await api.http.get(f"{base}/health", headers=key)
    assert health.status_code == 503 and health.json()["healthy"] is False

    # the phone scans → connected
    scan = await api.http.post(f"/api/simulator/{cid}/scan", json={"phone": "79001112233"}, headers=key)
    assert scan.status_code == 200, scan.text
    await _wait_state(api, cid, key, "connected")
    status = (await api.http.get(f"{base}/status", headers=key)).json()
    assert status["connected"] is True and status["phone"] == "79001112233"
    assert status["health"] == {"healthy": True, "phoneNumber": status["jid"]}
    health = await api.http.get(f"{base}/health", headers=key)
    assert health.status_code == 200 and health.json()["healthy"] is True
    assert (await api.http.get(f"{base}/qr", headers=key)).status_code == 404
    init = await api.http.post(f"{base}/initialize", headers=key)
    assert init.json()["status"] == "connected" and init.json()["connected"] is True

    listing: dict[str, Any] = {}
    # Another company's session exists too: the admin lists both, the company key only its own.
    neighbour = company()
    assert (await api.http.post(f"/api/whatsapp/sessions/{neighbour}/initialize", headers=ADMIN)).status_code == 200

    async def listed() -> bool:
        nonlocal listing
        listing = (await api.http.get("/api/whatsapp/sessions", headers=ADMIN)).json()
        shown = {s["companyId"]: s["status"] for s in listing["sessions"]}
        return shown.get(cid) == "connected" and neighbour in shown

    await wait_until(listed, 10)  # visibility is eventually consistent
    mine = next(s for s in listing["sessions"] if s["companyId"] == cid)
    assert mine["health"] == "healthy" and mine["phone"] == "79001112233"
    assert listing["metrics"]["activeConnections"] >= 1
    own_listing = (await api.http.get("/api/whatsapp/sessions", headers=key)).json()
    assert [s["companyId"] for s in own_listing["sessions"]] == [cid] and own_listing["count"] == 1
    assert "metrics" not in own_listing
    assert (await api.http.delete(f"/api/whatsapp/sessions/{neighbour}", headers=ADMIN)).status_code == 200

    # send, and the simulated phone's outbox has it
    text = "Ваша запись подтверждена!"
    sent = await api.http.post(f"{base}/send", headers=key,
                               json={"phone": "+7 (900) 123-45-67", "message": text, "options": {"quoted": "ABC123"}})
    assert sent.status_code == 200, sent.text
    assert sent.json()["messageId"] and sent.json()["timestamp"]
    out = (await api.http.get(f"/api/simulator/{cid}/outbox", headers=key)).json()
    assert out["messages"] == [{"messageId": sent.json()["messageId"], "to": "79001234567@s.whatsapp.net",
                                "text": text, "timestamp": out["messages"][0]["timestamp"],
                                "quoted": "ABC123"}]
    lid = await api.http.post(f"{base}/send", json={"to": "123456789012345@lid", "message": "hi"}, headers=key)
    assert lid.status_code == 200 and lid.json()["to"] == "123456789012345@lid"
    incoming = await api.http.post(f"/api/simulator/{cid}/incoming", json={"text": "hello"}, headers=key)
    assert incoming.status_code == 200 and incoming.json()["result"]["ok"] is True

    # pause / resume
    assert (await api.http.post(f"{base}/pause", headers=key)).status_code == 200
    await _wait_state(api, cid, key, "paused")
    refused = await api.http.post(f"{base}/send", json={"phone": "79001234567", "message": "x"}, headers=key)
    assert refused.status_code == 409 and refused.json()["state"] == "paused"
    assert (await api.http.post(f"{base}/resume", headers=key)).status_code == 200
    await _wait_state(api, cid, key, "connected")

    # 440 → replaced, waits; relink reconnects with the stored device (no QR)
    assert (await api.http.post(f"/api/simulator/{cid}/replace", headers=key)).status_code == 200
    await _wait_state(api, cid, key, "replaced")
    assert (await api.http.post(f"{base}/relink", headers=key)).status_code == 200
    await _wait_state(api, cid, key, "connected")

    # logout → logged_out; remove → gone
    out_resp = await api.http.post(f"{base}/logout", headers=key)
    assert out_resp.status_code == 200 and out_resp.json()["status"] == "logged_out", out_resp.text
    removed = await api.http.delete(base, headers=key)
    assert removed.status_code == 200 and removed.json()["status"] == "stopped", removed.text
    gone = await api.http.get(f"{base}/status", headers=key)
    assert gone.status_code == 404 and gone.json()["code"] == "session_not_found"
    for signal in ("relink", "pause", "resume", "logout"):
        assert (await api.http.post(f"{base}/{signal}", headers=key)).status_code == 404


async def test_initialize_with_a_pairing_phone_returns_a_pairing_code(stack: Api) -> None:
    api = stack
    cid = company()
    init = await api.http.post(f"/api/whatsapp/sessions/{cid}/initialize", json={"pairingPhone": "+7 900 111-22-44"},
                               headers=ADMIN)
    assert init.status_code == 200, init.text
    body = init.json()
    assert body["pairingCode"] and "qr" not in body, body
    pair = await api.http.post(f"/api/simulator/{cid}/scan", headers=ADMIN)
    assert pair.status_code == 200, pair.text
    status = await api.connect_wait(cid)
    assert status["phone"] == "79001112244"
