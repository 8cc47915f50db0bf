"""Editing an untrusted tree from the host: paths resolved inside it, links never followed out.

``resolve``, ``write_file``, ``remove``, ``remove_glob``, ``make_dir`` and ``symlink`` take a
path relative to the tree and resolve symbolic links as the guest would (an absolute target
means the tree's root, ``..`` stops at it), checking every directory on the way with
``lstat``; the last component is never followed when it is written or removed. Nothing runs in
the tree while vmm edits it, so the checks cannot be raced.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat
from collections import deque
from pathlib import Path

from vmm.errors import ValidationError

MAX_LINKS = 40


def resolve(tree: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``tree/rel`` with symbolic links resolved as inside the tree (never leaving it).

    Every directory on the returned path is a real directory of the tree (checked with lstat);
    the last component may be missing, and is a link only with ``follow_last=False``."""
    parts = deque(p for p in rel.split("/") if p not in ("", "."))
    done: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if done:
                done.pop()
            continue
        path = tree.joinpath(*done, part)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > MAX_LINKS:
                raise ValidationError(f"cannot prepare the tree: /{rel} has too many levels of "
                                      "symbolic links")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            raise ValidationError(f"cannot prepare the tree: /{'/'.join(done + [part])} is not "
                                  "a directory")
        done.append(part)
    return tree.joinpath(*done)


def make_dir(tree: Path, rel: str, mode: int = 0o755) -> Path:
    """The directory ``rel`` of the tree (made, with its parents, where missing)."""
    path = resolve(tree, rel)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise ValidationError(f"cannot prepare the tree: /{rel} is not a directory",
                              hint="import it with --as-is, or fix the tree")
    return path


def _entry(tree: Path, rel: str) -> Path:
    """``rel``'s last component in its (resolved, existing) directory: never followed."""
    parent, _, name = rel.rstrip("/").rpartition("/")
    return make_dir(tree, parent) / name if parent else tree / name


def remove(tree: Path, rel: str) -> None:
    """Remove ``rel`` (a link itself, never what it points to; a directory with its contents)."""
    parent, _, name = rel.rstrip("/").rpartition("/")
    directory = resolve(tree, parent)
    if not directory.is_dir() or directory.is_symlink():
        return
    _remove_entry(directory / name)


def _remove_entry(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # never follows links (it uses openat/unlinkat below path)
    else:
        path.unlink()


def remove_glob(tree: Path, rel_dir: str, pattern: str) -> None:
    """Remove the entries of directory ``rel_dir`` that match ``pattern`` (fnmatch)."""
    directory = resolve(tree, rel_dir)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    for name in sorted(os.listdir(directory)):
        if fnmatch.fnmatchcase(name, pattern):
            _remove_entry(directory / name)


def write_file(tree: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    """Write ``rel`` as a new regular file (a link or other file there is replaced first)."""
    path = _entry(tree, rel)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_nlink > 1:
            _remove_entry(path)  # a hard link would write into another file of the tree
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        os.fchmod(f.fileno(), mode)
    return path


def symlink(tree: Path, rel: str, target: str) -> None:
    """Make ``rel`` a symbolic link to ``target`` (whatever was there is removed)."""
    path = _entry(tree, rel)
    _remove_entry(path)
    path.symlink_to(target)


def exists(tree: Path, rel: str) -> bool:
    """Whether ``rel`` exists in the tree (links resolved inside it)."""
    try:
        return os.path.lexists(resolve(tree, rel))
    except ValidationError:
        return False
