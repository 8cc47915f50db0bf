"""vmm's packet rules: one nftables table, ``ip vmm``, rendered whole and replaced atomically.

``render_ruleset`` (pure) turns a ``FirewallSpec`` into an ``nft -f`` script; ``apply`` loads it
in one transaction, ``remove`` deletes the table, ``current`` reads it back. vmm never touches
another tool's tables, and never edits its own rule by rule: the whole table is rebuilt from the
VM records each time, so the host converges on what the records say, whatever happened before.

Why ``table ip`` and not ``inet``: everything vmm routes is IPv4 (the VM subnet, the guests'
addresses, the DNAT targets). An ``ip`` table makes every rule IPv4-only without extra
``meta nfproto`` matches and leaves the host's IPv6 traffic alone. NAT in ``inet`` tables also
needs a newer kernel (5.2) than NAT in ``ip`` tables.

The chains (priorities are numbers: nft 1.0.6 rejects the ``dstnat`` keyword in ``output``):

* ``localnet`` (filter, prerouting, -300: before conntrack at -200 and NAT at -100), always
  present: drop packets arriving from the bridge with a source or destination in 127.0.0.0/8.
  A port forward from the host's localhost needs ``route_localnet`` on the bridge, and that
  switch also lets a guest reach services bound to the host's 127.0.0.1 by sending to
  127.0.0.1 through its gateway (CVE-2020-8558). Nothing legitimate comes from the bridge
  with such addresses: at this priority no NAT has been undone yet, so the guest's replies to
  a localhost forward still carry the masqueraded bridge address, not 127.0.0.1 (they are
  de-NAT'd at -100, after this chain), and the host's own localhost traffic arrives on ``lo``.
  Dropping before conntrack means a refused packet leaves no connection entry either. The
  chain does not depend on the forwards: ``route_localnet`` may also be on because another
  tool set it (``conf/all/route_localnet`` applies to every device).
* ``postrouting`` (nat, 100): masquerade the subnet's traffic leaving by any device but the
  bridge. Not tied to a named uplink by default, because a wrong or renamed uplink breaks NAT
  silently; ``uplink`` narrows it when the user sets one. With port forwards, also masquerade
  DNAT'd connections into the bridge that come from a guest (hairpin) or from the host's
  localhost, so the replies come back through the host.
* ``forward`` (filter, 0, policy accept so other forwarding on the host is untouched): accept
  bridge to bridge (VM to VM) and bridge to anywhere; into the bridge accept replies
  (established/related) and port-forwarded connections, and drop the rest, so machines
  outside cannot open connections to the guests except through a port forward.
* ``prerouting`` / ``output`` (nat, -100): DNAT for port forwards, for traffic arriving from
  outside and for traffic the host itself sends (``curl localhost:8080``).

An accept here does not override a drop in another table (Docker's FORWARD policy DROP, for
instance): nftables runs every base chain on a hook, and any drop is final.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

from vmm.errors import ConflictError, ValidationError, VmmError
from vmm.log import get_logger
from vmm.network.links import validate_ifname
from vmm.record import Value
from vmm.runner import Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Forward(Protocol):
        """A forward as the user wrote it (``models.PortForward``) or as a rule (below)."""

        @property
        def proto(self) -> str: ...
        @property
        def host_port(self) -> int: ...
        @property
        def host_addr(self) -> object: ...  # None: every host address

log = get_logger(__name__)

FAMILY = "ip"
TABLE = "vmm"
PROTOCOLS = ("tcp", "udp")
LOOPBACK = IPv4Network("127.0.0.0/8")  # never a valid address on the bridge (see ``localnet``)
_NFT_HINT = "install nftables (apt-get install nftables) and check that nf_tables is available"


def clashes(a: Forward, b: Forward) -> bool:
    """Both would catch the same packets: same protocol and port, overlapping host address.
    The one clash rule — for stored forwards (``vmm port-forward add``) and for the rules."""
    return (
        a.proto == b.proto
        and a.host_port == b.host_port
        and (a.host_addr is None or b.host_addr is None or a.host_addr == b.host_addr)
    )


class PortForward(Value):
    """host ``host_addr``:``host_port`` -> guest ``guest_ip``:``guest_port``.

    ``host_addr`` None means any of the host's own addresses (including 127.0.0.1).
    """

    __slots__ = ("host_port", "guest_ip", "guest_port", "proto", "host_addr")
    host_port: int
    guest_ip: IPv4Address
    guest_port: int
    proto: str
    host_addr: IPv4Address | None

    def __init__(
        self,
        host_port: int,
        guest_ip: IPv4Address,
        guest_port: int,
        proto: str = "tcp",
        host_addr: IPv4Address | None = None,
    ) -> None:
        self._init(host_port, guest_ip, guest_port, proto, host_addr)
        for what, port in (("host port", self.host_port), ("guest port", self.guest_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValidationError(f"invalid {what} {port!r}: expected 1-65535")
        if self.proto not in PROTOCOLS:
            raise ValidationError(f"invalid protocol {self.proto!r}: expected tcp or udp")
        if not isinstance(self.guest_ip, IPv4Address):
            raise ValidationError(f"invalid guest address {self.guest_ip!r}")
        if self.host_addr is not None and not isinstance(self.host_addr, IPv4Address):
            raise ValidationError(f"invalid host address {self.host_addr!r}")

    def clashes_with(self, other: PortForward) -> bool:
        return clashes(self, other)

    def __str__(self) -> str:
        host = str(self.host_addr) if self.host_addr else "*"
        return f"{host}:{self.host_port}/{self.proto} -> {self.guest_ip}:{self.guest_port}"


class FirewallSpec(Value):
    """Everything the ``vmm`` table is rendered from."""

    __slots__ = ("bridge", "subnet", "uplink", "forwards")
    bridge: str
    subnet: IPv4Network
    uplink: str | None
    forwards: tuple[PortForward, ...]

    def __init__(
        self,
        bridge: str,
        subnet: IPv4Network,
        uplink: str | None = None,
        forwards: tuple[PortForward, ...] = (),
    ) -> None:
        self._init(bridge, subnet, uplink, forwards)
        validate_ifname(self.bridge, "bridge")
        if not isinstance(self.subnet, IPv4Network):
            raise ValidationError(f"invalid subnet {self.subnet!r}: expected an IPv4 network")
        if self.uplink is not None:
            validate_ifname(self.uplink, "uplink interface")
            if self.uplink == self.bridge:
                raise ValidationError(f"the uplink interface cannot be the bridge {self.bridge}")
        for i, fwd in enumerate(self.forwards):
            if fwd.guest_ip not in self.subnet:
                raise ValidationError(
                    f"port forward {fwd}: {fwd.guest_ip} is not inside the subnet {self.subnet}"
                )
            for earlier in self.forwards[:i]:
                if fwd.clashes_with(earlier):
                    raise ConflictError(f"port forward {fwd} clashes with {earlier}")


def needs_route_localnet(spec: FirewallSpec) -> bool:
    """Whether a forward of ``spec`` catches the host's localhost (``host_addr`` None or in
    127.0.0.0/8): only then does the bridge need ``route_localnet``
    (``vmm.network.sysctl.set_route_localnet``), which otherwise stays off."""
    return any(f.host_addr is None or f.host_addr.is_loopback for f in spec.forwards)


def _q(name: str) -> str:
    return f'"{validate_ifname(name)}"'


def _dnat_rule(fwd: PortForward) -> str:
    match = "fib daddr type local" if fwd.host_addr is None else f"ip daddr {fwd.host_addr}"
    return f"{match} {fwd.proto} dport {fwd.host_port} dnat to {fwd.guest_ip}:{fwd.guest_port}"


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{header}", *(f"\t\t{r}" for r in rules), "\t}"]


def render_ruleset(spec: FirewallSpec) -> str:
    """The ``nft -f`` script that replaces the ``vmm`` table with the one ``spec`` describes.

    ``table ip vmm {}`` first makes the ``delete`` valid when the table does not exist yet;
    the script is one transaction, so the host never sees a half-built table, and a script
    the kernel rejects leaves the old table in place.
    """
    br = _q(spec.bridge)
    subnet = str(spec.subnet)
    dnat = [_dnat_rule(f) for f in spec.forwards]
    if spec.uplink is None:
        nat = [f"ip saddr {subnet} oifname != {br} masquerade"]
    else:
        nat = [f"ip saddr {subnet} oifname {_q(spec.uplink)} masquerade"]
    if spec.forwards:
        nat.append(f"oifname {br} ct status dnat ip saddr {{ 127.0.0.0/8, {subnet} }} masquerade")
    localnet = [f"iifname {br} ip daddr {LOOPBACK} drop", f"iifname {br} ip saddr {LOOPBACK} drop"]
    forward = [
        f"iifname {br} oifname {br} accept",
        f"iifname {br} accept",
        f"oifname {br} ct state established,related accept",
        f"oifname {br} ct status dnat accept",
        f"oifname {br} drop",
    ]
    lines = [
        "# vmm's own table: generated by vmm, replaced as a whole; do not edit",
        f"table {FAMILY} {TABLE} {{}}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        *_chain("localnet", "type filter hook prerouting priority -300; policy accept;", localnet),
        *_chain("prerouting", "type nat hook prerouting priority -100; policy accept;", dnat),
        *_chain("output", "type nat hook output priority -100; policy accept;", dnat),
        *_chain("postrouting", "type nat hook postrouting priority 100; policy accept;", nat),
        *_chain("forward", "type filter hook forward priority 0; policy accept;", forward),
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_removal() -> str:
    """The ``nft -f`` script that deletes the ``vmm`` table, whether or not it exists."""
    return f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"


def apply(runner: Runner, spec: FirewallSpec) -> None:
    """Replace the ``vmm`` table with ``spec``'s, atomically (``nft -f -``). Idempotent."""
    log.info("applying nftables table %s %s (%d port forwards)", FAMILY, TABLE, len(spec.forwards))
    runner.run(["nft", "-f", "-"], input=render_ruleset(spec), hint=_NFT_HINT)


def remove(runner: Runner) -> None:
    """Delete the ``vmm`` table and all its rules. No error when it does not exist."""
    log.info("removing nftables table %s %s", FAMILY, TABLE)
    runner.run(["nft", "-f", "-"], input=render_removal(), hint=_NFT_HINT)


def table_exists(runner: Runner) -> bool:
    return has_vmm_table(runner.run(["nft", "-j", "list", "tables", FAMILY], hint=_NFT_HINT).stdout)


def has_vmm_table(text: str) -> bool:
    """Whether ``nft -j list tables ip`` output lists vmm's table. Pure."""
    return any(
        isinstance(item.get("table"), dict) and item["table"].get("name") == TABLE
        for item in _nft_items(text)
    )


def current(runner: Runner) -> dict[str, Any]:
    """The ``vmm`` table as nft reports it (``nft -j list table ip vmm``); {} when absent."""
    result = runner.run(["nft", "-j", "list", "table", FAMILY, TABLE], check=False)
    if result.returncode != 0:
        if not table_exists(runner):
            return {}
        runner.run(result.argv, hint=_NFT_HINT)  # raises with nft's own message
    try:
        data = json.loads(result.stdout)
    except (ValueError, RecursionError) as exc:
        raise VmmError(f"cannot parse the output of `nft -j list table`: {exc}") from None
    if not isinstance(data, dict):
        raise VmmError("cannot parse the output of `nft -j list table`: expected an object")
    return data


def _nft_items(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text) if text.strip() else {"nftables": []}
    except (ValueError, RecursionError) as exc:
        raise VmmError(f"cannot parse nft's JSON output: {type(exc).__name__}") from None
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [item for item in items if isinstance(item, dict)]


def summarize(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The chains of a ``current()`` result: ``{name: {type, hook, prio, policy, rules}}``.

    ``rules`` holds each rule's ``expr`` list in order; objects of other tables are ignored.
    """
    chains: dict[str, dict[str, Any]] = {}
    items = data.get("nftables", []) if isinstance(data, dict) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        if "chain" in item and _ours(item["chain"]) and isinstance(item["chain"].get("name"), str):
            c = item["chain"]
            chains[c["name"]] = {
                "type": c.get("type"),
                "hook": c.get("hook"),
                "prio": c.get("prio"),
                "policy": c.get("policy"),
                "rules": [],
            }
        elif "rule" in item and _ours(item["rule"]) and isinstance(item["rule"].get("chain"), str):
            r = item["rule"]
            chains.setdefault(r["chain"], {"rules": []})["rules"].append(r.get("expr", []))
    return chains


def _ours(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("family") == FAMILY and obj.get("table") == TABLE
