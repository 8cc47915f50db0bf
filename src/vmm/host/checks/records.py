"""What the data dir holds, against what the host shows: readable and corrupt records, the
TAPs the records name, sockets no live VM listens on, leftovers of interrupted record writes.

``--fix`` removes only what vmm made and nothing refers to any more: TAPs named like vmm's
(``vmm.network.links``) that no record names, sockets in ``<data>/sockets`` with no live VM
behind them, temp files of interrupted record writes, and per-VM directories without a record
(an interrupted ``delete``). Corrupt records are reported, never removed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from vmm.errors import VmmError
from vmm.host.checks import OK, WARN, Check
from vmm.record import FrozenRecord

if TYPE_CHECKING:
    from vmm.host.checks.probes import Probes
    from vmm.network.iproute import Link


class Inventory(FrozenRecord):
    """What the data dir holds: record names, readable records, corrupt ones, TAP names."""

    names: tuple[str, ...]
    taps: frozenset[str]
    alive: frozenset[str]
    corrupt: tuple[tuple[str, str], ...]
    tmp_files: tuple[str, ...]
    dirs_without_record: tuple[str, ...]
    sockets: tuple[str, ...]


def take_inventory(data_dir: Path, probes: Probes) -> Inventory:
    from vmm.host.liveness import pid_exists
    from vmm.store import Store, scratch_owner

    store = Store(data_dir)
    vms, problems = store.load_all()
    readable, salvaged = store.tap_names(vms, problems)
    taps = readable | salvaged  # a corrupt record's TAP is never called orphaned
    names = set(store.names())
    tmp_files: list[str] = []
    dirs: list[str] = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(store.vms_dir)):
            full = store.vms_dir / entry
            owner = scratch_owner(entry)
            if owner is not None and not pid_exists(owner):  # not a write under way
                tmp_files.append(str(full))
            elif full.is_dir() and not entry.startswith(".") and entry not in names:
                dirs.append(str(full))
    sockets: list[str] = []
    with contextlib.suppress(OSError):
        sockets = [str(store.sockets_dir / e) for e in sorted(os.listdir(store.sockets_dir))]
    return Inventory(
        names=tuple(sorted(names)),
        taps=frozenset(taps),
        alive=frozenset(
            vm.name for vm in vms if probes.vm_alive(vm.pid, vm.pid_start_time, vm.pid_boot_id)
        ),
        corrupt=tuple((p.name, p.error) for p in problems),
        tmp_files=tuple(tmp_files),
        dirs_without_record=tuple(dirs),
        sockets=tuple(sockets),
    )


def orphan_taps(links: list[Link], inv: Inventory) -> list[str]:
    """vmm's TAPs that no VM record names (``network.links.unused_taps``). Pure."""
    from vmm.network.links import unused_taps

    orphans, _idle = unused_taps(links, named=set(inv.taps), active=set())
    return orphans


def check_taps(p: Probes, inv: Inventory) -> Check:
    try:
        links = p.links()
    except VmmError as exc:
        return Check("taps", WARN, f"cannot list links: {exc.brief}", "install iproute2")
    orphans = orphan_taps(links, inv)
    if orphans:
        return Check(
            "taps",
            WARN,
            f"orphaned TAP(s) with no VM record: {', '.join(orphans)}",
            "vmm doctor --fix removes them",
            tuple(orphans),
        )
    return Check("taps", OK, "no orphaned TAPs")


def stale_sockets(p: Probes, inv: Inventory) -> list[str]:
    stale = []
    for path in inv.sockets:
        name = Path(path).stem
        if name in inv.alive:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode) and not p.listening(Path(path)):
                stale.append(path)
    return stale


def check_sockets(p: Probes, inv: Inventory) -> Check:
    stale = stale_sockets(p, inv)
    if stale:
        return Check(
            "sockets",
            WARN,
            f"{len(stale)} stale socket(s): {', '.join(stale)}",
            "vmm doctor --fix removes them",
            tuple(stale),
        )
    return Check("sockets", OK, "no stale sockets")


def check_records(inv: Inventory) -> list[Check]:
    out = []
    for name, error in inv.corrupt:
        out.append(
            Check(
                f"record {name}",
                WARN,
                error,
                f"fix the file, or remove the VM: vmm delete -f {name}",
            )
        )
    leftovers = (*inv.tmp_files, *inv.dirs_without_record)
    if leftovers:
        out.append(
            Check(
                "records",
                WARN,
                f"leftovers of interrupted writes/deletes: {', '.join(leftovers)}",
                "vmm doctor --fix removes them",
                leftovers,
            )
        )
    if not out:
        out.append(Check("records", OK, f"{len(inv.names)} VM record(s), all readable"))
    return out
