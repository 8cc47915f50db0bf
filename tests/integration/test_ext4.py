"""Real ext4 images: sparse copy, grow, and files written with debugfs (no mounts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmm.guest import customize, ext4
from vmm.runner import Runner

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs is not installed"),
]


def make_image(tmp: Path, size_mb: int = 64) -> Path:
    tree = tmp / "tree"
    (tree / "usr/lib/systemd/system").mkdir(parents=True)
    (tree / "usr/lib/systemd/system/systemd-networkd.service").write_text("[Unit]\n")
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("template\n")
    os.symlink("usr/lib", tree / "lib")  # merged /usr, as in Debian bookworm
    os.symlink("../run/systemd/resolve/stub-resolv.conf", tree / "etc/resolv.conf")
    img = tmp / "base.ext4"
    with img.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), str(img)], check=True)
    return img


def debugfs(img: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(img)], capture_output=True, text=True
    ).stdout


def fsck_clean(img: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_copy_is_sparse_and_grow_resizes(tmp_path: Path) -> None:
    runner = Runner()
    img = make_image(tmp_path)
    copy = tmp_path / "vm.ext4"
    ext4.copy_sparse(runner, img, copy)
    assert copy.stat().st_blocks * 512 < copy.stat().st_size // 2  # holes kept
    ext4.grow(runner, copy, 256)
    assert copy.stat().st_size == 256 * 1024 * 1024
    assert "Block count:" in debugfs(copy, "stats")
    blocks = int(
        next(
            line for line in debugfs(copy, "stats").splitlines() if line.startswith("Block count:")
        ).split()[-1]
    )
    block_size = int(
        next(
            line for line in debugfs(copy, "stats").splitlines() if line.startswith("Block size:")
        ).split()[-1]
    )
    assert blocks * block_size == 256 * 1024 * 1024
    fsck_clean(copy)
    with pytest.raises(Exception, match="smaller"):
        ext4.grow(runner, copy, 128)


def test_guest_files_written_without_mounting(tmp_path: Path) -> None:
    runner = Runner()
    img = make_image(tmp_path)
    files = customize.first_boot_files(
        hostname="dev", ssh_public_key="ssh-ed25519 AAAAC3 me@host", dns=["9.9.9.9"]
    )
    ext4.write_files(runner, img, files)
    ext4.set_dir_mode(runner, img, "/root/.ssh", 0o700)
    network = customize.every_boot_files(
        mac="06:00:AC:10:00:02",
        ip="172.16.0.2",
        subnet="172.16.0.0/16",
        gateway="172.16.0.1",
        dns=["9.9.9.9"],
        networkd_present=True,
    )
    # twice: rewriting existing files must work (every start rewrites the network file)
    for _ in range(2):
        ext4.write_files(runner, img, network)
    assert ext4.read_file(runner, img, "/etc/hostname") == "dev\n"
    assert "nameserver 9.9.9.9" in (ext4.read_file(runner, img, "/etc/resolv.conf") or "")
    assert (
        ext4.read_file(runner, img, "/root/.ssh/authorized_keys") == "ssh-ed25519 AAAAC3 me@host\n"
    )
    stat = debugfs(img, "stat /root/.ssh/authorized_keys")
    assert "Mode:  0600" in stat and "User:     0" in stat
    assert "Mode:  0700" in debugfs(img, "stat /root/.ssh")
    assert "Address=172.16.0.2/16" in (ext4.read_file(runner, img, customize.NETWORK_FILE) or "")
    link = debugfs(img, "stat " + customize.NETWORKD_WANTS)
    assert "Type: symlink" in link
    assert ext4.path_exists(runner, img, "/usr/lib/systemd/system/systemd-networkd.service")
    assert not ext4.path_exists(runner, img, "/nonexistent")
    fsck_clean(img)


def test_write_failure_is_reported(tmp_path: Path) -> None:
    runner = Runner()
    img = make_image(tmp_path, size_mb=8)
    big = ext4.GuestFile("/big", b"x" * (16 * 1024 * 1024))
    with pytest.raises(Exception, match="could not write"):
        ext4.write_files(runner, img, [big])


def test_is_ext4(tmp_path: Path) -> None:
    img = make_image(tmp_path)
    assert ext4.is_ext4(img)
    (tmp_path / "x").write_bytes(b"\0" * 4096)
    assert not ext4.is_ext4(tmp_path / "x")
