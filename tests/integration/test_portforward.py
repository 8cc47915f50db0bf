"""Port forwards through the real CLI, with real packets, in private network namespaces.

Topology per test: "host" runs vmm (a VM started on the fake firecracker, so the bridge, TAP and
nft table are real), "outside" is joined to it by a veth (the uplink), and a stand-in "guest"
namespace sits on vmm-br0 through a veth with the VM's address, running small TCP/UDP servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.fakes.fc_harness import install_fake
from tests.integration.test_network import Server, attach_guest, connect_from
from tests.netns import NetNS, connect_outside
from tests.unit.test_kernels import fake_elf

pytestmark = pytest.mark.integration

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data + b" from " + peer[0].encode(), peer)
"""

UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(100).decode())
except OSError as exc:
    print("failed:", type(exc).__name__)
"""


@dataclass
class World:
    env: VmmEnv
    host: NetNS
    guest: NetNS
    outside: NetNS
    tmp: Path

    def vmm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.env.run(*args, ns=self.host, check=check, timeout=120)

    def ruleset(self) -> str:
        return self.host.run(["nft", "list", "ruleset"]).stdout

    def record(self, name: str) -> dict[str, object]:
        return json.loads((self.env.data_dir / "vms" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def make_vm_env(env: VmmEnv, tmp: Path) -> None:
    fake = install_fake(tmp / "bin")
    env.write_config(engine="firecracker", firecracker_bin=str(fake))
    img = tmp / "root.ext4"
    with img.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    env.run("kernel", "import", str(fake_elf(tmp / "vmlinux")), "--name", "default", check=True)
    env.run("image", "import", str(img), "--name", "default", check=True)


@pytest.fixture
def world(vmm_env: VmmEnv, netns_factory: Callable[[], NetNS], tmp_path: Path) -> Iterator[World]:
    host, guest, outside = netns_factory(), netns_factory(), netns_factory()
    make_vm_env(vmm_env, tmp_path)
    w = World(vmm_env, host, guest, outside, tmp_path)
    w.vmm("create", "dev", "--disk", "128")  # 172.16.0.2
    w.vmm("start", "dev", "--no-wait")
    connect_outside(host, outside)
    attach_guest(host, guest, "vmmt-g0", "172.16.0.2/16")  # stands in for the VM behind its TAP
    try:
        yield w
    finally:
        host.run(["ip", "link", "del", "vmmt-g0"], check=False)  # else the bridge is "in use"
        vms = vmm_env.data_dir / "vms"
        for rec in sorted(vms.glob("*.json")) if vms.is_dir() else []:
            w.vmm("delete", "-f", rec.stem, check=False)
        leftovers = [ln for ln in host.run(["ip", "-o", "link"]).stdout.splitlines() if "vmm-" in ln]
        assert leftovers == [], "vmm left devices behind"
        assert "table ip vmm" not in host.run(["nft", "list", "ruleset"]).stdout


def test_forward_reaches_the_guest_from_outside_localhost_and_is_withdrawn(world: World) -> None:
    w = world
    server = Server(w.guest, "0.0.0.0", 8000, w.tmp / "server.log")
    assert connect_from(w.outside, "10.200.0.1", 8080, timeout=2).startswith("failed")

    out = w.vmm("port-forward", "dev", "8080:8000").stdout
    assert "Forwarding 0.0.0.0:8080/tcp -> dev 172.16.0.2:8000 (active)" in out
    assert connect_from(w.outside, "10.200.0.1", 8080) == "10.200.0.2"  # DNAT only: real client
    assert connect_from(w.host, "127.0.0.1", 8080) == "172.16.0.1"  # output DNAT + route_localnet
    assert w.host.sysctl("net.ipv4.conf.vmm-br0.route_localnet") == "1"
    assert server.seen() == ["10.200.0.2", "172.16.0.1"]

    # the guest's own traffic leaves masqueraded behind the host's uplink address
    outside_server = Server(w.outside, "10.200.0.2", 9000, w.tmp / "outside.log")
    assert connect_from(w.guest, "10.200.0.2", 9000) == "10.200.0.1"
    assert outside_server.seen() == ["10.200.0.1"]

    w.vmm("port-forward", "remove", "dev", "8080")
    assert connect_from(w.outside, "10.200.0.1", 8080, timeout=2).startswith("failed")
    assert "dport 8080" not in w.ruleset()

    # stored while stopped, applied on start, withdrawn on stop
    w.vmm("stop", "dev")
    out = w.vmm("port-forward", "dev", "8080:8000").stdout
    assert "stored; applied when dev starts" in out
    assert connect_from(w.outside, "10.200.0.1", 8080, timeout=2).startswith("failed")
    assert "VM stopped" in w.vmm("port-forward", "list", "dev").stdout
    w.vmm("start", "dev", "--no-wait")
    assert connect_from(w.outside, "10.200.0.1", 8080) == "10.200.0.2"
    assert "active" in w.vmm("port-forward", "list").stdout
    w.vmm("stop", "dev")
    assert connect_from(w.outside, "10.200.0.1", 8080, timeout=2).startswith("failed")
    assert "dport 8080" not in w.ruleset()


def test_localhost_only_and_udp_forwards(world: World) -> None:
    w = world
    Server(w.guest, "0.0.0.0", 22, w.tmp / "ssh.log")
    with (w.tmp / "udp.log").open("w") as log:
        udp = w.guest.popen([sys.executable, "-u", "-c", UDP_ECHO, "0.0.0.0", "53"], stdout=log)
    w.vmm("port-forward", "dev", "127.0.0.1:2222:22")
    w.vmm("port-forward", "dev", "5353:53/udp")
    assert connect_from(w.host, "127.0.0.1", 2222) == "172.16.0.1"
    # bound to 127.0.0.1 only: not reachable through the uplink address
    assert connect_from(w.outside, "10.200.0.1", 2222, timeout=2).startswith("failed")
    reply = w.outside.run([sys.executable, "-c", UDP_CLIENT, "10.200.0.1", "5353"]).stdout.strip()
    assert reply == "ping from 10.200.0.2", reply
    assert udp.poll() is None
    listing = json.loads(w.vmm("port-forward", "list", "--json").stdout)["port_forwards"]
    assert [(f["host_addr"], f["host_port"], f["proto"], f["state"]) for f in listing] == [
        ("127.0.0.1", 2222, "tcp", "active"),
        ("0.0.0.0", 5353, "udp", "active"),
    ]
    w.vmm("port-forward", "remove", "dev", "5353/udp")
    reply = w.outside.run([sys.executable, "-c", UDP_CLIENT, "10.200.0.1", "5353"]).stdout.strip()
    assert reply.startswith("failed")


def test_hairpin_a_guest_reaches_its_own_forward(world: World) -> None:
    w = world
    server = Server(w.guest, "0.0.0.0", 8000, w.tmp / "server.log")
    w.vmm("port-forward", "dev", "8080:8000")
    tap = f"vmm-{w.record('dev')['id']}"
    shown = json.loads(w.host.run(["ip", "-j", "-d", "link", "show", "dev", tap]).stdout)
    assert shown[0]["linkinfo"]["info_slave_data"]["hairpin"] is True  # vmm set it on the TAP
    # the stand-in guest is on a veth, not the TAP: give its port what vmm gives a TAP. With
    # br_netfilter loaded (Docker loads it) the DNAT'd packet is bridged back out of the port it
    # came in on, which only hairpin mode allows.
    w.host.run(["ip", "link", "set", "dev", "vmmt-g0", "type", "bridge_slave", "hairpin", "on"])
    assert connect_from(w.guest, "172.16.0.1", 8080) == "172.16.0.1"
    assert connect_from(w.guest, "10.200.0.1", 8080) == "172.16.0.1"
    assert server.seen() == ["172.16.0.1", "172.16.0.1"]


def test_conflicts_are_refused_and_named(world: World) -> None:
    w = world
    w.vmm("create", "two", "--disk", "128")
    w.vmm("port-forward", "dev", "8080:80")
    before = (w.ruleset(), w.record("dev"), w.record("two"))

    dup = w.vmm("port-forward", "two", "8080:81", check=False)
    assert dup.returncode == 1
    assert "host port 8080/tcp is already forwarded by VM 'dev'" in dup.stderr
    same = w.vmm("port-forward", "dev", "127.0.0.1:8080:82", check=False)
    assert "already forwarded by this VM" in same.stderr

    listener = w.host.popen(
        [sys.executable, "-c", "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 9999)); s.listen(); time.sleep(60)"]
    )
    deadline = 50
    while "0F27" not in w.host.run(["cat", "/proc/net/tcp"]).stdout and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.1"])
    busy = w.vmm("port-forward", "two", "9999:80", check=False)
    assert busy.returncode == 1
    assert f"host port 9999/tcp is in use: python3 (pid {listener.pid}) listens on 127.0.0.1:9999" in busy.stderr or (
        "host port 9999/tcp is in use" in busy.stderr and "127.0.0.1:9999" in busy.stderr
    ), busy.stderr
    # another address of the host is free
    w.vmm("port-forward", "two", "10.200.0.1:9999:80")
    w.vmm("port-forward", "remove", "two", "9999")
    assert (w.ruleset(), w.record("dev"), w.record("two")) == before
    # udp on the same port is a different forward
    w.vmm("port-forward", "two", "8080:80/udp")


def test_bad_input_one_line_nothing_changed(world: World) -> None:
    w = world
    w.vmm("port-forward", "dev", "8080:80")
    before = (w.ruleset(), w.record("dev"))
    cases = [
        (["dev", "8080"], 1, "invalid port forward '8080'"),
        (["dev", "80:"], 1, "missing the guest port"),
        (["dev", ":80"], 1, "missing the host port"),
        (["dev", "0:80"], 1, "not in 1-65535"),
        (["dev", "70000:80"], 1, "not in 1-65535"),
        (["dev", "8080:80/sctp"], 1, "protocol 'sctp'"),
        (["dev", "abc:80"], 1, "is not a number"),
        (["dev", "999.1.1.1:80:80"], 1, "not an IPv4 address"),
        (["dev", "10.9.9.9:80:80"], 1, "not an address of this host"),
        (["nope", "8081:80"], 1, "VM 'nope' does not exist"),
        (["Bad_Name", "8081:80"], 1, "invalid VM name"),
        (["remove", "dev", "9999"], 1, "no port forward 9999"),
        (["remove", "nope", "8080"], 1, "does not exist"),
        (["remove", "dev"], 2, "expected a VM name and a host port"),
        (["dev"], 2, "expected a VM name"),
        (["list", "a", "b"], 2, "at most one VM name"),
        (["list", "nope"], 1, "does not exist"),
    ]
    for args, code, message in cases:
        r = w.vmm("port-forward", *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        first, *rest = r.stderr.splitlines()
        assert first.startswith("error: ") and message in first, (args, r.stderr)
        assert all(line.startswith("hint: ") for line in rest), (args, r.stderr)
        assert r.stdout == ""
    assert (w.ruleset(), w.record("dev")) == before
