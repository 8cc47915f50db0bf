"""Where a rootfs image comes from: a directory, a tarball, a squashfs, an OCI/Docker image.

Every source becomes a directory tree in a staging directory (a directory source is used in
place), then an ext4 image with ``mkfs.ext4 -d`` — no loop mounts. Archives are extracted by
vmm itself after checking every member (``vmm.guest.archives``); OCI layouts and Docker
archives are applied layer by layer with their whiteouts (``vmm.guest.oci``).

Sources, as ``vmm image import SOURCE`` takes them::

    DIR                         a root filesystem tree
    FILE.ext4                   an ext4 image (copied as it is)
    FILE.tar[.gz|.xz|.bz2|.zst] a rootfs tarball (also .tgz, .tzst)
    FILE.squashfs / .sqfs       unsquashfs, then mkfs.ext4 -d
    oci:DIR[:REF]               an OCI image layout directory
    oci-archive:FILE[:REF]      the same, as a tar file
    docker-archive:FILE         the output of ``docker save``
    NAME[:TAG]                  an image of the local Docker daemon (docker create + export)
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import ValidationError, VmmError
from vmm.guest.archives import extract_tar
from vmm.guest.oci import apply_docker_archive, apply_oci_layout
from vmm.guest.progress import Progress, quiet
from vmm.runner import Runner
from vmm.store import scratch_prefix

MiB = 1024 * 1024
SCHEMES = ("oci", "oci-archive", "docker-archive", "docker")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.zst", ".tzst")
SQUASHFS_SUFFIXES = (".squashfs", ".sqfs", ".sfs")
DOCKER_REF_RE = re.compile(r"[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_.-]{1,128})?(@sha256:[0-9a-f]{64})?")


@dataclass(frozen=True)
class Source:
    kind: str  # dir, ext4, tar, squashfs, oci, oci-archive, docker-archive, docker
    location: str  # a path, or a Docker image reference
    ref: str | None = None  # OCI: the image's ref name in the layout


def parse_source(text: str) -> Source:
    """What ``text`` names; files and directories must exist (checked here, before any work)."""
    if not text:
        raise ValidationError("no image source given")
    scheme, sep, rest = text.partition(":")
    if sep and "://" in text and scheme not in ("docker",):
        raise ValidationError(
            f"unknown image source scheme {scheme!r} in {text!r}",
            hint="use a directory, a .tar[.gz|.zst] or .squashfs or .ext4 file, oci:DIR, "
            "oci-archive:FILE, docker-archive:FILE, or a Docker image name",
        )
    if sep and scheme in SCHEMES:
        if scheme == "docker":
            return Source("docker", _check_docker_ref(rest.removeprefix("//"), text))
        path, name = rest, ""
        if scheme in ("oci", "oci-archive") and not os.path.exists(path) and ":" in rest:
            path, _, name = rest.rpartition(":")
        _check_exists(path, directory=scheme == "oci")
        return Source(scheme, path, name or None)
    if os.path.exists(text):
        p = Path(text)
        if p.is_dir():
            return Source("dir", text)
        if not p.is_file():
            raise ValidationError(f"image source {text} is not a file or directory")
        try:
            with p.open("rb") as f:
                head = f.read(2048)
        except OSError as exc:
            raise ValidationError(f"image source {text} is not readable: {exc.strerror}") from None
        if len(head) >= 1082 and head[1080:1082] == b"\x53\xef":
            return Source("ext4", text)
        if head[:4] == b"hsqs" or text.endswith(SQUASHFS_SUFFIXES):
            return Source("squashfs", text)
        if text.endswith(TAR_SUFFIXES) or _looks_like_tar(head):
            return Source("tar", text)
        raise ValidationError(
            f"{text} is not an ext4 image, a tarball or a squashfs",
            hint="give an ext4 image, a rootfs tarball (.tar, .tar.gz, .tar.zst), a squashfs, "
            "or a directory",
        )
    if sep and scheme and "/" not in scheme and not DOCKER_REF_RE.fullmatch(text):
        raise ValidationError(
            f"unknown image source scheme {scheme!r} in {text!r}",
            hint="known schemes: oci:, oci-archive:, docker-archive:, docker://",
        )
    if "/" in text and (text.startswith(("/", ".", "~")) or not DOCKER_REF_RE.fullmatch(text)):
        raise ValidationError(f"image source {text} does not exist")
    if DOCKER_REF_RE.fullmatch(text):
        return Source("docker", text)
    raise ValidationError(f"image source {text} does not exist")


def _check_docker_ref(ref: str, text: str) -> str:
    if not DOCKER_REF_RE.fullmatch(ref):
        raise ValidationError(f"invalid Docker image name in {text!r}")
    return ref


def _check_exists(path: str, *, directory: bool) -> None:
    p = Path(path)
    try:
        os.stat(p)
    except FileNotFoundError:
        raise ValidationError(f"image source {path} does not exist") from None
    except OSError as exc:  # a name too long, a loop of links, ...
        raise ValidationError(f"image source {path}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte
        raise ValidationError(f"image source {path!r} is not a valid path") from None
    if directory and not p.is_dir():
        raise ValidationError(f"oci:{path} is not a directory (an OCI image layout)")
    if not directory and not p.is_file():
        raise ValidationError(f"image source {path} is not a file")


def _looks_like_tar(head: bytes) -> bool:
    return (
        head[257:262] == b"ustar"
        or head[:3] == b"\x1f\x8b\x08"
        or head[:4] == b"\x28\xb5\x2f\xfd"
        or head[:6] == b"\xfd7zXZ\x00"
    )


# -- sources → a tree -------------------------------------------------------------------


class Staged:
    """A tree to build an image from; ``cleanup`` removes what vmm made for it."""

    def __init__(self, tree: Path, temp: Path | None):
        self.tree = tree
        self.temp = temp

    def cleanup(self) -> None:
        """Remove vmm's temp dir. ``rm -rf --one-file-system`` after a lazy unmount of anything
        below it: never deletes through a mount (image preparation mounts nothing on the host
        any more: the sandbox's mounts die with it), and copes with trees nested too deep for
        Python's recursion. Called on every way out, Ctrl-C and SIGTERM included (the CLI turns
        SIGTERM into the same KeyboardInterrupt); ``Sandbox.run`` has already waited for the
        sandbox's processes to be gone by then."""
        if self.temp is None:
            return
        from vmm.guest.debootstrap import remove_tree

        remove_tree(Runner(), self.temp)


def stage(runner: Runner, source: Source, scratch: Path) -> Staged:
    """The source as a directory tree (in a temp dir under ``scratch`` unless it is one)."""
    if source.kind == "dir":
        return Staged(Path(source.location), None)
    scratch.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=scratch_prefix("import"), dir=scratch))
    tree = temp / "rootfs"
    tree.mkdir()
    try:
        if source.kind == "tar":
            extract_tarball(runner, Path(source.location), tree, temp)
        elif source.kind == "squashfs":
            tree.rmdir()
            runner.run(
                ["unsquashfs", "-no-progress", "-d", str(tree), source.location],
                timeout=3600,
                hint="apt-get install squashfs-tools",
            )
        elif source.kind == "oci":
            apply_oci_layout(Path(source.location), source.ref, tree)
        elif source.kind == "oci-archive":
            layout = temp / "layout"
            layout.mkdir()
            extract_tar(Path(source.location), layout)
            apply_oci_layout(layout, source.ref, tree)
        elif source.kind == "docker-archive":
            archive = temp / "archive"
            archive.mkdir()
            extract_tar(Path(source.location), archive)
            apply_docker_archive(archive, tree)
        elif source.kind == "docker":
            export_from_daemon(runner, source.location, tree, temp)
        else:
            raise ValidationError(f"unknown image source kind {source.kind!r}")
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return Staged(tree, temp)


def extract_tarball(runner: Runner, path: Path, tree: Path, temp: Path) -> None:
    with path.open("rb") as f:
        zstd = f.read(4) == b"\x28\xb5\x2f\xfd"
    if zstd:  # tarfile in Python 3.11 has no zstd
        plain = temp / "rootfs.tar"
        runner.run(
            ["zstd", "-d", "-q", "-f", str(path), "-o", str(plain)],
            timeout=3600,
            hint="apt-get install zstd",
        )
        path = plain
    extract_tar(path, tree)
    if path.parent == temp:
        path.unlink()


def export_from_daemon(runner: Runner, ref: str, tree: Path, temp: Path) -> None:
    """A container's filesystem from the local Docker daemon (create, export, remove)."""
    hint = "start the Docker daemon, or save the image elsewhere ('docker save IMAGE -o FILE') and use docker-archive:FILE"
    if runner.which("docker") is None:
        raise VmmError(f"{ref!r} looks like a Docker image name, but docker is not installed", hint=hint)
    info = runner.run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30)
    if info.returncode != 0:
        raise VmmError(f"cannot import Docker image {ref!r}: no Docker daemon is reachable", hint=hint)
    cid = runner.run(["docker", "create", ref], timeout=1800).stdout.strip()
    try:
        out = temp / "export.tar"
        runner.run(["docker", "export", "-o", str(out), cid], timeout=3600)
        extract_tar(out, tree)
        out.unlink()
    finally:
        runner.run(["docker", "rm", "-f", cid], check=False, timeout=60)



# -- checks and sizing ------------------------------------------------------------------


def missing_guest_parts(tree: Path) -> list[str]:
    """What a vmm guest needs and the tree lacks: systemd as init, sshd."""
    def exists(rel: str) -> bool:
        p = tree / rel
        return os.path.lexists(p)

    missing = []
    if not any(exists(p) for p in ("lib/systemd/systemd", "usr/lib/systemd/systemd")):
        missing.append("systemd")
    if not any(exists(p) for p in ("usr/sbin/sshd", "sbin/sshd")):
        missing.append("openssh-server")
    return missing


def prepare_if_needed(
    runner: Runner,
    staged: Staged,
    scratch: Path,
    *,
    progress: Progress = quiet,
) -> Staged:
    """A Debian/Ubuntu tree lacking systemd or sshd, prepared for vmm (``vmm.guest.prepare``).

    Any other tree is returned as it is (the caller's readiness check then refuses it). A
    directory source is copied into a temp dir under ``scratch`` first: the user's directory is
    never changed. On failure whatever was made here is removed.
    """
    from vmm.guest import prepare

    missing = missing_guest_parts(staged.tree)
    if not missing or not prepare.is_debian_like(staged.tree):
        return staged
    progress(f"{prepare.distro_name(staged.tree)} tree lacks {' and '.join(missing)}: preparing "
             "it for vmm (--as-is skips this)")
    result = staged
    if staged.temp is None:
        scratch.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=scratch_prefix("import"), dir=scratch))
        result = Staged(temp / "rootfs", temp)
        try:
            progress(f"copying {staged.tree}")
            result.tree.mkdir()
            runner.run(["cp", "-a", "--", f"{staged.tree}/.", str(result.tree)], timeout=3600)
        except BaseException:
            result.cleanup()
            raise
    try:
        prepare.prepare_imported(runner, result.tree, progress=progress)
    except BaseException:
        if result is not staged:
            result.cleanup()
        raise
    return result


def tree_bytes(tree: Path) -> tuple[int, int]:
    """(bytes in 4 KiB blocks, number of entries) of a tree."""
    total = 0
    entries = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            entries += 1
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += -(-st.st_size // 4096) * 4096
            elif stat.S_ISDIR(st.st_mode):
                total += 4096
    return total, entries


def default_size(used: int) -> int:
    """Room for the tree plus 25% and 128 MiB (the VM's disk is grown to --disk at its start)."""
    return max(256 * MiB, -(-(used * 5 // 4 + 128 * MiB) // MiB) * MiB)
