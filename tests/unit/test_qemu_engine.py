"""QemuEngine checks that happen before any process is spawned (no QEMU needed)."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm.engines import registry
from vmm.engines.base import BootSpec, Drive, Nic, RunPaths
from vmm.engines.qemu.engine import INSTALL_HINT, QemuEngine
from vmm.errors import ConflictError, EngineError, NotFoundError, ValidationError, VmmError
from vmm.host.process import LIVE, ProcessRef, socket_is_live, socket_state
from vmm.runner import RecordingRunner, Result

pytestmark = pytest.mark.unit


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vq") as d:
        yield Path(d)


@pytest.fixture
def fake_binary(vm_dir: Path) -> Path:
    """An executable that leaves a marker when run: launch must not get that far."""
    binary = vm_dir / "qemu-fake"
    binary.write_text(f"#!/bin/sh\ntouch {vm_dir}/spawned\nexit 1\n")
    binary.chmod(0o755)
    return binary


def make_spec(vm_dir: Path, **changes: object) -> BootSpec:
    kernel = vm_dir / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    rootfs = vm_dir / "rootfs.ext4"
    rootfs.write_bytes(b"")
    fields: dict[str, object] = {
        "vm_id": "t",
        "name": "t",
        "kernel": kernel,
        "cmdline": "console=ttyS0",
        "cpus": 1,
        "memory_mb": 64,
        "paths": RunPaths(
            vm_dir, vm_dir / "console.log", vm_dir / "q.sock", vm_dir / "c.sock", vm_dir / "e.log"
        ),
        "drives": (Drive("rootfs", rootfs, root=True),),
        "accel": "tcg",
    }
    fields.update(changes)
    return BootSpec(**fields)  # type: ignore[arg-type]


def engine(binary: Path | str, **kwargs: object) -> QemuEngine:
    return QemuEngine(str(binary), tsc_khz=lambda: 2600000, **kwargs)  # type: ignore[arg-type]


def test_missing_binary_has_install_hint(vm_dir: Path) -> None:
    e = QemuEngine(str(vm_dir / "nope"))
    assert e.binary_path() is None
    assert e.version() is None
    with pytest.raises(VmmError, match="QEMU is not installed") as err:
        e.check_available()
    assert err.value.hint == INSTALL_HINT
    with pytest.raises(VmmError, match="QEMU is not installed"):
        e.launch(make_spec(vm_dir))


def test_missing_binary_on_path() -> None:
    assert QemuEngine("qemu-system-does-not-exist-x").binary_path() is None


def test_version_parsed_from_first_line(fake_binary: Path) -> None:
    out = (
        "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022\n"
    )
    runner = RecordingRunner(
        responses={f"{fake_binary} --version": Result([str(fake_binary), "--version"], 0, out, "")}
    )
    e = QemuEngine(str(fake_binary), runner=runner)
    assert e.version() == "7.2.22"
    assert runner.calls == [[str(fake_binary), "--version"]]


def test_missing_kernel_is_refused_before_spawn(vm_dir: Path, fake_binary: Path) -> None:
    spec = make_spec(vm_dir, kernel=vm_dir / "no-kernel")
    with pytest.raises(NotFoundError, match="kernel .*no-kernel does not exist"):
        engine(fake_binary).launch(spec)
    assert not (vm_dir / "spawned").exists()


def test_missing_drive_is_refused_before_spawn(vm_dir: Path, fake_binary: Path) -> None:
    spec = make_spec(vm_dir, drives=(Drive("data", vm_dir / "missing.ext4"),))
    with pytest.raises(NotFoundError, match="drive data"):
        engine(fake_binary).launch(spec)
    assert not (vm_dir / "spawned").exists()


def test_missing_tap_is_refused_before_spawn(vm_dir: Path, fake_binary: Path) -> None:
    # QEMU running as root would create the missing TAP instead of failing.
    seen: list[str] = []

    def tap_exists(name: str) -> bool:
        seen.append(name)
        return False

    spec = make_spec(vm_dir, nics=(Nic("eth0", "vmm-none", "06:00:00:00:00:01"),))
    with pytest.raises(EngineError, match="TAP device vmm-none for eth0 does not exist"):
        engine(fake_binary, tap_exists=tap_exists).launch(spec)
    assert seen == ["vmm-none"]
    assert not (vm_dir / "spawned").exists()


def test_unusable_kvm_is_refused_before_spawn(vm_dir: Path, fake_binary: Path) -> None:
    def resolve(requested: str) -> tuple[str, str]:
        assert requested == "kvm"
        raise VmmError("KVM cannot run guests on this host")

    with pytest.raises(VmmError, match="KVM cannot run guests"):
        engine(fake_binary, resolve=resolve).launch(make_spec(vm_dir, accel="kvm"))
    assert not (vm_dir / "spawned").exists()


def test_live_socket_is_not_taken_over(vm_dir: Path, fake_binary: Path) -> None:
    spec = make_spec(vm_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(spec.paths.api_socket))
        live.listen(1)
        with pytest.raises(ConflictError, match="another process is serving"):
            engine(fake_binary).launch(spec)
        assert spec.paths.api_socket.exists()
    assert not (vm_dir / "spawned").exists()


def test_non_socket_file_is_not_removed(vm_dir: Path, fake_binary: Path) -> None:
    spec = make_spec(vm_dir)
    spec.paths.console_socket.write_text("precious")
    with pytest.raises(ValidationError, match="not a socket"):
        engine(fake_binary).launch(spec)
    assert spec.paths.console_socket.read_text() == "precious"
    assert not (vm_dir / "spawned").exists()


def test_cleanup_removes_only_stale_sockets(vm_dir: Path) -> None:
    paths = make_spec(vm_dir).paths
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(paths.api_socket))
    stale.close()  # the file stays, nobody serves it
    paths.console_socket.write_text("not a socket")
    QemuEngine().cleanup(paths)
    assert not paths.api_socket.exists()
    assert paths.console_socket.exists()

    paths.console_socket.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(paths.console_socket))
        live.listen(1)
        QemuEngine().cleanup(paths)
        assert paths.console_socket.exists()
    QemuEngine().cleanup(paths)  # nothing there any more: no error


def test_status_of_a_gone_process_is_none(vm_dir: Path) -> None:
    paths = make_spec(vm_dir).paths
    assert QemuEngine().status(ProcessRef(pid=2**22 + 1, start_time=1), paths) is None


def test_a_socket_that_does_not_answer_in_time_is_live(vm_dir: Path) -> None:
    # One meaning for both engines: a listener whose backlog is full (a busy QEMU) times
    # out, and a socket that might be served is never removed nor taken over.
    paths = make_spec(vm_dir).paths
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(paths.api_socket))
        busy.listen(0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.connect(str(paths.api_socket))  # fills the backlog: nobody accepts
            assert socket_is_live(paths.api_socket, timeout=0.2)
            assert socket_state(paths.api_socket) == LIVE
            QemuEngine().cleanup(paths)
            assert paths.api_socket.exists()


def test_what_the_engine_serves(vm_dir: Path) -> None:
    paths = make_spec(vm_dir).paths
    e = QemuEngine()
    assert e.sockets(paths) == (paths.api_socket, paths.console_socket)
    assert e.console_socket(paths) == paths.console_socket
    assert registry.info("qemu").can(registry.CONSOLE)  # the registry says the same
    assert registry.info("qemu").display_name == "QEMU"
    e.check_paths(paths)
    long = paths.replace(console_socket=vm_dir / ("c" * 110))
    with pytest.raises(ValidationError, match="console socket path is too long"):
        e.check_paths(long)
    assert e.live_state(paths, timeout=0.2) is None  # nothing serves it


def test_engine_objects_hold_no_per_vm_state() -> None:
    # Built once per call by the registry, or kept for ever by a server: nothing accumulates.
    assert set(vars(QemuEngine())) == {
        "_binary", "_runner", "_resolve", "_tsc_khz", "_tap_exists",
        "ready_timeout", "qmp_timeout", "probe_timeout",
    }  # fmt: skip
