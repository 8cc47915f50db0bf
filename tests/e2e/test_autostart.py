"""A real guest through host shutdown and boot: vmm autostop, then vmm autostart, SSH after."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


def test_autostop_then_autostart(world: World) -> None:
    w = world
    w.vmm(
        "create",
        "boot",
        "--memory",
        "256",
        "--disk",
        "1536",
        "--autostart",
        "--ssh-key",
        str(w.key) + ".pub",
    )
    w.vmm("start", "boot", "--timeout", "240")
    w.vmm("ssh", "boot", "--", "echo before > /root/marker && sync")

    stop = w.vmm("autostop")
    assert stop.stdout.strip() == "boot: stopped (shut down by the ACPI power button)"
    assert json.loads(w.vmm("list", "-a", "--json").stdout)["vms"][0]["state"] == "stopped"
    assert json.loads(w.vmm("inspect", "boot").stdout)["tap"] not in w.links()

    start = w.vmm("autostart")
    assert start.stdout.startswith("boot: started (qemu at 172.16.0.2)")
    deadline = time.monotonic() + 240
    while True:
        r = w.vmm("ssh", "boot", "--", "cat /root/marker", check=False, timeout=60)
        if r.returncode == 0:
            break
        assert time.monotonic() < deadline, f"no SSH after autostart: {r.stderr}"
        time.sleep(2)
    assert r.stdout.strip() == "before"
    w.vmm("delete", "-f", "boot")
    assert w.ns.pids() == []
