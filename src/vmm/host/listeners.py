"""Sockets bound on the host, read from ``/proc/net/{tcp,tcp6,udp,udp6}`` of the current
network namespace (what ``ss -lntu`` shows): a parsed fact, and which of them a port forward
would take the traffic from."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from vmm.models import PortForward
from vmm.record import Record

PROTOCOLS = ("tcp", "udp")


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
    if len(words) == 4:
        return str(IPv4Address(words))
    ip = IPv6Address(words)
    # An IPv4-mapped address in dotted form (Python < 3.13 prints ::ffff:7f00:1), which is
    # how ``_v4`` tells that the socket takes IPv4 traffic for that address.
    return f"::ffff:{ip.ipv4_mapped}" if ip.ipv4_mapped is not None else str(ip)


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
