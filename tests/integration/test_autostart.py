"""vmm autostart / autostop against fake-firecracker processes, in a private network namespace.

No guest boots, but the processes, the TAPs, the bridge and the stop escalation are real: the
flags and the policy are honoured, stops are graceful (SendCtrlAltDel) and run in parallel, and
one failing VM does not keep the others from starting or stopping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, make_ext4
from tests.fakes.fc_harness import install_fake
from tests.netns import NetNS
from tests.unit.test_kernels import fake_elf
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def fc(vmm_env: VmmEnv, netns: NetNS, tmp_path: Path) -> VmmEnv:
    vmm_env.write_config(engine="firecracker", firecracker_bin=str(install_fake(tmp_path / "bin")))
    vmm_env.run(
        "kernel", "import", str(fake_elf(tmp_path / "vmlinux")), "--name", "default", check=True
    )
    vmm_env.run(
        "image", "import", str(make_ext4(tmp_path / "root.ext4")), "--name", "default", check=True
    )
    return vmm_env


def vmm(env: VmmEnv, ns: NetNS, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "vmm", *args],
        env=env.env() | extra_env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def running(env: VmmEnv) -> set[str]:
    return {v["name"] for v in json.loads(env.run("list", "--json", check=True).stdout)["vms"]}


def lines(out: str) -> dict[str, str]:
    return {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if ":" in line
    }


def test_flags_graceful_stop_and_failure_isolation(
    fc: VmmEnv, netns: NetNS, tmp_path: Path
) -> None:
    fc.run("create", "a", "--autostart", check=True)
    fc.run("create", "b", check=True)
    fc.run("create", "c", check=True)
    assert "will start" in fc.run("autostart", "enable", "b", check=True).stdout
    fc.run("autostart", "enable", "c", check=True)
    assert "will not start" in fc.run("autostart", "disable", "c", check=True).stdout
    unknown = fc.run("autostart", "enable", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    # d is flagged but cannot start: its kernel is gone
    fc.run("kernel", "import", str(fake_elf(tmp_path / "k2")), "--name", "gone", check=True)
    fc.run("create", "d", "--kernel", "gone", "--autostart", check=True)
    (fc.data_dir / "images" / "kernels" / "gone").unlink()

    r = vmm(fc, netns, "autostart")
    assert r.returncode == 1, r.stdout + r.stderr
    got = lines(r.stdout + r.stderr)
    assert got["a"].startswith("started") and got["b"].startswith("started")
    assert got["d"].startswith("failed") and "kernel 'gone' not found" in got["d"]
    assert "c" not in got
    assert running(fc) == {"a", "b"}
    assert (
        json.loads(fc.run("inspect", "a", check=True).stdout)["live"]["engine_state"] == "Running"
    )

    # a second autostart changes nothing
    again = vmm(fc, netns, "autostart")
    assert "a: already-running" in again.stdout

    # autostop: graceful (SendCtrlAltDel), and a VM whose record is unreadable is reported as
    # failed without keeping the others running
    record = fc.data_dir / "vms" / "b.json"
    saved = record.read_text()
    record.write_text("{broken")
    stop = vmm(fc, netns, "autostop")
    assert stop.returncode == 1
    got = lines(stop.stdout + stop.stderr)
    assert got["a"] == "stopped (shut down by Ctrl-Alt-Del)"
    assert got["b"].startswith("failed (cannot read its record")
    record.write_text(saved)
    assert running(fc) == {"b"}  # a stopped; b untouched
    assert vmm(fc, netns, "stop", "b").returncode == 0
    assert netns.pids() == []
    ok = vmm(fc, netns, "autostop")
    assert ok.returncode == 0 and "no VMs to stop" in ok.stdout


def test_autostop_is_parallel_and_escalates(fc: VmmEnv, netns: NetNS) -> None:
    for name in ("p1", "p2", "p3"):
        fc.run("create", name, "--autostart", check=True)
    r = vmm(fc, netns, "autostart", FAKE_FC_IGNORE_CTRL_ALT_DEL="1")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    stop = vmm(fc, netns, "autostop", "--timeout", "3")
    elapsed = time.monotonic() - t0
    assert stop.returncode == 0, stop.stderr
    # every VM named, each escalated to SIGTERM (not all() over possibly empty output)
    assert lines(stop.stdout) == dict.fromkeys(("p1", "p2", "p3"), "stopped (terminated (SIGTERM))")
    assert elapsed < 3 * 3, f"three 3 s graceful waits took {elapsed:.1f} s: not parallel"
    assert netns.pids() == []


def test_policy_running_restores_exactly_the_running_set(fc: VmmEnv, netns: NetNS) -> None:
    cfg = json.loads(fc.config.read_text())
    fc.write_config(**cfg, autostart_policy="running")
    shown = json.loads(fc.run("config", "show", "--json", check=True).stdout)
    assert shown["autostart_policy"] == {"value": "running", "source": "config file"}
    fc.run("create", "flagged", "--autostart", check=True)
    fc.run("create", "b", check=True)
    fc.run("create", "c", check=True)
    for name in ("b", "c"):
        assert vmm(fc, netns, "start", name, "--no-wait").returncode == 0
    stop = vmm(fc, netns, "autostop")
    assert stop.returncode == 0 and set(lines(stop.stdout)) == {"b", "c"}
    assert json.loads((fc.data_dir / "autostart-running.json").read_text())["vms"] == ["b", "c"]
    assert running(fc) == set()

    start = vmm(fc, netns, "autostart")
    assert start.returncode == 0, start.stderr
    assert set(lines(start.stdout)) == {"b", "c"}
    assert running(fc) == {"b", "c"}  # not the flagged one
    assert not (fc.data_dir / "autostart-running.json").exists()  # one shutdown, used once

    # the host dies without autostop: the records still say running, and that is what comes back
    pids = {
        name: json.loads(fc.run("inspect", name, check=True).stdout)["pid"] for name in ("b", "c")
    }
    assert set(pids.values()) <= set(netns.pids()), (pids, netns.pids())
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not set(pids.values()) & set(netns.pids()),
        30,
        what=f"the killed VM processes {pids} gone",
    )
    wait_until(lambda: running(fc) == set(), 30, what="vmm list showing no running VM")
    for name in ("b", "c"):  # what autostart goes by
        assert json.loads((fc.data_dir / "vms" / f"{name}.json").read_text())["state"] == "running"
    start = vmm(fc, netns, "autostart")
    assert start.returncode == 0, start.stderr
    assert running(fc) == {"b", "c"}
    assert vmm(fc, netns, "autostop").returncode == 0
    assert netns.pids() == []


def test_bad_policy_is_a_config_error(fc: VmmEnv) -> None:
    cfg = json.loads(fc.config.read_text())
    fc.write_config(**cfg, autostart_policy="always")
    r = fc.run("config", "show")
    assert r.returncode == 1 and "$.autostart_policy" in r.stderr
