"""``vmm network show`` and ``vmm network prune``: what vmm's host network looks like, and
removing what no VM uses. Read-only parts degrade to "unknown" without root instead of failing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vmm.errors import VmmError

if TYPE_CHECKING:
    from vmm.services.forwards import ForwardService
    from vmm.services.network import HostNetwork


def _dnat_count(data: dict[str, Any]) -> int:
    from vmm.network import firewall

    chain = firewall.summarize(data).get("prerouting", {"rules": []})
    rules = [rule for rule in chain["rules"] if isinstance(rule, list)]  # nft's "expr" lists
    return sum(1 for rule in rules if any("dnat" in e for e in rule if isinstance(e, dict)))


def _has_masquerade(data: dict[str, Any]) -> bool:
    from vmm.network import firewall

    chain = firewall.summarize(data).get("postrouting", {"rules": []})
    rules = [rule for rule in chain["rules"] if isinstance(rule, list)]  # nft's "expr" lists
    return any(any("masquerade" in e for e in rule if isinstance(e, dict)) for rule in rules)


def network_info(net: HostNetwork, forwards: ForwardService) -> dict[str, Any]:
    """Everything ``vmm network show`` prints, as plain data (its ``--json``)."""
    from vmm.network import coexist, firewall, links, sysctl
    from vmm.status import VMView

    m = net
    cfg = m.config
    bridge = cfg.bridge_name
    link = links.get_link(m.runner, bridge)
    addresses = links.list_addresses(m.runner).get(bridge, []) if link else []
    default_dev = next((r.dev for r in links.list_routes(m.runner) if r.dst is None), None)
    table: bool | None
    masquerade: bool | None = None
    dnat_rules: int | None = None
    try:
        data = firewall.current(m.runner)
        table = bool(data)
        masquerade = _has_masquerade(data) if data else False
        dnat_rules = _dnat_count(data) if data else 0
    except VmmError:
        table = None  # nft needs root
    try:
        status = coexist.forward_status(m.runner, bridge)
        notes = coexist.diagnose(status, bridge)
        blockers = [str(b) for b in status.blockers]
        docker_user = status.docker_user
    except VmmError as exc:
        notes, blockers, docker_user = [f"cannot check other firewalls: {exc.brief}"], [], None
    ip_forward = None
    with contextlib.suppress(VmmError):
        ip_forward = sysctl.read_sysctl(sysctl.IP_FORWARD)
    vms, problems = m.store.load_all()
    allocations = [
        {"vm": vm.name, "ip": vm.ip, "state": VMView.of(vm).state}
        for vm in sorted(vms, key=lambda v: (tuple(int(x) for x in v.ip.split(".")) if v.ip.count(".") == 3 else (), v.name))
    ]
    allocations += [{"vm": p.name, "ip": "?", "state": f"unreadable record: {p.error}"} for p in problems]
    return {
        "bridge": {
            "name": bridge,
            "exists": link is not None,
            "up": bool(link and link.is_up),
            "addresses": [str(a) for a in addresses],
        },
        "subnet": cfg.subnet,
        "gateway": cfg.gateway,
        "uplink": {
            "default_route_dev": default_dev,
            "configured": cfg.host_interface or None,
            "source": cfg.source("host_interface"),
        },
        "nat": {"table": table, "masquerade": masquerade, "dnat_rules": dnat_rules},
        "ip_forward": ip_forward,
        "forward_policy": {"blockers": blockers, "docker_user": docker_user, "notes": notes},
        "forwards": [v.to_json() for v in forwards.list()],
        "allocations": allocations,
        "stale_taps": net.stale_taps(),
    }


def prune(m: HostNetwork) -> dict[str, Any]:
    """Delete ``vmm-*`` TAPs no running VM uses, rebuild the table from the records (dropping
    rules of VMs that are gone or stopped) and, with no VM left, remove bridge and table."""
    from vmm.network import firewall, links

    removed: list[str] = []
    rules: dict[str, int] | None = None
    with m.store.global_lock():
        for tap in m.stale_taps():
            if links.delete_tap(m.runner, tap):
                removed.append(tap)
        if firewall.table_exists(m.runner):
            before = _dnat_count(firewall.current(m.runner))
            spec = m.apply_rules_locked(always=True)
            after = len(spec.forwards) if spec else 0
            rules = {"forwards": after, "removed": max(0, before - after)}
    had_network = links.link_exists(m.runner, m.config.bridge_name) or rules is not None
    m.teardown_if_unused()
    gone = had_network and not links.link_exists(m.runner, m.config.bridge_name) and not firewall.table_exists(m.runner)
    return {"removed_taps": removed, "rules": rules, "network_removed": bool(gone)}
