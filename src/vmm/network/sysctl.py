"""Kernel network switches vmm needs, written through /proc/sys (per network namespace).

Keys are tuples of path parts, not dotted strings, because interface names may contain dots
(``eth0.100``), which ``sysctl``'s dotted syntax cannot express.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vmm.errors import PermissionDenied, VmmError
from vmm.log import get_logger

log = get_logger(__name__)

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


def route_localnet_key(ifname: str) -> tuple[str, ...]:
    """The sysctl key of ``ifname``'s ``route_localnet`` switch."""
    return ("net", "ipv4", "conf", ifname, "route_localnet")


def set_route_localnet(ifname: str, on: bool, *, root: Path = PROC_SYS) -> bool:
    """Turn ``route_localnet`` on ``ifname`` on or off; True if it changed.

    On, the kernel routes 127.0.0.0/8 addresses to and from ``ifname``: port forwards from the
    host's localhost need it on the bridge (output DNAT keeps the 127.0.0.1 source until
    postrouting masquerades it, and the replies are routed back to 127.0.0.1 after the
    masquerade is undone; without the switch the kernel drops both as martians). It also lets
    whatever sits on ``ifname`` send to the host's 127.0.0.1 (CVE-2020-8558): vmm's nft table
    drops that (the ``localnet`` chain in ``vmm.network.firewall``), and the switch goes back
    off when no forward needs it. Off for a device that does not exist (the bridge is gone) is
    a no-op: False. ``conf/all/route_localnet``, which would open every device, is not vmm's.
    """
    key = route_localnet_key(ifname)
    if not on and not _path(key, root).exists():
        return False
    return write_sysctl(key, "1" if on else "0", root=root)


def enable_route_localnet(ifname: str, *, root: Path = PROC_SYS) -> bool:
    """``set_route_localnet(ifname, True)``: a port forward from the host's localhost needs it."""
    return set_route_localnet(ifname, True, root=root)


def disable_route_localnet(ifname: str, *, root: Path = PROC_SYS) -> bool:
    """``set_route_localnet(ifname, False)``: no forward from the host's localhost is left."""
    return set_route_localnet(ifname, False, root=root)
