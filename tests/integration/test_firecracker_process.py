"""FirecrackerEngine against the fake firecracker: real processes, sockets and signals.

No root networking is needed (the fake does not open TAPs). Every test works in its own short
directory under /tmp (AF_UNIX paths must stay below 108 bytes) and ends with a check that no
process whose command line names that directory is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))  # tests/fakes is not a package: the fake runs as a script

import fc_harness  # noqa: E402
import fc_spec  # noqa: E402

from vmm.engines.base import BootSpec, Drive, Nic, RunPaths  # noqa: E402
from vmm.engines.firecracker.engine import FirecrackerEngine  # noqa: E402
from vmm.engines.managed import LaunchError  # noqa: E402
from vmm.errors import ApiError, ConflictError, EngineError, ValidationError, VmmError  # noqa: E402
from vmm.host.process import ProcessRef, is_alive  # noqa: E402

pytestmark = pytest.mark.integration

CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off"


@dataclass
class Env:
    dir: Path
    binary: Path
    record: Path

    def engine(self, **kwargs: Any) -> FirecrackerEngine:
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("term_timeout", 1.0)
        return FirecrackerEngine(str(self.binary), **kwargs)

    def requests(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    d = fc_harness.short_tmpdir()
    for knob in fc_harness.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    record = d / "requests.jsonl"
    monkeypatch.setenv("FAKE_FC_RECORD", str(record))
    # The process alone, in the main namespace: no TAP exists (the CLI tests run the fake with
    # its TAP check on, in a namespace where vmm created the TAP).
    monkeypatch.setenv("FAKE_FC_CHECK_TAP", "0")
    for name in ("vmlinux", "initrd.img", "rootfs.ext4", "data.ext4"):
        (d / name).write_bytes(b"\0" * 4096)
    try:
        yield Env(d, fc_harness.install_fake(d / "bin"), record)
    finally:
        leftovers = fc_harness.processes_mentioning(str(d))
        fc_harness.kill_all(leftovers)
        shutil.rmtree(d, ignore_errors=True)
        assert leftovers == [], f"processes left behind: {leftovers}"


def run_paths(d: Path) -> RunPaths:
    vm = d / "vm"
    return RunPaths(
        vm_dir=vm,
        console_log=vm / "console.log",
        api_socket=vm / "api.sock",
        console_socket=vm / "console.sock",
        engine_log=vm / "firecracker.log",
    )


def make_spec(d: Path, **overrides: Any) -> BootSpec:
    fields: dict[str, Any] = {
        "vm_id": "dev1-0a1b2c",
        "name": "dev1",
        "kernel": d / "vmlinux",
        "cmdline": CMDLINE,
        "cpus": 2,
        "memory_mb": 256,
        "paths": run_paths(d),
        "initrd": d / "initrd.img",
        "drives": (
            Drive("data_1", d / "data.ext4"),
            Drive("rootfs", d / "rootfs.ext4", root=True),
        ),
        "nics": (Nic("eth0", "vmm-0a1b2c", "06:00:AC:10:00:02"),),
    }
    fields.update(overrides)
    return BootSpec(**fields)


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def hard_kill(ref: ProcessRef) -> None:
    """Kill behind the engine's back, as a crash or an OOM kill would."""
    os.kill(ref.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(ref.pid, 0)
    assert wait_for(lambda: not is_alive(ref))


# -- the happy path -------------------------------------------------------------------------------


def test_launch_configures_boots_and_stops_gracefully(env: Env) -> None:
    spec = make_spec(env.dir)
    paths = spec.paths
    paths.vm_dir.mkdir()
    paths.engine_log.write_text("a previous run's log\n" * 50)
    engine = env.engine()

    ref = engine.launch(spec)
    try:
        assert is_alive(ref)
        api = engine.api(paths)
        info = api.instance_info()
        assert info == {
            "id": "dev1-0a1b2c",
            "state": "Running",
            "vmm_version": "1.11.0",
            "app_name": "Firecracker",
        }
        config = api.vm_config()
        fc_spec.SpecValidator(nullable_optionals=True).validate("FullVmConfiguration", config)
        assert config["boot-source"] == {
            "kernel_image_path": str(env.dir / "vmlinux"),
            "initrd_path": str(env.dir / "initrd.img"),
            "boot_args": CMDLINE,
        }
        assert config["machine-config"]["vcpu_count"] == 2
        assert config["machine-config"]["mem_size_mib"] == 256
        assert config["machine-config"]["smt"] is False
        drives = [
            (d["drive_id"], d["is_root_device"], d["is_read_only"], d["cache_type"])
            for d in config["drives"]
        ]
        assert drives == [("rootfs", True, False, "Writeback"), ("data_1", False, False, "Writeback")]
        assert [
            (n["iface_id"], n["host_dev_name"], n["guest_mac"])
            for n in config["network-interfaces"]
        ] == [("eth0", "vmm-0a1b2c", "06:00:AC:10:00:02")]

        sent = [(r["method"], r["path"]) for r in env.requests() if r["method"] != "GET"]
        assert sent == [
            ("PUT", "/logger"),
            ("PUT", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/drives/rootfs"),
            ("PUT", "/drives/data_1"),
            ("PUT", "/network-interfaces/eth0"),
            ("PUT", "/actions"),
        ]
        assert all(r["status"] == 204 for r in env.requests() if r["method"] == "PUT")
        assert env.requests()[0]["path"] == "/"  # readiness: GET / before configuring

        # The serial console (firecracker's stdout) went to console.log; Firecracker added root=.
        console = paths.console_log.read_text()
        assert f"Command line: {CMDLINE} root=/dev/vda rw virtio_mmio.device=" in console
        # The engine log was truncated, then written by the logger.
        log = paths.engine_log.read_text()
        assert "a previous run's log" not in log
        assert "Running Firecracker v1.11.0" in log
    except BaseException:
        engine.kill(ref, paths)
        raise

    result = engine.stop(ref, paths, timeout=5.0)
    assert result.how == "ctrl-alt-del"
    assert not is_alive(ref)
    assert not paths.api_socket.exists()
    assert "reboot: Restarting system" in paths.console_log.read_text()
    assert env.requests()[-1]["body"] == {"action_type": "SendCtrlAltDel"}


def test_another_engine_object_stops_reaps_and_reports_state(env: Env) -> None:
    # The registry builds an engine per call, a server may keep one for ever: the process
    # must be stopped and reaped whichever object launched it.
    spec = make_spec(env.dir)
    ref = env.engine().launch(spec)
    other = env.engine()
    assert other.live_state(spec.paths) == "Running"
    assert other.stop(ref, spec.paths, timeout=5.0).how == "ctrl-alt-del"
    assert not Path(f"/proc/{ref.pid}").exists()  # reaped: no zombie left in this process
    assert other.live_state(spec.paths) is None
    assert other.sockets(spec.paths) == (spec.paths.api_socket,)
    assert other.console_socket(spec.paths) is None


def test_minimal_spec_without_initrd_or_nics(env: Env) -> None:
    spec = make_spec(
        env.dir,
        initrd=None,
        nics=(),
        drives=(Drive("rootfs", env.dir / "rootfs.ext4", root=True, read_only=True),),
        cpus=1,
    )
    engine = env.engine()
    ref = engine.launch(spec)
    config = engine.api(spec.paths).vm_config()
    assert config["boot-source"]["initrd_path"] is None
    assert config["network-interfaces"] == []
    assert "root=/dev/vda ro" in spec.paths.console_log.read_text()
    assert engine.stop(ref, spec.paths, timeout=5.0).how == "ctrl-alt-del"


# -- stop escalation ------------------------------------------------------------------------------


def test_stop_falls_back_to_sigterm(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_IGNORE_CTRL_ALT_DEL", "1")
    spec = make_spec(env.dir)
    engine = env.engine()
    ref = engine.launch(spec)
    started = time.monotonic()
    result = engine.stop(ref, spec.paths, timeout=0.5)
    assert result.how == "sigterm"
    assert time.monotonic() - started < 5.0
    assert not is_alive(ref)
    assert not spec.paths.api_socket.exists()
    assert {"action_type": "SendCtrlAltDel"} in [r["body"] for r in env.requests()]


def test_stop_falls_back_to_sigkill(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_IGNORE_CTRL_ALT_DEL", "1")
    monkeypatch.setenv("FAKE_FC_IGNORE_SIGTERM", "1")
    spec = make_spec(env.dir)
    engine = env.engine(term_timeout=0.5)
    ref = engine.launch(spec)
    result = engine.stop(ref, spec.paths, timeout=0.5)
    assert result.how == "sigkill"
    assert not is_alive(ref)
    assert not spec.paths.api_socket.exists()


def test_stop_of_a_dead_process_cleans_its_socket(env: Env) -> None:
    spec = make_spec(env.dir)
    engine = env.engine()
    ref = engine.launch(spec)
    hard_kill(ref)
    assert spec.paths.api_socket.exists()  # Firecracker never deletes its socket
    assert engine.stop(ref, spec.paths, timeout=1.0).how == "already-stopped"
    assert not spec.paths.api_socket.exists()


def test_kill_is_immediate(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_IGNORE_SIGTERM", "1")
    spec = make_spec(env.dir)
    engine = env.engine()
    ref = engine.launch(spec)
    engine.kill(ref, spec.paths)
    assert not is_alive(ref)
    assert not spec.paths.api_socket.exists()


# -- stale and live sockets -----------------------------------------------------------------------


def test_stale_socket_of_a_dead_process_is_replaced(env: Env) -> None:
    spec = make_spec(env.dir)
    engine = env.engine()
    first = engine.launch(spec)
    hard_kill(first)
    assert spec.paths.api_socket.exists()

    second = engine.launch(spec)  # would fail with "Failed to open the API socket" otherwise
    assert second.pid != first.pid
    assert engine.api(spec.paths).instance_info()["state"] == "Running"
    assert engine.stop(second, spec.paths, timeout=5.0).how == "ctrl-alt-del"


def test_socket_of_a_running_vm_is_not_taken_over(env: Env) -> None:
    spec = make_spec(env.dir)
    engine = env.engine()
    ref = engine.launch(spec)
    try:
        with pytest.raises(ConflictError, match="in use by a running process"):
            engine.launch(spec)
        assert is_alive(ref)
        assert engine.api(spec.paths).instance_info()["state"] == "Running"
    finally:
        assert engine.stop(ref, spec.paths, timeout=5.0).how == "ctrl-alt-del"


# -- failures -------------------------------------------------------------------------------------


def assert_nothing_left(env: Env, spec: BootSpec) -> None:
    assert not spec.paths.api_socket.exists()
    assert wait_for(lambda: fc_harness.processes_mentioning(str(env.dir)) == [])


def test_rejected_kernel_surfaces_the_fault_message(env: Env) -> None:
    spec = make_spec(env.dir, kernel=env.dir / "no-such-vmlinux")
    with pytest.raises(ApiError) as info:
        env.engine().launch(spec)
    err = info.value
    assert (err.method, err.path, err.status) == ("PUT", "/boot-source", 400)
    assert err.fault_message == (
        "Boot source error: The kernel file cannot be opened: "
        "No such file or directory (os error 2)"
    )
    assert err.fault_message in str(err)
    assert_nothing_left(env, spec)


def test_rejected_drive_surfaces_the_fault_message(env: Env) -> None:
    spec = make_spec(env.dir, drives=(Drive("rootfs", env.dir / "gone.ext4", root=True),))
    with pytest.raises(ApiError) as info:
        env.engine().launch(spec)
    assert info.value.path == "/drives/rootfs"
    assert "No such file or directory" in info.value.fault_message
    assert_nothing_left(env, spec)


def test_crash_at_startup_reports_exit_code_and_log_tail(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FC_CRASH_AT_STARTUP", "1")
    spec = make_spec(env.dir)
    with pytest.raises(EngineError) as info:
        env.engine().launch(spec)
    err = info.value
    assert not isinstance(err, ApiError)
    assert err.brief == "firecracker exited during startup (exit code 1)"
    assert err.details is not None
    assert "Error creating the Kvm object" in err.details
    assert "exit_code=1" in err.details
    assert isinstance(err, LaunchError)
    assert err.returncode == 1
    assert err.argv == [
        str(env.binary), "--api-sock", str(spec.paths.api_socket), "--id", spec.vm_id
    ]  # fmt: skip
    assert "Error creating the Kvm object" in err.log_tail
    assert_nothing_left(env, spec)


def test_startup_error_shows_only_this_runs_console(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(env.dir)
    spec.paths.vm_dir.mkdir()
    spec.paths.console_log.write_text("Failed to open the API socket (an earlier run)\n")
    monkeypatch.setenv("FAKE_FC_CRASH_AT_STARTUP", "1")
    with pytest.raises(LaunchError) as info:
        env.engine().launch(spec)
    assert "an earlier run" not in info.value.log_tail
    assert info.value.hint == f"see {spec.paths.console_log}"  # not "another process holds"


def test_invalid_instance_id_never_reaches_firecracker(env: Env) -> None:
    spec = make_spec(env.dir, vm_id="dev_1")  # firecracker would panic on the underscore
    with pytest.raises(ValidationError):
        env.engine().launch(spec)
    assert not spec.paths.vm_dir.exists()


def test_slow_startup_is_waited_for(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_STARTUP_DELAY", "0.7")
    spec = make_spec(env.dir)
    engine = env.engine(socket_timeout=5.0)
    ref = engine.launch(spec)
    assert engine.stop(ref, spec.paths, timeout=5.0).how == "ctrl-alt-del"


def test_startup_timeout_kills_the_process(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_STARTUP_DELAY", "30")
    spec = make_spec(env.dir)
    started = time.monotonic()
    with pytest.raises(LaunchError, match="did not answer on .* within 0.5s") as info:
        env.engine(socket_timeout=0.5).launch(spec)
    assert time.monotonic() - started < 5.0
    assert info.value.returncode is None  # it was running: killed since
    assert_nothing_left(env, spec)


def test_missing_binary_gives_the_install_hint(env: Env) -> None:
    spec = make_spec(env.dir)
    engine = FirecrackerEngine(str(env.dir / "bin" / "no-firecracker"))
    with pytest.raises(VmmError) as info:
        engine.launch(spec)
    assert info.value.brief == "firecracker binary not found"
    assert info.value.hint is not None and "scripts/install.sh" in info.value.hint
    assert engine.version() is None
    assert not spec.paths.engine_log.exists()


def test_binary_from_path_and_its_version(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{env.binary.parent}:{os.environ.get('PATH', '')}")
    engine = FirecrackerEngine()
    assert engine.binary == str(env.binary)
    assert engine.version() == "1.11.0"
    engine.check_available()


def test_socket_path_too_long_is_refused(env: Env) -> None:
    long_vm = env.dir / ("v" * 110)
    spec = make_spec(env.dir, paths=run_paths(env.dir).replace(api_socket=long_vm / "api.sock"))
    with pytest.raises(ValidationError, match="too long for a Unix socket"):
        env.engine().launch(spec)
