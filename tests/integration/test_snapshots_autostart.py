"""``autostop_mode: "suspend"``: the host's shutdown suspends the running VMs, and the boot's
``autostart`` resumes them (fake firecracker processes in a private network namespace)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_autostart import fc, lines, vmm  # noqa: F401  (fixture)
from tests.netns import NetNS

pytestmark = pytest.mark.integration


def states(env: VmmEnv) -> dict[str, str]:
    return {v["name"]: v["state"] for v in json.loads(env.run("list", "-a", "--json", check=True).stdout)["vms"]}


def test_autostop_suspends_and_autostart_resumes(fc: VmmEnv, netns: NetNS) -> None:  # noqa: F811
    cfg = json.loads(fc.config.read_text())
    fc.write_config(**cfg, autostart_policy="running", autostop_mode="suspend")
    shown = json.loads(fc.run("config", "show", "--json", check=True).stdout)
    assert shown["autostop_mode"] == {"value": "suspend", "source": "config file"}
    for name in ("a", "b", "idle"):
        fc.run("create", name, check=True)
    for name in ("a", "b"):
        assert vmm(fc, netns, "start", name, "--no-wait").returncode == 0

    stop = vmm(fc, netns, "autostop")
    assert stop.returncode == 0, stop.stderr
    assert lines(stop.stdout) == dict.fromkeys(("a", "b"), "suspended (its memory is saved; a start resumes it)")
    assert states(fc) == {"a": "suspended", "b": "suspended", "idle": "created"}
    assert netns.pids() == []

    start = vmm(fc, netns, "autostart")
    assert start.returncode == 0, start.stderr
    got = lines(start.stdout)
    assert set(got) == {"a", "b"} and all(v.startswith("started (resumed, firecracker at") for v in got.values())
    assert states(fc) == {"a": "running", "b": "running", "idle": "created"}
    for name in ("a", "b"):
        live = json.loads(fc.run("inspect", name, check=True).stdout)["live"]
        assert live["engine_state"] == "Running"
        assert not (fc.data_dir / "vms" / name / "suspend").exists()
    fc.write_config(**cfg)
    assert vmm(fc, netns, "autostop").returncode == 0
    assert netns.pids() == []


def test_a_bad_autostop_mode_is_a_config_error(fc: VmmEnv) -> None:  # noqa: F811
    cfg = json.loads(fc.config.read_text())
    fc.write_config(**cfg, autostop_mode="hibernate")
    r = fc.run("config", "show")
    assert r.returncode == 1 and "$.autostop_mode" in r.stderr
