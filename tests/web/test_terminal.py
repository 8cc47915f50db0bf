"""The browser terminal (xterm.js over a WebSocket): the handshake refuses a forged Origin and
missing credentials; errors come back as terminal text; and on a real guest (QEMU/TCG, the test
guest of scripts/build-test-guest.sh) Chromium runs ``hostname`` over SSH and sees the serial
console's login prompt."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VmmEnv
from tests.web.browsing import login, shot, wait_until
from tests.web.conftest import make_server
from tests.web.harness import Server, WebSocketClient

pytestmark = pytest.mark.integration


def test_websocket_refuses_forged_origin_and_no_login(server: Server) -> None:
    cookie, _csrf = server.login()
    assert server.request("POST", "/api/v1/vms", {"name": "term"}).status == 201
    own = f"http://127.0.0.1:{server.relay.port}"  # type: ignore[union-attr]
    cases = [
        ({"Cookie": cookie, "Origin": "https://evil.example"}, 403),
        ({"Cookie": cookie, "Origin": "null"}, 403),
        ({"Cookie": cookie}, 403),  # a browser always sends Origin: none is not a browser's
        ({"Origin": own}, 403),  # no credentials
        ({"Cookie": "vmm_session=forged", "Origin": own}, 403),
        ({"Authorization": "Bearer wrong-wrong-wrong-wrong-wrong", "Origin": own}, 403),
        ({"Cookie": cookie, "Origin": own}, 101),
        ({"Authorization": f"Bearer {server.token}"}, 101),  # a script with the token
    ]
    for headers, status in cases:
        ws = WebSocketClient(server, "/ws/vms/term/ssh", headers)
        try:
            assert ws.status == status, headers
            if status == 101:  # the VM is stopped: the terminal says so and closes
                assert b"VM 'term' is not running" in ws.read_until(b"not running")
        finally:
            ws.close()
    ws = WebSocketClient(server, "/ws/vms/term/console", {"Authorization": f"Bearer {server.token}"})
    try:  # firecracker has no console socket to attach to
        assert ws.status == 101
        assert b"is not running" in ws.read_until(b"running")
    finally:
        ws.close()
    server.wait_job(server.request("DELETE", "/api/v1/vms/term"))


# -- a real guest -------------------------------------------------------------------------------


def use_test_guest(env: VmmEnv, tmp: Path) -> None:
    guest = Path(os.environ["VMM_TEST_GUEST"])
    env.write_config(engine="qemu", accel="tcg")
    env.run("kernel", "import", str(guest / "vmlinux"), "--name", "default", check=True)
    env.run("image", "import", str(guest / "rootfs.ext4"), "--name", "default", check=True)
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "key")], check=True)


@pytest.fixture(scope="module")
def guest_server() -> Iterator[Server]:
    d = os.environ.get("VMM_TEST_GUEST")
    if not d or not (Path(d) / "vmlinux").is_file():
        pytest.skip("no test guest: run scripts/test.sh (it builds one and sets VMM_TEST_GUEST)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    yield from make_server(setup=use_test_guest)


def screen(d: Any) -> str:
    return str(d.execute_script(
        "var b = window.vmmTerminal.buffer.active, out = [];"
        "for (var i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
        "return out.join('\\n');"))


def test_terminal_on_a_real_guest(guest_server: Server, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    s = guest_server
    key = s.env.root / "fake" / "key.pub"
    assert s.request("POST", "/api/v1/vms", {"name": "tty1", "ssh_key": str(key), "memory_mb": 256}).status == 201
    job = s.wait_job(s.request("POST", "/api/v1/vms/tty1/start", {"timeout": 240}), timeout=300)
    assert job["state"] == "succeeded", job
    d = browser
    login(d, s)

    d.get(s.base + "/vms/tty1/terminal?kind=ssh")
    wait_until(lambda: d.find_element(By.ID, "terminal").get_attribute("data-state") == "open", 10, "ws open")
    wait_until(lambda: "root@tty1:~# " in screen(d), 60, "a root prompt over SSH")
    d.find_element(By.CSS_SELECTOR, "#terminal textarea").send_keys("hostname; echo done-$((6*7))\n")
    wait_until(lambda: "done-42" in screen(d), 30, "hostname's output")
    out = screen(d)
    assert "\ntty1\n" in out, out
    shot(d, s, "terminal")

    d.get(s.base + "/vms/tty1/terminal?kind=console")
    wait_until(lambda: d.find_element(By.ID, "terminal").get_attribute("data-state") == "open", 10, "console open")
    time.sleep(0.5)
    d.find_element(By.CSS_SELECTOR, "#terminal textarea").send_keys("\n")
    wait_until(lambda: "tty1 login:" in screen(d), 30, "the serial console's login prompt")
    assert s.wait_job(s.request("DELETE", "/api/v1/vms/tty1?force=1"), timeout=120)["state"] == "succeeded"
