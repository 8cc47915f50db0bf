"""Guests cannot reach the host's 127.0.0.0/8 (CVE-2020-8558), with real packets in namespaces.

A port forward from the host's localhost needs ``route_localnet=1`` on the bridge, and that
switch also makes the kernel accept, from the bridge, packets to and from 127.0.0.0/8. A guest
that routes 127.0.0.1 to its gateway then reaches services the host bound to 127.0.0.1 only,
and can send packets with a forged 127.x source to the host's other services. vmm's
``localnet`` chain drops both; the ``127.0.0.1:2222`` forward must still work.

Each test first shows the hole without vmm's table (so the probe is known to reach the host's
loopback), then applies the table and checks the same probe fails. Topology: "host" with
vmm-br0 172.16.0.1/16, "guest" 172.16.0.2 on a veth in the bridge (as in test_network); all of
it lives in namespaces the tests create.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, use_fake_firecracker
from tests.integration.test_network import (  # noqa: F401  (no_leftovers: an autouse fixture)
    BRIDGE,
    GW,
    NET,
    Server,
    attach_guest,
    connect_from,
    in_ns,
    no_leftovers,
    reaches,
)
from tests.netns import NetNS
from tests.waiting import wait_until
from vmm.network import firewall, links, sysctl
from vmm.network.firewall import FirewallSpec, PortForward

pytestmark = pytest.mark.integration

GUEST = "172.16.0.2"
SECRET_PORT = 7777  # a host service bound to 127.0.0.1 only
FORWARD = PortForward(2222, IPv4Address(GUEST), 22, host_addr=IPv4Address("127.0.0.1"))


@pytest.fixture
def bridged(netns_factory: Callable[[], NetNS]) -> tuple[NetNS, NetNS]:
    """host (bridge vmm-br0 172.16.0.1/16, no vmm table yet), guest 172.16.0.2 on the bridge."""
    host, guest = netns_factory(), netns_factory()
    in_ns(host, links.ensure_bridge, BRIDGE, GW, 16)
    attach_guest(host, guest, "vmmt-g0", f"{GUEST}/16")
    host.call(sysctl.enable_ip_forward)
    assert reaches(guest, "172.16.0.1"), "guest cannot reach the bridge"
    return host, guest


def route_loopback_to_gateway(guest: NetNS) -> None:
    """Make the guest send 127.0.0.0/8 to its gateway (the host's bridge), as an attacker would.

    The ``local`` routing rule (preference 0) would keep 127/8 on the guest's own ``lo``: move it
    behind a rule that sends 127/8 to table 100, which routes it via 172.16.0.1 on eth0. The
    guest also needs ``route_localnet`` on eth0 to accept the host's answers from 127.0.0.1.
    """
    guest.run(["ip", "rule", "add", "pref", "100", "lookup", "local"])
    guest.run(["ip", "rule", "del", "pref", "0", "lookup", "local"])
    guest.run(["ip", "rule", "add", "pref", "10", "to", "127.0.0.0/8", "lookup", "100"])
    guest.run(["ip", "route", "add", "127.0.0.0/8", "via", "172.16.0.1", "table", "100"])
    guest.sysctl("net.ipv4.conf.eth0.route_localnet", "1")


def local_only_server(host: NetNS, tmp_path: Path) -> Server:
    """The host's 127.0.0.1-only service, with route_localnet on the bridge as a localhost
    forward needs it (vmm's manager sets it then)."""
    server = Server(host, "127.0.0.1", SECRET_PORT, tmp_path / "secret.log")
    assert host.call(sysctl.enable_route_localnet, BRIDGE) is True
    return server


def test_guest_cannot_reach_the_hosts_loopback(
    bridged: tuple[NetNS, NetNS], tmp_path: Path
) -> None:
    host, guest = bridged
    secret = local_only_server(host, tmp_path)
    route_loopback_to_gateway(guest)
    # without vmm's table the hole is real: the guest gets into the 127.0.0.1-only service
    assert connect_from(guest, "127.0.0.1", SECRET_PORT) == GUEST
    assert secret.seen() == [GUEST]

    in_ns(host, firewall.apply, FirewallSpec(BRIDGE, NET))
    assert connect_from(guest, "127.0.0.1", SECRET_PORT, timeout=2) == "failed: TimeoutError"
    assert connect_from(guest, "127.0.0.2", SECRET_PORT, timeout=2) == "failed: TimeoutError"
    # the bridge's own address does not lead there either: the service is on 127.0.0.1 only
    assert connect_from(guest, "172.16.0.1", SECRET_PORT, timeout=2).startswith("failed")
    assert secret.seen() == [GUEST], "a guest reached a service bound to the host's 127.0.0.1"


def test_localhost_forward_still_works_and_guest_stays_out(
    bridged: tuple[NetNS, NetNS], tmp_path: Path
) -> None:
    host, guest = bridged
    secret = local_only_server(host, tmp_path)
    sshd = Server(guest, GUEST, 22, tmp_path / "guest.log")
    route_loopback_to_gateway(guest)
    spec = FirewallSpec(BRIDGE, NET, forwards=(FORWARD,))
    assert firewall.needs_route_localnet(spec)
    in_ns(host, firewall.apply, spec)

    # host 127.0.0.1:2222 -> guest :22: output DNAT, masqueraded to the bridge address; the
    # replies come back from the bridge to 172.16.0.1 and only then become 127.0.0.1 again
    assert connect_from(host, "127.0.0.1", 2222) == "172.16.0.1"
    assert connect_from(host, "127.0.0.1", 2222) == "172.16.0.1"
    assert sshd.seen() == ["172.16.0.1", "172.16.0.1"]
    # meanwhile the guest still cannot use the open switch to reach the host's loopback
    assert connect_from(guest, "127.0.0.1", SECRET_PORT, timeout=2) == "failed: TimeoutError"
    assert connect_from(guest, "127.0.0.1", 2222, timeout=2) == "failed: TimeoutError"
    assert secret.seen() == []
    assert sshd.seen() == ["172.16.0.1", "172.16.0.1"]


# Logs the source address of every datagram it gets.
UDP_LOGGER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    print(peer[0], data.decode(), flush=True)
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3])))
"""


class UdpLog:
    """UDP_LOGGER on the host's every address; ``seen()`` lists (source, payload) pairs."""

    def __init__(self, ns: NetNS, port: int, log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = ns.popen(
                [sys.executable, "-u", "-c", UDP_LOGGER, str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not log.read_text().startswith("ready"):
            assert self.proc.poll() is None, f"udp logger failed: {log.read_text()}"
            assert time.monotonic() < deadline, "udp logger did not start"
            time.sleep(0.02)

    def seen(self) -> list[tuple[str, str]]:
        lines = self.log.read_text().splitlines()[1:]
        return [(src, payload) for src, payload in (line.split() for line in lines)]


def send_then_mark(guest: NetNS, log: UdpLog, port: int, source: str, mark: str) -> None:
    """Send a datagram from ``source``, then one from the guest's own address (``mark``) on the
    same path, and wait for the mark: once it arrived, the first one had its chance too."""
    guest.run([sys.executable, "-c", UDP_SEND, source, "172.16.0.1", str(port), f"from-{mark}"])
    guest.run([sys.executable, "-c", UDP_SEND, GUEST, "172.16.0.1", str(port), mark])
    wait_until(lambda: (GUEST, mark) in log.seen(), 10, interval=0.05, what=f"datagram {mark}")


def test_guest_cannot_forge_a_loopback_source(bridged: tuple[NetNS, NetNS], tmp_path: Path) -> None:
    host, guest = bridged
    assert host.call(sysctl.enable_route_localnet, BRIDGE) is True
    guest.sysctl("net.ipv4.conf.eth0.route_localnet", "1")  # lets the guest send from 127.x
    log = UdpLog(host, 7778, tmp_path / "udp.log")
    # without vmm's table a service that trusts 127/8 peers is fooled (127.0.0.1 itself is
    # refused by the kernel, being one of the host's own addresses; 127.0.0.5 is not)
    send_then_mark(guest, log, 7778, "127.0.0.5", "one")
    assert ("127.0.0.5", "from-one") in log.seen()

    in_ns(host, firewall.apply, FirewallSpec(BRIDGE, NET, forwards=(FORWARD,)))
    send_then_mark(guest, log, 7778, "127.0.0.5", "two")
    send_then_mark(guest, log, 7778, "127.0.0.1", "three")
    assert [src for src, _ in log.seen() if src != GUEST] == ["127.0.0.5"]


def test_route_localnet_off_closes_the_hole_and_the_rule_covers_conf_all(
    bridged: tuple[NetNS, NetNS], tmp_path: Path
) -> None:
    host, guest = bridged
    secret = local_only_server(host, tmp_path)
    route_loopback_to_gateway(guest)
    assert connect_from(guest, "127.0.0.1", SECRET_PORT) == GUEST

    # switched back off (no forward needs it): the kernel drops the guest's packets itself
    assert host.call(sysctl.disable_route_localnet, BRIDGE) is True
    assert host.call(sysctl.disable_route_localnet, BRIDGE) is False
    assert host.sysctl(f"net.ipv4.conf.{BRIDGE}.route_localnet") == "0"
    assert connect_from(guest, "127.0.0.1", SECRET_PORT, timeout=2) == "failed: TimeoutError"

    # another tool (kube-proxy does) opens every device through conf/all: the hole is back...
    host.sysctl("net.ipv4.conf.all.route_localnet", "1")
    assert connect_from(guest, "127.0.0.1", SECRET_PORT) == GUEST
    # ...and vmm's table, with no forward at all, still closes it
    in_ns(host, firewall.apply, FirewallSpec(BRIDGE, NET))
    assert connect_from(guest, "127.0.0.1", SECRET_PORT, timeout=2) == "failed: TimeoutError"
    assert secret.seen() == [GUEST, GUEST]
    assert host.call(sysctl.disable_route_localnet, "vmm-br9") is False  # no such device


def test_localnet_chain_as_nft_reports_it(bridged: tuple[NetNS, NetNS]) -> None:
    host, _ = bridged
    in_ns(host, firewall.apply, FirewallSpec(BRIDGE, NET))
    chains = firewall.summarize(in_ns(host, firewall.current))
    chain = chains["localnet"]
    assert (chain["type"], chain["hook"], chain["prio"], chain["policy"]) == (
        "filter",
        "prerouting",
        -300,
        "accept",
    )
    fields = [rule[1]["match"]["left"]["payload"]["field"] for rule in chain["rules"]]
    assert fields == ["daddr", "saddr"]
    for rule in chain["rules"]:
        assert rule[0]["match"]["right"] == BRIDGE
        assert rule[1]["match"]["right"] == {"prefix": {"addr": "127.0.0.0", "len": 8}}
        assert rule[-1] == {"drop": None}


def test_the_cli_opens_route_localnet_and_hairpin_only_while_a_forward_needs_them(
    vmm_env: VmmEnv, netns: NetNS, tmp_path: Path
) -> None:
    """Through vmm itself (fake firecracker): a localhost forward switches route_localnet on
    for the bridge and hairpin on for the VM's TAP; removing the last forward switches both off."""
    use_fake_firecracker(vmm_env, tmp_path)
    vmm_env.run("create", "lo1", "--disk", "128", check=True)
    vmm_env.run("start", "lo1", "--no-wait", ns=netns, check=True)
    tap = json.loads(vmm_env.run("inspect", "lo1", check=True).stdout)["tap"]

    def state() -> tuple[str, bool]:
        localnet = netns.run(["cat", "/proc/sys/net/ipv4/conf/vmm-br0/route_localnet"]).stdout.strip()
        shown = json.loads(netns.run(["ip", "-j", "-d", "link", "show", "dev", tap]).stdout)
        return localnet, bool(shown[0]["linkinfo"]["info_slave_data"]["hairpin"])

    assert state() == ("0", False)
    vmm_env.run("port-forward", "lo1", "127.0.0.1:2222:22", ns=netns, check=True)
    assert state() == ("1", True)
    vmm_env.run("port-forward", "remove", "lo1", "127.0.0.1:2222", ns=netns, check=True)
    assert state() == ("0", False)
    vmm_env.run("delete", "-f", "lo1", ns=netns, check=True)
