"""Real guests: the kernel + rootfs built by scripts/build-test-guest.sh (VMM_TEST_GUEST)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.netns import NetNS


@dataclass
class Guest:
    kernel: Path
    rootfs: Path


@pytest.fixture(scope="session")
def guest() -> Guest:
    d = os.environ.get("VMM_TEST_GUEST")
    if not d:
        pytest.skip("no test guest: run scripts/test.sh (it builds one and sets VMM_TEST_GUEST)")
    g = Guest(Path(d) / "vmlinux", Path(d) / "rootfs.ext4")
    if not g.kernel.is_file() or not g.rootfs.is_file():
        pytest.skip(f"test guest incomplete in {d}")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return g


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key), "-C", "vmm-test"], check=True)
    return key


@dataclass
class World:
    """A private vmm (config + data dir) whose networking lives in its own namespace."""

    env: VmmEnv
    ns: NetNS
    guest: Guest
    key: Path

    def vmm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.env.run(*args, ns=self.ns, check=check, timeout=timeout)

    def links(self) -> str:
        return self.ns.run(["ip", "-o", "link", "show"]).stdout


@pytest.fixture
def world(vmm_env: VmmEnv, netns: NetNS, guest: Guest, ssh_key: Path) -> Iterator[World]:
    vmm_env.write_config(engine="qemu", accel="tcg")
    w = World(vmm_env, netns, guest, ssh_key)
    w.vmm("kernel", "import", str(guest.kernel), "--name", "default")
    w.vmm("image", "import", str(guest.rootfs), "--name", "default")
    try:
        yield w
    finally:
        # Whatever a failed test left running: delete its VMs through vmm first.
        for name in os.listdir(vmm_env.data_dir / "vms") if (vmm_env.data_dir / "vms").is_dir() else []:
            if name.endswith(".json"):
                w.vmm("delete", "-f", name[:-5], check=False)
