"""Keep the fake firecracker honest: its CLI and API behave like Firecracker v1.11's.

The messages checked verbatim are the ones Firecracker's source and docs spell out
(api_server/parsed_request.rs, rpc_interface.rs; docs/firecracker.md, Identifiers, API
conventions and "Process, console and signals").
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
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

from vmm.engines.firecracker.api import FirecrackerApi, exchange  # noqa: E402
from vmm.errors import ApiError  # noqa: E402

pytestmark = pytest.mark.integration

ONLY_BEFORE_BOOT = "The requested operation is not supported after starting the microVM."
ONLY_AFTER_BOOT = "The requested operation is not supported before starting the microVM."


@dataclass
class Fake:
    proc: subprocess.Popen[bytes]
    sock: Path
    console: Path
    api: FirecrackerApi

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """A request exactly as given (the client refuses empty PUTs, Firecracker must too)."""
        status, data = exchange(self.sock, method, path, body, timeout=5.0, content_type=None)
        return status, (json.loads(data) if data else None)

    def fault(self, method: str, path: str, body: Any) -> str:
        with pytest.raises(ApiError) as info:
            self.api.request(method, path, body)
        assert info.value.status == 400
        return str(info.value.fault_message)


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for knob in fc_harness.KNOBS:
        monkeypatch.delenv(knob, raising=False)
    d = fc_harness.short_tmpdir("fcf-")
    # The process alone, in the main namespace: no TAP exists (the CLI tests run the fake with
    # its TAP check on, in a namespace where vmm created the TAP).
    monkeypatch.setenv("FAKE_FC_CHECK_TAP", "0")
    for name in ("vmlinux", "rootfs.ext4", "data.ext4"):
        (d / name).write_bytes(b"\0" * 512)
    (d / "fc.log").touch()
    try:
        yield d
    finally:
        leftovers = fc_harness.processes_mentioning(str(d))
        fc_harness.kill_all(leftovers)
        shutil.rmtree(d, ignore_errors=True)
        assert leftovers == [], f"processes left behind: {leftovers}"


def run_fake(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(fc_harness.FAKE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_fake(d: Path, *args: str, sock_name: str = "api.sock") -> Fake:
    sock = d / sock_name
    console = d / f"{sock_name}.console"
    with console.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(fc_harness.FAKE),
                "--api-sock",
                str(sock),
                "--id",
                "fake-1",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    api = FirecrackerApi(sock, timeout=5.0)
    deadline = time.monotonic() + 10
    while not (sock.exists() and api.is_ready()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"fake did not start: {console.read_text()}")
        time.sleep(0.02)
    return Fake(proc, sock, console, api)


@pytest.fixture
def fake(workdir: Path) -> Iterator[Fake]:
    f = start_fake(workdir)
    yield f
    if f.proc.poll() is None:
        f.proc.kill()
    f.proc.wait()


def configure(f: Fake, d: Path) -> None:
    f.api.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    f.api.put(
        "/boot-source", {"kernel_image_path": str(d / "vmlinux"), "boot_args": "console=ttyS0"}
    )
    f.api.put(
        "/drives/rootfs",
        {"drive_id": "rootfs", "path_on_host": str(d / "rootfs.ext4"), "is_root_device": True},
    )


def boot(f: Fake, d: Path) -> None:
    configure(f, d)
    f.api.put("/actions", {"action_type": "InstanceStart"})
    assert f.api.instance_info()["state"] == "Running"


# -- CLI ------------------------------------------------------------------------------------------


def test_version_flag() -> None:
    result = run_fake("--version")
    assert (result.returncode, result.stdout) == (0, "Firecracker v1.11.0\n")


def test_unknown_flag_is_an_argument_error(workdir: Path) -> None:
    result = run_fake("--api-sock", str(workdir / "s"), "--frobnicate")
    assert result.returncode == 153  # FcExitCode::ArgParsing
    assert "Arguments parsing error" in result.stderr
    assert not (workdir / "s").exists()


def test_invalid_instance_id_panics(workdir: Path) -> None:
    result = run_fake("--api-sock", str(workdir / "s"), "--id", "has_underscore")
    assert result.returncode == -signal.SIGABRT
    assert "Invalid instance ID" in result.stderr
    assert not (workdir / "s").exists()


def test_missing_cli_log_file_is_an_error(workdir: Path) -> None:
    result = run_fake("--api-sock", str(workdir / "s"), "--log-path", str(workdir / "none.log"))
    assert result.returncode == 1
    assert "No such file or directory" in result.stderr


def test_socket_in_use_fails_like_firecracker(workdir: Path, fake: Fake) -> None:
    result = run_fake("--api-sock", str(fake.sock))
    assert result.returncode == 1
    assert f"Failed to open the API socket at: {fake.sock}" in result.stderr


def test_config_file_boots_without_api_calls(workdir: Path) -> None:
    config = {
        "boot-source": {"kernel_image_path": str(workdir / "vmlinux"), "boot_args": "quiet"},
        "drives": [
            {
                "drive_id": "rootfs",
                "path_on_host": str(workdir / "rootfs.ext4"),
                "is_root_device": True,
                "is_read_only": False,
            }
        ],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
    }
    (workdir / "vm.json").write_text(json.dumps(config))
    f = start_fake(workdir, "--config-file", str(workdir / "vm.json"))
    try:
        assert f.api.instance_info()["state"] == "Running"
        assert f.api.vm_config()["machine-config"]["vcpu_count"] == 2
    finally:
        f.proc.kill()
        f.proc.wait()

    (workdir / "bad.json").write_text(json.dumps({"drives": []}))
    result = run_fake("--api-sock", str(workdir / "s2"), "--config-file", str(workdir / "bad.json"))
    assert result.returncode == 152  # FcExitCode::BadConfiguration


# -- protocol -------------------------------------------------------------------------------------


def test_instance_info_and_version(fake: Fake) -> None:
    info = fake.api.instance_info()
    assert info == {
        "id": "fake-1",
        "state": "Not started",
        "vmm_version": "1.11.0",
        "app_name": "Firecracker",
    }
    fc_spec.SpecValidator().validate("InstanceInfo", info)
    assert fake.api.get("/version") == {"firecracker_version": "1.11.0"}


def test_unknown_paths_and_methods_are_400(fake: Fake) -> None:
    assert fake.raw("GET", "/nope") == (
        400,
        {"fault_message": "Invalid request method and/or path: GET nope."},
    )
    assert fake.raw("PUT", "/nope", b"{}") == (
        400,
        {"fault_message": "Invalid request method and/or path: PUT nope."},
    )
    assert fake.raw("GET", "/vm")[0] == 400
    assert fake.raw("DELETE", "/drives/rootfs")[0] == 400
    assert fake.raw("GET", "/", b"{}") == (
        400,
        {"fault_message": "GET request cannot have a body."},
    )


def test_empty_bodies_are_refused(fake: Fake) -> None:
    assert fake.raw("PUT", "/entropy") == (400, {"fault_message": "Empty PUT request."})
    assert fake.raw("PATCH", "/vm") == (400, {"fault_message": "Empty PATCH request."})
    assert fake.raw("PUT", "/entropy", b"{}") == (204, None)


def test_bodies_are_checked_against_the_spec(fake: Fake, workdir: Path) -> None:
    prefix = "An error occurred when deserializing the json body of a request: "
    message = fake.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "x": 1})
    assert message.startswith(prefix + "unknown field `x`")
    message = fake.fault("PUT", "/drives/rootfs", {"drive_id": "rootfs"})
    assert message.startswith(prefix + "missing field `is_root_device`")
    assert fake.raw("PUT", "/logger", b"{not json")[1]["fault_message"].startswith(prefix)
    # serde reads null into Option<T>: a null optional field is accepted.
    fake.api.put(
        "/boot-source", {"kernel_image_path": str(workdir / "vmlinux"), "initrd_path": None}
    )


def test_resource_ids(fake: Fake, workdir: Path) -> None:
    drive = {
        "drive_id": "data-1",
        "path_on_host": str(workdir / "data.ext4"),
        "is_root_device": False,
    }
    assert fake.fault("PUT", "/drives/data-1", drive) == (
        "API Resource IDs can only contain alphanumeric characters and underscores."
    )
    assert fake.fault("PUT", "/drives/data_2", {**drive, "drive_id": "data_1"}) == (
        "The id from the path does not match the id from the body!"
    )
    assert fake.fault("PUT", "/drives/", {**drive, "drive_id": "data_1"}) == (
        "The ID cannot be empty."
    )


def test_phases(fake: Fake, workdir: Path) -> None:
    assert fake.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) == ONLY_AFTER_BOOT
    assert fake.fault("PATCH", "/vm", {"state": "Paused"}) == ONLY_AFTER_BOOT
    assert fake.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == (
        "Start microvm error: Cannot start microvm without kernel configuration."
    )
    boot(fake, workdir)
    assert fake.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == ONLY_BEFORE_BOOT
    assert fake.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}) == (
        ONLY_BEFORE_BOOT
    )
    assert fake.fault("PUT", "/logger", {"level": "Debug"}) == ONLY_BEFORE_BOOT
    fake.api.patch("/vm", {"state": "Paused"})
    assert fake.api.instance_info()["state"] == "Paused"
    fake.api.patch("/vm", {"state": "Resumed"})
    assert fake.api.instance_info()["state"] == "Running"
    fake.api.patch(
        "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(workdir / "data.ext4")}
    )


def test_resources_are_opened_at_put_time(fake: Fake, workdir: Path) -> None:
    assert fake.fault("PUT", "/boot-source", {"kernel_image_path": str(workdir / "x")}) == (
        "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"
    )
    root = {"drive_id": "a", "path_on_host": str(workdir / "rootfs.ext4"), "is_root_device": True}
    fake.api.put("/drives/a", root)
    assert fake.fault("PUT", "/drives/b", {**root, "drive_id": "b"}) == (
        "Drive config error: A root block device already exists!"
    )
    assert fake.fault("PUT", "/logger", {"log_path": str(workdir / "missing.log")}).startswith(
        "Logger error: "
    )
    fake.api.put("/logger", {"log_path": str(workdir / "fc.log"), "level": "Off"})
    assert fake.fault(
        "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "t" * 16}
    ).startswith("Network config error: ")


def test_the_tap_must_exist_by_default(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like Firecracker, which opens the TAP at PUT time: a missing device is a 400. The CLI
    tests rely on this default to prove vmm creates the TAP before configuring the NIC."""
    monkeypatch.delenv("FAKE_FC_CHECK_TAP")
    f = start_fake(workdir)
    try:
        nic = {"iface_id": "eth0", "host_dev_name": "vmm-nosuchtap"}
        assert f.fault("PUT", "/network-interfaces/eth0", nic).startswith(
            "Network config error: Could not create the network device"
        )
        f.api.put("/network-interfaces/eth0", {**nic, "host_dev_name": "lo"})  # exists
    finally:
        f.proc.kill()
        f.proc.wait()


def test_full_config_follows_the_spec(fake: Fake, workdir: Path) -> None:
    configure(fake, workdir)
    fake.api.put(
        "/network-interfaces/eth0",
        {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"},
    )
    config = fake.api.vm_config()
    fc_spec.SpecValidator(nullable_optionals=True).validate("FullVmConfiguration", config)
    assert config["drives"][0]["cache_type"] == "Unsafe"
    assert config["machine-config"]["mem_size_mib"] == 128


def test_ctrl_alt_del_exits_0_and_leaves_the_socket(fake: Fake, workdir: Path) -> None:
    boot(fake, workdir)
    assert "Command line: console=ttyS0 root=/dev/vda rw" in fake.console.read_text()
    fake.api.put("/actions", {"action_type": "SendCtrlAltDel"})
    assert fake.proc.wait(timeout=5) == 0
    assert fake.sock.exists()  # Firecracker never deletes its API socket
    assert not FirecrackerApi(fake.sock).is_ready()


def test_sigterm_kills_at_once(fake: Fake) -> None:
    fake.proc.send_signal(signal.SIGTERM)
    assert fake.proc.wait(timeout=5) == -signal.SIGTERM


def test_knobs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FC_IGNORE_CTRL_ALT_DEL", "1")
    monkeypatch.setenv("FAKE_FC_IGNORE_SIGTERM", "1")
    f = start_fake(workdir)
    try:
        boot(f, workdir)
        f.api.put("/actions", {"action_type": "SendCtrlAltDel"})
        f.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert f.proc.poll() is None
        assert f.api.instance_info()["state"] == "Running"
    finally:
        f.proc.kill()
        assert f.proc.wait(timeout=5) == -signal.SIGKILL

    monkeypatch.setenv("FAKE_FC_CRASH_AT_STARTUP", "7")
    result = run_fake("--api-sock", str(workdir / "crash.sock"))
    assert result.returncode == 7
    assert not (workdir / "crash.sock").exists()
