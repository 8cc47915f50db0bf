"""bzImage parsing and the stdlib decompressors, on bzImage-shaped files built here."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from pathlib import Path

import pytest

from vmm.errors import ValidationError
from vmm.guest import bzimage
from vmm.guest.kernels import (
    EM_X86_64,
    XEN_ELFNOTE_PHYS32_ENTRY,
    kernel_version,
    validate_elf_kernel,
)
from vmm.runner import Runner

pytestmark = pytest.mark.unit

BANNER = b"Linux version 6.1.99-vmmtest (builder@host) (gcc 12) #1 SMP\n\0"


def make_vmlinux(*, pvh: bool = True) -> bytes:
    """A small ELF64 ET_EXEC x86_64 file with a PT_NOTE (the PVH note) and a version banner."""
    note = b""
    if pvh:
        note = struct.pack("<III", 4, 4, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", 0x1000000)
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5], head[6] = 2, 1, 1
    struct.pack_into("<HHI", head, 16, 2, EM_X86_64, 1)
    struct.pack_into("<QQQ", head, 24, 0x1000000, 64, 0)  # entry, phoff, shoff
    struct.pack_into("<HHHHHH", head, 0x34, 64, 56, 1, 0, 0, 0)
    note_off = 64 + 56
    ph = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return bytes(head) + ph + note + b"\0" * 256 + BANNER + b"\0" * 4096


def make_bzimage(payload: bytes, *, protocol: int = 0x20F, trailer: bytes = b"") -> bytes:
    """Setup sectors with a boot protocol header, a stub 'decompressor', then the payload."""
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    stub = b"\x90" * 0x200
    struct.pack_into("<II", setup, 0x248, len(stub), len(payload) + len(trailer))
    return bytes(setup) + stub + payload + trailer + b"\0" * 64


STDLIB = {
    "gzip": lambda d: gzip.compress(d),
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "bzip2": lambda d: bz2.compress(d),
}


@pytest.mark.parametrize("name", sorted(STDLIB))
@pytest.mark.parametrize("protocol", [0x20F, 0x206])  # 0x206: no payload fields, searched
def test_extracts_stdlib_compressions(tmp_path: Path, name: str, protocol: int) -> None:
    vmlinux = make_vmlinux()
    size = struct.pack("<I", len(vmlinux))  # the kernel's size_append
    src = tmp_path / "bzImage"
    compressed = STDLIB[name](vmlinux)
    src.write_bytes(make_bzimage(compressed, protocol=protocol, trailer=size))
    # 2.08+ headers locate the payload (its length covers the size trailer); older ones do
    # not, and extract_vmlinux must find it by searching
    expected = (name, compressed + size) if protocol >= 0x208 else None
    assert bzimage.payload_of(src.read_bytes()) == expected
    dest = tmp_path / "vmlinux"
    assert bzimage.extract_vmlinux(Runner(), src, dest) == name
    assert dest.read_bytes() == vmlinux
    info = validate_elf_kernel(dest, EM_X86_64)
    assert info.pvh and kernel_version(dest) == "6.1.99-vmmtest"


def test_unknown_compression(tmp_path: Path) -> None:
    src = tmp_path / "bzImage"
    src.write_bytes(make_bzimage(b"\x89LZO\0\r\n\x1a\n" + b"\x11" * 2000))
    with pytest.raises(ValidationError, match="unknown compression .*89 4c 5a 4f"):
        bzimage.extract_vmlinux(Runner(), src, tmp_path / "out")


def test_corrupt_payload_and_no_payload(tmp_path: Path) -> None:
    src = tmp_path / "bzImage"
    src.write_bytes(make_bzimage(b"\x1f\x8b\x08" + b"\x00" * 500))
    with pytest.raises(ValidationError, match=r"could not unpack .*\(tried gzip\)"):
        bzimage.extract_vmlinux(Runner(), src, tmp_path / "out")
    src.write_bytes(make_bzimage(b"\x11" * 500, protocol=0x206))
    with pytest.raises(ValidationError, match="no compressed kernel"):
        bzimage.extract_vmlinux(Runner(), src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_elf_inside(tmp_path: Path) -> None:
    src = tmp_path / "bzImage"
    src.write_bytes(make_bzimage(gzip.compress(b"not an elf" * 100)))
    with pytest.raises(ValidationError, match="could not unpack"):
        bzimage.extract_vmlinux(Runner(), src, tmp_path / "out")


def test_elf_details(tmp_path: Path) -> None:
    k = tmp_path / "k"
    k.write_bytes(make_vmlinux(pvh=False))
    assert not validate_elf_kernel(k, EM_X86_64).pvh
    data = make_vmlinux()
    k.write_bytes(data[: 64 + 56 + 4])  # the note segment is cut off
    with pytest.raises(ValidationError, match="truncated"):
        validate_elf_kernel(k, EM_X86_64)
    k.write_bytes(data[:80])  # the program header table is cut off
    with pytest.raises(ValidationError, match="truncated"):
        validate_elf_kernel(k, EM_X86_64)
    k.write_bytes(b"#!/bin/sh\necho not a kernel\n")
    with pytest.raises(ValidationError, match="is a text file"):
        validate_elf_kernel(k, EM_X86_64)
