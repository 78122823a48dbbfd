"""SPEC X1–X3: who may call what (401 vs 403), and hostile input refused with 422 naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from api.deps import hash_key
from tests.api.conftest import ADMIN, Api, company

pytestmark = pytest.mark.timeout(60)

# (method, path template, body) for every company-scoped endpoint.
COMPANY_ENDPOINTS = [
    ("POST", "/api/whatsapp/sessions/{c}/initialize", None),
    ("GET", "/api/whatsapp/sessions/{c}/status", None),
    ("GET", "/api/whatsapp/sessions/{c}/health", None),
    ("GET", "/api/whatsapp/sessions/{c}/qr", None),
    ("POST", "/api/whatsapp/sessions/{c}/send", {"phone": "79001234567", "message": "hi"}),
    ("POST", "/api/whatsapp/sessions/{c}/relink", None),
    ("POST", "/api/whatsapp/sessions/{c}/pause", None),
    ("POST", "/api/whatsapp/sessions/{c}/resume", None),
    ("POST", "/api/whatsapp/sessions/{c}/logout", None),
    ("DELETE", "/api/whatsapp/sessions/{c}", None),
    ("POST", "/api/simulator/{c}/disconnect", None),
    ("GET", "/api/simulator/{c}/outbox", None),
]
ADMIN_ENDPOINTS = [
    ("GET", "/api/whatsapp/metrics", None),
    ("GET", "/api/whatsapp/dashboard", None),
    ("POST", "/api/companies/{c}/keys", None),
    ("GET", "/api/companies/{c}/keys", None),
    ("DELETE", "/api/companies/{c}/keys", None),
]


def _assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["success"] is False and body["code"] == code and body["error"], body
    return body


async def test_auth_matrix(api: Api) -> None:
    mine, other = company(), company()
    my_key = await api.issue_key(mine)
    other_key = await api.issue_key(other)
    for method, template, body in COMPANY_ENDPOINTS:
        path = template.format(c=mine)
        kw: dict[str, Any] = {"json": body} if body else {}
        _assert_error(await api.http.request(method, path, **kw), 401, "unauthorized")
        _assert_error(await api.http.request(method, path, headers={"X-API-Key": "wa_nope"}, **kw), 401, "unauthorized")
        _assert_error(await api.http.request(
            method, path, headers={"Authorization": f"Bearer {other_key}"}, **kw), 403, "forbidden")
        if template.endswith("/initialize"):
            continue  # would start a session; the owner's initialize is in test_sessions
        # The owner and the admin get past auth (the session does not exist: 404/409/503, never 401/403).
        for headers in ({"X-API-Key": my_key}, {"Authorization": f"Bearer {my_key}"}, ADMIN):
            resp = await api.http.request(method, path, headers=headers, **kw)
            assert resp.status_code not in (401, 403), (method, path, resp.text)
    for method, template, _ in ADMIN_ENDPOINTS:
        path = template.format(c=mine)
        _assert_error(await api.http.request(method, path), 401, "unauthorized")
        _assert_error(await api.http.request(method, path, headers={"X-API-Key": my_key}), 403, "forbidden")
    # A company key lists only its own sessions; the metrics summary is for the admin.
    listing = await api.http.get("/api/whatsapp/sessions", headers={"X-API-Key": my_key})
    assert listing.status_code == 200 and "metrics" not in listing.json()
    assert all(s["companyId"] == mine for s in listing.json()["sessions"])
    # Public: health, Prometheus metrics, and the operator page (static; it asks for the admin key).
    assert (await api.http.get("/health")).status_code in (200, 503)
    assert (await api.http.get("/metrics")).status_code == 200
    assert (await api.http.get("/dashboard")).status_code == 200


async def test_company_key_is_shown_once_stored_hashed_and_revocable(api: Api, database_dsn: str) -> None:
    digits = str(uuid.uuid4().int)[:12]
    cid = f"company_{digits}"
    issued = await api.http.post(f"/api/companies/%20{digits}%20/keys", headers=ADMIN)
    assert issued.status_code == 201
    key = issued.json()["key"]
    assert issued.json()["companyId"] == cid  # normalised
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch("SELECT key_hash, key_prefix FROM api_keys WHERE company_id = $1", cid)
    finally:
        await conn.close()
    assert [r["key_hash"] for r in rows] == [hash_key(key)]
    assert key not in {r["key_prefix"] for r in rows}
    listed = await api.http.get(f"/api/companies/{cid}/keys", headers=ADMIN)
    assert "key" not in listed.json()["keys"][0]
    ok = await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers={"X-API-Key": key})
    _assert_error(ok, 404, "session_not_found")
    key_id = issued.json()["keyId"]
    revoked = await api.http.delete(f"/api/companies/{cid}/keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked"] == 1
    _assert_error(await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers={"X-API-Key": key}),
                  401, "unauthorized")
    _assert_error(await api.http.delete(f"/api/companies/{cid}/keys/{key_id}", headers=ADMIN), 404, "key_not_found")


HOSTILE_COMPANY_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "company_1%2F..%2Fcompany_2",
    "%2E%2E",
    "%5Bobject%20Object%5D",  # [object Object]
    "a" * 65,
    "company%201",
    "company_1%00",
    "%20%20",
    "company_1;DROP%20TABLE%20api_keys",
]


@pytest.mark.parametrize("raw", HOSTILE_COMPANY_IDS)
async def test_hostile_company_ids_are_422(api: Api, raw: str) -> None:
    for method, path in (
        ("GET", f"/api/whatsapp/sessions/{raw}/status"),
        ("POST", f"/api/whatsapp/sessions/{raw}/initialize"),
        ("POST", f"/api/companies/{raw}/keys"),
    ):
        body = _assert_error(await api.http.request(method, path, headers=ADMIN), 422, "validation_error")
        assert "company_id" in body["error"]
    # Nothing was started for it.
    listing = await api.http.get("/api/whatsapp/sessions", headers=ADMIN)
    assert all("object" not in s["companyId"] and "/" not in s["companyId"] for s in listing.json()["sessions"])


HOSTILE_SENDS = [
    ({"phone": "79001234567", "message": "x" * 4097}, "message"),
    ({"phone": "79001234567", "message": ""}, "message"),
    ({"phone": "12345", "message": "hi"}, "phone"),
    ({"phone": "not a phone", "message": "hi"}, "phone"),
    ({"to": "someone@example.com", "message": "hi"}, "to"),
    ({"phone": 79001234567, "message": "hi"}, "phone"),
    ({"phone": "79001234567", "message": 42}, "message"),
    ({"phone": "79001234567", "message": ["hi"]}, "message"),
    ({"phone": "79001234567", "message": "hi", "options": "quoted"}, "options"),
    ({"phone": "79001234567", "message": "hi", "options": {"quoted": 1}}, "options.quoted"),
    ({"phone": "79001234567", "message": "hi", "priority": "high"}, "priority"),
    ({"message": "hi"}, "request"),
    ({"phone": "79001234567", "to": "79001234567@s.whatsapp.net", "message": "hi"}, "request"),
]


async def test_hostile_send_bodies_are_422_naming_the_field(api: Api) -> None:
    cid = company()
    for body, field in HOSTILE_SENDS:
        resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json=body, headers=ADMIN)
        err = _assert_error(resp, 422, "validation_error")
        assert err["error"].startswith(f"{field}:") or any(d["field"] == field for d in err["details"]), (body, err)
    resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", content=b"{not json", headers=ADMIN)
    _assert_error(resp, 422, "validation_error")
    resp = await api.http.post(
        f"/api/whatsapp/sessions/{cid}/send", json={"phone": "79001234567", "message": "hi"},
        headers={**ADMIN, "Idempotency-Key": "../../x"},
    )
    assert "Idempotency-Key" in _assert_error(resp, 422, "validation_error")["error"]
    resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/initialize", json={"pairingPhone": "123"},
                               headers=ADMIN)
    assert "pairingPhone" in _assert_error(resp, 422, "validation_error")["error"]
    resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/initialize", json={"pairing_phone": "x", "y": 1},
                               headers=ADMIN)
    _assert_error(resp, 422, "validation_error")
    # None of it created a session.
    _assert_error(await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN), 404, "session_not_found")


async def test_send_without_a_session_is_409_and_creates_none(api: Api) -> None:
    cid = company()
    resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/send",
                               json={"phone": "+7 900 123-45-67", "message": "hi"}, headers=ADMIN)
    body = _assert_error(resp, 409, "not_connected")
    assert body["state"] == "none" and cid in body["error"]
    _assert_error(await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN), 404, "session_not_found")
    count = await api.client.count_workflows(f'WorkflowId = "session-{cid}" OR WorkflowId STARTS_WITH "send-{cid}"')
    assert count.count == 0


async def test_openapi_docs_describe_every_route(api: Api) -> None:
    assert (await api.http.get("/docs")).status_code == 200
    spec = (await api.http.get("/openapi.json")).json()
    paths = set(spec["paths"])
    for path in (
        "/api/whatsapp/sessions", "/api/whatsapp/sessions/{company_id}/send", "/api/whatsapp/sessions/{company_id}/qr",
        "/api/whatsapp/metrics", "/metrics", "/health", "/api/companies/{company_id}/keys",
        "/api/simulator/{company_id}/{action}", "/dashboard", "/api/whatsapp/dashboard",
    ):
        assert path in paths, sorted(paths)
