"""The VM lifecycle: create, start, stop, delete.

Every command validates its input before it changes anything; a failed or interrupted start
undoes what it did (process, TAP) and leaves the VM in ``error`` with the reason, so the next
command can always finish or clean up. Each step that changes state passes a named fault point
(``vmm.faults``) that the kill-matrix tests interrupt.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable

from vmm import faults
from vmm.errors import ConflictError, EngineError, NotFoundError, VmmError
from vmm.host.liveness import runs_with
from vmm.host.process import GracefulStep, ProcessRef, is_alive, log_tail
from vmm.log import get_logger
from vmm.models import VM, VMState, now, validate_name
from vmm.status import StopOutcome, process_ref
from vmm.store import PRIVATE_FILE, set_mode

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from pathlib import Path

    from vmm.config import Config
    from vmm.engines.base import BootSpec, Engine, RunPaths
    from vmm.guest.images import ImageRegistry
    from vmm.guest.kernels import KernelRegistry
    from vmm.guest.rootfs import RootDisks
    from vmm.runner import Runner
    from vmm.services.create import CreateRequest
    from vmm.services.network import HostNetwork
    from vmm.store import Store

log = get_logger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_SSH_TIMEOUT = 180.0


class VmService:
    def __init__(
        self,
        config: Config,
        store: Store,
        runner: Runner,
        *,
        images: ImageRegistry,
        kernels: KernelRegistry,
        engines: Callable[[str], Engine],
        network: HostNetwork,
        disks: RootDisks,
    ):
        self.config = config
        self.store = store
        self.runner = runner
        self.images = images
        self.kernels = kernels
        self.engine = engines
        self.network = network
        self.disks = disks
        # Called by ``start`` (VM lock held, no live process): returns the VM resumed from a
        # saved state, or None to boot it (``Vmm`` sets it: ``vmm.services.snapshots``).
        self.on_start: Callable[[VM], VM | None] | None = None

    def get(self, name: str) -> VM:
        validate_name(name)
        return self.store.load(name)

    def create(self, req: CreateRequest, *, note: Callable[[str], None] = lambda _line: None) -> VM:
        """Validate everything, then allocate the name, IP and id and save the record.

        ``note`` receives what the user should know about choices made for them."""
        from vmm.services.create import create

        return create(self, req, note=note)

    # -- start --------------------------------------------------------------------------

    def start(self, name: str) -> VM:
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("start.locked")
            vm = self.store.load(name)
            ref = process_ref(vm)
            engine = self.engine(vm.engine)
            paths = self.store.run_paths(name)
            if is_alive(ref):
                assert ref is not None
                if vm.state != VMState.STARTING:
                    raise ConflictError(f"VM {name!r} is already running", hint=f"its IP is {vm.ip}")
                # "starting" with a live process while we hold the VM lock: the start that
                # launched it was killed before it finished. Finish the cleanup it could not do.
                log.warning("VM %s: stopping the process of an interrupted start (pid %d)", name, ref.pid)
                if self.owns_process(ref, paths):
                    engine.kill(ref, paths)
            if self.on_start is not None and (resumed := self.on_start(vm)) is not None:
                return resumed  # a suspended VM runs on from its saved state
            engine.check_available()
            kernel = self.kernels.get(vm.kernel)
            self.store.ensure_dirs()  # also brings an older data dir's modes up to date
            engine.cleanup(paths)  # a crashed previous run may have left sockets behind
            accel = self._resolve_accel(vm)

            vm.state = VMState.STARTING
            vm.last_error = None
            vm.pid = vm.pid_start_time = vm.pid_boot_id = None
            self.store.save(vm)
            launched: ProcessRef | None = None

            from vmm.engines import registry

            def record_spawn(spawned: ProcessRef) -> None:
                # Saved before the engine waits or configures: a start killed from here on
                # leaves a record naming the process, and the next command stops it.
                vm.pid, vm.pid_start_time, vm.pid_boot_id = (
                    spawned.pid, spawned.start_time, spawned.boot_id
                )
                self.store.save(vm)
                faults.point("start.spawned")

            try:
                faults.point("start.saved-starting")
                self.disks.prepare(vm)
                faults.point("start.rootfs-ready")
                self.disks.prepare_mounts(vm)
                self.network.ensure_for(vm)
                faults.point("start.network-ready")
                spec = self._boot_spec(vm, kernel.path, kernel.initrd, paths, accel)
                launched = engine.launch(spec, on_spawn=record_spawn)
                faults.point("start.launched")
                for sock in engine.sockets(paths):
                    set_mode(sock, PRIVATE_FILE)  # in a 0700 directory already; root's alone
                vm.pid, vm.pid_start_time, vm.pid_boot_id = (
                    launched.pid, launched.start_time, launched.boot_id
                )
                vm.state = VMState.RUNNING
                vm.accel_in_use = registry.accel_in_use(vm.engine, accel)
                vm.started_at = now()
                self.store.save(vm)
                return vm
            except BaseException as exc:
                self._undo_start(vm, engine, launched, paths, exc)
                raise

    def owns_process(self, ref: ProcessRef, paths: RunPaths) -> bool:
        """The live process ``ref`` is this VM's hypervisor (its socket path is on its command
        line): checked before any signal, so a recycled pid is never signalled."""
        if runs_with(ref, str(paths.api_socket)):
            return True
        log.warning("pid %d is not this VM's hypervisor (no %s in its command line): left alone",
                    ref.pid, paths.api_socket)
        return False

    def _undo_start(
        self, vm: VM, engine: Engine, launched: ProcessRef | None, paths: RunPaths, exc: BaseException
    ) -> None:
        with contextlib.suppress(Exception):
            if launched is not None:
                engine.kill(launched, paths)
            elif vm.pid is not None and vm.pid_start_time is not None:  # spawned, not launched
                spawned = ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id)
                if is_alive(spawned) and self.owns_process(spawned, paths):
                    engine.kill(spawned, paths)
        with contextlib.suppress(Exception):
            engine.cleanup(paths)
        with contextlib.suppress(Exception):
            self.network.delete_tap(vm.tap)
        vm.state = VMState.ERROR
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        vm.last_error = str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            self.store.save(vm)
        with contextlib.suppress(Exception):
            self.network.rebuild_rules()  # withdraw this VM's port forwards again
        if isinstance(exc, VmmError) and not exc.details:
            console = log_tail(paths.console_log)
            if console:
                exc.details = "console log (last lines):\n" + console

    def _resolve_accel(self, vm: VM) -> str:
        from vmm.engines import registry

        if not registry.info(vm.engine).can(registry.TCG):
            return "kvm"
        from vmm.engines.qemu.accel import resolve_accel

        accel, _reason = resolve_accel(vm.accel)
        return accel

    def _boot_spec(
        self, vm: VM, kernel: Path, initrd: Path | None, paths: RunPaths, accel: str
    ) -> BootSpec:
        from vmm.engines.base import BootSpec, Drive, Nic
        from vmm.guest import customize

        cmdline = customize.kernel_cmdline(
            ip=vm.ip,
            gateway=self.config.gateway,
            subnet=self.config.subnet,
            hostname=vm.name,
            dns=vm.dns_servers,
            extra=vm.boot_args,
        )
        drives = [Drive("rootfs", self.store.rootfs_path(vm.name), read_only=False, root=True)]
        if vm.mounts:
            from vmm.guest import mounts as guest_mounts

            drives += guest_mounts.drives(vm.mounts)
        return BootSpec(
            vm_id=f"vmm-{vm.id}",
            name=vm.name,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            cpus=vm.cpus,
            memory_mb=vm.memory_mb,
            paths=paths,
            drives=tuple(drives),
            nics=(Nic("eth0", vm.tap, vm.mac),),
            accel=accel,
        )

    def wait_ready(self, vm: VM, timeout: float = DEFAULT_SSH_TIMEOUT) -> float:
        """Wait until the guest's sshd sends its banner; returns the seconds waited."""
        from vmm.host.ssh import ssh_banner

        t0 = time.monotonic()
        ref = process_ref(vm)
        deadline = t0 + timeout
        paths = self.store.run_paths(vm.name)
        while time.monotonic() < deadline:
            if not is_alive(ref):
                raise EngineError(
                    f"VM {vm.name!r} exited while booting",
                    details="console log (last lines):\n" + log_tail(paths.console_log),
                    hint=f"see the whole console log with: cat {paths.console_log}",
                )
            if ssh_banner(vm.ip):
                return time.monotonic() - t0
            time.sleep(0.5)
        raise EngineError(
            f"VM {vm.name!r} is running but SSH on {vm.ip} did not answer within {timeout:.0f} s",
            details="console log (last lines):\n" + log_tail(paths.console_log),
            hint=f"it may still be booting: try 'vmm ssh {vm.name}' later, or see {paths.console_log}",
        )

    # -- stop ---------------------------------------------------------------------------

    def stop(self, name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> StopOutcome:
        """Stop a VM; returns which step ended it (``StopOutcome.NOT_RUNNING``: nothing ran)."""
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("stop.locked")
            return self._stop_locked(self.store.load(name), timeout)

    def _stop_locked(self, vm: VM, timeout: float) -> StopOutcome:
        ref = process_ref(vm)
        engine = self.engine(vm.engine)
        paths = self.store.run_paths(vm.name)
        how = StopOutcome.NOT_RUNNING
        if is_alive(ref):
            assert ref is not None
            if self.owns_process(ref, paths):
                vm.state = VMState.STOPPING
                self.store.save(vm)
                faults.point("stop.stopping")
                how = StopOutcome.of(
                    engine.stop(
                        ref, paths, timeout=timeout, guest_steps=self._guest_stop_steps(vm, engine)
                    ).how
                )
                faults.point("stop.stopped")
        with contextlib.suppress(Exception):
            engine.cleanup(paths)
        self.network.delete_tap(vm.tap)
        if vm.state != VMState.CREATED or how != StopOutcome.NOT_RUNNING:
            vm.state = VMState.STOPPED
            vm.stopped_at = now() if how != StopOutcome.NOT_RUNNING else vm.stopped_at
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        self.store.save(vm)
        if vm.port_forwards:
            self.network.rebuild_rules()  # withdraw this VM's forwards
        return how

    def _guest_stop_steps(self, vm: VM, engine: Engine) -> list[GracefulStep]:
        """``poweroff`` (or ``reboot``, per engine) over SSH with vmm's own key, when the VM
        has it (VMs whose disk was made by an older vmm do not)."""
        from vmm.host import ssh

        key = self.store.root / "ssh" / ssh.POWER_KEY_NAME
        if not key.is_file():
            return []
        command = engine.guest_stop_command

        def over_ssh() -> bool:
            argv = ssh.power_argv(ip=vm.ip, key=key, command=command)
            result = self.runner.run(argv, check=False, timeout=20)
            # 255 is ssh's own failure (refused, denied, timed out) unless the guest closed
            # the connection because it is going down.
            return result.returncode != 255 or "closed by remote host" in result.stderr

        return [(f"ssh-{command}", over_ssh)]

    # -- delete -------------------------------------------------------------------------

    def delete(self, name: str, *, force: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Delete a VM and everything vmm made for it.

        Liveness is checked inside the VM's lock: a ``start`` that is under way finishes first,
        and then counts (a VM found running is refused without ``force``)."""
        validate_name(name)
        if not self.store.exists(name):
            raise NotFoundError(
                f"VM {name!r} does not exist", hint="see 'vmm list -a' for the VMs there are"
            )
        with self.store.vm_lock(name):
            faults.point("delete.locked")
            if not self.store.exists(name):  # deleted by another command while we waited
                raise NotFoundError(f"VM {name!r} does not exist")
            try:
                vm: VM | None = self.store.load(name)
            except VmmError:
                if not force:
                    raise
                vm = None  # corrupt record: -f removes what can be found by name
            if vm is not None and is_alive(process_ref(vm)):
                if not force:
                    raise ConflictError(
                        f"VM {name!r} is running",
                        hint=f"stop it first ('vmm stop {name}') or use 'vmm delete -f {name}'",
                    )
                self._stop_locked(vm, timeout)
            paths = self.store.run_paths(name)
            if vm is not None:
                self.network.delete_tap(vm.tap)
                with contextlib.suppress(Exception):
                    self.engine(vm.engine).cleanup(paths)
            else:
                with contextlib.suppress(Exception):
                    self.network.delete_tap(self.store.salvage(name).tap)
            faults.point("delete.stopped")
            shutil.rmtree(self.store.vm_dir(name), ignore_errors=True)
            self.disks.remove_mount_images(name, vm)
            for p in (paths.console_log, paths.api_socket, paths.console_socket):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            faults.point("delete.files-removed")
            with self.store.global_lock():
                self.store.remove_record(name)
            faults.point("delete.record-removed")
        # The lock file stays: unlinking it while another command waits on it would let a
        # third one lock a new file of the same name, and two commands would hold "the" lock.
        self.network.rebuild_rules()  # no rules for VMs that no longer exist
        self.network.teardown_if_unused()
