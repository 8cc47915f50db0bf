"""A real VM through the CLI only: create → start → ssh → stop → start → ssh → delete."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


def test_lifecycle(world: World) -> None:
    w = world
    out = w.vmm("create", "dev", "--cpus", "1", "--memory", "256", "--disk", "1536",
                "--ssh-key", str(w.key) + ".pub").stdout
    assert "172.16.0.2" in out

    start = w.vmm("start", "dev", "--timeout", "240")
    assert "172.16.0.2" in start.stdout and "ready after" in start.stdout, start.stdout + start.stderr

    listed = json.loads(w.vmm("list", "--json").stdout)["vms"]
    assert [(v["name"], v["state"], v["ip"], v["accel_in_use"]) for v in listed] == [
        ("dev", "running", "172.16.0.2", "tcg")
    ]
    table = w.vmm("list").stdout
    assert "qemu/tcg" in table and "running" in table

    ssh = w.vmm("ssh", "dev", "--", "cat", "/etc/hostname")
    assert ssh.stdout.strip() == "dev"
    # the remote exit code is passed through
    assert w.vmm("ssh", "dev", "--", "exit 7", check=False).returncode == 7
    # the guest got its address, gateway and disk size
    info = w.vmm("ssh", "dev", "--", "ip -4 -o addr show eth0; ip route; df -m / | tail -1").stdout
    assert "172.16.0.2/16" in info and "default via 172.16.0.1" in info
    assert int(info.strip().splitlines()[-1].split()[1]) > 1200  # grown to --disk
    tap = json.loads(w.vmm("inspect", "dev").stdout)["tap"]
    assert tap in w.links()

    # refused while running
    again = w.vmm("start", "dev", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    refused = w.vmm("delete", "dev", check=False)
    assert refused.returncode == 1 and "running" in refused.stderr

    # write something, stop, start: the disk persists and the TAP comes back
    w.vmm("ssh", "dev", "--", "echo persisted > /root/marker && sync")
    stop = w.vmm("stop", "dev")
    assert "Stopped VM dev: shut down by the ACPI power button" in stop.stdout  # not a kill
    assert tap not in w.links()
    assert json.loads(w.vmm("list", "-a", "--json").stdout)["vms"][0]["state"] == "stopped"
    stopped_again = w.vmm("stop", "dev")
    assert "not running" in stopped_again.stdout

    w.vmm("start", "dev", "--timeout", "240")
    assert w.vmm("ssh", "dev", "--", "cat /root/marker").stdout.strip() == "persisted"
    assert w.vmm("ssh", "dev", "--", "cat /etc/hostname").stdout.strip() == "dev"

    assert tap in w.links()
    w.vmm("delete", "-f", "dev")
    assert "vmm-" not in w.links()  # the TAP, and the bridge with the last VM
    data = w.env.data_dir
    assert not (data / "vms" / "dev.json").exists()
    assert not (data / "vms" / "dev").exists()
    assert not list((data / "sockets").iterdir())
    assert not (data / "logs" / "dev.log").exists()
    rules = w.ns.run(["nft", "list", "ruleset"]).stdout
    assert "172.16.0.2" not in rules
    assert w.ns.pids() == []  # no QEMU left in the namespace
