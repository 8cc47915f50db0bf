"""Parsers for ``ip -j`` (iproute2 JSON) output: links, routes, addresses. Pure functions.

Only the fields vmm needs are decoded, into frozen values; unknown fields are ignored
(iproute2 adds fields between versions), malformed output is a ``VmmError`` naming the command.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from vmm.errors import VmmError
from vmm.record import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Link(Value):
    """One network device from ``ip -j -d link show``."""

    __slots__ = ("name", "ifindex", "kind", "tun_type", "master", "flags", "operstate", "mac")
    name: str
    ifindex: int
    kind: str | None  # linkinfo.info_kind: "bridge", "tun", "veth", ...; None for plain
    tun_type: str | None  # "tap" or "tun" when kind == "tun"
    master: str | None
    flags: frozenset[str]
    operstate: str
    mac: str | None

    def __init__(
        self,
        name: str,
        ifindex: int,
        kind: str | None = None,
        tun_type: str | None = None,
        master: str | None = None,
        flags: frozenset[str] = frozenset(),
        operstate: str = "UNKNOWN",
        mac: str | None = None,
    ) -> None:
        self._init(name, ifindex, kind, tun_type, master, flags, operstate, mac)

    @property
    def is_up(self) -> bool:
        """Administratively up (``ip link set up``); a TAP nobody opened is up but NO-CARRIER."""
        return "UP" in self.flags

    @property
    def is_bridge(self) -> bool:
        return self.kind == "bridge"

    @property
    def is_tap(self) -> bool:
        return self.kind == "tun" and self.tun_type == "tap"


class Route(Value):
    """One IPv4 route from ``ip -j route show``; ``dst`` None is the default route."""

    __slots__ = ("dst", "dev", "gateway", "type")
    dst: IPv4Network | None
    dev: str | None
    gateway: IPv4Address | None
    type: str

    def __init__(
        self,
        dst: IPv4Network | None,
        dev: str | None = None,
        gateway: IPv4Address | None = None,
        type: str = "unicast",
    ) -> None:
        self._init(dst, dev, gateway, type)

    def __str__(self) -> str:
        text = "default" if self.dst is None else str(self.dst)
        if self.type != "unicast":
            text = f"{self.type} {text}"
        if self.gateway is not None:
            text += f" via {self.gateway}"
        if self.dev:
            text += f" dev {self.dev}"
        return text


def _load(text: str, what: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also too deep, or an int past 4300 digits
        raise VmmError(f"cannot parse the output of `{what}`: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise VmmError(f"cannot parse the output of `{what}`: expected a JSON list of objects")
    return data


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_links(text: str) -> list[Link]:
    """Links from ``ip -j [-d] link show`` (``-d`` adds the kind, needed to tell TAPs apart)."""
    return _links_from(_load(text, "ip -j link show"))


def parse_links_and_addresses(text: str) -> tuple[list[Link], dict[str, list[IPv4Interface]]]:
    """Both from one ``ip -j -d addr show`` (which carries each link's details too): what
    ``parse_links`` and ``parse_addresses`` return, for one command and one JSON decoding."""
    items = _load(text, "ip -j addr show")
    return _links_from(items), _addresses_from(items)


def _links_from(items: list[dict[str, Any]]) -> list[Link]:
    links = []
    for item in items:
        try:
            name = str(item["ifname"])
            ifindex = int(item["ifindex"])
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: 1e400
            raise VmmError(
                "cannot parse the output of `ip -j link show`: an entry lacks ifname/ifindex"
            ) from None
        info = _dict(item.get("linkinfo"))
        data = _dict(info.get("info_data"))
        kind = info.get("info_kind")
        links.append(
            Link(
                name=name,
                ifindex=ifindex,
                kind=str(kind) if kind else None,
                tun_type=str(data["type"]) if kind == "tun" and "type" in data else None,
                master=str(item["master"]) if item.get("master") else None,
                flags=frozenset(str(f) for f in _list(item.get("flags"))),
                operstate=str(item.get("operstate", "UNKNOWN")),
                mac=str(item["address"]) if item.get("address") else None,
            )
        )
    return links


def parse_routes(text: str) -> list[Route]:
    """IPv4 routes from ``ip -j route show``; a bare ``dst`` address is a /32 host route."""
    routes = []
    for item in _load(text, "ip -j route show"):
        dst_text = str(item.get("dst", ""))
        dst: IPv4Network | None
        if dst_text in ("default", "0.0.0.0/0"):
            dst = None
        else:
            try:
                dst = IPv4Network(dst_text, strict=False)
            except ValueError:
                continue  # IPv6 or something we do not route: not our concern
        gateway = None
        if item.get("gateway"):
            try:
                gateway = IPv4Address(str(item["gateway"]))
            except ValueError:
                gateway = None
        routes.append(
            Route(
                dst=dst,
                dev=str(item["dev"]) if item.get("dev") else None,
                gateway=gateway,
                type=str(item.get("type", "unicast")),
            )
        )
    return routes


def parse_addresses(text: str) -> dict[str, list[IPv4Interface]]:
    """IPv4 addresses per device from ``ip -j addr show``: ``{"vmm-br0": [172.16.0.1/16]}``."""
    return _addresses_from(_load(text, "ip -j addr show"))


def _addresses_from(items: list[dict[str, Any]]) -> dict[str, list[IPv4Interface]]:
    result: dict[str, list[IPv4Interface]] = {}
    for item in items:
        name = str(item.get("ifname", ""))
        addrs = result.setdefault(name, [])
        for info in _list(item.get("addr_info")):
            if not isinstance(info, dict) or info.get("family") != "inet":
                continue
            try:
                addrs.append(IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
            except (KeyError, ValueError):
                raise VmmError(
                    f"cannot parse the output of `ip -j addr show`: bad address on {name}"
                ) from None
    return result
