"""The VM lifecycle service on its own: a fake engine (a real, harmless process that carries the
VM's socket path on its command line, as a hypervisor does), fake disks and host network that
record what they were asked, a recording runner and a temp data dir. No root, no VM.

What this pins down: the order of a start, what a failed or interrupted start undoes, how stop
and delete end, and that a corrupt record can still be deleted with ``-f`` — everything that
the root integration tests otherwise reach only through real ip/nft/ext4.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vmm.config import Config
from vmm.engines.base import BootSpec, StopResult
from vmm.errors import ConflictError, EngineError, NotFoundError, RecordError, ValidationError
from vmm.host.liveness import ProcessRef, is_alive, ref_for
from vmm.host.process import GracefulStep
from vmm.models import VMState
from vmm.runner import RecordingRunner, Runner
from vmm.services.create import CreateRequest
from vmm.services.vms import VmService
from vmm.status import StopOutcome
from vmm.store import RunPaths, Store

pytestmark = pytest.mark.unit


class FakeEngine:
    """Spawns ``python -c 'sleep' <api socket>``; can be told to fail at launch."""

    name = "firecracker"
    guest_stop_command = "reboot"

    def __init__(self) -> None:
        self.launched: list[BootSpec] = []
        self.fail_after_spawn: BaseException | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: list[int] = []
        self.stopped: list[int] = []
        self.cleaned = 0

    def check_available(self) -> None:
        pass

    def check_paths(self, paths: RunPaths) -> None:
        pass

    def sockets(self, paths: RunPaths) -> tuple[Path, ...]:
        return (paths.api_socket,)

    def cleanup(self, paths: RunPaths) -> None:
        self.cleaned += 1

    def launch(self, spec: BootSpec, on_spawn: Any = None) -> ProcessRef:
        self.launched.append(spec)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", str(spec.paths.api_socket)]
        )
        self.procs.append(proc)
        ref = ref_for(proc.pid)
        if on_spawn is not None:
            on_spawn(ref)
        if self.fail_after_spawn is not None:
            raise self.fail_after_spawn
        return ref

    def _end(self, ref: ProcessRef) -> None:
        os.kill(ref.pid, signal.SIGKILL)
        for p in self.procs:
            if p.pid == ref.pid:
                p.wait()

    def kill(self, ref: ProcessRef, paths: RunPaths) -> None:
        self.killed.append(ref.pid)
        self._end(ref)

    def stop(
        self, ref: ProcessRef, paths: RunPaths, *, timeout: float, guest_steps: Sequence[GracefulStep] = ()
    ) -> StopResult:
        self.stopped.append(ref.pid)
        self._end(ref)
        return StopResult("acpi")

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class FakeNetwork:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def ensure_for(self, vm: Any) -> None:
        self.calls.append(("ensure", vm.tap))

    def delete_tap(self, tap: str | None) -> None:
        self.calls.append(("delete_tap", tap))

    def rebuild_rules(self) -> None:
        self.calls.append(("rebuild", None))

    def teardown_if_unused(self) -> None:
        self.calls.append(("teardown", None))

    def check_unchanged(self, vms: Any = None) -> None:
        self.calls.append(("check", None))


class FakeDisks:
    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.fail: BaseException | None = None
        self.removed: list[tuple[str, bool]] = []

    def prepare(self, vm: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.prepared.append(vm.name)
        vm.rootfs_ready = True

    def prepare_mounts(self, vm: Any) -> None:
        pass

    def remove_mount_images(self, name: str, vm: Any) -> None:
        self.removed.append((name, vm is not None))


class Registry:
    def __init__(self, **items: Any):
        self.items = items

    def get(self, name: str) -> Any:
        try:
            return self.items[name]
        except KeyError:
            raise NotFoundError(f"no image or kernel {name!r}") from None


def build_service(
    tmp_path: Path, engine: FakeEngine, runner: Runner | None = None
) -> tuple[VmService, Store, FakeNetwork, FakeDisks]:
    """A VmService over a temp data dir, ``engine``, fake disks and network, a 100 MB image
    and a kernel named ``default`` (shared with the snapshot service's tests)."""
    cfg = Config(path=tmp_path / "config.json")
    cfg.data_dir = str(tmp_path / "data")
    store = Store(cfg.data_path)
    network, disks = FakeNetwork(), FakeDisks()
    image = SimpleNamespace(name="default", path=tmp_path / "img.ext4", virtual_size=100 << 20)
    kernel = SimpleNamespace(name="default", path=tmp_path / "vmlinux", initrd=None)
    svc = VmService(
        cfg,
        store,
        runner or RecordingRunner(),
        images=Registry(default=image),  # type: ignore[arg-type]
        kernels=Registry(default=kernel),  # type: ignore[arg-type]
        engines=lambda _name: engine,  # type: ignore[arg-type,return-value]
        network=network,  # type: ignore[arg-type]
        disks=disks,  # type: ignore[arg-type]
    )
    return svc, store, network, disks


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SimpleNamespace]:
    engine = FakeEngine()
    svc, store, network, disks = build_service(tmp_path, engine)
    ns = SimpleNamespace(svc=svc, store=store, engine=engine, network=network, disks=disks)
    try:
        yield ns
    finally:
        engine.reap()


def make(env: SimpleNamespace, name: str = "dev", **kw: Any) -> Any:
    return env.svc.create(CreateRequest(name=name, engine="firecracker", **kw))


def test_create_allocates_distinct_addresses_and_ids(env: SimpleNamespace) -> None:
    a, b = make(env, "a"), make(env, "b")
    assert (a.ip, b.ip) == ("172.16.0.2", "172.16.0.3")
    assert a.id != b.id and a.tap == f"vmm-{a.id}"
    assert env.store.load("a").state == VMState.CREATED
    with pytest.raises(ConflictError, match="already exists"):
        make(env, "a")


def test_create_validates_before_saving(env: SimpleNamespace) -> None:
    with pytest.raises(ValidationError):
        make(env, "x", cpus=0)
    with pytest.raises(NotFoundError):
        make(env, "y", image="nope")
    with pytest.raises(ValidationError, match="smaller than image"):
        make(env, "z", disk_mb=80)
    assert env.store.names() == []


def test_create_sizes_the_default_disk_to_the_image(env: SimpleNamespace) -> None:
    env.svc.config.vm_defaults.disk_size_mb = 64
    notes: list[str] = []
    vm = env.svc.create(CreateRequest(name="big", engine="firecracker"), note=notes.append)
    assert vm.disk_mb == 100 and "100 MB" in notes[0]


def test_create_never_reuses_the_ip_or_id_of_a_corrupt_record(env: SimpleNamespace) -> None:
    a = make(env, "a")
    text = env.store.record_path("a").read_text()
    env.store.record_path("a").write_bytes(b"\xff" + text.encode()[:-20])  # not UTF-8, cut short
    with pytest.raises(RecordError):
        env.store.load("a")
    b = make(env, "b")
    assert b.ip != a.ip and b.id != a.id


def test_start_then_stop(env: SimpleNamespace) -> None:
    make(env)
    vm = env.svc.start("dev")
    assert vm.state == VMState.RUNNING and is_alive(ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id))
    assert env.disks.prepared == ["dev"] and ("ensure", vm.tap) in env.network.calls
    spec = env.engine.launched[0]
    assert spec.vm_id == f"vmm-{vm.id}" and spec.nics[0].tap == vm.tap
    assert f"ip={vm.ip}" in spec.cmdline and spec.drives[0].root
    with pytest.raises(ConflictError, match="already running"):
        env.svc.start("dev")
    assert env.svc.stop("dev") == StopOutcome.ACPI
    after = env.store.load("dev")
    assert after.state == VMState.STOPPED and after.pid is None and after.stopped_at
    assert ("delete_tap", vm.tap) in env.network.calls
    assert env.svc.stop("dev") == StopOutcome.NOT_RUNNING


@pytest.mark.parametrize("failure", [EngineError("the API did not answer"), KeyboardInterrupt()])
def test_a_failed_start_is_undone(env: SimpleNamespace, failure: BaseException) -> None:
    """The process spawned before the failure is killed (it is this VM's: its socket path is on
    its command line), the TAP deleted, the rules rebuilt, the reason recorded."""
    make(env)
    env.engine.fail_after_spawn = failure
    with pytest.raises(type(failure)):
        env.svc.start("dev")
    vm = env.store.load("dev")
    assert vm.state == VMState.ERROR and vm.pid is None
    assert vm.last_error == (str(failure) or type(failure).__name__)
    assert env.engine.killed == [env.engine.procs[0].pid]
    assert env.engine.procs[0].poll() is not None  # really gone
    assert ("delete_tap", vm.tap) in env.network.calls and ("rebuild", None) in env.network.calls
    env.engine.fail_after_spawn = None
    assert env.svc.start("dev").state == VMState.RUNNING  # the next start just works


def test_a_start_whose_disk_fails_launches_nothing(env: SimpleNamespace) -> None:
    make(env)
    env.disks.fail = ValidationError("the image is gone")
    with pytest.raises(ValidationError):
        env.svc.start("dev")
    assert env.engine.launched == [] and env.store.load("dev").state == VMState.ERROR


def test_a_recycled_pid_is_never_signalled(env: SimpleNamespace) -> None:
    """A record naming a live process that is not this VM's hypervisor: stop leaves it alone."""
    make(env)
    vm = env.store.load("dev")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ref = ref_for(other.pid)
        vm.pid, vm.pid_start_time, vm.pid_boot_id = ref.pid, ref.start_time, ref.boot_id
        vm.state = VMState.RUNNING
        env.store.save(vm)
        assert env.svc.stop("dev") == StopOutcome.NOT_RUNNING
        assert other.poll() is None and env.engine.stopped == []
    finally:
        other.kill()
        other.wait()


def test_delete_refuses_a_running_vm_without_force(env: SimpleNamespace) -> None:
    make(env)
    env.svc.start("dev")
    with pytest.raises(ConflictError, match="is running"):
        env.svc.delete("dev")
    env.svc.delete("dev", force=True)
    assert env.store.names() == [] and env.engine.stopped
    assert ("teardown", None) in env.network.calls


def test_delete_of_a_corrupt_record(env: SimpleNamespace) -> None:
    """Without -f the record's error is shown; with -f what the record still names (its TAP)
    is removed along with it."""
    vm = make(env)
    env.store.vm_dir("dev").mkdir(parents=True)
    env.store.record_path("dev").write_text('{"name": "dev", "id": "' + vm.id + '", "ip": [')
    with pytest.raises(RecordError):
        env.svc.delete("dev")
    env.svc.delete("dev", force=True)
    assert not env.store.exists("dev") and not env.store.vm_dir("dev").exists()
    assert ("delete_tap", vm.tap) in env.network.calls
    assert env.disks.removed == [("dev", False)]
    with pytest.raises(NotFoundError):
        env.svc.delete("dev")
