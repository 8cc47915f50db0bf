"""Instant VMs with a real guest under QEMU/TCG, through the CLI only: suspend and resume
(processes, files and uptime go on), a failed resume that leaves the VM suspended, named
snapshots restored exactly, and clones and image snapshots that boot with their own identity."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

COUNTER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/counter; sleep 1; done' "
           "</dev/null >/dev/null 2>&1 &")


def sh(w: World, name: str, command: str) -> str:
    return w.vmm("ssh", name, "--", command).stdout.strip()


def uptime(w: World, name: str) -> float:
    return float(sh(w, name, "cat /proc/uptime").split()[0])


def state_of(w: World, name: str) -> str:
    listed = json.loads(w.vmm("list", "-a", "--json").stdout)["vms"]
    return next(v["state"] for v in listed if v["name"] == name)


def create_and_boot(w: World, name: str, *extra: str) -> None:
    w.vmm("create", name, "--memory", "256", "--disk", "1024", "--ssh-key", str(w.key) + ".pub", *extra)
    w.vmm("start", name, "--timeout", "240")


def test_suspend_and_resume(world: World) -> None:
    w = world
    create_and_boot(w, "dev")
    sh(w, "dev", "echo kept > /root/marker; " + COUNTER)
    time.sleep(3)
    before, up_before = int(sh(w, "dev", "cat /root/counter")), uptime(w, "dev")
    tap = json.loads(w.vmm("inspect", "dev").stdout)["tap"]

    out = w.vmm("suspend", "dev").stdout
    assert "Suspended VM dev in" in out and "Resume it with: vmm start dev" in out
    assert state_of(w, "dev") == "suspended"
    assert "suspended" in w.vmm("list").stdout  # shown without -a: it is not stopped
    assert tap not in w.links() and w.ns.pids() == []
    state = w.env.data_dir / "vms" / "dev" / "suspend" / "vmstate"
    st = state.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_blocks * 512 <= st.st_size + 4096
    assert st.st_size < 256 * 1024 * 1024  # zero pages are not written out
    refused = w.vmm("suspend", "dev", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: VM 'dev' is already suspended")

    time.sleep(4)  # the guest does not see this time pass
    t0 = time.monotonic()
    start = w.vmm("start", "dev", "--timeout", "60")
    took = time.monotonic() - t0
    assert "ready after" in start.stdout, start.stdout + start.stderr
    assert took < 15, f"resume took {took:.1f} s"
    assert tap in w.links()
    assert sh(w, "dev", "cat /root/marker") == "kept"
    after, up_after = int(sh(w, "dev", "cat /root/counter")), uptime(w, "dev")
    assert after >= before  # the counter process lived on
    assert up_before < up_after < up_before + took + 30  # no reboot, no jump by the pause
    time.sleep(2.5)
    assert int(sh(w, "dev", "cat /root/counter")) > after  # and it still counts
    assert not (w.env.data_dir / "vms" / "dev" / "suspend").exists()

    # A state the hypervisor cannot load: one clear error, the VM stays suspended, the state intact.
    w.vmm("suspend", "dev")
    saved = w.env.data_dir / "vms" / "dev" / "suspend"
    shutil.copy2(saved / "vmstate", w.env.root / "vmstate.good")
    os.truncate(saved / "vmstate", 4096)
    bad = w.vmm("start", "dev", "--timeout", "60", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: QEMU could not restore"), bad.stderr
    assert "still suspended" in bad.stderr and "Traceback" not in bad.stderr
    assert state_of(w, "dev") == "suspended" and w.ns.pids() == [] and tap not in w.links()
    shutil.copy2(w.env.root / "vmstate.good", saved / "vmstate")
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "engine_version": "6.0.0"}))
    other = w.vmm("start", "dev", check=False)
    assert other.returncode == 1 and "saved under qemu 6.0.0" in other.stderr.splitlines()[0]
    (saved / "meta.json").write_text(json.dumps(meta))
    w.vmm("start", "dev", "--timeout", "60")
    assert sh(w, "dev", "cat /root/marker") == "kept"
    w.vmm("delete", "-f", "dev")
    assert w.ns.pids() == []


def test_snapshots_restore_exactly(world: World) -> None:
    w = world
    create_and_boot(w, "dev")
    sh(w, "dev", "mkdir -p /root/work && echo one > /root/work/a && echo two > /root/work/b; " + COUNTER)
    time.sleep(2)
    taken = w.vmm("snapshot", "create", "dev", "before").stdout
    assert "Created snapshot before of VM dev" in taken and "memory + disks" in taken
    marker = int(sh(w, "dev", "cat /root/counter"))
    sh(w, "dev", "rm /root/work/a && echo changed > /root/work/b && echo new > /root/work/c && sync")

    listed = json.loads(w.vmm("snapshot", "list", "dev", "--json").stdout)
    assert [(s["name"], s["kind"], s["vm_state"], s["engine"]) for s in listed] == [
        ("before", "memory", "running", "qemu")
    ]
    assert listed[0]["engine_version"] and listed[0]["size"] > 0
    table = w.vmm("snapshot", "list").stdout
    assert "before" in table and "running (memory+disks)" in table

    restored = w.vmm("snapshot", "restore", "dev", "before").stdout
    assert "Restored VM dev to snapshot before" in restored and "running" in restored
    w.vmm("start", "dev", check=False)  # already running: nothing to do
    assert sh(w, "dev", "ls /root/work") == "a\nb"
    assert sh(w, "dev", "cat /root/work/a /root/work/b") == "one\ntwo"
    assert int(sh(w, "dev", "cat /root/counter")) <= marker + 3  # back in time

    # bad input: one line, exit 1, nothing changed
    for args, message in [
        (("snapshot", "create", "dev", "Bad_Name"), "error: invalid snapshot name 'Bad_Name'"),
        (("snapshot", "create", "dev", "before"), "error: VM 'dev' already has a snapshot 'before'"),
        (("snapshot", "restore", "dev", "nope"), "error: VM 'dev' has no snapshot 'nope'"),
        (("snapshot", "delete", "dev", "nope"), "error: VM 'dev' has no snapshot 'nope'"),
        (("snapshot", "list", "ghost"), "error: VM 'ghost' does not exist"),
        (("clone", "dev", "dev2"), "error: VM 'dev' is running: stop it first"),
    ]:
        r = w.vmm(*args, check=False)
        assert r.returncode == 1 and r.stderr.splitlines()[0] == message, (args, r.stderr)
    assert state_of(w, "dev") == "running"

    # a stopped VM: disks only, and it says so
    w.vmm("stop", "dev")
    cold = w.vmm("snapshot", "create", "dev", "cold").stdout
    assert "disks only: the VM was stopped" in cold
    refused = w.vmm("suspend", "dev", check=False)
    assert refused.returncode == 1 and "is not running" in refused.stderr
    w.vmm("snapshot", "delete", "dev", "before")
    assert [s["name"] for s in json.loads(w.vmm("snapshot", "list", "dev", "--json").stdout)] == ["cold"]
    w.vmm("delete", "-f", "dev")
    assert w.ns.pids() == []


def test_clone_and_image_snapshot(world: World) -> None:
    w = world
    create_and_boot(w, "src")
    keys_src = sh(w, "src", "cat /etc/ssh/ssh_host_*_key.pub")
    mid_src = sh(w, "src", "cat /etc/machine-id")
    sh(w, "src", "echo from-src > /root/data && sync")
    w.vmm("stop", "src")

    exists = w.vmm("clone", "src", "src", check=False)
    assert exists.returncode == 1 and exists.stderr.startswith("error: a clone needs a name of its own")
    out = w.vmm("clone", "src", "copy").stdout
    assert "Cloned VM src to copy" in out
    again = w.vmm("clone", "src", "copy", check=False)
    assert again.returncode == 1 and again.stderr.splitlines()[0] == "error: VM 'copy' already exists"

    w.vmm("start", "src", "--timeout", "240")
    w.vmm("start", "copy", "--timeout", "240")
    vms = {v["name"]: v for v in json.loads(w.vmm("list", "--json").stdout)["vms"]}
    assert vms["src"]["ip"] != vms["copy"]["ip"] and vms["src"]["mac"] != vms["copy"]["mac"]
    assert vms["src"]["id"] != vms["copy"]["id"]
    assert sh(w, "copy", "cat /etc/hostname") == "copy" and sh(w, "src", "cat /etc/hostname") == "src"
    assert sh(w, "copy", "cat /root/data") == "from-src"
    assert sh(w, "copy", "cat /etc/ssh/ssh_host_*_key.pub") != keys_src
    assert sh(w, "copy", "cat /etc/machine-id") not in ("", mid_src)
    ping = w.vmm("ssh", "copy", "--", f"ping -c 1 -W 5 {vms['src']['ip']}", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    w.vmm("stop", "copy")
    img = w.vmm("image", "snapshot", "copy", "--name", "devbox").stdout
    assert "Created image devbox from VM copy" in img
    assert "devbox" in w.vmm("image", "list").stdout
    create_and_boot(w, "fresh", "--image", "devbox")
    assert sh(w, "fresh", "cat /root/data") == "from-src"
    assert sh(w, "fresh", "cat /etc/hostname") == "fresh"
    for name in ("src", "fresh"):
        w.vmm("stop", name)
    for name in ("src", "copy", "fresh"):
        w.vmm("delete", name)
    assert w.ns.pids() == []
