"""The host pages' jobs in a real headless Chromium: the doctor page's Fix button, the images
page's pull and build forms; each job's progress shows up in the page as it runs, and the
report or the lists follow when it ends, without a reload."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.browsing import click, login, shot, wait_until
from tests.web.harness import Server
from tests.web.test_doctor_fix import leave_leftovers, links

pytestmark = pytest.mark.integration


def test_doctor_fix_from_the_page(server: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    login(d, server)
    leave_leftovers(server)
    d.get(server.base + "/doctor")
    assert "vmm-deadbeef" in d.find_element(By.ID, "doctor-report").text
    wait_until(lambda: "on" in d.find_element(By.ID, "live").get_attribute("class"), message="SSE connected")
    d.execute_script("window.__noReload = 1")
    click(d, By.ID, "doctor-fix")
    wait_until(lambda: d.switch_to.alert, message="confirmation").accept()
    wait_until(lambda: d.find_elements(By.ID, "doctor-nothing"), 30, "the report after the fix")
    box = wait_until(lambda: d.find_element(By.CSS_SELECTOR, '.job-box[data-kind="doctor-fix"]'))
    assert "fixed: removed vmm-deadbeef" in box.text and "succeeded" in box.text
    assert "vmm-deadbeef" not in d.find_element(By.ID, "doctor-report").text
    assert d.execute_script("return window.__noReload") == 1
    assert "vmm-deadbeef" not in links(server)
    shot(d, server, "doctor")
