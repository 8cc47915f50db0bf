"""Guest data is root's alone: another local user can open no disk, image, mount image,
console log or socket, while non-root ``vmm list`` keeps working (the fake firecracker, a netns).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, use_fake_firecracker
from tests.netns import NetNS

pytestmark = pytest.mark.integration

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

PROBE = r"""
import os, socket, sys
for path in sys.argv[1:]:
    try:
        if path.endswith((".sock", ".console")):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
        else:
            os.close(os.open(path, os.O_RDONLY))
        print("OPENED", path)
    except OSError as exc:
        print("refused", exc.errno, path)
"""


@pytest.fixture
def running(vmm_env: VmmEnv, netns: NetNS, tmp_path: Path) -> VmmEnv:
    os.chmod(vmm_env.root, 0o755)  # the test's private root: as traversable as /var/lib
    share = tmp_path / "share"
    share.mkdir()
    (share / "notes").write_text("host file\n")
    use_fake_firecracker(vmm_env, tmp_path)
    vmm_env.run("create", "p1", "--disk", "128", "--mount", f"{share}:share", check=True)
    vmm_env.run("start", "p1", "--no-wait", ns=netns, check=True)
    return vmm_env


def guest_data(env: VmmEnv) -> list[Path]:
    d = env.data_dir
    files = [
        d / "vms" / "p1" / "rootfs.ext4",
        d / "vms" / "p1" / "engine.log",
        d / "images" / "default.ext4",
        d / "logs" / "p1.log",
        d / "sockets" / "p1.sock",
        *sorted((d / "mounts").glob("p1-*.ext4")),
    ]
    for f in files:
        assert f.exists(), f
    return files


def test_no_other_user_can_open_guest_data(running: VmmEnv, netns: NetNS) -> None:
    files = guest_data(running)
    assert any(f.parent.name == "mounts" for f in files)
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", PROBE, *map(str, files)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = probe.stdout.splitlines()
    assert len(lines) == len(files)
    assert all(line.startswith("refused 13 ") for line in lines), probe.stdout  # EACCES
    for f in files:  # and by the modes themselves, not only by a private directory above them
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f, oct(f.stat().st_mode))
    for d in ("vms/p1", "logs", "sockets", "mounts"):
        assert stat.S_IMODE((running.data_dir / d).stat().st_mode) == 0o700, d

    env = running.env() | {"HOME": "/nonexistent"}
    listed = subprocess.run(
        [*AS_NOBODY, sys.executable, "-m", "vmm", "list", "--json"], env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [v["name"] for v in json.loads(listed.stdout)["vms"]] == ["p1"]
    running.run("delete", "-f", "p1", ns=netns, check=True)


def test_an_older_data_dir_gets_private_modes_at_the_next_start(running: VmmEnv, netns: NetNS) -> None:
    running.run("stop", "p1", ns=netns, check=True)
    rootfs = running.data_dir / "vms" / "p1" / "rootfs.ext4"
    for p, mode in ((rootfs, 0o644), (rootfs.parent, 0o755), (running.data_dir / "logs", 0o755)):
        os.chmod(p, mode)  # what vmm made before
    running.run("start", "p1", "--no-wait", ns=netns, check=True)
    assert stat.S_IMODE(rootfs.stat().st_mode) == 0o600
    assert stat.S_IMODE(rootfs.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((running.data_dir / "logs").stat().st_mode) == 0o700
    running.run("delete", "-f", "p1", ns=netns, check=True)
