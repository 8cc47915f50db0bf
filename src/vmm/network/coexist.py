"""Living next to other firewalls: a forward hook that drops by default (Docker, firewalld).

nftables runs every base chain on a hook and a drop anywhere is final, so vmm's accepts in its
own table do not help when another table's ``forward`` chain has ``policy drop`` — Docker sets
exactly that (iptables ``FORWARD`` policy DROP). vmm never edits another tool's rules with one
exception, the one Docker documents for this purpose: its ``DOCKER-USER`` chain, where vmm
inserts two narrow accepts for its bridge (tagged with the comment ``vmm``, removed again when
vmm tears its network down). Without ``DOCKER-USER`` vmm only explains (``vmm network show``,
``diagnose`` for ``vmm doctor``).

    find_forward_blockers   forward chains elsewhere that drop by default
    ensure_forward_allowed  the DOCKER-USER accepts when needed (idempotent)
    remove_docker_user_rules
    diagnose                the findings as sentences a user can act on
"""

from __future__ import annotations

import json

from vmm.log import get_logger
from vmm.network.links import validate_ifname
from vmm.record import Value
from vmm.runner import Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)

COMMENT = "vmm"
DOCKER_USER = "DOCKER-USER"


class ForwardBlocker(Value):
    """A forward chain outside vmm's table whose policy is drop."""

    __slots__ = ("tool", "family", "table", "chain")
    tool: str  # "nft" or "iptables"
    family: str
    table: str
    chain: str

    def __init__(self, tool: str, family: str, table: str, chain: str) -> None:
        self._init(tool, family, table, chain)

    def __str__(self) -> str:
        if self.tool == "iptables":
            return f"iptables chain {self.chain} (policy DROP)"
        return f"nft table {self.family} {self.table}, chain {self.chain} (hook forward, policy drop)"


class ForwardStatus(Value):
    """What ``ensure_forward_allowed`` found and did."""

    __slots__ = ("blockers", "docker_user", "rules_present")
    blockers: tuple[ForwardBlocker, ...]
    docker_user: str | None  # "iptables" or "nft" when a DOCKER-USER chain exists
    rules_present: bool  # vmm's accepts are in DOCKER-USER

    def __init__(
        self,
        blockers: tuple[ForwardBlocker, ...] = (),
        docker_user: str | None = None,
        rules_present: bool = False,
    ) -> None:
        self._init(blockers, docker_user, rules_present)

    @property
    def blocked(self) -> bool:
        """VM traffic may be dropped by another tool's forward chain."""
        return bool(self.blockers) and not self.rules_present


# -- nft ---------------------------------------------------------------------------------------


def _nft_list(runner: Runner, *what: str) -> list[dict[str, Any]]:
    """``nft -j list <what>``: ``chains`` (every chain, without rules: cheaper than the whole
    ruleset, and all the blocker and DOCKER-USER checks need), or one ``chain`` with its rules."""
    result = runner.run(["nft", "-j", "list", *what], check=False)
    return parse_ruleset(result.stdout) if result.returncode == 0 else []


def _nft_docker_user_rules(runner: Runner, family: str, table: str) -> list[dict[str, Any]]:
    return _nft_list(runner, "chain", family, table, DOCKER_USER)


def parse_ruleset(text: str) -> list[dict[str, Any]]:
    """The objects of ``nft -j list ruleset|chains|chain ...`` output. Pure; output
    that is not what nft writes counts as an empty ruleset (vmm only explains or adds accepts
    from what it finds here, so finding nothing is the safe reading)."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, too deep, or an int past 4300 digits
        return []
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [item for item in items if isinstance(item, dict)]


def parse_nft_blockers(items: list[dict[str, Any]]) -> list[ForwardBlocker]:
    """Base chains on the forward hook with policy drop, outside ``ip vmm``. Pure."""
    found = []
    for item in items:
        chain = item.get("chain")
        if not isinstance(chain, dict) or chain.get("hook") != "forward":
            continue
        if chain.get("policy") != "drop":
            continue
        if (chain.get("family"), chain.get("table")) == ("ip", "vmm"):
            continue
        found.append(ForwardBlocker("nft", str(chain.get("family")), str(chain.get("table")), str(chain.get("name"))))
    return found


def nft_docker_user(items: list[dict[str, Any]]) -> tuple[str, str] | None:
    """``(family, table)`` of Docker's DOCKER-USER chain in the nft ruleset, or None. Pure."""
    for item in items:
        chain = item.get("chain")
        if (
            isinstance(chain, dict)
            and chain.get("name") == DOCKER_USER
            and chain.get("family") in ("ip", "inet")
            and isinstance(chain.get("table"), str)
        ):
            return str(chain["family"]), str(chain["table"])
    return None


def nft_our_handles(items: list[dict[str, Any]], family: str, table: str) -> list[int]:
    """The handles of vmm's rules (comment ``vmm``) in that DOCKER-USER chain. Pure."""
    handles = []
    for item in items:
        rule = item.get("rule")
        if (
            isinstance(rule, dict)
            and (rule.get("family"), rule.get("table"), rule.get("chain")) == (family, table, DOCKER_USER)
            and rule.get("comment") == COMMENT
            and type(rule.get("handle")) is int  # without a handle nft cannot delete it
        ):
            handles.append(rule["handle"])
    return handles


# -- iptables (whatever backend Docker uses: the iptables binary knows) ---------------------------


def _iptables(runner: Runner) -> str | None:
    return runner.which("iptables")


def _iptables_rule(bridge: str, direction: str) -> list[str]:
    return [direction, bridge, "-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]


def _iptables_blocker(runner: Runner, binary: str) -> ForwardBlocker | None:
    result = runner.run([binary, "-w", "-S", "FORWARD"], check=False)
    if result.returncode == 0 and "-P FORWARD DROP" in result.stdout.splitlines():
        return ForwardBlocker("iptables", "ip", "filter", "FORWARD")
    return None


# -- the use cases -----------------------------------------------------------------------------


def find_forward_blockers(
    runner: Runner, items: list[dict[str, Any]] | None = None
) -> list[ForwardBlocker]:
    """Forward chains of other tools that drop by default (nft and, if installed, iptables);
    ``items``: nft's chains (or whole ruleset) when the caller has read them already."""
    found = parse_nft_blockers(_nft_list(runner, "chains") if items is None else items)
    binary = _iptables(runner)
    if binary:
        blocker = _iptables_blocker(runner, binary)
        # iptables-nft's FORWARD is the nft chain already found: report it once
        if blocker and not any(b.table == "filter" and b.chain == "FORWARD" for b in found):
            found.append(blocker)
    return found


def forward_status(runner: Runner, bridge: str) -> ForwardStatus:
    """Read-only: blockers, whether DOCKER-USER exists and holds vmm's accepts."""
    validate_ifname(bridge, "bridge")
    chains = _nft_list(runner, "chains")
    blockers = find_forward_blockers(runner, chains)
    binary = _iptables(runner)
    if binary and runner.run([binary, "-w", "-S", DOCKER_USER], check=False).returncode == 0:
        present = all(
            runner.run([binary, "-w", "-C", DOCKER_USER, *_iptables_rule(bridge, d)], check=False).returncode == 0
            for d in ("-i", "-o")
        )
        return ForwardStatus(tuple(blockers), "iptables", present)
    where = nft_docker_user(chains)
    if where:
        present = len(nft_our_handles(_nft_docker_user_rules(runner, *where), *where)) >= 2
        return ForwardStatus(tuple(blockers), "nft", present)
    return ForwardStatus(tuple(blockers))


def ensure_forward_allowed(runner: Runner, bridge: str) -> ForwardStatus:
    """When another forward chain drops by default and Docker's DOCKER-USER chain exists, insert
    accepts for traffic from and to ``bridge`` there (once). Otherwise change nothing."""
    status = forward_status(runner, bridge)
    if not status.blockers or status.docker_user is None or status.rules_present:
        if status.blockers and status.docker_user is None:
            log.warning("VM traffic may be dropped: %s", "; ".join(map(str, status.blockers)))
        return status
    remove_docker_user_rules(runner, bridge)  # a half-present pair: start clean
    log.info("adding accepts for %s to %s (%s)", bridge, DOCKER_USER, status.docker_user)
    br = validate_ifname(bridge, "bridge")
    if status.docker_user == "iptables":
        binary = _iptables(runner) or "iptables"
        for d in ("-o", "-i"):
            runner.run([binary, "-w", "-I", DOCKER_USER, *_iptables_rule(br, d)])
    else:
        where = nft_docker_user(_nft_list(runner, "chains"))
        assert where is not None
        for d in ("oifname", "iifname"):
            runner.run(["nft", "insert", "rule", *where, DOCKER_USER, d, f'"{br}"', "accept", "comment", f'"{COMMENT}"'])
    return ForwardStatus(status.blockers, status.docker_user, True)


def remove_docker_user_rules(runner: Runner, bridge: str) -> int:
    """Delete vmm's accepts from DOCKER-USER (nothing else); the number removed."""
    br = validate_ifname(bridge, "bridge")
    removed = 0
    binary = _iptables(runner)
    if binary and runner.run([binary, "-w", "-S", DOCKER_USER], check=False).returncode == 0:
        for d in ("-i", "-o"):
            while runner.run([binary, "-w", "-D", DOCKER_USER, *_iptables_rule(br, d)], check=False).returncode == 0:
                removed += 1
        return removed
    where = nft_docker_user(_nft_list(runner, "chains"))
    if where:
        for handle in nft_our_handles(_nft_docker_user_rules(runner, *where), *where):
            runner.run(["nft", "delete", "rule", *where, DOCKER_USER, "handle", str(handle)], check=False)
            removed += 1
    return removed


def diagnose(status: ForwardStatus, bridge: str) -> list[str]:
    """Sentences for ``vmm network show`` / ``vmm doctor``: empty when nothing is in the way."""
    if not status.blockers:
        return []
    if status.rules_present:
        return [f"{b} drops by default; vmm's accepts for {bridge} are in {DOCKER_USER}" for b in status.blockers]
    lines = [f"{b} drops forwarded traffic by default: VM traffic may be dropped there" for b in status.blockers]
    lines.append(
        f"allow the bridge in that chain, e.g. nft insert rule <family> <table> <chain> iifname {bridge} accept "
        f"(and the same with oifname), or iptables -I FORWARD -i {bridge} -j ACCEPT / -o {bridge}; "
        "vmm does not edit other tools' chains (only Docker's DOCKER-USER)"
    )
    return lines
