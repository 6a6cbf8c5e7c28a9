"""Headless Chromium for the real-browser tests: Debian's chromium and chromedriver (``make setup``
installs them), logged in to a node, with screenshots and the page's console saved as test artifacts."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.paths import REPO

T = TypeVar("T")

ARTIFACTS_ROOT = Path(os.environ.get("LESION_AI_TEST_ARTIFACTS") or REPO / "test-artifacts")
"""Where the browser tests save their screenshots (one folder per test module)."""


class BrowserPage:
    """A Selenium driver with the helpers every browser test uses; screenshots into ``artifacts``."""

    def __init__(self, driver: Any, artifacts: Path) -> None:
        self.driver = driver
        self.artifacts = artifacts
        self._console: list[str] = []

    def text(self, css: str = "body") -> str:
        """The visible text of the first element matching ``css`` ('' when there is none)."""
        return str(
            self.driver.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
            )
        )

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def wait(self, predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll ``predicate`` until it returns a true value; on timeout fail with a screenshot and the page."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                shot = self.screenshot("timeout")
                raise AssertionError(
                    f"timed out after {timeout_s:.0f} s waiting for {what} (screenshot {shot}); the page "
                    f"shows:\n{self.text()[-3000:]}"
                )
            time.sleep(0.2)

    def console(self) -> list[str]:
        """Everything the page logged to its console so far (``level message`` lines)."""
        self._console += [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]
        return list(self._console)

    def save_console(self) -> Path:
        """Write what the page logged to its console into ``console.txt``."""
        path = self.artifacts / "console.txt"
        path.write_text("\n".join(self.console()) + "\n", encoding="utf-8")
        return path


@contextmanager
def chromium_driver(
    profile: Path,
    credentials: dict[str, str],
    artifacts: Path,
    *,
    window: str = "1600,1000",
    arguments: Sequence[str] = (),
    logs: Sequence[str] = ("browser",),
    capabilities: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Debian's Chromium and chromedriver, headless, sending the node's credentials (HTTP basic auth) with
    every request of the page and its workers, as a browser does once a user entered them."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "chromium or chromedriver not found: install the Debian packages chromium and chromium-driver "
            "(make setup)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-background-networking",
        *arguments,
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", dict.fromkeys(logs, "ALL"))
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        token = f"{credentials['username']}:{credentials['password']}".encode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders",
            {"headers": {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}},
        )
        artifacts.mkdir(parents=True, exist_ok=True)
        yield driver
    finally:
        driver.quit()
