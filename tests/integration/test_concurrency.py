"""Parallel `vmm create`: the global lock hands out every name and address exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, register_artifacts
from tests.netns import NetNS

pytestmark = pytest.mark.integration


def test_parallel_creates_get_distinct_addresses(vmm_env: VmmEnv, tmp_path: Path) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)

    def create(i: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmm", "create", f"p{i}"], env=vmm_env.env(),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(create, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    # and the same name twice at once: exactly one wins
    with ThreadPoolExecutor(max_workers=4) as pool:
        dupes = list(pool.map(lambda _: create(99), range(4)))
    assert sorted(r.returncode for r in dupes) == [0, 1, 1, 1]

    listed = json.loads(vmm_env.run("list", "-a", "--json", check=True).stdout)
    assert listed["errors"] == []
    vms = listed["vms"]
    assert len(vms) == 21
    assert len({v["ip"] for v in vms}) == 21 and len({v["id"] for v in vms}) == 21
    assert len({v["tap"] for v in vms}) == 21
    assert {v["ip"] for v in vms} == {f"172.16.0.{i}" for i in range(2, 23)}  # lowest free first


def test_delete_frees_the_address(vmm_env: VmmEnv, tmp_path: Path, netns: NetNS) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)
    for name in ("a", "b", "c"):
        vmm_env.run("create", name, check=True)
    vmm_env.run("delete", "a", ns=netns, check=True)
    assert "172.16.0.2" in vmm_env.run("create", "d", check=True).stdout
    assert "172.16.0.5" in vmm_env.run("create", "e", check=True).stdout


def test_pinned_address_and_autostart_flag(vmm_env: VmmEnv, tmp_path: Path) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)
    assert "172.16.0.50" in vmm_env.run("create", "pinned", "--ip", "172.16.0.50", "--autostart", check=True).stdout
    assert "172.16.0.2" in vmm_env.run("create", "next", check=True).stdout
    vms = {v["name"]: v for v in json.loads(vmm_env.run("list", "-a", "--json", check=True).stdout)["vms"]}
    assert vms["pinned"]["mac"] == "06:00:AC:10:00:32" and vms["pinned"]["autostart"] is True
    assert vms["next"]["autostart"] is False
