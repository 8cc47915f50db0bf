"""The Firecracker v1.11 engine: spawn the process, configure it over its API, stop it.

``launch`` builds and validates every request before anything changes on the host, then:
removes a stale API socket (Firecracker never deletes its own, and a leftover file makes the
next start fail with AddrInUse), creates the engine log (v1.11 refuses a missing one), spawns
``firecracker --api-sock S --id ID`` detached with the serial console (its stdout) in the
console log, waits until ``GET /`` answers, sends the configuration, InstanceStart, and checks
the state is "Running". Any failure kills the process and removes the socket.

``stop`` is SendCtrlAltDel (the guest reboots with ``reboot=k`` and Firecracker exits 0), then
the caller's guest steps (``reboot`` over SSH), then SIGTERM (Firecracker has no handler for
it: immediate death), then SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vmm.engines.base import BootSpec, OnSpawn, RunPaths, StopResult
from vmm.engines.firecracker.api import DEFAULT_REQUEST_TIMEOUT, ApiUnreachable, FirecrackerApi
from vmm.engines.firecracker.bodies import (
    LogLevel,
    boot_requests,
    send_ctrl_alt_del_request,
)
from vmm.errors import ConflictError, EngineError, ValidationError, VmmError
from vmm.host.process import (
    GracefulStep,
    ProcessRef,
    is_alive,
    log_tail,
    ref_for,
    spawn_detached,
    stop_escalating,
    wait_gone,
)
from vmm.runner import Runner

log = logging.getLogger(__name__)

FALLBACK_BINARY = "/usr/local/bin/firecracker"
INSTALL_HINT = (
    "install it with scripts/install.sh (Firecracker v1.11.0), set firecracker_bin in the "
    "config, or use --engine qemu"
)
DEFAULT_STOP_TIMEOUT = 30.0
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
_POLL = 0.01  # readiness poll interval, as the Go SDK does
_VERSION_RE = re.compile(r"Firecracker v(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)")


def parse_version(output: str) -> str | None:
    """``Firecracker v1.11.0`` -> ``1.11.0``."""
    m = _VERSION_RE.search(output)
    return m.group(1) if m else None


class FirecrackerEngine:
    """Runs VMs with Firecracker. ``binary`` is the configured ``firecracker_bin``, if any."""

    name = "firecracker"

    def __init__(
        self,
        binary: str | None = None,
        *,
        socket_timeout: float = 5.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        term_timeout: float = 5.0,
        log_level: LogLevel = "Info",
        runner: Runner | None = None,
    ):
        self._binary = binary
        self.socket_timeout = socket_timeout
        self.request_timeout = request_timeout
        self.term_timeout = term_timeout
        self.log_level: LogLevel = log_level
        self.runner = runner or Runner()

    # -- discovery ------------------------------------------------------------------------------

    @property
    def binary(self) -> str:
        """The configured binary, else ``firecracker`` on PATH, else /usr/local/bin/firecracker."""
        if self._binary:
            if os.sep in self._binary:
                return self._binary
            return shutil.which(self._binary) or self._binary
        return shutil.which("firecracker") or FALLBACK_BINARY

    def check_available(self) -> None:
        path = self.binary
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise VmmError(
                "firecracker binary not found", details=f"looked for {path}", hint=INSTALL_HINT
            )

    def version(self) -> str | None:
        """The version ``firecracker --version`` reports, or None when it is not installed."""
        try:
            self.check_available()
        except VmmError:
            return None
        result = self.runner.run([self.binary, "--version"], timeout=10.0, hint=INSTALL_HINT)
        version = parse_version(result.stdout)
        if version is None:
            raise EngineError(
                f"unexpected output from {self.binary} --version",
                details=result.stdout.strip() or result.stderr.strip(),
            )
        return version

    def api(self, paths: RunPaths) -> FirecrackerApi:
        """A client for the API of the VM whose files are ``paths``."""
        return FirecrackerApi(paths.api_socket, timeout=self.request_timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    def launch(self, spec: BootSpec, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """Spawn Firecracker, configure and start the VM; return once it is Running.

        ``on_spawn`` gets the process right after it exists (see ``Engine.launch``)."""
        requests = boot_requests(spec, log_level=self.log_level)  # validates, touches nothing
        paths = spec.paths
        check_socket_path(paths.api_socket)
        self.check_available()
        for directory in {paths.vm_dir, paths.api_socket.parent, paths.console_log.parent}:
            directory.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(paths.api_socket)
        prepare_log_file(paths.engine_log)

        argv = [self.binary, "--api-sock", str(paths.api_socket), "--id", spec.vm_id]
        proc = spawn_detached(argv, log_path=paths.console_log, vm_name=spec.name)
        api = self.api(paths)
        try:
            ref = ref_for(proc.pid)
            if on_spawn is not None:
                on_spawn(ref)
            self._wait_for_api(proc, api, paths)
            for req in requests:
                api.send(req)
            state = api.instance_info().get("state")
            if state != "Running":
                raise EngineError(
                    f"firecracker reports state {state!r} after InstanceStart, not 'Running'",
                    details=log_tail(paths.console_log) or None,
                )
        except BaseException:
            self._abort(proc, paths)
            raise
        log.info("firecracker started %s (pid %d)", spec.vm_id, ref.pid)
        return ref

    def stop(
        self,
        ref: ProcessRef,
        paths: RunPaths,
        *,
        timeout: float = DEFAULT_STOP_TIMEOUT,
        guest_steps: Sequence[GracefulStep] = (),
    ) -> StopResult:
        """SendCtrlAltDel (the guest reboots, and with ``reboot=k`` Firecracker exits), then
        ``guest_steps`` (the caller's way in, e.g. ``reboot`` over SSH), sharing ``timeout``;
        then SIGTERM; then SIGKILL. Removes the socket."""
        api = self.api(paths)

        def ctrl_alt_del() -> bool:
            try:
                api.send(send_ctrl_alt_del_request(), timeout=min(self.request_timeout, timeout))
            except ApiUnreachable as exc:
                # A reset or a late answer does not mean it was not taken: the guest may
                # already be rebooting, and Firecracker exits right after. Wait and see.
                log.debug("SendCtrlAltDel: %s; waiting for the VM to exit anyway", exc)
                return paths.api_socket.exists()  # no socket at all: nothing was sent
            return True

        steps = [("ctrl-alt-del", ctrl_alt_del), *guest_steps]
        how = stop_escalating(ref, steps, timeout=timeout, term_timeout=self.term_timeout)
        self._release_socket(paths)
        return StopResult(how=how)

    # On x86 Firecracker has no power-off device: a guest ``poweroff`` halts the vCPUs and the
    # process stays; ``reboot`` (with reboot=k) ends it.
    guest_stop_command = "reboot"

    def kill(self, ref: ProcessRef, paths: RunPaths) -> None:
        """SIGKILL at once (SIGTERM would be no gentler: Firecracker does not handle it)."""
        if is_alive(ref):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, signal.SIGKILL)
        if not wait_gone(ref, 5.0):
            raise EngineError(f"firecracker (pid {ref.pid}) did not exit after SIGKILL")
        self._release_socket(paths)

    def cleanup(self, paths: RunPaths) -> None:
        """Remove the API socket unless a live process still answers on it."""
        try:
            remove_stale_socket(paths.api_socket)
        except VmmError as exc:
            log.warning("leaving %s in place: %s", paths.api_socket, exc)

    # -- internals ------------------------------------------------------------------------------

    def _release_socket(self, paths: RunPaths, *, timeout: float = 2.0) -> None:
        """Remove the socket of a process that was just seen gone.

        The thread-group leader turns zombie (what ``is_alive`` sees) while the other threads
        are still being torn down and the listening socket is not closed yet, so a live-looking
        socket gets a short grace period before we leave it alone.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                remove_stale_socket(paths.api_socket)
                return
            except ConflictError as exc:
                if time.monotonic() >= deadline:
                    log.warning("leaving %s in place: %s", paths.api_socket, exc)
                    return
            except VmmError as exc:
                log.warning("leaving %s in place: %s", paths.api_socket, exc)
                return
            time.sleep(_POLL)

    def _wait_for_api(
        self, proc: subprocess.Popen[bytes], api: FirecrackerApi, paths: RunPaths
    ) -> None:
        """Poll until ``GET /`` answers 200; fail early if the process exits first."""
        deadline = time.monotonic() + self.socket_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise _startup_failure(code, paths)
            remaining = deadline - time.monotonic()
            if paths.api_socket.exists() and api.is_ready(timeout=max(0.1, min(1.0, remaining))):
                return
            if remaining <= 0:
                raise EngineError(
                    f"firecracker did not answer on {paths.api_socket} within "
                    f"{self.socket_timeout:g}s",
                    details=log_tail(paths.console_log) or None,
                    hint=f"see {paths.console_log}",
                )
            time.sleep(_POLL)

    def _abort(self, proc: subprocess.Popen[bytes], paths: RunPaths) -> None:
        """Undo a failed launch: kill and reap the process, remove its socket."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.warning("firecracker (pid %d) survived SIGKILL", proc.pid)
        self._release_socket(paths)


def _startup_failure(code: int, paths: RunPaths) -> EngineError:
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    tail = log_tail(paths.console_log)
    hint = f"see {paths.console_log}"
    if "Failed to open the API socket" in tail:
        hint = f"another process holds {paths.api_socket}; is the VM already running?"
    return EngineError(
        f"firecracker exited during startup ({how})", details=tail or None, hint=hint
    )


# -- host files -----------------------------------------------------------------------------------


def check_socket_path(path: Path) -> None:
    """AF_UNIX paths are limited to 107 bytes; fail with a clear message instead of EINVAL."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ValidationError(
            f"API socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes, "
            f"at most {SUN_PATH_MAX}): {path}",
            hint="use a shorter data directory",
        )


def socket_is_live(path: Path, *, timeout: float = 1.0) -> bool:
    """True when some process accepts connections on the Unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # timeout or full backlog: a listener exists
    finally:
        sock.close()
    return True


def remove_stale_socket(path: Path) -> bool:
    """Unlink ``path`` if it is a socket nobody listens on; True when something was removed.

    Raises ``ConflictError`` when a live process still serves it and ``EngineError`` when the
    path is not a socket at all (we never delete files we did not make).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise EngineError(
            f"{path} exists and is not a socket", hint="move it away; vmm only removes sockets"
        )
    if socket_is_live(path):
        raise ConflictError(
            f"the API socket {path} is in use by a running process",
            hint="the VM seems to be running already; stop it first",
        )
    path.unlink(missing_ok=True)
    log.debug("removed stale API socket %s", path)
    return True


def prepare_log_file(path: Path) -> None:
    """Create or truncate the engine log: v1.11 opens it without O_CREAT and writes from
    offset 0, so a missing file fails and an old one would be overwritten in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return  # a FIFO someone reads from: leave it
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
