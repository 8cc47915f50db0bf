"""Root filesystem images: the registry under ``images/<name>.ext4`` with a ``<name>.json`` beside.

``import_source`` takes every source of ``vmm.guest.sources`` (directories, tarballs, squashfs,
OCI layouts and archives, docker-archive, the Docker daemon) and turns it into an ext4 image with
``mkfs.ext4 -d``; an ext4 file is copied as it is. Metadata: source, format, virtual size,
created, sha256 of the image file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError
from vmm.guest import ext4
from vmm.guest.progress import Progress, quiet
from vmm.models import validate_name
from vmm.record import Record
from vmm.runner import Runner
from vmm.store import Store, scratch_name, scratch_prefix, write_atomic

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from typing import Any

MiB = 1024 * 1024


class Image(Record):
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
        path = self.path_of(validate_name(name, "image"))
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
        tmp = self.dir / scratch_name(name, "importing")
        try:
            ext4.copy_sparse(self.runner, source, tmp)
            os.chmod(tmp, 0o600)  # guest data: root's alone
            faults.point("image-import.copied")
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.register(name, source=str(source.resolve()), kind="ext4")
        return self.get(name)

    def import_source(
        self,
        text: str,
        name: str,
        *,
        size_mb: int | None = None,
        force: bool = False,
        as_is: bool = False,
        label: str | None = None,
        extra: dict[str, Any] | None = None,
        progress: Progress = quiet,
    ) -> Image:
        """Import any source (see ``vmm.guest.sources``) as image ``name``.

        ``label`` replaces the recorded source; ``extra`` is added to the metadata; ``progress``
        gets the steps of preparing a Debian/Ubuntu tree that lacks systemd or sshd.
        """
        from vmm.guest import sources

        validate_name(name, "image")
        source = sources.parse_source(text)
        if size_mb is not None and size_mb < 16:
            raise ValidationError(f"--size must be at least 16 MB, got {size_mb}")
        dest = self.path_of(name)
        if dest.exists() and not force:
            raise ConflictError(f"image {name!r} already exists", hint="use -f to replace it")
        if source.kind == "ext4":
            img = self.import_ext4(Path(source.location), name, force=force)
            if size_mb is not None and size_mb * MiB > img.virtual_size:
                ext4.grow(self.runner, img.path, size_mb)
                self.register(name, source=str(Path(source.location).resolve()), kind="ext4")
            return self.get(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        staged = sources.stage(self.runner, source, self.dir)
        tmp = self.dir / scratch_name(name, "importing")
        try:
            if not as_is:  # a Debian/Ubuntu tree gets what it lacks (chroot + apt)
                staged = sources.prepare_if_needed(self.runner, staged, self.dir,
                                                   progress=progress)
                missing = sources.missing_guest_parts(staged.tree)
                if missing:
                    raise ValidationError(
                        f"{text} lacks {' and '.join(missing)}, which vmm guests need "
                        "(systemd as init, sshd for 'vmm ssh')",
                        hint="install them in the image first (e.g. a Dockerfile with "
                        "'apt-get install systemd-sysv openssh-server iproute2 udev'), or "
                        "import it anyway with --as-is",
                    )
            faults.point("image-import.staged")
            self._mkfs_tree(staged.tree, tmp, size_mb=size_mb, what=text)
            os.chmod(tmp, 0o600)  # guest data: root's alone
            faults.point("image-import.built")
            os.replace(tmp, dest)
        finally:
            staged.cleanup()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        where = source.location if source.kind == "docker" else str(Path(source.location).resolve())
        where = where if source.kind in ("dir", "tar", "squashfs") else f"{source.kind}:{where}"
        if source.ref:
            where += f":{source.ref}"
        self.register(name, source=label or where, kind=source.kind, extra=extra)
        return self.get(name)

    def build_debootstrap(
        self,
        name: str,
        suite: str,
        *,
        mirror: str | None = None,
        packages: Sequence[str] = (),
        size_mb: int | None = None,
        force: bool = False,
        progress: Progress = quiet,
        output: Progress | None = None,
    ) -> Image:
        """A vmm guest image from debootstrap (see ``vmm.guest.debootstrap``).

        Built in a temp dir under the images dir; an interrupt or failure removes it (after
        unmounting what debootstrap mounted) and registers nothing. ``output`` gets
        debootstrap's own lines as they come.
        """
        import tempfile
        import time

        from vmm.guest import debootstrap

        validate_name(name, "image")
        mirror = mirror or debootstrap.DEFAULT_MIRROR
        debootstrap.check_inputs(suite, mirror, packages)
        if size_mb is not None and size_mb < 16:
            raise ValidationError(f"--size must be at least 16 MB, got {size_mb}")
        dest = self.path_of(name)
        if dest.exists() and not force:
            raise ConflictError(f"image {name!r} already exists", hint="use -f to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=scratch_prefix("build"), dir=self.dir))
        tmp = self.dir / scratch_name(name, "importing")
        try:
            tree = work / "rootfs"
            pkgs = debootstrap.build_tree(
                self.runner, suite, tree, mirror=mirror, packages=packages, progress=progress,
                output=output,
            )
            progress("mkfs.ext4 -d (the tree becomes the image)")
            self._mkfs_tree(tree, tmp, size_mb=size_mb, what=f"debootstrap {suite}")
            os.chmod(tmp, 0o600)  # guest data: root's alone
            os.replace(tmp, dest)
        finally:
            debootstrap.remove_tree(self.runner, work)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.register(
            name, source=f"debootstrap:{suite}", kind="debootstrap",
            extra={"mirror": mirror, "packages": len(pkgs.splitlines()),
                   "extra_packages": list(packages)},
        )
        progress(f"built in {time.monotonic() - start:.0f} s")
        return self.get(name)

    def _mkfs_tree(self, tree: Path, tmp: Path, *, size_mb: int | None, what: str) -> None:
        """``mkfs.ext4 -d tree`` into ``tmp`` (sized ``size_mb`` or the tree + 25% + 128 MB)."""
        from vmm.guest import sources

        used, entries = sources.tree_bytes(tree)
        size = sources.default_size(used) if size_mb is None else size_mb * MiB
        if size_mb is not None and used + entries * 256 > size:
            raise ValidationError(
                f"{what} needs about {-(-used // MiB)} MB; --size {size_mb} MB is too small",
                hint=f"use --size {sources.default_size(used) // MiB} or more",
            )
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with tmp.open("wb") as f:
            f.truncate(size)
        argv = ["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), str(tmp)]
        result = self.runner.run(argv, check=False, timeout=3600)
        if result.returncode != 0:
            if "Could not allocate" in result.stderr or "No space" in result.stderr:
                raise ValidationError(
                    f"{what} does not fit in {size // MiB} MB",
                    hint=f"use a larger --size (the tree has about {-(-used // MiB)} MB)",
                )
            from vmm.errors import CommandError

            raise CommandError(argv, result.returncode, result.stderr or result.stdout)

    def delete(self, name: str, *, used_by: Sequence[str], force: bool = False) -> None:
        """Remove an image; refused while VMs use it unless ``force``.

        VMs that started once have their own copy of the disk; a VM that never started needs
        the image at its first start.
        """
        validate_name(name, "image")
        img = self.get(name)
        if used_by and not force:
            raise ConflictError(
                f"image {name!r} is used by {len(used_by)} VM(s): {', '.join(sorted(used_by))}",
                hint="delete those VMs first, or use -f (VMs never started cannot start then)",
            )
        for p in (self.dir / f"{name}.json", img.path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def register(
        self, name: str, *, source: str, kind: str, extra: dict[str, Any] | None = None
    ) -> None:
        path = self.path_of(name)
        meta: dict[str, Any] = {
            "name": name,
            "source": source,
            "format": kind,
            "virtual_size": path.stat().st_size,
            "sha256": _sha256(path),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        write_atomic(self.dir / f"{name}.json", (json.dumps(meta, indent=2) + "\n").encode())


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()
