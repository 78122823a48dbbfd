"""Onboarding links (SPEC O6, X1) over HTTP, no browser needed: the default lifetime, and the token
in the link as a credential that reaches its own company's page and API and nothing else."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from api.onboarding import DEFAULT_TTL_S, issue_token
from tests.api.conftest import ADMIN, ADMIN_KEY, Api, company

pytestmark = pytest.mark.timeout(60)


async def test_a_link_lives_24_hours_unless_asked_otherwise_within_bounds(api: Api) -> None:
    cid = company()
    before = time.time()
    link = await api.http.post(f"/api/companies/{cid}/onboarding-link", headers=ADMIN)
    after = time.time()
    assert link.status_code == 201, link.text
    body = link.json()
    expires = datetime.fromisoformat(body["expiresAt"]).timestamp()
    assert DEFAULT_TTL_S == 24 * 3600
    assert int(before) + 24 * 3600 <= expires <= after + 24 * 3600, (before, expires)
    assert body["url"] == f"http://api/onboarding/{cid}?token={body['token']}"

    hour = await api.http.post(f"/api/companies/{cid}/onboarding-link", json={"ttlSeconds": 3600}, headers=ADMIN)
    assert hour.status_code == 201, hour.text
    assert abs(datetime.fromisoformat(hour.json()["expiresAt"]).timestamp() - (time.time() + 3600)) < 60
    for ttl in (59, 7 * 24 * 3600 + 1, "a day"):
        refused = await api.http.post(f"/api/companies/{cid}/onboarding-link", json={"ttlSeconds": ttl},
                                      headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["error"].startswith("ttlSeconds:"), refused.text


async def test_link_is_scoped_to_its_company_and_signed(api: Api) -> None:
    mine, other = company(), company()
    link = (await api.http.post(f"/api/companies/{mine}/onboarding-link", headers=ADMIN)).json()
    token = link["token"]
    page = await api.http.get(f"/onboarding/{mine}", params={"token": token})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    elsewhere = await api.http.get(f"/onboarding/{other}", params={"token": token})
    assert elsewhere.status_code == 403 and elsewhere.json()["code"] == "forbidden", elsewhere.text
    forged = await api.http.get(f"/onboarding/{mine}", params={"token": token[:-3] + "abc"})
    assert forged.status_code == 401 and "signature" in forged.json()["error"]
    expired_token, _ = issue_token(ADMIN_KEY, mine, ttl_s=60, now=time.time() - 120)
    expired = await api.http.get(f"/onboarding/{mine}", params={"token": expired_token})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    other_key_token, _ = issue_token(ADMIN_KEY + "-rotated", mine)  # signed with another admin key
    assert (await api.http.get(f"/onboarding/{mine}", params={"token": other_key_token})).status_code == 401

    # As an API key the token reaches its own company and nothing else, and it never lasts past its expiry.
    as_key = {"Authorization": f"Bearer {token}"}
    own = await api.http.get(f"/api/whatsapp/sessions/{mine}/status", headers=as_key)
    assert own.status_code == 404 and own.json()["code"] == "session_not_found", own.text
    denied = await api.http.get(f"/api/whatsapp/sessions/{other}/status", headers=as_key)
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden", denied.text
    listing = await api.http.get("/api/whatsapp/sessions", headers=as_key)
    assert listing.status_code == 200 and "metrics" not in listing.json()
    stale = await api.http.get(f"/api/whatsapp/sessions/{mine}/status",
                               headers={"Authorization": f"Bearer {expired_token}"})
    assert stale.status_code == 401 and "expired" in stale.json()["error"], stale.text
