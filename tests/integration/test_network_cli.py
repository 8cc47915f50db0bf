"""`vmm network show/prune`, coexistence with a forward policy DROP, and network config clashes,
through the real CLI in private network namespaces (the VM runs on the fake firecracker)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_network import Server, attach_guest, connect_from
from tests.integration.test_portforward import make_vm_env
from tests.netns import NetNS, connect_outside

pytestmark = pytest.mark.integration

DOCKERISH = """
table ip filter {
    chain DOCKER-USER {
        return
    }
    chain FORWARD {
        type filter hook forward priority 0; policy drop;
        jump DOCKER-USER
    }
}
"""


@pytest.fixture
def env(vmm_env: VmmEnv, tmp_path: Path) -> VmmEnv:
    make_vm_env(vmm_env, tmp_path)
    return vmm_env


def vmm(env: VmmEnv, ns: NetNS, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return env.run(*args, ns=ns, check=check, timeout=120)


def test_network_show_and_prune(env: VmmEnv, netns_factory: Callable[[], NetNS]) -> None:
    host, outside = netns_factory(), netns_factory()
    connect_outside(host, outside)
    vmm(env, host, "create", "dev", "--disk", "128")
    vmm(env, host, "create", "idle", "--disk", "128")
    vmm(env, host, "start", "dev", "--no-wait")
    vmm(env, host, "port-forward", "dev", "8080:80")
    vmm(env, host, "port-forward", "idle", "8081:80")
    info = json.loads(vmm(env, host, "network", "show", "--json").stdout)
    assert info["bridge"] == {"name": "vmm-br0", "exists": True, "up": True, "addresses": ["172.16.0.1/16"]}
    assert (info["subnet"], info["gateway"]) == ("172.16.0.0/16", "172.16.0.1")
    assert info["uplink"]["default_route_dev"] == "uplink0"
    assert info["nat"] == {"table": True, "masquerade": True, "dnat_rules": 1}
    assert info["ip_forward"] == "1"
    assert [(a["vm"], a["ip"], a["state"]) for a in info["allocations"]] == [
        ("dev", "172.16.0.2", "running"),
        ("idle", "172.16.0.3", "created"),
    ]
    assert [(f["vm"], f["host_port"], f["state"]) for f in info["forwards"]] == [
        ("dev", 8080, "active"),
        ("idle", 8081, "VM stopped"),
    ]
    assert info["forward_policy"]["notes"] == [] and info["stale_taps"] == []
    text = vmm(env, host, "network", "show").stdout
    assert "NAT:         on" in text and "dev   172.16.0.2  running" in text

    # leftovers: a TAP of no VM, and the rules of a VM whose record vanished behind vmm's back
    host.run(["ip", "tuntap", "add", "dev", "vmm-deadbeef", "mode", "tap"])
    dev_id = json.loads((env.data_dir / "vms" / "dev.json").read_text())["id"]
    pid = json.loads((env.data_dir / "vms" / "dev.json").read_text())["pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    (env.data_dir / "vms" / "dev.json").unlink()
    assert "vmm-deadbeef" in json.loads(vmm(env, host, "network", "show", "--json").stdout)["stale_taps"]
    out = vmm(env, host, "network", "prune").stdout
    assert "Removed TAP vmm-deadbeef" in out and f"Removed TAP vmm-{dev_id}" in out
    assert "1 stale one(s) removed" in out
    assert "vmm-" not in host.run(["ip", "-o", "link", "show", "type", "tun"]).stdout
    assert "dnat to" not in host.run(["nft", "list", "table", "ip", "vmm"]).stdout
    assert "Nothing to prune" in vmm(env, host, "network", "prune").stdout
    vmm(env, host, "delete", "idle")
    assert "table ip vmm" not in host.run(["nft", "list", "ruleset"]).stdout
    assert "vmm-br0" not in host.run(["ip", "-o", "link"]).stdout


def test_forward_policy_drop_with_docker_user(
    env: VmmEnv, netns_factory: Callable[[], NetNS], tmp_path: Path
) -> None:
    host, guest, outside = netns_factory(), netns_factory(), netns_factory()
    connect_outside(host, outside)
    host.run(["nft", "-f", "-"], input=DOCKERISH)
    other_before = host.run(["nft", "list", "chain", "ip", "filter", "FORWARD"]).stdout
    vmm(env, host, "create", "dev", "--disk", "128")
    vmm(env, host, "start", "dev", "--no-wait")
    attach_guest(host, guest, "vmmt-g0", "172.16.0.2/16")
    Server(outside, "10.200.0.2", 9000, tmp_path / "out.log")
    assert connect_from(guest, "10.200.0.2", 9000) == "10.200.0.1"  # through the DROP policy
    user = host.run(["nft", "list", "chain", "ip", "filter", "DOCKER-USER"]).stdout
    assert 'iifname "vmm-br0" accept comment "vmm"' in user and 'oifname "vmm-br0" accept comment "vmm"' in user
    assert host.run(["nft", "list", "chain", "ip", "filter", "FORWARD"]).stdout == other_before
    info = json.loads(vmm(env, host, "network", "show", "--json").stdout)["forward_policy"]
    assert info["docker_user"] == "nft" and "accepts for vmm-br0 are in DOCKER-USER" in info["notes"][0]
    vmm(env, host, "start", "dev", check=False)  # a second start adds nothing twice
    assert host.run(["nft", "list", "chain", "ip", "filter", "DOCKER-USER"]).stdout.count('comment "vmm"') == 2
    host.run(["ip", "link", "del", "vmmt-g0"])
    vmm(env, host, "delete", "-f", "dev")
    user = host.run(["nft", "list", "chain", "ip", "filter", "DOCKER-USER"]).stdout
    assert "vmm" not in user and "return" in user  # ours gone, Docker's own rule kept


def test_forward_policy_drop_without_docker_user_is_explained(
    env: VmmEnv, netns_factory: Callable[[], NetNS], tmp_path: Path
) -> None:
    host, guest, outside = netns_factory(), netns_factory(), netns_factory()
    connect_outside(host, outside)
    host.run(["nft", "add", "table", "ip", "filter"])
    host.run(["nft", "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"])
    before = host.run(["nft", "list", "table", "ip", "filter"]).stdout
    vmm(env, host, "create", "dev", "--disk", "128")
    vmm(env, host, "start", "dev", "--no-wait")
    attach_guest(host, guest, "vmmt-g0", "172.16.0.2/16")
    Server(outside, "10.200.0.2", 9000, tmp_path / "out.log")
    assert connect_from(guest, "10.200.0.2", 9000, timeout=2).startswith("failed")  # not ours to fix
    assert host.run(["nft", "list", "table", "ip", "filter"]).stdout == before
    text = vmm(env, host, "network", "show").stdout
    assert "warning:     nft table ip filter, chain FORWARD (hook forward, policy drop) drops forwarded" in text
    host.run(["ip", "link", "del", "vmmt-g0"])
    vmm(env, host, "delete", "-f", "dev")


def test_subnet_change_with_vms_is_refused(env: VmmEnv, netns: NetNS) -> None:
    vmm(env, netns, "create", "dev", "--disk", "128")
    cfg = json.loads(env.config.read_text())
    env.write_config(**cfg, subnet="10.77.0.0/24", gateway="10.77.0.1")
    for args in (["start", "dev", "--no-wait"], ["create", "two", "--disk", "128"]):
        r = vmm(env, netns, *args, check=False)
        assert r.returncode == 1
        assert "error: the configured subnet 10.77.0.0/24 (gateway 10.77.0.1) does not fit existing VMs: dev (172.16.0.2)" in r.stderr
        assert "restore the old values" in r.stderr
    assert "vmm-br0" not in netns.run(["ip", "-o", "link"]).stdout
    env.write_config(**cfg)
    vmm(env, netns, "delete", "dev")


def test_subnet_overlapping_a_host_route_is_refused_at_start(env: VmmEnv, netns: NetNS) -> None:
    netns.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"])
    netns.run(["ip", "link", "set", "lan1", "up"])
    netns.run(["ip", "addr", "add", "172.16.5.1/24", "dev", "lan0"])
    netns.run(["ip", "link", "set", "lan0", "up"])
    vmm(env, netns, "create", "dev", "--disk", "128")
    r = vmm(env, netns, "start", "dev", "--no-wait", check=False)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == "error: subnet 172.16.0.0/16 overlaps the host route 172.16.5.0/24 dev lan0", r.stderr
    assert lines[-1] == "hint: configure another subnet and gateway for vmm"
    assert "vmm-br0" not in netns.run(["ip", "-o", "link"]).stdout
    vmm(env, netns, "delete", "dev")
