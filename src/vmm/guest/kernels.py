"""Guest kernels: ELF validation and the kernel registry (``images/kernels/<name>``).

Firecracker v1.11 on x86_64 boots only an uncompressed ELF ``vmlinux`` (a bzImage fails with
"Invalid ELF magic number"), so a kernel is checked when it is imported, not when a VM fails
to boot: ELF magic, 64-bit class, the host's machine type, and ET_EXEC.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmm.errors import ConflictError, NotFoundError, ValidationError
from vmm.models import validate_name
from vmm.store import Store, write_atomic

EM_X86_64 = 62
EM_AARCH64 = 183
ET_EXEC = 2
_MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64", 3: "i386", 40: "arm", 243: "riscv64"}


def host_machine() -> int:
    arch = platform.machine()
    return {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}.get(
        arch, -1
    )


@dataclass(frozen=True)
class ElfInfo:
    arch: str
    entry: int


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
    return ElfInfo(_MACHINES.get(e_machine, str(e_machine)), e_entry)


@dataclass
class Kernel:
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
        path = self.dir / name
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
        self, source: Path, name: str, *, initrd: Path | None = None, force: bool = False
    ) -> Kernel:
        validate_name(name, "kernel")
        info = validate_elf_kernel(source)
        if initrd is not None and not initrd.is_file():
            raise ValidationError(f"initrd {initrd} does not exist or is not a file")
        dest = self.dir / name
        if dest.exists() and not force:
            raise ConflictError(f"kernel {name!r} already exists", hint="use -f to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.importing"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        initrd_dest = self.dir / f"{name}.initrd"
        if initrd is not None:
            tmp_i = self.dir / f".{name}.initrd.importing"
            shutil.copyfile(initrd, tmp_i)
            os.chmod(tmp_i, 0o644)
            os.replace(tmp_i, initrd_dest)
        elif initrd_dest.exists():
            initrd_dest.unlink()
        os.replace(tmp, dest)
        meta = {
            "name": name,
            "source": str(source.resolve()),
            "arch": info.arch,
            "size": dest.stat().st_size,
            "initrd": initrd is not None,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self._meta_path(name), (json.dumps(meta, indent=2) + "\n").encode())
        return self.get(name)
