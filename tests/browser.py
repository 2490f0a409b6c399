"""A real headless browser for tests of pages: Debian's chromium, driven through chromium-driver by Selenium.

    def test_page(browser):  # the fixture, registered in conftest.py
        browser.open("http://127.0.0.1:8000/")          # or a file:// URL of a report
        ...browser.driver.find_element(...)...
        assert browser.console_errors() == []
        assert browser.requests_outside(["http://127.0.0.1:8000"]) == []

The fixture skips the test, with the reason, where /usr/bin/chromium, /usr/bin/chromedriver or Selenium is
absent (`apt-get install chromium chromium-driver`; Selenium comes with the test extra). Each test gets a fresh
browser with a fresh profile folder, started with everything that would talk to the network on its own turned
off (no component updates, sync, QUIC, background networking), so the requests it logs are the page's own.
Selenium is given both binaries' paths, so it never looks for (or downloads) a driver itself. The browser
starts on about:blank, its logs empty.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest

CHROMIUM = Path(os.environ.get("MVIT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("MVIT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests may run as root (CI containers), where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
    "--window-size=1200,900",
)


def unavailable() -> str | None:
    """Why no browser test can run here, or None when one can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@dataclass
class Browser:
    """A running headless chromium; `driver` is the Selenium WebDriver."""

    driver: Any

    def open(self, url: str) -> None:
        self.driver.get(url)

    def console_errors(self) -> list[str]:
        """Console messages of level error (uncaught exceptions, failed loads, CSP violations) since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """Every URL the browser sent a request for since the last call (from its DevTools network log)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def requests_outside(self, origins: Iterable[str], urls: list[str] | None = None) -> list[str]:
        """The requested URLs that leave `origins` (e.g. "http://127.0.0.1:8000"). data: URLs and blob: URLs of
        those origins stay inside the page."""
        allowed = tuple(origin.rstrip("/") + "/" for origin in origins)
        inside = allowed + tuple("blob:" + origin for origin in allowed) + ("data:",)
        return [url for url in (self.requested_urls() if urls is None else urls) if not url.startswith(inside)]


@pytest.fixture
def browser(tmp_path_factory) -> Browser:
    """A fresh headless chromium for one test (module docstring); skips where there is none."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        # It starts on its new-tab page, which loads chrome:// resources of its own: leave it, and drop what
        # it logged, so that the logs hold the test's pages only.
        driver.get("about:blank")
        driver.get_log("performance")
        driver.get_log("browser")
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
