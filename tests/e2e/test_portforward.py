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
    r = outside.run(ssh_argv(world, "10.200.0.1", 2222), check=False, timeout=60)
    assert r.returncode != 0
    world.vmm("delete", "-f", "dev")
    assert "vmm-" not in world.links()
    assert "table ip vmm" not in world.ns.run(["nft", "list", "ruleset"]).stdout
