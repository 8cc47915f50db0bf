"""A host tree as a mount's ext4 image, and what vmm compares: fingerprints and stamps.

``build_image`` makes the image with ``mkfs.ext4 -d`` (no mount), sized from a scan of the
tree. ``scan_tree`` fingerprints a tree (paths, types, permissions, sizes, sha256 of files,
symlink targets: not times or owners); ``image_digest`` fingerprints an image's contents by
copying them out with ``debugfs rdump``; ``superblock_stamp`` reads what any rw mount in the
guest changes. See ``vmm.guest.mounts`` for how they are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import VmmError
from vmm.guest import ext4
from vmm.guest.mounts import check_host_dir, label_for
from vmm.models import Mount
from vmm.runner import Runner
from vmm.store import scratch_name, scratch_prefix

MiB = 1024 * 1024
RW_HEADROOM = 1024 * MiB  # free space an rw mount gives the guest (sparse: costs no disk)


@dataclass(frozen=True)
class TreeScan:
    """What a directory tree holds, as vmm compares it: ``digest`` plus sizing numbers."""

    digest: str
    data_bytes: int  # file sizes rounded up to 4 KiB blocks
    entries: int


def scan_tree(root: Path) -> TreeScan:
    """Fingerprint a tree: paths, types, permissions, sizes, file sha256, symlink targets.

    Times and owners are left out (they differ between a host tree and its ``rdump``, and a
    guest that only read files has not changed them). The top-level ``lost+found`` of an ext4
    filesystem is skipped; so are sockets, fifos and devices (``mkfs -d``/``rdump`` differ on them).
    """
    h = hashlib.sha256()
    data = 0
    entries = 0
    root = Path(os.path.realpath(root))

    def walk(d: Path, rel: str) -> None:
        nonlocal data, entries
        try:
            names = sorted(os.listdir(d))
        except OSError as exc:
            raise VmmError(f"cannot read directory {d}: {exc.strerror}") from None
        for name in names:
            if not rel and name == "lost+found":
                continue
            p = d / name
            r = f"{rel}/{name}"
            st = os.lstat(p)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                h.update(f"d {r!r} {perm:o}\n".encode())
                entries += 1
                walk(p, r)
            elif stat.S_ISLNK(st.st_mode):
                h.update(f"l {r!r} {os.readlink(p)!r}\n".encode())
                entries += 1
            elif stat.S_ISREG(st.st_mode):
                fh = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1024 * 1024):
                        fh.update(chunk)
                h.update(f"f {r!r} {perm:o} {st.st_size} {fh.hexdigest()}\n".encode())
                data += -(-st.st_size // 4096) * 4096
                entries += 1

    walk(root, "")
    return TreeScan(h.hexdigest(), data, entries)


def superblock_stamp(image: Path) -> str:
    """Mount count, mount/write times, lifetime writes, state, free blocks and inodes.

    A guest's rw mount always changes it (the kernel bumps the mount count and mount time), so an
    unchanged stamp proves the image is as vmm left it; a changed one sends the caller to the
    slower content comparison.
    """
    with image.open("rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    if len(sb) < 1024 or sb[0x38:0x3A] != b"\x53\xef":
        raise VmmError(f"{image} is not an ext4 image")
    mtime, wtime, count = struct.unpack_from("<IIH", sb, 0x2C)
    (state,) = struct.unpack_from("<H", sb, 0x3A)
    (incompat,) = struct.unpack_from("<I", sb, 0x60)
    (kbytes,) = struct.unpack_from("<Q", sb, 0x178)
    free_blocks, free_inodes = struct.unpack_from("<II", sb, 0x0C)
    return f"{count}:{mtime}:{wtime}:{kbytes}:{state}:{incompat:x}:{free_blocks}:{free_inodes}"


def recover(runner: Runner, image: Path) -> None:
    """Replay the journal (what the guest's next mount would do) so rdump sees its last writes."""
    ext4.make_consistent(runner, image, what="the mount image")


def rdump(runner: Runner, image: Path, dest: Path, *, keep_owners: bool = False) -> None:
    """Copy the image's whole tree into the existing directory ``dest`` (no mount).

    Without ``keep_owners`` debugfs runs without privileges (``ext4.run_tool``) and the files
    are its uid's: enough for a fingerprint. ``mount pull`` keeps the guest's owners, which
    needs root (the remaining risk is in docs/security.md; the image passed ``e2fsck -p``
    as the unprivileged uid first)."""
    if '"' in str(dest) or "\n" in str(dest):
        raise VmmError(f"cannot copy files into {dest}: the path contains a quote or a newline")
    # debugfs splits -R on spaces unless quoted: a data dir like "/srv/vm data" must survive.
    if keep_owners:
        result = runner.run(["debugfs", "-R", f'rdump / "{dest}"', str(image)], timeout=1800)
    else:
        result = ext4.run_tool(
            runner, image, lambda c: ["debugfs", "-R", f'rdump / "{c.dirs[0]}"', c.image],
            timeout=1800, dirs=(dest,),
        )  # fmt: skip
    errors = ext4.debugfs_errors(result.stderr)
    if not keep_owners:  # without root it cannot give files the guest's owners: expected
        errors = [e for e in errors if "while changing ownership" not in e]
    if errors:
        raise VmmError(f"could not copy files out of {image}: {errors[0]}", details="\n".join(errors))
    lf = dest / "lost+found"
    with contextlib.suppress(OSError):
        if lf.is_dir() and not any(lf.iterdir()):
            lf.rmdir()


def image_digest(runner: Runner, image: Path, scratch: Path) -> str:
    recover(runner, image)
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix("digest"), dir=scratch))
    try:
        rdump(runner, image, tmp)
        return scan_tree(tmp).digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- building ---------------------------------------------------------------------------


def image_size(scan: TreeScan, *, read_only: bool) -> int:
    """Bytes for the image file: the data, inodes and metadata, plus room for guest writes (rw)."""
    size = scan.data_bytes * 11 // 10 + scan.entries * 4096 + 16 * MiB
    if not read_only:
        size += 64 * MiB + max(RW_HEADROOM, scan.data_bytes)  # journal + free space
    return -(-size // MiB) * MiB


def mkfs_argv(image: Path, source: Path, *, label: str, read_only: bool, inodes: int) -> list[str]:
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-N", str(inodes), "-d", str(source)]
    if read_only:
        argv += ["-O", "^has_journal"]  # never written: no journal needed
    return [*argv, str(image)]


def build_image(runner: Runner, m: Mount, dest: Path) -> TreeScan:
    """(Re)build ``dest`` from the host directory; atomic (a temp file renamed over it)."""
    source = Path(os.path.realpath(m.host_path))
    check_host_dir(str(source))
    scan = scan_tree(source)
    size = image_size(scan, read_only=m.read_only)
    inodes = max(scan.entries * 2 + 1024, 4096)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(scratch_name(dest.name, "building"))
    try:
        for _attempt in range(3):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
            argv = mkfs_argv(
                tmp, source, label=m.label or label_for(m.tag), read_only=m.read_only, inodes=inodes
            )
            result = runner.run(argv, check=False, timeout=1800)
            if result.returncode == 0:
                break
            if "Could not allocate" not in result.stderr and "No space" not in result.stderr:
                from vmm.errors import CommandError

                raise CommandError(argv, result.returncode, result.stderr or result.stdout)
            size *= 2  # the estimate was short (many tiny files, deep trees): try larger
        else:
            raise VmmError(f"could not fit {m.host_path} into an ext4 image of {size // MiB} MB")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return scan
