"""Real ext4 images: sparse copy, grow, and files written with debugfs (no mounts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmm.guest import customize, ext4
from vmm.runner import Result, Runner

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


class CountingRunner(Runner):
    """A real runner that counts the debugfs sessions."""

    def __init__(self) -> None:
        self.debugfs = 0

    def run(self, argv, **kwargs):  # type: ignore[no-untyped-def]
        self.debugfs += "debugfs" in argv
        result: Result = super().run(argv, **kwargs)
        return result


def test_existing_looks_up_many_paths_in_one_session(tmp_path: Path) -> None:
    runner = CountingRunner()
    img = make_image(tmp_path)
    paths = [
        "/etc",
        "/etc/hostname",
        "/lib/systemd/system/systemd-networkd.service",  # through the /lib -> usr/lib link
        "/usr/lib/systemd/system/systemd-networkd.service",
        "/etc/resolv.conf",  # a dangling symlink is there all the same
        "/nonexistent",
        "/etc/nonexistent/deeper",
        "/etc",  # asked twice, answered once
    ]
    found = ext4.existing(runner, img, paths)
    assert runner.debugfs == 1
    assert found == set(paths) - {"/nonexistent", "/etc/nonexistent/deeper"}
    assert found.checked == set(paths)
    assert ext4.existing(runner, img, []) == set() and runner.debugfs == 1  # nothing to ask
    with pytest.raises(Exception, match="invalid guest path"):
        ext4.existing(runner, img, ["/etc", "relative"])


@pytest.mark.parametrize("networkd", [True, False])
def test_every_boot_write_takes_two_sessions(tmp_path: Path, networkd: bool) -> None:
    """What a start does: one read-only session looks everything up, one writes."""
    runner = CountingRunner()
    img = make_image(tmp_path)
    if not networkd:
        subprocess.run(
            ["debugfs", "-w", "-R", "rm /usr/lib/systemd/system/systemd-networkd.service", str(img)],
            check=True, capture_output=True,
        )  # fmt: skip
    for start in range(3):  # the first start makes the directories, later ones rewrite
        runner.debugfs = 0
        found = ext4.existing(runner, img, customize.every_boot_probes())
        assert customize.networkd_present(found) is networkd
        files = customize.every_boot_files(
            mac="06:00:AC:10:00:02", ip=f"172.16.0.{2 + start}", subnet="172.16.0.0/16",
            gateway="172.16.0.1", dns=["9.9.9.9"], networkd_present=customize.networkd_present(found),
        )  # fmt: skip
        ext4.write_files(runner, img, files, known=found)
        assert runner.debugfs == 2
        text = ext4.read_file(runner, img, customize.NETWORK_FILE) or ""
        assert f"Address=172.16.0.{2 + start}/16" in text
        fsck_clean(img)
    assert ext4.path_exists(runner, img, customize.NETWORKD_WANTS) is networkd


def test_write_files_looks_up_what_known_did_not_check(tmp_path: Path) -> None:
    """A ``known`` that never asked about a directory is no proof that it is absent: such
    paths are looked up (a mkdir over an existing directory would corrupt the filesystem)."""
    runner = CountingRunner()
    img = make_image(tmp_path)
    known = ext4.existing(runner, img, ["/usr"])  # nothing about /etc or /etc/systemd
    runner.debugfs = 0
    ext4.write_files(runner, img, [ext4.GuestFile("/etc/systemd/x.conf", b"x\n")], known=known)
    assert runner.debugfs == 2
    ext4.write_files(runner, img, [ext4.GuestFile("/etc/systemd/y.conf", b"y\n")], known=ext4.Existing())
    assert ext4.read_file(runner, img, "/etc/systemd/x.conf") == "x\n"
    assert ext4.read_file(runner, img, "/etc/systemd/y.conf") == "y\n"
    fsck_clean(img)


def test_write_failure_is_reported(tmp_path: Path) -> None:
    runner = Runner()
    img = make_image(tmp_path, size_mb=8)
    big = ext4.GuestFile("/big", b"x" * (16 * 1024 * 1024))
    ours = f"vmm-debugfs-{os.getpid()}-*"  # the files debugfs reads: gone, failure or not
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    with pytest.raises(Exception, match="could not write"):
        ext4.write_files(runner, img, [big])
    assert list(tmp.glob(ours)) == []
    other = tmp_path / "other"
    other.mkdir()
    ext4.write_files(runner, make_image(other, size_mb=8), [ext4.GuestFile("/small", b"s")])
    assert list(tmp.glob(ours)) == []


def test_is_ext4(tmp_path: Path) -> None:
    img = make_image(tmp_path)
    assert ext4.is_ext4(img)
    (tmp_path / "x").write_bytes(b"\0" * 4096)
    assert not ext4.is_ext4(tmp_path / "x")
