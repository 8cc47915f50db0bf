"""What must hold of a vmm data dir and the network namespace its VMs run in, seen from outside.

``observe(data_dir, ns)`` reads what is there — records (twice), the VM locks, the processes in
the namespace, its links, vmm's nft table, hidden temp entries, sockets, logs, mounts and loop
devices — without taking any lock and without vmm's own liveness code. ``problems(obs, ...)``
lists what is wrong, each ``Problem`` with the string ``vmm doctor`` must print about it when
it is a leftover of an interrupted command (``needle``).

The invariants:

1. every record decodes (JSON, vmm's schema, the name of its file);
2. no IP, MAC, TAP, id or host port (same protocol, overlapping host address) is used twice;
3. every ``running`` record has its live process (pid and start time as recorded, inside the
   namespace, a hypervisor whose command line names the VM's API socket) and its TAP (attached
   to vmm's bridge);
4. a ``created``/``stopped``/``error`` record names no process, and its VM has no TAP;
5. a ``starting``/``stopping`` record whose process is alive is an interrupted command's
   leftover (``vmm doctor`` names it);
6. the DNAT rules of vmm's table (prerouting and output alike, none twice) are exactly the
   forwards of the VMs whose process is alive; without any record there is neither table
   nor bridge;
7. no orphan: no hypervisor process, TAP, socket, console log, per-VM directory or mount image
   without its record; no hidden temp entry (``.*``) in the data dir, ``images/``,
   ``images/kernels/``, ``mounts/``, ``vms/`` or ``vms/<name>/``; no mount below the data dir;
   no loop device backed by a file in it; with ``quiescent``, no process but hypervisors in
   the namespace (no vmm command, no tool it ran).

Allowances — the only states tolerated, each for a reason:

- **busy VMs.** A VM is busy when its lock (``locks/<name>.lock``) is held when the
  observation starts or ends, when its record changed between the two reads, or when the
  caller says a command on it is in flight (``busy=``; the chaos test passes the VMs its
  workers are working on). For a busy VM, invariants 3-5 and its forwards in 6 (any DNAT
  rule to its address: ``port-forward remove`` saves the record before it withdraws the
  rule) are not checked, nor are its orphans of 7 (a ``start`` between spawning the
  hypervisor and saving its pid, a ``delete`` between removing files and the record,
  ``port-forward add`` between saving the record and applying the rule all look like that
  for a moment); mount images without a record are judged only when no VM is busy. TAPs
  are always judged: one is made after its record and removed before it. Invariants 1-2 are
  never relaxed: records are written atomically and allocations happen under the global
  lock, so no command ever shows a broken or doubled record, even mid-way.
- **a busy VM without a record.** ``delete`` rebuilds the rules and removes the bridge and
  table of the last VM after it released the VM lock: while a command on a VM that has no
  record (yet, or any more) is in flight, DNAT rules to addresses no record holds, and a
  table or bridge with no record, are tolerated.
- **crashed VMs** (``crashed=``: (pid, start time) of hypervisors the caller killed itself,
  as a host's OOM killer would). Their record still says ``running``; vmm reads that as stopped (the pid is
  dead) and cleans up at the VM's next start, stop or delete. Until then its TAP, sockets and
  DNAT rules may stay (doctor names them).
- **a dead ``starting``/``stopping`` record.** A command killed after saving that state and
  before saving the next leaves it; vmm shows such a VM as stopped (the pid is dead or
  absent) and the next command on it rewrites it. Its TAP and sockets are leftovers all the
  same.
- **temp entries of live commands.** Unless ``quiescent``, a hidden entry carrying the pid of a
  live process, one that is gone by the time it is judged, one in the directory of a busy VM
  and the temp file of a busy VM's record (``vms/.<name>.json.<pid>.tmp``) are work under way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm.store import lock_held

BRIDGE = "vmm-br0"
TABLE = ("ip", "vmm")
TEMP_DIRS = ("", "images", "images/kernels", "mounts", "vms")
_TAP_RE = re.compile(r"^vmm-[0-9a-z]{8}$")
_PID_IN_NAME = re.compile(r"[.-](\d+)[.-]")


@dataclass(frozen=True)
class Problem:
    """One broken invariant; ``needle``: what ``vmm doctor`` must mention (None: not a
    leftover doctor is meant to handle — a bug, whatever doctor says)."""

    kind: str
    item: str
    detail: str
    needle: tuple[str, ...] | None = None  # all of these, in one line of doctor's report

    def __str__(self) -> str:
        return f"{self.kind} {self.item}: {self.detail}"


@dataclass(frozen=True)
class Proc:
    pid: int
    start_time: int
    cmdline: tuple[str, ...]

    @property
    def api_socket(self) -> str | None:
        """The ``--api-sock`` of a hypervisor (None: not one)."""
        args = list(self.cmdline)
        for flag in ("--api-sock", "--api-socket"):
            if flag in args[:-1]:
                return args[args.index(flag) + 1]
        return None


@dataclass(frozen=True)
class Fwd:
    """A forward as the records imply it or as a DNAT rule shows it."""

    proto: str
    host_port: int
    host_addr: str | None
    guest_ip: str
    guest_port: int

    def __str__(self) -> str:
        return f"{self.host_addr or '*'}:{self.host_port}/{self.proto}->{self.guest_ip}:{self.guest_port}"


@dataclass
class Observation:
    data_dir: Path
    ns: str
    first: dict[str, str]  # record file contents, first read
    texts: dict[str, str]  # record file contents, second read
    changed: set[str]  # records whose contents differed between the two reads (or came/went)
    records: dict[str, dict[str, Any]]  # the decodable ones
    decode_errors: dict[str, str]
    locked: set[str]  # VM locks held at the start or end of the observation
    procs: dict[int, Proc]  # every process in the namespace
    taps: dict[str, str | None]  # vmm-* TAP -> its master
    bridge: bool
    table: bool
    dnat: dict[str, list[Fwd]] = field(default_factory=dict)  # chain -> its DNAT rules
    hidden: list[Path] = field(default_factory=list)
    sockets: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    vm_dirs: list[Path] = field(default_factory=list)
    mount_files: list[Path] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)

    def alive(self, name: str) -> Proc | None:
        """The live hypervisor process the record of ``name`` names, or None."""
        rec = self.records.get(name)
        if rec is None:
            return None
        proc = self.procs.get(rec.get("pid")) if isinstance(rec.get("pid"), int) else None
        if proc is None or proc.start_time != rec.get("pid_start_time"):
            return None
        if proc.api_socket != str(self.data_dir / "sockets" / f"{name}.sock"):
            return None
        return proc


# -- observing ---------------------------------------------------------------------------------


def _read_records(vms: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(vms):
            if entry.endswith(".json") and not entry.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    out[entry[:-5]] = (vms / entry).read_text()
    return out


def _held_locks(data_dir: Path) -> set[str]:
    locks = data_dir / "locks"
    try:
        entries = os.listdir(locks)
    except FileNotFoundError:
        return set()
    return {
        e[:-5]
        for e in entries
        if e.endswith(".lock") and e != "global.lock" and lock_held(locks / e)
    }


def _start_time(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()
    return fields[0], int(fields[19])


def ns_processes(ns: str) -> dict[int, Proc]:
    """Live (non-zombie) processes in network namespace ``ns``."""
    try:
        want = os.stat(f"/run/netns/{ns}").st_ino
    except FileNotFoundError:
        return {}
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != want:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        st = _start_time(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        out[pid] = Proc(
            pid, st[1], tuple(a.decode(errors="replace") for a in cmdline.split(b"\0") if a)
        )
    return out


def _run_in(ns: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _links(ns: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        ["ip", "-n", ns, "-d", "-j", "link", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(r.stdout or "[]")  # type: ignore[no-any-return]


def parse_dnat(table: dict[str, Any]) -> dict[str, list[Fwd]]:
    """The DNAT rules of ``nft -j list table ip vmm`` output, by chain."""
    out: dict[str, list[Fwd]] = {}
    for item in table.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        exprs = rule.get("expr", [])
        dnat = next((e["dnat"] for e in exprs if isinstance(e, dict) and "dnat" in e), None)
        if dnat is None:
            continue
        proto, port, addr = "?", -1, None
        for e in exprs:
            match = e.get("match") if isinstance(e, dict) else None
            if not isinstance(match, dict):
                continue
            payload = (
                match.get("left", {}).get("payload")
                if isinstance(match.get("left"), dict)
                else None
            )
            if not isinstance(payload, dict):
                continue
            if payload.get("field") == "dport":
                proto, port = str(payload.get("protocol")), int(match["right"])
            elif payload.get("field") == "daddr" and isinstance(match.get("right"), str):
                addr = match["right"]
        out.setdefault(str(rule.get("chain")), []).append(
            Fwd(proto, port, addr, str(dnat.get("addr")), int(dnat.get("port", -1)))
        )
    return out


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix) or target == prefix[:-1]:
                found.append(target)
    return found


def _loops_below(path: Path) -> list[str]:
    r = subprocess.run(
        ["losetup", "-l", "-n", "--raw", "-O", "NAME,BACK-FILE"], capture_output=True, text=True
    )
    prefix = str(path.resolve()) + "/"
    out = []
    for line in r.stdout.splitlines():
        name, _, back = line.partition(" ")
        if back.strip().startswith(prefix):
            out.append(f"{name} ({back.strip()})")
    return out


def _listdir(d: Path) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []


def decode(name: str, text: str) -> dict[str, Any]:
    """A record as vmm reads it (ValueError with the reason when vmm could not)."""
    from vmm.errors import VmmError
    from vmm.models import VM

    try:
        raw = json.loads(text)
        vm = VM.from_dict(raw, repr(name))
    except (ValueError, VmmError) as exc:
        raise ValueError(str(exc)) from None
    if vm.name != name:
        raise ValueError(f"names VM {vm.name!r}")
    return raw  # type: ignore[no-any-return]


def observe(data_dir: Path, ns: str, *, bridge: str = BRIDGE) -> Observation:
    data_dir = Path(data_dir)
    vms = data_dir / "vms"
    locked = _held_locks(data_dir)
    first = _read_records(vms)
    procs = ns_processes(ns)
    links = _links(ns)
    nft = _run_in(ns, ["nft", "-j", "list", "table", *TABLE])
    hidden: list[Path] = []
    for sub in TEMP_DIRS:
        hidden += [data_dir / sub / e for e in _listdir(data_dir / sub) if e.startswith(".")]
    vm_dirs = [vms / e for e in _listdir(vms) if not e.startswith(".") and (vms / e).is_dir()]
    for d in vm_dirs:
        hidden += [d / e for e in _listdir(d) if e.startswith(".")]
    second = _read_records(vms)
    locked |= _held_locks(data_dir)

    records: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for name, text in second.items():
        try:
            records[name] = decode(name, text)
        except ValueError as exc:
            errors[name] = str(exc)
    taps = {
        str(lk["ifname"]): lk.get("master")
        for lk in links
        if _TAP_RE.match(str(lk["ifname"])) and lk.get("linkinfo", {}).get("info_kind") == "tun"
    }
    return Observation(
        data_dir=data_dir,
        ns=ns,
        first=first,
        texts=second,
        changed={n for n in set(first) | set(second) if first.get(n) != second.get(n)},
        records=records,
        decode_errors=errors,
        locked=locked,
        procs=procs,
        taps=taps,
        bridge=any(lk["ifname"] == bridge for lk in links),
        table=nft.returncode == 0,
        dnat=parse_dnat(json.loads(nft.stdout)) if nft.returncode == 0 else {},
        hidden=hidden,
        sockets=[data_dir / "sockets" / e for e in _listdir(data_dir / "sockets")],
        logs=[data_dir / "logs" / e for e in _listdir(data_dir / "logs")],
        vm_dirs=vm_dirs,
        mount_files=[
            data_dir / "mounts" / e for e in _listdir(data_dir / "mounts") if not e.startswith(".")
        ],
        mounts=_mounts_below(data_dir),
        loops=_loops_below(data_dir),
    )


# -- judging -----------------------------------------------------------------------------------


def _forwards(rec: dict[str, Any]) -> list[Fwd]:
    return [
        Fwd(
            str(f.get("proto", "tcp")),
            int(f["host_port"]),
            f.get("host_addr"),
            str(rec.get("ip")),
            int(f["guest_port"]),
        )
        for f in rec.get("port_forwards") or []
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def problems(
    obs: Observation,
    *,
    busy: Collection[str] = (),
    crashed: Collection[tuple[int, int]] = (),
    quiescent: bool = False,
) -> list[Problem]:
    """Every broken invariant of ``obs`` (see the module docstring for the allowances)."""
    out: list[Problem] = []
    recs = obs.records
    busy_all = set(busy) | obs.locked | obs.changed
    busy_without_record = any(n not in recs for n in busy_all)
    crashed_vms = {
        n for n, r in recs.items() if (r.get("pid"), r.get("pid_start_time")) in set(crashed)
    }

    # 1. every record decodes
    for name, err in sorted(obs.decode_errors.items()):
        out.append(Problem("corrupt-record", name, err, needle=(name,)))

    # 2. nothing used twice
    for key in ("ip", "mac", "tap", "id"):
        seen: dict[str, str] = {}
        for name, rec in sorted(recs.items()):
            value = rec.get(key)
            if value is None:
                continue
            if value in seen:
                out.append(Problem("duplicate", f"{key} {value}", f"in {seen[value]} and {name}"))
            seen[str(value)] = name
    all_fwds = [(name, f) for name, rec in sorted(recs.items()) for f in _forwards(rec)]
    for i, (n1, a) in enumerate(all_fwds):
        for n2, b in all_fwds[i + 1 :]:
            if (
                a.proto == b.proto
                and a.host_port == b.host_port
                and (a.host_addr is None or b.host_addr is None or a.host_addr == b.host_addr)
            ):
                out.append(
                    Problem(
                        "duplicate",
                        f"host port {a.host_port}/{a.proto}",
                        f"in {n1} ({a}) and {n2} ({b})",
                    )
                )

    # 3-5. each record against its process and TAP
    alive = {name: obs.alive(name) for name in recs}
    for name, rec in sorted(recs.items()):
        if name in busy_all:
            continue
        state, tap = rec.get("state"), rec.get("tap")
        proc = alive[name]
        if state == "running":
            if proc is None and name not in crashed_vms:
                out.append(
                    Problem(
                        "dead-running",
                        name,
                        f"record says running, process {rec.get('pid')} is not alive",
                    )
                )
            if proc is not None and obs.taps.get(str(tap), "-") != BRIDGE:
                where = "missing" if tap not in obs.taps else f"attached to {obs.taps[str(tap)]}"
                out.append(Problem("no-tap", name, f"running, its TAP {tap} is {where}"))
        elif state in ("starting", "stopping"):
            if proc is not None:
                out.append(Problem(
                    "interrupted", name, f"record says {state}, its process {proc.pid} runs with no command at work",
                    needle=(f"VM {name}:", f"interrupted {'start' if state == 'starting' else 'stop'} left", str(proc.pid)),
                ))  # fmt: skip
        else:
            if rec.get("pid") is not None:
                out.append(
                    Problem(
                        "stale-pid", name, f"record says {state} and names pid {rec.get('pid')}"
                    )
                )
        if proc is None and name not in crashed_vms and tap in obs.taps:
            out.append(
                Problem(
                    "tap-not-running",
                    str(tap),
                    f"TAP of {name} ({state}, not running)",
                    needle=(str(tap),),
                )
            )

    # 7. orphans: processes, TAPs
    owner_of_tap: dict[str, str] = {}
    for texts in (obs.first, obs.texts):  # both reads: a delete may remove the record mid-way
        for n, text in texts.items():
            m = re.search(r'"tap"\s*:\s*"([^"]+)"', text)
            if m:
                owner_of_tap[m.group(1)] = n
    for tap in sorted(obs.taps):
        if tap not in owner_of_tap:
            out.append(Problem("orphan-tap", tap, "no record names it", needle=(tap,)))
    referenced = {p.pid for p in alive.values() if p is not None}
    for pid, proc in sorted(obs.procs.items()):
        sock = proc.api_socket
        if sock is None:
            if quiescent:
                out.append(Problem("stray-process", str(pid), " ".join(proc.cmdline)[:200]))
            continue
        if pid in referenced:
            continue
        name = Path(sock).name.removesuffix(".sock")
        if name in busy_all:
            continue
        out.append(
            Problem(
                "orphan-process",
                str(pid),
                f"hypervisor of {name} that no record names",
                needle=(str(pid),),
            )
        )

    # 6. the firewall
    if obs.table:
        pre, post = obs.dnat.get("prerouting", []), obs.dnat.get("output", [])
        if sorted(map(str, pre)) != sorted(map(str, post)):
            out.append(
                Problem(
                    "nft",
                    "prerouting/output",
                    f"differ: {sorted(map(str, pre))} vs {sorted(map(str, post))}",
                )
            )
        if len(set(pre)) != len(pre):
            out.append(Problem("nft", "prerouting", f"a DNAT rule twice: {sorted(map(str, pre))}"))
        must = {
            f
            for n, r in recs.items()
            if n not in busy_all and alive[n] is not None
            for f in _forwards(r)
        }
        may = must | {
            f for n, r in recs.items() if n in busy_all or n in crashed_vms for f in _forwards(r)
        }
        known_ips = {str(r.get("ip")) for r in recs.values()}
        busy_ips = {str(r.get("ip")) for n, r in recs.items() if n in busy_all}
        missing = sorted(map(str, must - set(pre)))
        extra = sorted(
            str(f)
            for f in set(pre) - may
            if f.guest_ip not in busy_ips
            and not (busy_without_record and f.guest_ip not in known_ips)
        )
        if missing or extra:
            out.append(Problem(
                "rules", "vmm", f"DNAT rules differ from the records: missing {missing}, extra {extra}",
                needle=("port-forward rules differ from the records",),
            ))  # fmt: skip
    else:
        must_fwds = [
            str(f) for n, r in recs.items() if n not in busy_all and alive[n] for f in _forwards(r)
        ]
        if must_fwds:
            out.append(
                Problem("rules", "vmm", f"no nft table, but running VMs forward {must_fwds}")
            )
    if not recs and not obs.decode_errors and not busy_all and (obs.table or obs.bridge):
        what = " and ".join(
            w for w, there in (("bridge", obs.bridge), ("nft table", obs.table)) if there
        )
        out.append(Problem("network", what, "with no VM record", needle=("with no VM left",)))

    # 7. orphans and leftovers in the data dir
    for p in obs.hidden:
        m = _PID_IN_NAME.search(p.name + ".")
        if not quiescent and m and _pid_alive(int(m.group(1))):
            continue
        if not quiescent and not os.path.lexists(p):
            continue  # gone since it was listed: the write it belonged to finished
        vms = obs.data_dir / "vms"
        if p.parent.parent == vms and p.parent.name in busy_all:
            continue  # in the directory of a VM a command works on
        if p.parent == vms and any(p.name.startswith(f".{n}.json.") for n in busy_all):
            continue  # a record write under way
        out.append(Problem("temp", str(p), "hidden temp entry", needle=(str(p),)))
    for s in obs.sockets:
        name = s.name.rsplit(".", 1)[0]
        if name in busy_all:
            continue
        if name not in recs:
            out.append(Problem("orphan-socket", str(s), "no record", needle=(str(s),)))
        elif alive.get(name) is None and name not in crashed_vms:
            out.append(Problem("stale-socket", str(s), f"{name} is not running", needle=(str(s),)))
    for lg in obs.logs:
        name = lg.name.removesuffix(".log")
        if name not in recs and name not in busy_all and name not in obs.decode_errors:
            out.append(Problem("orphan-log", str(lg), "console log of no VM", needle=(str(lg),)))
    for d in obs.vm_dirs:
        if d.name not in recs and d.name not in busy_all and d.name not in obs.decode_errors:
            out.append(Problem("orphan-dir", str(d), "per-VM directory of no VM", needle=(str(d),)))
    images = {m.get("image_path") for r in recs.values() for m in r.get("mounts") or []}
    for f in obs.mount_files:
        if str(f) not in images and not busy_all and not obs.decode_errors:
            out.append(
                Problem("orphan-mount-image", str(f), "mount image of no VM", needle=(str(f),))
            )
    out += [Problem("mount", t, "mounted below the data dir", needle=(t,)) for t in obs.mounts]
    out += [
        Problem(
            "loop", lo, "loop device backed by a file in the data dir", needle=(lo.split(" ")[0],)
        )
        for lo in obs.loops
    ]
    return out


def check(
    data_dir: Path,
    ns: str,
    *,
    busy: Collection[str] = (),
    crashed: Collection[tuple[int, int]] = (),
    quiescent: bool = False,
) -> list[Problem]:
    """``problems(observe(data_dir, ns), ...)``."""
    return problems(observe(data_dir, ns), busy=busy, crashed=crashed, quiescent=quiescent)
