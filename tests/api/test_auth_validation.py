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

# Every route the app registers is one of three kinds. Public routes answer anyone; company routes
# answer the admin and the company's own credentials (its key, or its onboarding link); every other
# route is admin-only. The lists name only the first two, so a new admin route is covered the day it
# is added, and a new route a company may call fails here until it is listed.
# The operator page itself holds no data and no secret: it asks for the admin key (its API is admin-only).
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/onboarding/{company_id}"), ("GET", "/dashboard")}
COMPANY_ROUTES = {
    ("GET", "/api/whatsapp/sessions"),
    ("POST", "/api/whatsapp/sessions/{company_id}/initialize"),
    ("GET", "/api/whatsapp/sessions/{company_id}/status"),
    ("GET", "/api/whatsapp/sessions/{company_id}/health"),
    ("GET", "/api/whatsapp/sessions/{company_id}/qr"),
    ("POST", "/api/whatsapp/sessions/{company_id}/send"),
    ("POST", "/api/whatsapp/sessions/{company_id}/relink"),
    ("POST", "/api/whatsapp/sessions/{company_id}/pause"),
    ("POST", "/api/whatsapp/sessions/{company_id}/resume"),
    ("POST", "/api/whatsapp/sessions/{company_id}/logout"),
    ("DELETE", "/api/whatsapp/sessions/{company_id}"),
    ("POST", "/api/simulator/{company_id}/{action}"),
    ("GET", "/api/simulator/{company_id}/outbox"),
    ("GET", "/api/simulator/{company_id}/actions"),
    # Beyond text (issue 11.3-11.6): a company's own messages' status, chat actions and lookups.
    ("GET", "/api/whatsapp/sessions/{company_id}/messages/{message_id}"),
    ("POST", "/api/whatsapp/sessions/{company_id}/read"),
    ("POST", "/api/whatsapp/sessions/{company_id}/presence"),
    ("POST", "/api/whatsapp/sessions/{company_id}/react"),
    ("GET", "/api/whatsapp/sessions/{company_id}/contacts/{phone}"),
    ("GET", "/api/whatsapp/sessions/{company_id}/groups/{group_id}"),
    # A company sees and acts on its own failed incoming messages (the list shows only its own).
    ("GET", "/api/inbox/failed"),
    ("POST", "/api/inbox/failed/{company_id}/{message_id}/redeliver"),
    ("POST", "/api/inbox/failed/{company_id}/{message_id}/discard"),
    # A company's media, sent and received (issue #11).
    ("GET", "/api/whatsapp/sessions/{company_id}/media/{media_id}"),
}
# What a caller would send: a refused request must be refused for who it is, not for its body.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/whatsapp/sessions/{company_id}/send"): {"phone": "79001234567", "message": "hi"},
    ("POST", "/api/jobs/{kind}"): {"dryRun": False},
    ("PUT", "/api/companies/{company_id}/handler"): {"type": "echo"},
    ("POST", "/api/companies/{company_id}/onboarding-link"): {"ttlSeconds": 3600},
    ("POST", "/api/schedules/{schedule_id}/{action}"): {"note": "from a company key"},
    ("PUT", "/api/companies/{company_id}/proxy"): {"url": "socks5://user:secret@proxy.example.com:1080"},
    ("POST", "/api/whatsapp/sessions/{company_id}/read"): {"chat": "79001234567", "messageIds": ["3EB0AAAA"]},
    ("POST", "/api/whatsapp/sessions/{company_id}/presence"): {"chat": "79001234567", "state": "typing"},
    ("POST", "/api/whatsapp/sessions/{company_id}/react"): {"chat": "79001234567", "messageId": "3EB0AAAA",
                                                            "emoji": "👍"},
}
# Path parameters that are not a Literal.
PATH_VALUES = {"schedule_id": "backup", "key_id": "1", "message_id": "3EB0AAAA", "media_id": "i" + "0" * 31,
               "phone": "79001234567", "group_id": "120363000000000001@g.us"}


def _assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["success"] is False and body["code"] == code and body["error"], body
    return body


def _error(resp: httpx.Response, status: int, code: str, route: tuple[str, str]) -> None:
    assert resp.status_code == status, (route, status, resp.status_code, resp.text)
    body = resp.json()
    assert body["success"] is False and body["code"] == code and body["error"], (route, body)


async def registered_routes(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path template) → OpenAPI operation, for every HTTP route of the app (none is hidden)."""
    spec = (await api.http.get("/openapi.json")).json()
    return {(method.upper(), path): op for path, ops in spec["paths"].items() for method, op in ops.items()}


def _urls(template: str, op: dict[str, Any], company_id: str) -> list[str]:
    """The route's URL with each value of its Literal path parameters (every job kind, every action)."""
    urls = [template.replace("{company_id}", company_id)]
    for param in op.get("parameters", []):
        name = param["name"]
        if param["in"] != "path" or name == "company_id":
            continue
        values = param["schema"].get("enum") or [PATH_VALUES[name]]
        urls = [url.replace("{" + name + "}", str(value)) for url in urls for value in values]
    return urls


async def test_every_admin_route_refuses_company_keys_and_onboarding_links(api: Api) -> None:
    routes = await registered_routes(api)
    assert PUBLIC_ROUTES | COMPANY_ROUTES <= set(routes), sorted(PUBLIC_ROUTES | COMPANY_ROUTES - set(routes))
    admin_routes = sorted(set(routes) - PUBLIC_ROUTES - COMPANY_ROUTES)
    assert len(admin_routes) >= 10, admin_routes  # metrics, keys, handler, jobs, schedules, onboarding links
    mine, probe = company(), company()
    key = await api.issue_key(mine)
    link = await api.http.post(f"/api/companies/{mine}/onboarding-link", headers=ADMIN)
    assert link.status_code == 201, link.text
    token = link.json()["token"]
    for route in admin_routes:
        method, template = route
        body = BODIES.get(route)
        for url in _urls(template, routes[route], mine):
            _error(await api.http.request(method, url, json=body), 401, "unauthorized", route)
            for credential in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"},
                               {"Authorization": f"Bearer {token}"}, {"X-API-Key": token}):
                _error(await api.http.request(method, url, json=body, headers=credential), 403, "forbidden", route)
    # The admin gets past auth on each of them (on another company: revoking keys must not
    # disturb the checks above).
    for route in admin_routes:
        method, template = route
        url = _urls(template, routes[route], probe)[0]
        resp = await api.http.request(method, url, json=BODIES.get(route), headers=ADMIN)
        assert resp.status_code not in (401, 403), (route, resp.text)


async def test_company_routes_answer_only_their_own_company(api: Api) -> None:
    routes = await registered_routes(api)
    mine, other = company(), company()
    my_key, other_key = await api.issue_key(mine), await api.issue_key(other)
    link = await api.http.post(f"/api/companies/{mine}/onboarding-link", headers=ADMIN)
    token = link.json()["token"]
    mine_creds = ({"X-API-Key": my_key}, {"Authorization": f"Bearer {my_key}"}, {"X-API-Key": token}, ADMIN)
    for route in sorted(COMPANY_ROUTES):
        method, template = route
        url, body = _urls(template, routes[route], mine)[0], BODIES.get(route)
        _error(await api.http.request(method, url, json=body), 401, "unauthorized", route)
        _error(await api.http.request(method, url, json=body, headers={"X-API-Key": "wa_nope"}),
               401, "unauthorized", route)
        if "{company_id}" not in template:
            continue  # the list: each caller sees only its own (test_sessions, with sessions to see)
        for credential in ({"X-API-Key": other_key}, {"Authorization": f"Bearer {other_key}"}):
            _error(await api.http.request(method, url, json=body, headers=credential), 403, "forbidden", route)
        if template.endswith("/initialize"):
            continue  # would start a session; the owner's initialize is in test_sessions
        # The owner (key or onboarding link) and the admin get past auth: the session does not
        # exist, so 404/409, never 401/403.
        for credential in mine_creds:
            resp = await api.http.request(method, url, json=body, headers=credential)
            assert resp.status_code not in (401, 403), (route, credential, resp.text)
    # Public: health (no connector polls this test's queue: degraded) and Prometheus metrics.
    health = await api.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
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
