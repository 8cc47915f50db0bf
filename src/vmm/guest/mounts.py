"""Host directories in a guest: one ext4 image per mount, built with ``mkfs.ext4 -d``.

A mount is a *snapshot* copy, not a live share (Firecracker 1.11 has neither virtio-fs nor 9p):
the image is built from the host directory at start, attached as an extra drive (read-only on
the drive and in fstab for ``ro``), and the guest mounts it at ``/mnt/<tag>`` through an fstab
entry that finds the disk by its label, not by its ``/dev/vdX`` order.

Nothing written in the guest is ever lost silently. After each build, sync or pull vmm records
the image's superblock *stamp* (mount count, mount/write times, lifetime writes: any rw mount in
the guest changes it) and a *fingerprint* of its contents (paths, types, permissions, sizes,
sha256 of files, symlink targets — not times or owners). At start an rw image is rebuilt from
the host only if it still holds what vmm put there: the stamp is unchanged, or the contents
(dumped with ``debugfs rdump``) still match the fingerprint. Otherwise the guest's image is kept
(with a note), ``vmm mount sync`` refuses without ``--force``, and ``vmm mount pull`` copies the
guest's files back to the host. Nothing here loop-mounts an image.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vmm import faults
from vmm.engines.base import Drive
from vmm.errors import ConflictError, NotFoundError, ValidationError, VmmError
from vmm.guest import ext4
from vmm.models import TAG_RE, VM, Mount, validate_name
from vmm.runner import Runner
from vmm.store import Store, scratch_name, scratch_prefix

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GUEST_ROOT = "/mnt"
FSTAB = "/etc/fstab"
FSTAB_BEGIN = "# BEGIN vmm mounts (vmm rewrites this block at every start)"
FSTAB_END = "# END vmm mounts"
LABEL_MAX = 16  # ext4 volume labels are at most 16 bytes
RW_HEADROOM = 1024 * MiB  # free space an rw mount gives the guest (sparse: costs no disk)
SPEC_HINT = "use --mount /host/path:tag[:ro|rw], e.g. --mount /home/me/code:code:ro"


# -- specs ------------------------------------------------------------------------------


def label_for(tag: str) -> str:
    """The ext4 label of a mount's image: ``vmm-<tag>``, or a hashed form past 16 bytes."""
    label = f"vmm-{tag}"
    if len(label) <= LABEL_MAX:
        return label
    return f"vmm-{tag[:5]}-{hashlib.sha256(tag.encode()).hexdigest()[:6]}"


def image_file_name(vm_name: str, tag: str) -> str:
    return f"{vm_name}-{tag}.ext4"


def parse_mount_spec(spec: str) -> Mount:
    """``/host/path:tag[:ro|rw]`` → a Mount (syntax only; see ``check_host_dir``)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise ValidationError(
            f"invalid --mount {spec!r}: expected /host/path:tag[:ro|rw]", hint=SPEC_HINT
        )
    path, tag = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not path:
        raise ValidationError(f"invalid --mount {spec!r}: the host path is missing", hint=SPEC_HINT)
    if not path.startswith("/"):
        raise ValidationError(
            f"invalid --mount {spec!r}: the host path {path!r} is not absolute",
            hint=f"use the full path, e.g. --mount {os.path.abspath(path)}:{tag or 'TAG'}",
        )
    if not tag:
        raise ValidationError(f"invalid --mount {spec!r}: the tag is missing", hint=SPEC_HINT)
    if not TAG_RE.fullmatch(tag):
        raise ValidationError(
            f"invalid --mount {spec!r}: tag {tag!r} is not valid",
            hint="a tag is 1-32 letters, digits, '_' or '-' (the guest path is /mnt/<tag>)",
        )
    if mode not in ("ro", "rw"):
        raise ValidationError(
            f"invalid --mount {spec!r}: mode {mode!r} is not ro or rw", hint=SPEC_HINT
        )
    return Mount(
        host_path=os.path.normpath(path), tag=tag, read_only=mode == "ro", label=label_for(tag)
    )


def check_host_dir(path: str) -> None:
    p = Path(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte, an unencodable name
        if isinstance(exc, FileNotFoundError | NotADirectoryError | ValueError):
            raise ValidationError(f"mount host path {path} does not exist") from None
        raise ValidationError(f"mount host path {path} cannot be used: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValidationError(f"mount host path {path} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ValidationError(f"mount host path {path} is not readable")


def parse_mounts(specs: list[str], *, vm_name: str, mounts_dir: Path) -> list[Mount]:
    """Every ``--mount`` of a create, fully validated (nothing has changed yet)."""
    out: list[Mount] = []
    for spec in specs:
        m = parse_mount_spec(spec)
        check_host_dir(m.host_path)
        if any(o.tag == m.tag for o in out):
            raise ValidationError(f"duplicate mount tag {m.tag!r}", hint="give each --mount its own tag")
        if any(o.label == m.label for o in out):
            raise ValidationError(f"mount tags {m.tag!r} and another one share the label {m.label!r}")
        m.image_path = str(mounts_dir / image_file_name(vm_name, m.tag))
        out.append(m)
    return out


def check_image_clash(mounts: list[Mount], others: list[VM]) -> None:
    """``<vm>-<tag>`` is ambiguous (``a-b`` + ``c`` vs ``a`` + ``b-c``): refuse a clash."""
    taken = {m.image_path: (vm.name, m.tag) for vm in others for m in vm.mounts}
    for m in mounts:
        if m.image_path in taken:
            other, tag = taken[m.image_path]
            raise ConflictError(
                f"mount tag {m.tag!r} would share its image file with VM {other!r}'s mount {tag!r}",
                hint="choose another tag",
            )


def drives(mounts: list[Mount]) -> list[Drive]:
    """The extra drives, in mount order (read-only on the device for ``ro``)."""
    return [
        Drive(f"mount{i}", Path(image_path(m)), read_only=m.read_only)
        for i, m in enumerate(mounts)
    ]


def image_path(m: Mount) -> str:
    if not m.image_path:
        raise VmmError(f"mount {m.tag!r} has no image path in the VM record")
    if os.path.basename(os.path.dirname(m.image_path)) != "mounts" or os.path.islink(m.image_path):
        # vmm writes mount images only in its own mounts directory (records are checked too)
        raise VmmError(f"mount {m.tag!r}: {m.image_path} is not in vmm's mounts directory")
    return m.image_path


# -- fstab ------------------------------------------------------------------------------


def guest_path(m: Mount) -> str:
    return f"{GUEST_ROOT}/{m.tag}"


def fstab_line(m: Mount) -> str:
    """``nofail`` + a short device timeout: a missing disk never blocks the guest's boot."""
    mode = "ro" if m.read_only else "rw"
    opts = f"{mode},nofail,x-systemd.device-timeout=10s"
    return f"LABEL={m.label or label_for(m.tag)}\t{guest_path(m)}\text4\t{opts}\t0\t0"


def merge_fstab(existing: str | None, mounts: list[Mount]) -> str | None:
    """The guest's fstab with vmm's block replaced (None: nothing to change).

    The rest of the file is the guest's own and kept as it is.
    """
    lines = (existing or "").splitlines()
    kept: list[str] = []
    inside = False
    had_block = False
    for line in lines:
        if line.strip() == FSTAB_BEGIN:
            inside = had_block = True
            continue
        if inside:
            if line.strip() == FSTAB_END:
                inside = False
            continue
        kept.append(line)
    if not mounts and not had_block:
        return None
    while kept and not kept[-1].strip():
        kept.pop()
    if mounts:
        if kept:
            kept.append("")
        kept += [FSTAB_BEGIN, *(fstab_line(m) for m in mounts), FSTAB_END]
    text = "\n".join(kept) + "\n" if kept else ""
    return None if text == (existing or "") else text


def ensure_guest_dirs(runner: Runner, image: Path, dirs: list[str]) -> None:
    """Create the missing ones of ``dirs`` (and their parents) in the ext4 ``image``.

    Only missing directories: debugfs ``mkdir`` of an existing one corrupts the filesystem.
    """
    wanted: list[str] = []
    for d in dirs:
        parts = d.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in wanted:
                wanted.append(p)
    existing = ext4.existing_paths(runner, image, wanted)
    missing = [d for d in wanted if d not in existing]
    if not missing:
        return
    script = "".join(f"mkdir {d}\nsif {d} mode 040755\n" for d in missing)
    ext4.run_debugfs_checked(runner, image, script, what="create mount points")


def write_fstab(runner: Runner, rootfs: Path, mounts: list[Mount]) -> None:
    """vmm's fstab block (and the mount points) in the VM's rootfs; other lines are kept."""
    existing = ext4.read_file(runner, rootfs, FSTAB)
    text = merge_fstab(existing, mounts)
    if mounts:
        ensure_guest_dirs(runner, rootfs, [guest_path(m) for m in mounts])
    if text is not None:
        # The guest's own lines are kept byte for byte, whatever their encoding.
        ext4.write_files(runner, rootfs, [ext4.GuestFile(FSTAB, text.encode(errors="surrogateescape"))])


# -- fingerprints -----------------------------------------------------------------------


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- the operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class MountStatus:
    mount: Mount
    image_exists: bool
    image_size: int  # bytes on disk
    state: str  # "not built", "in sync", "changed in guest", "in use", "read-only ...", "unknown"


class MountImages:
    """Mount images of VMs: build at start, sync (host → image), pull (image → host), status."""

    def __init__(self, store: Store, runner: Runner):
        self.store = store
        self.runner = runner

    @property
    def scratch(self) -> Path:
        return self.store.mounts_dir

    def _record(self, m: Mount, scan_digest: str, path: Path) -> None:
        m.fingerprint = scan_digest
        m.stamp = superblock_stamp(path)
        m.synced_at = _now()

    def build(self, m: Mount) -> None:
        path = Path(image_path(m))
        scan = build_image(self.runner, m, path)
        self._record(m, scan.digest, path)

    def guest_changed(self, m: Mount) -> bool:
        """True when the image holds something vmm did not put there (VM stopped)."""
        path = Path(image_path(m))
        if not path.exists():
            return False
        if m.stamp is not None and superblock_stamp(path) == m.stamp:
            return False
        expected = m.fingerprint
        if expected is None:  # an image vmm has no record of: compare with the host dir
            if not Path(m.host_path).is_dir():
                return True
            expected = scan_tree(Path(m.host_path)).digest
        return image_digest(self.runner, path, self.scratch) != expected

    def prepare(self, vm: VM) -> list[str]:
        """At start: build each image, unless that would discard what the guest wrote.

        Returns notes for the user. ``vm.mounts`` is updated; the caller saves the record.
        """
        notes: list[str] = []
        for m in vm.mounts:
            path = Path(image_path(m))
            host_ok = Path(m.host_path).is_dir()
            if not m.read_only and path.exists() and self.guest_changed(m):
                notes.append(
                    f"mount {m.tag!r}: the guest changed its files since the last sync, so the "
                    f"image was kept, not rebuilt from {m.host_path}; 'vmm mount pull {vm.name} "
                    f"{m.tag}' copies them to the host, 'vmm mount sync --force {vm.name} {m.tag}' "
                    "discards them"
                )
                continue
            if not host_ok:
                if path.exists():
                    notes.append(
                        f"mount {m.tag!r}: host directory {m.host_path} is missing; "
                        "using the image from the last start"
                    )
                    continue
                raise ValidationError(
                    f"mount {m.tag!r}: host directory {m.host_path} does not exist",
                    hint=f"create it, or recreate VM {vm.name!r} without this mount",
                )
            self.build(m)
        return notes

    # -- commands (VM stopped) ---------------------------------------------------------

    def _stopped_vm(self, name: str) -> VM:
        from vmm.host.liveness import is_alive
        from vmm.status import process_ref

        vm = self.store.load(name)
        if is_alive(process_ref(vm)):
            raise ConflictError(
                f"VM {name!r} is running; its mount images can change only while it is stopped",
                hint=f"stop it first: vmm stop {name}",
            )
        return vm

    @staticmethod
    def find(vm: VM, tag: str) -> Mount:
        for m in vm.mounts:
            if m.tag == tag:
                return m
        tags = ", ".join(m.tag for m in vm.mounts) or "none"
        raise NotFoundError(f"VM {vm.name!r} has no mount {tag!r}", hint=f"its mounts: {tags}")

    def status(self, name: str) -> tuple[VM, list[MountStatus]]:
        from vmm.host.liveness import is_alive
        from vmm.status import process_ref

        validate_name(name)
        vm = self.store.load(name)
        running = is_alive(process_ref(vm))
        out = []
        for m in vm.mounts:
            path = Path(m.image_path) if m.image_path else None
            exists = bool(path and path.exists())
            size = path.stat().st_blocks * 512 if path and exists else 0
            if not exists:
                state = "not built"
            elif running:
                state = "in use"
            elif m.read_only:
                state = "read-only (rebuilt at start)"
            else:
                try:
                    state = "changed in guest" if self.guest_changed(m) else "in sync"
                except VmmError:
                    state = "unknown"
            out.append(MountStatus(m, exists, size, state))
        return vm, out

    def sync(self, name: str, tag: str, *, force: bool = False) -> Mount:
        """Host → image. Refused over guest changes unless ``force``."""
        validate_name(name)
        with self.store.vm_lock(name):
            vm = self._stopped_vm(name)
            m = self.find(vm, tag)
            check_host_dir(m.host_path)
            if not m.read_only and not force and self.guest_changed(m) and not self._same_as_host(m):
                raise ConflictError(
                    f"the guest changed mount {tag!r} of VM {name!r} since the last sync; "
                    "syncing would discard those changes",
                    hint=f"copy them to the host first ('vmm mount pull {name} {tag}'), "
                    "or discard them with --force",
                )
            faults.point("mount-sync.checked")
            self.build(m)
            faults.point("mount-sync.built")
            self.store.save(vm)
            return m

    def _same_as_host(self, m: Mount) -> bool:
        """The image holds exactly what the host directory holds now: a sync interrupted after
        building it (before the record was saved) looks like a guest change, and is not one."""
        path = Path(image_path(m))
        if not path.exists():
            return False
        return image_digest(self.runner, path, self.scratch) == scan_tree(Path(m.host_path)).digest

    def pull(
        self, name: str, tag: str, *, to: Path | None = None, force: bool = False
    ) -> tuple[Mount, Path]:
        """Image → host. Into ``to`` (new or empty, unless ``force``), or by default into the
        mount's host directory, made equal to the image — refused if the host directory
        changed since the image was built (that would overwrite host edits) unless ``force``."""
        validate_name(name)
        with self.store.vm_lock(name):
            vm = self._stopped_vm(name)
            m = self.find(vm, tag)
            image = Path(image_path(m))
            if not image.exists():
                raise NotFoundError(
                    f"mount {tag!r} of VM {name!r} has no image yet (the VM was never started)",
                    hint="there is nothing to pull",
                )
            recover(self.runner, image)
            self.scratch.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix=scratch_prefix("pull"), dir=self.scratch))
            try:
                rdump(self.runner, image, staged, keep_owners=True)
                if to is not None:
                    target = Path(os.path.abspath(to))
                    if target.exists() and not target.is_dir():
                        raise ValidationError(f"--to {target} exists and is not a directory")
                    if target.is_dir() and any(target.iterdir()) and not force:
                        raise ConflictError(
                            f"--to {target} is not empty",
                            hint="pull into a new or empty directory, or use --force to "
                            "overwrite files there (nothing is deleted)",
                        )
                    target.mkdir(parents=True, exist_ok=True)
                    self._copy_over(staged, target)
                    return m, target
                target = Path(m.host_path)
                if not target.is_dir():
                    raise ValidationError(
                        f"host directory {m.host_path} does not exist",
                        hint=f"pull elsewhere with --to DIR, or create {m.host_path}",
                    )
                resuming = m.pull_pending is not None and m.pull_pending == superblock_stamp(image)
                if not force and not resuming and m.fingerprint != scan_tree(target).digest:
                    raise ConflictError(
                        f"host directory {m.host_path} changed since the mount image was built; "
                        "pulling into it would overwrite those changes",
                        hint=f"pull elsewhere with --to DIR and merge by hand, or use --force "
                        f"to make {m.host_path} equal to the guest's copy",
                    )
                m.pull_pending = superblock_stamp(image)
                self.store.save(vm)
                faults.point("mount-pull.mirroring")
                mirror(self.runner, staged, target)
                faults.point("mount-pull.mirrored")
                self._record(m, scan_tree(target).digest, image)
                m.pull_pending = None
                self.store.save(vm)
                return m, target
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _copy_over(self, src: Path, dst: Path) -> None:
        self.runner.run(
            ["cp", "-a", "--remove-destination", "--", f"{src}/.", f"{dst}/"], timeout=1800
        )

    def remove_images(self, vm: VM) -> None:
        for m in vm.mounts:
            if m.image_path:
                remove_image(self.store, Path(m.image_path))


def remove_image(store: Store, path: Path) -> None:
    """Delete a mount image, but only inside vmm's mounts directory."""
    if path.parent.resolve() != store.mounts_dir.resolve():
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def image_paths_in_text(text: str) -> list[str]:
    """Mount image paths named in a (possibly corrupt) VM record's text."""
    return re.findall(r'"image_path"\s*:\s*"([^"]+)"', text)


def mirror(runner: Runner, src: Path, dst: Path) -> None:
    """Make ``dst`` hold exactly ``src``'s tree: remove what ``src`` lacks, then copy over."""
    def kind(p: Path) -> str:
        st = os.lstat(p)
        return "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"

    for dirpath, dirnames, filenames in os.walk(dst, topdown=True):
        rel = os.path.relpath(dirpath, dst)
        for name in list(dirnames) + filenames:
            if rel == "." and name == "lost+found":
                continue
            here = Path(dirpath) / name
            there = src / rel / name
            if not os.path.lexists(there) or kind(there) != kind(here):
                if kind(here) == "d":
                    shutil.rmtree(here)
                    dirnames.remove(name)
                else:
                    here.unlink()
    runner.run(["cp", "-a", "--remove-destination", "--", f"{src}/.", f"{dst}/"], timeout=1800)
