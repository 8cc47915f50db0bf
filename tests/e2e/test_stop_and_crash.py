"""A real guest that ignores the power button, then Ctrl-Alt-Del, is still shut down cleanly;
and a guest killed mid-write (kill -9, three times) loses nothing it synced and leaves a clean
filesystem: vmm replays the journal before it edits the disk at the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.e2e.conftest import World
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

IGNORE_POWER_BUTTON = "echo 0 > /sys/module/tiny_power_button/parameters/power_signal"


def fsck_clean(w: World, name: str) -> None:
    rootfs = w.env.data_dir / "vms" / name / "rootfs.ext4"
    check = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_stop_escalates_and_kills_lose_nothing(world: World) -> None:
    w = world
    w.vmm("create", "hard", "--memory", "256", "--disk", "1024", "--ssh-key", str(w.key) + ".pub")
    w.vmm("start", "hard", "--timeout", "240")

    # The guest ignores the ACPI power button. QEMU then presses Ctrl-Alt-Del on the emulated
    # keyboard, which this guest cannot see either (on -M microvm its i8042 driver gets no
    # IRQ 1: "probe of i8042 failed with error -22"), so poweroff over SSH with vmm's own
    # forced-command key ends it: still a clean shutdown, not a signal.
    w.vmm("ssh", "hard", "--", IGNORE_POWER_BUTTON)
    stop = w.vmm("stop", "hard", "--timeout", "40")  # a shutdown under TCG on a busy host takes time
    assert "Stopped VM hard: shut down by poweroff over SSH" in stop.stdout, stop.stdout + stop.stderr
    fsck_clean(w, "hard")
    # vmm's key can do nothing else in the guest
    key = w.env.data_dir / "ssh" / "vmm_power_ed25519"
    w.vmm("start", "hard", "--timeout", "240")
    vm_ip = json.loads(w.vmm("inspect", "hard").stdout)["ip"]
    other = w.ns.run(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                      "-o", "UserKnownHostsFile=/dev/null", f"root@{vm_ip}", "cat /etc/shadow"], check=False)
    assert other.returncode == 1 and "may only power the guest off" in other.stderr, other
    assert "root:" not in other.stdout

    # kill -9 while the guest writes, three times; what it synced before each kill survives.
    notes = []
    for i in range(3):
        if i:
            start = w.vmm("start", "hard", "--timeout", "240")
            notes.append(start.stderr)
        w.vmm("ssh", "hard", "--", f"echo round{i} > /root/synced-{i} && sync")
        w.vmm("ssh", "hard", "--",
              "nohup sh -c 'while :; do dd if=/dev/urandom of=/root/churn bs=64k count=32 "
              "conv=fsync 2>/dev/null; done' >/dev/null 2>&1 &")  # fmt: skip
        pid = json.loads(w.vmm("inspect", "hard").stdout)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda pid=pid: pid not in w.ns.pids(), 15, what="QEMU to die")
    start = w.vmm("start", "hard", "--timeout", "240")
    notes.append(start.stderr)
    assert sum("was not shut down cleanly: its disk's journal was replayed" in n for n in notes) >= 3, notes
    synced = w.vmm("ssh", "hard", "--", "cat /root/synced-0 /root/synced-1 /root/synced-2").stdout
    assert synced.split() == ["round0", "round1", "round2"]
    w.vmm("stop", "hard", "--timeout", "30")
    fsck_clean(w, "hard")
    w.vmm("delete", "hard")
    assert w.ns.pids() == []
