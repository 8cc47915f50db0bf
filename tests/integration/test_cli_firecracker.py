"""The CLI lifecycle on the Firecracker engine, against the fake firecracker, in a netns.

No guest boots (the fake only speaks the API), but everything around it is real: the ext4 disk
prepared with debugfs, the bridge, TAP and nft table in a private namespace, the process spawned
detached, the API sequence, stop by SendCtrlAltDel with escalation, and clean deletion.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.fakes.fc_harness import install_fake
from tests.netns import NetNS
from tests.unit.test_kernels import fake_elf

pytestmark = pytest.mark.integration


@pytest.fixture
def fc(vmm_env: VmmEnv, netns: NetNS, tmp_path: Path) -> VmmEnv:
    fake = install_fake(tmp_path / "bin")
    vmm_env.write_config(engine="firecracker", firecracker_bin=str(fake))
    img = tmp_path / "root.ext4"
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    with img.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    vmm_env.run("kernel", "import", str(fake_elf(tmp_path / "vmlinux")), "--name", "default", check=True)
    vmm_env.run("image", "import", str(img), "--name", "default", check=True)
    vmm_env.run("create", "fc1", "--ssh-key", str(tmp_path / "key.pub"), "--disk", "128", check=True)
    return vmm_env


def links(ns: NetNS) -> list[dict[str, object]]:
    return json.loads(ns.run(["ip", "-j", "-d", "link", "show"]).stdout)


def test_firecracker_lifecycle(fc: VmmEnv, netns: NetNS) -> None:
    out = fc.run("start", "fc1", "--no-wait", ns=netns, check=True).stdout
    assert "Started VM fc1 (firecracker) at 172.16.0.2" in out
    vm = json.loads(fc.run("inspect", "fc1", check=True).stdout)
    assert vm["state"] == "running" and vm["live"]["process_alive"]
    # the host side is real: bridge with the gateway, TAP enslaved and up, vmm's nft table
    by_name = {link["ifname"]: link for link in links(netns)}
    assert by_name[f"vmm-{vm['id']}"]["master"] == "vmm-br0"
    assert "172.16.0.1/16" in netns.run(["ip", "-o", "addr", "show", "vmm-br0"]).stdout
    ruleset = netns.run(["nft", "list", "table", "ip", "vmm"]).stdout
    assert "masquerade" in ruleset
    assert netns.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    # the disk was prepared without mounting it
    rootfs = fc.data_dir / "vms" / "fc1" / "rootfs.ext4"
    assert rootfs.stat().st_size == 128 * 1024 * 1024
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(rootfs)], capture_output=True, text=True).stdout
    assert hostname == "fc1\n"
    # the console log is the fake's stdout
    assert (fc.data_dir / "logs" / "fc1.log").read_text()

    again = fc.run("start", "fc1", ns=netns)
    assert again.returncode == 1 and "already running" in again.stderr

    stop = fc.run("stop", "fc1", ns=netns, check=True).stdout
    assert "shut down by Ctrl-Alt-Del" in stop  # the fake exits like Firecracker with reboot=k
    assert f"vmm-{vm['id']}" not in {link["ifname"] for link in links(netns)}
    assert not (fc.data_dir / "sockets" / "fc1.sock").exists()

    # restart: the TAP is recreated, no "Resource busy"
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    assert f"vmm-{vm['id']}" in {link["ifname"] for link in links(netns)}
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert not any(str(link["ifname"]).startswith("vmm-") for link in links(netns))
    assert "table ip vmm" not in netns.run(["nft", "list", "ruleset"]).stdout
    assert netns.pids() == []
    assert not (fc.data_dir / "vms" / "fc1").exists()


def test_escalation_when_guest_ignores_ctrl_alt_del(fc: VmmEnv, netns: NetNS) -> None:
    env_extra = {"FAKE_FC_IGNORE_CTRL_ALT_DEL": "1"}
    env = fc.env() | env_extra
    start = subprocess.run(["ip", "netns", "exec", netns.name, *fc_argv("start", "fc1", "--no-wait")],
                           env=env, capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    stop = fc.run("stop", "fc1", "--timeout", "1", ns=netns, check=True).stdout
    assert "SIGTERM" in stop
    assert netns.pids() == []


def test_failed_start_leaves_nothing(fc: VmmEnv, netns: NetNS) -> None:
    fc.run("port-forward", "fc1", "18080:80", ns=netns, check=True)  # stored: the VM is stopped
    env = fc.env() | {"FAKE_FC_CRASH_AT_STARTUP": "1"}
    start = subprocess.run(["ip", "netns", "exec", netns.name, *fc_argv("start", "fc1", "--no-wait")],
                           env=env, capture_output=True, text=True)
    assert start.returncode == 1
    assert start.stderr.startswith("error: ") and "Traceback" not in start.stderr
    vm = json.loads(fc.run("inspect", "fc1", check=True).stdout)
    assert vm["state"] == "error" and vm["last_error"]
    assert not any(str(link["ifname"]).startswith("vmm-") and link["ifname"] != "vmm-br0" for link in links(netns))
    assert netns.pids() == []
    assert "18080" not in netns.run(["nft", "list", "ruleset"]).stdout  # its forward withdrawn
    # and the next start works
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    fc.run("delete", "-f", "fc1", ns=netns, check=True)


def fc_argv(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "vmm", *args]


def test_start_says_when_ssh_does_not_answer(fc: VmmEnv, netns: NetNS) -> None:
    """The fake has no sshd: waiting must end at --timeout with the reason, the VM left running."""
    r = fc.run("start", "fc1", "--timeout", "2", ns=netns)
    assert r.returncode == 1, r.stderr
    assert "Started VM fc1 (firecracker) at 172.16.0.2" in r.stdout
    assert "error: VM 'fc1' is running but SSH on 172.16.0.2 did not answer within 2 s" in r.stderr
    assert "Linux version 6.1.0-fake" in r.stderr  # the console tail
    assert "hint: it may still be booting: try 'vmm ssh fc1' later" in r.stderr
    vm = json.loads(fc.run("inspect", "fc1", check=True).stdout)
    assert vm["state"] == "running" and vm["live"]["process_alive"]
    fc.run("delete", "-f", "fc1", ns=netns, check=True)


def test_start_says_when_the_guest_exits_while_booting(
    fc: VmmEnv, netns: NetNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_GUEST_PANIC_AFTER", "1")
    r = fc.run("start", "fc1", "--timeout", "120", ns=netns)
    assert r.returncode == 1, r.stderr
    assert "error: VM 'fc1' exited while booting" in r.stderr
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in r.stderr
    assert "hint: see the whole console log with: cat " in r.stderr
    listed = json.loads(fc.run("list", "-a", "--json", check=True).stdout)["vms"]
    assert [(v["name"], v["state"]) for v in listed] == [("fc1", "stopped")]
    # nothing in the way of the next start
    monkeypatch.delenv("FAKE_FC_GUEST_PANIC_AFTER")
    fc.run("start", "fc1", "--no-wait", ns=netns, check=True)
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert netns.pids() == []
