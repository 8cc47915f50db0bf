"""Host-directory mounts in a real guest (one boot): ro and rw mounts, then pull and sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


def test_ro_and_rw_mounts(world: World, tmp_path: Path) -> None:
    w = world
    code = tmp_path / "code"
    (code / "src").mkdir(parents=True)
    (code / "src" / "main.py").write_text("print('hello from the host')\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "seed.txt").write_text("seed\n")
    (data / "old.txt").write_text("the guest deletes this\n")

    w.vmm("create", "mnt", "--cpus", "1", "--memory", "256", "--ssh-key", str(w.key) + ".pub",
          "--mount", f"{code}:code:ro", "--mount", f"{data}:data")
    listed = w.vmm("mount", "list", "mnt").stdout
    assert "code" in listed and "not built" in listed

    start = w.vmm("start", "mnt", "--timeout", "240")
    assert "ready after" in start.stdout, start.stdout + start.stderr

    def ssh(cmd: str, check: bool = True) -> str:
        p = w.vmm("ssh", "mnt", "--", cmd, check=check)
        return p.stdout + p.stderr

    # the guest reads the host's files, found by label, at /mnt/<tag>
    assert ssh("cat /mnt/code/src/main.py") == "print('hello from the host')\n"
    mounts = ssh("findmnt -rno TARGET,OPTIONS /mnt/code; findmnt -rno TARGET,OPTIONS /mnt/data")
    code_opts, data_opts = (line.split()[1].split(",") for line in mounts.strip().splitlines())
    assert "ro" in code_opts and "rw" in data_opts
    assert "LABEL=vmm-code" in ssh("cat /etc/fstab")
    # ro: refused by the filesystem (and the device); rw: written
    denied = w.vmm("ssh", "mnt", "--", "touch /mnt/code/new", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    ssh("echo written in the guest > /mnt/data/guest.txt && rm /mnt/data/old.txt && sync")
    assert "in use" in w.vmm("mount", "list", "mnt").stdout
    refused_running = w.vmm("mount", "sync", "mnt", "data", check=False)
    assert refused_running.returncode == 1 and "running" in refused_running.stderr

    w.vmm("stop", "mnt")
    states = {m["tag"]: m["state"] for m in json.loads(w.vmm("mount", "list", "mnt", "--json").stdout)}
    assert states["data"] == "changed in guest", states

    # sync would discard the guest's file: refused without --force
    refused = w.vmm("mount", "sync", "mnt", "data", check=False)
    assert refused.returncode == 1 and "changed" in refused.stderr and "--force" in refused.stderr

    # pull elsewhere, then into the host directory (unchanged on the host, so allowed)
    out = tmp_path / "pulled"
    w.vmm("mount", "pull", "mnt", "data", "--to", str(out))
    assert (out / "guest.txt").read_text() == "written in the guest\n"
    assert not (out / "lost+found").exists()
    w.vmm("mount", "pull", "mnt", "data")
    assert (data / "guest.txt").read_text() == "written in the guest\n"
    assert (data / "seed.txt").read_text() == "seed\n"
    assert not (data / "old.txt").exists()  # the guest deleted it
    # the image and the host agree now: sync is allowed without --force
    states = {m["tag"]: m["state"] for m in json.loads(w.vmm("mount", "list", "mnt", "--json").stdout)}
    assert states["data"] == "in sync", states
    w.vmm("mount", "sync", "mnt", "data")

    images = sorted(p.name for p in (w.env.data_dir / "mounts").iterdir())
    assert images == ["mnt-code.ext4", "mnt-data.ext4"]
    w.vmm("delete", "mnt")
    assert list((w.env.data_dir / "mounts").iterdir()) == []
    assert w.ns.pids() == []
