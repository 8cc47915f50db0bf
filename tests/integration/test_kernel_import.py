"""Kernel import through the CLI: bzImages (lz4 legacy frames and zstd via their programs, as
Debian's kernels are), ELF validation against real files, list and delete."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.unit.test_bzimage import make_bzimage, make_vmlinux
from vmm.guest.kernels import EM_AARCH64, EM_X86_64, host_machine

pytestmark = pytest.mark.integration


def compress(tool: list[str], data: bytes, tmp: Path) -> bytes:
    src = tmp / "in.bin"
    src.write_bytes(data)
    return subprocess.run([*tool, str(src)], capture_output=True, check=True).stdout


@pytest.mark.parametrize(
    ("name", "tool"),
    [("lz4", ["lz4", "-l", "-9", "-c"]), ("zstd", ["zstd", "-19", "-q", "-c"])],
)
def test_bzimage_with_tool_compressions(vmm_env: VmmEnv, tmp_path: Path, name: str, tool: list[str]) -> None:
    vmlinux = make_vmlinux()
    payload = compress(tool, vmlinux, tmp_path)
    if name == "lz4":
        assert payload[:4] == b"\x02\x21\x4c\x18"  # the legacy frame, as the kernel writes it
    bz = tmp_path / "bzImage"
    bz.write_bytes(make_bzimage(payload, trailer=struct.pack("<I", len(vmlinux))))
    out = vmm_env.run("kernel", "import", str(bz), "--name", "k1", check=True).stdout
    assert f"extracted from a bzImage ({name})" in out and "6.1.99-vmmtest" in out and "PVH" in out
    stored = vmm_env.data_dir / "images" / "kernels" / "k1"
    assert stored.read_bytes() == vmlinux


def test_validation_messages(vmm_env: VmmEnv, tmp_path: Path) -> None:
    real = Path(shutil.which("true") or "/bin/true").resolve().read_bytes()
    cases: dict[str, tuple[bytes, str]] = {
        "text": (b"just some text\n", "is a text file"),
        "truncated": (make_vmlinux()[:100], "truncated ELF"),
        "pie": (real, "not an executable kernel"),
    }
    elf32 = bytearray(real)
    elf32[4] = 1
    cases["elf32"] = (bytes(elf32), "32-bit")
    other = bytearray(real)
    struct.pack_into("<H", other, 18, EM_AARCH64 if host_machine() == EM_X86_64 else EM_X86_64)
    cases["arch"] = (bytes(other), "aarch64" if host_machine() == EM_X86_64 else "x86_64")
    for label, (data, message) in cases.items():
        f = tmp_path / label
        f.write_bytes(data)
        p = vmm_env.run("kernel", "import", str(f), "--name", "k")
        assert p.returncode == 1 and message in p.stderr.splitlines()[0], (label, p.stderr)
    lzo = tmp_path / "lzo"
    lzo.write_bytes(make_bzimage(b"\x89LZO\0" + os.urandom(3000)))
    p = vmm_env.run("kernel", "import", str(lzo), "--name", "k")
    assert p.returncode == 1 and "unknown compression" in p.stderr
    assert not (vmm_env.data_dir / "images" / "kernels" / "k").exists()
    assert not [f for f in os.listdir(vmm_env.data_dir / "images" / "kernels") if f.startswith(".")]


def test_list_and_delete(vmm_env: VmmEnv, tmp_path: Path) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    k = tmp_path / "vmlinux"
    k.write_bytes(make_vmlinux())
    (tmp_path / "initrd").write_bytes(b"\x07\x07\x07" * 100)
    vmm_env.run("kernel", "import", str(k), "--name", "default", "--initrd", str(tmp_path / "initrd"), check=True)
    vmm_env.run("kernel", "import", str(k), "--name", "spare", check=True)
    img = tmp_path / "root.ext4"
    with img.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    vmm_env.run("image", "import", str(img), "--name", "default", check=True)
    vmm_env.run("create", "v1", check=True)
    table = vmm_env.run("kernel", "list", check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "ARCH", "SIZE", "PVH", "INITRD", "CREATED", "USED", "BY"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["default"][1:3] == ["6.1.99-vmmtest", "x86_64"] and rows["default"][4:6] == ["yes", "yes"]
    assert rows["default"][-1] == "1" and rows["spare"][-1] == "0" and rows["spare"][5] == "no"
    listed = {k["name"]: k for k in json.loads(vmm_env.run("kernel", "list", "--json", check=True).stdout)}
    assert listed["default"]["pvh"] is True and listed["default"]["used_by"] == 1
    refused = vmm_env.run("kernel", "delete", "default")
    assert refused.returncode == 1 and "used by 1 VM(s): v1" in refused.stderr
    vmm_env.run("kernel", "delete", "spare", check=True)
    missing = vmm_env.run("kernel", "delete", "spare")
    assert missing.returncode == 1 and "not found" in missing.stderr
    vmm_env.run("delete", "v1", check=True)
    vmm_env.run("kernel", "rm", "default", check=True)
    assert os.listdir(vmm_env.data_dir / "images" / "kernels") == []


def test_real_kernels(vmm_env: VmmEnv) -> None:
    """A real distro bzImage: Debian's cloud kernel, which scripts/fetch-distro-kernel.sh unpacks
    from its .deb (no install) and scripts/test.sh exports as ``VMM_TEST_BZIMAGE``; and the test
    guest's ELF vmlinux when ``VMM_TEST_GUEST`` is set."""
    bzimage = os.environ.get("VMM_TEST_BZIMAGE")
    if not bzimage:
        pytest.skip("VMM_TEST_BZIMAGE unset: run scripts/test.sh (scripts/fetch-distro-kernel.sh provides it)")
    assert Path(bzimage).is_file(), f"VMM_TEST_BZIMAGE={bzimage} is not a file"
    out = vmm_env.run("kernel", "import", bzimage, "--name", "debian", check=True).stdout
    assert "extracted from a bzImage" in out, out
    assert Path(bzimage).name.removeprefix("vmlinuz-") in out, out  # the version, from the ELF
    guest = os.environ.get("VMM_TEST_GUEST")
    if guest and (Path(guest) / "vmlinux").is_file():
        out = vmm_env.run("kernel", "import", f"{guest}/vmlinux", "--name", "guest", check=True).stdout
        assert "6.1." in out and "PVH" in out
