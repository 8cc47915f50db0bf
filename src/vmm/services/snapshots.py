"""Named snapshots: a VM's disks, and its memory and devices, kept and brought back.

Each is ``vms/<name>/snapshots/<snap>/`` (``Store.snapshots_dir``): ``meta.json``, the disks
(``rootfs.ext4``) and, for a memory snapshot, the engine's state files. Snapshots live in
files of their own rather than in the VM record: the record stays small and strictly decoded
(``vmm list`` reads every record), a snapshot's existence is its directory (made complete under
a temp name, then renamed), and deleting it removes its data and its description together.

- **Create** of a running VM happens while it is paused: the state, then the disks copied
  (``cp --reflink=auto --sparse=always``), then the guest runs on. Of a suspended VM: its saved
  state and disks. Of a stopped VM: its disks only, and the snapshot says so.
- **Restore** stages every file beside its target first (a copy can fail, e.g. on a full disk,
  without changing anything), then ends the VM's process, swaps the disks in and puts a memory
  snapshot's state where a suspended VM's goes: the VM is then suspended at that moment, and a
  snapshot of a running VM resumes at once (a failed resume leaves it suspended, the snapshot
  intact).

Suspend and resume are ``vmm.services.suspend``; clones and image snapshots
``vmm.services.clones``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError, VmmError
from vmm.host.liveness import is_alive
from vmm.log import get_logger
from vmm.models import VM, VMState, now, validate_name
from vmm.record import Record
from vmm.services.suspend import (
    DEFAULT_STOP_TIMEOUT,
    ROOTFS,
    MiB,
    SuspendService,
    dir_usage,
    fsync_dir,
    read_meta,
    write_meta,
)
from vmm.status import process_ref
from vmm.store import PRIVATE_DIR, scratch_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vmm.engines.base import Snapshotting
    from vmm.host.liveness import ProcessRef

log = get_logger(__name__)


class SnapshotInfo(Record):
    """One snapshot as ``snapshot list`` shows it."""

    vm: str
    name: str
    created_at: str
    kind: str  # "memory" (memory + disks) or "disk" (disks only)
    vm_state: str  # what was captured: running, suspended or stopped
    engine: str
    engine_version: str | None
    size: int  # bytes on disk
    path: Path

    def to_json(self) -> dict[str, Any]:
        d = self.to_dict()
        d["path"] = str(self.path)
        return d


class SnapshotService(SuspendService):
    """Suspend/resume (the base) and named snapshots."""

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_dir(self, name: str, snap: str) -> Path:
        return self.store.snapshots_dir(name) / validate_name(snap, "snapshot")

    def create(self, name: str, snap: str, *, stop: bool = False,
               timeout: float = DEFAULT_STOP_TIMEOUT) -> SnapshotInfo:
        """A snapshot of VM ``name``: memory and disks of a running or suspended VM, disks of a
        stopped one. ``stop``: stop a running VM (gracefully) once it is taken."""
        validate_name(name)
        target = self.snapshot_dir(name, snap)
        with self.store.vm_lock(name):
            faults.point("snapshot-create.locked")
            vm = self.store.load(name)
            if target.exists():
                raise ConflictError(f"VM {name!r} already has a snapshot {snap!r}",
                                    hint=f"delete it first: vmm snapshot delete {name} {snap}")
            if vm.mounts:
                raise ValidationError(f"VM {name!r} has mounts: snapshots of VMs with mounts are "
                                      "not supported")
            ref = process_ref(vm)
            running = ref is not None and is_alive(ref)
            rootfs = self.store.rootfs_path(name)
            if not running and (not vm.rootfs_ready or not rootfs.is_file()):
                raise ConflictError(f"VM {name!r} has no disk yet (it never started): nothing "
                                    "to snapshot")
            vm_dir = self.store.ensure_vm_dir(name)
            suspended = vm.state == VMState.SUSPENDED and not running
            engine = self._engine(vm) if running or suspended else None
            need = rootfs.stat().st_blocks * 512 + (vm.memory_mb * MiB if running or suspended else 0)
            self._check_space(vm_dir, need, f"a snapshot of VM {name!r}")
            tmp = vm_dir / scratch_name(f"snapshot-{snap}")
            tmp.mkdir(mode=PRIVATE_DIR)
            try:
                if running:
                    assert engine is not None and ref is not None
                    meta = self._capture_running(vm, engine, ref, tmp, snap)
                elif suspended:
                    assert engine is not None
                    meta = self._capture_suspended(vm, tmp, snap)
                else:
                    self._copy_disk(rootfs, tmp / ROOTFS)
                    faults.point("snapshot-create.disks-copied")
                    meta = self._meta(vm, None, None, name=snap, kind="disk",
                                      vm_state=VMState.STOPPED.value, version=None)
                write_meta(tmp, meta)
                target.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
                os.rename(tmp, target)
                fsync_dir(target.parent)
                faults.point("snapshot-create.saved")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if stop and running:
                self.vms._stop_locked(vm, timeout)
        return self.info(name, snap)

    def _capture_running(self, vm: VM, engine: Snapshotting, ref: ProcessRef, tmp: Path,
                         snap: str) -> dict[str, Any]:
        paths = self.store.run_paths(vm.name)
        if not self.vms.owns_process(ref, paths):
            raise ConflictError(f"VM {vm.name!r}: its recorded process is not its hypervisor")
        version = self._version(engine)
        spec = self._spec(vm, self._running_accel(vm))
        engine.pause(paths)
        try:
            faults.point("snapshot-create.paused")
            engine.save_state(paths, tmp)
            faults.point("snapshot-create.state-saved")
            self._copy_disk(self.store.rootfs_path(vm.name), tmp / ROOTFS)
            faults.point("snapshot-create.disks-copied")
        finally:
            if is_alive(ref):
                engine.resume(paths)
        return self._meta(vm, engine, spec, name=snap, kind="memory",
                          vm_state=VMState.RUNNING.value, version=version)

    def _capture_suspended(self, vm: VM, tmp: Path, snap: str) -> dict[str, Any]:
        state_dir = self.store.suspend_dir(vm.name)
        saved = read_meta(state_dir, f"the saved state of VM {vm.name!r}")
        for file in saved.get("state_files") or []:
            self._copy_disk(state_dir / Path(file).name, tmp / Path(file).name)
        self._copy_disk(self.store.rootfs_path(vm.name), tmp / ROOTFS)
        faults.point("snapshot-create.disks-copied")
        return {**saved, "name": snap, "created_at": now(), "vm_state": VMState.SUSPENDED.value}

    def info(self, name: str, snap: str) -> SnapshotInfo:
        directory = self.snapshot_dir(name, snap)
        if not directory.is_dir():
            raise NotFoundError(f"VM {name!r} has no snapshot {snap!r}",
                                hint=f"see 'vmm snapshot list {name}'")
        meta = read_meta(directory, f"snapshot {snap!r} of VM {name!r}")
        return SnapshotInfo(
            vm=name, name=snap, created_at=str(meta.get("created_at", "")),
            kind=str(meta.get("kind")), vm_state=str(meta.get("vm_state")),
            engine=str(meta.get("engine")), engine_version=meta.get("engine_version"),
            size=dir_usage(directory), path=directory,
        )  # fmt: skip

    def list(self, name: str | None = None) -> list[SnapshotInfo]:
        if name is not None:
            self.vms.get(name)  # the NotFoundError with its hint
        names = [name] if name is not None else self.store.names()
        out = []
        for vm_name in names:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for snap in sorted(os.listdir(self.store.snapshots_dir(vm_name))):
                    if snap.startswith("."):
                        continue
                    try:
                        out.append(self.info(vm_name, snap))
                    except VmmError as exc:
                        log.warning("VM %s: snapshot %s: %s", vm_name, snap, exc.brief)
        return out

    def delete(self, name: str, snap: str) -> None:
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("snapshot-delete.locked")
            self.store.load(name)
            self.info(name, snap)  # NotFoundError
            self._discard(name, self.snapshot_dir(name, snap))
            faults.point("snapshot-delete.removed")

    def restore(self, name: str, snap: str) -> VM:
        """Bring VM ``name`` back to snapshot ``snap``: its disks, and for a memory snapshot
        its memory and devices (running again, or suspended, as it was then)."""
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("snapshot-restore.locked")
            vm = self.store.load(name)
            info = self.info(name, snap)
            what = f"snapshot {snap!r}"
            meta = read_meta(info.path, what)
            engine = self._engine(vm) if info.kind == "memory" else None
            if engine is not None:
                self._check_state(vm, meta, engine, what)
            elif meta.get("engine") != vm.engine:
                log.debug("disk snapshot %s taken under %s", snap, meta.get("engine"))
            vm_dir = self.store.ensure_vm_dir(name)
            self._check_space(vm_dir, dir_usage(info.path / ROOTFS) if (info.path / ROOTFS).exists()
                              else 0, f"restoring {what}")
            disk_tmp = vm_dir / scratch_name("rootfs-restore")
            state_tmp = vm_dir / scratch_name("suspend")
            try:
                self._copy_disk(info.path / ROOTFS, disk_tmp)
                if engine is not None:
                    state_tmp.mkdir(mode=PRIVATE_DIR)
                    for file in meta.get("state_files") or []:
                        file = Path(file).name
                        os.link(info.path / file, state_tmp / file)  # read-only for every engine
                    write_meta(state_tmp, {**meta, "name": None})
                faults.point("snapshot-restore.staged")
                was_active = self._end_process(vm)
                faults.point("snapshot-restore.stopped")
                self._discard(name, self.store.suspend_dir(name))
                os.replace(disk_tmp, self.store.rootfs_path(name))
                if engine is not None:
                    os.rename(state_tmp, self.store.suspend_dir(name))
                fsync_dir(vm_dir)
                faults.point("snapshot-restore.swapped")
                vm.state = VMState.SUSPENDED if engine is not None else VMState.STOPPED
                vm.pid = vm.pid_start_time = vm.pid_boot_id = None
                vm.rootfs_ready = True
                vm.last_error = None
                vm.stopped_at = now()
                self.store.save(vm)
                faults.point("snapshot-restore.saved")
            finally:
                disk_tmp.unlink(missing_ok=True)
                shutil.rmtree(state_tmp, ignore_errors=True)
            if was_active:
                self._withdraw_network(vm)
            if engine is not None and meta.get("vm_state") == VMState.RUNNING.value:
                return self.resume_locked(vm, self.store.suspend_dir(name))
            return vm

    def _end_process(self, vm: VM) -> bool:
        """End the VM's process at once (its state is being replaced); True if there was one."""
        ref = process_ref(vm)
        if ref is None or not is_alive(ref):
            return False
        paths = self.store.run_paths(vm.name)
        if not self.vms.owns_process(ref, paths):
            raise ConflictError(f"VM {vm.name!r}: its recorded process is not its hypervisor")
        vm.state = VMState.STOPPING
        self.store.save(vm)
        self.vms.engine(vm.engine).kill(ref, paths)
        return True
