"""Port forward specs, keys, host-port conflicts, the record field, and the coexistence checks."""

from __future__ import annotations

import json

import pytest

from vmm.errors import NotFoundError, RecordError, ValidationError
from vmm.host.listeners import Listener, conflicting_listener, parse_proc_net
from vmm.models import VM, PortForward
from vmm.network import coexist, forwards
from vmm.network.firewall import clashes
from vmm.network.forwards import parse_key, parse_spec
from vmm.runner import RecordingRunner, Result

pytestmark = pytest.mark.unit

PF = PortForward


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:80", PF(8080, 80)),
        ("5353:53/udp", PF(5353, 53, "udp")),
        ("5353:53/UDP", PF(5353, 53, "udp")),
        ("8080:80/tcp", PF(8080, 80)),
        ("127.0.0.1:2222:22", PF(2222, 22, "tcp", "127.0.0.1")),
        ("0.0.0.0:2222:22", PF(2222, 22)),
        ("65535:1", PF(65535, 1)),
    ],
)
def test_parse_spec(spec: str, expected: PortForward) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("8080", "invalid port forward '8080'"),
        ("80:", "missing the guest port"),
        (":80", "missing the host port"),
        ("0:80", "host port 0 is not in 1-65535"),
        ("70000:80", "host port 70000 is not in 1-65535"),
        ("80:70000", "guest port 70000"),
        ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("abc:80", "host port 'abc' is not a number"),
        ("-1:80", "is not a number"),
        ("999.1.1.1:80:80", "'999.1.1.1' is not an IPv4 address"),
        ("::1:80:80", "invalid port forward"),
        ("1.2.3.4:5:6:7", "invalid port forward"),
        ("", "invalid port forward"),
        ("224.0.0.1:80:80", "not a host address"),
    ],
)
def test_parse_spec_rejects(spec: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as exc:
        parse_spec(spec)
    assert "\n" not in exc.value.brief


def test_parse_key() -> None:
    assert parse_key("8080") == (None, 8080, None)
    assert parse_key("53/udp") == (None, 53, "udp")
    assert parse_key("127.0.0.1:2222") == ("127.0.0.1", 2222, None)
    for bad in ("x", "1:2:3", "0", "80/sctp"):
        with pytest.raises(ValidationError):
            parse_key(bad)


def test_find_forward_by_key() -> None:
    fwds = [PF(8080, 80), PF(8080, 80, "udp"), PF(2222, 22, "tcp", "127.0.0.1")]
    assert forwards.find(fwds, "8080/udp") is fwds[1]
    assert forwards.find(fwds, "2222") is fwds[2]
    with pytest.raises(ValidationError, match="names 2 forwards"):
        forwards.find(fwds, "8080")
    with pytest.raises(NotFoundError, match="no port forward 9999"):
        forwards.find(fwds, "9999")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (PF(80, 1), PF(80, 2), True),  # both on every address
        (PF(80, 1), PF(80, 1, "udp"), False),  # other protocol
        (PF(80, 1), PF(81, 1), False),  # other host port, same guest port
        (PF(80, 1, "tcp", "127.0.0.1"), PF(81, 1, "tcp", "127.0.0.1"), False),
        (PF(80, 1, "tcp", "127.0.0.1"), PF(80, 2), True),  # one address inside "every address"
        (PF(80, 1, "tcp", "127.0.0.1"), PF(80, 2, "tcp", "127.0.0.1"), True),  # the same address
        (PF(80, 1, "udp", "10.0.0.1"), PF(80, 2, "udp", "10.0.0.1"), True),
        (PF(80, 1, "tcp", "127.0.0.1"), PF(80, 2, "tcp", "10.0.0.1"), False),  # other addresses
        (PF(80, 1, "tcp", "10.0.0.1"), PF(80, 1, "udp", "10.0.0.1"), False),
    ],
)
def test_clashes(a: PortForward, b: PortForward, expected: bool) -> None:
    assert clashes(a, b) is expected
    assert clashes(b, a) is expected  # symmetric


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:1F91 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 3333 1
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
   1: 00000000000000000000000001000000:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1
   2: 0000000000000000FFFF00000100007F:0052 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6666 1
"""


def test_parse_proc_net() -> None:
    assert parse_proc_net(PROC_TCP, "tcp") == [
        Listener("tcp", "127.0.0.1", 8080, 1111),
        Listener("tcp", "0.0.0.0", 22, 2222),
    ]  # the established connection (state 01) is not a listener
    assert parse_proc_net(PROC_TCP6, "tcp") == [
        Listener("tcp", "::", 80, 4444),
        Listener("tcp", "::1", 81, 5555),
        Listener("tcp", "::ffff:127.0.0.1", 82, 6666),  # dotted, whatever the Python version
    ]
    udp = PROC_TCP.replace(" 0A ", " 07 ")
    assert [s.port for s in parse_proc_net(udp, "udp")] == [8080, 22, 8081]


def test_conflicting_listener() -> None:
    socks = parse_proc_net(PROC_TCP, "tcp") + parse_proc_net(PROC_TCP6, "tcp")
    assert conflicting_listener(PF(8080, 80), socks) == socks[0]  # all addresses include 127.0.0.1
    assert conflicting_listener(PF(8080, 80, "tcp", "10.0.0.1"), socks) is None
    assert conflicting_listener(PF(8080, 80, "udp"), socks) is None
    assert conflicting_listener(PF(22, 22, "tcp", "10.0.0.1"), socks) == socks[1]  # wildcard
    assert conflicting_listener(PF(80, 80, "tcp", "10.0.0.1"), socks) == socks[2]  # [::] takes v4 too
    assert conflicting_listener(PF(81, 81), socks) is None  # ::1 only: DNAT is IPv4
    # a v6 socket bound to the IPv4-mapped 127.0.0.1 takes that address's IPv4 traffic
    assert conflicting_listener(PF(82, 82, "tcp", "127.0.0.1"), socks) == socks[4]
    assert conflicting_listener(PF(82, 82, "tcp", "10.0.0.1"), socks) is None


# -- the record field --------------------------------------------------------------------------


def record(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "dev", "id": "abcd1234", "state": "created", "ip": "172.16.0.2", "schema_version": 1}
    base.update(extra)
    return base


def test_record_without_forwards_loads() -> None:
    assert VM.from_dict(record(), "'dev'").port_forwards == []


def test_record_round_trip() -> None:
    vm = VM.from_dict(record(), "'dev'")
    vm.port_forwards = [PF(8080, 80), PF(2222, 22, "udp", "127.0.0.1")]
    again = VM.from_dict(json.loads(json.dumps(vm.to_dict())), "'dev'")
    assert again.port_forwards == vm.port_forwards
    assert [f.key for f in again.port_forwards] == ["8080/tcp", "127.0.0.1:2222/udp"]


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        [1],
        [{"host_port": 80}],
        [{"host_port": 80, "guest_port": 0}],
        [{"host_port": True, "guest_port": 80}],
        [{"host_port": 80, "guest_port": 80, "proto": "sctp"}],
        [{"host_port": 80, "guest_port": 80, "host_addr": "nope"}],
        [{"host_port": 80, "guest_port": 80, "extra": 1}],
    ],
)
def test_record_rejects_bad_forwards(bad: object) -> None:
    with pytest.raises(RecordError, match="port_forwards"):
        VM.from_dict(record(port_forwards=bad), "'dev'")


# -- coexistence -------------------------------------------------------------------------------


def test_parse_nft_blockers() -> None:
    items = [
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}},
        {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "accept"}},
        {"chain": {"family": "ip", "table": "vmm", "name": "forward", "hook": "forward", "policy": "drop"}},
    ]
    assert [str(b) for b in coexist.parse_nft_blockers(items)] == [
        "nft table ip filter, chain FORWARD (hook forward, policy drop)"
    ]


class IptablesRunner(RecordingRunner):
    def which(self, name: str) -> str | None:
        return "/usr/sbin/iptables" if name == "iptables" else None


def test_docker_user_with_iptables() -> None:
    runner = IptablesRunner()
    runner.responses["/usr/sbin/iptables -w -S FORWARD"] = Result([], 0, "-P FORWARD DROP\n-N DOCKER-USER\n", "")
    runner.responses["nft -j list ruleset"] = Result([], 0, '{"nftables": []}', "")
    for d in ("-i", "-o"):
        runner.responses[f"/usr/sbin/iptables -w -C DOCKER-USER {d} vmm-br0 -m comment --comment vmm -j ACCEPT"] = Result([], 1, "", "")
        runner.responses[f"/usr/sbin/iptables -w -D DOCKER-USER {d} vmm-br0 -m comment --comment vmm -j ACCEPT"] = Result([], 1, "", "")
    status = coexist.ensure_forward_allowed(runner, "vmm-br0")
    assert status.docker_user == "iptables" and status.rules_present and not status.blocked
    inserts = [c for c in runner.calls if "-I" in c]
    assert inserts == [
        ["/usr/sbin/iptables", "-w", "-I", "DOCKER-USER", d, "vmm-br0", "-m", "comment", "--comment", "vmm", "-j", "ACCEPT"]
        for d in ("-o", "-i")
    ]
    assert not any("FORWARD" in c and ("-I" in c or "-A" in c or "-P" in c) for c in runner.calls)


def test_diagnose_explains_without_docker_user() -> None:
    blocker = coexist.ForwardBlocker("nft", "ip", "filter", "FORWARD")
    lines = coexist.diagnose(coexist.ForwardStatus((blocker,)), "vmm-br0")
    assert "may be dropped" in lines[0] and "iifname vmm-br0 accept" in lines[1]
    assert coexist.diagnose(coexist.ForwardStatus(), "vmm-br0") == []
