"""Bad input through the real CLI: one-line error, exit code 1 or 2, nothing changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, register_artifacts
from tests.netns import NetNS
from tests.unit.test_kernels import fake_elf

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if "locks" in p.parts:
                continue
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def ready(vmm_env: VmmEnv, tmp_path: Path) -> VmmEnv:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path, image_mb=128)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True
    )
    vmm_env.run("create", "taken", "--ssh-key", str(tmp_path / "key.pub"), check=True)
    (tmp_path / "text").write_text("not a kernel\n")
    return vmm_env


def cases(tmp: Path) -> list[tuple[list[str], int, str]]:
    key = str(tmp / "key.pub")
    arm = fake_elf(tmp / "arm-vmlinux", machine=183)
    return [
        (["create", "Bad_Name"], 1, "invalid VM name"),
        (["create", "../etc"], 1, "invalid VM name"),
        (["create", "my vm"], 1, "invalid VM name"),
        (["create", "taken", "--ssh-key", key], 1, "already exists"),
        (["create", "x", "--cpus", "0"], 1, "--cpus"),
        (["create", "x", "--cpus", "abc"], 2, "whole number"),
        (["create", "x", "--memory", "64"], 1, "--memory"),
        (["create", "x", "--disk", "64"], 1, "smaller than image"),
        (["create", "x", "--image", "nope"], 1, "image 'nope' not found"),
        (["create", "x", "--kernel", "nope"], 1, "kernel 'nope' not found"),
        (["create", "x", "--ssh-key", "/nonexistent/k.pub"], 1, "does not exist"),
        (["create", "x", "--ssh-key", str(tmp / "key")], 1, "not an SSH public key"),
        (["create", "x", "--engine", "xen"], 2, "invalid choice"),
        (["create", "x", "--engine", "firecracker"], 1, "firecracker binary not found"),
        (["create", "x", "--dns", "dns.google"], 1, "invalid DNS server"),
        (["create", "x", "--ip", "10.0.0.5"], 1, "not inside the subnet"),
        (["create", "x", "--ip", "172.16.0.1"], 1, "gateway"),
        (["create", "x", "--ip", "172.16.0.2"], 1, "already used"),
        (["create", "x", "--ip", "172.16.255.255"], 1, "broadcast"),
        (["create", "x", "--ip", "999.1.1.1"], 1, "999.1.1.1"),
        (["kernel", "import", "/nonexistent", "--name", "k"], 1, "does not exist"),
        (["kernel", "import", str(tmp / "text"), "--name", "k"], 1, "not an ELF"),
        (["kernel", "import", str(arm), "--name", "k"], 1, "aarch64"),
        (["kernel", "import", str(tmp / "vmlinux"), "--name", "default"], 1, "already exists"),
        (
            ["kernel", "import", str(tmp / "vmlinux"), "--name", "Bad/Name"],
            1,
            "invalid kernel name",
        ),
        (["image", "import", str(tmp / "text"), "--name", "i"], 1, "not an ext4"),
        (["image", "import", "/nonexistent.ext4", "--name", "i"], 1, "does not exist"),
        (["start", "ghost"], 1, "does not exist"),
        (["stop", "ghost"], 1, "does not exist"),
        (["delete", "ghost"], 1, "does not exist"),
        (["ssh", "taken"], 1, "not running"),
        (["frobnicate"], 2, "invalid choice"),
        (["create"], 2, "required"),
    ]


def test_bad_input_table(ready: VmmEnv, tmp_path: Path) -> None:
    env = ready
    env_vars = env.env()
    env_vars["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # no firecracker anywhere
    for args, code, message in cases(tmp_path):
        before = snapshot(env.data_dir)
        proc = subprocess.run(
            [__import__("sys").executable, "-m", "vmm", *args],
            env=env_vars,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        where = f"vmm {' '.join(args)}: rc={proc.returncode} stderr={proc.stderr!r}"
        assert proc.returncode == code, where
        assert message in proc.stderr, where
        assert proc.stderr.startswith("error: "), where
        assert "Traceback" not in proc.stderr, where
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1, where
        assert snapshot(env.data_dir) == before, where


def test_stop_of_stopped_vm_is_clear(ready: VmmEnv, netns: NetNS) -> None:
    proc = ready.run("stop", "taken", ns=netns)
    assert proc.returncode == 0 and "not running" in proc.stdout


def test_corrupt_config(ready: VmmEnv) -> None:
    ready.config.write_text('{"vm_defaults": {"cpus": "two"}}')
    before = ready.config.read_text()
    for args in (["list"], ["config", "show"], ["create", "y"]):
        proc = ready.run(*args)
        assert proc.returncode == 1
        assert "$.vm_defaults.cpus" in proc.stderr and "Traceback" not in proc.stderr
    assert ready.config.read_text() == before


def test_corrupt_record(ready: VmmEnv, netns: NetNS) -> None:
    (ready.data_dir / "vms" / "broken.json").write_text("{ nope")
    proc = ready.run("list", "-a")
    assert proc.returncode == 0
    assert "taken" in proc.stdout
    assert "broken" in proc.stderr and "corrupt" in proc.stderr
    assert json.loads(ready.run("list", "-a", "--json").stdout)["errors"][0]["name"] == "broken"
    start = ready.run("start", "broken")
    assert start.returncode == 1 and "corrupt" in start.stderr and "Traceback" not in start.stderr
    # a corrupt record's address is still taken: the next VM does not get it
    rec = json.loads((ready.data_dir / "vms" / "taken.json").read_text())
    (ready.data_dir / "vms" / "broken.json").write_text(
        '{"ip": "172.16.0.3", "id": "deadbeef", oops'
    )
    created = ready.run("create", "next", check=True).stdout
    assert rec["ip"] == "172.16.0.2" and "172.16.0.4" in created
    # delete -f cleans up a corrupt record
    assert ready.run("delete", "broken", ns=netns).returncode == 1
    assert ready.run("delete", "-f", "broken", ns=netns).returncode == 0
    assert not (ready.data_dir / "vms" / "broken.json").exists()


def test_non_root(ready: VmmEnv) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    os.chmod(ready.root, 0o755)
    base = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        __import__("sys").executable,
        "-m",
        "vmm",
    ]
    env = ready.env()
    env["HOME"] = "/nonexistent"
    listed = subprocess.run([*base, "list", "-a"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "taken" in listed.stdout
    for args in (["create", "x"], ["start", "taken"], ["stop", "taken"], ["delete", "taken"]):
        proc = subprocess.run([*base, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"error: requires root: try sudo vmm {args[0]}"), proc.stderr
