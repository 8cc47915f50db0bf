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
    # a bad field is the server's error message in the page, and starts nothing
    d.find_element(By.ID, "image-build-name").send_keys("img")
    suite = d.find_element(By.ID, "image-build-suite")
    suite.clear()
    suite.send_keys("bookworm; rm -rf /")
    click(d, By.ID, "image-build-button")
    assert "invalid suite" in wait_until(lambda: d.find_element(By.CSS_SELECTOR, "#flash .error").text)
    assert "img" not in [j["target"] for j in server.request("GET", "/api/v1/jobs").json()["jobs"]]
    # a name the browser itself refuses (the pattern) is not even sent
    name = d.find_element(By.ID, "image-build-name")
    name.clear()
    name.send_keys("Bad_Name")
    click(d, By.ID, "image-build-button")
    assert d.execute_script("return document.getElementById('image-build-name').validity.patternMismatch")
    logs = [e["message"] for e in d.get_log("browser")
            if "Content Security Policy" in e["message"] or "regular expression" in e["message"]]
    assert logs == [], logs  # no CSP violation, no pattern the browser cannot compile
    assert d.execute_script("return window.__noReload") == 1
    shot(d, server, "images")


def test_a_pull_from_the_images_page_shows_its_live_progress(
    server: Server, browser: Any, bucket: tuple[str, dict[str, bytes]]
) -> None:
    """The pull form against the fake CI bucket (in the server's namespace): the download's
    live line shows in the page while it runs, the new kernel and image appear in the lists
    when it ends, all without a reload."""
    from selenium.webdriver.common.by import By

    base, _ = bucket
    d = browser
    login(d, server)
    d.get(server.base + "/images")
    wait_until(lambda: "on" in d.find_element(By.ID, "live").get_attribute("class"), message="SSE connected")
    d.execute_script("window.__noReload = 1")
    assert not d.find_elements(By.ID, "image-webpull")
    d.find_element(By.ID, "pull-name").send_keys("webpull")
    d.find_element(By.ID, "pull-base-url").send_keys(base)
    click(d, By.ID, "pull-button")
    assert "Pulling the kernel and the rootfs as webpull" in wait_until(lambda: d.find_element(By.ID, "flash").text)
    running = '.job-box[data-kind="image-pull"][data-state="running"]'
    line = wait_until(lambda: [b.text for b in d.find_elements(By.CSS_SELECTOR, running)
                               if "ubuntu-24.04.squashfs: " in b.text], 30, "the download's live line")
    assert "/s)" in line[0]
    shot(d, server, "images-pull")
    done = '.job-box[data-kind="image-pull"][data-state="succeeded"]'
    box = wait_until(lambda: d.find_element(By.CSS_SELECTOR, done), 60, "the pull done")
    assert "Pulled image webpull from " in box.text
    wait_until(lambda: d.find_elements(By.ID, "image-webpull"), 5, "the image listed")
    wait_until(lambda: d.find_elements(By.ID, "kernel-webpull"), 5, "the kernel listed")
    assert d.execute_script("return window.__noReload") == 1
    assert server.request("DELETE", "/api/v1/images/webpull").status == 200
    assert server.request("DELETE", "/api/v1/kernels/webpull").status == 200
