"""The bridge and the per-VM TAP devices, made to match what the VM records need.

Thin appliers over ``ip`` (every call through the ``Runner``); the decisions come from the pure
parsers in ``vmm.network.iproute`` and the checks in ``vmm.network.ipam``. Every function is
idempotent, so ``start`` after a crash, or ``delete`` of a half-deleted VM, just finishes the job.
Callers hold the global host-networking lock: these steps read, then change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from vmm.errors import CommandError, ConflictError, NotFoundError, ValidationError
from vmm.log import get_logger
from vmm.network.ipam import (
    mac_for,
    overlapping_addresses,
    overlapping_routes,
    parse_address,
    validate_network,
)
from vmm.network.iproute import (
    Link,
    Route,
    parse_addresses,
    parse_links,
    parse_links_and_addresses,
    parse_routes,
)
from vmm.runner import Runner

log = get_logger(__name__)

DEFAULT_BRIDGE = "vmm-br0"
TAP_PREFIX = "vmm-"
IFNAMSIZ = 15  # the kernel's limit on interface names, without the NUL

# Stricter than the kernel (which takes almost any byte): these names end up in nft rules.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_VM_ID_RE = re.compile(r"^[a-z0-9]{8}$")
_TAP_RE = re.compile(rf"^{TAP_PREFIX}[a-z0-9]{{8}}$")


def validate_ifname(name: str, what: str = "interface") -> str:
    """A safe interface name: 1-15 letters, digits, ``_ . -``; returned unchanged."""
    if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {name!r}",
            hint=f"use at most {IFNAMSIZ} letters, digits, '_', '.' or '-'",
        )
    return name


def is_vmm_tap(link: Link) -> bool:
    """A TAP device named the way vmm names its VMs' TAPs (``vmm-<id>``)."""
    return link.is_tap and isinstance(link.name, str) and bool(_TAP_RE.fullmatch(link.name))


def unused_taps(links: Iterable[Link], *, named: set[str], active: set[str]) -> tuple[list[str], list[str]]:
    """vmm's TAPs that no VM uses, in two kinds — the one definition doctor, ``doctor --fix``'s
    leftovers and ``vmm network prune`` share. Pure.

    ``named``: the TAPs the records name (read from corrupt records too); ``active``: those of
    VMs that run, or that a command holds the lock of right now. Returns (orphans: named by no
    record, idle: named by a record whose VM is not active)."""
    orphans: list[str] = []
    idle: list[str] = []
    for link in links:
        if not is_vmm_tap(link) or link.name in active:
            continue
        (idle if link.name in named else orphans).append(link.name)
    return sorted(orphans), sorted(idle)


def validate_tap_name(name: str) -> str:
    """A vmm TAP name: ``vmm-`` + the VM's 8-character id (12 chars, under the 15 limit)."""
    if not isinstance(name, str) or not _TAP_RE.fullmatch(name):
        raise ValidationError(
            f"invalid TAP name {name!r}: expected {TAP_PREFIX}<8 lower-case letters or digits>"
        )
    return name


def tap_name(vm_id: str) -> str:
    """The TAP device name of the VM with id ``vm_id``."""
    if not isinstance(vm_id, str) or not _VM_ID_RE.fullmatch(vm_id):
        raise ValidationError(f"invalid VM id {vm_id!r}: expected 8 lower-case letters or digits")
    return f"{TAP_PREFIX}{vm_id}"


# -- reading -------------------------------------------------------------------------------------


class Devices:
    """The host's network devices and their IPv4 addresses, read once (``read_devices``: one
    ``ip -j -d addr show``), for the steps of one global-lock section to share instead of each
    running ``ip`` again: pass it as ``devices=`` to ``ensure_bridge`` and ``ensure_tap``.

    A snapshot: valid while the caller holds the global lock and changes devices only through
    this module. ``ensure_bridge`` returns the one to go on with (a fresh read when it changed
    the bridge); after ``ensure_tap`` or a deletion, read again."""

    __slots__ = ("links", "addresses", "_by_name")

    def __init__(self, links: list[Link], addresses: dict[str, list[IPv4Interface]]) -> None:
        self.links = links
        self.addresses = addresses  # IPv4 only, by device name
        self._by_name = {link.name: link for link in links}

    def get(self, name: str) -> Link | None:
        """The device called ``name``, or None."""
        return self._by_name.get(name)

    def __repr__(self) -> str:
        return f"Devices({[link.name for link in self.links]!r})"


def read_devices(runner: Runner) -> Devices:
    """Every device with its kind and master, and every IPv4 address: one ``ip`` run."""
    return Devices(*parse_links_and_addresses(runner.run(["ip", "-j", "-d", "addr", "show"]).stdout))


def list_links(runner: Runner, prefix: str = "") -> list[Link]:
    """Devices whose name starts with ``prefix`` (all by default), with their kind and master."""
    out = runner.run(["ip", "-j", "-d", "link", "show"]).stdout
    return [link for link in parse_links(out) if link.name.startswith(prefix)]


def get_link(runner: Runner, name: str) -> Link | None:
    """The device called ``name``, or None."""
    return next((link for link in list_links(runner) if link.name == name), None)


def link_exists(runner: Runner, name: str) -> bool:
    return get_link(runner, name) is not None


def list_routes(runner: Runner) -> list[Route]:
    """The main table's IPv4 routes (what ``ip route`` shows)."""
    return parse_routes(runner.run(["ip", "-j", "-4", "route", "show"]).stdout)


def list_addresses(runner: Runner) -> dict[str, list[IPv4Interface]]:
    """IPv4 addresses of every device, by device name."""
    return parse_addresses(runner.run(["ip", "-j", "-4", "addr", "show"]).stdout)


# -- the bridge ----------------------------------------------------------------------------------


def ensure_bridge(
    runner: Runner,
    name: str,
    gateway: IPv4Address | str,
    prefixlen: int,
    *,
    devices: Devices | None = None,
) -> Devices:
    """Make bridge ``name`` exist, carry ``gateway/prefixlen`` and be up. Idempotent.

    Looks at ``devices`` (read here when not given) and returns the devices as they are
    afterwards: the same object when the bridge was already in place, else a fresh read.

    Before the address (and so the subnet's route) is added, the subnet is checked against the
    host's routes and the addresses of other devices (a device that is down has no route yet):
    an overlap would silently take traffic from a LAN or VPN. An existing bridge keeps its MAC.
    The bridge gets a fixed MAC (``mac_for(gateway)``): a bridge without one takes the lowest
    MAC of its ports, so the gateway's MAC would change whenever a TAP comes or goes, and the
    guests would lose the gateway until their ARP entries expire.
    """
    validate_ifname(name, "bridge")
    gw = parse_address(gateway, "gateway")
    iface = IPv4Interface(f"{gw}/{prefixlen}")
    validate_network(iface.network, gw)

    if devices is None:
        devices = read_devices(runner)
    link = devices.get(name)
    if link is not None and not link.is_bridge:
        raise ConflictError(
            f"{name} exists but is not a bridge ({link.kind or 'plain device'})",
            hint=f"remove it (ip link del {name}) or configure another bridge_name",
        )
    all_addresses = devices.addresses
    addresses = all_addresses.get(name, []) if link is not None else []
    changed = False
    if iface not in addresses:
        changed = True
        if addresses:
            found = ", ".join(str(a) for a in addresses)
            raise ConflictError(
                f"bridge {name} has the address {found}, not {iface}",
                hint=f"the subnet changed: stop all VMs, then delete the bridge "
                f"(ip link del {name}); vmm recreates it with the new address",
            )
        _refuse_overlaps(runner, iface.network, all_addresses, own_dev=name)
        if link is None:
            log.info("creating bridge %s", name)
            mac = mac_for(gw).lower()
            runner.run(["ip", "link", "add", "name", name, "address", mac, "type", "bridge"])
        log.info("adding %s to bridge %s", iface, name)
        runner.run(["ip", "addr", "add", str(iface), "dev", name])
    if link is None or not link.is_up:
        changed = True
        runner.run(["ip", "link", "set", "dev", name, "up"])
    return read_devices(runner) if changed else devices


def _refuse_overlaps(
    runner: Runner,
    net: IPv4Network,
    addresses: dict[str, list[IPv4Interface]],
    *,
    own_dev: str,
) -> None:
    hint = "configure another subnet and gateway for vmm"
    routes = overlapping_routes(net, list_routes(runner), own_dev=own_dev)
    if routes:
        raise ConflictError(
            f"subnet {net} overlaps the host route {routes[0]}",
            details="\n".join(str(r) for r in routes),
            hint=hint,
        )
    taken = overlapping_addresses(net, addresses, own_dev=own_dev)
    if taken:
        dev, addr = taken[0]
        raise ConflictError(
            f"subnet {net} overlaps the address {addr} of {dev}",
            details=f"{dev} has {addr}; vmm's bridge would take {net}",
            hint=hint,
        )


def delete_bridge(runner: Runner, name: str) -> bool:
    """Delete bridge ``name``; True if it existed. Idempotent. Its TAPs are released, not deleted."""
    validate_ifname(name, "bridge")
    link = get_link(runner, name)
    if link is None:
        return False
    if not link.is_bridge:
        raise ConflictError(f"{name} is not a bridge ({link.kind or 'plain device'}); not deleting")
    return _delete_link(runner, name)


# -- TAPs ----------------------------------------------------------------------------------------


def ensure_tap(
    runner: Runner,
    name: str,
    bridge: str,
    *,
    user: int | None = None,
    group: int | None = None,
    hairpin: bool = False,
    devices: Devices | None = None,
) -> None:
    """(Re)create TAP ``name``, attach it to ``bridge`` and bring it up.

    An existing TAP of that name is deleted first: it may still carry state from a VM that
    died, and a fresh device is the only state we can trust. ``user``/``group`` let an
    unprivileged hypervisor open it (Firecracker otherwise fails with TapOpen EPERM).
    ``hairpin`` lets frames leave by the port they came in on: without it a guest cannot
    reach its own port forward through the host's address (the DNAT'd packet has to go back
    to the same TAP). Off by default: the guest then also sees its own broadcasts, which
    upsets IPv6 duplicate address detection. ``devices``: see ``Devices`` (listed here when
    not given).
    """
    validate_tap_name(name)
    validate_ifname(bridge, "bridge")
    links = {link.name: link for link in (devices.links if devices is not None else list_links(runner))}
    br = links.get(bridge)
    if br is None or not br.is_bridge:
        raise NotFoundError(
            f"bridge {bridge} does not exist" if br is None else f"{bridge} is not a bridge",
            hint="the bridge is created when a VM starts (ensure_bridge)",
        )
    old = links.get(name)
    if old is not None:
        if not old.is_tap:
            raise ConflictError(
                f"{name} exists and is not a TAP device ({old.kind or 'plain device'})",
                hint=f"remove it: ip link del {name}",
            )
        log.info("deleting stale TAP %s", name)
        _delete_link(runner, name)
    add = f"tuntap add dev {name} mode tap"
    if user is not None:
        add += f" user {int(user)}"
    if group is not None:
        add += f" group {int(group)}"
    lines = [add, f"link set dev {name} master {bridge} up"]
    if hairpin:
        lines.append(f"link set dev {name} type bridge_slave hairpin on")
    # One ip for the three steps (names validated above: no spaces, no newlines); it stops
    # at the first failure, and what it made is removed again.
    try:
        runner.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    except BaseException:
        _delete_link(runner, name, quiet=True)
        raise


def set_hairpin(runner: Runner, name: str, on: bool = True) -> None:
    """Turn hairpin mode of bridge port ``name`` on or off (see ``ensure_tap``)."""
    validate_ifname(name)
    state = "on" if on else "off"
    runner.run(["ip", "link", "set", "dev", name, "type", "bridge_slave", "hairpin", state])


def delete_tap(runner: Runner, name: str) -> bool:
    """Delete TAP ``name``; True if it existed. No error when it is already gone."""
    validate_tap_name(name)
    return _delete_link(runner, name)


def _delete_link(runner: Runner, name: str, *, quiet: bool = False) -> bool:
    # Try first, look after: no window between "exists?" and "delete", and no parsing of
    # iproute2's wording. A failure only counts if the device is still there.
    result = runner.run(["ip", "link", "del", "dev", name], check=False)
    if result.returncode == 0:
        return True
    if quiet or not link_exists(runner, name):
        return False
    raise CommandError(result.argv, result.returncode, result.stderr)
