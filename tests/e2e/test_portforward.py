"""A real guest reached through a port forward: ssh from the "outside" namespace to the host's
uplink address lands in the VM (one boot under TCG)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import World
from tests.netns import NetNS, connect_outside

pytestmark = pytest.mark.e2e


def ssh_argv(world: World, host: str, port: int) -> list[str]:
    return [
        "ssh", "-p", str(port), "-i", str(world.key), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=5", f"root@{host}", "hostname",
    ]  # fmt: skip


def test_ssh_through_a_port_forward(world: World, netns_factory: Callable[[], NetNS]) -> None:
    outside = netns_factory()
    connect_outside(world.ns, outside)  # host 10.200.0.1 <-> outside 10.200.0.2
    world.vmm("create", "dev", "--ssh-key", f"{world.key}.pub", "--memory", "256")
    world.vmm("port-forward", "dev", "2222:22")  # stored; applied at start
    world.vmm("start", "dev", "--timeout", "240")
    r = outside.run(ssh_argv(world, "10.200.0.1", 2222), check=False, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "dev", r.stderr
    r = world.ns.run(ssh_argv(world, "127.0.0.1", 2222), check=False, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "dev", r.stderr
    world.vmm("port-forward", "remove", "dev", "2222")
    table = world.ns.run(["nft", "list", "table", "ip", "vmm"]).stdout  # the VM runs: still there
    assert "dnat to" not in table and "2222" not in table, table  # its only forward is withdrawn
    # The rule is gone, so nothing answers on the host's port: the host's kernel refuses the
    # connection at once. Not any failure: a timeout (packets dropped), "No route to host" or an
    # authentication failure (the forward still there, the guest broken) would not be this.
    for ns, host in ((outside, "10.200.0.1"), (world.ns, "127.0.0.1")):
        r = ns.run(ssh_argv(world, host, 2222), check=False, timeout=60)
        assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
        assert f"ssh: connect to host {host} port 2222: Connection refused" in r.stderr, r.stderr
        assert r.stdout == ""
    world.vmm("delete", "-f", "dev")
    assert "vmm-" not in world.links()
    assert "table ip vmm" not in world.ns.run(["nft", "list", "ruleset"]).stdout
