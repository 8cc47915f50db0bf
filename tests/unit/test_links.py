"""The link appliers' command sequences (vmm.network.links), on a recording runner."""

from __future__ import annotations

import json
import shlex
from ipaddress import IPv4Address, IPv4Interface

import pytest

from tests.unit.test_ipam import ADDR_JSON, LINKS_JSON, ROUTES_JSON
from vmm.errors import CommandError, ConflictError, NotFoundError
from vmm.network import links
from vmm.network.iproute import Link
from vmm.runner import RecordingRunner, Result

pytestmark = pytest.mark.unit

A = IPv4Address

# -- link appliers (recording runner) ------------------------------------------------------

LINK_SHOW = "ip -j -d link show"


def recorder(**responses: str) -> RecordingRunner:
    """A RecordingRunner answering ``{argv string: stdout}``."""
    runner = RecordingRunner()
    for cmd, out in responses.items():
        argv = shlex.split(cmd)
        runner.responses[cmd] = Result(argv, 0, out, "")
    return runner


def _links(*items: dict[str, object]) -> str:
    return json.dumps(list(items))


BRIDGE = {"ifindex": 2, "ifname": "vmm-br0", "flags": ["UP"], "linkinfo": {"info_kind": "bridge"}}
TAP = {
    "ifindex": 3,
    "ifname": "vmm-abcd1234",
    "flags": ["UP"],
    "master": "vmm-br0",
    "linkinfo": {"info_kind": "tun", "info_data": {"type": "tap"}},
}


ADDR_SHOW = "ip -j -d addr show"  # links and addresses, one read (links.read_devices)
BRIDGE_WITH_ADDRESS = {**BRIDGE, **json.loads(ADDR_JSON)[0], "flags": ["UP"]}


def test_ensure_bridge_creates_with_fixed_mac() -> None:
    runner = recorder(**{ADDR_SHOW: "[]", "ip -j -4 route show": ROUTES_JSON})
    devices = links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16)
    assert runner.calls == [
        ["ip", "-j", "-d", "addr", "show"],
        ["ip", "-j", "-4", "route", "show"],
        ["ip", "link", "add", "name", "vmm-br0", "address", "06:00:ac:10:00:01", "type", "bridge"],
        ["ip", "addr", "add", "172.16.0.1/16", "dev", "vmm-br0"],
        ["ip", "link", "set", "dev", "vmm-br0", "up"],
        ["ip", "-j", "-d", "addr", "show"],  # it changed the devices: what they are now
    ]
    assert isinstance(devices, links.Devices)


def test_ensure_bridge_is_a_no_op_when_in_place() -> None:
    runner = recorder(**{ADDR_SHOW: _links(BRIDGE_WITH_ADDRESS)})
    devices = links.ensure_bridge(runner, "vmm-br0", A("172.16.0.1"), 16)
    assert runner.calls == [["ip", "-j", "-d", "addr", "show"]]
    assert devices.get("vmm-br0") == Link("vmm-br0", 2, kind="bridge", flags=frozenset({"UP"}),
                                          operstate="DOWN")
    assert devices.addresses["vmm-br0"] == [IPv4Interface("172.16.0.1/16")]


BATCH = ["ip", "-batch", "-"]


def test_ensure_bridge_and_tap_share_one_read() -> None:
    """A start's steps pass the devices along: one ``ip`` read for the bridge and the TAP."""
    runner = recorder(**{ADDR_SHOW: _links(BRIDGE_WITH_ADDRESS, TAP)})
    devices = links.read_devices(runner)
    assert links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16, devices=devices) is devices
    links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0", devices=devices)
    assert runner.calls == [
        ["ip", "-j", "-d", "addr", "show"],
        ["ip", "link", "del", "dev", "vmm-abcd1234"],  # the stale TAP the read found
        BATCH,
    ]
    assert runner.inputs[-1] == (
        "tuntap add dev vmm-abcd1234 mode tap\nlink set dev vmm-abcd1234 master vmm-br0 up\n"
    )
    assert devices.get("nope") is None and "vmm-abcd1234" in repr(devices)


def test_ensure_bridge_brings_a_down_bridge_up_and_reads_again() -> None:
    runner = recorder(**{ADDR_SHOW: _links({**BRIDGE_WITH_ADDRESS, "flags": []})})
    links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16)
    assert runner.calls[1:] == [
        ["ip", "link", "set", "dev", "vmm-br0", "up"],
        ["ip", "-j", "-d", "addr", "show"],
    ]


def test_ensure_bridge_refuses_overlapping_subnet() -> None:
    routes = '[{"dst":"172.16.0.0/12","dev":"eth0","flags":[]}]'
    runner = recorder(**{ADDR_SHOW: "[]", "ip -j -4 route show": routes})
    with pytest.raises(ConflictError, match="overlaps the host route 172.16.0.0/12 dev eth0"):
        links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16)
    assert not any(c[:3] == ["ip", "link", "add"] for c in runner.calls)


def test_ensure_bridge_refuses_an_address_on_a_down_device() -> None:
    addrs = (
        '[{"ifindex":7,"ifname":"wg0","flags":["POINTOPOINT"],"addr_info":[{"family":"inet",'
        '"local":"172.16.200.1","prefixlen":24}]}]'
    )
    runner = recorder(**{ADDR_SHOW: addrs})
    with pytest.raises(ConflictError, match="overlaps the address 172.16.200.1/24 of wg0"):
        links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16)


def test_ensure_bridge_refuses_changed_address() -> None:
    runner = recorder(**{ADDR_SHOW: _links(BRIDGE_WITH_ADDRESS)})
    with pytest.raises(ConflictError, match="has the address 172.16.0.1/16, not 10.5.0.1/24"):
        links.ensure_bridge(runner, "vmm-br0", "10.5.0.1", 24)


def test_ensure_bridge_refuses_a_non_bridge() -> None:
    runner = recorder(**{ADDR_SHOW: _links({**TAP, "ifname": "vmm-br0"})})
    with pytest.raises(ConflictError, match="not a bridge"):
        links.ensure_bridge(runner, "vmm-br0", "172.16.0.1", 16)


def test_ensure_tap_fresh() -> None:
    runner = recorder(**{LINK_SHOW: _links(BRIDGE)})
    links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0", user=1000, group=1000)
    assert runner.calls[1:] == [BATCH]
    assert runner.inputs[-1] == (
        "tuntap add dev vmm-abcd1234 mode tap user 1000 group 1000\n"
        "link set dev vmm-abcd1234 master vmm-br0 up\n"
    )


def test_ensure_tap_hairpin() -> None:
    runner = recorder(**{LINK_SHOW: _links(BRIDGE)})
    links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0", hairpin=True)
    assert runner.calls[-1] == BATCH
    assert (runner.inputs[-1] or "").splitlines()[-1] == (
        "link set dev vmm-abcd1234 type bridge_slave hairpin on"
    )


def test_ensure_tap_recreates_an_existing_tap() -> None:
    runner = recorder(**{LINK_SHOW: _links(BRIDGE, TAP)})
    links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0")
    assert runner.calls[1:3] == [["ip", "link", "del", "dev", "vmm-abcd1234"], BATCH]


def test_ensure_tap_needs_the_bridge() -> None:
    runner = recorder(**{LINK_SHOW: "[]"})
    with pytest.raises(NotFoundError, match="bridge vmm-br0 does not exist"):
        links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0")


def test_ensure_tap_refuses_a_non_tap_of_that_name() -> None:
    runner = recorder(**{LINK_SHOW: _links(BRIDGE, {**BRIDGE, "ifname": "vmm-abcd1234"})})
    with pytest.raises(ConflictError, match="is not a TAP device"):
        links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0")


def test_ensure_tap_undoes_the_tap_when_attaching_fails() -> None:
    class Failing(RecordingRunner):
        def run(self, argv, **kw):  # type: ignore[no-untyped-def]
            result = super().run(argv, **kw)
            if argv == BATCH:  # the TAP was made, attaching it failed
                raise CommandError(argv, 1, "Cannot find device")
            return result

    runner = Failing(responses={LINK_SHOW: Result([], 0, _links(BRIDGE), "")})
    with pytest.raises(CommandError):
        links.ensure_tap(runner, "vmm-abcd1234", "vmm-br0")
    assert runner.calls[-1] == ["ip", "link", "del", "dev", "vmm-abcd1234"]


def test_delete_tap_absent_is_fine() -> None:
    runner = RecordingRunner(
        responses={
            "ip link del dev vmm-abcd1234": Result([], 1, "", 'Cannot find device "vmm-abcd1234"'),
            LINK_SHOW: Result([], 0, "[]", ""),
        }
    )
    assert links.delete_tap(runner, "vmm-abcd1234") is False


def test_delete_tap_failure_while_present_raises() -> None:
    runner = RecordingRunner(
        responses={
            "ip link del dev vmm-abcd1234": Result(
                ["ip", "link", "del", "dev", "vmm-abcd1234"], 2, "", "RTNETLINK answers: busy"
            ),
            LINK_SHOW: Result([], 0, _links(BRIDGE, TAP), ""),
        }
    )
    with pytest.raises(CommandError, match="busy"):
        links.delete_tap(runner, "vmm-abcd1234")


def test_list_links_prefix() -> None:
    runner = recorder(**{LINK_SHOW: LINKS_JSON})
    assert [link.name for link in links.list_links(runner, "vmm-")] == ["vmm-br0", "vmm-abcd1234"]
    assert links.link_exists(runner, "veth-g") and not links.link_exists(runner, "nope")
    assert isinstance(links.get_link(runner, "lo"), Link)


def test_unused_taps_sorts_vmm_taps_into_orphans_and_idle() -> None:
    """The one definition doctor, its --fix and network prune share."""
    from vmm.network.iproute import Link as L
    from vmm.network.links import unused_taps

    def tap(name: str) -> L:
        return L(name, 1, kind="tun", tun_type="tap")

    present = [
        tap("vmm-aaaa0001"),  # named, running
        tap("vmm-aaaa0002"),  # named, VM stopped
        tap("vmm-aaaa0003"),  # no record
        L("vmm-br0", 2, kind="bridge"),  # not a TAP
        tap("tap0"),  # not vmm's name
        L("vmm-aaaa0004", 3, kind="veth"),  # vmm's name, not a TAP
        L("vmm-aaaa0005", 4, kind="tun", tun_type="tun"),  # a TUN, not a TAP
    ]
    orphans, idle = unused_taps(
        present, named={"vmm-aaaa0001", "vmm-aaaa0002"}, active={"vmm-aaaa0001"}
    )
    assert (orphans, idle) == (["vmm-aaaa0003"], ["vmm-aaaa0002"])
