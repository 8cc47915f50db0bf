"""The QEMU engine: ``qemu-system-x86_64 -M microvm`` processes driven over QMP.

The lifecycle is ``engines.managed``'s; this module fills in its stages. Launch spawns QEMU
detached (its stderr goes to ``paths.engine_log``, the serial console to ``paths.console_log``
and to the console socket) and returns once QMP answers and the VM runs. Stop asks the guest to power off through the ACPI power button
(QMP ``system_powerdown``), then escalates to SIGTERM and SIGKILL. QEMU itself does nothing on
``system_powerdown`` when the guest ignores the button (no ACPI, or no guest kernel yet): it
only emits a POWERDOWN event, so the escalation is what ends such a VM.

Snapshots (``engines.qemu.migrate``): ``pause``/``resume`` are QMP ``stop``/``cont``;
``save_state`` migrates the paused VM into ``vmstate``; ``restore`` launches the identical
command line plus ``-incoming defer`` and loads that file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vmm.engines import qemu as facts
from vmm.engines.base import BootSpec, RunPaths, Snapshotting
from vmm.engines.managed import Launch, LaunchError, ManagedEngine, file_size
from vmm.engines.qemu import migrate
from vmm.engines.qemu.accel import host_tsc_khz, resolve_accel
from vmm.engines.qemu.argv import build_argv, check_socket_path
from vmm.engines.qemu.qmp import QmpClient, qmp_execute
from vmm.errors import (
    ConflictError,
    EngineError,
    NotFoundError,
    ValidationError,
    VmmError,
    tail,
)
from vmm.host.process import (
    NOT_A_SOCKET,
    GracefulStep,
    ProcessRef,
    describe_exit,
    is_alive,
    log_tail,
    reap,
)
from vmm.log import get_logger
from vmm.runner import Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmm.config import Config

log = get_logger(__name__)

DEFAULT_BINARY = "qemu-system-x86_64"
INSTALL_HINT = facts.INSTALL_HINT


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


class QemuEngine(ManagedEngine):
    """Runs VMs with ``qemu-system-x86_64 -M microvm``. Collaborators are injectable for tests."""

    name = "qemu"
    label = "QEMU"
    install_hint = INSTALL_HINT
    guest_stop_command = "poweroff"
    poll_interval = 0.05
    state_timeout = 600.0  # saving or loading a VM's state, at most

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
        self.probe_timeout = qmp_timeout

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

    # -- what it serves -------------------------------------------------------------------

    def check_paths(self, paths: RunPaths) -> None:
        check_socket_path(paths.api_socket, "QMP socket")
        check_socket_path(paths.console_socket, "console socket")

    def sockets(self, paths: RunPaths) -> tuple[Path, ...]:
        return (paths.api_socket, paths.console_socket)

    def console_socket(self, paths: RunPaths) -> Path | None:
        return paths.console_socket

    def live_state(self, paths: RunPaths, *, timeout: float = 2.0) -> str | None:
        """QMP's run state ("running", "paused", "shutdown", ...)."""
        try:
            result = qmp_execute(paths.api_socket, "query-status", timeout=timeout)
        except EngineError as exc:
            log.debug("query-status failed: %s", exc)
            return None
        status = result.get("status") if isinstance(result, dict) else None
        return str(status) if status is not None else None

    def status(self, ref: ProcessRef, paths: RunPaths) -> str | None:
        """``live_state`` of the VM whose process is ``ref``; None when the process is gone."""
        if not is_alive(ref):
            reap(ref.pid)
            return None
        return self.live_state(paths, timeout=self.qmp_timeout)

    # -- the managed stages ---------------------------------------------------------------

    def _prepare(self, spec: BootSpec, restore_from: Path | None = None) -> Launch:
        """Bad input fails before anything is spawned: the binary, the accelerator, the
        argv's own checks, the files, the TAPs (QEMU as root would create a missing one).
        With ``restore_from`` the same command line waits for a state to load."""
        binary = self._require_binary()
        accel, reason = self._resolve(spec.accel)
        log.info("%s: accelerator %s (%s)", spec.name, accel, reason)
        tsc_khz = self._tsc_khz() if accel == "tcg" else None
        if accel == "tcg" and tsc_khz is None:
            log.warning("host TSC frequency unknown; guest TSC calibration may hang under TCG")
        argv = build_argv(spec, binary=binary, accel=accel, tsc_khz=tsc_khz)
        if restore_from is not None:
            state = restore_from / migrate.STATE_FILE
            if not state.is_file():
                raise NotFoundError(f"saved VM state {state} does not exist")
            argv += ["-incoming", "defer"]
        self._check_inputs(spec)
        paths = spec.paths
        self._make_dirs(paths)
        self._claim_sockets(paths)
        return Launch(
            spec=spec,
            argv=argv,
            log_path=paths.engine_log,
            log_offset=file_size(paths.engine_log),
            restore_from=restore_from,
        )

    def _prepare_restore(self, spec: BootSpec, state_dir: Path) -> Launch:
        return self._prepare(spec, state_dir)

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

    def _probe_ready(self, launch: Launch, timeout: float) -> str | None:
        try:
            with QmpClient(launch.spec.paths.api_socket, timeout=timeout) as qmp:
                status = qmp.execute("query-status").get("status")
        except EngineError as exc:
            return exc.brief
        want = "inmigrate" if launch.restore_from is not None else "running"
        return None if status == want else f"VM status is {status!r}"

    def _configure(self, launch: Launch) -> None:
        if launch.restore_from is None:
            return
        try:
            migrate.load(
                launch.spec.paths.api_socket,
                launch.restore_from / migrate.STATE_FILE,
                qmp_timeout=self.qmp_timeout,
                timeout=self.state_timeout,
            )
        except EngineError as exc:
            # A failed load ends QEMU 7.2; its reason is on stderr (the engine log).
            time.sleep(0.2)  # let it finish writing before the tail is read
            output = log_tail(launch.log_path, offset=launch.log_offset)
            last = tail(output, 1)
            raise LaunchError(
                "QEMU could not restore the VM's saved state: " + (last or exc.brief),
                argv=launch.argv,
                log_tail=output,
                details=output or exc.details,
            ) from exc

    # -- snapshots ------------------------------------------------------------------------

    state_files: tuple[str, ...] = (migrate.STATE_FILE,)

    def pause(self, paths: RunPaths) -> None:
        qmp_execute(paths.api_socket, "stop", timeout=self.qmp_timeout)

    def resume(self, paths: RunPaths) -> None:
        qmp_execute(paths.api_socket, "cont", timeout=self.qmp_timeout)

    def save_state(self, paths: RunPaths, dest: Path) -> None:
        migrate.save(
            paths.api_socket,
            dest / migrate.STATE_FILE,
            qmp_timeout=self.qmp_timeout,
            timeout=self.state_timeout,
        )

    def _exit_error(self, launch: Launch, returncode: int, output: str) -> LaunchError:
        last = tail(output, 1)
        return LaunchError(
            f"QEMU exited during start ({describe_exit(returncode)})"
            + (f": {last}" if last else ""),
            argv=launch.argv,
            returncode=returncode,
            log_tail=output,
            details=f"command: {shlex.join(launch.argv)}\n{output}".rstrip(),
        )

    def _timeout_error(self, launch: Launch, why: str, output: str) -> LaunchError:
        return LaunchError(
            f"QEMU did not become ready within {self.ready_timeout:g} s: {why}",
            argv=launch.argv,
            log_tail=output,
            details=output or None,
        )

    def _graceful_steps(self, paths: RunPaths, timeout: float) -> list[GracefulStep]:
        """The ACPI power button, then Ctrl-Alt-Del on the emulated keyboard (the guest
        reboots, and ``-no-reboot`` ends QEMU)."""

        def powerdown() -> bool:
            qmp_execute(paths.api_socket, "system_powerdown", timeout=self.qmp_timeout)
            return True

        def ctrl_alt_del() -> bool:
            keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
            qmp_execute(paths.api_socket, "send-key", timeout=self.qmp_timeout, keys=keys)
            return True

        return [("acpi", powerdown), ("ctrl-alt-del", ctrl_alt_del)]

    def _socket_error(self, path: Path, state: str) -> VmmError:
        if state == NOT_A_SOCKET:
            return ValidationError(f"{path} exists and is not a socket; refusing to replace it")
        return ConflictError(
            f"another process is serving {path}", hint="is this VM already running?"
        )


if TYPE_CHECKING:
    _conforms: Snapshotting = QemuEngine()


def from_config(cfg: Config) -> QemuEngine:
    """The registry's factory (``vmm.engines.registry``)."""
    return QemuEngine(cfg.qemu_bin)
