"""`vmm image import` prepares a Debian tree without systemd/sshd (apt in vmm's sandbox), as
`vmm image build --debootstrap` does; other trees are refused with a clear error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv

pytestmark = pytest.mark.integration

CACHE = Path("/var/cache/vmm-test/prepare-src")
MIRROR = "http://deb.debian.org/debian"


def minbase_tree(dest: Path) -> Path:
    """A copy of a cached `debootstrap --variant=minbase bookworm` tree (no systemd, no sshd)."""
    cached = CACHE / "bookworm-minbase"
    if not cached.is_dir():
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is not installed")
        CACHE.mkdir(parents=True, exist_ok=True)
        work = CACHE / ".bookworm-minbase.tmp"
        shutil.rmtree(work, ignore_errors=True)
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(work), MIRROR],
            capture_output=True, text=True, timeout=900,
        )
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            pytest.skip(f"debootstrap failed (no mirror?): {done.stdout[-300:]}")
        work.rename(cached)
    dest.mkdir()
    subprocess.run(["cp", "-a", f"{cached}/.", str(dest)], check=True)
    return dest


def no_leftovers(env: VmmEnv) -> None:
    mounts = Path("/proc/self/mounts").read_text()
    assert str(env.data_dir) not in mounts
    assert not [p for p in (env.data_dir / "images").iterdir() if p.name.startswith(".")]


def stat_ok(image: Path, path: str) -> bool:
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True)
    return "Inode:" in out.stdout


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True).stdout


def test_debian_tree_is_prepared(vmm_env: VmmEnv, tmp_path: Path) -> None:
    tree = minbase_tree(tmp_path / "tree")
    assert not (tree / "usr/sbin/sshd").exists()
    tarball = tmp_path / "bookworm.tar.gz"
    subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "-czf", str(tarball), "."], check=True)
    shutil.rmtree(tree)
    done = vmm_env.run("image", "import", str(tarball), "--name", "prepped")
    assert done.returncode == 0, done.stderr
    assert "preparing it for vmm" in done.stderr and "installing" in done.stderr
    image = vmm_env.data_dir / "images" / "prepped.ext4"
    assert stat_ok(image, "/usr/lib/systemd/systemd") or stat_ok(image, "/lib/systemd/systemd")
    for path in (
        "/usr/sbin/sshd",
        "/etc/systemd/system/vmm-ssh-hostkeys.service",
        "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
        "/etc/ssh/sshd_config.d/00-vmm.conf",
        "/usr/sbin/ip",
    ):
        assert stat_ok(image, path), path
    assert not stat_ok(image, "/usr/sbin/policy-rc.d")
    # The sandbox's id shift is undone: owners, setuid bits and file capabilities as packaged.
    sshd = debugfs(image, "stat /usr/sbin/sshd")
    assert "User:     0   Group:     0" in sshd, sshd
    assert "Mode:  04755" in debugfs(image, "stat /usr/bin/passwd")
    assert "Group:    42" in debugfs(image, "stat /usr/bin/chage")  # shadow, setgid
    assert "Mode:  02755" in debugfs(image, "stat /usr/bin/chage")
    assert "security.capability" in debugfs(image, "ea_list /usr/bin/ping")
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", str(image)], capture_output=True, text=True)
    assert "/dev/vda / ext4" in fstab.stdout
    no_leftovers(vmm_env)


def test_other_trees_are_refused(vmm_env: VmmEnv, tmp_path: Path) -> None:
    alpine = tmp_path / "alpine"
    (alpine / "etc").mkdir(parents=True)
    (alpine / "etc/os-release").write_text('NAME="Alpine Linux"\nID=alpine\n')
    (alpine / "sbin").mkdir()
    (alpine / "sbin/init").write_text("#!/bin/true\n")
    done = vmm_env.run("image", "import", str(alpine), "--name", "alp")
    assert done.returncode == 1
    assert "lacks systemd and openssh-server" in done.stderr and "--as-is" in done.stderr
    assert "Traceback" not in done.stderr
    vmm_env.run("image", "import", str(alpine), "--name", "alp", "--as-is", check=True)
    no_leftovers(vmm_env)


def test_unreachable_mirror_is_one_line(vmm_env: VmmEnv, tmp_path: Path) -> None:
    """An Ubuntu tree's mirrors cannot be reached here: one clear error, the directory unchanged."""
    tree = minbase_tree(tmp_path / "tree")
    release = (tree / "etc/os-release")
    if release.is_symlink():
        release.unlink()
    release.write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    (tree / "etc/apt/sources.list").write_text("deb http://127.0.0.1:9/ubuntu noble main\n")
    before = sorted(p.name for p in (tree / "etc").iterdir())
    done = vmm_env.run("image", "import", str(tree), "--name", "ubu", timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    # 127.0.0.1 is the host itself: vmm's proxy refuses it, the sandbox has no other network
    assert len(errors) == 1 and "in the imported tree failed" in errors[0], done.stderr
    assert "vmm refuses 127.0.0.1" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (tree / "etc").iterdir()) == before
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert not (vmm_env.data_dir / "images" / "ubu.ext4").exists()
    no_leftovers(vmm_env)
