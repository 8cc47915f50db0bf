"""``vmm doctor``: a preflight report of the host, one ``Check`` per line, with fix hints.

Each check is a function of the config and a ``Probes`` object (what the host shows: devices,
binaries, sysctls, links, routes, files); tests pass probes that answer from data. A ``fail``
is a problem that stops vmm from working (exit code 1); a ``warn`` is worth knowing but does
not (an optional engine missing, leftovers that ``--fix`` removes).

Leftovers ``--fix`` cleans — only things vmm made and nothing refers to any more: TAPs named
``vmm-<id>`` that no VM record names, sockets in ``<data>/sockets`` with no live VM behind
them, temp files of interrupted record writes, and per-VM directories without a record (an
interrupted ``delete``). Corrupt records are reported, never removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmm.errors import VmmError
from vmm.record import FrozenRecord

if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.host.leftovers import Leftover
    from vmm.network.iproute import Link, Route
    from vmm.runner import Runner

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
E2FSPROGS = ("mkfs.ext4", "debugfs", "resize2fs", "e2fsck")
SUPPORTED_FC = "1.11."
_TAP_RE = re.compile(r"^vmm-[0-9a-z]{8}$")


class Check(FrozenRecord):
    name: str
    status: str  # ok | warn | fail
    message: str
    hint: str = ""
    # Things ``--fix`` would remove (paths, TAP names), for the leftover checks.
    leftovers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "leftovers": list(self.leftovers),
        }


class Probes:
    """What the checks observe on the host. Each method is one observation; tests override."""

    def __init__(self, runner: Runner | None = None):
        from vmm.runner import Runner

        self.runner = runner or Runner()

    def kvm_unusable_reason(self) -> str | None:
        """None when /dev/kvm can run guests; else why not (missing, EACCES, kvm_pvm, ...)."""
        from vmm.engines.qemu.accel import KVM_DEVICE, kvm_unusable_reason

        if not KVM_DEVICE.exists():
            return "/dev/kvm does not exist"
        return kvm_unusable_reason()

    def open_rw_error(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return exc.strerror or str(exc)
        os.close(fd)
        return None

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def output(self, argv: list[str]) -> tuple[int, str]:
        """Exit code and combined output of a short command (127 when it cannot run)."""
        try:
            r = self.runner.run(argv, check=False, timeout=15)
        except VmmError as exc:
            return 127, exc.brief
        return r.returncode, (r.stdout + r.stderr).strip()

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def dir_problem(self, path: Path) -> str | None:
        """Why vmm could not write in data dir ``path`` (None: it can, or can create it)."""
        p = path
        while not p.exists():
            if p.parent == p:
                return f"no existing parent of {path}"
            p = p.parent
        if not p.is_dir():
            return f"{p} is not a directory"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".doctor.", dir=p)
        except OSError as exc:
            return f"cannot write in {p}: {exc.strerror or exc}"
        os.close(fd)
        os.unlink(tmp)
        return None

    def links(self) -> list[Link]:
        from vmm.network import links

        return links.list_links(self.runner)

    def routes(self) -> list[Route]:
        from vmm.network import links

        return links.list_routes(self.runner)

    def vm_alive(self, pid: int | None, start_time: int | None, boot: str | None = None) -> bool:
        from vmm.host.liveness import ProcessRef, is_alive

        return (
            pid is not None
            and start_time is not None
            and is_alive(ProcessRef(pid, start_time, boot))
        )

    def listening(self, path: Path) -> bool:
        from vmm.engines.firecracker.engine import socket_is_live

        return socket_is_live(path)


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
    taps = {vm.tap for vm in vms if vm.tap}
    for p in problems:  # a corrupt record may still name its TAP: never call that one orphaned
        with contextlib.suppress(OSError):
            m = re.search(r'"tap"\s*:\s*"(vmm-[0-9a-z]{8})"', store.record_path(p.name).read_text())
            if m:
                taps.add(m.group(1))
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
        alive=frozenset(vm.name for vm in vms if probes.vm_alive(vm.pid, vm.pid_start_time, vm.pid_boot_id)),
        corrupt=tuple((p.name, p.error) for p in problems),
        tmp_files=tuple(tmp_files),
        dirs_without_record=tuple(dirs),
        sockets=tuple(sockets),
    )


# -- the checks -----------------------------------------------------------------------------


def check_config(error: str | None, path: str) -> Check:
    if error:
        return Check(
            "config", FAIL, error, f"fix {path}, or move it away and run 'vmm config init'"
        )
    return Check(
        "config",
        OK,
        f"{path} is valid" if os.path.exists(path) else f"{path}: not present, defaults",
    )


def check_kvm(p: Probes, cfg: Config) -> Check:
    reason = p.kvm_unusable_reason()
    if reason is None:
        return Check("kvm", OK, "/dev/kvm is usable")
    if cfg.engine == "firecracker":
        return Check(
            "kvm", FAIL, f"{reason}: the firecracker engine needs KVM",
            "load kvm_intel/kvm_amd (or enable nested virtualisation), or use engine 'qemu' "
            "(it runs guests under TCG without KVM)",
        )  # fmt: skip
    return Check(
        "kvm",
        WARN,
        f"{reason}: QEMU guests run under TCG (slower)",
        "nothing to do for engine qemu",
    )


def check_tun(p: Probes, _cfg: Config) -> Check:
    err = p.open_rw_error("/dev/net/tun")
    if err is None:
        return Check("tun", OK, "/dev/net/tun is usable")
    return Check(
        "tun", FAIL, f"/dev/net/tun cannot be opened: {err}", "modprobe tun; run vmm as root"
    )


def check_firecracker(p: Probes, cfg: Config) -> Check:
    from vmm.engines.firecracker.engine import FALLBACK_BINARY, parse_version

    required = cfg.engine == "firecracker"
    missing = FAIL if required else WARN
    configured = cfg.firecracker_bin
    path = (
        configured if configured and os.sep in configured else p.which(configured or "firecracker")
    )
    path = path or (None if configured else FALLBACK_BINARY)
    if not path or not p.executable(path):
        where = (
            f"firecracker_bin {configured!r}"
            if configured
            else "firecracker (PATH, /usr/local/bin)"
        )
        return Check(
            "firecracker", missing, f"not found: {where}",
            "install it with scripts/install.sh (Firecracker v1.11.0)"
            + ("" if configured else ", or set firecracker_bin in the config"),
        )  # fmt: skip
    rc, out = p.output([path, "--version"])
    version = parse_version(out) if rc == 0 else None
    if version is None:
        return Check(
            "firecracker",
            missing,
            f"{path} --version failed: {out[-200:]}",
            "reinstall Firecracker",
        )
    if not version.startswith(SUPPORTED_FC):
        return Check(
            "firecracker",
            WARN,
            f"{path} is v{version}; vmm is made for v1.11.x",
            "install v1.11.0 with scripts/install.sh",
        )
    return Check("firecracker", OK, f"{path} v{version}")


def check_jailer(p: Probes, cfg: Config) -> Check:
    candidates = [p.which("jailer"), "/usr/local/bin/jailer"]
    if cfg.firecracker_bin and os.sep in cfg.firecracker_bin:
        candidates.insert(0, os.path.join(os.path.dirname(cfg.firecracker_bin), "jailer"))
    found = next((c for c in candidates if c and p.executable(c)), None)
    if found:
        return Check("jailer", OK, found)
    return Check(
        "jailer",
        WARN,
        "jailer not found (optional: vmm does not jail VMs yet)",
        "scripts/install.sh installs it with Firecracker",
    )


def check_qemu(p: Probes, cfg: Config) -> Check:
    name = cfg.qemu_bin or "qemu-system-x86_64"
    path = name if os.sep in name else p.which(name)
    level = FAIL if cfg.engine == "qemu" else WARN
    if not path or not p.executable(path):
        what = "the configured engine" if cfg.engine == "qemu" else "optional: the second engine"
        return Check("qemu", level, f"{name} not found ({what})", "apt-get install qemu-system-x86")
    rc, out = p.output([path, "--version"])
    m = re.search(r"version\s+(\S+)", out)
    if rc != 0 or not m:
        return Check(
            "qemu", level, f"{path} --version failed: {out[-200:]}", "reinstall qemu-system-x86"
        )
    return Check("qemu", OK, f"{path} {m.group(1)}")


def check_iproute(p: Probes, _cfg: Config) -> Check:
    if p.which("ip"):
        return Check("iproute2", OK, "ip found")
    return Check("iproute2", FAIL, "ip not found", "apt-get install iproute2")


def check_nft(p: Probes, _cfg: Config) -> Check:
    if not p.which("nft"):
        return Check("nftables", FAIL, "nft not found", "apt-get install nftables")
    rc, out = p.output(["nft", "list", "tables"])
    if rc != 0:
        return Check(
            "nftables",
            FAIL,
            f"nft does not work: {out[-200:]}",
            "run vmm as root; check that the nf_tables module loads",
        )
    return Check("nftables", OK, "nft works")


def check_ip_forward(p: Probes, _cfg: Config) -> Check:
    value = (p.read("/proc/sys/net/ipv4/ip_forward") or "").strip()
    if value == "1":
        return Check("ip_forward", OK, "net.ipv4.ip_forward = 1")
    return Check(
        "ip_forward", WARN, f"net.ipv4.ip_forward = {value or '?'} (vmm sets it to 1 when a VM starts)",
        "nothing to do; to keep it across reboots: echo net.ipv4.ip_forward=1 > /etc/sysctl.d/99-vmm.conf",
    )  # fmt: skip


def check_e2fsprogs(p: Probes, _cfg: Config) -> Check:
    missing = [t for t in E2FSPROGS if not p.which(t)]
    if missing:
        return Check(
            "e2fsprogs", FAIL, f"missing: {', '.join(missing)}", "apt-get install e2fsprogs"
        )
    return Check("e2fsprogs", OK, ", ".join(E2FSPROGS) + " found")


def check_e2tools(p: Probes, _cfg: Config) -> Check:
    if p.which("e2cp"):
        return Check("e2tools", OK, "e2cp found")
    return Check(
        "e2tools",
        WARN,
        "e2cp not found (optional: vmm edits images with debugfs)",
        "apt-get install e2tools",
    )


def check_cgroup2(p: Probes, _cfg: Config) -> Check:
    if p.exists("/sys/fs/cgroup/cgroup.controllers"):
        return Check("cgroup2", OK, "cgroup v2 mounted at /sys/fs/cgroup")
    return Check(
        "cgroup2",
        WARN,
        "cgroup v2 is not mounted at /sys/fs/cgroup (the jailer needs it)",
        "boot with systemd.unified_cgroup_hierarchy=1",
    )


def check_data_dir(p: Probes, cfg: Config) -> Check:
    path = cfg.data_path
    problem = p.dir_problem(path)
    if problem:
        return Check(
            "data_dir",
            FAIL,
            f"{path}: {problem}",
            "run vmm as root, or set data_dir (or VMM_DATA_DIR) to a writable directory",
        )
    if not p.exists(str(path)):
        return Check("data_dir", OK, f"{path} (created on first use)")
    return Check("data_dir", OK, f"{path} is writable")


def check_subnet(p: Probes, cfg: Config) -> Check:
    from vmm.network import ipam

    try:
        routes = p.routes()
    except VmmError as exc:
        return Check("subnet", WARN, f"cannot list routes: {exc.brief}", "install iproute2")
    clash = ipam.overlapping_routes(cfg.subnet, routes, own_dev=cfg.bridge_name)
    if clash:
        return Check(
            "subnet", FAIL, f"{cfg.subnet} overlaps host route(s): {', '.join(str(r) for r in clash)}",
            "set another private subnet and gateway in the config (e.g. 10.123.0.0/16, 10.123.0.1)",
        )  # fmt: skip
    return Check("subnet", OK, f"{cfg.subnet} does not clash with host routes")


def orphan_taps(links: list[Link], inv: Inventory) -> list[str]:
    """TAPs named like vmm's whose VM record is gone. Pure."""
    return sorted(
        lk.name for lk in links if _TAP_RE.match(lk.name) and lk.is_tap and lk.name not in inv.taps
    )


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


HOST_CHECKS: tuple[Callable[[Probes, Config], Check], ...] = (
    check_kvm, check_tun, check_firecracker, check_jailer, check_qemu, check_iproute, check_nft,
    check_ip_forward, check_e2fsprogs, check_e2tools, check_cgroup2, check_data_dir, check_subnet,
)  # fmt: skip


def run_checks(cfg: Config, config_error: str | None, probes: Probes) -> list[Check]:
    """Every check, in report order. A broken check is reported as a failure, not raised."""
    checks = [check_config(config_error, str(cfg.path))]
    for fn in HOST_CHECKS:
        checks.append(_guarded(fn.__name__[6:], lambda fn=fn: fn(probes, cfg)))  # type: ignore[misc]
    try:
        inv = take_inventory(cfg.data_path, probes)
    except OSError as exc:
        checks.append(Check("records", WARN, f"cannot read the data dir: {exc}", "run vmm as root"))
        return checks
    checks.append(_guarded("taps", lambda: check_taps(probes, inv)))
    checks.append(_guarded("sockets", lambda: check_sockets(probes, inv)))
    checks += check_records(inv)
    return checks


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # one broken probe must not hide the rest of the report
        log.debug("check %s failed", name, exc_info=True)
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "re-run with --debug",
        )


def leftover_check(found: list[Leftover]) -> Check:
    """What interrupted commands left (``vmm.host.leftovers``), as one line of the report."""
    if not found:
        return Check("leftovers", OK, "nothing left by interrupted commands")
    return Check(
        "leftovers",
        WARN,
        "; ".join(lo.what for lo in found),
        "vmm doctor --fix removes them (and stops what an interrupted start left running)",
    )


def healthy(checks: list[Check]) -> bool:
    return all(c.status != FAIL for c in checks)


def fix(checks: list[Check], runner: Runner) -> list[str]:
    """Remove the leftovers the checks found; returns one line per thing removed."""
    from vmm.network import links

    done = []
    for c in checks:
        for item in c.leftovers:
            try:
                if c.name == "taps":
                    links.delete_tap(runner, item)
                elif os.path.isdir(item) and not os.path.islink(item):
                    shutil.rmtree(item)
                else:
                    os.unlink(item)
                done.append(f"removed {item}")
            except (OSError, VmmError) as exc:
                done.append(f"could not remove {item}: {exc}")
    return done
