"""Root filesystem images: the registry under ``images/<name>.ext4`` with a ``<name>.json`` beside.

This is the minimal part (import of an ext4 file, list, lookup); other sources (pull, Docker,
OCI, tarballs, debootstrap) build on ``register``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmm.errors import ConflictError, NotFoundError, ValidationError
from vmm.guest import ext4
from vmm.models import validate_name
from vmm.runner import Runner
from vmm.store import Store, write_atomic


@dataclass
class Image:
    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def virtual_size(self) -> int:
        return self.path.stat().st_size

    @property
    def disk_usage(self) -> int:
        return self.path.stat().st_blocks * 512


class ImageRegistry:
    def __init__(self, store: Store, runner: Runner):
        self.dir = store.images_dir
        self.runner = runner

    def path_of(self, name: str) -> Path:
        return self.dir / f"{name}.ext4"

    def get(self, name: str) -> Image:
        path = self.path_of(name)
        if not path.is_file():
            raise NotFoundError(
                f"image {name!r} not found",
                hint=f"import one with 'vmm image import ROOTFS.ext4 --name {name}' "
                "(see 'vmm image list')",
            )
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((self.dir / f"{name}.json").read_text())
        return Image(name, path, meta)

    def list(self) -> list[Image]:
        if not self.dir.is_dir():
            return []
        return [
            self.get(e[:-5])
            for e in sorted(os.listdir(self.dir))
            if e.endswith(".ext4") and not e.startswith(".")
        ]

    def import_ext4(self, source: Path, name: str, *, force: bool = False) -> Image:
        validate_name(name, "image")
        if not source.is_file():
            raise ValidationError(f"image file {source} does not exist or is not a file")
        if not ext4.is_ext4(source):
            raise ValidationError(
                f"{source} is not an ext4 filesystem image",
                hint="give a raw ext4 image (e.g. made with mkfs.ext4 -d DIR)",
            )
        dest = self.path_of(name)
        if dest.exists() and not force:
            raise ConflictError(f"image {name!r} already exists", hint="use -f to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.importing"
        try:
            ext4.copy_sparse(self.runner, source, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.register(name, source=str(source.resolve()), kind="ext4")
        return self.get(name)

    def register(self, name: str, *, source: str, kind: str) -> None:
        path = self.path_of(name)
        meta = {
            "name": name,
            "source": source,
            "format": kind,
            "virtual_size": path.stat().st_size,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self.dir / f"{name}.json", (json.dumps(meta, indent=2) + "\n").encode())
