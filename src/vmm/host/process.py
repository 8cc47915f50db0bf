"""VM processes: spawn detached, observe liveness, stop with escalation.

Liveness is observed, never remembered: a pid is ours only while ``/proc/<pid>/stat`` shows the
same start time we recorded (pids get reused), and a zombie counts as gone. Reading
``/proc/<pid>/stat`` works for non-root users too, so ``vmm list`` needs no privileges.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import EngineError, tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRef:
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
    if fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == ref.start_time


def ref_for(pid: int) -> ProcessRef:
    st = start_time_of(pid)
    if st is None:
        raise EngineError(f"process {pid} exited right after it was started")
    return ProcessRef(pid, st)


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a hypervisor that outlives this command.

    Own session (no signals from the user's terminal), stdin from /dev/null (Firecracker sets
    O_NONBLOCK on and raw-modes its stdin), stdout and stderr appended to the VM's log.
    """
    log.debug("spawn: %s", " ".join(argv))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    except FileNotFoundError:
        raise EngineError(f"{argv[0]} is not installed") from None
    finally:
        os.close(fd)


def wait_gone(ref: ProcessRef, timeout: float, *, poll: float = 0.05) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit; reap it if it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(ref.pid)
        if not is_alive(ref):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(ref: ProcessRef, sig: int) -> None:
    if not is_alive(ref):
        return
    try:
        os.kill(ref.pid, sig)
    except ProcessLookupError:
        pass


def stop_escalating(
    ref: ProcessRef,
    graceful: Callable[[], bool] | None,
    *,
    timeout: float,
    term_timeout: float = 5.0,
) -> str:
    """Graceful request, wait; SIGTERM, wait; SIGKILL, wait. Returns which step ended it.

    ``graceful`` sends the engine's polite shutdown and returns False when it could not be
    delivered (then we go straight to SIGTERM).
    """
    if not is_alive(ref):
        return "already-stopped"
    if graceful is not None:
        delivered = False
        try:
            delivered = graceful()
        except Exception as exc:  # a dead API socket must not prevent the stop
            log.debug("graceful shutdown request failed: %s", exc)
        if delivered and wait_gone(ref, timeout):
            return "graceful"
    _signal(ref, signal.SIGTERM)
    if wait_gone(ref, term_timeout):
        return "sigterm"
    _signal(ref, signal.SIGKILL)
    if wait_gone(ref, 5.0):
        return "sigkill"
    raise EngineError(f"process {ref.pid} did not exit after SIGKILL")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            return tail(f.read().decode(errors="replace"), lines)
    except FileNotFoundError:
        return ""
