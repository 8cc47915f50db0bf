"""The engines' snapshot pieces without a hypervisor: Firecracker's snapshot bodies validated
against the official v1.11 spec (strictly: every object closed, as ``deny_unknown_fields``),
the restore sequence (logger, then the load, nothing else), QEMU's restore command line (the
boot's, plus ``-incoming defer``) and its migration URIs, and the registry's capability."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))  # tests/fakes is not a package: the fake runs as a script

import fc_spec  # noqa: E402

from vmm.engines import registry  # noqa: E402
from vmm.engines.base import BootSpec, Drive, Nic, RunPaths  # noqa: E402
from vmm.engines.firecracker import bodies  # noqa: E402
from vmm.engines.qemu import migrate  # noqa: E402
from vmm.engines.qemu.engine import QemuEngine  # noqa: E402
from vmm.errors import NotFoundError, ValidationError  # noqa: E402
from vmm.services.clones import debugfs_entries  # noqa: E402

pytestmark = pytest.mark.unit

VM = Path("/var/lib/vmm/vms/dev")


@pytest.fixture(scope="module")
def validator() -> fc_spec.SpecValidator:
    return fc_spec.SpecValidator(fc_spec.load_spec())


def spec(vm_dir: Path = VM, **overrides: Any) -> BootSpec:
    paths = RunPaths(vm_dir=vm_dir, console_log=vm_dir / "console.log", api_socket=vm_dir / "api.sock",
                     console_socket=vm_dir / "console.sock", engine_log=vm_dir / "engine.log")
    fields: dict[str, Any] = {
        "vm_id": "vmm-0a1b2c3d", "name": "dev", "kernel": vm_dir / "vmlinux",
        "cmdline": "console=ttyS0 reboot=k", "cpus": 1, "memory_mb": 256, "paths": paths,
        "drives": (Drive("rootfs", vm_dir / "rootfs.ext4", root=True),),
        "nics": (Nic("eth0", "vmm-0a1b2c3d", "06:00:ac:10:00:02"),), "accel": "tcg",
    }  # fmt: skip
    fields.update(overrides)
    return BootSpec(**fields)


def conforms(validator: fc_spec.SpecValidator, req: bodies.ApiRequest) -> str:
    definition = validator.body_definition(req.method, req.path)
    errors = [fc_spec.describe_error(e) for e in validator.errors(definition, req.body)]
    assert errors == [], f"{req.method} {req.path} violates {definition}: {errors}"
    return definition


def test_snapshot_bodies_conform_to_the_spec(validator: fc_spec.SpecValidator) -> None:
    assert conforms(validator, bodies.vm_state_request("Paused")) == "Vm"
    assert conforms(validator, bodies.vm_state_request("Resumed")) == "Vm"
    create = bodies.snapshot_create_request(VM / "vmstate", VM / "memory")
    assert conforms(validator, create) == "SnapshotCreateParams"
    assert create.body == {"snapshot_type": "Full", "snapshot_path": f"{VM}/vmstate",
                           "mem_file_path": f"{VM}/memory"}
    load = bodies.snapshot_load_request(VM / "vmstate", VM / "memory")
    assert conforms(validator, load) == "SnapshotLoadParams"
    assert load.body["mem_backend"] == {"backend_type": "File", "backend_path": f"{VM}/memory"}
    assert load.body["resume_vm"] is True and "mem_file_path" not in load.body  # deprecated


def test_the_validator_would_catch_a_1_12_field(validator: fc_spec.SpecValidator) -> None:
    """network_overrides came in 1.12: 1.11 answers 400, and so must the spec check."""
    body = {**bodies.snapshot_load_request(VM / "s", VM / "m").body, "network_overrides": []}
    assert validator.errors("SnapshotLoadParams", body)


def test_restore_sends_the_logger_then_the_load_and_nothing_else(validator: fc_spec.SpecValidator) -> None:
    reqs = bodies.restore_requests(spec(), VM / "vmstate", VM / "memory")
    assert [(r.method, r.path) for r in reqs] == [("PUT", "/logger"), ("PUT", "/snapshot/load")]
    for r in reqs:
        conforms(validator, r)


def test_restore_paths_go_through_the_jail_and_must_be_absolute() -> None:
    jailed = bodies.restore_requests(spec(), VM / "vmstate", VM / "memory",
                                     expose=lambda p: Path("/jail") / p.name)
    assert jailed[1].body["snapshot_path"] == "/jail/vmstate"
    assert jailed[1].body["mem_backend"]["backend_path"] == "/jail/memory"
    with pytest.raises(ValidationError, match="absolute"):
        bodies.snapshot_create_request(Path("vmstate"), VM / "memory")
    with pytest.raises(ValidationError, match="instance id"):
        bodies.restore_requests(spec(vm_id="bad_id"), VM / "vmstate", VM / "memory")


def test_both_engines_can_snapshot() -> None:
    assert all(registry.info(n).can(registry.SNAPSHOT) for n in registry.names())


def test_qemu_migration_uris_quote_the_path() -> None:
    odd = Path("/data dir/it's/vmstate")
    assert migrate.outgoing_uri(odd) == "exec:cp --sparse=always /dev/stdin '/data dir/it'\"'\"'s/vmstate'"
    assert migrate.incoming_uri(odd) == "exec:cat '/data dir/it'\"'\"'s/vmstate'"


def qemu(tmp_path: Path) -> tuple[QemuEngine, BootSpec]:
    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"\0")
    engine = QemuEngine(sys.executable, resolve=lambda a: ("tcg", "test"), tsc_khz=lambda: 1000,
                        tap_exists=lambda _t: True)
    return engine, spec(tmp_path)


def test_qemu_restore_is_the_boot_command_line_plus_incoming_defer(tmp_path: Path) -> None:
    engine, s = qemu(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "vmstate").write_bytes(b"QEVM")
    boot = engine._prepare(s)
    restore = engine._prepare_restore(s, state)
    assert restore.argv == [*boot.argv, "-incoming", "defer"]
    assert restore.restore_from == state and boot.restore_from is None
    assert engine.state_files == ("vmstate",)


def test_qemu_restore_without_a_state_file_spawns_nothing(tmp_path: Path) -> None:
    engine, s = qemu(tmp_path)
    with pytest.raises(NotFoundError, match="saved VM state"):
        engine._prepare_restore(s, tmp_path / "nowhere")


def test_debugfs_listing_is_parsed() -> None:
    listing = (
        "/12/040755/0/0/./\n/2/040755/0/0/../\n"
        "/131/100600/0/0/ssh_host_ed25519_key/411/\n/132/100644/0/0/ssh_host_ed25519_key.pub/93/\n"
        "/140/120777/0/0/machine-id/15/\n"
    )
    entries = debugfs_entries(listing)
    assert entries["ssh_host_ed25519_key"] == 0o100600
    assert entries["machine-id"] & 0o170000 == 0o120000
