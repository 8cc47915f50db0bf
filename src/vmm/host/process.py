"""VM processes: spawn detached, observe liveness, stop with escalation, their sockets.

Liveness is observed, never remembered: a pid is ours only while ``/proc/<pid>/stat`` shows the
same start time we recorded (pids get reused), and a zombie counts as gone. Reading
``/proc/<pid>/stat`` works for non-root users too, so ``vmm list`` needs no privileges.

The hypervisors this process spawned are kept in one process-wide table until they are reaped,
whichever engine object spawned them: an engine may be rebuilt at every call or live as long
as a server does, and either way its children neither linger as zombies nor make ``Popen``
warn that they are "still running" when collected.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vmm.errors import EngineError, ToolMissing, tail
from vmm.host.liveness import ProcessRef, is_alive, ref_for, start_time_of
from vmm.log import get_logger

__all__ = ["GracefulStep", "ProcessRef", "describe_exit", "is_alive", "log_tail", "reap",
           "ref_for", "socket_is_live", "socket_state", "spawn_detached", "start_time_of",
           "stop_escalating", "wait_gone"]

log = get_logger(__name__)

# Hypervisors this process spawned and has not reaped yet, by pid (see the module docstring).
_children: dict[int, subprocess.Popen[bytes]] = {}


def systemd_is_init(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """systemd runs the host (PID 1): what ``sd_booted()`` checks."""
    return run_dir.is_dir()


def in_own_scope(argv: Sequence[str], *, vm_name: str, systemd_run: str | None) -> list[str]:
    """``argv`` started in a transient scope of its own, in ``vmm.slice`` (pure).

    Without it a VM started from a login session lives in that session's cgroup, and the end of
    the session (logind's KillUserProcesses, or a stop of the unit that ran ``vmm start``) kills
    it with no shutdown. ``Before=vmm.service`` orders the scopes so that at host shutdown
    ``vmm autostop`` (vmm.service's ExecStop) shuts the guests down before systemd signals
    what is left. ``systemd-run --scope`` execs the command, so the pid is the hypervisor's."""
    if systemd_run is None:
        return list(argv)
    return [
        systemd_run, "--scope", "--quiet", "--collect", "--slice=vmm.slice",
        f"--description=vmm VM {vm_name}", "--property=Before=vmm.service", "--", *argv,
    ]  # fmt: skip


def spawn_detached(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    vm_name: str | None = None,
    hint: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a hypervisor that outlives this command (``hint``: how to install it).

    Own session (no signals from the user's terminal), stdin from /dev/null (Firecracker sets
    O_NONBLOCK on and raw-modes its stdin), stdout and stderr appended to the VM's log. With
    ``vm_name`` on a host that systemd runs, in its own scope (``in_own_scope``).
    """
    if vm_name is not None and systemd_is_init():
        import shutil

        argv = in_own_scope(argv, vm_name=vm_name, systemd_run=shutil.which("systemd-run"))
    log.debug("spawn: %s", " ".join(argv))
    reap_exited()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the guest's console output: root's alone (also an older log)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    except FileNotFoundError:
        raise ToolMissing(argv[0], hint=hint) from None
    finally:
        os.close(fd)
    _children[proc.pid] = proc
    return proc


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is an exited child of this process (a no-op for
    any other process: VMs started by an earlier command are not our children)."""
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def reap_exited() -> None:
    """Reap every child this process spawned that has exited since."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def describe_exit(returncode: int) -> str:
    """``exit code 1``, ``killed by SIGKILL``: how a process ended, from ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def wait_gone(ref: ProcessRef, timeout: float, *, poll: float = 0.05) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit; reap it if it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        reap(ref.pid)
        if not is_alive(ref):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _signal(ref: ProcessRef, sig: int) -> None:
    if not is_alive(ref):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(ref.pid, sig)


GracefulStep = tuple[str, Callable[[], bool]]
"""A polite way to end a guest: its name (what ``stop`` reports) and a function that sends it
and returns False when it could not be delivered (a dead socket, no SSH)."""


def stop_escalating(
    ref: ProcessRef,
    steps: Sequence[GracefulStep],
    *,
    timeout: float,
    term_timeout: float = 5.0,
) -> str:
    """Each graceful step in turn, then SIGTERM, then SIGKILL. Returns the name of the step that
    ended the process ("sigterm", "sigkill", or "already-stopped").

    The graceful steps share ``timeout``: the first gets half (a clean shutdown of a busy guest
    takes time), each later one an equal part of what is left. A guest that ignores one way
    (no ACPI button driver, Ctrl-Alt-Del masked) gets the next. Once any step was delivered,
    later steps that cannot be delivered still wait their share (sshd is gone when the guest
    is already shutting down), so a shutdown in progress is never cut short by a signal
    before ``timeout``. The whole stop is bounded by ``timeout + term_timeout + 5`` seconds.
    """
    if not is_alive(ref):
        return "already-stopped"
    deadline = time.monotonic() + timeout
    delivered_any = False
    for i, (name, send) in enumerate(steps):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        share = remaining / 2 if i == 0 and len(steps) > 1 else remaining / (len(steps) - i)
        delivered = False
        try:
            delivered = send()
        except Exception as exc:  # a dead API socket or an unreachable guest must not block the stop
            log.debug("%s could not be delivered: %s", name, exc)
        delivered_any = delivered_any or delivered
        if delivered_any and wait_gone(ref, max(0.0, min(share, deadline - time.monotonic()))):
            return name
    _signal(ref, signal.SIGTERM)
    if wait_gone(ref, term_timeout):
        return "sigterm"
    _signal(ref, signal.SIGKILL)
    if wait_gone(ref, 5.0):
        return "sigkill"
    raise EngineError(f"process {ref.pid} did not exit after SIGKILL")


def log_tail(path: Path, lines: int = 15, *, offset: int = 0) -> str:
    """The last ``lines`` non-empty lines of ``path`` (of its last 16 KiB), counting only what
    was written after ``offset`` (the size it had before this run: its output alone)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(offset, f.tell() - 16384))
            return tail(f.read().decode(errors="replace"), lines)
    except FileNotFoundError:
        return ""


# -- the hypervisors' Unix sockets -------------------------------------------------------------

ABSENT, STALE, LIVE, NOT_A_SOCKET = "absent", "stale", "live", "not-a-socket"


def socket_is_live(path: Path, *, timeout: float = 1.0) -> bool:
    """True when some process may be serving the Unix socket ``path``: the connection was
    accepted, or the attempt timed out or met a full backlog (a busy listener exists). Only a
    refusal (nobody listens) or a missing file is False. Both engines and ``vmm doctor`` use
    this one meaning: a socket that might be served is never removed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # timeout, full backlog (EAGAIN), no permission: a listener may exist
    finally:
        sock.close()
    return True


def socket_state(path: Path) -> str:
    """``ABSENT``, ``STALE`` (a socket file nobody listens on: what a killed hypervisor
    leaves), ``LIVE`` (``socket_is_live``) or ``NOT_A_SOCKET`` (some other file: never ours
    to remove)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(mode):
        return NOT_A_SOCKET
    return LIVE if socket_is_live(path) else STALE
