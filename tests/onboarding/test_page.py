"""The onboarding page in headless Chromium against a running stack with the simulator (SPEC O6).

The page must show the QR, follow its rotation, and show "connected" within
2 s of the scan — from WebSocket events, with no reload (the old page never
learned that the phone had connected). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import SKIP_WITHOUT_CHROMIUM, chromium, fail_without_chromium, screenshot, wait_for
from tests.stack_harness import StackProcess

pytestmark = [
    pytest.mark.timeout(240),
    # A developer's machine without Chromium skips; CI never does (see chromium_present).
    SKIP_WITHOUT_CHROMIUM,
]


@pytest.fixture(scope="module", autouse=True)
def chromium_present() -> None:
    fail_without_chromium()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    # Short QR lifetimes so the rotation happens within the test.
    s = StackProcess(tmp_path_factory.mktemp("onboarding") / "data",
                     QR_FIRST_TIMEOUT_S="4", QR_NEXT_TIMEOUT_S="3", QR_TOTAL_TIMEOUT_S="120")
    s.start()
    yield s
    s.kill()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium("720,900") as driver:
        yield driver


def _admin(stack: StackProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_key}"}


_wait = wait_for


def _shot(driver: Any, name: str) -> None:
    screenshot(driver, f"onboarding-{name}")


def test_qr_rotates_and_connected_shows_live(stack: StackProcess, browser) -> None:
    from selenium.webdriver.common.by import By

    link = httpx.post(f"{stack.api}/api/companies/962302/onboarding-link", headers=_admin(stack), timeout=30)
    assert link.status_code == 201, link.text
    url = link.json()["url"]
    assert "/onboarding/company_962302?token=obt_" in url

    browser.get(url)
    qr = browser.find_element(By.ID, "qr")
    first = _wait(lambda: qr.is_displayed() and qr.get_attribute("src"), 20, "a QR image")
    assert first.startswith(("data:image/png", "blob:"))
    natural_width = browser.execute_script("return arguments[0].naturalWidth", qr)
    assert natural_width > 50  # a real decoded image, not a broken one
    _shot(browser, "1-qr")

    # The simulator rotates the code (first after 4 s here); the page follows without a reload.
    marker = browser.execute_script("window.__noReload = 'still-here'; return window.__noReload")
    second = _wait(lambda: (src := qr.get_attribute("src")) != first and src, 15, "the QR image to change")
    assert second != first
    _shot(browser, "2-qr-rotated")

    scanned = httpx.post(f"{stack.api}/api/simulator/company_962302/scan", json={"phone": "79991234567"},
                         headers=_admin(stack), timeout=30)
    assert scanned.status_code == 200, scanned.text
    t0 = time.monotonic()
    text = browser.find_element(By.ID, "connected-text")
    _wait(lambda: text.is_displayed() and "Connected as +" in text.text, 2.0, "'connected' on the page")
    elapsed = time.monotonic() - t0
    assert elapsed <= 2.0
    assert browser.execute_script("return window.__noReload") == marker  # same document: no reload
    assert not browser.find_element(By.ID, "qr-box").is_displayed()
    _shot(browser, "3-connected")

    # 440 from elsewhere: the page says so and offers a relink button that works.
    httpx.post(f"{stack.api}/api/simulator/company_962302/replace", headers=_admin(stack), timeout=30)
    relink = browser.find_element(By.ID, "relink")
    _wait(relink.is_displayed, 10, "the relink button")
    assert "replaced" in browser.find_element(By.ID, "state").text
    _shot(browser, "4-replaced")
    relink.click()
    _wait(lambda: text.is_displayed() and "Connected as +" in text.text, 15, "connected again after relink")
    _shot(browser, "5-relinked")
