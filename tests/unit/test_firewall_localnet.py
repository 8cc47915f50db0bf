"""Guests cannot reach the host's 127.0.0.0/8 (CVE-2020-8558): the ``localnet`` chain vmm
renders, when the bridge needs ``route_localnet``, and the sysctl writer that turns it off."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vmm.errors import VmmError
from vmm.network import firewall, sysctl
from vmm.network.firewall import FirewallSpec, PortForward

pytestmark = pytest.mark.unit

A = IPv4Address
NET = IPv4Network("172.16.0.0/16")

LOCALNET_CHAIN = """\
\tchain localnet {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tiifname "vmm-br0" ip daddr 127.0.0.0/8 drop
\t\tiifname "vmm-br0" ip saddr 127.0.0.0/8 drop
\t}
"""

SPECS = [
    FirewallSpec("vmm-br0", NET),
    FirewallSpec("vmm-br0", NET, uplink="eth0"),
    FirewallSpec("vmm-br0", NET, forwards=(PortForward(8080, A("172.16.0.2"), 80),)),
    FirewallSpec(
        "vmm-br0",
        NET,
        forwards=(PortForward(2222, A("172.16.0.2"), 22, host_addr=A("127.0.0.1")),),
    ),
    FirewallSpec(
        "vmm-br0",
        NET,
        forwards=(PortForward(5353, A("172.16.0.3"), 53, "udp", A("10.200.0.1")),),
    ),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{len(s.forwards)}fwd-{s.uplink}")
def test_localnet_chain_is_always_rendered(spec: FirewallSpec) -> None:
    # with or without forwards: route_localnet may be on because of another tool
    text = firewall.render_ruleset(spec)
    assert LOCALNET_CHAIN in text
    assert text.count("chain localnet {") == 1


def test_localnet_chain_runs_before_conntrack_and_nat() -> None:
    text = firewall.render_ruleset(SPECS[3])
    chains = [line.strip() for line in text.splitlines() if line.startswith("\tchain ")]
    assert chains[0] == "chain localnet {"
    # raw priority (-300): before conntrack (-200) and before NAT (-100) undoes the
    # masquerade of a localhost forward's replies (their destination becomes 127.0.0.1 there)
    assert "\t\ttype filter hook prerouting priority -300; policy accept;\n" in text
    assert "\t\ttype nat hook prerouting priority -100; policy accept;\n" in text


def test_localnet_chain_only_drops_what_comes_from_the_bridge() -> None:
    text = firewall.render_ruleset(FirewallSpec("br-x", IPv4Network("10.44.0.0/24")))
    block = text.split("\tchain localnet {\n", 1)[1].split("\t}\n", 1)[0]
    rules = [line.strip() for line in block.splitlines()[1:]]
    assert rules == [
        'iifname "br-x" ip daddr 127.0.0.0/8 drop',
        'iifname "br-x" ip saddr 127.0.0.0/8 drop',
    ]
    # no exception for DNAT'd or established traffic is needed (or wanted) at this priority
    assert "ct " not in block and "accept" not in block.split("policy accept;", 1)[1]
    assert 'iifname "lo"' not in text


def test_localnet_chain_is_part_of_the_one_transaction() -> None:
    text = firewall.render_ruleset(SPECS[0])
    lines = text.splitlines()
    start = lines.index("table ip vmm {")
    assert lines.index("\tchain localnet {") > start
    assert lines[-1] == "}"
    assert lines.count("table ip vmm {") == 1


@pytest.mark.parametrize(
    ("forwards", "expected"),
    [
        ((), False),
        ((PortForward(8080, A("172.16.0.2"), 80),), True),  # any host address, 127.0.0.1 too
        ((PortForward(2222, A("172.16.0.2"), 22, host_addr=A("127.0.0.1")),), True),
        ((PortForward(2222, A("172.16.0.2"), 22, host_addr=A("127.1.2.3")),), True),
        ((PortForward(2222, A("172.16.0.2"), 22, host_addr=A("10.200.0.1")),), False),
        (
            (
                PortForward(2222, A("172.16.0.2"), 22, host_addr=A("10.200.0.1")),
                PortForward(2223, A("172.16.0.2"), 22, host_addr=A("127.0.0.1")),
            ),
            True,
        ),
    ],
)
def test_needs_route_localnet(forwards: tuple[PortForward, ...], expected: bool) -> None:
    spec = FirewallSpec("vmm-br0", NET, forwards=forwards)
    assert firewall.needs_route_localnet(spec) is expected


# -- sysctl ------------------------------------------------------------------------------------


def fake_proc(tmp_path: Path, value: str = "0") -> Path:
    (tmp_path / "net/ipv4/conf/vmm-br0").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/vmm-br0/route_localnet").write_text(f"{value}\n")
    return tmp_path


def value(root: Path, ifname: str = "vmm-br0") -> str:
    return sysctl.read_sysctl(sysctl.route_localnet_key(ifname), root=root)


def test_route_localnet_key() -> None:
    assert sysctl.route_localnet_key("eth0.100") == (
        "net",
        "ipv4",
        "conf",
        "eth0.100",
        "route_localnet",
    )


def test_set_route_localnet_on_and_off(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert sysctl.set_route_localnet("vmm-br0", True, root=root) is True
    assert value(root) == "1"
    assert sysctl.set_route_localnet("vmm-br0", True, root=root) is False
    assert sysctl.set_route_localnet("vmm-br0", False, root=root) is True
    assert value(root) == "0"
    assert (root / "net/ipv4/conf/vmm-br0/route_localnet").read_text() == "0\n"
    assert sysctl.set_route_localnet("vmm-br0", False, root=root) is False


def test_enable_and_disable_route_localnet(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert sysctl.enable_route_localnet("vmm-br0", root=root) is True
    assert value(root) == "1"
    assert sysctl.disable_route_localnet("vmm-br0", root=root) is True
    assert value(root) == "0"
    assert sysctl.disable_route_localnet("vmm-br0", root=root) is False


def test_disable_route_localnet_of_a_missing_device_is_a_no_op(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    assert sysctl.disable_route_localnet("vmm-br9", root=root) is False
    assert sysctl.set_route_localnet("vmm-br9", False, root=root) is False
    assert not (root / "net/ipv4/conf/vmm-br9").exists()


def test_enable_route_localnet_of_a_missing_device_fails(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    with pytest.raises(VmmError, match="does not exist"):
        sysctl.enable_route_localnet("vmm-br9", root=root)


def test_route_localnet_bad_names(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    for bad in ("..", "a/b", ""):
        with pytest.raises(VmmError, match="invalid sysctl key"):
            sysctl.set_route_localnet(bad, False, root=root)
