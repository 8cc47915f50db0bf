"""The QEMU engine: ``qemu-system-x86_64 -M microvm`` processes driven over QMP.

Launch spawns QEMU detached (its stderr goes to ``paths.engine_log``) and returns once QMP
answers and the VM runs. Stop asks the guest to power off through the ACPI power button
(QMP ``system_powerdown``), then escalates to SIGTERM and SIGKILL. QEMU itself does nothing on
``system_powerdown`` when the guest ignores the button (no ACPI, or no guest kernel yet): it
only emits a POWERDOWN event, so the escalation is what ends such a VM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vmm.engines.base import BootSpec, Engine, OnSpawn, RunPaths, StopResult
from vmm.engines.qemu.accel import host_tsc_khz, resolve_accel
from vmm.engines.qemu.argv import build_argv
from vmm.engines.qemu.qmp import QmpClient, qmp_execute
from vmm.errors import ConflictError, EngineError, NotFoundError, ValidationError, VmmError, tail
from vmm.host.process import (
    GracefulStep,
    ProcessRef,
    is_alive,
    ref_for,
    spawn_detached,
    start_time_of,
    stop_escalating,
    wait_gone,
)
from vmm.runner import Runner

log = logging.getLogger(__name__)

DEFAULT_BINARY = "qemu-system-x86_64"
INSTALL_HINT = "apt-get install qemu-system-x86"


def tap_exists(name: str) -> bool:
    """Whether a network interface ``name`` exists in this process's network namespace.

    Checked before launch because QEMU running as root *creates* a missing TAP instead of
    failing, which would leave the VM on an unattached device.
    """
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def is_listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _log_since(path: Path, offset: int, lines: int = 15) -> str:
    """The tail of what was appended to ``path`` after ``offset`` (this run's output only)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(offset, f.tell() - 16384))
            return tail(f.read().decode(errors="replace"), lines)
    except FileNotFoundError:
        return ""


def _threads_running(ref: ProcessRef) -> bool:
    """Whether any thread of the process ``ref`` has not exited yet."""
    if start_time_of(ref.pid) != ref.start_time:
        return False
    try:
        tids = os.listdir(f"/proc/{ref.pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            stat_line = Path(f"/proc/{ref.pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat_line[stat_line.rfind(")") + 2 :][:1] not in ("Z", "X"):
            return True
    return False


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class QemuEngine:
    """Runs VMs with ``qemu-system-x86_64 -M microvm``. Collaborators are injectable for tests."""

    name = "qemu"

    def __init__(
        self,
        binary: str | None = None,
        *,
        runner: Runner | None = None,
        resolve: Callable[[str], tuple[str, str]] = resolve_accel,
        tsc_khz: Callable[[], int | None] = host_tsc_khz,
        tap_exists: Callable[[str], bool] = tap_exists,
        ready_timeout: float = 10.0,
        qmp_timeout: float = 2.0,
    ):
        self._binary = binary
        self._runner = runner or Runner()
        self._resolve = resolve
        self._tsc_khz = tsc_khz
        self._tap_exists = tap_exists
        self.ready_timeout = ready_timeout
        self.qmp_timeout = qmp_timeout
        # QEMU children this engine launched, kept so that they are reaped (no zombies in a
        # long-lived caller) and so Popen does not warn "still running" when collected.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- availability ---------------------------------------------------------------------

    def binary_path(self) -> str | None:
        """The QEMU binary to run, or None when it is not installed."""
        name = self._binary or DEFAULT_BINARY
        if os.sep in name:
            return name if os.access(name, os.X_OK) and os.path.isfile(name) else None
        return shutil.which(name)

    def check_available(self) -> None:
        self._require_binary()

    def _require_binary(self) -> str:
        found = self.binary_path()
        if found is None:
            raise VmmError(
                f"QEMU is not installed ({self._binary or DEFAULT_BINARY} not found)",
                hint=INSTALL_HINT,
            )
        return found

    def version(self) -> str | None:
        found = self.binary_path()
        if found is None:
            return None
        try:
            out = self._runner.run([found, "--version"], timeout=15, hint=INSTALL_HINT).stdout
        except VmmError as exc:
            log.debug("qemu --version failed: %s", exc)
            return None
        match = re.search(r"version\s+(\S+)", out)
        first = out.strip().splitlines()[0] if out.strip() else None
        return match.group(1) if match else first

    # -- launch ---------------------------------------------------------------------------

    def launch(self, spec: BootSpec, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """Start QEMU detached and return once QMP reports the VM running.

        ``on_spawn`` gets the process right after it exists, so the caller can record it
        before anything else can go wrong (a killed ``vmm start`` must not leak a QEMU).

        Bad input fails before anything is spawned. If QEMU exits during start-up (a TAP it
        cannot open, an image locked by another VM), the error carries its exit code and the
        tail of its log; if it does not become ready in time it is killed. Either way no
        process and no sockets are left behind.
        """
        binary = self._require_binary()
        accel, reason = self._resolve(spec.accel)
        log.info("%s: accelerator %s (%s)", spec.name, accel, reason)
        tsc_khz = self._tsc_khz() if accel == "tcg" else None
        if accel == "tcg" and tsc_khz is None:
            log.warning("host TSC frequency unknown; guest TSC calibration may hang under TCG")
        argv = build_argv(spec, binary=binary, accel=accel, tsc_khz=tsc_khz)
        self._check_inputs(spec)
        paths = spec.paths
        self._prepare_paths(paths)

        offset = paths.engine_log.stat().st_size if paths.engine_log.exists() else 0
        proc = spawn_detached(argv, log_path=paths.engine_log, vm_name=spec.name)
        try:
            if on_spawn is not None:
                on_spawn(ref_for(proc.pid))
            ref = self._wait_ready(proc, paths, offset, argv)
        except BaseException:
            self._abort(proc, paths)
            raise
        self._children[proc.pid] = proc
        return ref

    def _check_inputs(self, spec: BootSpec) -> None:
        files = [("kernel", spec.kernel)]
        if spec.initrd is not None:
            files.append(("initrd", spec.initrd))
        files += [(f"drive {d.drive_id}", d.path) for d in spec.drives]
        for what, path in files:
            if not path.is_file():
                raise NotFoundError(f"{what} {path} does not exist")
        for nic in spec.nics:
            if not self._tap_exists(nic.tap):
                raise EngineError(
                    f"TAP device {nic.tap} for {nic.iface_id} does not exist",
                    hint="create the TAP before launching the VM",
                )

    def _prepare_paths(self, paths: RunPaths) -> None:
        for path in (paths.engine_log, paths.console_log, paths.api_socket, paths.console_socket):
            path.parent.mkdir(parents=True, exist_ok=True)
        for path in (paths.api_socket, paths.console_socket):
            if path.exists() and not _is_socket(path):
                raise ValidationError(f"{path} exists and is not a socket; refusing to replace it")
            if is_listening(path):
                raise ConflictError(
                    f"another process is serving {path}",
                    hint="is this VM already running?",
                )
        self.cleanup(paths)

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], paths: RunPaths, offset: int, argv: list[str]
    ) -> ProcessRef:
        deadline = time.monotonic() + self.ready_timeout
        start_time: int | None = None
        last_error = "QMP socket not there yet"
        while True:
            returncode = proc.poll()
            if returncode is not None:
                out = _log_since(paths.engine_log, offset)
                last = tail(out, 1)
                raise EngineError(
                    f"QEMU exited during start ({_describe_exit(returncode)})"
                    + (f": {last}" if last else ""),
                    details=f"command: {shlex.join(argv)}\n{out}".rstrip(),
                )
            if start_time is None:
                start_time = start_time_of(proc.pid)
            try:
                with QmpClient(paths.api_socket, timeout=self.qmp_timeout) as qmp:
                    status = qmp.execute("query-status").get("status")
                if status == "running" and start_time is not None:
                    return ProcessRef(proc.pid, start_time)
                last_error = f"VM status is {status!r}"
            except EngineError as exc:
                last_error = exc.brief
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"QEMU did not become ready within {self.ready_timeout:g} s: {last_error}",
                    details=_log_since(paths.engine_log, offset) or None,
                )
            time.sleep(0.05)

    def _abort(self, proc: subprocess.Popen[bytes], paths: RunPaths) -> None:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("QEMU (pid %d) did not exit after SIGKILL", proc.pid)
            return
        self.cleanup(paths)

    # -- running VMs ----------------------------------------------------------------------

    def _forget_if_gone(self, ref: ProcessRef) -> None:
        """Reap our own child if it has exited (a no-op for VMs launched by another process)."""
        proc = self._children.get(ref.pid)
        if proc is not None and proc.poll() is not None:
            del self._children[ref.pid]

    def _settle(self, ref: ProcessRef, timeout: float = 5.0) -> None:
        """Wait until a stopped QEMU has fully exited, and reap it if it is our child.

        ``is_alive`` calls a zombie main thread gone, but QEMU is multi-threaded: its other
        threads (and its open sockets) can outlive the main thread for a moment after a signal.
        """
        proc = self._children.pop(ref.pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._children[ref.pid] = proc
                log.warning("QEMU (pid %d) is still exiting after %g s", ref.pid, timeout)
            return
        deadline = time.monotonic() + timeout
        while _threads_running(ref) and time.monotonic() < deadline:
            time.sleep(0.02)

    def status(self, ref: ProcessRef, paths: RunPaths) -> str | None:
        """QMP's run state ("running", "paused", "shutdown", ...), or None when the process is
        gone or QMP does not answer."""
        if not is_alive(ref):
            self._forget_if_gone(ref)
            return None
        try:
            result = qmp_execute(paths.api_socket, "query-status", timeout=self.qmp_timeout)
        except EngineError as exc:
            log.debug("query-status failed: %s", exc)
            return None
        status = result.get("status") if isinstance(result, dict) else None
        return str(status) if status is not None else None

    def stop(
        self,
        ref: ProcessRef,
        paths: RunPaths,
        *,
        timeout: float,
        guest_steps: Sequence[GracefulStep] = (),
    ) -> StopResult:
        """The ACPI power button, then Ctrl-Alt-Del on the emulated keyboard (the guest reboots,
        and ``-no-reboot`` ends QEMU), then ``guest_steps`` (e.g. ``poweroff`` over SSH), sharing
        ``timeout``; then SIGTERM; then SIGKILL."""

        def powerdown() -> bool:
            qmp_execute(paths.api_socket, "system_powerdown", timeout=self.qmp_timeout)
            return True

        def ctrl_alt_del() -> bool:
            keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
            qmp_execute(paths.api_socket, "send-key", timeout=self.qmp_timeout, keys=keys)
            return True

        steps = [("acpi", powerdown), ("ctrl-alt-del", ctrl_alt_del), *guest_steps]
        how = stop_escalating(ref, steps, timeout=timeout)
        self._settle(ref)
        self.cleanup(paths)
        return StopResult(how)

    guest_stop_command = "poweroff"

    def kill(self, ref: ProcessRef, paths: RunPaths) -> None:
        if is_alive(ref):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, signal.SIGKILL)
            if not wait_gone(ref, 5.0):
                raise EngineError(f"QEMU (pid {ref.pid}) did not exit after SIGKILL")
        self._settle(ref)
        self.cleanup(paths)

    def cleanup(self, paths: RunPaths) -> None:
        """Remove the QMP and console sockets unless a live process still serves them."""
        for path in (paths.api_socket, paths.console_socket):
            if not _is_socket(path):
                continue
            if is_listening(path):
                log.warning("not removing %s: a process still serves it", path)
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


if TYPE_CHECKING:
    _conforms: Engine = QemuEngine()
