"""A proxy per company (issue 11.7): set by the admin, validated, stored with the company, its secret
masked in every answer and log line, used from the session's next connect on (the simulator records
what each dial was given)."""

from __future__ import annotations

import logging

import pytest
from temporalio.client import Client

from cli.embedded import wait_until
from domain.settings import Settings
from storage import Database
from tests.api.beyond_text import phone_actions, stack_with
from tests.api.conftest import ADMIN, Api, company

pytestmark = pytest.mark.timeout(120)

SECRET = "pr0xy-Pa55word"


async def _reconnect(api: Api, cid: str) -> None:
    """Pause and resume: the session's next connect."""
    assert (await api.http.post(f"/api/whatsapp/sessions/{cid}/pause", headers=ADMIN)).status_code == 200

    async def paused() -> bool:
        r = await api.http.get(f"/api/whatsapp/sessions/{cid}/status", headers=ADMIN)
        return bool(r.json()["status"] == "paused")

    await wait_until(paused, 20)
    assert (await api.http.post(f"/api/whatsapp/sessions/{cid}/resume", headers=ADMIN)).status_code == 200
    await api.connect_wait(cid)


async def test_proxy_is_validated_masked_and_used_at_the_next_connect(
    client: Client, api_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with stack_with(client, api_settings) as api:
        cid = company()
        url = f"/api/companies/{cid}/proxy"
        await api.connect(cid)
        assert (await api.http.get(url, headers=ADMIN)).json()["proxy"] == {
            "url": None, "set": False, "appliesTo": "used from the session's next connect on"}

        r = await api.http.put(url, json={"url": f"SOCKS5://shop:{SECRET}@proxy.example.com:1080"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["proxy"]["url"] == "socks5://shop:***@proxy.example.com:1080" and SECRET not in r.text
        got = await api.http.get(url, headers=ADMIN)
        assert got.json()["proxy"]["url"] == "socks5://shop:***@proxy.example.com:1080" and SECRET not in got.text
        db = Database(api.settings.database_dsn)
        try:
            stored = await db.fetchval("SELECT proxy_url FROM companies WHERE company_id = $1", cid)
        finally:
            await db.close()
        assert stored == f"socks5://shop:{SECRET}@proxy.example.com:1080"

        # The connection that is up keeps its route; the next connect goes through the proxy.
        assert await phone_actions(api, cid, "dial") == []
        await _reconnect(api, cid)
        dials = await phone_actions(api, cid, "dial")
        assert [d["proxy"] for d in dials] == ["socks5://shop:***@proxy.example.com:1080"]

        r = await api.http.put(url, json={"url": "http://10.0.0.5:3128"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["proxy"]["url"] == "http://10.0.0.5:3128"
        assert (await api.http.delete(url, headers=ADMIN)).json()["proxy"]["set"] is False
        await _reconnect(api, cid)  # removed: direct again
        assert [d["proxy"] for d in await phone_actions(api, cid, "dial")][-1] is None

        for bad, word in [
            ("ftp://proxy.example.com:21", "scheme 'ftp' is not supported"),
            ("proxy.example.com:1080", "is not supported"),
            ("http://proxy.example.com", "has no port"),
            ("http://proxy.example.com:0", "port 0 is out of range"),
            ("http://proxy.example.com:99999", "port is out of range"),
            ("socks5://:1080", "has no host"),
            ("http://bad_host!:80", "is not a host name"),
            ("http://proxy.example.com:80/path", "path, query or fragment"),
            ("http://proxy .example.com:80", "whitespace"),
            ("", "must not be empty"),
        ]:
            r = await api.http.put(url, json={"url": bad}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"].startswith("url:") and word in r.json()["error"], (
                bad, r.text)
        assert (await api.http.put(url, json={"url": "http://h:1", "x": 1}, headers=ADMIN)).status_code == 422
        # Only the admin: a company may not route its own traffic.
        key = await api.issue_key(cid)
        assert (await api.http.put(url, json={"url": "http://h:1"}, headers={"X-API-Key": key})).status_code == 403
        assert (await api.http.get(url, headers={"X-API-Key": key})).status_code == 403
    assert SECRET not in caplog.text  # never logged, at any level
