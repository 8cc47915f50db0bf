"""Suspend, resume and named snapshots as services: ``test_vms``'s fake engine taught to pause,
save a state file and restore from one (a harmless process again), fake disks and network, a
temp data dir. No root, no VM: what is pinned here is the order of the steps, what a failure
leaves, and that bad input changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.test_vms import FakeEngine, build_service
from vmm.engines.base import BootSpec
from vmm.errors import ConflictError, EngineError, NotFoundError, ValidationError
from vmm.host.liveness import ProcessRef, is_alive
from vmm.models import VMState
from vmm.runner import Runner
from vmm.services.create import CreateRequest
from vmm.services.snapshots import SnapshotService
from vmm.store import RunPaths

pytestmark = pytest.mark.unit


class SnapEngine(FakeEngine):
    """``FakeEngine`` plus the snapshot calls; its "state" is a file naming the VM."""

    state_files = ("vmstate",)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.version_ = "1.11.0"
        self.fail_save: BaseException | None = None
        self.fail_restore: BaseException | None = None
        self.restored: list[Path] = []

    def version(self) -> str:
        return self.version_

    def pause(self, paths: RunPaths) -> None:
        self.calls.append("pause")

    def resume(self, paths: RunPaths) -> None:
        self.calls.append("resume")

    def save_state(self, paths: RunPaths, dest: Path) -> None:
        self.calls.append("save")
        if self.fail_save is not None:
            raise self.fail_save
        (dest / "vmstate").write_text(f"state of {paths.api_socket.stem}")
        os.chmod(dest / "vmstate", 0o600)

    def restore(self, spec: BootSpec, state_dir: Path, on_spawn: Any = None) -> ProcessRef:
        self.calls.append("restore")
        assert (state_dir / "vmstate").read_text() == f"state of {spec.name}"
        self.restored.append(state_dir)
        saved, self.fail_after_spawn = self.fail_after_spawn, self.fail_restore
        try:
            return self.launch(spec, on_spawn)
        finally:
            self.fail_after_spawn = saved


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SimpleNamespace]:
    engine = SnapEngine()
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    vms, store, network, _disks = build_service(tmp_path, engine, Runner())
    snaps = SnapshotService(vms)
    vms.on_start = snaps.on_start
    vms.create(CreateRequest(name="dev", engine="firecracker"))
    ns = SimpleNamespace(vms=vms, snaps=snaps, store=store, engine=engine, network=network)
    try:
        yield ns
    finally:
        engine.reap()


def running(env: SimpleNamespace) -> Any:
    vm = env.vms.start("dev")
    env.store.ensure_vm_dir("dev")
    env.store.rootfs_path("dev").write_bytes(b"disk v1")
    return vm


def alive(vm: Any) -> bool:
    return is_alive(ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id))


def test_suspend_then_start_resumes(env: SimpleNamespace) -> None:
    vm = running(env)
    suspended = env.snaps.suspend("dev")
    assert suspended.state == VMState.SUSPENDED and suspended.pid is None
    assert not alive(vm) and env.engine.calls == ["pause", "save"]
    state = env.store.suspend_dir("dev")
    assert (state / "vmstate").stat().st_mode & 0o777 == 0o600
    meta = json.loads((state / "meta.json").read_text())
    assert meta["engine_version"] == "1.11.0" and meta["machine"]["memory_mb"] == 512
    assert ("delete_tap", vm.tap) in env.network.calls
    with pytest.raises(ConflictError, match="already suspended"):
        env.snaps.suspend("dev")
    resumed = env.vms.start("dev")
    assert resumed.state == VMState.RUNNING and alive(resumed)
    assert env.engine.calls[-1] == "restore" and len(env.engine.launched) == 2
    assert not state.exists()  # loaded once, never again
    assert ("ensure", vm.tap) in env.network.calls[-2:]


def test_suspending_a_stopped_vm_changes_nothing(env: SimpleNamespace) -> None:
    before = env.store.record_path("dev").read_text()
    with pytest.raises(ConflictError, match="is not running"):
        env.snaps.suspend("dev")
    assert env.store.record_path("dev").read_text() == before
    assert not env.store.vm_dir("dev").exists() or os.listdir(env.store.vm_dir("dev")) == []


@pytest.mark.parametrize("failure", [EngineError("No space left on device"), KeyboardInterrupt()])
def test_a_failed_suspend_resumes_the_guest(env: SimpleNamespace, failure: BaseException) -> None:
    vm = running(env)
    env.engine.fail_save = failure
    with pytest.raises(type(failure)):
        env.snaps.suspend("dev")
    after = env.store.load("dev")
    assert after.state == VMState.RUNNING and alive(after)
    assert env.engine.calls == ["pause", "save", "resume"]
    assert sorted(os.listdir(env.store.vm_dir("dev"))) == ["rootfs.ext4"]  # no temp dir left
    assert vm.pid == after.pid


def test_a_failed_resume_leaves_the_vm_suspended(env: SimpleNamespace) -> None:
    running(env)
    env.snaps.suspend("dev")
    env.engine.fail_restore = EngineError("load of migration failed")
    with pytest.raises(EngineError) as info:
        env.vms.start("dev")
    assert "still suspended" in (info.value.hint or "")
    vm = env.store.load("dev")
    assert vm.state == VMState.SUSPENDED and vm.pid is None and vm.last_error
    assert (env.store.suspend_dir("dev") / "vmstate").exists()
    assert env.engine.killed  # the process that failed to load
    env.engine.fail_restore = None
    assert env.vms.start("dev").state == VMState.RUNNING


def test_resume_refuses_another_hypervisor_version(env: SimpleNamespace) -> None:
    running(env)
    env.snaps.suspend("dev")
    env.engine.version_ = "1.12.0"
    before = env.store.record_path("dev").read_text()
    with pytest.raises(ValidationError, match=r"saved under firecracker 1\.11\.0; this host has firecracker 1\.12\.0"):
        env.vms.start("dev")
    assert env.store.record_path("dev").read_text() == before
    assert env.engine.calls[-1] == "save"  # nothing spawned


def test_an_interrupted_resume_after_the_spawn_boots_afresh(env: SimpleNamespace) -> None:
    """Killed after its process was spawned (the guest may have run): the state is dropped."""
    running(env)
    env.snaps.suspend("dev")
    vm = env.store.load("dev")
    vm.state, vm.pid = VMState.STARTING, 12345  # what a killed resume leaves (pid long gone)
    vm.pid_start_time = 1
    env.store.save(vm)
    again = env.vms.start("dev")
    assert env.engine.calls[-1] == "save"  # a cold boot, not a restore
    assert again.state == VMState.RUNNING and not env.store.suspend_dir("dev").exists()


def test_an_interrupted_resume_before_the_spawn_resumes(env: SimpleNamespace) -> None:
    running(env)
    env.snaps.suspend("dev")
    vm = env.store.load("dev")
    vm.state = VMState.STARTING
    env.store.save(vm)
    env.vms.start("dev")
    assert env.engine.calls[-1] == "restore"


def test_a_stale_state_is_dropped_by_a_cold_start(env: SimpleNamespace) -> None:
    running(env)
    env.snaps.suspend("dev")
    vm = env.store.load("dev")
    vm.state = VMState.STOPPED  # e.g. 'vmm stop' of the suspended VM
    env.store.save(vm)
    env.vms.start("dev")
    assert env.engine.calls[-1] == "save" and not env.store.suspend_dir("dev").exists()


def test_snapshot_of_a_running_vm_and_restore(env: SimpleNamespace) -> None:
    running(env)
    info = env.snaps.create("dev", "one")
    assert info.kind == "memory" and info.vm_state == "running" and info.engine_version == "1.11.0"
    assert env.engine.calls == ["pause", "save", "resume"]
    assert (info.path / "rootfs.ext4").read_bytes() == b"disk v1"
    env.store.rootfs_path("dev").write_bytes(b"disk v2")
    vm = env.snaps.restore("dev", "one")
    assert vm.state == VMState.RUNNING and alive(vm)
    assert env.store.rootfs_path("dev").read_bytes() == b"disk v1"
    assert env.engine.calls[-1] == "restore" and len(env.engine.killed) == 1
    assert (info.path / "vmstate").exists()  # the snapshot stays whole
    assert [i.name for i in env.snaps.list("dev")] == ["one"]


def test_snapshot_of_a_stopped_vm_is_disks_only(env: SimpleNamespace) -> None:
    running(env)
    env.vms.stop("dev")
    info = env.snaps.create("dev", "cold")
    assert (info.kind, info.vm_state) == ("disk", "stopped")
    env.store.rootfs_path("dev").write_bytes(b"changed")
    vm = env.snaps.restore("dev", "cold")
    assert vm.state == VMState.STOPPED and env.store.rootfs_path("dev").read_bytes() == b"disk v1"


def test_snapshot_bad_input_changes_nothing(env: SimpleNamespace) -> None:
    with pytest.raises(ConflictError, match="no disk yet"):
        env.snaps.create("dev", "early")
    running(env)
    with pytest.raises(ValidationError, match="invalid snapshot name"):
        env.snaps.create("dev", "Bad_Name")
    env.snaps.create("dev", "one")
    with pytest.raises(ConflictError, match="already has a snapshot 'one'"):
        env.snaps.create("dev", "one")
    with pytest.raises(NotFoundError, match="no snapshot 'two'"):
        env.snaps.restore("dev", "two")
    with pytest.raises(NotFoundError, match="no snapshot 'two'"):
        env.snaps.delete("dev", "two")
    env.engine.version_ = "9.9.9"
    with pytest.raises(ValidationError, match="cannot load it"):
        env.snaps.restore("dev", "one")
    vm = env.store.load("dev")
    assert vm.state == VMState.RUNNING and alive(vm)
    env.snaps.delete("dev", "one")
    assert env.snaps.list("dev") == []
    assert sorted(os.listdir(env.store.vm_dir("dev"))) == ["rootfs.ext4", "snapshots"]


def test_snapshot_of_a_suspended_vm_restores_suspended(env: SimpleNamespace) -> None:
    running(env)
    env.snaps.suspend("dev")
    info = env.snaps.create("dev", "asleep")
    assert (info.kind, info.vm_state) == ("memory", "suspended")
    env.vms.start("dev")
    vm = env.snaps.restore("dev", "asleep")
    assert vm.state == VMState.SUSPENDED and (env.store.suspend_dir("dev") / "vmstate").exists()
    assert env.vms.start("dev").state == VMState.RUNNING


def test_snapshot_with_stop_leaves_the_vm_stopped(env: SimpleNamespace) -> None:
    running(env)
    info = env.snaps.create("dev", "last", stop=True)
    assert (info.kind, info.vm_state) == ("memory", "running")
    assert env.engine.calls == ["pause", "save", "resume"] and env.engine.stopped
    assert env.store.load("dev").state == VMState.STOPPED
    vm = env.snaps.restore("dev", "last")  # and it comes back running from the snapshot
    assert vm.state == VMState.RUNNING and alive(vm)
