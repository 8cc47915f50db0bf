"""What both engines share: a hypervisor process that vmm spawns detached, waits for, stops
and cleans up after. An engine fills in four stages; the base runs them in order:

1. **pre-launch** (``_prepare``, the engine's): validate the spec, the binary and the host
   files, create the directories, claim the engine's sockets (``_claim_sockets``: a stale one
   is removed, a live one or a file that is not a socket is refused); return the argv and the
   file the process's output goes to. Nothing is spawned unless all of it succeeded.
2. **spawn** (the base's): ``spawn_detached``, then the caller's ``on_spawn`` at once, so a
   caller killed from here on leaves a record that names the process.
3. **wait-ready**: the base polls the engine's ``_probe_ready`` until it reports ready, and
   fails with a ``LaunchError`` (exit status, argv, this run's log tail) when the process
   exits first or the time runs out; then ``_configure`` (Firecracker's API calls). A failure
   at any point kills and reaps the process and removes its sockets.
4. **post-shutdown**: ``stop`` (the engine's ``_graceful_steps``, the caller's guest steps,
   SIGTERM, SIGKILL) and ``kill`` wait until every thread of the process has exited (only then
   are its sockets closed), reap it if it is our child, and remove the sockets nobody serves.

An engine with the registry's SNAPSHOT capability also fills in ``pause``, ``resume`` and
``save_state`` (a paused VM's memory and device state written into a directory), and
``_prepare_restore``: ``restore`` runs the same lifecycle as ``launch`` on a fresh process that
loads such a directory instead of booting (``Launch.restore_from`` tells the readiness probe and
``_configure`` which one is under way). A failed restore kills its process like a failed launch
and leaves the state directory as it was.

Sockets have one meaning everywhere (``host.process.socket_state``): a socket that might be
served (even one that does not answer in time) is never removed; the engine only chooses the
words of the error (``_socket_error``).

Engines hold no per-VM state: one object can serve any number of VMs for as long as the
caller keeps it (the children a process spawned are tracked by ``host.process``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vmm.engines.base import BootSpec, OnSpawn, RunPaths, StopResult
from vmm.errors import EngineError, VmmError
from vmm.host.process import (
    ABSENT,
    STALE,
    GracefulStep,
    ProcessRef,
    is_alive,
    log_tail,
    reap,
    ref_for,
    socket_state,
    spawn_detached,
    stop_escalating,
    wait_gone,
)
from vmm.log import get_logger
from vmm.record import Record

log = get_logger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0


class LaunchError(EngineError):
    """The hypervisor exited, or did not become ready, while it was being launched.

    ``returncode`` is its exit status (``Popen`` style: negative for a signal), None when it was
    still running (and has been killed since); ``argv`` what was spawned; ``log_tail`` the end
    of what this run wrote to its log."""

    def __init__(
        self,
        brief: str,
        *,
        argv: Sequence[str],
        returncode: int | None = None,
        log_tail: str = "",
        details: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(brief, details=details, hint=hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.log_tail = log_tail


class Launch(Record):
    """One launch under way: what pre-launch decided (engines subclass it to add their own)."""

    spec: BootSpec
    argv: list[str]
    log_path: Path  # where the process's stdout and stderr go
    log_offset: int  # its size before the spawn: this run's output starts there
    restore_from: Path | None = None  # a ``save_state`` directory the process loads (restore)


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class ManagedEngine:
    """The lifecycle of ``engines.base.Engine`` on top of the hooks below."""

    name: str
    label: str  # how messages name the hypervisor ("firecracker", "QEMU")
    install_hint: str  # how to get the hypervisor's binary
    guest_stop_command: str
    ready_timeout: float = 10.0  # spawn -> ready
    probe_timeout: float = 1.0  # at most, for one readiness probe
    poll_interval: float = 0.05  # between readiness probes
    term_timeout: float = 5.0  # SIGTERM -> SIGKILL

    # -- what the engine says about itself ----------------------------------------------------

    def check_available(self) -> None:
        raise NotImplementedError

    def check_paths(self, paths: RunPaths) -> None:
        raise NotImplementedError

    def sockets(self, paths: RunPaths) -> tuple[Path, ...]:
        raise NotImplementedError

    def console_socket(self, paths: RunPaths) -> Path | None:
        return None

    def live_state(self, paths: RunPaths, *, timeout: float = 2.0) -> str | None:
        raise NotImplementedError

    # -- the stages the engine fills in -------------------------------------------------------

    def _prepare(self, spec: BootSpec) -> Launch:
        """Pre-launch: everything up to the spawn (see the module docstring)."""
        raise NotImplementedError

    def _probe_ready(self, launch: Launch, timeout: float) -> str | None:
        """None when the process is ready, else why not (for the timeout's message)."""
        raise NotImplementedError

    def _configure(self, launch: Launch) -> None:
        """After ready, before ``launch`` returns (nothing by default)."""

    def _prepare_restore(self, spec: BootSpec, state_dir: Path) -> Launch:
        """Pre-launch of a restore: like ``_prepare``, for a process that loads ``state_dir``
        (a ``save_state`` directory) instead of booting (``Launch.restore_from``)."""
        raise EngineError(f"{self.label} cannot restore a saved VM state")

    # -- snapshots (engines with the registry's SNAPSHOT capability) ---------------------------

    # The files ``save_state`` writes into its directory (what a caller copies or links).
    state_files: tuple[str, ...] = ()

    def pause(self, paths: RunPaths) -> None:
        """Stop the guest's vCPUs (the process stays); in-flight disk writes are completed."""
        raise EngineError(f"{self.label} cannot pause a VM")

    def resume(self, paths: RunPaths) -> None:
        """Let a paused guest run again."""
        raise EngineError(f"{self.label} cannot resume a VM")

    def save_state(self, paths: RunPaths, dest: Path) -> None:
        """Write the paused VM's memory and device state into the existing directory ``dest``
        (``state_files``: new files, 0600, sparse); the VM stays paused. Disks are not part of
        it. On failure no file of ``state_files`` is left in ``dest``."""
        raise EngineError(f"{self.label} cannot save a VM's state")

    def _exit_error(self, launch: Launch, returncode: int, output: str) -> LaunchError:
        """The error for a process that exited during the launch (``output``: its log tail)."""
        raise NotImplementedError

    def _timeout_error(self, launch: Launch, why: str, output: str) -> LaunchError:
        """The error for a process that did not become ready within ``ready_timeout``."""
        raise NotImplementedError

    def _graceful_steps(self, paths: RunPaths, timeout: float) -> list[GracefulStep]:
        """The engine's own polite ways to end the VM, tried before the caller's."""
        return []

    def _socket_error(self, path: Path, state: str) -> VmmError:
        """The error for one of our socket paths that is ``LIVE`` or ``NOT_A_SOCKET``."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------

    def launch(self, spec: BootSpec, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """Pre-launch, spawn, wait until ready, configure; return the running process.

        ``on_spawn`` gets the process right after it exists (see ``Engine.launch``)."""
        return self._run(self._prepare(spec), on_spawn)

    def restore(self, spec: BootSpec, state_dir: Path, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """A fresh process for ``spec`` that loads ``state_dir`` (written by ``save_state``
        with the same spec) and runs the guest from there. Same stages and the same undoing
        as ``launch``; ``state_dir`` is only read."""
        return self._run(self._prepare_restore(spec, state_dir), on_spawn)

    def _run(self, launch: Launch, on_spawn: OnSpawn | None) -> ProcessRef:
        """Spawn, wait until ready, configure (the stages after pre-launch)."""
        spec = launch.spec
        proc = spawn_detached(
            launch.argv, log_path=launch.log_path, vm_name=spec.name, hint=self.install_hint
        )
        try:
            ref = ref_for(proc.pid)
            if on_spawn is not None:
                on_spawn(ref)
            self._wait_ready(proc, launch)
            self._configure(launch)
        except BaseException:
            self._abort(proc, spec.paths)
            raise
        log.info("%s %s %s (pid %d)", self.name, "restored" if launch.restore_from else "started",
                 spec.name, ref.pid)
        return ref

    def stop(
        self,
        ref: ProcessRef,
        paths: RunPaths,
        *,
        timeout: float = DEFAULT_STOP_TIMEOUT,
        guest_steps: Sequence[GracefulStep] = (),
    ) -> StopResult:
        """The engine's graceful steps, then ``guest_steps`` (the caller's way in, e.g. over
        SSH), sharing ``timeout``; then SIGTERM; then SIGKILL. Removes the sockets."""
        steps = [*self._graceful_steps(paths, timeout), *guest_steps]
        how = stop_escalating(ref, steps, timeout=timeout, term_timeout=self.term_timeout)
        self._after_exit(ref, paths)
        return StopResult(how)

    def kill(self, ref: ProcessRef, paths: RunPaths) -> None:
        """SIGKILL at once (used to undo a failed start), then remove the sockets."""
        if is_alive(ref):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, signal.SIGKILL)
            if not wait_gone(ref, 5.0):
                raise EngineError(f"{self.label} (pid {ref.pid}) did not exit after SIGKILL")
        self._after_exit(ref, paths)

    def cleanup(self, paths: RunPaths) -> None:
        """Remove the engine's sockets that nobody serves; leave (and log) any other file."""
        for path in self.sockets(paths):
            state = socket_state(path)
            if state == STALE:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                log.debug("removed stale socket %s", path)
            elif state != ABSENT:
                log.warning("leaving %s in place: %s", path, self._socket_error(path, state))

    # -- internals ----------------------------------------------------------------------------

    def _make_dirs(self, paths: RunPaths) -> None:
        dirs = {paths.vm_dir, paths.console_log.parent, paths.engine_log.parent}
        dirs.update(path.parent for path in self.sockets(paths))
        for directory in dirs:
            directory.mkdir(parents=True, exist_ok=True)

    def _claim_sockets(self, paths: RunPaths) -> None:
        """Make way for the new process's sockets: all are checked before any is removed."""
        states = [(path, socket_state(path)) for path in self.sockets(paths)]
        for path, state in states:
            if state not in (ABSENT, STALE):
                raise self._socket_error(path, state)
        for path, state in states:
            if state == STALE:
                path.unlink(missing_ok=True)
                log.debug("removed stale socket %s", path)

    def _wait_ready(self, proc: subprocess.Popen[bytes], launch: Launch) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            returncode = proc.poll()
            if returncode is not None:
                output = log_tail(launch.log_path, offset=launch.log_offset)
                raise self._exit_error(launch, returncode, output)
            remaining = deadline - time.monotonic()
            why = self._probe_ready(launch, max(0.1, min(self.probe_timeout, remaining)))
            if why is None:
                return
            if time.monotonic() >= deadline:
                output = log_tail(launch.log_path, offset=launch.log_offset)
                raise self._timeout_error(launch, why, output)
            time.sleep(self.poll_interval)

    def _abort(self, proc: subprocess.Popen[bytes], paths: RunPaths) -> None:
        """Undo a failed launch: kill and reap the process, remove its sockets."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not exit after SIGKILL", self.label, proc.pid)
        reap(proc.pid)
        self.cleanup(paths)

    def _after_exit(self, ref: ProcessRef, paths: RunPaths) -> None:
        """Post-shutdown: ``is_alive`` turns False only once every thread has exited, and so
        closed the sockets; then they can be told stale and removed."""
        if not wait_gone(ref, 5.0):
            log.warning("%s (pid %d) is still exiting after 5 s", self.label, ref.pid)
        self.cleanup(paths)
