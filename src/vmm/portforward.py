"""Port forwards: what the user types, which host ports are taken, and the add/list/remove use cases.

A forward lives in its VM's record (``VM.port_forwards``); the host's DNAT rules are rebuilt
from all records by ``Manager.rebuild_network_rules`` (the forwards of running VMs), never
edited one by one. ``parse_spec`` and ``parse_key`` are pure; ``listeners`` reads
``/proc/net/{tcp,tcp6,udp,udp6}`` of the current network namespace.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError
from vmm.models import VM, PortForward, validate_name
from vmm.record import Record

if TYPE_CHECKING:
    from vmm.manager import Manager
    from vmm.network import firewall

SYNTAX = "[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]"
_SPEC_HINT = f"expected {SYNTAX}, e.g. 8080:80, 5353:53/udp or 127.0.0.1:2222:22"
PROTOCOLS = ("tcp", "udp")


def _port(text: str, what: str, spec: str) -> int:
    if not text:
        raise ValidationError(f"invalid port forward {spec!r}: missing the {what}", hint=_SPEC_HINT)
    # ASCII digits only: str.isdigit() is true for '²' (int() refuses it) and '٨' (int() takes it)
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(f"invalid port forward {spec!r}: {what} {text!r} is not a number", hint=_SPEC_HINT)
    digits = text.lstrip("0") or "0"
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:  # int() refuses 4300+ digits
        raise ValidationError(f"invalid port forward {spec!r}: {what} {digits} is not in 1-65535", hint=_SPEC_HINT)
    return int(digits)


def _addr(text: str, spec: str) -> str | None:
    try:
        addr = IPv4Address(text)
    except ValueError:
        raise ValidationError(
            f"invalid port forward {spec!r}: {text!r} is not an IPv4 address", hint=_SPEC_HINT
        ) from None
    if addr.is_multicast or addr == IPv4Address("255.255.255.255"):
        raise ValidationError(f"invalid port forward {spec!r}: {addr} is not a host address")
    return None if addr == IPv4Address("0.0.0.0") else str(addr)  # 0.0.0.0: every address


def _split_proto(text: str, spec: str) -> tuple[str, str | None]:
    body, sep, proto = text.partition("/")
    if not sep:
        return body, None
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise ValidationError(
            f"invalid port forward {spec!r}: protocol {proto!r} is not tcp or udp", hint=_SPEC_HINT
        )
    return body, proto


def parse_spec(spec: str) -> PortForward:
    """``[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]`` as a ``PortForward``; a ValidationError otherwise."""
    text = spec.strip()
    body, proto = _split_proto(text, spec)
    parts = body.split(":")
    if len(parts) == 2:
        addr = None
        host, guest = parts
    elif len(parts) == 3:
        addr = _addr(parts[0], spec)
        host, guest = parts[1], parts[2]
    else:
        raise ValidationError(f"invalid port forward {spec!r}", hint=_SPEC_HINT)
    host_port = _port(host, "host port", spec)
    guest_port = _port(guest, "guest port", spec)
    return PortForward(host_port=host_port, guest_port=guest_port, proto=proto or "tcp", host_addr=addr)


def parse_key(key: str) -> tuple[str | None, int, str | None]:
    """What ``vmm port-forward remove`` takes: ``[ADDR:]HOSTPORT[/proto]`` -> (addr, port, proto)."""
    body, proto = _split_proto(key.strip(), key)
    parts = body.split(":")
    if len(parts) > 2:
        raise ValidationError(
            f"invalid port forward {key!r}: expected [ADDR:]HOSTPORT[/tcp|/udp], e.g. 8080 or 5353/udp"
        )
    addr = _addr(parts[0], key) if len(parts) == 2 else None
    return addr, _port(parts[-1], "host port", key), proto


def find(forwards: list[PortForward], key: str) -> PortForward:
    """The one forward ``key`` names (see ``parse_key``)."""
    addr, port, proto = parse_key(key)
    key = key.strip()  # as parse_key read it: the messages below stay on one line
    matches = [
        f
        for f in forwards
        if f.host_port == port
        and (proto is None or f.proto == proto)
        and (addr is None or f.host_addr == addr)
    ]
    if not matches:
        raise NotFoundError(f"no port forward {key}", hint="see 'vmm port-forward list'")
    if len(matches) > 1:
        raise ValidationError(
            f"{key} names {len(matches)} forwards ({', '.join(f.key for f in matches)})",
            hint="add the protocol or address, e.g. 8080/udp or 127.0.0.1:8080",
        )
    return matches[0]


def clashes(a: PortForward, b: PortForward) -> bool:
    """Both would catch the same packets: same protocol and port, overlapping host address."""
    return (
        a.proto == b.proto
        and a.host_port == b.host_port
        and (a.host_addr is None or b.host_addr is None or a.host_addr == b.host_addr)
    )


def describe(fwd: PortForward, guest_ip: str) -> str:
    host = fwd.host_addr or "0.0.0.0"
    return f"{host}:{fwd.host_port}/{fwd.proto} -> {guest_ip}:{fwd.guest_port}"


def to_firewall(fwd: PortForward, guest_ip: str) -> firewall.PortForward:
    from vmm.network import firewall

    return firewall.PortForward(
        host_port=fwd.host_port,
        guest_ip=IPv4Address(guest_ip),
        guest_port=fwd.guest_port,
        proto=fwd.proto,
        host_addr=IPv4Address(fwd.host_addr) if fwd.host_addr else None,
    )


# -- host ports in use --------------------------------------------------------------------------


class Listener(Record):
    """A socket bound on the host: a TCP listener or a bound UDP socket."""

    proto: str
    addr: str  # "0.0.0.0", "127.0.0.1", "::", "::ffff:10.0.0.1", ...
    port: int
    inode: int


def _hex_addr(text: str) -> str:
    raw = bytes.fromhex(text)
    # /proc/net prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(IPv4Address(words)) if len(words) == 4 else str(IPv6Address(words))


def parse_proc_net(text: str, proto: str) -> list[Listener]:
    """Listening TCP sockets (state 0A) or bound UDP sockets from a /proc/net file. Pure."""
    found = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10:
            continue
        addr, _, port = cols[1].partition(":")
        if proto == "tcp" and cols[3] != "0A":
            continue
        try:
            found.append(Listener(proto, _hex_addr(addr), int(port, 16), int(cols[9])))
        except ValueError:
            continue
    return [f for f in found if f.port != 0]


def listeners(root: Path = Path("/proc/net")) -> list[Listener]:
    """Sockets bound in the current network namespace (what ``ss -lntu`` shows)."""
    out: list[Listener] = []
    for proto in PROTOCOLS:
        for suffix in ("", "6"):
            try:
                text = (root / f"{proto}{suffix}").read_text()
            except OSError:
                continue
            out.extend(parse_proc_net(text, proto))
    return out


def _v4(addr: str) -> str | None:
    """The IPv4 address a listener takes IPv4 traffic on, "*" for any, None for IPv6 only."""
    if addr in ("0.0.0.0", "::"):
        return "*"
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr if ":" not in addr else None


def conflicting_listener(fwd: PortForward, sockets: list[Listener]) -> Listener | None:
    """A socket that ``fwd``'s DNAT would take the traffic from, if any."""
    for s in sockets:
        if s.proto != fwd.proto or s.port != fwd.host_port:
            continue
        v4 = _v4(s.addr)
        if v4 is None:
            continue
        if fwd.host_addr is None or v4 == "*" or v4 == fwd.host_addr:
            return s
    return None


def socket_owner(inode: int, proc: Path = Path("/proc")) -> str | None:
    """``name (pid N)`` of a process holding socket ``inode``, if we can see it."""
    target = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(entry / "fd"):
                if os.readlink(fd.path) == target:
                    comm = (entry / "comm").read_text().strip()
                    return f"{comm} (pid {entry.name})"
        except OSError:
            continue
    return None


# -- the use cases ------------------------------------------------------------------------------


class ForwardView(Record):
    """One forward as ``vmm port-forward list`` shows it."""

    vm: str
    guest_ip: str
    forward: PortForward
    active: bool

    @property
    def state(self) -> str:
        return "active" if self.active else "VM stopped"

    def to_json(self) -> dict[str, object]:
        f = self.forward
        return {
            "vm": self.vm,
            "host_addr": f.host_addr or "0.0.0.0",
            "host_port": f.host_port,
            "guest_ip": self.guest_ip,
            "guest_port": f.guest_port,
            "proto": f.proto,
            "state": self.state,
        }


def _check_host_addr(m: Manager, fwd: PortForward) -> None:
    if fwd.host_addr is None or IPv4Address(fwd.host_addr).is_loopback:
        return
    from vmm.network import links

    local = {str(a.ip) for addrs in links.list_addresses(m.runner).values() for a in addrs}
    if fwd.host_addr not in local:
        raise ValidationError(
            f"{fwd.host_addr} is not an address of this host",
            hint="use one of the host's addresses, 127.0.0.1, or no address (all of them)",
        )


def _check_free(m: Manager, vm: VM, fwd: PortForward) -> None:
    """Refuse a forward that clashes with a stored one (any VM) or with a host socket."""
    vms, _problems = m.store.load_all()
    for other in vms:
        for existing in other.port_forwards:
            if clashes(fwd, existing):
                where = "this VM" if other.name == vm.name else f"VM {other.name!r}"
                raise ConflictError(
                    f"host port {fwd.key} is already forwarded by {where} "
                    f"({describe(existing, other.ip)})",
                    hint=f"choose another host port, or remove it: vmm port-forward remove {other.name} {existing.key}",
                )
    sock = conflicting_listener(fwd, listeners())
    if sock is not None:
        owner = socket_owner(sock.inode) or "another process"
        raise ConflictError(
            f"host port {fwd.host_port}/{fwd.proto} is in use: {owner} listens on {sock.addr}:{sock.port}",
            hint="choose another host port, or stop that program"
            + ("" if fwd.host_addr else " (or forward from one address, e.g. 127.0.0.1:PORT:GUEST)"),
        )


def add(m: Manager, name: str, spec: str) -> ForwardView:
    """Store a forward in the VM's record; applied at once when the VM runs."""
    validate_name(name)
    fwd = parse_spec(spec)
    with m.store.vm_lock(name), m.store.global_lock():
        vm = m.store.load(name)
        _check_host_addr(m, fwd)
        _check_free(m, vm, fwd)
        vm.port_forwards.append(fwd)
        m.store.save(vm)
        faults.point("port-forward-add.saved")
        active = m.vm_is_active(vm)
        if active:
            try:
                m.apply_network_rules_locked(always=True)
                from vmm.network import links

                links.set_hairpin(m.runner, vm.tap, True)
            except BaseException:
                vm.port_forwards.remove(fwd)
                m.store.save(vm)
                m.apply_network_rules_locked()
                raise
    return ForwardView(vm.name, vm.ip, fwd, active)


def remove(m: Manager, name: str, key: str) -> ForwardView:
    """Delete a forward from the VM's record and withdraw its rule."""
    validate_name(name)
    with m.store.vm_lock(name), m.store.global_lock():
        vm = m.store.load(name)
        fwd = find(vm.port_forwards, key)
        vm.port_forwards.remove(fwd)
        m.store.save(vm)
        faults.point("port-forward-remove.saved")
        active = m.vm_is_active(vm)
        m.apply_network_rules_locked()
        if active and not vm.port_forwards:  # hairpin only while a forward needs it
            import contextlib

            from vmm.errors import VmmError
            from vmm.network import links

            with contextlib.suppress(VmmError):
                links.set_hairpin(m.runner, vm.tap, False)
    return ForwardView(vm.name, vm.ip, fwd, active)


def list_forwards(m: Manager, name: str | None = None) -> list[ForwardView]:
    """Every stored forward (of one VM, or of all), with whether it is in effect."""
    if name is not None:
        vms = [m.get(name)]
    else:
        vms, _problems = m.store.load_all()
    out: list[ForwardView] = []
    for vm in vms:
        active = m.vm_is_active(vm) if vm.port_forwards else False
        out.extend(ForwardView(vm.name, vm.ip, f, active) for f in vm.port_forwards)
    return sorted(out, key=lambda v: (v.forward.host_port, v.forward.proto, v.vm))

