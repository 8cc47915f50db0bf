"""Port forwards as data: what the user types, the one clash rule, and the firewall's view.

Pure: no I/O. A forward lives in its VM's record (``VM.port_forwards``); the host's DNAT rules
are rebuilt from all records by ``services.network.HostNetwork`` (the forwards of running VMs),
never edited one by one; ``services.forwards`` holds the add/list/remove use cases.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from vmm.errors import NotFoundError, ValidationError
from vmm.models import PortForward
from vmm.record import Record

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
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
