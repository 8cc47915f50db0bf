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


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def start_time_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def is_alive(ref: ProcessRef | None) -> bool:
    """True when the process exists, is not a zombie and is the one we started."""
    if ref is None or ref.pid <= 0:
        return False
    fields = _stat_fields(ref.pid)
    if fields is None or len(fields) < 20:
        return False
    if int(fields[19]) != ref.start_time:
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
    return ProcessRef(pid, st)
