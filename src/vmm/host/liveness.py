"""Is a VM's process alive? Observed from /proc, cheaply (used by read-only commands).

A pid is ours only while ``/proc/<pid>/stat`` shows the start time we recorded (pids get
reused), and a zombie counts as gone. Reading /proc/<pid>/stat needs no privileges, so
``vmm list`` works for non-root users.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmm.errors import EngineError
from vmm.record import FrozenRecord


class ProcessRef(FrozenRecord):
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat, in clock ticks since boot
    boot_id: str | None = None  # the host boot it belongs to; None: not recorded (old records)


_BOOT_ID: list[str] = []


def boot_id() -> str:
    """This boot of the host (``/proc/sys/kernel/random/boot_id``): pids and start times
    restart at every boot, so a pid recorded before a reboot can name any process after it."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        except OSError:
            _BOOT_ID.append("")
    return _BOOT_ID[0]


def parse_stat(raw: bytes) -> list[str]:
    """Fields 3 and on of a ``/proc/<pid>/stat`` line (``[0]`` is the state). Pure.

    The command name (field 2) is in parentheses and may contain spaces, ')' and bytes that
    are not UTF-8 (any process can name itself so): it is skipped, never decoded.
    """
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def start_time_in(fields: list[str] | None) -> int | None:
    """Field 22 (the start time) of ``parse_stat``'s fields, None when it is not there."""
    if fields is None or len(fields) < 20 or not (fields[19].isascii() and fields[19].isdigit()):
        return None
    return int(fields[19])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # gone, not ours to read, or no pid at all (a record's pid of 10**300)
        return None
    return parse_stat(raw)


def start_time_of(pid: int) -> int | None:
    return start_time_in(_stat_fields(pid))


def is_alive(ref: ProcessRef | None) -> bool:
    """True when the process exists, is not a zombie and is the one we started."""
    if ref is None or ref.pid <= 0:
        return False
    if ref.boot_id and ref.boot_id != boot_id():
        return False  # recorded before the host rebooted: whatever has that pid is not ours
    fields = _stat_fields(ref.pid)
    start = start_time_in(fields)
    if fields is None or start is None or start != ref.start_time:
        return False
    if fields[0] in ("Z", "X"):
        # A zombie leader whose other threads still run (QEMU, Firecracker just after a
        # signal) still holds the TAP and the sockets: gone only when every thread is.
        try:
            return len(os.listdir(f"/proc/{ref.pid}/task")) > 1
        except OSError:
            return False
    return True


def ref_for(pid: int) -> ProcessRef:
    st = start_time_of(pid)
    if st is None:
        raise EngineError(f"process {pid} exited right after it was started")
    return ProcessRef(pid, st, boot_id() or None)


def cmdline_of(pid: int) -> list[str] | None:
    """The process's argv (None when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def runs_with(ref: ProcessRef, needle: str) -> bool:
    """The live process ``ref`` has ``needle`` (a VM's API socket path) in its argv.

    Checked before vmm signals a VM's process: pid + start time + boot id already make a
    mix-up unlikely, and this makes it impossible to signal a process that is not that VM's
    hypervisor (every engine puts the VM's socket path on its command line)."""
    argv = cmdline_of(ref.pid)
    return argv is not None and any(needle in a for a in argv)


def pid_exists(pid: int) -> bool:
    """Some process has this pid (EPERM means it exists, owned by someone else)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True
