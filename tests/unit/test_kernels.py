from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest

from vmm.errors import ValidationError
from vmm.guest.kernels import EM_AARCH64, EM_X86_64, host_machine, validate_elf_kernel

pytestmark = pytest.mark.unit


def fake_elf(path: Path, *, cls: int = 2, machine: int = EM_X86_64, etype: int = 2) -> Path:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4] = cls
    head[5] = 1
    head[6] = 1
    struct.pack_into("<HHI", head, 16, etype, machine, 1)
    struct.pack_into("<Q", head, 24, 0x1000000)
    path.write_bytes(bytes(head) + b"\0" * 1024)
    return path


def test_accepts_vmlinux_shape(tmp_path: Path) -> None:
    info = validate_elf_kernel(fake_elf(tmp_path / "k"), EM_X86_64)
    assert info.arch == "x86_64"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cls": 1}, "32-bit"),
        ({"machine": EM_AARCH64}, "aarch64"),
        ({"etype": 3}, "not an executable"),
    ],
)
def test_rejects(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_elf_kernel(fake_elf(tmp_path / "k", **kwargs), EM_X86_64)
    assert message in err.value.brief


def test_rejects_text_missing_truncated_bzimage(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("hello")
    with pytest.raises(ValidationError, match="not an ELF"):
        validate_elf_kernel(tmp_path / "t")
    with pytest.raises(ValidationError, match="does not exist"):
        validate_elf_kernel(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02")
    with pytest.raises(ValidationError, match="truncated"):
        validate_elf_kernel(tmp_path / "short")
    bz = bytearray(0x300)
    bz[0x202:0x206] = b"HdrS"
    (tmp_path / "bz").write_bytes(bytes(bz))
    with pytest.raises(ValidationError, match="bzImage"):
        validate_elf_kernel(tmp_path / "bz")


def test_real_host_binary_is_not_a_kernel(tmp_path: Path) -> None:
    # /bin/true is a real ELF of the host arch, but ET_DYN (PIE): refused as not a kernel.
    with pytest.raises(ValidationError, match="not an executable kernel"):
        validate_elf_kernel(Path(shutil.which("true") or "/bin/true"))
    # The same binary with e_machine patched to another arch: refused for the arch first.
    copy = tmp_path / "other-arch"
    data = bytearray(Path(sys.executable).resolve().read_bytes()[:4096])
    other = EM_AARCH64 if host_machine() == EM_X86_64 else EM_X86_64
    struct.pack_into("<H", data, 18, other)
    copy.write_bytes(bytes(data))
    with pytest.raises(ValidationError, match="kernel for"):
        validate_elf_kernel(copy)
