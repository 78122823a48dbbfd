"""Phone numbers as customers write them (DEFAULT_PHONE_REGION): ``8 9XX…`` and ``9XX…`` reach +7 9XX…,
international digits still work, and a number that cannot be read is a 422 naming the region tried."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from domain.addresses import InvalidAddress, normalize_phone
from domain.settings import Settings
from tests.api.conftest import ADMIN, Api, company, run_connector_inprocess, run_worker, serve_asgi

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("written", ["8 999 123-45-67", "8 (999) 123 45 67", "999 123-45-67", "9991234567",
                                     "79991234567", "+7 999 123-45-67"])
def test_russian_numbers_as_customers_write_them(written: str) -> None:
    assert normalize_phone(written, "RU") == "79991234567"


def test_region_falls_back_to_international_digits_and_names_itself_when_it_cannot() -> None:
    assert normalize_phone("4915112345678", "RU") == "4915112345678"  # a German mobile, no +
    with pytest.raises(InvalidAddress, match=r"tried as a RU number"):
        normalize_phone("8 999", "RU")
    with pytest.raises(InvalidAddress, match=r"no DEFAULT_PHONE_REGION"):
        normalize_phone("8 999 123-45-67")


def test_region_setting_is_checked() -> None:
    assert Settings(_env_file=None, default_phone_region="ru").default_phone_region == "RU"
    with pytest.raises(ValueError, match="DEFAULT_PHONE_REGION"):
        Settings(_env_file=None, default_phone_region="XX")


@pytest.fixture
async def ru_stack(client: Client, api_settings: Settings) -> AsyncIterator[Api]:
    settings = api_settings.model_copy(update={"default_phone_region": "RU"})
    async with run_worker(settings, client), run_connector_inprocess(settings), serve_asgi(settings, client) as api:
        yield api


async def test_send_to_a_domestic_number_with_the_region_set(ru_stack: Api) -> None:
    api = ru_stack
    cid = company()
    await api.connect(cid)
    url = f"/api/whatsapp/sessions/{cid}/send"

    sent = await api.http.post(url, json={"phone": "8 900 123-45-67", "message": "Запись подтверждена"},
                               headers=ADMIN)
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert body["to"] == "79001234567@s.whatsapp.net" and body["phone"] == "79001234567"
    outbox = (await api.http.get(f"/api/simulator/{cid}/outbox", headers=ADMIN)).json()["messages"]
    assert [m["to"] for m in outbox] == ["79001234567@s.whatsapp.net"]

    bad = await api.http.post(url, json={"to": "8 900", "message": "x"}, headers=ADMIN)
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("to: '8 900' is not") and "RU" in bad.json()["error"]

    init = await api.http.post(f"/api/whatsapp/sessions/{company()}/initialize", json={"pairingPhone": "8 900"},
                               headers=ADMIN)
    assert init.status_code == 422 and init.json()["error"].startswith("pairingPhone:") and "RU" in init.text


async def test_without_a_region_a_domestic_number_is_refused_with_the_reason(api: Api) -> None:
    cid = company()
    resp = await api.http.post(f"/api/whatsapp/sessions/{cid}/send",
                               json={"phone": "8 900 123-45-67", "message": "x"}, headers=ADMIN)
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("phone: ") and "DEFAULT_PHONE_REGION" in resp.json()["error"]
