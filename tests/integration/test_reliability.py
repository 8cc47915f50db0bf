"""Races, kills and hostile records, through the CLI against the fake firecracker in a netns.

Faults are injected at named points of the commands (``vmm.faults``): a command is paused or
signalled at exactly the step a test names, never after a guessed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, use_fake_firecracker
from tests.netns import NetNS
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def fc(vmm_env: VmmEnv, tmp_path: Path) -> VmmEnv:
    use_fake_firecracker(vmm_env, tmp_path)
    vmm_env.run("create", "fc1", "--disk", "128", check=True)
    return vmm_env


def popen_vmm(env: VmmEnv, ns: NetNS, *args: str, **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "vmm", *args],
        env=env.env() | extra_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def run_vmm(env: VmmEnv, ns: NetNS, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    proc = popen_vmm(env, ns, *args, **extra_env)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def record(env: VmmEnv, name: str = "fc1") -> dict[str, object]:
    return json.loads((env.data_dir / "vms" / f"{name}.json").read_text())


def vm_taps(ns: NetNS) -> list[str]:
    links = json.loads(ns.run(["ip", "-j", "link", "show"]).stdout)
    return [str(lk["ifname"]) for lk in links if str(lk["ifname"]).startswith("vmm-") and lk["ifname"] != "vmm-br0"]


def test_delete_racing_a_start_does_not_remove_the_running_vm(fc: VmmEnv, netns: NetNS, tmp_path: Path) -> None:
    """The liveness check of ``delete`` happens inside the VM lock: a start that holds the lock
    finishes first, and delete then sees a running VM and refuses."""
    start = popen_vmm(
        fc, netns, "start", "fc1", "--no-wait",
        VMM_TEST_FAULT="start.locked:pause", VMM_TEST_FAULT_DIR=str(tmp_path),
    )  # fmt: skip
    marker = tmp_path / "start.locked"
    wait_until(marker.exists, 30, what="start to hold the VM lock")
    delete = popen_vmm(fc, netns, "delete", "fc1")  # the VM is not running yet
    wait_until(lambda: delete.poll() is not None or _waits_on_lock(delete.pid, fc), 30, what="delete to wait for the lock")
    marker.unlink()  # let the start go on
    assert start.wait(timeout=60) == 0, start.stderr.read() if start.stderr else ""
    out, err = delete.communicate(timeout=60)
    assert delete.returncode == 1, (out, err)
    assert "error: VM 'fc1' is running" in err
    vm = record(fc)
    assert vm["state"] == "running"
    assert (fc.data_dir / "vms" / "fc1" / "rootfs.ext4").is_file()
    assert vm_taps(netns) == [f"vmm-{vm['id']}"]
    fc.run("delete", "-f", "fc1", ns=netns, check=True)


def _waits_on_lock(pid: int, env: VmmEnv) -> bool:
    """The process (or its child, the vmm under ``ip netns exec``) blocks in flock on a vmm lock."""
    for p in [pid, *_children(pid)]:
        try:
            wchan = Path(f"/proc/{p}/wchan").read_text()
        except OSError:
            continue
        if "flock" in wchan or "locks" in wchan:
            return True
    return False


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_killed_start_leaves_a_record_naming_its_process(fc: VmmEnv, netns: NetNS) -> None:
    """SIGKILL right after the hypervisor was spawned: the record names the process (no leak),
    ``list`` shows it starting, and the next ``start`` stops it and starts cleanly."""
    r = run_vmm(fc, netns, "start", "fc1", "--no-wait", VMM_TEST_FAULT="start.spawned:kill")
    assert r.returncode == -signal.SIGKILL or r.returncode == 128 + signal.SIGKILL, r
    vm = record(fc)
    assert vm["state"] == "starting" and isinstance(vm["pid"], int) and vm["pid_boot_id"]
    orphan = int(vm["pid"])  # type: ignore[call-overload]
    assert orphan in netns.pids()
    listed = json.loads(fc.run("list", "-a", "--json", check=True).stdout)["vms"]
    assert [(v["name"], v["state"]) for v in listed] == [("fc1", "starting")]

    again = run_vmm(fc, netns, "start", "fc1", "--no-wait")
    assert again.returncode == 0, again.stderr
    vm = record(fc)
    assert vm["state"] == "running" and vm["pid"] != orphan
    wait_until(lambda: orphan not in netns.pids(), 10, what="the orphan to be gone")
    assert netns.pids() == [vm["pid"]]
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert netns.pids() == [] and vm_taps(netns) == []


@pytest.mark.parametrize("sig", ["term", "hup", "int"])
def test_signalled_start_cleans_up_like_ctrl_c(fc: VmmEnv, netns: NetNS, sig: str) -> None:
    fc.run("port-forward", "fc1", "18080:80", ns=netns, check=True)
    r = run_vmm(fc, netns, "start", "fc1", "--no-wait", VMM_TEST_FAULT=f"start.spawned:{sig}")
    signum = {"term": signal.SIGTERM, "hup": signal.SIGHUP, "int": signal.SIGINT}[sig]
    assert r.returncode == 128 + signum, r
    assert r.stderr.strip().splitlines()[-1].startswith("error: interrupted"), r.stderr
    assert "Traceback" not in r.stderr
    vm = record(fc)
    assert vm["state"] == "error" and vm["pid"] is None
    assert netns.pids() == [] and vm_taps(netns) == []
    assert "18080" not in netns.run(["nft", "list", "ruleset"]).stdout
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    fc.run("delete", "-f", "fc1", ns=netns, check=True)


def test_a_recycled_pid_is_never_signalled(fc: VmmEnv, netns: NetNS) -> None:
    """A record whose pid + start time match a live process that is not the VM's hypervisor
    (pid reuse, a hand-edited record): stop must not signal it."""
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        stat = Path(f"/proc/{bystander.pid}/stat").read_text()
        start_time = int(stat[stat.rfind(")") + 2 :].split()[19])
        path = fc.data_dir / "vms" / "fc1.json"
        vm = json.loads(path.read_text())
        vm.update(state="running", pid=bystander.pid, pid_start_time=start_time)
        path.write_text(json.dumps(vm))
        r = fc.run("stop", "fc1", ns=netns)
        assert r.returncode == 0, r.stderr
        assert bystander.poll() is None, "vmm signalled a process that is not its VM"
        assert record(fc)["state"] == "stopped"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_pid_from_before_a_reboot_is_not_alive(fc: VmmEnv) -> None:
    path = fc.data_dir / "vms" / "fc1.json"
    vm = json.loads(path.read_text())
    st = Path(f"/proc/{os.getpid()}/stat").read_text()
    vm.update(state="running", pid=os.getpid(), pid_start_time=int(st[st.rfind(")") + 2 :].split()[19]),
              pid_boot_id="00000000-0000-0000-0000-000000000000")
    path.write_text(json.dumps(vm))
    listed = json.loads(fc.run("list", "-a", "--json", check=True).stdout)["vms"]
    assert [(v["name"], v["state"]) for v in listed] == [("fc1", "stopped")]


def test_delete_force_removes_a_record_with_a_hostile_tap(fc: VmmEnv, netns: NetNS) -> None:
    """A record whose tap names another device is corrupt: vmm never deletes that device."""
    netns.run(["ip", "link", "add", "eth0", "type", "bridge"])  # any device vmm did not make
    path = fc.data_dir / "vms" / "fc1.json"
    vm = json.loads(path.read_text())
    vm["tap"] = "eth0"
    path.write_text(json.dumps(vm))
    listed = fc.run("list", "-a")
    assert "fc1" in listed.stderr and "tap" in listed.stderr  # reported as corrupt, by name
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert not path.exists()
    assert "eth0" in netns.run(["ip", "-o", "link", "show"]).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kernel", "../../../../etc/passwd"], "error: invalid kernel name '../../../../etc/passwd'"),
        (["--image", "../x"], "error: invalid image name '../x'"),
        (["--boot-args", "quiet\ninit=/bin/sh"], "error: --boot-args may only contain printable ASCII"),
        (["--boot-args", "root=/dev/vdb"], "error: --boot-args must not set root="),
        (["--boot-args", "x" * 3000], "error: --boot-args is too long (3000 characters"),
    ],
)
def test_create_validates_names_and_boot_args(fc: VmmEnv, args: list[str], message: str) -> None:
    before = sorted(p.name for p in (fc.data_dir / "vms").iterdir())
    r = fc.run("create", "bad", *args)
    assert r.returncode == 1
    assert r.stderr.startswith(message), r.stderr
    assert sorted(p.name for p in (fc.data_dir / "vms").iterdir()) == before


def debugfs_w(image: Path, *commands: str) -> None:
    for c in commands:
        subprocess.run(["debugfs", "-w", "-R", c, str(image)], check=True, capture_output=True)


def test_start_replays_the_journal_of_an_unclean_disk_before_editing_it(fc: VmmEnv, netns: NetNS) -> None:
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    fc.run("stop", "fc1", ns=netns, check=True)
    rootfs = fc.data_dir / "vms" / "fc1" / "rootfs.ext4"
    debugfs_w(rootfs, "feature needs_recovery", "ssv state 0")  # as a killed guest leaves it
    r = fc.run("start", "fc1", "--no-wait", ns=netns)
    assert r.returncode == 0, r.stderr
    assert "note: VM fc1 was not shut down cleanly: its disk's journal was replayed" in r.stderr
    fc.run("stop", "fc1", ns=netns, check=True)
    check = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_start_refuses_to_edit_a_disk_that_needs_a_manual_repair(fc: VmmEnv, netns: NetNS) -> None:
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    fc.run("stop", "fc1", ns=netns, check=True)
    rootfs = fc.data_dir / "vms" / "fc1" / "rootfs.ext4"
    debugfs_w(rootfs, "sif /etc/hostname block[0] 99999999", "ssv state 0")
    network_file = ["debugfs", "-R", "stat /etc/systemd/network/10-vmm.network", str(rootfs)]
    before = subprocess.run(network_file, capture_output=True, text=True, check=True).stdout
    r = fc.run("start", "fc1", "--no-wait", ns=netns)
    assert r.returncode == 1
    assert r.stderr.startswith(
        f"error: the disk of VM 'fc1' ({rootfs}) has errors that need a manual repair"
    ), r.stderr
    assert f"hint: repair it with 'e2fsck -f {rootfs}'" in r.stderr
    after = subprocess.run(network_file, capture_output=True, text=True, check=True).stdout
    assert after == before, "vmm edited a disk it refused to repair"
    assert netns.pids() == [] and vm_taps(netns) == []
    assert record(fc)["state"] == "error"


def test_create_sizes_the_default_disk_to_a_bigger_image(fc: VmmEnv, tmp_path: Path) -> None:
    from tests.conftest import make_ext4

    fc.run("image", "import", str(make_ext4(tmp_path / "big.ext4", 1100)), "--name", "big", check=True)
    r = fc.run("create", "b1", "--image", "big")
    assert r.returncode == 0, r.stderr
    assert "note: the disk is 1100 MB, the size of image 'big' (the default, 1024 MB, is smaller)" in r.stderr
    assert record(fc, "b1")["disk_mb"] == 1100
    explicit = fc.run("create", "b2", "--image", "big", "--disk", "1024")
    assert explicit.returncode == 1 and "--disk 1024 MB is smaller than image 'big'" in explicit.stderr
