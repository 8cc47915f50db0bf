"""Archives extracted by vmm itself, member by member, after checking every member first.

Absolute names, ``..`` components, hard links outside the tree, symbolic links whose relative
target leaves the tree, and writing *through* a symbolic link (a member under a path that is a
link) are refused, so nothing is ever written outside the target directory. An OCI/Docker
layer is applied with its whiteouts (``.wh.<name>`` deletes ``<name>``, ``.wh..wh..opq``
empties the directory).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from pathlib import Path

from vmm.errors import ValidationError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def member_path(name: str) -> str:
    """A member's path relative to the target, or raise if it would leave the target."""
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        raise ValidationError(f"archive member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValidationError(f"archive member {name!r} contains '..'; refusing to extract")
    return "/".join(parts)


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse the whole archive if any member could write outside the target."""
    for m in members:
        rel = member_path(m.name)
        base = posixpath.basename(rel)
        if base.startswith(WHITEOUT) and base != OPAQUE and base[len(WHITEOUT):] in ("", ".", ".."):
            raise ValidationError(
                f"archive member {m.name!r} is a whiteout of {base[len(WHITEOUT):]!r}; refusing "
                "to extract"
            )
        if m.islnk():
            member_path(m.linkname)
        elif m.issym():
            target = m.linkname
            if not target.startswith("/"):
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
                if joined == ".." or joined.startswith("../"):
                    raise ValidationError(
                        f"archive member {m.name!r} is a link to {target!r}, outside the tree; "
                        "refusing to extract"
                    )


def _no_links_above(root: Path, rel: str) -> Path:
    """``root/rel``, after checking that no directory on the way is a symbolic link."""
    cur = root
    parts = rel.split("/") if rel else []
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            cur.mkdir(mode=0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ValidationError(
                f"archive member {rel!r} would be written through the symbolic link "
                f"{cur.relative_to(root)}; refusing to extract"
            )
        if not stat.S_ISDIR(st.st_mode):
            cur.unlink()
            cur.mkdir(mode=0o755)
    return root / rel if rel else root


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def extract_tar(path: Path, dest: Path, *, layer: bool = False) -> None:
    """Extract a tar (gzip, xz, bzip2 or none) into ``dest``, after checking every member.

    ``layer``: an OCI/Docker layer — apply whiteouts and replace what lower layers put there.
    """
    try:
        with tarfile.open(str(path), mode="r:*") as tf:
            members = tf.getmembers()
            check_members(members)
            dirs: list[tuple[Path, tarfile.TarInfo]] = []
            if layer:  # opaque directories first: they hide the lower layers' contents only
                for m in members:
                    rel = member_path(m.name)
                    if posixpath.basename(rel) == OPAQUE:
                        # join, not "+ '/x'": a top-level opaque marker has dirname "" and
                        # must empty the target, never "/" of the host
                        d = _no_links_above(dest, posixpath.join(posixpath.dirname(rel), "x")).parent
                        if d != dest and dest not in d.parents:
                            raise ValidationError(f"archive member {m.name!r} leaves the tree")
                        if d.is_dir():
                            for child in list(d.iterdir()):
                                _remove(child)
            for m in members:
                rel = member_path(m.name)
                base = posixpath.basename(rel)
                if layer and base.startswith(WHITEOUT):
                    if base != OPAQUE:
                        gone = posixpath.join(posixpath.dirname(rel), base[len(WHITEOUT):])
                        _remove(_no_links_above(dest, gone))
                    continue
                if not rel:
                    continue
                target = _no_links_above(dest, rel)
                if m.isdir():
                    if target.exists() and not target.is_dir() or target.is_symlink():
                        _remove(target)
                    target.mkdir(mode=0o755, exist_ok=True)
                    dirs.append((target, m))
                    continue
                _remove(target)
                try:
                    if m.islnk():
                        src = _no_links_above(dest, member_path(m.linkname))
                        os.link(src, target)
                        continue
                    m.name = rel
                    tf.extract(m, path=str(dest), set_attrs=True, numeric_owner=True)
                except OSError as exc:  # a hard link to a missing member, a directory, itself
                    raise ValidationError(
                        f"cannot extract archive member {m.name!r} of {path}: "
                        f"{exc.strerror or exc}"
                    ) from None
            for d, m in reversed(dirs):  # directory modes and times last (children are done)
                with contextlib.suppress(OSError):
                    os.chown(d, m.uid, m.gid)
                    os.chmod(d, m.mode & 0o7777)
                    os.utime(d, (m.mtime, m.mtime))
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:  # a cut-off archive too
        raise ValidationError(f"cannot read archive {path}: {exc or type(exc).__name__}") from None
