"""The ELF ``vmlinux`` inside a bzImage (Firecracker 1.11 boots only the ELF).

A bzImage is real-mode setup code followed by a small decompressor and the compressed kernel.
Boot protocol 2.08+ says where that payload is (``payload_offset``/``payload_length`` in the
setup header, relative to the protected-mode code at ``(setup_sects + 1) * 512``); older or odd
images are searched for a compression magic, as the kernel's ``scripts/extract-vmlinux`` does.
gzip, xz, lzma and bzip2 are decompressed with the standard library; LZ4 (the kernel's *legacy*
frame, magic ``02 21 4C 18``: Debian's kernels) and zstd with the ``lz4``/``zstd`` programs. The
kernel appends the uncompressed size to some payloads, which those programs report as trailing
garbage: the result counts when it is a complete ELF file, whatever their exit code.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from vmm.errors import ValidationError
from vmm.runner import Runner

ELF_MAGIC = b"\x7fELF"

# name, magic; the order is the search order when the header does not say.
MAGICS: list[tuple[str, bytes]] = [
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
]


_HINT = (
    "vmm unpacks gzip, xz, lzma, bzip2, lz4 and zstd kernels; or import the ELF vmlinux from "
    "the kernel build tree"
)


def is_bzimage(head: bytes) -> bool:
    """The x86 boot sector signature and the setup header magic ``HdrS`` at 0x202."""
    return len(head) >= 0x206 and head[0x202:0x206] == b"HdrS"


def payload_of(data: bytes) -> tuple[str, bytes] | None:
    """(compression, compressed bytes) from the setup header, or None if it does not say."""
    if not is_bzimage(data) or len(data) < 0x250:
        return None
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        return None
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    if not length or len(payload) != length:
        return None
    for name, magic in MAGICS:
        if payload.startswith(magic):
            return name, payload
    return "unknown", payload


def candidates(data: bytes) -> list[tuple[str, int]]:
    """Every (compression, offset) where a magic appears, in file order."""
    out: list[tuple[str, int]] = []
    for name, magic in MAGICS:
        pos = data.find(magic)
        while pos != -1 and len(out) < 64:
            out.append((name, pos))
            pos = data.find(magic, pos + 1)
    return sorted(out, key=lambda c: c[1])


def _stdlib(decompressor: Callable[[], object]) -> Callable[[bytes], bytes]:
    def run(payload: bytes) -> bytes:
        d = decompressor()
        return d.decompress(payload)  # type: ignore[attr-defined, no-any-return]

    return run


# A kernel's xz/lzma dictionary is at most 64 MiB; a header asking for more (up to 4 GiB) is not
# a kernel, and without a limit liblzma allocates it up front (MemoryError under a memory limit).
_LZMA_MEMLIMIT = 256 * 1024 * 1024
_STDLIB: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _stdlib(lambda: zlib.decompressobj(wbits=31)),
    "xz": _stdlib(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT)),
    "lzma": _stdlib(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=_LZMA_MEMLIMIT)),
    "bzip2": _stdlib(bz2.BZ2Decompressor),
}
_TOOLS = {
    "lz4": (["lz4", "-d", "-f", "-q", "--no-sparse"], "lz4"),
    "zstd": (["zstd", "-d", "-f", "-q"], "zstd"),
}


LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BOUND = 8 * 1024 * 1024 + 8 * 1024 * 1024 // 255 + 16  # compressBound(8 MiB block)


def lz4_legacy_length(data: bytes) -> int:
    """Bytes of the LZ4 legacy stream at the start of ``data`` (blocks of u32 size + data).

    The stream has no end marker: what follows it (the kernel's appended size, or anything
    else) would be read as one more block and make ``lz4`` fail, so it is cut off first.
    """
    pos = 4
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0 or size == LZ4_LEGACY_MAGIC or size > LZ4_LEGACY_BOUND or pos + 4 + size > len(data):
            break
        pos += 4 + size
    return pos


def zstd_frame_length(data: bytes) -> int | None:
    """Bytes of the zstd frame at the start of ``data`` (RFC 8878 §3.1.1), None if malformed.

    ``zstd -d`` rejects trailing bytes and then deletes its output, so the frame is cut out first.
    """
    try:
        fhd = data[4]
        pos = 5
        single = bool(fhd & 0x20)
        if not single:
            pos += 1  # window descriptor
        pos += (0, 1, 2, 4)[fhd & 0x3]  # dictionary id
        fcs = fhd >> 6
        pos += (1 if single else 0, 2, 4, 8)[fcs]
        while True:
            header = int.from_bytes(data[pos : pos + 3], "little")
            if pos + 3 > len(data):
                return None
            last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
            pos += 3 + (1 if btype == 1 else bsize)
            if btype == 3 or pos > len(data):
                return None
            if last:
                break
        if fhd & 0x4:
            pos += 4  # content checksum
        return pos if pos <= len(data) else None
    except IndexError:
        return None


def decompress(runner: Runner, name: str, payload: bytes, workdir: Path) -> bytes | None:
    """The decompressed bytes, or None when ``payload`` is not valid ``name`` data."""
    if name in _STDLIB:
        try:
            return _STDLIB[name](payload)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
            return None
    argv, package = _TOOLS[name]
    if name == "lz4":
        payload = payload[: lz4_legacy_length(payload)] if payload.startswith(b"\x02\x21\x4c\x18") else payload
    elif name == "zstd":
        end = zstd_frame_length(payload)
        if end is None:
            return None
        payload = payload[:end]
    src = workdir / f"payload.{name}"
    dst = workdir / "vmlinux.out"
    src.write_bytes(payload)
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    extra = ["-o", str(dst)] if name == "zstd" else []
    runner.run(
        [*argv, str(src), *extra, *([] if extra else [str(dst)])],
        check=False,
        timeout=300,
        hint=f"apt-get install {package} (needed to unpack {name}-compressed kernels)",
    )
    try:
        return dst.read_bytes() if dst.exists() else None
    finally:
        for p in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def extract_vmlinux(runner: Runner, source: Path, dest: Path) -> str:
    """Write the ELF vmlinux inside bzImage ``source`` to ``dest``; returns the compression."""
    data = source.read_bytes()
    tried: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vmm-bzimage-") as tmp:
        work = Path(tmp)
        header = payload_of(data)
        if header is not None and header[0] == "unknown":
            raise ValidationError(
                f"{source} is a bzImage with an unknown compression (its payload starts with "
                f"{header[1][:4].hex(' ')})",
                hint=_HINT,
            )
        if header is not None:
            attempts = [header]
        else:  # the header does not say where the payload is (protocol < 2.08): search
            attempts = [(name, data[pos:]) for name, pos in candidates(data)]
        for name, payload in attempts:
            tried.append(name)
            out = decompress(runner, name, payload, work)
            if out and out.startswith(ELF_MAGIC):
                tmp_dest = dest.with_name(f".{dest.name}.extracting")
                tmp_dest.write_bytes(out)
                os.replace(tmp_dest, dest)
                return name
    if not tried:
        raise ValidationError(
            f"{source} is a bzImage but no compressed kernel was found in it", hint=_HINT
        )
    raise ValidationError(
        f"could not unpack the kernel in bzImage {source} (tried {', '.join(dict.fromkeys(tried))})",
        hint=_HINT,
    )
