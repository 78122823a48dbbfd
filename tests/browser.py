"""Headless Chromium for the page tests (Debian ``chromium`` + ``chromium-driver``).

A developer's machine without Chromium skips those tests with the reason; under ``CI=true`` a
missing browser fails them instead (``.ci/run`` installs it), so CI never goes green without them.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "needs Debian chromium + chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
)
IN_CI = os.environ.get("CI") == "true"
# For a page test module's ``pytestmark``: skipped on a developer's machine without Chromium only.
SKIP_WITHOUT_CHROMIUM = pytest.mark.skipif(MISSING is not None and not IN_CI, reason=MISSING or "")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
T = TypeVar("T")


def fail_without_chromium() -> None:
    """Under ``CI=true`` a missing browser fails the run instead of skipping it."""
    if MISSING is not None:
        pytest.fail(f"CI=true and Chromium is missing: {MISSING}")


@contextmanager
def chromium(window: str) -> Iterator[Any]:
    """A headless Chromium (a Selenium driver) with a fresh profile and a ``window`` size like "1280,800"."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={window}", f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """The predicate's first truthy value; a read that raises (an element re-rendered) is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise
        except Exception:  # selenium's stale or not-yet-rendered element: ask again
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
