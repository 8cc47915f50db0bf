"""IPAM, route overlap and the ``ip -j`` parsers (the link appliers: test_links.py).

The canned JSON below was captured from iproute2 6.1 (Debian 12) in a test namespace.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from vmm.errors import ConflictError, ValidationError, VmmError
from vmm.network import ipam, iproute, links
from vmm.network.iproute import Route, parse_addresses, parse_links, parse_routes

pytestmark = pytest.mark.unit

A = IPv4Address
SUBNET = "172.16.0.0/16"
GW = "172.16.0.1"


# -- validate_network ------------------------------------------------------------------------


def test_validate_network_returns_parsed_values() -> None:
    assert ipam.validate_network(SUBNET, GW) == (IPv4Network(SUBNET), A(GW))
    assert ipam.validate_network(IPv4Network("10.0.0.0/30"), A("10.0.0.2"))[1] == A("10.0.0.2")


@pytest.mark.parametrize(
    ("subnet", "gateway", "message"),
    [
        ("172.16.0.0/16", "172.17.0.1", "gateway 172.17.0.1 is not inside the subnet"),
        ("172.16.0.0/16", "172.16.0.0", "network address"),
        ("172.16.0.0/16", "172.16.255.255", "broadcast address"),
        ("172.16.0.0/31", "172.16.0.1", "between /8 and /30"),
        ("10.0.0.0/7", "10.0.0.1", "between /8 and /30"),
        ("172.16.0.1/16", "172.16.0.1", "host bits are set"),
        ("172.16.0.0", "172.16.0.1", "missing the prefix length"),
        ("banana", "172.16.0.1", "invalid subnet 'banana'"),
        ("172.16.0.0/16", "nope", "invalid gateway 'nope'"),
        ("172.16.0.0/16", "fe80::1", "only IPv4"),
        ("127.0.0.0/8", "127.0.0.1", "loopback"),
        ("169.254.0.0/16", "169.254.0.1", "link-local"),
        ("224.0.0.0/8", "224.0.0.1", "multicast"),
    ],
)
def test_validate_network_rejects(subnet: str, gateway: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ipam.validate_network(subnet, gateway)


def test_host_bits_error_suggests_the_network() -> None:
    with pytest.raises(ValidationError) as err:
        ipam.validate_network("172.16.5.1/16", GW)
    assert err.value.hint == "did you mean 172.16.0.0/16?"


# -- allocate --------------------------------------------------------------------------------


def test_allocate_first_is_network_plus_two() -> None:
    assert ipam.allocate(SUBNET, GW, []) == A("172.16.0.2")


def test_allocate_lowest_free() -> None:
    used = [A("172.16.0.2"), A("172.16.0.3"), A("172.16.0.5")]
    assert ipam.allocate(SUBNET, GW, used) == A("172.16.0.4")


def test_allocate_accepts_strings_and_ignores_foreign_used() -> None:
    assert ipam.allocate(SUBNET, GW, ["172.16.0.2", "10.0.0.3"]) == A("172.16.0.3")


def test_allocate_skips_a_gateway_that_is_not_network_plus_one() -> None:
    assert ipam.allocate("10.1.0.0/24", "10.1.0.2", []) == A("10.1.0.3")


def test_allocate_crosses_octet_boundaries() -> None:
    used = [A(int(A("172.16.0.2")) + i) for i in range(254)]
    assert used[-1] == A("172.16.0.255")
    assert ipam.allocate(SUBNET, GW, used) == A("172.16.1.0")


def test_allocate_never_hands_out_the_broadcast() -> None:
    net = "192.168.50.0/29"  # .0 network, .1 gw, .2-.6 hosts, .7 broadcast
    used = [A(f"192.168.50.{i}") for i in range(2, 7)]
    with pytest.raises(ConflictError, match="no free address left in the subnet 192.168.50.0/29"):
        ipam.allocate(net, "192.168.50.1", used)


def test_allocate_exhaustion_on_a_slash_30() -> None:
    assert ipam.allocate("10.9.0.0/30", "10.9.0.1", []) == A("10.9.0.2")
    with pytest.raises(ConflictError, match="no free address") as err:
        ipam.allocate("10.9.0.0/30", "10.9.0.1", [A("10.9.0.2")])
    assert err.value.hint and "larger subnet" in err.value.hint


def test_allocate_requested_ok() -> None:
    assert ipam.allocate(SUBNET, GW, [A("172.16.0.2")], A("172.16.7.9")) == A("172.16.7.9")
    assert ipam.allocate(SUBNET, GW, [], "172.16.0.2") == A("172.16.0.2")


@pytest.mark.parametrize(
    ("requested", "error", "message"),
    [
        ("10.0.0.5", ValidationError, "address 10.0.0.5 is not inside the subnet 172.16.0.0/16"),
        ("172.16.0.1", ValidationError, "address 172.16.0.1 is the gateway"),
        ("172.16.0.0", ValidationError, "address 172.16.0.0 is the network address"),
        ("172.16.255.255", ValidationError, "address 172.16.255.255 is the broadcast address"),
        ("172.16.0.9", ConflictError, "address 172.16.0.9 is already used"),
        ("172.16.0.300", ValidationError, "invalid requested address '172.16.0.300'"),
    ],
)
def test_allocate_requested_rejected(requested: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ipam.allocate(SUBNET, GW, [A("172.16.0.9")], requested)


def test_allocate_validates_the_network_first() -> None:
    with pytest.raises(ValidationError, match="not inside the subnet"):
        ipam.allocate(SUBNET, "10.0.0.1", [])


# -- mac, netmask ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "mac"),
    [
        ("172.16.0.2", "06:00:AC:10:00:02"),
        ("10.0.0.255", "06:00:0A:00:00:FF"),
        (A("192.168.100.11"), "06:00:C0:A8:64:0B"),
    ],
)
def test_mac_for(ip: str | IPv4Address, mac: str) -> None:
    assert ipam.mac_for(ip) == mac


def test_mac_is_locally_administered_unicast() -> None:
    first = int(ipam.mac_for("172.16.0.2").split(":")[0], 16)
    assert first & 0b10 and not first & 0b01


def test_netmask() -> None:
    assert ipam.netmask(SUBNET) == "255.255.0.0"
    assert ipam.netmask(IPv4Network("10.0.0.0/30")) == "255.255.255.252"
    assert ipam.netmask(24) == "255.255.255.0"
    with pytest.raises(ValidationError):
        ipam.netmask(33)


# -- route overlap ---------------------------------------------------------------------------

ROUTES = [
    Route(None, "eth0", A("192.168.1.1")),
    Route(IPv4Network("192.168.1.0/24"), "eth0"),
    Route(IPv4Network("172.17.0.0/16"), "docker0"),
    Route(IPv4Network("10.8.0.0/16"), "tun0", A("10.8.0.1")),
    Route(IPv4Network("172.16.0.0/16"), "vmm-br0"),
]


def test_no_overlap_with_default_route_or_own_bridge() -> None:
    assert not ipam.overlaps_routes("172.16.0.0/16", ROUTES, own_dev="vmm-br0")
    assert ipam.overlapping_routes("172.16.0.0/16", ROUTES, own_dev="vmm-br0") == []


def test_own_bridge_route_counts_without_own_dev() -> None:
    assert ipam.overlapping_routes("172.16.0.0/16", ROUTES) == [ROUTES[-1]]


@pytest.mark.parametrize(
    ("subnet", "dev"),
    [
        ("172.17.0.0/16", "docker0"),  # equal
        ("172.17.5.0/24", "docker0"),  # inside
        ("192.168.0.0/16", "eth0"),  # around
        ("10.0.0.0/8", "tun0"),
    ],
)
def test_overlap_detected(subnet: str, dev: str) -> None:
    found = ipam.overlapping_routes(subnet, ROUTES, own_dev="vmm-br0")
    assert [r.dev for r in found] == [dev]
    assert ipam.overlaps_routes(subnet, ROUTES, own_dev="vmm-br0")


def test_adjacent_subnet_does_not_overlap() -> None:
    assert not ipam.overlaps_routes("172.18.0.0/16", ROUTES, own_dev="vmm-br0")


def test_overlapping_addresses() -> None:
    addrs = {
        "vmm-br0": [IPv4Interface("172.16.0.1/16")],
        "eth0": [IPv4Interface("192.168.1.10/24")],
        "wg0": [IPv4Interface("172.16.9.1/24"), IPv4Interface("10.1.0.1/16")],
        "lo": [IPv4Interface("127.0.0.1/8")],
    }
    assert ipam.overlapping_addresses(SUBNET, addrs, own_dev="vmm-br0") == [
        ("wg0", IPv4Interface("172.16.9.1/24"))
    ]
    assert ipam.overlapping_addresses("10.0.0.0/8", addrs) == [
        ("wg0", IPv4Interface("10.1.0.1/16"))
    ]
    assert ipam.overlapping_addresses("172.18.0.0/16", addrs) == []


def test_host_route_overlaps() -> None:
    routes = [Route(IPv4Network("172.16.9.9/32"), "wg0")]
    assert ipam.overlaps_routes(SUBNET, routes)


# -- ip -j parsers ---------------------------------------------------------------------------

LINKS_JSON = json.dumps(
    [
        {
            "ifindex": 1,
            "ifname": "lo",
            "flags": ["LOOPBACK", "UP", "LOWER_UP"],
            "operstate": "UNKNOWN",
            "link_type": "loopback",
            "address": "00:00:00:00:00:00",
        },
        {
            "ifindex": 2,
            "ifname": "vmm-br0",
            "flags": ["BROADCAST", "MULTICAST", "UP"],
            "operstate": "UNKNOWN",
            "address": "06:00:ac:10:00:01",
            "linkinfo": {"info_kind": "bridge", "info_data": {"stp_state": 0}},
        },
        {
            "ifindex": 3,
            "ifname": "vmm-abcd1234",
            "flags": ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"],
            "master": "vmm-br0",
            "operstate": "DOWN",
            "address": "de:70:68:6e:ff:41",
            "linkinfo": {
                "info_kind": "tun",
                "info_data": {"type": "tap", "pi": False, "vnet_hdr": False, "persist": True},
                "info_slave_kind": "bridge",
                "info_slave_data": {"state": "disabled"},
            },
        },
        {
            "ifindex": 4,
            "link_index": 2,
            "ifname": "veth-g",
            "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            "operstate": "UP",
            "link_netnsid": 0,
            "linkinfo": {"info_kind": "veth"},
        },
        {
            "ifindex": 5,
            "ifname": "tun0",
            "flags": ["POINTOPOINT"],
            "linkinfo": {"info_kind": "tun", "info_data": {"type": "tun"}},
        },
    ]
)

ROUTES_JSON = (
    '[{"dst":"default","gateway":"10.200.0.2","dev":"uplink0","flags":[]},'
    '{"dst":"10.9.9.9","dev":"dummy0","scope":"link","flags":["linkdown"]},'
    '{"dst":"10.50.0.0/16","gateway":"10.200.0.2","dev":"uplink0","metric":50,"flags":[]},'
    '{"dst":"10.200.0.0/24","dev":"uplink0","protocol":"kernel","scope":"link",'
    '"prefsrc":"10.200.0.1","flags":[]},'
    '{"type":"blackhole","dst":"192.168.77.0/24","flags":[]}]'
)

ADDR_JSON = (
    '[{"ifindex":2,"ifname":"vmm-br0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],'
    '"mtu":1500,"operstate":"DOWN","addr_info":[{"family":"inet","local":"172.16.0.1",'
    '"prefixlen":16,"scope":"global","label":"vmm-br0"},{"family":"inet6",'
    '"local":"fe80::5ccd:5bff:fe2f:2537","prefixlen":64,"scope":"link"}]}]'
)


def test_parse_links() -> None:
    by_name = {link.name: link for link in parse_links(LINKS_JSON)}
    assert list(by_name) == ["lo", "vmm-br0", "vmm-abcd1234", "veth-g", "tun0"]
    br, tap = by_name["vmm-br0"], by_name["vmm-abcd1234"]
    assert br.is_bridge and br.is_up and not br.is_tap and br.master is None
    assert br.mac == "06:00:ac:10:00:01"
    assert tap.is_tap and tap.is_up and tap.master == "vmm-br0" and tap.operstate == "DOWN"
    assert tap.kind == "tun" and tap.tun_type == "tap"
    assert by_name["veth-g"].kind == "veth" and not by_name["veth-g"].is_tap
    assert not by_name["tun0"].is_tap and not by_name["tun0"].is_up
    assert by_name["lo"].kind is None and by_name["lo"].ifindex == 1


def test_parse_links_empty_and_broken() -> None:
    assert parse_links("") == []
    assert parse_links("[]") == []
    with pytest.raises(VmmError, match="cannot parse the output of `ip -j link show`"):
        parse_links("{not json")
    with pytest.raises(VmmError, match="ifname"):
        parse_links('[{"flags": []}]')
    with pytest.raises(VmmError, match="JSON list"):
        parse_links('{"ifname": "x"}')


def test_parse_links_and_addresses_from_one_output() -> None:
    both = json.dumps([*json.loads(LINKS_JSON)[:1], {**json.loads(LINKS_JSON)[1], **json.loads(ADDR_JSON)[0]}])
    found, addresses = iproute.parse_links_and_addresses(both)
    assert found == parse_links(both) and [lk.name for lk in found] == ["lo", "vmm-br0"]
    assert addresses == parse_addresses(both) == {"lo": [], "vmm-br0": [IPv4Interface("172.16.0.1/16")]}
    assert iproute.parse_links_and_addresses("") == ([], {})
    with pytest.raises(VmmError, match="cannot parse the output of `ip -j addr show`"):
        iproute.parse_links_and_addresses("{")


def test_parse_routes() -> None:
    routes = parse_routes(ROUTES_JSON)
    assert routes[0] == Route(None, "uplink0", A("10.200.0.2"))
    assert routes[1] == Route(IPv4Network("10.9.9.9/32"), "dummy0")
    assert routes[2].dst == IPv4Network("10.50.0.0/16") and routes[2].gateway == A("10.200.0.2")
    assert routes[4] == Route(IPv4Network("192.168.77.0/24"), None, None, "blackhole")
    assert str(routes[0]) == "default via 10.200.0.2 dev uplink0"
    assert str(routes[4]) == "blackhole 192.168.77.0/24"


def test_parse_routes_skips_ipv6() -> None:
    assert parse_routes('[{"dst":"fe80::/64","dev":"eth0"}]') == []


def test_parse_addresses_keeps_ipv4_only() -> None:
    assert parse_addresses(ADDR_JSON) == {"vmm-br0": [IPv4Interface("172.16.0.1/16")]}
    assert parse_addresses("[]") == {}


# -- names -----------------------------------------------------------------------------------


def test_tap_names() -> None:
    assert links.tap_name("abcd1234") == "vmm-abcd1234"
    assert len(links.tap_name("abcd1234")) <= links.IFNAMSIZ
    assert links.validate_tap_name("vmm-0123abcd") == "vmm-0123abcd"


@pytest.mark.parametrize(
    "name", ["vmm-abc", "vmm-abcd12345", "eth0", "vmm-ABCD1234", "vmm-abcd-123", "vmm-br0", ""]
)
def test_bad_tap_names(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid TAP name"):
        links.validate_tap_name(name)


@pytest.mark.parametrize("vm_id", ["abc", "abcd12345", "ABCD1234", "abcd 123"])
def test_bad_vm_ids(vm_id: str) -> None:
    with pytest.raises(ValidationError, match="invalid VM id"):
        links.tap_name(vm_id)


@pytest.mark.parametrize("name", ["a" * 16, "", "br 0", 'br"0', "br0;", "-br0", "eth0/1", "bré"])
def test_bad_ifnames(name: str) -> None:
    with pytest.raises(ValidationError):
        links.validate_ifname(name)


def test_good_ifnames() -> None:
    for name in ("vmm-br0", "eth0.100", "a" * 15, "wlp2s0", "br_lan"):
        assert links.validate_ifname(name) == name
