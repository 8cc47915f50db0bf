"""`vmm image import` from every source, each built here with the real tools."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import VmmEnv

pytestmark = pytest.mark.integration


def guest_tree(root: Path, marker: str = "tree") -> Path:
    """The parts vmm checks for (systemd, sshd) and a marker file."""
    for rel in ("lib/systemd/systemd", "usr/sbin/sshd"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("#!/bin/true\n")
        (root / rel).chmod(0o755)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "marker").write_text(marker + "\n")
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    return root


def cat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True).stdout


def imported(env: VmmEnv, source: str, name: str, *extra: str) -> Path:
    env.run("image", "import", source, "--name", name, *extra, check=True)
    image = env.data_dir / "images" / f"{name}.ext4"
    meta = json.loads((env.data_dir / "images" / f"{name}.json").read_text())
    assert meta["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert not [p for p in (env.data_dir / "images").iterdir() if p.name.startswith(".")]  # no staging left
    return image


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


LAYER1 = {"lib": None, "lib/systemd": None, "lib/systemd/systemd": b"x", "usr": None, "usr/sbin": None,
          "usr/sbin/sshd": b"x", "etc": None, "etc/marker": b"layer1\n", "etc/gone": b"1", "var": None,
          "var/cache": None, "var/cache/old": b"1"}
LAYER2 = {"etc/.wh.gone": b"", "etc/marker": b"layer2\n", "var/cache/.wh..wh..opq": b"", "var/cache/new": b"2"}


def oci_layout(layout: Path) -> Path:
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers = [
        {**blob(layout, gzip.compress(layer_tar(LAYER1))), "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"},
        {**blob(layout, layer_tar(LAYER2)), "mediaType": "application/vnd.oci.image.layer.v1.tar"},
    ]
    config = blob(layout, b'{"architecture": "amd64", "os": "linux"}')
    manifest = json.dumps({"schemaVersion": 2, "config": config, "layers": layers}).encode()
    desc = {**blob(layout, manifest), "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return layout


def test_directory_and_tarballs(vmm_env: VmmEnv, tmp_path: Path) -> None:
    tree = guest_tree(tmp_path / "tree")
    image = imported(vmm_env, str(tree), "fromdir")
    assert cat(image, "/etc/marker") == "tree\n"
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        tb = tmp_path / f"rootfs{suffix}"
        with tarfile.open(tb, mode) as tf:
            tf.add(tree, arcname=".")
        assert cat(imported(vmm_env, str(tb), f"t{len(suffix)}"), "/etc/marker") == "tree\n"
    plain = tmp_path / "rootfs.tar"
    subprocess.run(["zstd", "-q", "-f", str(plain), "-o", str(tmp_path / "rootfs.tar.zst")], check=True)
    image = imported(vmm_env, str(tmp_path / "rootfs.tar.zst"), "zst", "--size", "100")
    assert cat(image, "/etc/marker") == "tree\n" and image.stat().st_size == 100 * 1024 * 1024
    listing = vmm_env.run("image", "list", check=True).stdout
    assert "fromdir" in listing and "zst" in listing


def test_squashfs(vmm_env: VmmEnv, tmp_path: Path) -> None:
    tree = guest_tree(tmp_path / "tree", "squash")
    sq = tmp_path / "rootfs.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(sq), "-quiet", "-noappend"], check=True, capture_output=True)
    image = imported(vmm_env, str(sq), "sq")
    assert cat(image, "/etc/marker") == "squash\n"


def test_oci_layout_archive_and_docker_archive(vmm_env: VmmEnv, tmp_path: Path) -> None:
    layout = oci_layout(tmp_path / "layout")
    for source in (f"oci:{layout}", f"oci:{layout}:v1"):
        image = imported(vmm_env, source, "oci", "-f")
        assert cat(image, "/etc/marker") == "layer2\n"
        assert "File not found" in subprocess.run(
            ["debugfs", "-R", "stat /etc/gone", str(image)], capture_output=True, text=True).stderr
        assert cat(image, "/var/cache/new") == "2" and cat(image, "/var/cache/old") == ""
    missing = vmm_env.run("image", "import", f"oci:{layout}:nope", "--name", "x")
    assert missing.returncode == 1 and "no image named 'nope'" in missing.stderr
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
    assert cat(imported(vmm_env, f"oci-archive:{archive}", "ociar"), "/etc/marker") == "layer2\n"
    # docker save's format: manifest.json naming the layer tars in order
    d = tmp_path / "docker"
    (d / "l1").mkdir(parents=True)
    (d / "l2").mkdir()
    (d / "l1" / "layer.tar").write_bytes(layer_tar(LAYER1))
    (d / "l2" / "layer.tar").write_bytes(layer_tar(LAYER2))
    (d / "manifest.json").write_text(json.dumps([{"Config": "c.json", "RepoTags": ["t:1"],
                                                  "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
    dar = tmp_path / "saved.tar"
    with tarfile.open(dar, "w") as tf:
        tf.add(d, arcname=".")
    assert cat(imported(vmm_env, f"docker-archive:{dar}", "dockerar"), "/etc/marker") == "layer2\n"


def test_bad_sources(vmm_env: VmmEnv, tmp_path: Path) -> None:
    def fails(source: str, message: str, *extra: str) -> None:
        p = vmm_env.run("image", "import", source, "--name", "bad", *extra)
        assert p.returncode == 1 and message in p.stderr.splitlines()[0], (source, p.stderr)

    fails("ftp://host/rootfs.tar", "unknown image source scheme")
    fails(str(tmp_path / "nope.tar.gz"), "does not exist")
    fails("debian:bookworm", "Docker")  # no daemon on these machines (or docker not installed)
    # a tarball with an absolute member, a '..' member, a link leaving the tree
    tree = guest_tree(tmp_path / "tree")
    for label, member, link in (("abs", "/etc/evil", None), ("dots", "../evil", None), ("link", "etc/l", "../../../etc")):
        tb = tmp_path / f"{label}.tar"
        with tarfile.open(tb, "w") as tf:
            tf.add(tree, arcname=".")
            info = tarfile.TarInfo(member)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = 4
                tf.addfile(info, io.BytesIO(b"evil"))
        fails(str(tb), "refusing to extract")
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    # too large for --size
    (tree / "big").write_bytes(b"\1" * (40 * 1024 * 1024))
    fails(str(tree), "--size 20 MB is too small", "--size", "20")
    (tree / "big").unlink()
    # not a vmm guest: no systemd / sshd
    bare = tmp_path / "bare"
    (bare / "etc").mkdir(parents=True)
    fails(str(bare), "lacks systemd and openssh-server")
    vmm_env.run("image", "import", str(bare), "--name", "bare", "--as-is", check=True)
    assert not (vmm_env.data_dir / "images" / "bad.ext4").exists()
    assert not [p for p in (vmm_env.data_dir / "images").iterdir() if p.name.startswith(".")]


def test_delete_refused_while_used(vmm_env: VmmEnv, tmp_path: Path) -> None:
    from tests.conftest import register_artifacts

    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)
    vmm_env.run("create", "v1", check=True)
    table = vmm_env.run("image", "list", check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "SIZE", "ON"] and table[1].split()[-1] == "1"
    refused = vmm_env.run("image", "delete", "default")
    assert refused.returncode == 1 and "used by 1 VM(s): v1" in refused.stderr
    vmm_env.run("image", "delete", "-f", "default", check=True)
    assert not (vmm_env.data_dir / "images" / "default.ext4").exists()
    assert not (vmm_env.data_dir / "images" / "default.json").exists()
    gone = vmm_env.run("image", "rm", "default")
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert shutil.which("mkfs.ext4")
