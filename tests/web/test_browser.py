"""The web UI in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): log in, create a VM, see it go running without a reload, stop it from the CLI and see
the page change, add a port forward, follow the console log, delete the VM (confirming).

Screenshots go to the server's temp dir, and to $VMM_SCREENSHOT_DIR when it is set (the ones in
docs/ were made that way).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.web.browsing import click, row_state, shot, wait_until
from tests.web.harness import PASSWORD, Server

pytestmark = pytest.mark.integration

def test_dashboard_in_a_real_browser(server: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    # a few VMs made by the CLI, for a dashboard worth looking at
    server.cli("create", "db", "--cpus", "2", "--memory", "1024", "--disk", "4096")
    server.cli("start", "db", "--no-wait")
    server.cli("port-forward", "db", "15432:5432")
    server.cli("create", "build", "--cpus", "4", "--memory", "2048")

    d.get(server.base + "/")
    assert "Log in" in d.page_source  # the login form, on a 401
    d.find_element(By.ID, "password").send_keys("wrong password!")
    d.find_element(By.ID, "login-button").click()
    assert "Wrong password" in wait_until(lambda: d.find_element(By.ID, "login-message").text)
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-button").click()
    wait_until(lambda: d.find_element(By.ID, "vm-db"), message="dashboard")
    wait_until(lambda: "on" in d.find_element(By.ID, "live").get_attribute("class"), message="SSE connected")
    d.execute_script("window.__noReload = 1")  # gone if the page reloads

    # create and start a VM from the UI; it turns running without a reload
    d.find_element(By.ID, "create-name").send_keys("web")
    d.find_element(By.ID, "create-button").click()
    assert "Created VM web" in wait_until(lambda: d.find_element(By.ID, "flash").text, message="flash")
    wait_until(lambda: row_state(d, "web") == "running", message="web running")
    assert d.execute_script("return window.__noReload") == 1
    shot(d, server, "dashboard")

    # stopped from the CLI: the page follows, still without a reload
    server.cli("stop", "web")
    t0 = time.monotonic()
    wait_until(lambda: row_state(d, "web") == "stopped", message="web stopped after vmm stop")
    assert time.monotonic() - t0 < 2.0
    assert d.execute_script("return window.__noReload") == 1

    # the VM's page: start it, a port forward, the console log followed live
    click(d, By.LINK_TEXT, "web")
    wait_until(lambda: d.find_element(By.ID, "vm-state").text == "stopped", message="VM page")
    click(d, By.CSS_SELECTOR, "#vm-detail button.start")
    wait_until(lambda: d.find_element(By.ID, "vm-state").text == "running", message="started from its page")
    d.find_element(By.ID, "forward-spec").send_keys("18081:80")
    d.find_element(By.CSS_SELECTOR, "#forward-form button").click()
    wait_until(lambda: "18081" in d.find_element(By.ID, "forwards").text, message="forward listed")
    wait_until(lambda: d.find_element(By.ID, "console").text.strip(), message="console log")
    assert "18081" in server.cli("port-forward", "list").stdout
    shot(d, server, "vm")

    # delete it (after the confirmation), back on the dashboard
    click(d, By.CSS_SELECTOR, "#vm-detail button.danger")
    wait_until(lambda: d.switch_to.alert, message="confirmation").accept()
    wait_until(lambda: d.current_url.rstrip("/") == server.base, message="back to the dashboard")
    wait_until(lambda: not d.find_elements(By.ID, "vm-web"), message="row gone")
    assert "web" not in [v["name"] for v in server.request("GET", "/api/v1/vms").json()["vms"]]

    # an error shows the CLI's message
    d.find_element(By.ID, "create-name").send_keys("db")
    d.find_element(By.ID, "create-button").click()
    assert "already exists" in wait_until(lambda: d.find_element(By.CSS_SELECTOR, "#flash .error").text)

    # the other pages render
    for path, words in (("/images", "default"), ("/network", "vmm-br0"), ("/doctor", "Doctor"), ("/jobs", "start")):
        d.get(server.base + path)
        assert words in d.page_source, path
    logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs

    for name in ("db", "build"):
        server.cli("delete", "-f", name)
