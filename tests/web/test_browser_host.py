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


def test_a_build_from_the_images_page_shows_its_outcome_live(server: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    login(d, server)
    d.get(server.base + "/images")
    wait_until(lambda: "on" in d.find_element(By.ID, "live").get_attribute("class"), message="SSE connected")
    d.execute_script("window.__noReload = 1")
    d.find_element(By.ID, "kernel-build-name").send_keys("nosrc")
    d.find_element(By.ID, "kernel-build-source").send_keys("/nonexistent/linux.tar.xz")
    click(d, By.ID, "kernel-build-button")
    assert "Building kernel nosrc" in wait_until(lambda: d.find_element(By.ID, "flash").text, message="flash")
    box = wait_until(lambda: d.find_element(By.CSS_SELECTOR, '.job-box[data-kind="kernel-build"][data-state="failed"]'),
                     10, "the failed build in the panel")
    assert "kernel source /nonexistent/linux.tar.xz does not exist" in box.text
    # a bad field is the form's error message, and starts nothing
    d.find_element(By.ID, "image-build-name").send_keys("Bad_Name")
    click(d, By.ID, "image-build-button")
    assert "invalid image name" in wait_until(lambda: d.find_element(By.CSS_SELECTOR, "#flash .error").text)
    assert d.execute_script("return window.__noReload") == 1
    shot(d, server, "images")
