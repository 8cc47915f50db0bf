"""Property-based tests: rootfs tarballs, OCI layers and image layouts (``vmm.guest.sources``).

Hostile archives — absolute and ``..`` names, links out of the tree, whiteouts of ``..`` or of
the root, hard links to symbolic links, corrupt compression — must be refused with a
``VmmError`` and must never touch anything outside the target directory.

Safety: ``extract_tar`` runs as root here. Every deletion it makes goes through
``archives._remove``, which these tests replace with a guard that refuses (and fails the test
on) any path not strictly inside the target, and every hard link goes through ``os.link``,
guarded the same way. Link targets point into a sandbox, never at real host files.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmm.errors import ValidationError, VmmError
from vmm.guest import archives, oci

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 200),
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
XFUZZ = settings(FUZZ, report_multiple_bugs=False)  # an xfail expects one exception, not a group


class Escaped(AssertionError):
    """extract_tar tried to act outside its target directory (stopped before it did)."""


def _inside(path: str | os.PathLike[str], root: Path, *, resolve: bool = False) -> bool:
    """Strictly inside ``root``: lexically (no ``..``: lstat would resolve what precedes it),
    through every directory on the way, and through the path itself when ``resolve``."""
    text = os.fspath(path)
    if ".." in Path(text).parts:
        return False
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(os.path.abspath(text)))
    if not (parent == real_root or parent.startswith(real_root + os.sep)):
        return False
    full = os.path.realpath(text) if resolve else os.path.join(parent, os.path.basename(text))
    return full.startswith(real_root + os.sep)


@contextlib.contextmanager
def confined(dest: Path) -> Iterator[None]:
    """Deletions and hard links only strictly inside ``dest``, for the duration."""
    remove, link = archives._remove, os.link

    def guarded_remove(path: Path) -> None:
        if not _inside(path, dest):
            raise Escaped(f"extract_tar tried to remove {path} (target {dest})")
        remove(path)

    def guarded_link(src: Any, dst: Any, **kwargs: Any) -> None:
        # On Linux os.link() links a symbolic link itself (link(2)) unless given a dir_fd
        follows = bool(kwargs.get("follow_symlinks")) and ("src_dir_fd" in kwargs or "dst_dir_fd" in kwargs)
        if not (_inside(src, dest, resolve=follows) and _inside(dst, dest)):
            raise Escaped(f"extract_tar tried to link {src} -> {dst} (target {dest})")
        link(src, dst, **kwargs)

    archives._remove = guarded_remove  # type: ignore[assignment]
    os.link = guarded_link  # type: ignore[assignment]
    try:
        yield
    finally:
        archives._remove = remove  # type: ignore[assignment]
        os.link = link


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """``base/outside/secret`` (what must stay untouched) and an empty ``base/dest``."""
    base = Path(tempfile.mkdtemp(prefix="vmm-fuzz-tar-"))
    try:
        (base / "outside").mkdir()
        (base / "outside" / "secret").write_bytes(b"secret")
        (base / "dest").mkdir()
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)  # never follows symbolic links


def _snapshot(base: Path) -> tuple[list[str], bytes, int]:
    secret = base / "outside" / "secret"
    return sorted(os.listdir(base)), secret.read_bytes(), os.stat(secret).st_nlink


def _check_confined(base: Path, before: tuple[list[str], bytes, int]) -> None:
    """Nothing outside ``dest`` changed, and nothing in it is a hard link to the outside."""
    assert _snapshot(base) == before
    secret = os.stat(base / "outside" / "secret")
    for dirpath, dirnames, filenames in os.walk(base / "dest"):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            assert (st_.st_dev, st_.st_ino) != (secret.st_dev, secret.st_ino), name


# -- archives --------------------------------------------------------------------------

COMPONENTS = ["a", "b", "etc", ".", "..", "", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh...", "c\\d", "x" * 120]
names = st.tuples(
    st.sampled_from(["", "", "./", "/"]),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map("/".join),
).map("".join)
OUTSIDE = "{base}/outside/secret"  # filled in per example: an absolute link into the sandbox
link_targets = names | st.sampled_from([OUTSIDE, "{base}/outside", "../outside/secret", "a", "/"])
KINDS = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
}
members = st.tuples(st.sampled_from(sorted(KINDS)), names, link_targets, st.binary(max_size=8))


def build_tar(entries: list[tuple[str, str, str, bytes]], base: Path, *, compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type = KINDS[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("symlink", "hardlink"):
                info.linkname = link.format(base=base)
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    raw = buf.getvalue()
    return {
        "": lambda d: d,
        "gz": gzip.compress,
        "xz": lzma.compress,
        "bz2": bz2.compress,
    }[compression](raw)


def run_extract(data: bytes, base: Path, *, layer: bool) -> None:
    archive = base / "archive.tar"
    archive.write_bytes(data)
    before = _snapshot(base)
    dest = base / "dest"
    with confined(dest), contextlib.suppress(VmmError):
        archives.extract_tar(archive, dest, layer=layer)
    _check_confined(base, before)


# Plain files, directories and in-tree symbolic links with ordinary names: what every real
# rootfs tarball holds. Runs today (the hostile cases are the xfails below).
plain_members = st.tuples(
    st.sampled_from(["file", "dir", "symlink"]),
    st.tuples(st.sampled_from(["", "./"]), st.lists(st.sampled_from(["a", "b", "etc"]), min_size=1, max_size=3)
              .map("/".join)).map("".join),
    st.sampled_from(["a", "b", "etc/a", "../a", "/etc", OUTSIDE]),
    st.binary(max_size=8),
)


@FUZZ
@given(st.lists(plain_members, max_size=8), st.booleans())
def test_extract_plain_archives(entries: list[tuple[str, str, str, bytes]], layer: bool) -> None:
    with sandbox() as base:
        run_extract(build_tar(entries, base), base, layer=layer)


@FUZZ
@given(st.lists(members, max_size=6))
def test_check_members(entries: list[tuple[str, str, str, bytes]]) -> None:
    """What check_members lets through names a path inside the tree (it is pure)."""
    infos = []
    for kind, name, link, _data in entries:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = KINDS[kind], link.format(base="/sandbox")
        infos.append(info)
    try:
        archives.check_members(infos)
    except ValidationError:
        return
    root = "/root"
    for info in infos:
        rel = os.path.normpath(os.path.join(root, info.name.replace("\\", "/")))
        assert rel.startswith(root + "/") or rel == root, info.name
        if info.islnk():
            target = os.path.normpath(os.path.join(root, info.linkname.replace("\\", "/")))
            assert target.startswith(root + "/") or target == root, info.linkname
        elif info.issym() and not info.linkname.startswith("/"):
            parent = os.path.dirname(rel) if rel != root else root  # "." is the root itself
            target = os.path.normpath(os.path.join(parent, info.linkname))
            assert target.startswith(root + "/") or target == root, (info.name, info.linkname)


def _xfail(reason: str, *raises: type[BaseException]) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=raises or None, reason=reason + " (src/vmm/guest/archives.py)")


TOP_OPAQUE = [("file", "./.wh..wh..opq", "", b"")]


@pytest.mark.parametrize("name", [".wh..wh..opq", "./.wh..wh..opq"])
def test_top_level_opaque_whiteout(name: str) -> None:
    with sandbox() as base:
        run_extract(build_tar([("file", name, "", b"")], base), base, layer=True)


@pytest.mark.parametrize("name", [".wh...", "a/.wh...", ".wh.."])
def test_whiteout_of_dot_dot(name: str) -> None:
    with sandbox() as base:
        run_extract(build_tar([("dir", "a", "", b""), ("file", name, "", b"")], base), base, layer=True)


def test_hardlink_to_a_symlink_outside() -> None:
    """s -> <outside file>, h => s: h must be a link to the symbolic link, never to the file it
    names (that would put a host file, /etc/shadow say, into the image). os.link() on Linux
    calls link(2), which does not follow symbolic links; this keeps it so."""
    with sandbox() as base:
        entries = [("symlink", "s", OUTSIDE, b""), ("hardlink", "h", "s", b"")]
        archive = base / "archive.tar"
        archive.write_bytes(build_tar(entries, base))
        before = _snapshot(base)
        archives.extract_tar(archive, base / "dest")  # no guard: such a link is harmless here
        _check_confined(base, before)
        assert os.path.islink(base / "dest" / "h")


@pytest.mark.parametrize(
    "entries",
    [
        [("hardlink", "h", "missing", b"")],
        [("dir", "d", "", b""), ("hardlink", "h", "d", b"")],
        [("file", "f", "", b"x"), ("hardlink", "f", "f", b"")],
    ],
    ids=["missing", "directory", "itself"],
)
def test_bad_hardlinks(entries: list[tuple[str, str, str, bytes]]) -> None:
    with sandbox() as base:
        run_extract(build_tar(entries, base), base, layer=False)


@pytest.mark.parametrize("compression", ["gz", "xz"])  # bz2: tarfile reports a ReadError
def test_truncated_compressed_archive(compression: str) -> None:
    with sandbox() as base:
        data = build_tar([("file", "a", "", os.urandom(4096))], base, compression=compression)
        run_extract(data[: len(data) * 2 // 3], base, layer=False)


@XFUZZ
@given(st.lists(members, max_size=6), st.booleans(), st.sampled_from(["", "gz", "xz", "bz2"]),
       st.integers(0, 100))
@example(TOP_OPAQUE, True, "", 100)
def test_extract_any_archive(
    entries: list[tuple[str, str, str, bytes]], layer: bool, compression: str, keep_percent: int
) -> None:
    with sandbox() as base:
        data = build_tar(entries, base, compression=compression)
        run_extract(data[: len(data) * keep_percent // 100], base, layer=layer)


# -- OCI layouts and docker-archives ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.sampled_from(["sha256:" + "0" * 64, "linux", "amd64", "latest"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["manifests", "layers", "digest", "platform", "annotations", "Layers",
                         "org.opencontainers.image.ref.name", "os", "architecture"]) | st.text(max_size=6),
        inner, max_size=4),
    max_leaves=10,
)


def _layout(base: Path, index: Any, manifest: Any) -> Path:
    layout = base / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "blobs" / "sha256" / ("0" * 64)).write_text(json.dumps(manifest))
    (layout / "manifest.json").write_text(json.dumps(index))
    return layout


GOOD_INDEX = {"manifests": [{"digest": "sha256:" + "0" * 64}]}


@XFUZZ
@given(json_values, json_values)
@example([], {})
@example({"manifests": ["x"]}, {})
@example({"manifests": [{}]}, {})
@example(GOOD_INDEX, {"layers": [5]})
@example([5], {})
@example([{"Layers": [5]}], {})
def test_oci_and_docker_manifests(index: Any, manifest: Any) -> None:
    with sandbox() as base:
        layout = _layout(base, index, manifest)
        for call in (lambda: oci.oci_layers(layout, None), lambda: oci.oci_layers(layout, "latest")):
            try:
                layers = call()
            except VmmError:
                continue
            assert all(p.is_file() and layout in p.parents for p in layers)
        with contextlib.suppress(VmmError), confined(base / "dest"):
            oci.apply_docker_archive(layout, base / "dest")


def test_oci_manifests_that_are_fine() -> None:
    with sandbox() as base:
        layout = _layout(base, GOOD_INDEX, {"layers": []})
        assert oci.oci_layers(layout, None) == []
        assert stat.S_ISDIR(os.stat(layout).st_mode)
