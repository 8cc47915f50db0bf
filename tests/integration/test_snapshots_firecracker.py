"""Suspend, resume and snapshots on the Firecracker engine, against the fake firecracker.

The fake speaks v1.11's API and keeps its rules (a snapshot only of a Paused VM, a load only on
a process where nothing but the logger was configured, a failed load ends the process); every
body vmm sent is recorded (``FAKE_FC_RECORD``) and validated here against the official spec,
strictly, and the order of the calls is checked: pause then create; logger then load, nothing
else. The CLI runs as it does on a host, in a private network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_cli_firecracker import fc, links  # noqa: F401  (fixture)
from tests.integration.test_firecracker_fake import (  # noqa: F401  (fixtures)
    Fake,
    boot,
    configure,
    fake,
    workdir,
)
from tests.netns import NetNS

FAKES = Path(__file__).resolve().parents[1] / "fakes"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))
import fc_spec  # noqa: E402

pytestmark = pytest.mark.integration

# docs/firecracker.md, Snapshots (rpc_interface.rs)
LOAD_AFTER_CONFIG = "Loading a microVM snapshot not allowed after configuring boot-specific resources."


@pytest.fixture(scope="module")
def validator() -> fc_spec.SpecValidator:
    return fc_spec.SpecValidator(fc_spec.load_spec())


def vmm(env: VmmEnv, ns: NetNS, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "vmm", *args],
                          env=env.env() | extra, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def calls(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    lines = record.read_text().splitlines()
    record.write_text("")
    return [json.loads(line) for line in lines]


def sent(entries: list[dict[str, Any]]) -> list[str]:
    """Method and path of each request that changes something (GETs are polls)."""
    return [f"{e['method']} {e['path']}" for e in entries if e["method"] != "GET"]


def strictly_valid(validator: fc_spec.SpecValidator, entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e["method"] == "GET":
            continue
        definition = validator.body_definition(e["method"], e["path"])
        errors = [fc_spec.describe_error(x) for x in validator.errors(definition, e["body"])]
        assert errors == [], f"{e['method']} {e['path']}: {errors}"
        assert e["status"] == 204, e


def record_of(env: VmmEnv, name: str = "fc1") -> dict[str, Any]:
    return json.loads((env.data_dir / "vms" / f"{name}.json").read_text())


def taps(ns: NetNS) -> set[str]:
    return {str(lk["ifname"]) for lk in links(ns) if str(lk["ifname"]).startswith("vmm-") and lk["ifname"] != "vmm-br0"}


def test_suspend_resume_and_a_failed_load(fc: VmmEnv, netns: NetNS, tmp_path: Path,  # noqa: F811
                                         validator: fc_spec.SpecValidator) -> None:
    record = tmp_path / "calls.jsonl"
    rec = {"FAKE_FC_RECORD": str(record)}
    assert vmm(fc, netns, "start", "fc1", "--no-wait", **rec).returncode == 0
    calls(record)
    tap = record_of(fc)["tap"]

    r = vmm(fc, netns, "suspend", "fc1", **rec)
    assert r.returncode == 0, r.stderr
    entries = calls(record)
    strictly_valid(validator, entries)
    assert sent(entries) == ["PATCH /vm", "PUT /snapshot/create"]
    assert [e for e in entries if e["method"] == "PUT"][0]["body"]["snapshot_type"] == "Full"
    assert record_of(fc)["state"] == "suspended" and record_of(fc)["pid"] is None
    assert netns.pids() == [] and tap not in taps(netns)
    state = fc.data_dir / "vms" / "fc1" / "suspend"
    assert sorted(os.listdir(state)) == ["memory", "meta.json", "vmstate"]
    mem = (state / "memory").stat()
    assert mem.st_size == 512 * 1024 * 1024 and mem.st_mode & 0o777 == 0o600
    assert mem.st_blocks * 512 < 1024 * 1024  # the fake's 4 MiB of written zeros became a hole
    meta = json.loads((state / "meta.json").read_text())
    assert (meta["engine"], meta["engine_version"]) == ("firecracker", "1.11.0")

    # The load fails: the process exits, vmm says so in one line, the VM stays suspended.
    bad = vmm(fc, netns, "start", "fc1", "--no-wait", FAKE_FC_LOAD_FAIL="1", **rec)
    assert bad.returncode == 1
    first = bad.stderr.splitlines()[0]
    assert first.startswith("error: firecracker could not load the VM's saved state: Load snapshot error")
    assert "Traceback" not in bad.stderr and "still suspended" in bad.stderr
    assert sent(calls(record)) == ["PUT /logger", "PUT /snapshot/load"]
    assert record_of(fc)["state"] == "suspended" and netns.pids() == [] and tap not in taps(netns)
    assert sorted(os.listdir(state)) == ["memory", "meta.json", "vmstate"]

    # And then it resumes: a fresh process, the logger, the load and nothing else.
    ok = vmm(fc, netns, "start", "fc1", "--no-wait", **rec)
    assert ok.returncode == 0, ok.stderr
    entries = calls(record)
    strictly_valid(validator, entries)
    assert sent(entries) == ["PUT /logger", "PUT /snapshot/load"]
    load = [e for e in entries if e["path"] == "/snapshot/load"][0]["body"]
    assert load["mem_backend"] == {"backend_type": "File", "backend_path": str(state / "memory")}
    assert load["resume_vm"] is True and load["snapshot_path"] == str(state / "vmstate")
    vm = json.loads(fc.run("inspect", "fc1", check=True).stdout)
    assert vm["state"] == "running" and vm["live"]["engine_state"] == "Running"
    assert tap in taps(netns) and not state.exists()
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert netns.pids() == []


def test_snapshots_on_firecracker(fc: VmmEnv, netns: NetNS, tmp_path: Path,  # noqa: F811
                                  validator: fc_spec.SpecValidator) -> None:
    record = tmp_path / "calls.jsonl"
    rec = {"FAKE_FC_RECORD": str(record)}
    # (the fake's knobs apply to the process that vmm spawns: they are given to 'start')
    assert vmm(fc, netns, "start", "fc1", "--no-wait", FAKE_FC_SNAPSHOT_CREATE_FAIL="1", **rec).returncode == 0
    vm_dir = fc.data_dir / "vms" / "fc1"
    calls(record)

    # A full disk during the snapshot: the VM runs on, nothing half-written remains.
    full = vmm(fc, netns, "snapshot", "create", "fc1", "s1")
    assert full.returncode == 1 and "No space left on device" in full.stderr.splitlines()[0]
    assert sent(calls(record)) == ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    assert json.loads(fc.run("inspect", "fc1", check=True).stdout)["live"]["engine_state"] == "Running"
    assert sorted(os.listdir(vm_dir)) == ["engine.log", "rootfs.ext4"]
    assert vmm(fc, netns, "stop", "fc1").returncode == 0
    assert vmm(fc, netns, "start", "fc1", "--no-wait", **rec).returncode == 0
    calls(record)

    made = vmm(fc, netns, "snapshot", "create", "fc1", "s1", **rec)
    assert made.returncode == 0, made.stderr
    entries = calls(record)
    strictly_valid(validator, entries)
    assert sent(entries) == ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    assert [e["body"]["state"] for e in entries if e["path"] == "/vm"] == ["Paused", "Resumed"]
    listed = json.loads(fc.run("snapshot", "list", "--json", check=True).stdout)
    assert [(s["vm"], s["name"], s["kind"], s["engine"], s["engine_version"]) for s in listed] == [
        ("fc1", "s1", "memory", "firecracker", "1.11.0")
    ]
    assert sorted(os.listdir(vm_dir / "snapshots" / "s1")) == ["memory", "meta.json", "rootfs.ext4", "vmstate"]

    old_pid = record_of(fc)["pid"]
    back = vmm(fc, netns, "snapshot", "restore", "fc1", "s1", **rec)
    assert back.returncode == 0, back.stderr
    assert "running" in back.stdout
    entries = calls(record)
    strictly_valid(validator, entries)
    assert sent(entries) == ["PUT /logger", "PUT /snapshot/load"]
    assert record_of(fc)["pid"] != old_pid and record_of(fc)["state"] == "running"
    assert len(netns.pids()) == 1  # never two processes on one disk

    # Another hypervisor version: refused before anything changes.
    meta_path = vm_dir / "snapshots" / "s1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "engine_version": "1.12.0"}))
    other = vmm(fc, netns, "snapshot", "restore", "fc1", "s1")
    assert other.returncode == 1
    assert other.stderr.splitlines()[0] == (
        "error: snapshot 's1' was saved under firecracker 1.12.0; this host has firecracker "
        "1.11.0, which cannot load it"
    )
    assert record_of(fc)["state"] == "running" and len(netns.pids()) == 1
    fc.run("snapshot", "delete", "fc1", "s1", ns=netns, check=True)
    assert not (vm_dir / "snapshots" / "s1").exists()
    fc.run("delete", "-f", "fc1", ns=netns, check=True)
    assert netns.pids() == []


def test_the_fake_keeps_the_snapshot_rules(workdir: Path, fake: Fake) -> None:  # noqa: F811
    boot(fake, workdir)
    create = {"snapshot_path": str(workdir / "st"), "mem_file_path": str(workdir / "mem")}
    assert "paused" in fake.fault("PUT", "/snapshot/create", create)
    fake.api.patch("/vm", {"state": "Paused"})
    fake.api.put("/snapshot/create", {**create, "snapshot_type": "Full"})
    assert fake.api.instance_info()["state"] == "Paused"
    load = {"snapshot_path": create["snapshot_path"],
            "mem_backend": {"backend_type": "File", "backend_path": create["mem_file_path"]}}
    assert "after starting" in fake.fault("PUT", "/snapshot/load", load)


def test_a_load_after_configuration_is_refused(workdir: Path) -> None:  # noqa: F811
    from tests.integration.test_firecracker_fake import start_fake

    first = start_fake(workdir, sock_name="a.sock")
    try:
        boot(first, workdir)
        first.api.patch("/vm", {"state": "Paused"})
        first.api.put("/snapshot/create", {"snapshot_path": str(workdir / "st"),
                                           "mem_file_path": str(workdir / "mem")})
    finally:
        first.proc.kill()
        first.proc.wait()
    load = {"snapshot_path": str(workdir / "st"), "resume_vm": True,
            "mem_backend": {"backend_type": "File", "backend_path": str(workdir / "mem")}}
    second = start_fake(workdir, sock_name="b.sock")
    try:
        configure(second, workdir)
        assert second.fault("PUT", "/snapshot/load", load) == LOAD_AFTER_CONFIG
        assert second.proc.poll() is None  # refused before loading anything: it lives on
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
        second.proc.wait()
    broken = start_fake(workdir, sock_name="d.sock")
    try:
        bad = {**load, "snapshot_path": str(workdir / "missing")}
        assert "Load snapshot error" in broken.fault("PUT", "/snapshot/load", bad)
        assert broken.proc.wait(timeout=10) == 1  # a failed load ends the process
    finally:
        if broken.proc.poll() is None:
            broken.proc.kill()
        broken.proc.wait()
    third = start_fake(workdir, sock_name="c.sock")
    try:
        third.api.put("/logger", {"log_path": str(workdir / "fc.log")})
        third.api.put("/snapshot/load", load)
        assert third.api.instance_info()["state"] == "Running"
        assert third.api.vm_config()["machine-config"]["mem_size_mib"] == 128
    finally:
        third.proc.kill()
        third.proc.wait()
