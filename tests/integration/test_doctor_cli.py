"""vmm doctor through the CLI, inside a private network namespace: a healthy setup, and each
failure injected for real (missing binary, read-only data dir, orphan TAP, corrupt config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.fakes.fc_harness import install_fake
from tests.netns import NetNS

pytestmark = pytest.mark.integration


def doctor(
    env: VmmEnv, ns: NetNS, *args: str, wrap: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [
        "ip",
        "netns",
        "exec",
        ns.name,
        *(wrap or []),
        sys.executable,
        "-m",
        "vmm",
        "doctor",
        *args,
    ]
    return subprocess.run(
        argv, env=env.env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def checks(r: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


@pytest.fixture
def healthy(vmm_env: VmmEnv, tmp_path: Path) -> VmmEnv:
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("qemu-system-x86_64 is not installed")
    vmm_env.write_config(
        engine="qemu", accel="tcg", firecracker_bin=str(install_fake(tmp_path / "bin"))
    )
    return vmm_env


def test_healthy_setup(healthy: VmmEnv, netns: NetNS) -> None:
    r = doctor(healthy, netns)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "healthy: 0 failed" in r.stdout
    c = checks(doctor(healthy, netns, "--json"))
    assert c["firecracker"]["status"] == "ok" and "v1.11.0" in str(c["firecracker"]["message"])
    assert (
        c["qemu"]["status"] == "ok"
        and c["nftables"]["status"] == "ok"
        and c["taps"]["status"] == "ok"
    )


def test_missing_binary(healthy: VmmEnv, netns: NetNS) -> None:
    healthy.write_config(engine="firecracker", firecracker_bin="/nonexistent/firecracker")
    r = doctor(healthy, netns)
    assert r.returncode == 1
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["firecracker"])
    assert line.startswith("FAIL") and "/nonexistent/firecracker" in line
    assert "hint: install it with scripts/install.sh" in r.stdout


def test_unwritable_data_dir(healthy: VmmEnv, netns: NetNS) -> None:
    d = healthy.data_dir
    d.mkdir()
    wrap = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind {d} {d} && mount -o remount,ro,bind {d} && exec "$@"',
        "sh",
    ]
    r = doctor(healthy, netns, "--json", wrap=wrap)
    assert r.returncode == 1, r.stdout + r.stderr
    c = checks(r)["data_dir"]
    assert c["status"] == "fail" and "Read-only" in str(c["message"]) and c["hint"]


def test_orphan_tap_found_and_fixed(healthy: VmmEnv, netns: NetNS) -> None:
    netns.run(["ip", "tuntap", "add", "vmm-deadbeef", "mode", "tap"])
    r = doctor(healthy, netns)
    assert r.returncode == 0  # a leftover is a warning, not a broken host
    assert any(ln.startswith("WARN") and "vmm-deadbeef" in ln for ln in r.stdout.splitlines())
    fixed = doctor(healthy, netns, "--fix")
    assert "fixed: removed vmm-deadbeef" in fixed.stdout and fixed.returncode == 0
    assert "vmm-deadbeef" not in netns.run(["ip", "-o", "link"]).stdout


def test_corrupt_config_is_reported(healthy: VmmEnv, netns: NetNS) -> None:
    healthy.config.write_text("{not json")
    r = doctor(healthy, netns)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert any(ln.startswith("FAIL") and "not valid JSON" in ln for ln in r.stdout.splitlines())
    assert " tun " in r.stdout  # the other checks still ran
