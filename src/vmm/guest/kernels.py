"""Guest kernels: ELF validation and the kernel registry (``images/kernels/<name>``).

Firecracker v1.11 on x86_64 boots only an uncompressed ELF ``vmlinux`` (a bzImage fails with
"Invalid ELF magic number"), so a kernel is checked when it is imported, not when a VM fails
to boot: ELF magic, 64-bit class, the host's machine type, ET_EXEC, and a file long enough for
its segments. A bzImage is accepted too: the ELF inside it is extracted (``vmm.guest.bzimage``).
The registry records the version (the ``Linux version ...`` banner), arch, size, whether the
kernel has a PVH entry (the Xen ELF note Firecracker 1.12+ and QEMU use) and an initrd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError
from vmm.guest.progress import Progress, quiet
from vmm.models import validate_name
from vmm.record import FrozenRecord, Record
from vmm.runner import Runner
from vmm.store import Store, scratch_name, write_atomic

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from typing import Any

EM_X86_64 = 62
EM_AARCH64 = 183
ET_EXEC = 2
_MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64", 3: "i386", 40: "arm", 243: "riscv64"}


def host_machine() -> int:
    import platform

    arch = platform.machine()
    return {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}.get(
        arch, -1
    )


class ElfInfo(FrozenRecord):
    arch: str
    entry: int
    pvh: bool = False


XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note
PT_LOAD = 1
PT_NOTE = 4


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _segments(f: Any, endian: str, head: bytes, size: int) -> list[tuple[int, int, int]]:
    """(p_type, p_offset, p_filesz) of each program header."""
    (phoff,) = struct.unpack_from(endian + "Q", head, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
    if not phnum:
        return []
    if phoff > size:  # seek() refuses offsets past 2**63 (and the kernel's limit)
        raise EOFError
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    if len(table) < phentsize * phnum or phentsize < 56:
        raise EOFError
    out = []
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            endian + "IIQQQQ", table, i * phentsize
        )
        out.append((p_type, p_offset, p_filesz))
    return out


def _has_pvh_note(f: Any, endian: str, segments: list[tuple[int, int, int]], file_size: int) -> bool:
    for p_type, offset, size in segments:
        if p_type != PT_NOTE or size > 1 << 20 or offset > file_size:  # past the end: see the caller
            continue
        f.seek(offset)
        notes = f.read(size)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from(endian + "III", notes, pos)
            name = notes[pos + 12 : pos + 12 + namesz]
            if name.rstrip(b"\0") == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def validate_elf_kernel(path: Path, machine: int | None = None) -> ElfInfo:
    """Check that ``path`` is a bootable ELF vmlinux for this host; raise ValidationError if not."""
    machine = host_machine() if machine is None else machine
    try:
        with path.open("rb") as f:
            head = f.read(64)
            f.seek(0x202)
            hdrs = f.read(4)
    except FileNotFoundError:
        raise ValidationError(f"kernel file {path} does not exist") from None
    except IsADirectoryError:
        raise ValidationError(f"kernel file {path} is a directory") from None
    except PermissionError:
        raise ValidationError(f"kernel file {path} is not readable") from None
    if head[:4] != b"\x7fELF":
        if _looks_like_text(head):
            raise ValidationError(
                f"{path} is a text file, not an ELF kernel",
                hint="give the kernel itself: an ELF vmlinux or a bzImage (e.g. /boot/vmlinuz-*)",
            )
        if hdrs == b"HdrS":
            raise ValidationError(
                f"{path} is a compressed bzImage, not an ELF vmlinux",
                hint="import the uncompressed vmlinux (e.g. from the kernel build tree, or "
                "extracted with the kernel's scripts/extract-vmlinux)",
            )
        raise ValidationError(
            f"{path} is not an ELF kernel (no ELF magic)",
            hint="vmm needs an uncompressed vmlinux (ELF) kernel",
        )
    if len(head) < 64:
        raise ValidationError(f"{path} is a truncated ELF file")
    if head[4] != 2:
        raise ValidationError(f"{path} is a 32-bit ELF file; a 64-bit kernel is needed")
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(endian + "HH", head, 16)
    (e_entry,) = struct.unpack_from(endian + "Q", head, 24)
    if e_machine != machine:
        got = _MACHINES.get(e_machine, f"machine {e_machine}")
        want = _MACHINES.get(machine, f"machine {machine}")
        raise ValidationError(f"{path} is a kernel for {got}; this host needs {want}")
    if e_type != ET_EXEC:
        raise ValidationError(
            f"{path} is an ELF file but not an executable kernel (type {e_type})",
            hint="a vmlinux is ET_EXEC; shared objects and relocatable files are not kernels",
        )
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            segments = _segments(f, endian, head, size)
            pvh = _has_pvh_note(f, endian, segments, size)
    except (EOFError, struct.error):
        raise ValidationError(f"{path} is a truncated ELF file (its program headers are cut off)") from None
    end = max((off + sz for t, off, sz in segments if t in (PT_LOAD, PT_NOTE)), default=0)
    if end > size:
        raise ValidationError(
            f"{path} is a truncated ELF file ({size} bytes; its segments need {end})",
            hint="copy the kernel again: the file is incomplete",
        )
    return ElfInfo(_MACHINES.get(e_machine, str(e_machine)), e_entry, pvh)


def kernel_version(path: Path) -> str | None:
    """The release from the ``Linux version <release> (...)`` banner in the image."""
    import mmap

    if path.stat().st_size == 0:
        return None  # mmap refuses an empty file
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(b"Linux version ")
        while pos != -1:
            tail = mm[pos + 14 : pos + 14 + 128]
            word = tail.split(b" ", 1)[0].split(b"\0", 1)[0]
            if word[:1].isdigit():
                return word.decode("ascii", "replace")
            pos = mm.find(b"Linux version ", pos + 1)
    return None


class Kernel(Record):
    name: str
    path: Path
    initrd: Path | None
    meta: dict[str, Any]


class KernelRegistry:
    def __init__(self, store: Store):
        self.dir = store.kernels_dir

    def _meta_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str) -> Kernel:
        path = self.dir / validate_name(name, "kernel")
        if not path.is_file():
            raise NotFoundError(
                f"kernel {name!r} not found",
                hint="import one with 'vmm kernel import PATH --name "
                f"{name}' (see 'vmm kernel list')",
            )
        initrd = self.dir / f"{name}.initrd"
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(self._meta_path(name).read_text())
        return Kernel(name, path, initrd if initrd.is_file() else None, meta)

    def list(self) -> list[Kernel]:
        if not self.dir.is_dir():
            return []
        out = []
        for entry in sorted(os.listdir(self.dir)):
            if "." in entry or not (self.dir / entry).is_file():
                continue
            out.append(self.get(entry))
        return out

    def import_kernel(
        self,
        source: Path,
        name: str,
        *,
        initrd: Path | None = None,
        force: bool = False,
        runner: Runner | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Kernel:
        """Import an ELF vmlinux, or the ELF extracted from a bzImage; validated first."""
        validate_name(name, "kernel")
        if initrd is not None and not initrd.is_file():
            raise ValidationError(f"initrd {initrd} does not exist or is not a file")
        dest = self.dir / name
        if dest.exists() and not force:
            raise ConflictError(f"kernel {name!r} already exists", hint="use -f to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / scratch_name(name, "importing")
        fmt = "elf"
        try:
            if _is_bzimage_file(source):
                from vmm.guest import bzimage

                fmt = "bzImage/" + bzimage.extract_vmlinux(runner or Runner(), source, tmp)
            else:
                validate_elf_kernel(source)
                shutil.copyfile(source, tmp)
            faults.point("kernel-import.copied")
            info = validate_elf_kernel(tmp)
            version = kernel_version(tmp)
            os.chmod(tmp, 0o644)
            initrd_dest = self.dir / f"{name}.initrd"
            if initrd is not None:
                tmp_i = self.dir / scratch_name(f"{name}.initrd", "importing")
                shutil.copyfile(initrd, tmp_i)
                os.chmod(tmp_i, 0o644)
                os.replace(tmp_i, initrd_dest)
            elif initrd_dest.exists():
                initrd_dest.unlink()
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        meta = {
            "name": name,
            "source": str(source.resolve()),
            "format": fmt,
            "version": version,
            "arch": info.arch,
            "pvh": info.pvh,
            "size": dest.stat().st_size,
            "initrd": initrd is not None,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        write_atomic(self._meta_path(name), (json.dumps(meta, indent=2) + "\n").encode())
        return self.get(name)

    def build(
        self,
        name: str,
        version: str,
        *,
        source: Path | None = None,
        fragments: Sequence[Path] = (),
        jobs: int | None = None,
        force: bool = False,
        runner: Runner | None = None,
        progress: Progress = quiet,
        status: Progress | None = None,
    ) -> tuple[Kernel, Path, str | None]:
        """``vmm kernel build``: ``vmm.guest.kernelbuild`` in a temp dir here, the result
        imported as ``name`` with its config beside it. The kernel, the config's path and the
        built kernelrelease."""
        import tempfile

        from vmm.guest import kernelbuild

        validate_name(name, "kernel")
        if (self.dir / name).exists() and not force:
            raise ConflictError(f"kernel {name!r} already exists", hint="use -f to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / f"{name}.config"
        with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=self.dir) as tmp:
            out = Path(tmp) / "out"
            facts = kernelbuild.build(
                runner or Runner(), version, out, source=source, fragments=fragments, jobs=jobs,
                work_parent=Path(tmp), progress=progress, status=status,
            )
            kernel = self.import_kernel(
                out / "vmlinux", name, force=force,
                extra={"source": f"build:{facts['source']}", "format": "elf/built",
                       "fragments": [str(f.resolve()) for f in fragments]},
            )
            config.write_text((out / "kernel.config").read_text())
        return kernel, config, facts.get("release")

    def details(self, kernel: Kernel) -> dict[str, Any]:
        """version, arch, pvh: from the metadata, or read from the file (older imports)."""
        meta = dict(kernel.meta)
        if not all(k in meta for k in ("version", "arch", "pvh")):
            with contextlib.suppress(ValidationError, OSError, ValueError):
                info = validate_elf_kernel(kernel.path)
                meta.setdefault("arch", info.arch)
                meta.setdefault("pvh", info.pvh)
                meta.setdefault("version", kernel_version(kernel.path))
        return meta

    def delete(self, name: str, *, used_by: Sequence[str]) -> None:
        """Remove a kernel and its initrd; refused while VMs use it (they boot from it)."""
        validate_name(name, "kernel")
        self.get(name)
        if used_by:
            raise ConflictError(
                f"kernel {name!r} is used by {len(used_by)} VM(s): {', '.join(sorted(used_by))}",
                hint="delete those VMs first",
            )
        for p in (self.dir / f"{name}.initrd", self.dir / f"{name}.config", self._meta_path(name),
                  self.dir / name):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _is_bzimage_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(0x206)
    except OSError:
        return False  # validate_elf_kernel says what is wrong
    return head[:4] != b"\x7fELF" and len(head) == 0x206 and head[0x202:0x206] == b"HdrS"
