"""What an interrupted vmm command can leave behind, found and removed again.

A command killed at any step (SIGKILL, a power cut of the CLI) leaves at most:

- temp files and work directories named with its pid (``store.scratch_owner``) whose pid is
  gone: a half-copied disk, a staged import tree, a half-built mount image;
- mounts below the data dir (an interrupted image preparation on an older vmm);
- VMs whose record says ``starting``/``stopping`` with nobody holding their lock: a start that
  was killed after spawning the hypervisor leaves it running;
- TAPs of VMs that are not running;
- vmm's firewall table or bridge with no VM left, or port-forward rules that differ from what
  the records say.

``find`` lists each as a ``Leftover`` (what, and how to fix it); ``fix`` removes them, using
the same service code the commands use. Work of a command that is still running is never a
leftover: its pid is alive, or it holds the VM's lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmm.errors import VmmError
from vmm.host.liveness import is_alive, pid_exists
from vmm.log import get_logger
from vmm.record import FrozenRecord
from vmm.status import process_ref
from vmm.store import scratch_owner

if TYPE_CHECKING:
    from vmm.app import Vmm
    from vmm.network.iproute import Link

log = get_logger(__name__)


class Leftover(FrozenRecord):
    kind: str  # scratch | mount | interrupted | tap | network | rules
    item: str  # a path, a VM name, a TAP name
    what: str  # one line for the report


def scratch_entries(data_dir: Path) -> list[Path]:
    """vmm's temp entries below the data dir whose command is gone."""
    found: list[Path] = []
    # (vms/ itself is the doctor's records check: the temp files of record writes)
    dirs = [data_dir, *(data_dir / d for d in ("images", "images/kernels", "mounts", "ssh"))]
    with contextlib.suppress(OSError):
        dirs += [p for p in (data_dir / "vms").iterdir() if p.is_dir() and not p.is_symlink()]
    for d in dirs:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for entry in sorted(entries):
            pid = scratch_owner(entry)
            if pid is not None and not pid_exists(pid):
                found.append(d / entry)
    return found


def mounts_below(path: Path) -> list[str]:
    """Mount points below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve()) + "/"
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def find(m: Vmm) -> list[Leftover]:
    out = [
        Leftover("scratch", str(p), f"{p}: left by an interrupted command")
        for p in scratch_entries(m.store.root)
    ]
    out += [Leftover("mount", t, f"{t} is still mounted") for t in mounts_below(m.store.root)]
    vms, _problems = m.store.load_all()
    from vmm.models import VMState

    running_taps = set()
    for vm in vms:
        alive = is_alive(process_ref(vm))
        locked = m.store.is_locked(vm.name)
        if alive:
            running_taps.add(vm.tap)
        if locked:
            running_taps.add(vm.tap)  # a command is starting or stopping it right now
            continue
        if vm.state in (VMState.STARTING.value, VMState.STOPPING.value) and alive:
            out.append(Leftover(
                "interrupted", vm.name,
                f"VM {vm.name}: an interrupted {'start' if vm.state == VMState.STARTING.value else 'stop'} left its process {vm.pid} running",
            ))  # fmt: skip
    from vmm.network import links

    try:
        present = links.list_links(m.runner)
    except VmmError as exc:
        log.debug("cannot list links: %s", exc)
        present = []
    _orphans, idle = links.unused_taps(present, named={vm.tap for vm in vms}, active=running_taps)
    out += [Leftover("tap", tap, f"TAP {tap} of a VM that is not running") for tap in idle]
    out += _network(m, present)
    return out


def _network(m: Vmm, present: list[Link]) -> list[Leftover]:
    from vmm.network import firewall

    out: list[Leftover] = []
    try:
        table = firewall.table_exists(m.runner)
    except VmmError:
        return out
    bridge = m.config.bridge_name
    if not m.store.names():
        if table or any(lk.name == bridge for lk in present):
            out.append(Leftover("network", bridge, "vmm's bridge or firewall table, with no VM left"))
        return out
    if table:
        want = {(f.proto, f.host_port) for f in m.network.firewall_spec().forwards}
        have = forwarded_ports(firewall.current(m.runner))
        if want != have:
            extra = sorted(have - want)
            missing = sorted(want - have)
            out.append(Leftover(
                "rules", "vmm",
                f"port-forward rules differ from the records (extra {extra or '-'}, missing "
                f"{missing or '-'})",
            ))  # fmt: skip
    return out


def forwarded_ports(table: dict[str, Any]) -> set[tuple[str, int]]:
    """(protocol, host port) of every DNAT rule in ``nft -j list table ip vmm`` output (pure)."""
    found: set[tuple[str, int]] = set()
    items = table.get("nftables", []) if isinstance(table, dict) else []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        exprs = rule.get("expr", []) if isinstance(rule, dict) else []
        if not isinstance(exprs, list) or not any(isinstance(e, dict) and "dnat" in e for e in exprs):
            continue
        for e in exprs:
            match = e.get("match") if isinstance(e, dict) else None
            left = match.get("left", {}) if isinstance(match, dict) else {}
            payload = left.get("payload") if isinstance(left, dict) else None
            if isinstance(payload, dict) and payload.get("field") == "dport":
                port = match.get("right") if isinstance(match, dict) else None
                if isinstance(port, int):
                    found.add((str(payload.get("protocol")), port))
    return found


def fix(m: Vmm, leftovers: list[Leftover]) -> list[str]:
    """Remove each leftover; one line per thing done (or not)."""
    done = []
    for lo in leftovers:
        try:
            if lo.kind == "scratch":
                p = Path(lo.item)
                for t in mounts_below(p):
                    m.runner.run(["umount", "-l", t], check=False, timeout=60)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=False)
                else:
                    p.unlink()
                done.append(f"removed {lo.item}")
            elif lo.kind == "mount":
                m.runner.run(["umount", "-l", lo.item], timeout=60)
                done.append(f"unmounted {lo.item}")
            elif lo.kind == "interrupted":
                how = m.stop(lo.item)
                done.append(f"stopped VM {lo.item} ({how})")
            elif lo.kind == "tap":
                from vmm.network import links

                links.delete_tap(m.runner, lo.item)
                done.append(f"removed TAP {lo.item}")
            elif lo.kind == "network":
                m.network.teardown_if_unused()
                done.append("removed vmm's bridge and firewall table")
            elif lo.kind == "rules":
                m.network.rebuild_rules()
                done.append("rebuilt the port-forward rules from the records")
        except (OSError, VmmError) as exc:
            done.append(f"could not fix {lo.item}: {exc}")
    return done
