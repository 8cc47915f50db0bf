"""Driving Debian's headless Chromium with Selenium, for the web tests."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.harness import PASSWORD, Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium through Debian's chromedriver."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--force-device-scale-factor=1", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(what: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = what()
            if value:
                return value
        except Exception:  # the element is being swapped: look again
            value = None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(0.05)


def shot(driver: Any, server: Server, name: str) -> None:
    path = server.env.root / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("VMM_SCREENSHOT_DIR"):
        out = Path(os.environ["VMM_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / f"{name}.png")


def click(driver: Any, by: str, selector: str) -> None:
    """Click, looking the element up again if a live update swapped it meanwhile."""
    wait_until(lambda: driver.find_element(by, selector).click() or True, message=f"click {selector}")


def row_state(driver: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, f"vm-{name}").get_attribute("data-state"))




def login(driver: Any, server: Server, password: str = PASSWORD) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.base + "/login")
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    wait_until(lambda: driver.find_element(By.ID, "vm-rows") is not None, message="the dashboard after login")
