"""The QEMU argv and guest command line built from a BootSpec (pure, no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmm.engines.base import BootSpec, Drive, Nic, RunPaths
from vmm.engines.qemu.argv import (
    SUN_PATH_MAX,
    build_argv,
    build_cmdline,
    check_socket_path,
    cmdline_keys,
    ordered_drives,
)
from vmm.errors import ValidationError

pytestmark = pytest.mark.unit

VM = Path("/var/lib/vmm/vms/web")
PATHS = RunPaths(
    vm_dir=VM,
    console_log=VM / "console.log",
    api_socket=VM / "qmp.sock",
    console_socket=VM / "console.sock",
    engine_log=VM / "qemu.log",
)
ROOT = Drive("rootfs", VM / "rootfs.ext4", root=True)


def make_spec(**changes: object) -> BootSpec:
    fields: dict[str, object] = {
        "vm_id": "web",
        "name": "web",
        "kernel": Path("/var/lib/vmm/images/kernels/vmlinux-6.1"),
        "cmdline": "console=ttyS0 reboot=k panic=1",
        "cpus": 2,
        "memory_mb": 512,
        "paths": PATHS,
        "drives": (ROOT,),
        "nics": (Nic("eth0", "vmm-web", "06:00:AC:10:00:02"),),
    }
    fields.update(changes)
    return BootSpec(**fields)  # type: ignore[arg-type]


def test_full_spec_golden_argv() -> None:
    spec = make_spec(
        initrd=Path("/var/lib/vmm/images/kernels/initrd.img"),
        drives=(ROOT, Drive("data_1", VM / "data.ext4", read_only=True)),
    )
    argv = build_argv(spec, binary="/usr/bin/qemu-system-x86_64", accel="tcg", tsc_khz=2300000)
    assert argv == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "web",
        "-M", "microvm,x-option-roms=off,acpi=on,isa-serial=on,rtc=on",
        "-accel", "tcg",
        "-cpu", "max",
        "-m", "512M",
        "-smp", "2",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", "/var/lib/vmm/images/kernels/vmlinux-6.1",
        "-initrd", "/var/lib/vmm/images/kernels/initrd.img",
        "-append",
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw "
        "tsc_early_khz=2300000 tsc=reliable mitigations=off",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng0",
        "-device", "i8042",
        "-drive",
        "id=drive-rootfs,file=/var/lib/vmm/vms/web/rootfs.ext4,format=raw,if=none,"
        "cache=writeback",
        "-device", "virtio-blk-device,drive=drive-rootfs",
        "-drive",
        "id=drive-data_1,file=/var/lib/vmm/vms/web/data.ext4,format=raw,if=none,readonly=on,"
        "cache=writeback",
        "-device", "virtio-blk-device,drive=drive-data_1",
        "-netdev", "tap,id=net-eth0,ifname=vmm-web,script=no,downscript=no",
        "-device", "virtio-net-device,netdev=net-eth0,mac=06:00:ac:10:00:02",
        "-chardev",
        "socket,id=console,path=/var/lib/vmm/vms/web/console.sock,server=on,wait=off,"
        "logfile=/var/lib/vmm/vms/web/console.log,logappend=on",
        "-serial", "chardev:console",
        "-chardev", "socket,id=qmp,path=/var/lib/vmm/vms/web/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_without_initrd_there_is_no_initrd_flag() -> None:
    argv = build_argv(make_spec(), binary="qemu", accel="tcg", tsc_khz=1)
    assert "-initrd" not in argv
    assert _values(argv, "-kernel") == ["/var/lib/vmm/images/kernels/vmlinux-6.1"]


def test_kvm_uses_host_cpu_and_adds_no_tcg_params() -> None:
    argv = build_argv(make_spec(), binary="qemu", accel="kvm", tsc_khz=2300000)
    assert _values(argv, "-accel") == ["kvm"]
    assert _values(argv, "-cpu") == ["host"]
    assert _values(argv, "-append") == ["console=ttyS0 reboot=k panic=1 root=/dev/vda rw"]


def test_tcg_uses_max_cpu() -> None:
    argv = build_argv(make_spec(), binary="qemu", accel="tcg", tsc_khz=None)
    assert _values(argv, "-accel") == ["tcg"]
    assert _values(argv, "-cpu") == ["max"]
    # Without a known host TSC rate only the other two params are added.
    assert _values(argv, "-append") == [
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw tsc=reliable mitigations=off"
    ]


def test_unknown_accel_is_rejected() -> None:
    with pytest.raises(ValidationError, match="accelerator"):
        build_argv(make_spec(), binary="qemu", accel="auto", tsc_khz=None)


def test_root_drive_goes_first_whatever_its_position() -> None:
    scratch = Drive("scratch", VM / "scratch.ext4")
    data = Drive("data", VM / "data.ext4", read_only=True)
    spec = make_spec(drives=(scratch, ROOT, data))
    argv = build_argv(spec, binary="qemu", accel="kvm", tsc_khz=None)
    assert _values(argv, "-device")[2:5] == [
        "virtio-blk-device,drive=drive-rootfs",
        "virtio-blk-device,drive=drive-scratch",
        "virtio-blk-device,drive=drive-data",
    ]
    drives = _values(argv, "-drive")
    assert [d.split(",")[0] for d in drives] == [
        "id=drive-rootfs",
        "id=drive-scratch",
        "id=drive-data",
    ]
    assert ["readonly=on" in d for d in drives] == [False, False, True]


def test_several_nics_keep_their_order() -> None:
    nics = (
        Nic("eth0", "vmm-a0", "06:00:00:00:00:01"),
        Nic("1", "vmm-a1", "06:00:00:00:00:02"),
    )
    argv = build_argv(make_spec(nics=nics), binary="qemu", accel="kvm", tsc_khz=None)
    assert _values(argv, "-netdev") == [
        "tap,id=net-eth0,ifname=vmm-a0,script=no,downscript=no",
        "tap,id=net-1,ifname=vmm-a1,script=no,downscript=no",
    ]
    assert [d for d in _values(argv, "-device") if d.startswith("virtio-net")] == [
        "virtio-net-device,netdev=net-eth0,mac=06:00:00:00:00:01",
        "virtio-net-device,netdev=net-1,mac=06:00:00:00:00:02",
    ]


def test_no_drives_no_nics_no_root_param() -> None:
    argv = build_argv(make_spec(drives=(), nics=()), binary="qemu", accel="kvm", tsc_khz=None)
    assert "-drive" not in argv and "-netdev" not in argv
    assert _values(argv, "-append") == ["console=ttyS0 reboot=k panic=1"]


def test_read_only_root_is_mounted_ro() -> None:
    spec = make_spec(drives=(Drive("rootfs", VM / "r.ext4", read_only=True, root=True),))
    argv = build_argv(spec, binary="qemu", accel="kvm", tsc_khz=None)
    assert _values(argv, "-append")[0].endswith("root=/dev/vda ro")
    assert "readonly=on" in _values(argv, "-drive")[0]


def test_commas_in_paths_and_names_are_escaped() -> None:
    d = Path("/srv/a,b")
    paths = RunPaths(d, d / "c,l.log", d / "q,s.sock", d / "c.sock", d / "e.log")
    spec = make_spec(name="x,y", paths=paths, drives=(Drive("rootfs", d / "r,1.ext4", root=True),))
    argv = build_argv(spec, binary="qemu", accel="kvm", tsc_khz=None)
    assert _values(argv, "-name") == ["x,,y"]
    assert "file=/srv/a,,b/r,,1.ext4," in _values(argv, "-drive")[0]
    chardevs = _values(argv, "-chardev")
    assert "path=/srv/a,,b/c.sock," in chardevs[0]
    assert "logfile=/srv/a,,b/c,,l.log," in chardevs[0]
    assert "path=/srv/a,,b/q,,s.sock," in chardevs[1]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"drives": (ROOT, Drive("rootfs2", VM / "b", root=True))}, "more than one root"),
        ({"drives": (ROOT, Drive("rootfs", VM / "b"))}, "duplicate drive id"),
        ({"drives": (Drive("root-fs", VM / "b"),)}, "invalid drive id"),
        ({"nics": (Nic("eth0", "t0", "06:00:00:00:00:01"),) * 2}, "duplicate interface id"),
        ({"nics": (Nic("eth0", "t0", "06:00:00:00:00:01"), Nic("eth1", "t0", "06:00:00:00:00:02"))}, "duplicate TAP"),
        ({"nics": (Nic("eth0", "t0", "06:00:00:00:00"),)}, "invalid MAC"),
        ({"nics": (Nic("eth0", "a/b", "06:00:00:00:00:01"),)}, "invalid TAP"),
        ({"nics": (Nic("eth0", "x" * 16, "06:00:00:00:00:01"),)}, "invalid TAP"),
    ],
)  # fmt: skip
def test_bad_specs_are_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build_argv(make_spec(**changes), binary="qemu", accel="tcg", tsc_khz=None)


def test_socket_path_length_limit() -> None:
    check_socket_path(Path("/" + "s" * (SUN_PATH_MAX - 1)), "QMP socket")  # 107 bytes fit
    with pytest.raises(ValidationError, match=r"too long.*108 bytes, at most 107") as err:
        check_socket_path(Path("/" + "s" * SUN_PATH_MAX), "QMP socket")
    assert err.value.hint


def test_long_socket_path_is_rejected_by_build_argv() -> None:
    deep = Path("/var/lib/" + "d" * 100)
    paths = RunPaths(deep, deep / "c.log", deep / "qmp.sock", Path("/r/c.sock"), deep / "e")
    with pytest.raises(ValidationError, match="QMP socket path is too long"):
        build_argv(make_spec(paths=paths), binary="qemu", accel="tcg", tsc_khz=None)
    paths = RunPaths(deep, deep / "c.log", Path("/r/q.sock"), deep / "console.sock", deep / "e")
    with pytest.raises(ValidationError, match="console socket path is too long"):
        build_argv(make_spec(paths=paths), binary="qemu", accel="tcg", tsc_khz=None)


def test_ordered_drives_without_root() -> None:
    a, b = Drive("a", VM / "a"), Drive("b", VM / "b")
    assert ordered_drives([a, b]) == [a, b]


# -- the guest command line -------------------------------------------------------------


def test_cmdline_root_added_only_with_root_drive() -> None:
    assert build_cmdline("console=ttyS0", root=ROOT, accel="kvm", tsc_khz=None) == (
        "console=ttyS0 root=/dev/vda rw"
    )
    assert build_cmdline("console=ttyS0", root=None, accel="kvm", tsc_khz=None) == "console=ttyS0"


def test_cmdline_existing_root_is_kept() -> None:
    cmdline = "console=ttyS0 root=/dev/vdb ro"
    assert build_cmdline(cmdline, root=ROOT, accel="kvm", tsc_khz=None) == cmdline


def test_cmdline_tcg_params_added() -> None:
    assert build_cmdline("console=ttyS0", root=None, accel="tcg", tsc_khz=2600000) == (
        "console=ttyS0 tsc_early_khz=2600000 tsc=reliable mitigations=off"
    )


def test_cmdline_tcg_params_not_duplicated() -> None:
    cmdline = "console=ttyS0 tsc_early_khz=1000 tsc=unstable mitigations=auto"
    assert build_cmdline(cmdline, root=None, accel="tcg", tsc_khz=2600000) == cmdline
    partly = "console=ttyS0 tsc=reliable"
    assert build_cmdline(partly, root=None, accel="tcg", tsc_khz=2600000) == (
        "console=ttyS0 tsc=reliable tsc_early_khz=2600000 mitigations=off"
    )


def test_cmdline_params_go_before_init_arguments() -> None:
    cmdline = "console=ttyS0 quiet -- single root=ignored"
    assert build_cmdline(cmdline, root=ROOT, accel="tcg", tsc_khz=5) == (
        "console=ttyS0 quiet root=/dev/vda rw tsc_early_khz=5 tsc=reliable mitigations=off "
        "-- single root=ignored"
    )


def test_cmdline_empty() -> None:
    assert build_cmdline("", root=ROOT, accel="kvm", tsc_khz=None) == "root=/dev/vda rw"
    assert build_cmdline("  ", root=None, accel="kvm", tsc_khz=None) == ""


def test_cmdline_keys() -> None:
    assert cmdline_keys("a=1 b quiet root=/dev/vda -- c=2") == {"a", "b", "quiet", "root"}
    assert cmdline_keys("--") == set()
