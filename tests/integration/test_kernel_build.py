"""`vmm kernel build`: the config check against a real kernel tree (Debian's linux-source-6.1,
unpacked once into /var/cache/vmm-test/src), failing fast without compiling. A full compile is
what scripts/build-test-guest.sh does (the same vmm.guest.kernelbuild code) for every test run."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from vmm.guest import kernelbuild
from vmm.runner import Runner

pytestmark = pytest.mark.integration
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
CACHE = Path(os.environ.get("VMM_TEST_CACHE", "/var/cache/vmm-test")) / "src"


@pytest.fixture(scope="module")
def tree() -> Path:
    """A clean 6.1 source tree (unpacked once, about 10 s; never configured in-tree)."""
    if not TARBALL.is_file():
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "linux-source-6.1"],
                       check=True, capture_output=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / "linux-source-6.1"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (CACHE / ".complete-linux-source-6.1").exists():
            subprocess.run(["rm", "-rf", str(src)], check=True)
            subprocess.run(["tar", "-C", str(CACHE), "-xJf", str(TARBALL)], check=True)
            (CACHE / ".complete-linux-source-6.1").touch()
    assert not (src / ".config").exists()
    return src


def test_dropped_required_option_fails_before_compiling(vmm_env: VmmEnv, tree: Path, tmp_path: Path) -> None:
    frag = tmp_path / "bad.fragment"
    frag.write_text("# CONFIG_VIRTIO_BLK is not set\nCONFIG_NO_SUCH_OPTION=y\n")
    start = time.monotonic()
    r = vmm_env.run("kernel", "build", "--name", "k", "--source", str(tree), "--config-fragment", str(frag))
    assert time.monotonic() - start < 120  # olddefconfig only; a compile takes ~10 minutes
    assert r.returncode == 1
    assert "[vmm] make olddefconfig" in r.stderr and "make -j" not in r.stderr
    error = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert "kernel config check failed: 2 option(s)" in error
    assert "VIRTIO_BLK=y (required)" in error and "NO_SUCH_OPTION=y (fragment)" in error
    assert "nothing was compiled" in r.stderr
    kernels = vmm_env.data_dir / "images" / "kernels"
    assert not kernels.exists() or list(kernels.iterdir()) == []
    assert not (tree / ".config").exists()  # out-of-tree: the source is never written


def test_default_config_passes_the_check(tree: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    kernelbuild.build(Runner(), "6.1", tmp_path / "out", source=tree, compile=False,
                      work_parent=tmp_path, progress=lines.append)
    config = (tmp_path / "out" / "kernel.config").read_text()
    assert "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in config and "# CONFIG_MODULES is not set" in config
    assert lines[-1].startswith("config checked")


def test_bad_input(vmm_env: VmmEnv, tree: Path, tmp_path: Path) -> None:
    r = vmm_env.run("kernel", "build", "--name", "k", "--version", "6.6")
    assert r.returncode == 1 and "pass --source" in r.stderr and "linux-6.6.tar.xz" in r.stderr
    r = vmm_env.run("kernel", "build", "--name", "k", "--version", "6.6", "--source", str(tree))
    assert r.returncode == 1 and "holds Linux 6.1, not 6.6" in r.stderr
    r = vmm_env.run("kernel", "build", "--name", "k", "--source", str(tmp_path))
    assert r.returncode == 1 and "not a Linux source tree" in r.stderr
    r = vmm_env.run("kernel", "build", "--name", "k", "--source", str(tree), "--config-fragment", "/nope")
    assert r.returncode == 1 and "config fragment /nope does not exist" in r.stderr
    r = vmm_env.run("kernel", "build", "--name", "Bad_Name")
    assert r.returncode == 1 and "invalid kernel name" in r.stderr
    r = vmm_env.run("kernel", "build", "--name", "k", "--version", "4.14")
    assert r.returncode == 2
