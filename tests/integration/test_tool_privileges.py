"""The e2fsprogs tools that parse guest-written filesystems run without privileges: a crafted
ext4 exploiting a parser bug gets an unprivileged uid that can write only the image itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_ext4
from vmm.guest import ext4
from vmm.runner import RecordingRunner, Runner

pytestmark = pytest.mark.integration


def test_the_tool_runs_unprivileged_and_reaches_only_the_image(tmp_path: Path) -> None:
    private = tmp_path / "data"
    private.mkdir(mode=0o700)
    image = make_ext4(private / "disk.ext4", 16)
    image.chmod(0o600)
    probe = (
        "id -u; grep CapEff /proc/self/status; test -w {img} && echo image-writable; "
        "cat /etc/shadow >/dev/null 2>&1 || echo no-shadow; "
        "touch {d}/x 2>/dev/null || echo no-write-beside; echo ok"
    )
    r = ext4.run_tool(
        Runner(), image,
        lambda c: ["sh", "-c", probe.format(img=c.image, d=private)],
    )  # fmt: skip
    lines = r.stdout.split("\n")
    assert lines[0] == str(ext4.TOOL_UID)
    assert lines[1].split() == ["CapEff:", "0000000000000000"]
    assert lines[2:6] == ["image-writable", "no-shadow", "no-write-beside", "ok"]
    st = image.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600), "the image was not given back"


def test_the_image_is_given_back_when_the_tool_fails(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "disk.ext4", 16)
    r = ext4.run_tool(Runner(), image, lambda c: ["sh", "-c", "exit 3"], check=False)
    assert r.returncode == 3
    assert image.stat().st_uid == 0


def test_e2fsck_and_debugfs_go_through_the_unprivileged_path(tmp_path: Path) -> None:
    image = make_ext4(tmp_path / "disk.ext4", 16)
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(image)], check=True, capture_output=True)
    rec = RecordingRunner()
    ext4.make_consistent(rec, image, what="a disk")
    ext4.write_files(rec, image, [ext4.GuestFile("/etc/hostname", b"x\n")])
    ext4.path_exists(rec, image, "/etc")
    ext4.existing(rec, image, ["/etc", "/usr"])
    ext4.write_files(rec, image, [ext4.GuestFile("/etc/x", b"x\n")], known=ext4.Existing(checked=["/etc", "/etc/x"]))
    tools = [c for c in rec.calls if any(t in c for t in ("e2fsck", "debugfs"))]
    assert len(tools) >= 6
    for argv in tools:
        assert argv[:3] == ["setpriv", f"--reuid={ext4.TOOL_UID}", f"--regid={ext4.TOOL_UID}"], argv
        assert "--no-new-privs" in argv and str(image) not in argv  # opened through a passed fd
    assert os.stat(image).st_uid == 0
