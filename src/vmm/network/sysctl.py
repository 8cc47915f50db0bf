"""Kernel network switches vmm needs, written through /proc/sys (per network namespace).

Keys are tuples of path parts, not dotted strings, because interface names may contain dots
(``eth0.100``), which ``sysctl``'s dotted syntax cannot express.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vmm.errors import PermissionDenied, VmmError

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
IP_FORWARD = ("net", "ipv4", "ip_forward")


def _path(key: Sequence[str], root: Path) -> Path:
    if not key or any(not part or "/" in part or part in (".", "..") for part in key):
        raise VmmError(f"invalid sysctl key {key!r}")
    return root.joinpath(*key)


def read_sysctl(key: Sequence[str], *, root: Path = PROC_SYS) -> str:
    """The current value of ``key``, e.g. ``("net", "ipv4", "ip_forward")`` -> ``"1"``."""
    path = _path(key, root)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise VmmError(f"sysctl {'.'.join(key)} does not exist ({path})") from None


def write_sysctl(key: Sequence[str], value: str, *, root: Path = PROC_SYS) -> bool:
    """Set ``key`` to ``value`` unless it already has it; True if it changed."""
    if read_sysctl(key, root=root) == value:
        return False
    path = _path(key, root)
    try:
        path.write_text(f"{value}\n")
    except PermissionError:
        raise PermissionDenied(
            f"cannot set {'.'.join(key)}: permission denied", hint="run vmm as root (sudo)"
        ) from None
    log.info("sysctl %s = %s", ".".join(key), value)
    return True


def enable_ip_forward(*, root: Path = PROC_SYS) -> bool:
    """Turn on IPv4 forwarding (the VMs' traffic is routed through the host); True if changed."""
    return write_sysctl(IP_FORWARD, "1", root=root)


def enable_route_localnet(ifname: str, *, root: Path = PROC_SYS) -> bool:
    """Allow 127.0.0.0/8 sources on ``ifname``: needed for port forwards from the host's
    localhost (output DNAT keeps the 127.0.0.1 source until postrouting masquerades it, and the
    kernel drops such packets as martians on any device without this switch)."""
    return write_sysctl(("net", "ipv4", "conf", ifname, "route_localnet"), "1", root=root)
