"""Number checks and group info (issue 11.5, 11.6) through the API on the simulator: whether a number is
on WhatsApp (its JID, its LID where known), cached, with a rate limit of its own stricter than sends;
a group's subject and participants."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from domain.settings import Settings
from tests.api.beyond_text import control, phone_actions, stack_with
from tests.api.conftest import ADMIN, company

pytestmark = pytest.mark.timeout(120)


async def test_number_check_is_cached_and_rate_limited_apart_from_sends(client: Client, api_settings: Settings) -> None:
    async with stack_with(client, api_settings, contact_check_limit_count=3, contact_check_window_s=60,
                          contact_check_cache_s=3600) as api:
        cid, other = company(), company()
        url = f"/api/whatsapp/sessions/{cid}/contacts"
        r = await api.http.get(f"{url}/79001234567", headers=ADMIN)
        assert r.status_code == 409 and r.json()["code"] == "not_connected", r.text  # nothing held: no lookup
        await api.connect(cid)
        sent = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json={"phone": "79001234567", "message": "hi"},
                                   headers=ADMIN)
        assert sent.status_code == 200, sent.text  # a send does not use a number check's slot
        await control(api, cid, "contact", phone="79001112233", onWhatsApp=False)
        await control(api, cid, "contact", phone="79005556677", lid="123456789012345")

        on = (await api.http.get(f"{url}/+7 900 123-45-67", headers=ADMIN)).json()
        assert (on["onWhatsApp"], on["jid"], on["lid"], on["cached"]) == (True, "79001234567@s.whatsapp.net", None,
                                                                          False), on
        off = (await api.http.get(f"{url}/79001112233", headers=ADMIN)).json()
        assert (off["onWhatsApp"], off["jid"], off["lid"]) == (False, None, None), off
        lid = (await api.http.get(f"{url}/79005556677", headers=ADMIN)).json()
        assert (lid["onWhatsApp"], lid["lid"]) == (True, "123456789012345@lid"), lid

        # The window is full (3 checks): a new number is refused with Retry-After ...
        refused = await api.http.get(f"{url}/79009998877", headers=ADMIN)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited", refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "number checks" in refused.json()["error"]
        # ... a number checked before is answered from the cache, asking WhatsApp nothing ...
        again = (await api.http.get(f"{url}/79001234567", headers=ADMIN)).json()
        assert again["cached"] is True and again["onWhatsApp"] is True and again["checkedAt"] == on["checkedAt"]
        assert [a["phone"] for a in await phone_actions(api, cid, "contact_check")] == [
            "79001234567", "79001112233", "79005556677"]
        # ... and sends have their own window: still allowed.
        sent = await api.http.post(f"/api/whatsapp/sessions/{cid}/send", json={"phone": "79001234567", "message": "hi"},
                                   headers=ADMIN)
        assert sent.status_code == 200, sent.text

        # Another company has its own window and its own cache.
        await api.connect(other)
        theirs = await api.http.get(f"/api/whatsapp/sessions/{other}/contacts/79001234567", headers=ADMIN)
        assert theirs.status_code == 200 and theirs.json()["cached"] is False

        for bad in ("12345", "not-a-phone", "%2B7%20900"):
            r = await api.http.get(f"{url}/{bad}", headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"].startswith("phone:"), (bad, r.text)


async def test_group_info_gives_subject_and_participants(client: Client, api_settings: Settings) -> None:
    async with stack_with(client, api_settings) as api:
        cid = company()
        await api.connect(cid)
        members = ["79001112233@s.whatsapp.net", "79004445566@s.whatsapp.net", "123456789012345@lid"]
        await control(api, cid, "group", group="120363000000000777@g.us", subject="Салон: мастера",
                      participants=members, admins=["79004445566@s.whatsapp.net"])
        for ref in ("120363000000000777@g.us", "120363000000000777"):
            r = await api.http.get(f"/api/whatsapp/sessions/{cid}/groups/{ref}", headers=ADMIN)
            assert r.status_code == 200, r.text
            group = r.json()["group"]
            assert group["jid"] == "120363000000000777@g.us" and group["subject"] == "Салон: мастера"
            assert group["participantCount"] == 3 and group["owner"] == members[0]
            assert [(p["jid"], p["phone"], p["isAdmin"], p["isSuperAdmin"]) for p in group["participants"]] == [
                (members[0], "79001112233", True, True), (members[1], "79004445566", True, False),
                (members[2], None, False, False)]
        missing = await api.http.get(f"/api/whatsapp/sessions/{cid}/groups/120363000000000999", headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found_on_whatsapp", missing.text
        for bad in ("79001234567@s.whatsapp.net", "not a group"):
            r = await api.http.get(f"/api/whatsapp/sessions/{cid}/groups/{bad}", headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"].startswith("group_id:"), (bad, r.text)
