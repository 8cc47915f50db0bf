"""QemuEngine against real qemu-system-x86_64 processes (TCG, no networking).

QEMU needs a loadable kernel, but not a Linux one: ``dummy_pvh_kernel`` writes a few hundred
bytes of ELF with a PVH entry note (what QEMU's microvm loads from a vmlinux) whose 32-bit code
prints a line on the ISA serial port and then either halts forever or, after a few seconds,
triple-faults (a guest reset, which ``-no-reboot`` turns into QEMU exiting). That exercises the
real argv, the console log and the process lifecycle in well under a second per VM.

Only ``lo`` is used as a "TAP": TUNSETIFF on an existing non-TAP device fails with EINVAL, so
nothing is created on the host. A missing TAP is refused before QEMU runs (QEMU as root would
create it).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmm
from vmm.engines.base import BootSpec, Drive, Nic, RunPaths
from vmm.engines.managed import LaunchError
from vmm.engines.qemu.accel import resolve_accel
from vmm.engines.qemu.engine import QemuEngine, tap_exists
from vmm.engines.qemu.qmp import QmpClient
from vmm.errors import ConflictError, EngineError
from vmm.host.process import ProcessRef, is_alive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"
    ),
]

LOAD_ADDR = 0x100000
XEN_ELFNOTE_PHYS32_ENTRY = 18


def dummy_pvh_kernel(message: str, *, then: str = "halt", reset_after_units: int = 2) -> bytes:
    """A minimal ELF64 "kernel" QEMU boots by PVH: print ``message`` on COM1, then act.

    ``then="halt"``: ``cli; hlt`` forever (a guest that ignores the ACPI power button).
    ``then="reset"``: busy-wait until the TSC's high word advanced by ``reset_after_units``
    (one unit is 2**32 cycles, ~1.7 s at 2.6 GHz; TCG's rdtsc reads the host TSC), then load an
    empty IDT and execute int3: a triple fault, i.e. a guest reset.
    """
    code_off = 0x100
    code = bytearray(b"\xbe\0\0\0\0")  # mov esi, message
    code += b"\x66\xba\xf8\x03"  # mov dx, 0x3f8
    code += b"\xac\x84\xc0\x74\x03\xee\xeb\xf8"  # lodsb; test al,al; jz +3; out dx,al; jmp -8
    idt_ref = None
    if then == "halt":
        code += b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp hlt
    elif then == "reset":
        code += b"\x0f\x31\x89\xd3\x83\xc3" + bytes([reset_after_units])  # rdtsc; ebx=edx+n
        code += b"\x0f\x31\x39\xda\x72\xfa"  # rdtsc; cmp edx,ebx; jb back
        idt_ref = len(code) + 3
        code += b"\x0f\x01\x1d\0\0\0\0\xcc"  # lidt [empty_idt]; int3
    else:
        raise ValueError(then)
    msg_off = code_off + len(code)
    data = message.encode() + b"\n\0"
    idt_off = (msg_off + len(data) + 7) & ~7
    struct.pack_into("<I", code, 1, LOAD_ADDR + msg_off)
    if idt_ref is not None:
        struct.pack_into("<I", code, idt_ref, LOAD_ADDR + idt_off)

    image = bytearray(idt_off + 8)  # ends with the 6 zero bytes of the empty IDT descriptor
    image[code_off : code_off + len(code)] = code
    image[msg_off : msg_off + len(data)] = data
    phoff, phnum = 64, 2
    note_off = phoff + 56 * phnum
    struct.pack_into(
        "<4sBBBBB7xHHIQQQIHHHHHH", image, 0,
        b"\x7fELF", 2, 1, 1, 0, 0,  # ELF64, little endian, version 1
        2, 62, 1, LOAD_ADDR + code_off, phoff, 0, 0, 64, 56, phnum, 64, 0, 0,  # EXEC, x86-64
    )  # fmt: skip
    # PT_LOAD: the whole file at 1 MiB; PT_NOTE: "Xen" PHYS32_ENTRY -> the code.
    struct.pack_into(
        "<IIQQQQQQ", image, phoff, 1, 7, 0, LOAD_ADDR, LOAD_ADDR, len(image), len(image), 0x1000
    )
    struct.pack_into(
        "<IIQQQQQQ",
        image,
        phoff + 56,
        4,
        4,
        note_off,
        LOAD_ADDR + note_off,
        LOAD_ADDR + note_off,
        24,
        24,
        4,
    )
    struct.pack_into(
        "<III4sQ", image, note_off, 4, 8, XEN_ELFNOTE_PHYS32_ENTRY, b"Xen\0", LOAD_ADDR + code_off
    )
    return bytes(image)


def processes_using(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (our per-test directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    """A short private directory; afterwards nothing may run from it, whatever the test did."""
    d = Path(tempfile.mkdtemp(prefix="vq", dir="/tmp"))
    try:
        yield d
        left = processes_using(str(d))
        assert not left, f"processes left running: {left}"
    finally:
        for pid in processes_using(str(d)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


def make_spec(vm_dir: Path, image: bytes, **changes: object) -> BootSpec:
    """A spec booting ``image`` (written to kernel.elf) with a 1 MiB sparse root drive."""
    kernel_path = vm_dir / "kernel.elf"
    kernel_path.write_bytes(image)
    rootfs = vm_dir / "rootfs.img"
    with rootfs.open("wb") as f:
        f.truncate(1 << 20)
    fields: dict[str, object] = {
        "vm_id": "t",
        "name": "vmmt-" + vm_dir.name,
        "kernel": kernel_path,
        "cmdline": "console=ttyS0",
        "cpus": 1,
        "memory_mb": 64,
        "paths": RunPaths(
            vm_dir,
            vm_dir / "console.log",
            vm_dir / "q.sock",
            vm_dir / "c.sock",
            vm_dir / "qemu.log",
        ),
        "drives": (Drive("rootfs", rootfs, root=True),),
        "accel": "tcg",
    }
    fields.update(changes)
    return BootSpec(**fields)  # type: ignore[arg-type]


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def console(paths: RunPaths) -> str:
    try:
        return paths.console_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def sockets_gone(paths: RunPaths) -> bool:
    return not paths.api_socket.exists() and not paths.console_socket.exists()


def test_launch_qmp_console_and_stop_escalates_to_sigterm(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, dummy_pvh_kernel("dummy guest up"))
    engine = QemuEngine()
    ref = engine.launch(spec)
    try:
        assert is_alive(ref)
        assert engine.status(ref, spec.paths) == "running"
        with QmpClient(spec.paths.api_socket, timeout=5) as qmp:
            assert qmp.greeting is not None and "qemu" in qmp.greeting["version"]
            assert qmp.execute("query-status")["running"] is True
            names = {c["name"] for c in qmp.execute("query-commands")}
            assert "system_powerdown" in names
        assert wait_for(lambda: "dummy guest up" in console(spec.paths), 10), console(spec.paths)
        # The console socket takes a client (what `vmm console` will attach to).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(spec.paths.console_socket))

        # Nobody in the guest handles the ACPI power button: QEMU only emits POWERDOWN.
        started = time.monotonic()
        result = engine.stop(ref, spec.paths, timeout=1.0)
        took = time.monotonic() - started
    finally:
        engine.kill(ref, spec.paths)
    assert result.how == "sigterm"
    assert 1.0 <= took < 8.0
    assert not is_alive(ref)
    assert sockets_gone(spec.paths)
    assert engine.status(ref, spec.paths) is None
    assert engine.stop(ref, spec.paths, timeout=1.0).how == "already-stopped"
    assert "terminating on signal 15" in spec.paths.engine_log.read_text()


LAUNCH_IN_CHILD = """
import json, sys
from pathlib import Path
from vmm.engines.base import BootSpec, Drive, RunPaths
from vmm.engines.qemu.engine import QemuEngine
d = Path(sys.argv[1])
paths = RunPaths(d, d / "console.log", d / "q.sock", d / "c.sock", d / "qemu.log")
spec = BootSpec("t", "t", d / "kernel.elf", "console=ttyS0", 1, 64, paths)
ref = QemuEngine().launch(spec)
assert ref.boot_id, ref  # what launch returns is what the record keeps: the boot id too
print(json.dumps([ref.pid, ref.start_time]))
"""


def test_stop_from_another_process_like_a_later_vmm_stop(vm_dir: Path) -> None:
    # `vmm start` exits after launch; `vmm stop` is a new process: QEMU is not its child.
    spec = make_spec(vm_dir, dummy_pvh_kernel("orphan"))
    env = {**os.environ, "PYTHONPATH": str(Path(vmm.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", LAUNCH_IN_CHILD, str(vm_dir)],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    ).stdout  # fmt: skip
    pid, start_time = json.loads(out)
    ref = ProcessRef(pid, start_time)
    engine = QemuEngine()
    try:
        assert engine.status(ref, spec.paths) == "running"
        assert engine.live_state(spec.paths) == "running"
        assert engine.stop(ref, spec.paths, timeout=0.5).how == "sigterm"
    finally:
        engine.kill(ref, spec.paths)
    assert not is_alive(ref)
    assert sockets_gone(spec.paths)


def test_stale_sockets_are_removed_before_launch(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, dummy_pvh_kernel("stale"))
    for path in (spec.paths.api_socket, spec.paths.console_socket):
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()  # what a SIGKILLed QEMU leaves behind
    engine = QemuEngine()
    ref = engine.launch(spec)
    try:
        assert engine.status(ref, spec.paths) == "running"
    finally:
        engine.kill(ref, spec.paths)
    assert not is_alive(ref)
    assert sockets_gone(spec.paths)


def test_kill_after_sigkill_leaves_no_sockets(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, dummy_pvh_kernel("kill me"))
    ref = QemuEngine().launch(spec)
    QemuEngine().kill(ref, spec.paths)  # engines are rebuilt per call: any object reaps
    assert not is_alive(ref)
    assert not Path(f"/proc/{ref.pid}").exists()  # reaped: no zombie left in this process
    # SIGKILL gives QEMU no chance to unlink its sockets; kill() does it.
    assert sockets_gone(spec.paths)


def test_second_launch_on_the_same_sockets_is_refused(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, dummy_pvh_kernel("first"))
    engine = QemuEngine()
    ref = engine.launch(spec)
    try:
        with pytest.raises(ConflictError, match="another process is serving"):
            engine.launch(spec)
        assert engine.status(ref, spec.paths) == "running"
    finally:
        engine.kill(ref, spec.paths)


def test_guest_reset_ends_the_process(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, dummy_pvh_kernel("resetting", then="reset"))
    engine = QemuEngine()
    ref = engine.launch(spec)
    try:
        assert wait_for(lambda: not is_alive(ref), 30), "QEMU kept running after a guest reset"
    finally:
        engine.kill(ref, spec.paths)
    assert "resetting" in console(spec.paths)
    assert engine.status(ref, spec.paths) is None
    assert engine.stop(ref, spec.paths, timeout=1.0).how == "already-stopped"
    assert sockets_gone(spec.paths)


@pytest.mark.skipif(os.geteuid() != 0, reason="opening /dev/net/tun needs root")
def test_tap_qemu_cannot_open_fails_launch_with_qemus_message(vm_dir: Path) -> None:
    assert tap_exists("lo")
    spec = make_spec(
        vm_dir, dummy_pvh_kernel("never"), nics=(Nic("eth0", "lo", "06:00:00:00:00:01"),)
    )
    with pytest.raises(EngineError) as err:
        QemuEngine().launch(spec)
    message = str(err.value)
    assert isinstance(err.value, LaunchError)
    assert err.value.returncode == 1
    assert "-netdev" in err.value.argv
    assert "could not configure /dev/net/tun (lo)" in err.value.log_tail
    assert "QEMU exited during start (exit code 1)" in message
    assert "could not configure /dev/net/tun (lo)" in message
    assert (
        err.value.details is not None and "-netdev tap,id=net-eth0,ifname=lo" in err.value.details
    )
    assert sockets_gone(spec.paths)
    assert not processes_using(str(vm_dir))


def test_missing_tap_is_refused_and_not_created(vm_dir: Path) -> None:
    tap = "vmmt" + vm_dir.name[-8:].lower().replace("_", "")
    assert not tap_exists(tap)
    spec = make_spec(
        vm_dir, dummy_pvh_kernel("never"), nics=(Nic("eth0", tap, "06:00:00:00:00:01"),)
    )
    with pytest.raises(EngineError, match="does not exist"):
        QemuEngine().launch(spec)
    assert not tap_exists(tap)
    assert not spec.paths.engine_log.exists()  # QEMU never ran


def test_launch_error_shows_only_this_runs_log(vm_dir: Path) -> None:
    spec = make_spec(vm_dir, b"not an elf and not a bzImage")
    spec.paths.engine_log.write_text("old line from an earlier run\n")
    with pytest.raises(EngineError) as err:
        QemuEngine().launch(spec)
    assert "QEMU exited during start" in str(err.value)
    assert err.value.details is not None and "old line" not in err.value.details
    assert sockets_gone(spec.paths)


def test_fake_qemu_that_never_answers_is_killed(vm_dir: Path) -> None:
    fake = vm_dir / "qemu-silent"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    spec = make_spec(vm_dir, dummy_pvh_kernel("never"))
    started = time.monotonic()
    with pytest.raises(LaunchError, match="did not become ready within 0.5 s") as err:
        QemuEngine(str(fake), ready_timeout=0.5).launch(spec)
    assert time.monotonic() - started < 5
    assert err.value.returncode is None and err.value.argv[0] == str(fake)
    assert not processes_using(str(vm_dir))


@pytest.mark.allow_skip  # a fact about this machine kind, not a missing capability
@pytest.mark.skipif(not Path("/sys/module/kvm_pvm").exists(), reason="host KVM is not kvm_pvm")
def test_auto_accel_picks_tcg_on_this_host() -> None:
    accel, reason = resolve_accel("auto")
    assert accel == "tcg"
    assert "kvm_pvm" in reason


_GUEST = os.environ.get("VMM_TEST_GUEST")
GUEST_KERNELS = (
    [str(Path(_GUEST) / "vmlinux")] if _GUEST else sorted(glob.glob("/var/cache/vmm-test/*/vmlinux"))
)


@pytest.mark.skipif(
    not GUEST_KERNELS, reason="no guest kernel: set VMM_TEST_GUEST (scripts/test.sh does)"
)
def test_real_kernel_prints_its_banner(vm_dir: Path) -> None:
    kernel = Path(GUEST_KERNELS[-1])
    spec = make_spec(
        vm_dir, b"", kernel=kernel, drives=(), cmdline="console=ttyS0 panic=-1", memory_mb=256
    )
    engine = QemuEngine()
    ref = engine.launch(spec)
    try:
        assert wait_for(lambda: "Linux version" in console(spec.paths), 60), console(spec.paths)[
            -2000:
        ]
    finally:
        engine.kill(ref, spec.paths)
    assert sockets_gone(spec.paths)
