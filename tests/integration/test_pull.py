"""`vmm image pull` through the CLI against a local HTTP server on 127.0.0.1 serving a fake
bucket: a listing, an ELF kernel-shaped file and a squashfs built here with mksquashfs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_image_import import cat, guest_tree
from tests.unit.test_kernels import fake_elf
from tests.unit.test_pull import listing, server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
PRE = "/bucket/firecracker-ci/v1.11/x86_64/"


@pytest.fixture
def bucket(server: tuple[str, dict[str, bytes]], tmp_path: Path) -> tuple[str, dict[str, bytes]]:  # noqa: F811
    base, files = server
    key = "firecracker-ci/v1.11/x86_64/"
    files["/bucket/?prefix=firecracker-ci%2Fv1.11%2Fx86_64%2Fvmlinux-6.1&list-type=2"] = listing(
        key + "vmlinux-6.1.5", key + "vmlinux-6.1.128", key + "vmlinux-6.1.128.config"
    )
    files[PRE + "vmlinux-6.1.128"] = fake_elf(tmp_path / "vmlinux").read_bytes()
    tree = guest_tree(tmp_path / "tree", marker="from-the-bucket")
    sq = tmp_path / "ubuntu.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(sq), "-quiet", "-noappend", "-all-root"],
                   check=True, capture_output=True)
    files[PRE + "ubuntu-24.04.squashfs"] = sq.read_bytes()
    return base, files


def test_pull_registers_default_kernel_and_image(vmm_env: VmmEnv, bucket: tuple[str, dict[str, bytes]]) -> None:
    base, files = bucket
    r = vmm_env.run("image", "pull", "--base-url", base)
    assert r.returncode == 0, r.stderr
    assert "vmlinux-6.1.128:" in r.stderr and "/s)" in r.stderr  # progress: bytes and rate
    kmeta = json.loads((vmm_env.data_dir / "images" / "kernels" / "default.json").read_text())
    assert kmeta["source"] == f"{base}/firecracker-ci/v1.11/x86_64/vmlinux-6.1.128"
    assert kmeta["download_sha256"] == hashlib.sha256(files[PRE + "vmlinux-6.1.128"]).hexdigest()
    image = vmm_env.data_dir / "images" / "default.ext4"
    imeta = json.loads((vmm_env.data_dir / "images" / "default.json").read_text())
    assert imeta["source"].endswith("/ubuntu-24.04.squashfs")
    assert imeta["download_sha256"] == hashlib.sha256(files[PRE + "ubuntu-24.04.squashfs"]).hexdigest()
    assert imeta["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert cat(image, "/etc/marker") == "from-the-bucket\n"
    leftovers = [p.name for d in (image.parent, image.parent / "kernels") for p in d.iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []

    # an existing default is not replaced without -f; --kernel-only touches only the kernel
    r = vmm_env.run("image", "pull", "--base-url", base)
    assert r.returncode == 1 and "already exists" in r.stderr and "-f" in r.stderr
    before = image.stat().st_mtime_ns
    r = vmm_env.run("image", "pull", "--kernel-only", "-f", "--base-url", base)
    assert r.returncode == 0, r.stderr
    assert image.stat().st_mtime_ns == before
    r = vmm_env.run("kernel", "list")
    assert "default" in r.stdout


def test_pull_rootfs_only_with_name(vmm_env: VmmEnv, bucket: tuple[str, dict[str, bytes]]) -> None:
    base, _ = bucket
    r = vmm_env.run("image", "pull", "--rootfs-only", "--name", "fc", "--base-url", base)
    assert r.returncode == 0, r.stderr
    assert (vmm_env.data_dir / "images" / "fc.ext4").is_file()
    assert not (vmm_env.data_dir / "images" / "kernels" / "fc").exists()


def test_pull_offline_is_one_clear_error(vmm_env: VmmEnv) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/bucket"
    r = vmm_env.run("image", "pull", "--base-url", base)
    assert r.returncode == 1
    assert f"\nerror: cannot reach {base}/?prefix=" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (vmm_env.data_dir / "images" / "default.ext4").exists()


def test_pull_missing_rootfs_registers_no_image(vmm_env: VmmEnv, bucket: tuple[str, dict[str, bytes]]) -> None:
    base, files = bucket
    del files[PRE + "ubuntu-24.04.squashfs"]
    r = vmm_env.run("image", "pull", "--rootfs-only", "--base-url", base)
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    assert [p.name for p in (vmm_env.data_dir / "images").iterdir() if p.is_file()] == []
    assert not (vmm_env.data_dir / "images" / "kernels" / "default").exists()
