"""Firecracker's command line from the pure builder, and the Jail seam it goes through."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vmm.engines.base import BootSpec, Drive, Nic, RunPaths
from vmm.engines.firecracker.argv import build_argv
from vmm.engines.firecracker.bodies import boot_requests
from vmm.engines.firecracker.engine import FirecrackerEngine, FirecrackerLaunch
from vmm.engines.jail import Jail, NoJail
from vmm.errors import ValidationError

pytestmark = pytest.mark.unit

CHROOT = Path("/srv/jailer/firecracker/vm1/root")


class ChrootJail:
    """What a jailer does to paths and argv, without running anything."""

    def wrap_argv(self, argv: Sequence[str]) -> list[str]:
        return ["/usr/bin/jailer", "--id", "vm1", "--exec-file", argv[0], "--", *argv[1:]]

    def expose(self, host_path: Path) -> Path:
        return Path("/") / host_path.name


def test_build_argv() -> None:
    argv = build_argv("/opt/fc", api_socket=Path("/run/vmm/dev.sock"), vm_id="vmm-0a1b2c")
    assert argv == ["/opt/fc", "--api-sock", "/run/vmm/dev.sock", "--id", "vmm-0a1b2c"]


@pytest.mark.parametrize("vm_id", ["", "vmm_0a1b", "x" * 65, "a b", "dev\n1"])
def test_build_argv_refuses_ids_firecracker_panics_on(vm_id: str) -> None:
    with pytest.raises(ValidationError, match="instance id"):
        build_argv("/opt/fc", api_socket=Path("/run/vmm/dev.sock"), vm_id=vm_id)


def test_no_jail_is_the_identity() -> None:
    jail: Jail = NoJail()
    argv = ["/opt/fc", "--api-sock", "/run/x.sock"]
    wrapped = jail.wrap_argv(argv)
    assert wrapped == argv and wrapped is not argv  # a copy: the caller's list is its own
    assert jail.wrap_argv(("a", "b")) == ["a", "b"]
    assert jail.expose(Path("/var/lib/vmm/k")) == Path("/var/lib/vmm/k")
    assert repr(jail) == "NoJail()"


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fca-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def spec_in(d: Path) -> BootSpec:
    paths = RunPaths(d / "vm", d / "vm" / "console.log", d / "vm" / "api.sock",
                     d / "vm" / "console.sock", d / "vm" / "fc.log")  # fmt: skip
    return BootSpec(
        vm_id="vmm-0a1b2c", name="dev", kernel=d / "vmlinux", cmdline="console=ttyS0",
        cpus=1, memory_mb=128, paths=paths, initrd=d / "initrd",
        drives=(Drive("rootfs", d / "rootfs.ext4", root=True), Drive("data", d / "data.ext4")),
        nics=(Nic("eth0", "vmm-0a1b2c", "06:00:00:00:00:01"),),
    )  # fmt: skip


def test_boot_requests_send_the_paths_the_process_sees(vm_dir: Path) -> None:
    spec = spec_in(vm_dir)
    plain = boot_requests(spec)
    assert plain == boot_requests(spec, expose=NoJail().expose)
    jailed = {r.path: r.body for r in boot_requests(spec, expose=ChrootJail().expose)}
    assert jailed["/logger"]["log_path"] == "/fc.log"
    assert jailed["/boot-source"]["kernel_image_path"] == "/vmlinux"
    assert jailed["/boot-source"]["initrd_path"] == "/initrd"
    assert jailed["/drives/rootfs"]["path_on_host"] == "/rootfs.ext4"
    assert jailed["/drives/data"]["path_on_host"] == "/data.ext4"
    assert jailed["/network-interfaces/eth0"]["host_dev_name"] == "vmm-0a1b2c"  # not a path


def test_the_engine_spawns_what_its_jail_makes_of_the_argv(vm_dir: Path) -> None:
    binary = vm_dir / "firecracker"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    spec = spec_in(vm_dir)

    launch = FirecrackerEngine(str(binary))._prepare(spec)  # pre-launch only: nothing spawned
    assert launch.argv == [str(binary), "--api-sock", str(spec.paths.api_socket), "--id", "vmm-0a1b2c"]
    assert launch.log_path == spec.paths.console_log

    launch = FirecrackerEngine(str(binary), jail=ChrootJail())._prepare(spec)
    assert launch.argv == ["/usr/bin/jailer", "--id", "vm1", "--exec-file", str(binary),
                           "--", "--api-sock", "/api.sock", "--id", "vmm-0a1b2c"]  # fmt: skip
    assert isinstance(launch, FirecrackerLaunch)
    assert launch.requests[0].body["log_path"] == "/fc.log"
