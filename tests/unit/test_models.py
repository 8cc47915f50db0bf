from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.errors import NotFoundError, RecordError, ValidationError
from vmm.models import VM, new_vm_id, validate_cpus, validate_disk, validate_memory, validate_name
from vmm.store import Store

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["dev", "a", "web-1", "0abc", "x" * 63])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-dev", "Dev", "dev/x", "..", "../etc", "my vm", "x" * 64, "dev_1", "dév", "dev\n"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        validate_name(name)


def test_limits() -> None:
    for bad in (0, -1, 33):
        with pytest.raises(ValidationError):
            validate_cpus(bad)
    with pytest.raises(ValidationError):
        validate_memory(64)
    with pytest.raises(ValidationError):
        validate_disk(10)
    assert validate_memory(128) == 128


def test_ids_are_8_hex_and_distinct() -> None:
    ids = {new_vm_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 8 and int(i, 16) >= 0 for i in ids)


def make_vm(name: str = "dev", ip: str = "172.16.0.2") -> VM:
    return VM(name=name, id="abcd1234", ip=ip, mac="06:00:AC:10:00:02", tap="vmm-abcd1234",
              created_at="2026-01-01T00:00:00+00:00", dns_servers=["8.8.8.8"])


def test_record_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_dirs()
    vm = make_vm()
    store.save(vm)
    assert store.load("dev") == vm
    mode = store.record_path("dev").stat().st_mode & 0o777
    assert mode == 0o644  # readable by non-root users (vmm list)
    assert not [p for p in store.vms_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_corrupt_record_does_not_hide_the_others(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_dirs()
    store.save(make_vm("good"))
    store.record_path("bad").write_text("{ truncated")
    (store.vms_dir / "wrongtype.json").write_text(json.dumps({**make_vm("wrongtype").to_dict(), "cpus": "x"}))
    (store.vms_dir / "future.json").write_text(json.dumps({**make_vm("future").to_dict(), "schema_version": 99}))
    (store.vms_dir / "extra.json").write_text(json.dumps({**make_vm("extra").to_dict(), "bogus": 1}))
    vms, problems = store.load_all()
    assert [v.name for v in vms] == ["good"]
    by_name = {p.name: p.error for p in problems}
    assert set(by_name) == {"bad", "wrongtype", "future", "extra"}
    assert "corrupt" in by_name["bad"]
    assert "$.cpus" in by_name["wrongtype"]
    assert "schema version 99" in by_name["future"]
    assert "$.bogus" in by_name["extra"]


def test_record_name_mismatch(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_dirs()
    (store.vms_dir / "a.json").write_text(json.dumps(make_vm("b").to_dict()))
    with pytest.raises(RecordError):
        store.load("a")


def test_missing_record(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Store(tmp_path).load("nope")
