"""`vmm image build NAME --debootstrap SUITE`: one real bookworm build (about 45 s, needs the
Debian mirror), bad input, and an interrupted build leaving nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_image_import import cat
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
MIRROR = os.environ.get("VMM_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def exists(image: Path, path: str) -> bool:
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True)
    return "Inode:" in out.stdout


def test_build_bookworm(vmm_env: VmmEnv) -> None:
    r = vmm_env.run("image", "build", "bw", "--debootstrap", "bookworm", "--mirror", MIRROR,
                    "--packages", "less", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "[vmm] debootstrap bookworm" in r.stderr and "[vmm] built in" in r.stderr
    assert r.stdout.startswith("Built image bw from debootstrap:bookworm")
    images = vmm_env.data_dir / "images"
    image = images / "bw.ext4"
    meta = json.loads((images / "bw.json").read_text())
    assert meta["source"] == "debootstrap:bookworm" and meta["extra_packages"] == ["less"]
    assert meta["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert cat(image, "/etc/fstab") == "/dev/vda / ext4 defaults 0 1\n"
    for path in ("/lib/systemd/systemd", "/usr/sbin/sshd", "/usr/bin/less",
                 "/etc/systemd/system/vmm-ssh-hostkeys.service",
                 "/etc/systemd/system/ssh.service.wants/vmm-ssh-hostkeys.service",
                 "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"):
        assert exists(image, path), path
    assert "PasswordAuthentication no" in cat(image, "/etc/ssh/sshd_config.d/00-vmm.conf")
    assert not exists(image, "/etc/ssh/ssh_host_ed25519_key")  # made at first boot, per VM
    assert cat(image, "/etc/machine-id") == ""
    assert not [p for p in images.iterdir() if p.name.startswith(".")]

    r = vmm_env.run("image", "build", "bw", "--debootstrap", "bookworm")
    assert r.returncode == 1 and "already exists" in r.stderr and "-f" in r.stderr
    r = vmm_env.run("image", "list")
    assert "debootstrap:bookworm" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad_Name", "--debootstrap", "bookworm"], "invalid image name"),
        (["x", "--debootstrap", "../etc"], "invalid suite"),
        (["x", "--debootstrap", "bookworm", "--mirror", "deb.debian.org"], "invalid mirror"),
        (["x", "--debootstrap", "bookworm", "--packages", "ok,Bad Pkg"], "invalid package name"),
        (["x", "--debootstrap", "nosuchsuite"],
         "debootstrap nosuchsuite failed (exit 1): E: No such script"),
    ],
)
def test_bad_input(vmm_env: VmmEnv, args: list[str], message: str) -> None:
    r = vmm_env.run("image", "build", *args)
    assert r.returncode != 0
    first = r.stderr.splitlines()[[i for i, ln in enumerate(r.stderr.splitlines())
                                   if ln.startswith("error:")][0]]
    assert message in first, r.stderr
    assert not (vmm_env.data_dir / "images" / "x.ext4").exists()


def session_processes(sid: int) -> dict[int, str]:
    """``{pid: comm}`` of the live processes in session ``sid`` (zombies count as gone)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(entry.name)] = comm
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_nothing(vmm_env: VmmEnv, sig: signal.Signals) -> None:
    images = vmm_env.data_dir / "images"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmm",
            "image",
            "build",
            "x",
            "--debootstrap",
            "bookworm",
            "--mirror",
            MIRROR,
        ],
        env=vmm_env.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # debootstrap is at work: its process runs in the build's session and it has begun
        # downloading packages into the target tree in the build's work dir (a dot-directory
        # of the images dir, whatever its name).
        def debootstrap_running() -> list[Path]:
            assert proc.poll() is None, f"vmm exited {proc.returncode} before the interrupt"
            if "debootstrap" not in session_processes(proc.pid).values():
                return []
            return [
                w
                for w in images.glob(".*")
                if any((w / "rootfs" / "var" / "cache" / "apt" / "archives").glob("*.deb"))
            ]

        wait_until(
            debootstrap_running,
            300,
            interval=0.2,
            what="debootstrap downloading packages into the work dir",
        )
        [work] = debootstrap_running()
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the CLI's answer to an interrupt (128 + the signal, and which one unless it was Ctrl-C),
    # not some other failure such as "debootstrap bookworm failed"
    assert proc.returncode == 128 + sig, err
    assert "[vmm] debootstrap bookworm" in err
    by = "" if sig == signal.SIGINT else f" ({sig.name})"
    assert err.splitlines()[-1] == f"error: interrupted{by}", err
    assert "failed" not in err and "Traceback" not in err, err
    assert out == ""
    wait_until(
        lambda: session_processes(proc.pid) == {}, 30, what="debootstrap and its children gone"
    )
    assert not work.exists()
    # no work dir, temp file, image or record (kernels/ is a directory of the store)
    assert [p.name for p in images.iterdir() if p.is_file() or p.name.startswith(".")] == []
    with open("/proc/self/mountinfo") as f:
        assert str(images) not in f.read()
    r = vmm_env.run("image", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], (r.stdout, r.stderr)
