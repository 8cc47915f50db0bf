"""Fifty VMs at once, through the real CLI against the fake firecracker in a private namespace.

50 ``vmm start --no-wait`` launched together: 50 running VMs with distinct addresses, MACs and
TAPs, every TAP on the bridge, one ``ip vmm`` table holding exactly the DNAT rules the records
imply (each forward once, none lost to a start that replaced the table of another), and 50 fake
hypervisors alive; then 50 ``vmm stop`` together leave no process and no TAP, and deleting every
VM leaves no table and no bridge. The timed version of this scenario is bench/bench_fifty.py.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VmmEnv, register_artifacts
from tests.fakes.fc_harness import install_fake
from tests.integration.test_reliability import popen_vmm
from tests.netns import NetNS

pytestmark = pytest.mark.integration

N = 50
BRIDGE = "vmm-br0"
NAMES = [f"f{i:02d}" for i in range(N)]

# (host address or None, proto, host port, guest ip, guest port): one DNAT rule per chain
Rule = tuple[str | None, str, int, str, int]


def forward_spec(i: int) -> str | None:
    """Every third VM gets one forward, each on its own host port; two of them localhost-only
    or UDP, so the rule parsing below sees every shape vmm renders."""
    if i % 3:
        return None
    if i == 3:
        return f"127.0.0.1:{21000 + i}:22"
    if i == 6:
        return f"{21000 + i}:53/udp"
    return f"{21000 + i}:80"


def expected_rules(vms: list[dict[str, Any]]) -> list[Rule]:
    rules = [
        (f.get("host_addr"), f["proto"], f["host_port"], vm["ip"], f["guest_port"])
        for vm in vms
        for f in vm["port_forwards"]
    ]
    return sorted(rules, key=repr)


def parse_dnat(expr: list[dict[str, Any]]) -> Rule:
    """One DNAT rule of ``nft -j``: ``fib daddr type local`` or ``ip daddr A``, ``PROTO dport P``,
    ``dnat to IP:PORT``; anything else in it fails the test."""
    host_addr: str | None = None
    proto, dport, target = None, None, None
    for item in expr:
        if "dnat" in item:
            target = (item["dnat"]["addr"], item["dnat"]["port"])
            continue
        match = item["match"]
        left, right = match["left"], match["right"]
        assert match["op"] == "==", expr
        if "fib" in left:
            assert left["fib"] == {"result": "type", "flags": ["daddr"]} and right == "local", expr
        elif left.get("payload", {}).get("protocol") == "ip":
            assert left["payload"]["field"] == "daddr", expr
            host_addr = right
        else:
            assert left["payload"]["field"] == "dport", expr
            proto, dport = left["payload"]["protocol"], right
    assert proto is not None and dport is not None and target is not None, expr
    return (host_addr, proto, dport, target[0], target[1])


def nft_table(ns: NetNS) -> dict[str, list[list[dict[str, Any]]]] | None:
    """vmm's table as ``{chain: [rule expr, ...]}`` from ``nft -j``; None when it is absent."""
    tables = json.loads(ns.run(["nft", "-j", "list", "tables"]).stdout)["nftables"]
    ours = [t["table"] for t in tables if "table" in t and t["table"]["name"] == "vmm"]
    if not ours:
        return None
    assert [t["family"] for t in ours] == ["ip"], ours  # one table, in one family
    items = json.loads(ns.run(["nft", "-j", "list", "table", "ip", "vmm"]).stdout)["nftables"]
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for item in items:
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            chains[item["rule"]["chain"]].append(item["rule"]["expr"])
    return chains


def links(ns: NetNS) -> dict[str, dict[str, Any]]:
    return {lk["ifname"]: lk for lk in json.loads(ns.run(["ip", "-d", "-j", "link", "show"]).stdout)}


def vmm_taps(ns: NetNS) -> set[str]:
    return {name for name in links(ns) if name.startswith("vmm-") and name != BRIDGE}


def all_at_once(env: VmmEnv, ns: NetNS, *args: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """``vmm ARGS NAME`` for every VM, all launched before any is waited for."""
    procs = {name: popen_vmm(env, ns, *args, name) for name in NAMES}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    failed = {n: (r.returncode, r.stderr) for n, r in done.items() if r.returncode != 0}
    assert failed == {}, f"vmm {' '.join(args)} failed for {len(failed)} VMs: {failed}"
    return done


def listed(env: VmmEnv) -> list[dict[str, Any]]:
    out = json.loads(env.run("list", "-a", "--json", check=True).stdout)
    assert out["errors"] == []
    return out["vms"]  # type: ignore[no-any-return]


@pytest.fixture
def fifty(vmm_env: VmmEnv, netns: NetNS, tmp_path: Path) -> VmmEnv:
    vmm_env.write_config(engine="firecracker", firecracker_bin=str(install_fake(tmp_path / "bin")))
    register_artifacts(vmm_env, tmp_path)

    def create(i: int) -> None:
        vmm_env.run("create", NAMES[i], "--disk", "64", check=True)
        spec = forward_spec(i)
        if spec:
            vmm_env.run("port-forward", NAMES[i], spec, ns=netns, check=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, range(N)))
    return vmm_env


def test_fifty_parallel_starts_then_stops(fifty: VmmEnv, netns: NetNS) -> None:
    env, ns = fifty, netns
    started = all_at_once(env, ns, "start", "--no-wait")
    assert all(r.stdout.startswith("Started VM ") for r in started.values())

    vms = listed(env)
    assert sorted((v["name"], v["state"]) for v in vms) == [(n, "running") for n in NAMES]
    for key in ("ip", "mac", "tap", "id", "pid"):
        assert len({v[key] for v in vms}) == N, f"{key}s are not distinct"
    assert Counter(f["host_port"] for v in vms for f in v["port_forwards"]) == Counter(
        {21000 + i: 1 for i in range(0, N, 3)}
    )

    # every TAP exists, is a TAP, is on the bridge and up; no other vmm device
    devices = links(ns)
    assert devices[BRIDGE]["linkinfo"]["info_kind"] == "bridge"
    for v in vms:
        tap = devices.get(v["tap"])
        assert tap is not None, f"{v['name']}: TAP {v['tap']} missing"
        assert tap.get("master") == BRIDGE, f"{v['tap']} is not enslaved to {BRIDGE}: {tap}"
        assert tap["linkinfo"]["info_kind"] == "tun" and "UP" in tap["flags"], tap
    assert vmm_taps(ns) == {v["tap"] for v in vms}

    # one table, whose DNAT rules are exactly the records' forwards, each once in each chain
    chains = nft_table(ns)
    assert chains is not None
    assert set(chains) == {"localnet", "prerouting", "output", "postrouting", "forward"}
    assert len(chains["postrouting"]) == 2, chains["postrouting"]  # NAT, + hairpin/localhost NAT
    assert len(chains["forward"]) == 5 and len(chains["localnet"]) == 2
    want = expected_rules(vms)
    assert len(want) == len(range(0, N, 3))
    assert {r[:2] for r in want} == {(None, "tcp"), (None, "udp"), ("127.0.0.1", "tcp")}
    for chain in ("prerouting", "output"):
        assert sorted((parse_dnat(e) for e in chains[chain]), key=repr) == want, chain

    # 50 fake hypervisors, the ones the records name, and nothing else in the namespace
    pids = {v["pid"] for v in vms}
    assert set(ns.pids()) == pids
    for pid in pids:
        assert b"fake_firecracker.py" in Path(f"/proc/{pid}/cmdline").read_bytes()

    stopped = all_at_once(env, ns, "stop")
    assert all(r.stdout.startswith("Stopped VM ") for r in stopped.values()), stopped
    vms = listed(env)
    assert {v["state"] for v in vms} == {"stopped"} and all(v["pid"] is None for v in vms)
    assert ns.pids() == []
    assert vmm_taps(ns) == set()
    chains = nft_table(ns)
    assert chains is not None and chains["prerouting"] == chains["output"] == []

    all_at_once(env, ns, "delete")
    assert listed(env) == []
    assert nft_table(ns) is None
    assert BRIDGE not in links(ns)
