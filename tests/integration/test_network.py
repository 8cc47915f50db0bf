"""The network layer for real: ip and nft inside private network namespaces.

Every test gets fresh namespaces (``tests.netns``) and runs vmm's code inside them, so the
machine's own network is never touched; the fixtures delete the namespaces and check that
none is left. The packet tests use three namespaces: "host" (the bridge, NAT), "guest" (a
veth on the bridge stands in for a VM) and "outside" (stands in for the internet).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from tests.netns import (
    NetNS,
    add_address,
    add_default_route,
    connect,
    connect_outside,
)
from tests.waiting import wait_until
from vmm.errors import ConflictError, NotFoundError
from vmm.network import coexist, firewall, links, sysctl
from vmm.network.firewall import FirewallSpec, PortForward
from vmm.network.iproute import Link
from vmm.runner import Runner

pytestmark = pytest.mark.integration

BRIDGE = "vmm-br0"
NET = IPv4Network("172.16.0.0/16")
GW = IPv4Address("172.16.0.1")
TAP = "vmm-abcd1234"
SPEC = FirewallSpec(BRIDGE, NET)


# The devices these tests create; none may ever show up in the main namespace.
OUR_DEVICES = {BRIDGE, TAP, "vmm-abcd9999", "vmm-br9", "vmmt-g0", "vmmt-g1", "uplink0", "wan0", "lan0", "lan1"}


def main_namespace_leaks() -> list[str]:
    """Read-only look at the main namespace for anything these tests create."""
    shown = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True).stdout)
    leaks = sorted(OUR_DEVICES & {i["ifname"] for i in shown})
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return leaks + (["table ip vmm"] if "table ip vmm" in tables.splitlines() else [])


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Nothing of these tests shows up in the main namespace.

    The namespaces themselves are checked by ``netns_factory`` (only the test's own: other
    suites may create ``vmmt-*`` namespaces concurrently on a shared machine).
    """
    before = main_namespace_leaks()  # a host that runs vmm for real has its bridge and table
    yield
    assert main_namespace_leaks() == before, "a test changed the main namespace"


def in_ns(ns: NetNS, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(Runner(), *args)`` inside ``ns``."""
    return ns.call(fn, Runner(), *args, **kwargs)


def link(ns: NetNS, name: str) -> Link | None:
    return in_ns(ns, links.get_link, name)  # type: ignore[no-any-return]


class CountingRunner(Runner):
    """A real runner that remembers which commands it ran."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Any, **kwargs: Any) -> Any:
        self.calls.append([str(a) for a in argv])
        return super().run(argv, **kwargs)


# -- bridge ------------------------------------------------------------------------------------


def test_ensure_bridge_creates_it_and_is_idempotent(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    br = link(netns, BRIDGE)
    assert br is not None and br.is_bridge and br.is_up
    assert br.mac == "06:00:ac:10:00:01"
    assert in_ns(netns, links.list_addresses)[BRIDGE] == [IPv4Interface("172.16.0.1/16")]

    def again() -> list[list[str]]:
        runner = CountingRunner()
        links.ensure_bridge(runner, BRIDGE, "172.16.0.1", 16)
        return runner.calls

    calls = netns.call(again)
    assert all(c[:2] == ["ip", "-j"] for c in calls), f"second run changed something: {calls}"
    assert link(netns, BRIDGE) == br


def test_ensure_bridge_finishes_a_half_made_bridge(netns: NetNS) -> None:
    netns.run(["ip", "link", "add", BRIDGE, "type", "bridge"])  # no address, down
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    br = link(netns, BRIDGE)
    assert br is not None and br.is_up
    assert in_ns(netns, links.list_addresses)[BRIDGE] == [IPv4Interface("172.16.0.1/16")]


def test_bridge_mac_stays_when_ports_come_and_go(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    br = link(netns, BRIDGE)
    assert br is not None and br.mac == "06:00:ac:10:00:01"


def test_overlapping_subnet_is_refused(netns: NetNS) -> None:
    netns.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"])
    netns.run(["ip", "addr", "add", "172.16.5.1/24", "dev", "lan0"])
    # lan0 is down: no route yet, but its address would collide once it comes up
    with pytest.raises(ConflictError, match=r"overlaps the address 172\.16\.5\.1/24 of lan0"):
        in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    netns.run(["ip", "link", "set", "lan0", "up"])
    netns.run(["ip", "link", "set", "lan1", "up"])
    netns.run(["ip", "route", "add", "10.60.0.0/16", "via", "172.16.5.2"])
    with pytest.raises(ConflictError, match=r"overlaps the host route 172\.16\.5\.0/24 dev lan0"):
        in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    with pytest.raises(ConflictError, match=r"overlaps the host route 10\.60\.0\.0/16 via"):
        in_ns(netns, links.ensure_bridge, BRIDGE, "10.60.128.1", 17)
    assert link(netns, BRIDGE) is None
    # a subnet next to them is fine
    in_ns(netns, links.ensure_bridge, BRIDGE, "172.17.0.1", 16)


def test_changed_subnet_is_refused(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    with pytest.raises(ConflictError, match="has the address 172.16.0.1/16"):
        in_ns(netns, links.ensure_bridge, BRIDGE, "10.77.0.1", 24)


def test_delete_bridge_is_idempotent(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    assert in_ns(netns, links.delete_bridge, BRIDGE) is True
    assert link(netns, BRIDGE) is None
    assert in_ns(netns, links.delete_bridge, BRIDGE) is False


# -- TAPs --------------------------------------------------------------------------------------


def test_ensure_tap_twice_recreates_it_enslaved_and_up(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    first = link(netns, TAP)
    assert first is not None and first.is_tap and first.master == BRIDGE and first.is_up
    in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    second = link(netns, TAP)
    assert second is not None and second.is_tap and second.master == BRIDGE and second.is_up
    assert second.ifindex != first.ifindex, "the TAP was not recreated"
    assert [t.name for t in in_ns(netns, links.list_links, "vmm-") if t.is_tap] == [TAP]


def _start_sequence(tap: str) -> list[list[str]]:
    """A start's link steps as the start path runs them: the devices read once, passed along."""
    runner = CountingRunner()
    devices = links.ensure_bridge(runner, BRIDGE, GW, 16)
    links.ensure_tap(runner, tap, BRIDGE, devices=devices)
    return [c for c in runner.calls if c[:2] == ["ip", "-j"]]


def test_bridge_and_tap_steps_share_one_read(netns: NetNS) -> None:
    first = netns.call(_start_sequence, TAP)  # the bridge is made: read, check, change, read
    read = ["ip", "-j", "-d", "addr", "show"]
    assert first == [read, ["ip", "-j", "-4", "route", "show"], read]
    again = netns.call(_start_sequence, "vmm-abcd9999")  # in place: one read for everything
    assert again == [read]
    netns.call(_start_sequence, TAP)  # a stale TAP the shared read found is recreated
    taps = {t.name: t for t in in_ns(netns, links.list_links, "vmm-") if t.is_tap}
    assert sorted(taps) == [TAP, "vmm-abcd9999"]
    assert all(t.master == BRIDGE and t.is_up for t in taps.values())


def _hold_tap_open_then_ensure(name: str, bridge: str) -> bool:
    # A hypervisor that is wedged or dying may still hold the TAP open: recreating must work.
    tunsetiff, iff_tap, iff_no_pi = 0x400454CA, 0x0002, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", name.encode(), iff_tap | iff_no_pi))
        links.ensure_tap(Runner(), name, bridge)
        new = links.get_link(Runner(), name)
        return new is not None and new.is_tap and new.master == bridge
    finally:
        os.close(fd)


def test_ensure_tap_replaces_a_tap_still_held_open(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    assert netns.call(_hold_tap_open_then_ensure, TAP, BRIDGE) is True


def test_ensure_tap_needs_the_bridge(netns: NetNS) -> None:
    with pytest.raises(NotFoundError, match="bridge vmm-br0 does not exist"):
        in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    assert link(netns, TAP) is None


def test_delete_tap_removes_it_and_is_idempotent(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    in_ns(netns, links.ensure_tap, TAP, BRIDGE)
    assert in_ns(netns, links.delete_tap, TAP) is True
    assert link(netns, TAP) is None
    assert in_ns(netns, links.delete_tap, TAP) is False
    assert [t.name for t in in_ns(netns, links.list_links, "vmm-")] == [BRIDGE]


# -- firewall ----------------------------------------------------------------------------------


def nft_text(ns: NetNS) -> str:
    return ns.run(["nft", "list", "table", "ip", "vmm"]).stdout


def test_apply_creates_the_table(netns: NetNS) -> None:
    in_ns(netns, firewall.apply, SPEC)
    chains = firewall.summarize(in_ns(netns, firewall.current))
    assert {name: (c["type"], c["hook"], c["prio"], c["policy"]) for name, c in chains.items()} == {
        "localnet": ("filter", "prerouting", -300, "accept"),
        "prerouting": ("nat", "prerouting", -100, "accept"),
        "output": ("nat", "output", -100, "accept"),
        "postrouting": ("nat", "postrouting", 100, "accept"),
        "forward": ("filter", "forward", 0, "accept"),
    }
    [masq] = chains["postrouting"]["rules"]
    assert masq == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "172.16.0.0", "len": 16}},
            }
        },
        {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": BRIDGE}},
        {"masquerade": None},
    ]
    assert len(chains["forward"]["rules"]) == 5
    assert chains["forward"]["rules"][-1][-1] == {"drop": None}
    assert chains["prerouting"]["rules"] == chains["output"]["rules"] == []


def test_apply_twice_is_idempotent_and_replaces(netns: NetNS) -> None:
    in_ns(netns, firewall.apply, SPEC)
    first = nft_text(netns)
    in_ns(netns, firewall.apply, SPEC)
    assert nft_text(netns) == first
    uplink = FirewallSpec(BRIDGE, NET, uplink="uplink0")
    in_ns(netns, firewall.apply, uplink)
    text = nft_text(netns)
    assert 'oifname "uplink0" masquerade' in text and "oifname !=" not in text
    assert text.count("masquerade") == 1, "the old rules were not replaced"


def test_apply_is_atomic(netns: NetNS) -> None:
    in_ns(netns, firewall.apply, SPEC)
    before = nft_text(netns)
    other = firewall.render_ruleset(FirewallSpec("vmm-br9", IPv4Network("10.9.0.0/16")))
    broken = other.replace(
        "\tchain forward {", "\tchain bad {\n\t\tnot a rule\n\t}\n\tchain forward {"
    )
    result = netns.run(["nft", "-f", "-"], input=broken, check=False)
    assert result.returncode != 0
    assert nft_text(netns) == before, "a failed script changed the table"


def test_apply_renders_port_forwards(netns: NetNS) -> None:
    spec = FirewallSpec(
        BRIDGE,
        NET,
        forwards=(
            PortForward(8080, IPv4Address("172.16.0.2"), 80),
            PortForward(53, IPv4Address("172.16.0.3"), 53, "udp", IPv4Address("10.200.0.1")),
        ),
    )
    in_ns(netns, firewall.apply, spec)
    chains = firewall.summarize(in_ns(netns, firewall.current))
    for chain in ("prerouting", "output"):
        dnats = [rule[-1] for rule in chains[chain]["rules"]]
        assert dnats == [
            {"dnat": {"addr": "172.16.0.2", "port": 80}},
            {"dnat": {"addr": "172.16.0.3", "port": 53}},
        ]
    assert len(chains["postrouting"]["rules"]) == 2


def test_remove_leaves_no_table_and_is_idempotent(netns: NetNS) -> None:
    in_ns(netns, firewall.apply, SPEC)
    assert in_ns(netns, firewall.table_exists)
    in_ns(netns, firewall.remove)
    assert not in_ns(netns, firewall.table_exists)
    assert in_ns(netns, firewall.current) == {}
    in_ns(netns, firewall.remove)
    assert netns.run(["nft", "list", "ruleset"]).stdout.strip() == ""


def test_firewall_never_touches_other_tables(netns: NetNS) -> None:
    netns.run(["nft", "add", "table", "ip", "other"])
    netns.run(["nft", "add", "chain", "ip", "other", "c"])
    in_ns(netns, firewall.apply, SPEC)
    in_ns(netns, firewall.remove)
    assert netns.run(["nft", "list", "tables"]).stdout.split() == ["table", "ip", "other"]


DOCKERISH = (  # what Docker's iptables leaves: FORWARD drops, DOCKER-USER is its users' chain
    "table ip filter { chain DOCKER-USER { return; }; chain FORWARD { "
    "type filter hook forward priority 0; policy drop; jump DOCKER-USER; }; }\n"
)


def _coexist_round(bridge: str) -> tuple[coexist.ForwardStatus, list[list[str]]]:
    runner = CountingRunner()
    status = coexist.ensure_forward_allowed(runner, bridge)
    return status, [c for c in runner.calls if c[:3] == ["nft", "-j", "list"]]


def test_docker_user_accepts_from_chain_listings(netns: NetNS) -> None:
    """Blockers and DOCKER-USER are found from ``nft -j list chains`` (not the whole ruleset),
    vmm's accepts from that one chain's listing; without Docker a start lists once."""
    status, reads = netns.call(_coexist_round, BRIDGE)
    assert status == coexist.ForwardStatus() and reads == [["nft", "-j", "list", "chains"]]
    netns.run(["nft", "-f", "-"], input=DOCKERISH)
    status, _ = netns.call(_coexist_round, BRIDGE)
    assert status.docker_user == "nft" and status.rules_present and not status.blocked
    assert [str(b) for b in status.blockers] == [
        "nft table ip filter, chain FORWARD (hook forward, policy drop)"
    ]
    status, reads = netns.call(_coexist_round, BRIDGE)  # in place: nothing added twice
    assert status.rules_present and reads == [
        ["nft", "-j", "list", "chains"],
        ["nft", "-j", "list", "chain", "ip", "filter", "DOCKER-USER"],
    ]
    chain = netns.run(["nft", "list", "chain", "ip", "filter", "DOCKER-USER"]).stdout
    assert chain.count('comment "vmm"') == 2 and f'iifname "{BRIDGE}" accept' in chain
    assert in_ns(netns, coexist.remove_docker_user_rules, BRIDGE) == 2
    chain = netns.run(["nft", "list", "chain", "ip", "filter", "DOCKER-USER"]).stdout
    assert "vmm" not in chain and "return" in chain  # Docker's own rule stays
    assert in_ns(netns, coexist.remove_docker_user_rules, BRIDGE) == 0
    netns.run(["nft", "delete", "table", "ip", "filter"])


def test_enable_ip_forward_is_per_namespace(netns: NetNS) -> None:
    host_before = sysctl.read_sysctl(sysctl.IP_FORWARD)
    assert netns.call(sysctl.read_sysctl, sysctl.IP_FORWARD) == "0"
    assert netns.call(sysctl.enable_ip_forward) is True
    assert netns.call(sysctl.enable_ip_forward) is False
    assert netns.sysctl("net.ipv4.ip_forward") == "1"
    assert sysctl.read_sysctl(sysctl.IP_FORWARD) == host_before


# -- real packets ------------------------------------------------------------------------------

# Accepts connections and answers each with the peer address it saw; prints it too.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    print(peer[0], flush=True)
    c.sendall(peer[0].encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode())
except OSError as exc:
    print("failed:", type(exc).__name__)
"""


class Server:
    """The SERVER script running in a namespace; ``seen()`` lists the peers it accepted."""

    def __init__(self, ns: NetNS, addr: str, port: int, log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = ns.popen(
                [sys.executable, "-u", "-c", SERVER, addr, str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not log.read_text().startswith("ready"):
            assert self.proc.poll() is None, f"server failed: {log.read_text()}"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def seen(self) -> list[str]:
        return self.log.read_text().split()[1:]


def connect_from(ns: NetNS, addr: str, port: int, timeout: float = 3.0) -> str:
    """Connect from ``ns``; the peer address the server saw, or ``failed: <error>``."""
    return ns.run([sys.executable, "-c", CLIENT, addr, str(port), str(timeout)]).stdout.strip()


def pings(ns: NetNS, addr: str) -> bool:
    """One ping: for asserting that something is NOT reachable."""
    return ns.run(["ping", "-n", "-c", "1", "-W", "2", addr], check=False).returncode == 0


def reaches(ns: NetNS, addr: str, timeout: float = 10.0) -> bool:
    """Pings until one answers or ``timeout`` passes: a veth that just joined a bridge, or a
    ruleset just applied, may drop the first packets (port learning, neighbour resolution)."""
    try:
        wait_until(
            lambda: ns.run(["ping", "-n", "-c", "1", "-W", "1", addr], check=False).returncode == 0,
            timeout,
            interval=0.2,
            what=f"ping {addr}",
        )
    except AssertionError:
        return False
    return True


def attach_guest(host: NetNS, guest: NetNS, port: str, cidr: str) -> None:
    """Put ``guest`` on the host's bridge through a veth (port ``port``), like a VM on its TAP."""
    connect(host, port, guest, "eth0")
    host.run(["ip", "link", "set", port, "master", BRIDGE])
    add_address(guest, "eth0", cidr)
    add_default_route(guest, str(GW))


@pytest.fixture
def topology(netns_factory: Callable[[], NetNS]) -> tuple[NetNS, NetNS, NetNS]:
    """host (bridge vmm-br0, uplink to outside), guest 172.16.0.2 on the bridge, outside."""
    host, guest, outside = netns_factory(), netns_factory(), netns_factory()
    in_ns(host, links.ensure_bridge, BRIDGE, GW, 16)
    attach_guest(host, guest, "vmmt-g0", "172.16.0.2/16")
    connect_outside(host, outside)
    host.call(sysctl.enable_ip_forward)
    assert reaches(guest, "172.16.0.1"), "guest cannot reach the bridge"
    return host, guest, outside


def test_nat_masquerades_guest_traffic(
    topology: tuple[NetNS, NetNS, NetNS], tmp_path: Path
) -> None:
    host, guest, outside = topology
    server = Server(outside, "10.200.0.2", 9000, tmp_path / "server.log")

    in_ns(host, firewall.apply, SPEC)
    assert reaches(guest, "10.200.0.2")
    assert connect_from(guest, "10.200.0.2", 9000) == "10.200.0.1"
    assert server.seen() == ["10.200.0.1"]

    in_ns(host, firewall.remove)
    assert not pings(guest, "10.200.0.2")
    assert connect_from(guest, "10.200.0.2", 9000, timeout=2).startswith("failed")
    assert server.seen() == ["10.200.0.1"], "a connection arrived without NAT"


def test_outside_cannot_open_connections_to_guests(
    topology: tuple[NetNS, NetNS, NetNS], tmp_path: Path
) -> None:
    host, guest, outside = topology
    Server(guest, "172.16.0.2", 7000, tmp_path / "server.log")
    outside.run(["ip", "route", "add", "172.16.0.0/16", "via", "10.200.0.1"])
    assert connect_from(outside, "172.16.0.2", 7000) == "10.200.0.2"  # no rules: routed
    in_ns(host, firewall.apply, SPEC)
    assert connect_from(outside, "172.16.0.2", 7000, timeout=2).startswith("failed")
    assert reaches(guest, "10.200.0.2"), "the guest's own traffic must still flow"


def test_port_forward_reaches_the_guest(
    topology: tuple[NetNS, NetNS, NetNS],
    netns_factory: Callable[[], NetNS],
    tmp_path: Path,
) -> None:
    host, guest, outside = topology
    other = netns_factory()  # a second VM on the bridge
    attach_guest(host, other, "vmmt-g1", "172.16.0.3/16")
    server = Server(guest, "172.16.0.2", 8000, tmp_path / "server.log")
    forward = PortForward(8080, IPv4Address("172.16.0.2"), 8000)
    in_ns(host, firewall.apply, FirewallSpec(BRIDGE, NET, forwards=(forward,)))
    host.call(sysctl.enable_route_localnet, BRIDGE)
    # from outside: DNAT only, the guest sees the real client
    assert connect_from(outside, "10.200.0.1", 8080) == "10.200.0.2"
    # from the host itself, via localhost: output DNAT, then masquerade to the bridge address
    assert connect_from(host, "127.0.0.1", 8080) == "172.16.0.1"
    # from another VM through the host (hairpin): masqueraded so the replies go back via the host
    assert connect_from(other, "172.16.0.1", 8080) == "172.16.0.1"
    assert server.seen() == ["10.200.0.2", "172.16.0.1", "172.16.0.1"]


def test_port_forward_hairpin_to_the_same_guest_needs_hairpin_mode(netns: NetNS) -> None:
    in_ns(netns, links.ensure_bridge, BRIDGE, GW, 16)
    in_ns(netns, links.ensure_tap, TAP, BRIDGE, hairpin=True)
    shown = json.loads(netns.run(["ip", "-j", "-d", "link", "show", "dev", TAP]).stdout)
    assert shown[0]["linkinfo"]["info_slave_data"]["hairpin"] is True
