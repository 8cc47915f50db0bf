"""VM records on disk: one JSON file per VM, atomic writes, file locks.

Layout under the data dir (the seed's)::

    vms/<name>.json        the record (0644: ``vmm list`` works for non-root users)
    vms/<name>/            per-VM files: rootfs.ext4, engine.log, suspend/ (a suspended VM's
                           saved state), snapshots/<snap>/ (meta.json, disks, saved state)
    logs/<name>.log        the serial console log
    sockets/<name>.sock    Firecracker API / QEMU QMP socket; sockets/<name>.console (QEMU)
    images/, images/kernels/, mounts/
    locks/                 global.lock (IPs, names, host network) and <name>.lock (lifecycle)

Writes go to a temp file that is fsynced and renamed over the record, then the directory is
fsynced, so a crash leaves either the old or the new record, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from vmm.errors import NotFoundError, PermissionDenied, RecordError
from vmm.models import VM
from vmm.record import FrozenRecord, Record

UNIX_PATH_MAX = 107
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def set_mode(path: Path, mode: int) -> None:
    """chmod what vmm made (owned by us, not a symbolic link): a data dir from an older vmm
    gets today's modes, and nothing vmm does not own is ever changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat

    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


# Temporary files and directories carry the pid of the command that made them, so that what an
# interrupted command left behind (its pid is gone) is told apart from the work of a command
# that is still running: ``vmm doctor`` names the former and ``--fix`` removes it.
_SCRATCH_RE = re.compile(r"^\.(?:[\w.-]*?[.-])?(\d+)(?:[.-][\w.-]*)?\.(?:tmp|importing|building)$|^\.[a-z]+-(\d+)-")


def scratch_name(stem: str, suffix: str = "tmp") -> str:
    """``.<stem>.<pid>.<suffix>``: a temp file next to what it becomes."""
    return f".{stem}.{os.getpid()}.{suffix}"


def scratch_prefix(kind: str) -> str:
    """``.<kind>-<pid>-``: the prefix for ``tempfile.mkdtemp`` work directories."""
    return f".{kind}-{os.getpid()}-"


def scratch_owner(entry: str) -> int | None:
    """The pid a temp entry of vmm's names (None: not one of vmm's temp entries)."""
    m = _SCRATCH_RE.match(entry)
    if not m:
        return None
    return int(m.group(1) or m.group(2))


def lock_held(path: Path) -> bool:
    """Someone holds the flock on ``path`` (the probe's own shared lock is released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class RunPaths(FrozenRecord):
    """Per-VM files an engine uses at run time."""

    vm_dir: Path
    console_log: Path
    api_socket: Path  # Firecracker API socket or QEMU QMP socket
    console_socket: Path  # serial console socket (QEMU); unused by Firecracker
    engine_log: Path


class RecordProblem(Record):
    name: str
    error: str


class Salvaged(FrozenRecord):
    """What could be read from a record that does not decode (see ``Store.salvage``)."""

    ip: str | None
    id: str | None
    tap: str | None
    image_paths: tuple[str, ...]


def _stems(directory: Path, suffix: str) -> list[str]:
    """The names of ``directory``'s visible entries ending in ``suffix`` (which is cut off);
    with no suffix, the entries without a dot. None when the directory does not exist."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    if not suffix:
        return sorted(e for e in entries if "." not in e)
    return sorted(e[: -len(suffix)] for e in entries if e.endswith(suffix) and not e.startswith("."))


def _salvage_field(text: str, key: str, shape: str) -> str | None:
    m = re.search(rf'"{key}"\s*:\s*"({shape})"', text)
    return m.group(1) if m else None


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Store:
    def __init__(self, data_dir: Path):
        self.root = data_dir
        self.vms_dir = data_dir / "vms"
        self.logs_dir = data_dir / "logs"
        self.sockets_dir = data_dir / "sockets"
        self.images_dir = data_dir / "images"
        self.kernels_dir = data_dir / "images" / "kernels"
        self.mounts_dir = data_dir / "mounts"
        self.locks_dir = data_dir / "locks"

    # -- layout -------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        """The layout, with its modes. Guest data (disks, images, console logs, sockets, mount
        images) is root's alone: any local user could otherwise read a guest's keys and
        /etc/shadow from its disk. Records stay world-readable, so ``vmm list`` works for
        everyone; directories that non-root list commands read (vms/, images/) are listable,
        the files in them that hold guest data are 0600."""
        for d, mode in (
            (self.root, 0o755),
            (self.vms_dir, 0o755),
            (self.logs_dir, PRIVATE_DIR),
            (self.sockets_dir, PRIVATE_DIR),
            (self.images_dir, 0o755),
            (self.kernels_dir, 0o755),
            (self.mounts_dir, PRIVATE_DIR),
            (self.locks_dir, 0o755),
        ):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=mode)
            except PermissionError:
                raise PermissionDenied(
                    f"cannot create {d}: permission denied", hint="run the command with sudo"
                ) from None
            set_mode(d, mode)

    def ensure_vm_dir(self, name: str) -> Path:
        """The VM's own directory (its disk, engine log), root's alone."""
        d = self.vm_dir(name)
        d.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        set_mode(d, PRIVATE_DIR)
        return d

    def record_path(self, name: str) -> Path:
        return self.vms_dir / f"{name}.json"

    def vm_dir(self, name: str) -> Path:
        return self.vms_dir / name

    def rootfs_path(self, name: str) -> Path:
        return self.vm_dir(name) / "rootfs.ext4"

    def suspend_dir(self, name: str) -> Path:
        """A suspended VM's saved memory and device state (``vmm.services.snapshots``)."""
        return self.vm_dir(name) / "suspend"

    def snapshots_dir(self, name: str) -> Path:
        """The VM's named snapshots, one directory each (``vmm.services.snapshots``)."""
        return self.vm_dir(name) / "snapshots"

    def run_paths(self, name: str) -> RunPaths:
        return RunPaths(
            vm_dir=self.vm_dir(name),
            console_log=self.logs_dir / f"{name}.log",
            api_socket=self.sockets_dir / f"{name}.sock",
            console_socket=self.sockets_dir / f"{name}.console",
            engine_log=self.vm_dir(name) / "engine.log",
        )

    # -- records ------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self.record_path(name).exists()

    def load(self, name: str) -> VM:
        path = self.record_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NotFoundError(
                f"VM {name!r} does not exist", hint="see 'vmm list -a' for the VMs there are"
            ) from None
        except PermissionError:
            raise PermissionDenied(f"cannot read {path}: permission denied") from None
        except UnicodeDecodeError:
            raise RecordError(
                f"VM record {name!r} is corrupt ({path} is not UTF-8 text)",
                hint=f"fix or remove {path}; 'vmm delete -f {name}' cleans up",
            ) from None
        return self._decode(name, text)

    def _decode(self, name: str, text: str) -> VM:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(
                f"VM record {name!r} is corrupt ({self.record_path(name)}: {exc.msg} at line "
                f"{exc.lineno})",
                hint=f"fix or remove {self.record_path(name)}; 'vmm delete -f {name}' cleans up",
            ) from None
        except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
            raise RecordError(
                f"VM record {name!r} is corrupt ({self.record_path(name)}: {type(exc).__name__})",
                hint=f"fix or remove {self.record_path(name)}; 'vmm delete -f {name}' cleans up",
            ) from None
        vm = VM.from_dict(raw, repr(name))
        if vm.name != name:
            raise RecordError(
                f"VM record {self.record_path(name)} names VM {vm.name!r}, not {name!r}"
            )
        return vm

    def save(self, vm: VM) -> None:
        data = (json.dumps(vm.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        write_atomic(self.record_path(vm.name), data)

    def remove_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(name).unlink()

    def salvage(self, name: str) -> Salvaged:
        """What can still be read from VM ``name``'s record when it does not decode: its IP and
        id (never to be given to another VM), its TAP (to delete or keep) and its mount images.
        Each value only in the shape vmm writes it; nothing when the file cannot be read."""
        try:
            text = self.record_path(name).read_bytes().decode("utf-8", "replace")
        except OSError:
            return Salvaged(None, None, None, ())
        vm_id = _salvage_field(text, "id", "[0-9a-z]{8}")
        tap = _salvage_field(text, "tap", "vmm-[0-9a-z]{8}") or (f"vmm-{vm_id}" if vm_id else None)
        return Salvaged(
            ip=_salvage_field(text, "ip", r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"),
            id=vm_id,
            tap=tap,
            image_paths=tuple(re.findall(r'"image_path"\s*:\s*"([^"\\]+)"', text)),
        )

    def tap_names(self, vms: list[VM], problems: list[RecordProblem]) -> tuple[set[str], set[str]]:
        """The TAPs the records name: (of readable records, salvaged from corrupt ones)."""
        salvaged = {t for p in problems if (t := self.salvage(p.name).tap)}
        return {vm.tap for vm in vms if vm.tap}, salvaged

    def names(self) -> list[str]:
        """VMs: ``vms/<name>.json``."""
        return _stems(self.vms_dir, ".json")

    def image_names(self) -> list[str]:
        """Images: ``images/<name>.ext4`` (with an optional ``<name>.json`` beside it)."""
        return _stems(self.images_dir, ".ext4")

    def kernel_names(self) -> list[str]:
        """Kernels: ``images/kernels/<name>`` (no dot: ``<name>.initrd``/``.json`` go with it)."""
        return [e for e in _stems(self.kernels_dir, "") if (self.kernels_dir / e).is_file()]

    def load_all(self) -> tuple[list[VM], list[RecordProblem]]:
        """Every readable record, plus one problem per record that could not be read."""
        vms: list[VM] = []
        problems: list[RecordProblem] = []
        for name in self.names():
            try:
                vms.append(self.load(name))
            except (RecordError, PermissionDenied, NotFoundError) as exc:
                problems.append(RecordProblem(name, exc.brief))
        return vms, problems

    # -- locks --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, path: Path) -> Iterator[None]:
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def global_lock(self) -> contextlib.AbstractContextManager[None]:
        """Guards names, IP allocation and host networking."""
        return self._flock(self.locks_dir / "global.lock")

    def is_locked(self, name: str) -> bool:
        """A command holds VM ``name``'s lifecycle lock right now (a probe, never a wait)."""
        return lock_held(self.locks_dir / f"{name}.lock")

    def vm_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Guards one VM's lifecycle (start/stop/delete)."""
        return self._flock(self.locks_dir / f"{name}.lock")
