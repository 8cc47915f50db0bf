"""Network commands: port-forward (add, list, remove) and network (show, prune)."""

from __future__ import annotations

import sys

from vmm.cli.common import app, help_of, print_json, require_root, table
from vmm.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers

_PF_VERBS = ("add", "list", "ls", "remove", "rm")
_PF_USAGE = """\
  vmm port-forward NAME [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]   forward a host port to the VM
  vmm port-forward add NAME SPEC                               the same
  vmm port-forward list [NAME] [--json]                        forwards with their state
  vmm port-forward remove NAME [ADDR:]HOSTPORT[/tcp|/udp]      stop forwarding it

examples:
  vmm port-forward dev 8080:80            host TCP 8080 (every host address) -> guest port 80
  vmm port-forward dev 5353:53/udp        UDP
  vmm port-forward dev 127.0.0.1:2222:22  only on the host's localhost
Forwards are stored with the VM: active while it runs, re-applied when it starts."""


def _add_port_forward(sub: SubParsers) -> None:
    import argparse

    p = sub.add_parser(
        "port-forward",
        help="forward host ports to a VM; list or remove forwards",
        usage="vmm port-forward {NAME SPEC | add NAME SPEC | list [NAME] | remove NAME HOSTPORT}",
        epilog=_PF_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.set_defaults(handler=cmd_port_forward, show_help=help_of(p))


def _usage(message: str) -> UsageError:
    return UsageError(message, hint="see 'vmm port-forward --help'")


def cmd_port_forward(args: argparse.Namespace) -> int:
    words = list(args.words)
    if not words:
        return int(args.show_help(args))
    verb = words[0] if words[0] in _PF_VERBS else "add"
    if words[0] in _PF_VERBS:
        words = words[1:]
    if verb in ("list", "ls"):
        if len(words) > 1:
            raise _usage("port-forward list takes at most one VM name")
        return _pf_list(words[0] if words else None, args.json)
    if args.json:
        raise _usage("--json goes with 'port-forward list'")
    from vmm.network import forwards

    if verb == "add":
        if len(words) != 2:
            raise _usage(f"expected a VM name and {forwards.SYNTAX}, e.g. vmm port-forward dev 8080:80")
        name, spec = words
        forwards.parse_spec(spec)  # bad input fails before root is asked for
        require_root()
        view = app().forwards.add(name, spec)
        where = f"{view.guest_ip}:{view.forward.guest_port}"
        host = view.forward.host_addr or "0.0.0.0"
        state = "active" if view.active else f"stored; applied when {name} starts"
        print(f"Forwarding {host}:{view.forward.host_port}/{view.forward.proto} -> {name} {where} ({state})")
        return 0
    if len(words) != 2:
        raise _usage("expected a VM name and a host port, e.g. vmm port-forward remove dev 8080")
    name, key = words
    forwards.parse_key(key)
    require_root()
    view = app().forwards.remove(name, key)
    print(f"Removed port forward {view.forward.key} -> {name} port {view.forward.guest_port}")
    return 0


def _pf_list(name: str | None, as_json: bool) -> int:
    views = app().forwards.list(name)
    if as_json:
        print_json({"port_forwards": [v.to_json() for v in views]})
        return 0
    if not views:
        print("No port forwards" + (f" for {name}" if name else ""), file=sys.stderr)
        return 0
    rows = [
        [
            v.vm,
            v.forward.proto,
            f"{v.forward.host_addr or '0.0.0.0'}:{v.forward.host_port}",
            f"{v.guest_ip}:{v.forward.guest_port}",
            v.state,
        ]
        for v in views
    ]
    table(["VM", "PROTO", "HOST", "GUEST", "STATE"], rows)
    return 0


# -- network -------------------------------------------------------------------------------------


def _add_network(sub: SubParsers) -> None:
    n = sub.add_parser("network", help="show vmm's host network, or prune what no VM uses")
    n.set_defaults(handler=help_of(n))
    verbs = n.add_subparsers(title="subcommands", metavar="SUBCOMMAND", parser_class=type(n))
    s = verbs.add_parser("show", help="bridge, subnet, uplink, NAT, forwards and allocations")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=cmd_network_show)
    p = verbs.add_parser("prune", help="delete vmm-* TAPs no VM uses; rebuild the rules from the records")
    p.set_defaults(handler=cmd_network_prune)


def cmd_network_show(args: argparse.Namespace) -> int:
    from vmm.services import netreport

    m = app()
    info = netreport.network_info(m.network, m.forwards)
    if args.json:
        print_json(info)
        return 0
    br = info["bridge"]
    state = ("up" if br["up"] else "down") if br["exists"] else "not created (made when a VM starts)"
    addrs = ", ".join(br["addresses"])
    print(f"bridge:      {br['name']} ({state}{', ' + addrs if addrs else ''})")
    print(f"subnet:      {info['subnet']} (gateway {info['gateway']})")
    up = info["uplink"]
    print(f"uplink:      {up['default_route_dev'] or 'none (no default route)'}"
          f" (config host_interface: {up['configured'] or '-'}, {up['source']})")
    nat = info["nat"]
    nat_text = "unknown (run as root)" if nat["table"] is None else (
        "on (nft table ip vmm, masquerade)" if nat["table"] and nat["masquerade"] else
        "table present, no masquerade" if nat["table"] else "off (no nft table ip vmm)")
    print(f"NAT:         {nat_text}")
    print(f"ip_forward:  {info['ip_forward']}")
    for line in info["forward_policy"]["notes"]:
        print(f"warning:     {line}")
    if info["stale_taps"]:
        print(f"stale TAPs:  {', '.join(info['stale_taps'])} (remove with: vmm network prune)")
    print()
    if info["allocations"]:
        table(["VM", "IP", "STATE"], [[a["vm"], a["ip"], a["state"]] for a in info["allocations"]])
    else:
        print("No VMs")
    if info["forwards"]:
        print()
        table(
            ["VM", "PROTO", "HOST", "GUEST", "STATE"],
            [
                [f["vm"], f["proto"], f"{f['host_addr']}:{f['host_port']}", f"{f['guest_ip']}:{f['guest_port']}", f["state"]]
                for f in info["forwards"]
            ],
        )
    return 0


def cmd_network_prune(args: argparse.Namespace) -> int:
    require_root()
    from vmm.services import netreport

    result = netreport.prune(app().network)
    for tap in result["removed_taps"]:
        print(f"Removed TAP {tap}")
    rules = result["rules"]
    if rules is None:
        print("No nft table ip vmm: no rules to rebuild")
    else:
        print(f"Rebuilt nft table ip vmm from the records: {rules['forwards']} port forward rule(s)"
              + (f", {rules['removed']} stale one(s) removed" if rules["removed"] else ""))
    if result["network_removed"]:
        print("No VMs left: removed the bridge and the nft table")
    if not result["removed_taps"] and not (rules and rules["removed"]):
        print("Nothing to prune")
    return 0


COMMANDS = {
    "port-forward": _add_port_forward,
    "network": _add_network,
}
