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

This module: ``--mount`` specs, the drives and the guest's fstab block. ``vmm.guest.mountfs``
builds an image from a host tree and fingerprints trees and images; ``vmm.guest.mountsync``
(``MountImages``) decides at start, and does ``vmm mount`` list, sync and pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from vmm.engines.base import Drive
from vmm.errors import ConflictError, ValidationError, VmmError
from vmm.guest import ext4
from vmm.models import TAG_RE, VM, Mount
from vmm.runner import Runner
from vmm.store import Store

GUEST_ROOT = "/mnt"
FSTAB = "/etc/fstab"
FSTAB_BEGIN = "# BEGIN vmm mounts (vmm rewrites this block at every start)"
FSTAB_END = "# END vmm mounts"
LABEL_MAX = 16  # ext4 volume labels are at most 16 bytes
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
    existing = ext4.existing(runner, image, wanted)
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


def remove_image(store: Store, path: Path) -> None:
    """Delete a mount image, but only inside vmm's mounts directory."""
    if path.parent.resolve() != store.mounts_dir.resolve():
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

