"""Suspend and resume: a running VM's memory and devices saved to disk, and run on from there.

A suspended VM's state is ``vms/<name>/suspend/`` (``Store.suspend_dir``): ``meta.json`` and
the engine's state files. ``meta.json`` says under which engine and version it was saved and
the machine it ran on (CPUs, memory, accelerator, kernel, command line, drives, NIC), which the
restored process must match exactly; ``SuspendService`` also holds what named snapshots
(``vmm.services.snapshots``, its subclass) share with it.

- **Suspend**: the record goes to ``stopping``, the VM is paused and its state written to a temp
  directory (``vms/<name>/.suspend.<pid>.tmp``); a failure resumes the guest and leaves nothing.
  Then the process is ended (its disks were flushed when it paused), the directory becomes
  ``suspend/``, the record ``suspended``, and the TAP goes.
- **Resume** (``vmm start`` of a suspended VM, ``VmService.start``'s hook): the TAP comes back,
  a fresh process loads the state with the identical machine, nothing touches the disk. A
  failure the engine reports (the guest never ran) leaves the VM suspended, its state intact,
  with one error. A resume interrupted after the process was spawned counts as run: the next
  start boots afresh (the disk is then as after a power cut), since a guest that ran for a
  moment may have written to its disk, and that state must never be loaded again.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError, VmmError
from vmm.host.liveness import is_alive
from vmm.log import get_logger
from vmm.models import VM, VMState, now, validate_name
from vmm.status import process_ref
from vmm.store import PRIVATE_DIR, PRIVATE_FILE, scratch_name, set_mode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vmm.engines.base import BootSpec, Snapshotting
    from vmm.host.liveness import ProcessRef
    from vmm.services.vms import VmService

log = get_logger(__name__)

META = "meta.json"
ROOTFS = "rootfs.ext4"
META_VERSION = 1
MiB = 1024 * 1024
DEFAULT_STOP_TIMEOUT = 30.0


def dir_usage(path: Path) -> int:
    """Bytes allocated to the files of ``path`` (holes do not count)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(directory: Path, what: str) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text())
    except FileNotFoundError:
        raise NotFoundError(f"{what} has no {META} ({directory})") from None
    except (OSError, ValueError) as exc:
        raise VmmError(f"{what} is unreadable ({directory / META}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("meta_version") != META_VERSION:
        raise VmmError(f"{what} was written by another vmm ({directory / META})")
    return meta


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    path = directory / META
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def machine_of(spec: BootSpec) -> dict[str, Any]:
    """What a saved state is bound to: the restored process must have exactly this machine."""
    kernel = spec.kernel.stat()
    return {
        "cpus": spec.cpus,
        "memory_mb": spec.memory_mb,
        "accel": spec.accel,
        "kernel": str(spec.kernel),
        "kernel_size": kernel.st_size,
        "initrd": None if spec.initrd is None else str(spec.initrd),
        "cmdline": spec.cmdline,
        "drives": [[d.drive_id, str(d.path), d.read_only, d.root] for d in spec.drives],
        "nics": [[n.iface_id, n.tap, n.mac] for n in spec.nics],
    }


class SuspendService:
    def __init__(self, vms: VmService):
        self.vms = vms
        self.store = vms.store
        self.runner = vms.runner
        self.network = vms.network

    # -- helpers --------------------------------------------------------------------------

    def _engine(self, vm: VM) -> Snapshotting:
        from vmm.engines import registry

        info = registry.info(vm.engine)
        if not info.can(registry.SNAPSHOT):
            raise ValidationError(f"the {info.display_name} engine cannot save a VM's state")
        engine: Snapshotting = self.vms.engine(vm.engine)  # type: ignore[assignment]
        return engine

    def _spec(self, vm: VM, accel: str) -> BootSpec:
        kernel = self.vms.kernels.get(vm.kernel)
        paths = self.store.run_paths(vm.name)
        return self.vms._boot_spec(vm, kernel.path, kernel.initrd, paths, accel)

    def _running_accel(self, vm: VM) -> str:
        return vm.accel_in_use or self.vms._resolve_accel(vm)

    def _version(self, engine: Snapshotting) -> str:
        version = engine.version()
        if not version:
            engine.check_available()
            raise VmmError(f"cannot tell the version of {engine.name}")
        return version

    def _check_space(self, where: Path, need: int, what: str) -> None:
        free = shutil.disk_usage(where).free
        if free < need + 64 * MiB:
            raise VmmError(
                f"not enough disk space for {what}: it needs up to {need // MiB + 64} MB in "
                f"{where}, {free // MiB} MB are free",
                hint="free some space (e.g. delete old snapshots with 'vmm snapshot delete')",
            )

    def _copy_disk(self, src: Path, dst: Path) -> None:
        self.runner.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)], timeout=3600)
        os.chmod(dst, PRIVATE_FILE)

    def _discard(self, name: str, directory: Path) -> None:
        """Remove VM ``name``'s state or snapshot directory: first renamed to a temp name in
        the VM's directory (an interrupted removal leaves a leftover ``vmm doctor`` knows,
        never half a snapshot)."""
        if not directory.exists():
            return
        doomed = self.store.vm_dir(name) / scratch_name(f"discard-{directory.name}")
        os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _meta(self, vm: VM, engine: Snapshotting | None, spec: BootSpec | None, *, name: str | None,
              kind: str, vm_state: str, version: str | None) -> dict[str, Any]:
        return {
            "meta_version": META_VERSION,
            "vm": vm.name,
            "vm_id": vm.id,
            "name": name,
            "created_at": now(),
            "kind": kind,
            "vm_state": vm_state,
            "engine": vm.engine,
            "engine_version": version,
            "state_files": list(engine.state_files) if engine is not None and kind == "memory" else [],
            "disks": [ROOTFS],
            "machine": machine_of(spec) if spec is not None else None,
        }

    def _check_state(self, vm: VM, meta: dict[str, Any], engine: Snapshotting, what: str) -> None:
        """Refuse a state saved under another engine, hypervisor version or machine."""
        if meta.get("engine") != vm.engine:
            raise ValidationError(
                f"{what} was saved under {meta.get('engine')}; VM {vm.name!r} runs on {vm.engine}"
            )
        version = self._version(engine)
        if meta.get("engine_version") != version:
            raise ValidationError(
                f"{what} was saved under {engine.name} {meta.get('engine_version')}; this host "
                f"has {engine.name} {version}, which cannot load it",
                hint=f"install {engine.name} {meta.get('engine_version')} again, or discard the "
                f"saved memory: 'vmm stop {vm.name}' (the disk stays as it was)",
            )
        machine = meta.get("machine")
        spec = self._spec(vm, str((machine or {}).get("accel") or self._running_accel(vm)))
        current = machine_of(spec)
        if machine != current:
            changed = sorted(k for k in current if not isinstance(machine, dict) or machine.get(k) != current[k])
            raise ValidationError(
                f"{what} does not fit VM {vm.name!r} any more (changed: {', '.join(changed)})",
                hint=f"discard the saved memory with 'vmm stop {vm.name}' (the disk stays)",
            )

    # -- suspend --------------------------------------------------------------------------

    def suspend(self, name: str) -> VM:
        """Save a running VM's memory and devices to disk and end its process."""
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("suspend.locked")
            vm = self.store.load(name)
            ref = process_ref(vm)
            if vm.state == VMState.SUSPENDED:
                raise ConflictError(f"VM {name!r} is already suspended", hint=f"resume it with 'vmm start {name}'")
            if ref is None or not is_alive(ref):
                raise ConflictError(f"VM {name!r} is not running", hint="only a running VM can be suspended")
            engine = self._engine(vm)
            paths = self.store.run_paths(name)
            if not self.vms.owns_process(ref, paths):
                raise ConflictError(f"VM {name!r}: its recorded process is not its hypervisor")
            version = self._version(engine)
            spec = self._spec(vm, self._running_accel(vm))
            vm_dir = self.store.ensure_vm_dir(name)
            self._check_space(vm_dir, vm.memory_mb * MiB, f"suspending VM {name!r}")
            tmp = vm_dir / scratch_name("suspend")
            tmp.mkdir(mode=PRIVATE_DIR)
            previous = vm.state
            try:
                vm.state = VMState.STOPPING
                self.store.save(vm)
                faults.point("suspend.saved-stopping")
                self._save_paused(engine, paths, tmp)
                write_meta(tmp, self._meta(vm, engine, spec, name=None, kind="memory",
                                           vm_state="running", version=version))
                faults.point("suspend.state-saved")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                with contextlib.suppress(Exception):
                    if is_alive(ref):
                        engine.resume(paths)
                vm.state = previous
                with contextlib.suppress(Exception):
                    self.store.save(vm)
                raise
            # The state is complete: from here on the guest never runs again in this process.
            engine.kill(ref, paths)
            faults.point("suspend.process-ended")
            self._discard(name, self.store.suspend_dir(name))  # a stale one (never resumed from)
            os.rename(tmp, self.store.suspend_dir(name))
            fsync_dir(vm_dir)
            faults.point("suspend.state-kept")
            vm.state = VMState.SUSPENDED
            vm.pid = vm.pid_start_time = vm.pid_boot_id = None
            vm.stopped_at = now()
            vm.last_error = None
            self.store.save(vm)
            faults.point("suspend.saved")
        self._withdraw_network(vm)
        return vm

    def _save_paused(self, engine: Snapshotting, paths: Any, dest: Path) -> None:
        engine.pause(paths)
        faults.point("suspend.paused")
        engine.save_state(paths, dest)

    def _withdraw_network(self, vm: VM) -> None:
        self.network.delete_tap(vm.tap)
        if vm.port_forwards:
            self.network.rebuild_rules()

    # -- resume (VmService.start's hook) --------------------------------------------------

    def on_start(self, vm: VM) -> VM | None:
        """Called by ``VmService.start`` with the VM's lock held and no live process: resume a
        suspended VM (returns it running), or drop a saved state that may no longer be loaded
        and return None (the start boots the VM afresh)."""
        state_dir = self.store.suspend_dir(vm.name)
        retry = vm.state == VMState.STARTING and vm.pid is None and state_dir.is_dir()
        if vm.state != VMState.SUSPENDED and not retry:
            if state_dir.exists():
                if vm.state == VMState.STARTING:
                    log.warning("note: VM %s: an interrupted resume had started its process; its "
                                "saved state is discarded and it boots afresh", vm.name)
                self._discard(vm.name, state_dir)
            return None
        if not state_dir.is_dir():
            raise VmmError(
                f"VM {vm.name!r} is suspended but its saved state is missing ({state_dir})",
                hint=f"'vmm stop {vm.name}' marks it stopped; the next start boots it afresh",
            )
        return self.resume_locked(vm, state_dir)

    def resume_locked(self, vm: VM, state_dir: Path) -> VM:
        meta = read_meta(state_dir, f"the saved state of VM {vm.name!r}")
        engine = self._engine(vm)
        engine.check_available()
        self._check_state(vm, meta, engine, f"the saved state of VM {vm.name!r}")
        accel = str(meta["machine"]["accel"])
        spec = self._spec(vm, accel)
        paths = spec.paths
        self.store.ensure_dirs()
        engine.cleanup(paths)
        vm.state = VMState.STARTING
        vm.last_error = None
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        self.store.save(vm)
        faults.point("resume.saved-starting")

        def record_spawn(spawned: ProcessRef) -> None:
            vm.pid, vm.pid_start_time, vm.pid_boot_id = spawned.pid, spawned.start_time, spawned.boot_id
            self.store.save(vm)
            faults.point("resume.spawned")

        launched: ProcessRef | None = None
        try:
            self.network.ensure_for(vm)
            faults.point("resume.network-ready")
            launched = engine.restore(spec, state_dir, on_spawn=record_spawn)
            faults.point("resume.restored")
            for sock in engine.sockets(paths):
                set_mode(sock, PRIVATE_FILE)
        except BaseException as exc:
            # The guest never ran when the engine itself failed (or nothing was spawned).
            keep = isinstance(exc, VmmError) or vm.pid is None
            self._undo_resume(vm, engine, launched, paths, exc, keep=keep)
            raise
        from vmm.engines import registry

        self._discard(vm.name, state_dir)  # loaded: never to be loaded again
        vm.pid, vm.pid_start_time, vm.pid_boot_id = launched.pid, launched.start_time, launched.boot_id
        vm.state = VMState.RUNNING
        vm.accel_in_use = registry.accel_in_use(vm.engine, accel)
        self.store.save(vm)
        return vm

    def _undo_resume(self, vm: VM, engine: Snapshotting, launched: ProcessRef | None, paths: Any,
                     exc: BaseException, *, keep: bool) -> None:
        from vmm.host.liveness import ProcessRef

        with contextlib.suppress(Exception):
            spawned = launched or (ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id)
                                   if vm.pid is not None and vm.pid_start_time is not None else None)
            if spawned is not None and is_alive(spawned) and self.vms.owns_process(spawned, paths):
                engine.kill(spawned, paths)
        with contextlib.suppress(Exception):
            engine.cleanup(paths)
        with contextlib.suppress(Exception):
            self._withdraw_network(vm)
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        vm.last_error = str(exc) or type(exc).__name__
        if keep:
            vm.state = VMState.SUSPENDED
            if isinstance(exc, VmmError) and not exc.hint:
                exc.hint = (f"VM {vm.name!r} is still suspended with its saved state; "
                            f"'vmm start {vm.name}' tries again")
        else:
            vm.state = VMState.ERROR
            with contextlib.suppress(Exception):
                self._discard(vm.name, self.store.suspend_dir(vm.name))
        with contextlib.suppress(Exception):
            self.store.save(vm)
