"""Property-based tests: binary files vmm reads — ELF kernels, bzImages, ext4 superblocks.

Random bytes and valid-looking headers with mutated fields (offsets past the end of the file
or past 2**63, truncated tables, hostile compression headers) are a ``VmmError`` (usually a
``ValidationError``) or a valid result, never ``struct.error``, ``OSError``, ``ValueError``,
``OverflowError`` or ``MemoryError``.
"""

from __future__ import annotations

import atexit
import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmm.errors import ValidationError, VmmError
from vmm.guest import bzimage, ext4, mountfs
from vmm.guest.kernels import (
    EM_X86_64,
    XEN_ELFNOTE_PHYS32_ENTRY,
    kernel_version,
    validate_elf_kernel,
)
from vmm.runner import RecordingRunner

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 250),
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
_DIR = Path(tempfile.mkdtemp(prefix="vmm-fuzz-binaries-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
BANNER = b"Linux version 6.1.99-fuzz (builder@host) #1 SMP\n\0"


def make_vmlinux(*, endian: str = "<") -> bytes:
    """An ELF64 ET_EXEC x86_64 file: one PT_LOAD, one PT_NOTE (the PVH note), a banner."""
    note = struct.pack(endian + "III", 4, 4, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack(endian + "I", 0x1000000)
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5], head[6] = 2, 1 if endian == "<" else 2, 1
    struct.pack_into(endian + "HHI", head, 16, 2, EM_X86_64, 1)
    struct.pack_into(endian + "QQQ", head, 24, 0x1000000, 64, 0)
    struct.pack_into(endian + "HHHHHH", head, 0x34, 64, 56, 2, 0, 0, 0)
    note_off = 64 + 2 * 56
    load = struct.pack(endian + "IIQQQQQQ", 1, 5, 0, 0, 0, note_off, note_off, 0x1000)
    pnote = struct.pack(endian + "IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return bytes(head) + load + pnote + note + BANNER + b"\0" * 64


VMLINUX = make_vmlinux()
# (offset, struct format) of the fields worth corrupting: e_phoff, e_phentsize, e_phnum and
# each program header's p_type, p_offset and p_filesz; the PVH note's namesz and descsz
FIELDS = [(0x20, "Q"), (0x36, "H"), (0x38, "H"), (64, "I"), (64 + 8, "Q"), (64 + 32, "Q"),
          (120, "I"), (120 + 8, "Q"), (120 + 32, "Q"), (176, "I"), (180, "I")]
BIG = [0, 1, 55, 56, 57, 0xFFFF, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def elf_files(draw: st.DrawFn) -> bytes:
    endian = draw(st.sampled_from("<>"))
    data = bytearray(make_vmlinux(endian=endian))
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            off, fmt = draw(st.sampled_from(FIELDS))
            limit = 2 ** (8 * struct.calcsize(fmt)) - 1
            value = draw(st.sampled_from([v for v in BIG if v <= limit]) | st.integers(0, limit))
            struct.pack_into(endian + fmt, data, off, value)
        else:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


def _file(data: bytes, name: str = "k") -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


@FUZZ
@given(elf_files() | st.binary(max_size=300))
@example(VMLINUX[:0x20] + struct.pack("<Q", 2**62) + VMLINUX[0x28:])  # seek(): EINVAL
@example(VMLINUX[:0x20] + struct.pack("<Q", 2**63) + VMLINUX[0x28:])  # seek(): ValueError
@example(VMLINUX[:120 + 8] + struct.pack("<Q", 2**64 - 1) + VMLINUX[120 + 16:])  # the note's p_offset
@example(b"")
@example(b"\x7fELF")
def test_validate_elf_kernel(data: bytes) -> None:
    path = _file(data)
    try:
        info = validate_elf_kernel(path, EM_X86_64)
    except ValidationError as exc:
        assert "\n" not in exc.brief
        return
    assert info.arch == "x86_64" and isinstance(info.pvh, bool)
    version = kernel_version(path)
    assert version is None or version[0].isdigit()


@FUZZ
@given(st.binary(max_size=200) | elf_files())
@example(b"")  # mmap refuses an empty file (ValueError)
def test_kernel_version(data: bytes) -> None:
    version = kernel_version(_file(data))
    assert version is None or (isinstance(version, str) and version[0].isdigit())


# -- bzImage ---------------------------------------------------------------------------

PAYLOADS = {
    "gzip": gzip.compress(VMLINUX),
    "xz": lzma.compress(VMLINUX, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lzma.compress(VMLINUX, format=lzma.FORMAT_ALONE),
    "bzip2": bz2.compress(VMLINUX),
}
MAGICS = [magic for _name, magic in bzimage.MAGICS]
# An lzma header asking for a 4 GiB dictionary and an unknown size: liblzma allocates the
# dictionary up front (MemoryError under a memory limit, unless the decoder has a memlimit).
LZMA_4G = b"\x5d" + struct.pack("<I", 0xFFFFFFFF) + struct.pack("<Q", 2**64 - 1) + b"\0" * 64


def make_bzimage(payload: bytes, *, protocol: int = 0x20F, setup_sects: int = 3) -> bytes:
    setup = bytearray((max(setup_sects, 1) + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    stub = b"\x90" * 0x200
    struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + b"\0" * 16


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["real", "magic", "random"]))
    if kind == "real":
        data = bytearray(draw(st.sampled_from(sorted(PAYLOADS.values()))))
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            else:
                del data[draw(st.integers(1, len(data))):]
        return bytes(data)
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=64))
    return draw(st.binary(max_size=64))


@st.composite
def bzimages(draw: st.DrawFn) -> bytes:
    data = bytearray(make_bzimage(
        draw(payloads()),
        protocol=draw(st.sampled_from([0x206, 0x208, 0x20F, 0xFFFF])),
        setup_sects=draw(st.sampled_from([0, 1, 3, 255])),
    ))
    if draw(st.booleans()):  # payload_offset / payload_length
        struct.pack_into("<II", data, 0x248, draw(st.sampled_from([0, 0x200, 2**32 - 1]) | st.integers(0, 2**32 - 1)),
                         draw(st.sampled_from([0, 1, 2**32 - 1]) | st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


class _NoTools(RecordingRunner):
    """lz4 and zstd 'run' and write nothing: only vmm's own parsing is exercised."""


@FUZZ
@given(bzimages() | st.binary(max_size=700))
@example(make_bzimage(LZMA_4G))
@example(make_bzimage(b"\x28\xb5\x2f\xfd"))  # zstd magic, nothing after it
@example(make_bzimage(b"\x02\x21\x4c\x18" + struct.pack("<I", 2**32 - 1)))  # lz4 legacy, huge block
def test_extract_vmlinux(data: bytes) -> None:
    bzimage.payload_of(data)
    assert len(bzimage.candidates(data)) <= 6 * 64
    src = _file(data, "bzImage")
    dest = _DIR / "vmlinux"
    try:
        name = bzimage.extract_vmlinux(_NoTools(), src, dest)
    except ValidationError:
        return
    assert name in PAYLOADS and dest.read_bytes().startswith(b"\x7fELF")


@FUZZ
@given(st.sampled_from(MAGICS).flatmap(lambda m: st.binary(max_size=80).map(lambda b: m + b)))
def test_payload_framing(payload: bytes) -> None:
    assert 4 <= bzimage.lz4_legacy_length(payload) <= max(len(payload), 4)
    end = bzimage.zstd_frame_length(payload)
    assert end is None or 0 < end <= len(payload)


def test_lzma_dictionary_past_the_memory_limit() -> None:
    """A 4 GiB lzma dictionary is refused by the decoder's memlimit, not allocated."""
    assert bzimage.decompress(_NoTools(), "lzma", LZMA_4G, _DIR) is None


# -- ext4 superblocks ------------------------------------------------------------------


@FUZZ
@given(st.integers(0, 2048).flatmap(lambda n: st.binary(min_size=n, max_size=n)), st.booleans())
@example(b"\0" * 1080 + b"\x53\xef" + b"\0" * 10, True)  # the magic, and a superblock cut short
def test_superblocks(data: bytes, with_magic: bool) -> None:
    if with_magic and len(data) >= 1082:
        data = data[:1080] + b"\x53\xef" + data[1082:]
    path = _file(data, "disk.ext4")
    assert ext4.is_ext4(path) in (True, False)
    for read in (ext4.superblock_state, ext4.needs_repair, mountfs.superblock_stamp):
        with contextlib.suppress(VmmError):
            read(path)
