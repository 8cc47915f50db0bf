"""The Firecracker v1.11 engine: spawn the process, configure it over its API, stop it.

The lifecycle is ``engines.managed``'s; this module fills in its stages. Pre-launch builds and
validates every request before anything changes on the host, then removes a stale API socket
(Firecracker never deletes its own, and a leftover file makes the next start fail with
AddrInUse) and creates the engine log (v1.11 refuses a missing one). The process is
``firecracker --api-sock S --id ID`` (``argv.build_argv``, through the engine's ``Jail``),
spawned detached with the serial console (its stdout) in the console log; it is ready when
``GET /`` answers, and configuring it is the requests, InstanceStart, and a check that the
state is "Running". Any failure kills the process and removes the socket.

``stop`` is SendCtrlAltDel (the guest reboots with ``reboot=k`` and Firecracker exits 0), then
the caller's guest steps (``reboot`` over SSH), then SIGTERM (Firecracker has no handler for
it: immediate death), then SIGKILL.

Snapshots (docs/firecracker.md, Snapshots): ``pause``/``resume`` are ``PATCH /vm``;
``save_state`` is ``PUT /snapshot/create`` (Full) into ``vmstate`` and ``memory`` (the memory
file then rewritten sparse: 1.11 writes every page); ``restore`` is a fresh process that gets
the logger and ``PUT /snapshot/load`` (``resume_vm``) before anything else. A failed load ends
the process (Firecracker's rule), which the launch reports.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from vmm.engines import firecracker as facts
from vmm.engines.base import BootSpec, RunPaths, Snapshotting
from vmm.engines.firecracker.api import DEFAULT_REQUEST_TIMEOUT, ApiUnreachable, FirecrackerApi
from vmm.engines.firecracker.argv import build_argv
from vmm.engines.firecracker.bodies import (
    ApiRequest,
    boot_requests,
    restore_requests,
    send_ctrl_alt_del_request,
    snapshot_create_request,
    vm_state_request,
)
from vmm.engines.jail import Jail, NoJail
from vmm.engines.managed import Launch, LaunchError, ManagedEngine, file_size
from vmm.errors import (
    ApiError,
    ConflictError,
    EngineError,
    NotFoundError,
    ValidationError,
    VmmError,
)
from vmm.host.process import (
    ABSENT,
    NOT_A_SOCKET,
    STALE,
    GracefulStep,
    describe_exit,
    log_tail,
    socket_state,
)
from vmm.log import get_logger
from vmm.runner import Runner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.engines.firecracker.bodies import LogLevel

log = get_logger(__name__)

FALLBACK_BINARY = facts.BINARIES[-1]
INSTALL_HINT = facts.INSTALL_HINT
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
_POLL = 0.01  # readiness poll interval, as the Go SDK does
_VERSION_RE = re.compile(r"Firecracker v(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)")


def parse_version(output: str) -> str | None:
    """``Firecracker v1.11.0`` -> ``1.11.0``."""
    m = _VERSION_RE.search(output)
    return m.group(1) if m else None


SNAPSHOT_FILE = "vmstate"
MEMORY_FILE = "memory"


class FirecrackerLaunch(Launch):
    requests: tuple[ApiRequest, ...] = ()


class FirecrackerEngine(ManagedEngine):
    """Runs VMs with Firecracker. ``binary`` is the configured ``firecracker_bin``, if any;
    ``jail`` confines the process (``NoJail``: none)."""

    name = "firecracker"
    label = "firecracker"
    install_hint = INSTALL_HINT
    # On x86 Firecracker has no power-off device: a guest ``poweroff`` halts the vCPUs and the
    # process stays; ``reboot`` (with reboot=k) ends it.
    guest_stop_command = "reboot"
    probe_timeout = 1.0
    poll_interval = _POLL
    state_timeout = 600.0  # creating or loading a snapshot, at most

    def __init__(
        self,
        binary: str | None = None,
        *,
        socket_timeout: float = 5.0,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        term_timeout: float = 5.0,
        log_level: LogLevel = "Info",
        runner: Runner | None = None,
        jail: Jail | None = None,
    ):
        self._binary = binary
        self.ready_timeout = socket_timeout  # spawn -> the API answers
        self.request_timeout = request_timeout
        self.term_timeout = term_timeout
        self.log_level: LogLevel = log_level
        self.runner = runner or Runner()
        self.jail: Jail = jail or NoJail()

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

    # -- what it serves -------------------------------------------------------------------------

    def check_paths(self, paths: RunPaths) -> None:
        check_socket_path(paths.api_socket)

    def sockets(self, paths: RunPaths) -> tuple[Path, ...]:
        return (paths.api_socket,)

    def live_state(self, paths: RunPaths, *, timeout: float = 2.0) -> str | None:
        """``GET /``'s state: "Not started", "Running" or "Paused"."""
        try:
            state = FirecrackerApi(paths.api_socket, timeout=timeout).instance_info().get("state")
        except EngineError as exc:
            log.debug("GET / failed: %s", exc)
            return None
        return state if isinstance(state, str) else None

    # -- the managed stages ---------------------------------------------------------------------

    def _prepare(self, spec: BootSpec, restore_from: Path | None = None) -> FirecrackerLaunch:
        jail = self.jail
        if restore_from is None:
            requests = boot_requests(spec, log_level=self.log_level, expose=jail.expose)  # pure
        else:
            snapshot, memory = restore_from / SNAPSHOT_FILE, restore_from / MEMORY_FILE
            for path in (snapshot, memory):
                if not path.is_file():
                    raise NotFoundError(f"saved VM state {path} does not exist")
            requests = restore_requests(
                spec, snapshot, memory, log_level=self.log_level, expose=jail.expose
            )
        argv = build_argv(
            self.binary, api_socket=jail.expose(spec.paths.api_socket), vm_id=spec.vm_id
        )
        paths = spec.paths
        self.check_paths(paths)
        self.check_available()
        self._make_dirs(paths)
        self._claim_sockets(paths)
        prepare_log_file(paths.engine_log)
        return FirecrackerLaunch(
            spec=spec,
            argv=jail.wrap_argv(argv),
            log_path=paths.console_log,
            log_offset=file_size(paths.console_log),
            requests=tuple(requests),
            restore_from=restore_from,
        )

    def _prepare_restore(self, spec: BootSpec, state_dir: Path) -> FirecrackerLaunch:
        return self._prepare(spec, state_dir)

    def _probe_ready(self, launch: Launch, timeout: float) -> str | None:
        paths = launch.spec.paths
        if not paths.api_socket.exists():
            return "no API socket yet"
        return None if self.api(paths).is_ready(timeout=timeout) else "no answer to GET /"

    def _configure(self, launch: Launch) -> None:
        assert isinstance(launch, FirecrackerLaunch)
        api = self.api(launch.spec.paths)
        for req in launch.requests:
            try:
                api.send(req, timeout=max(self.request_timeout, self.state_timeout)
                         if req.path == "/snapshot/load" else None)
            except ApiError as exc:
                if req.path != "/snapshot/load":
                    raise
                # Firecracker ends the process after a failed load (it may be half-loaded).
                raise LaunchError(
                    f"firecracker could not load the VM's saved state: {exc.fault_message}",
                    argv=launch.argv,
                    log_tail=log_tail(launch.log_path, offset=launch.log_offset),
                    details="the firecracker process exits after a failed snapshot load",
                ) from exc
        state = api.instance_info().get("state")
        if state != "Running":
            output = log_tail(launch.log_path, offset=launch.log_offset)
            after = "the snapshot load" if launch.restore_from else "InstanceStart"
            raise LaunchError(
                f"firecracker reports state {state!r} after {after}, not 'Running'",
                argv=launch.argv,
                log_tail=output,
                details=output or None,
            )

    def _exit_error(self, launch: Launch, returncode: int, output: str) -> LaunchError:
        paths = launch.spec.paths
        hint = f"see {paths.console_log}"
        if "Failed to open the API socket" in output:
            hint = f"another process holds {paths.api_socket}; is the VM already running?"
        return LaunchError(
            f"firecracker exited during startup ({describe_exit(returncode)})",
            argv=launch.argv,
            returncode=returncode,
            log_tail=output,
            details=output or None,
            hint=hint,
        )

    def _timeout_error(self, launch: Launch, why: str, output: str) -> LaunchError:
        paths = launch.spec.paths
        return LaunchError(
            f"firecracker did not answer on {paths.api_socket} within {self.ready_timeout:g}s",
            argv=launch.argv,
            log_tail=output,
            details=output or None,
            hint=f"see {paths.console_log}",
        )

    def _graceful_steps(self, paths: RunPaths, timeout: float) -> list[GracefulStep]:
        """SendCtrlAltDel: the guest reboots, and with ``reboot=k`` Firecracker exits."""
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

        return [("ctrl-alt-del", ctrl_alt_del)]

    def _socket_error(self, path: Path, state: str) -> VmmError:
        return _socket_error(path, state)

    # -- snapshots ------------------------------------------------------------------------------

    state_files: tuple[str, ...] = (SNAPSHOT_FILE, MEMORY_FILE)

    def pause(self, paths: RunPaths) -> None:
        self.api(paths).send(vm_state_request("Paused"))

    def resume(self, paths: RunPaths) -> None:
        self.api(paths).send(vm_state_request("Resumed"))

    def save_state(self, paths: RunPaths, dest: Path) -> None:
        """``PUT /snapshot/create`` into ``dest``. The files are made first (0600; Firecracker
        truncates and keeps the mode), then the memory file is copied sparse over itself."""
        snapshot, memory = dest / SNAPSHOT_FILE, dest / MEMORY_FILE
        sparse = dest / f".{MEMORY_FILE}.sparse"
        made: list[Path] = []
        try:
            for path in (snapshot, memory):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
                made.append(path)
            expose = self.jail.expose
            self.api(paths).send(
                snapshot_create_request(expose(snapshot), expose(memory)),
                timeout=max(self.request_timeout, self.state_timeout),
            )
            made.append(sparse)
            self.runner.run(["cp", "--sparse=always", str(memory), str(sparse)], timeout=self.state_timeout)
            os.replace(sparse, memory)
        except BaseException:
            for path in made:
                path.unlink(missing_ok=True)
            raise


def _socket_error(path: Path, state: str) -> VmmError:
    if state == NOT_A_SOCKET:
        return EngineError(
            f"{path} exists and is not a socket", hint="move it away; vmm only removes sockets"
        )
    return ConflictError(
        f"the API socket {path} is in use by a running process",
        hint="the VM seems to be running already; stop it first",
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


def remove_stale_socket(path: Path) -> bool:
    """Unlink ``path`` if it is a socket nobody listens on; True when something was removed.

    Raises ``ConflictError`` when a live process may still serve it and ``EngineError`` when
    the path is not a socket at all (we never delete files we did not make).
    """
    state = socket_state(path)
    if state == ABSENT:
        return False
    if state != STALE:
        raise _socket_error(path, state)
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


def from_config(cfg: Config) -> FirecrackerEngine:
    """The registry's factory (``vmm.engines.registry``)."""
    return FirecrackerEngine(cfg.firecracker_bin)


if TYPE_CHECKING:
    _conforms: Snapshotting = FirecrackerEngine()
