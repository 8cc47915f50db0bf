"""Image sources: what a SOURCE string names, and the archive member checks."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vmm.errors import ValidationError
from vmm.guest import archives, oci, sources

pytestmark = pytest.mark.unit


def test_parse_source_kinds(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "r.tar.gz").write_bytes(b"\x1f\x8b\x08" + b"\0" * 100)
    (tmp_path / "r.squashfs").write_bytes(b"hsqs" + b"\0" * 100)
    (tmp_path / "blob").write_bytes(b"\0" * 4096)
    assert sources.parse_source(str(tmp_path / "d")).kind == "dir"
    assert sources.parse_source(str(tmp_path / "r.tar.gz")).kind == "tar"
    assert sources.parse_source(str(tmp_path / "r.squashfs")).kind == "squashfs"
    assert sources.parse_source(f"oci:{tmp_path / 'd'}") == sources.Source("oci", str(tmp_path / "d"))
    assert sources.parse_source(f"oci:{tmp_path / 'd'}:v1") == sources.Source("oci", str(tmp_path / "d"), "v1")
    assert sources.parse_source(f"docker-archive:{tmp_path / 'blob'}").kind == "docker-archive"
    assert sources.parse_source("debian:bookworm") == sources.Source("docker", "debian:bookworm")
    assert sources.parse_source("docker://library/debian") == sources.Source("docker", "library/debian")
    for text, message in [
        ("http://example.com/rootfs.tar", "unknown image source scheme 'http'"),
        ("s3:bucket/key", "unknown image source scheme 's3'"),
        (f"{tmp_path}/missing.tar", "does not exist"),
        (f"oci:{tmp_path}/missing", "does not exist"),
        (f"oci:{tmp_path / 'blob'}", "is not a directory"),
        (str(tmp_path / "blob"), "is not an ext4 image, a tarball or a squashfs"),
        ("", "no image source"),
    ]:
        with pytest.raises(ValidationError, match=message):
            sources.parse_source(text)


def member(name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


@pytest.mark.parametrize(
    ("m", "message"),
    [
        (member("/etc/passwd"), "absolute path"),
        (member("a/../../x"), "contains '..'"),
        (member("x", kind=tarfile.LNKTYPE, link="../outside"), "contains '..'"),
        (member("x", kind=tarfile.LNKTYPE, link="/etc/shadow"), "absolute path"),
        (member("a/l", kind=tarfile.SYMTYPE, link="../../etc"), "outside the tree"),
    ],
)
def test_members_that_would_escape(m: tarfile.TarInfo, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        archives.check_members([member("ok"), m])


def test_members_that_are_fine() -> None:
    archives.check_members([
        member("./etc/hosts"),
        member("etc/localtime", kind=tarfile.SYMTYPE, link="/usr/share/zoneinfo/UTC"),  # rootfs-absolute
        member("usr/lib/x", kind=tarfile.SYMTYPE, link="../../bin/y"),
        member("bin/z", kind=tarfile.LNKTYPE, link="bin/y"),
    ])


def _tar(path: Path, entries: list[tuple[str, bytes | None, str | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_no_writing_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = _tar(tmp_path / "bad.tar", [("etc", None, str(outside)), ("etc/passwd", b"pwned", None)])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValidationError, match="through the symbolic link"):
        archives.extract_tar(bad, dest)
    assert list(outside.iterdir()) == []


def test_layers_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    l1 = _tar(tmp_path / "l1.tar", [
        ("etc", None, None), ("etc/a", b"1", None), ("etc/b", b"1", None),
        ("opt", None, None), ("opt/old", b"1", None), ("bin", None, None), ("bin/sh", b"sh", None),
    ])
    l2 = _tar(tmp_path / "l2.tar", [
        ("etc/.wh.a", b"", None), ("etc/c", b"2", None), ("opt/.wh..wh..opq", b"", None),
        ("opt/new", b"2", None), ("bin/sh", b"sh2", None),
    ])
    oci.apply_layers([l1, l2], dest)
    assert sorted(p.name for p in (dest / "etc").iterdir()) == ["b", "c"]
    assert sorted(p.name for p in (dest / "opt").iterdir()) == ["new"]
    assert (dest / "bin" / "sh").read_bytes() == b"sh2"


def test_sizes() -> None:
    assert sources.default_size(0) == 256 * sources.MiB
    assert sources.default_size(1000 * sources.MiB) == 1378 * sources.MiB
