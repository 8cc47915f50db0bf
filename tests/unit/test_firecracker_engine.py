"""FirecrackerEngine without spawning anything: binary lookup, version, host-file helpers."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm.engines import registry
from vmm.engines.base import BootSpec, Drive, RunPaths
from vmm.engines.firecracker.engine import (
    FALLBACK_BINARY,
    INSTALL_HINT,
    FirecrackerEngine,
    check_socket_path,
    parse_version,
    prepare_log_file,
    remove_stale_socket,
)
from vmm.errors import ConflictError, EngineError, ValidationError, VmmError
from vmm.runner import RecordingRunner, Result

pytestmark = pytest.mark.unit


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fcu-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


# -- binary lookup --------------------------------------------------------------------------------


def test_explicit_binary_wins(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = executable(short_dir / "bin" / "firecracker")
    monkeypatch.setenv("PATH", str(on_path.parent))
    mine = executable(short_dir / "opt" / "fc-1.11")
    assert FirecrackerEngine(str(mine)).binary == str(mine)


def test_explicit_name_is_looked_up_on_path(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = executable(short_dir / "bin" / "firecracker-v1.11.0")
    monkeypatch.setenv("PATH", str(named.parent))
    assert FirecrackerEngine("firecracker-v1.11.0").binary == str(named)


def test_path_lookup_then_fallback(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = executable(short_dir / "bin" / "firecracker")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert FirecrackerEngine().binary == str(on_path)
    monkeypatch.setenv("PATH", str(short_dir / "empty"))
    assert FirecrackerEngine().binary == FALLBACK_BINARY == "/usr/local/bin/firecracker"


def test_missing_binary_error_has_the_install_hint(short_dir: Path) -> None:
    engine = FirecrackerEngine(str(short_dir / "nope" / "firecracker"))
    with pytest.raises(VmmError) as info:
        engine.check_available()
    assert info.value.brief == "firecracker binary not found"
    assert info.value.hint == INSTALL_HINT
    assert "scripts/install.sh" in INSTALL_HINT and "--engine qemu" in INSTALL_HINT
    assert engine.version() is None


def test_non_executable_binary_is_not_available(short_dir: Path) -> None:
    plain = short_dir / "firecracker"
    plain.write_text("")
    with pytest.raises(VmmError, match="not found"):
        FirecrackerEngine(str(plain)).check_available()


# -- version --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("Firecracker v1.11.0\n", "1.11.0"),
        ("Firecracker v1.11.0\n\n", "1.11.0"),
        ("Firecracker v1.12.0-dev\n", "1.12.0-dev"),
        ("firecracker 1.11\n", None),
        ("", None),
    ],
)
def test_parse_version(output: str, version: str | None) -> None:
    assert parse_version(output) == version


def test_version_runs_the_binary_through_the_runner(short_dir: Path) -> None:
    binary = str(executable(short_dir / "firecracker"))
    runner = RecordingRunner()
    runner.responses[f"{binary} --version"] = Result([], 0, "Firecracker v1.11.0\n", "")
    assert FirecrackerEngine(binary, runner=runner).version() == "1.11.0"
    assert runner.calls == [[binary, "--version"]]


def test_unexpected_version_output_is_an_error(short_dir: Path) -> None:
    binary = str(executable(short_dir / "firecracker"))
    runner = RecordingRunner()
    runner.responses[f"{binary} --version"] = Result([], 0, "cloud-hypervisor v40.0\n", "")
    with pytest.raises(EngineError, match="unexpected output"):
        FirecrackerEngine(binary, runner=runner).version()


# -- host files -----------------------------------------------------------------------------------


def test_remove_stale_socket(short_dir: Path) -> None:
    path = short_dir / "api.sock"
    assert remove_stale_socket(path) is False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert path.exists()
    assert remove_stale_socket(path) is True
    assert not path.exists()


def test_live_socket_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        with pytest.raises(ConflictError, match="in use"):
            remove_stale_socket(path)
        assert path.exists()
    finally:
        listener.close()


def test_non_socket_is_never_removed(short_dir: Path) -> None:
    path = short_dir / "api.sock"
    path.write_text("precious")
    with pytest.raises(EngineError, match="not a socket"):
        remove_stale_socket(path)
    assert path.read_text() == "precious"


def test_prepare_log_file_creates_and_truncates(short_dir: Path) -> None:
    log = short_dir / "vm" / "firecracker.log"
    prepare_log_file(log)
    assert log.read_bytes() == b""
    log.write_text("old run\n" * 100)
    prepare_log_file(log)
    assert log.read_bytes() == b""


def test_prepare_log_file_leaves_a_fifo(short_dir: Path) -> None:
    fifo = short_dir / "log.fifo"
    os.mkfifo(fifo)
    prepare_log_file(fifo)  # opening a FIFO with O_TRUNC would block without a reader
    assert fifo.is_fifo()


def test_socket_path_limit(short_dir: Path) -> None:
    check_socket_path(Path("/" + "a" * 106))
    with pytest.raises(ValidationError, match="too long"):
        check_socket_path(Path("/" + "a" * 107))


def test_bad_spec_fails_before_touching_the_host(short_dir: Path) -> None:
    paths = RunPaths(
        vm_dir=short_dir / "vm",
        console_log=short_dir / "vm" / "console.log",
        api_socket=short_dir / "vm" / "api.sock",
        console_socket=short_dir / "vm" / "console.sock",
        engine_log=short_dir / "vm" / "firecracker.log",
    )
    spec = BootSpec(
        vm_id="bad_id",
        name="bad",
        kernel=short_dir / "vmlinux",
        cmdline="console=ttyS0",
        cpus=1,
        memory_mb=128,
        paths=paths,
        drives=(Drive("rootfs", short_dir / "rootfs.ext4", root=True),),
    )
    with pytest.raises(ValidationError, match="instance id"):
        FirecrackerEngine(str(short_dir / "missing-binary")).launch(spec)
    assert not paths.vm_dir.exists()


def test_what_the_engine_serves(short_dir: Path) -> None:
    paths = RunPaths(
        vm_dir=short_dir / "vm",
        console_log=short_dir / "vm" / "console.log",
        api_socket=short_dir / "vm" / "api.sock",
        console_socket=short_dir / "vm" / "console.sock",
        engine_log=short_dir / "vm" / "firecracker.log",
    )
    e = FirecrackerEngine()
    assert e.sockets(paths) == (paths.api_socket,)  # no console socket: not its to clean
    assert e.console_socket(paths) is None
    assert not registry.info("firecracker").can(registry.CONSOLE)  # the registry agrees
    # Only its own socket's length matters (the console path is QEMU's).
    e.check_paths(paths.replace(console_socket=short_dir / ("c" * 110)))
    with pytest.raises(ValidationError, match="too long"):
        e.check_paths(paths.replace(api_socket=short_dir / ("a" * 110)))
    assert e.live_state(paths, timeout=0.2) is None
    paths.console_socket.parent.mkdir()
    paths.console_socket.write_text("not firecracker's")
    e.cleanup(paths)
    assert paths.console_socket.exists()


def test_a_busy_socket_is_never_removed(short_dir: Path) -> None:
    path = short_dir / "api.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
            first.connect(str(path))  # the backlog is full: the next connect times out
            with pytest.raises(ConflictError, match="in use"):
                remove_stale_socket(path)
    assert path.exists()
