"""``vmm start A B C`` and ``vmm stop A B C``: several VMs in one command, each in its own
forked child, against the fake firecracker in a network namespace."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import invariants
from tests.conftest import VmmEnv
from tests.integration.test_cli_firecracker import fc as fc
from tests.netns import NetNS
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def states(env: VmmEnv) -> dict[str, str]:
    return {v["name"]: v["state"] for v in json.loads(env.run("list", "-a", "--json", check=True).stdout)["vms"]}


def test_start_and_stop_several(fc: VmmEnv, netns: NetNS, tmp_path: Path) -> None:
    key = str(tmp_path / "key.pub")
    for name in ("fc2", "fc3"):
        fc.run("create", name, "--ssh-key", key, "--disk", "128", check=True)
    out = fc.run("start", "fc1", "fc2", "fc3", "--no-wait", ns=netns, check=True).stdout
    assert sorted(line.split()[2] for line in out.splitlines() if line.startswith("Started VM")) == [
        "fc1", "fc2", "fc3"
    ]
    assert states(fc) == {"fc1": "running", "fc2": "running", "fc3": "running"}
    assert invariants.check(fc.data_dir, netns.name, quiescent=True) == []
    ips = {json.loads(fc.run("inspect", n, check=True).stdout)["ip"] for n in ("fc1", "fc2", "fc3")}
    assert len(ips) == 3

    stop = fc.run("stop", "fc1", "fc2", "fc3", ns=netns, check=True).stdout
    assert stop.count("Stopped VM") == 3
    assert states(fc) == {"fc1": "stopped", "fc2": "stopped", "fc3": "stopped"}
    assert invariants.check(fc.data_dir, netns.name, quiescent=True) == []


def test_one_failure_fails_the_command_not_the_others(fc: VmmEnv, netns: NetNS) -> None:
    r = fc.run("start", "fc1", "nope", "--no-wait", ns=netns)
    assert r.returncode == 1
    assert "error: VM 'nope' does not exist" in r.stderr
    assert "error: 1 of 2 VMs failed to start: nope" in r.stderr
    assert states(fc) == {"fc1": "running"}
    fc.run("stop", "fc1", ns=netns, check=True)


def test_sigterm_reaches_every_start(fc: VmmEnv, netns: NetNS, tmp_path: Path) -> None:
    """SIGTERM to the command while its children start VMs: each child undoes its start (the
    fault point pauses them all mid-start), the command exits 143, nothing is left behind."""
    fc.run("create", "fc2", "--ssh-key", str(tmp_path / "key.pub"), "--disk", "128", check=True)
    env = fc.env() | {"VMM_TEST_FAULT": "start.network-ready:pause", "VMM_TEST_FAULT_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.name, sys.executable, "-m", "vmm", "start", "fc1", "fc2", "--no-wait"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (tmp_path / "start.network-ready").exists()
            and all('"starting"' in (fc.data_dir / "vms" / f"{n}.json").read_text() for n in ("fc1", "fc2")),
            timeout=60, what="the starts to reach the fault point",
        )  # fmt: skip
        time.sleep(1)  # give the second child time to reach it too
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert set(states(fc).values()) == {"error"}
    assert invariants.check(fc.data_dir, netns.name, quiescent=True) == []
    fc.run("start", "fc1", "fc2", "--no-wait", ns=netns, check=True)  # and the next run just works
    fc.run("stop", "fc1", "fc2", ns=netns, check=True)
