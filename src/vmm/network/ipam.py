"""IPv4 address management for the VM subnet: validation, allocation, MACs. Pure functions.

The subnet's first host address is the gateway by convention (the bridge's address); VMs get
addresses from network+2 upwards, lowest free first, so a fresh setup hands out 172.16.0.2,
172.16.0.3, ... as the original tool did. Callers hold the global allocation lock and pass the
addresses already used by VM records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address

from vmm.errors import ConflictError, ValidationError

TYPE_CHECKING = False  # without importing typing (vmm.record explains)
if TYPE_CHECKING:
    from vmm.network.iproute import Route

MIN_PREFIX = 8
MAX_PREFIX = 30


def parse_subnet(subnet: str | IPv4Network) -> IPv4Network:
    """``subnet`` as an IPv4 network; host bits set is an error that shows the fix."""
    if isinstance(subnet, IPv4Network):
        return subnet
    text = str(subnet).strip()
    try:
        net = IPv4Network(text, strict=False)
    except ValueError:
        raise ValidationError(
            f"invalid subnet {subnet!r}: expected an IPv4 network like 172.16.0.0/16"
        ) from None
    if "/" not in text:
        raise ValidationError(f"invalid subnet {subnet!r}: missing the prefix length, e.g. /16")
    if str(net) != text:
        raise ValidationError(
            f"invalid subnet {subnet!r}: host bits are set", hint=f"did you mean {net}?"
        )
    return net


def parse_address(address: str | IPv4Address, what: str = "address") -> IPv4Address:
    """``address`` as an IPv4 address, or a ValidationError naming ``what``."""
    if isinstance(address, IPv4Address):
        return address
    try:
        ip = ip_address(str(address).strip())
    except ValueError:
        raise ValidationError(f"invalid {what} {address!r}: expected an IPv4 address") from None
    if not isinstance(ip, IPv4Address):
        raise ValidationError(f"invalid {what} {address!r}: only IPv4 is supported")
    return ip


def validate_network(
    subnet: str | IPv4Network, gateway: str | IPv4Address
) -> tuple[IPv4Network, IPv4Address]:
    """Check the VM subnet and its gateway (the bridge's address); return them parsed."""
    net = parse_subnet(subnet)
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise ValidationError(
            f"subnet {net} is not usable: the prefix length must be between "
            f"/{MIN_PREFIX} and /{MAX_PREFIX}"
        )
    for flag, kind in (
        (net.is_loopback, "loopback"),
        (net.is_multicast, "multicast"),
        (net.is_link_local, "link-local"),
        (net.is_reserved, "reserved"),
        (net.overlaps(IPv4Network("0.0.0.0/8")), "'this network' (0.0.0.0/8)"),
    ):
        if flag:
            raise ValidationError(
                f"subnet {net} is a {kind} range", hint="use a private range such as 172.16.0.0/16"
            )
    gw = parse_address(gateway, "gateway")
    if gw not in net:
        raise ValidationError(
            f"gateway {gw} is not inside the subnet {net}",
            hint=f"use an address of {net}, e.g. {net.network_address + 1}",
        )
    if gw == net.network_address:
        raise ValidationError(f"gateway {gw} is the network address of {net}")
    if gw == net.broadcast_address:
        raise ValidationError(f"gateway {gw} is the broadcast address of {net}")
    return net, gw


def reserved_addresses(net: IPv4Network, gateway: IPv4Address) -> frozenset[IPv4Address]:
    """Addresses never given to a VM: network, broadcast and the gateway."""
    return frozenset({net.network_address, net.broadcast_address, gateway})


def allocate(
    subnet: str | IPv4Network,
    gateway: str | IPv4Address,
    used: Iterable[IPv4Address | str],
    requested: IPv4Address | str | None = None,
) -> IPv4Address:
    """An address for a new VM: ``requested`` after checking it, else the lowest free one.

    Automatic allocation starts at network+2 (network+1 is the conventional gateway, kept free
    even when the gateway is configured elsewhere, so addresses stay predictable).
    """
    net, gw = validate_network(subnet, gateway)
    taken = {parse_address(u, "used address") for u in used}
    if requested is not None:
        ip = parse_address(requested, "requested address")
        if ip not in net:
            raise ValidationError(f"address {ip} is not inside the subnet {net}")
        if ip == net.network_address:
            raise ValidationError(f"address {ip} is the network address of {net}")
        if ip == net.broadcast_address:
            raise ValidationError(f"address {ip} is the broadcast address of {net}")
        if ip == gw:
            raise ValidationError(f"address {ip} is the gateway (the bridge's address)")
        if ip in taken:
            raise ConflictError(f"address {ip} is already used by another VM")
        return ip
    reserved = reserved_addresses(net, gw)
    first = int(net.network_address) + 2
    last = int(net.broadcast_address) - 1
    for value in range(first, last + 1):
        ip = IPv4Address(value)
        if ip not in reserved and ip not in taken:
            return ip
    raise ConflictError(
        f"no free address left in the subnet {net}",
        hint="delete unused VMs, or configure a larger subnet",
    )


def mac_for(ip: IPv4Address | str) -> str:
    """The guest MAC for ``ip``: ``06:00:`` + the address bytes in upper-case hex.

    Firecracker's rootfs convention (fcnet-setup) derives the guest address back from this MAC,
    so the two must agree: 172.16.0.2 -> 06:00:AC:10:00:02.
    """
    addr = parse_address(ip)
    return "06:00:" + ":".join(f"{b:02X}" for b in addr.packed)


def netmask(subnet: str | IPv4Network | int) -> str:
    """Dotted netmask for a subnet or a prefix length: /16 -> ``255.255.0.0``."""
    if isinstance(subnet, int):
        if not 0 <= subnet <= 32:
            raise ValidationError(f"invalid prefix length {subnet}")
        return str(IPv4Network(f"0.0.0.0/{subnet}").netmask)
    return str(parse_subnet(subnet).netmask)


def overlapping_routes(
    subnet: str | IPv4Network, routes: Iterable[Route], *, own_dev: str | None = None
) -> list[Route]:
    """Host routes whose destination overlaps ``subnet`` (default routes and ``own_dev``'s aside).

    A VM subnet that overlaps a route the host already has (a LAN, a VPN, docker0) would hijack
    or shadow that traffic; refusing it up front is better than a host that loses a network.
    """
    net = parse_subnet(subnet)
    return [
        r
        for r in routes
        if r.dst is not None
        and r.dst.prefixlen > 0
        and (own_dev is None or r.dev != own_dev)
        and r.dst.overlaps(net)
    ]


def overlaps_routes(
    subnet: str | IPv4Network, routes: Iterable[Route], *, own_dev: str | None = None
) -> bool:
    """Whether ``subnet`` overlaps any host route other than the default and ``own_dev``'s."""
    return bool(overlapping_routes(subnet, routes, own_dev=own_dev))


def overlapping_addresses(
    subnet: str | IPv4Network,
    addresses: Mapping[str, Iterable[IPv4Interface]],
    *,
    own_dev: str | None = None,
) -> list[tuple[str, IPv4Interface]]:
    """``(device, address)`` pairs on other devices whose network overlaps ``subnet``.

    Catches what the route check misses: an address on a device that is down has no route yet,
    but gets one (and a conflict) as soon as the device comes up.
    """
    net = parse_subnet(subnet)
    return [
        (dev, addr)
        for dev, addrs in addresses.items()
        if dev != own_dev
        for addr in addrs
        if addr.network.overlaps(net) and not addr.ip.is_loopback
    ]
