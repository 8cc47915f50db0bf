"""Every Firecracker request body vmm can build, validated against the official v1.11 spec.

The spec (tests/data/firecracker/v1.11.0/firecracker.yaml, in the repository) is turned into
JSON Schema with ``additionalProperties: false`` on every object, like Firecracker's
``deny_unknown_fields``. A missing spec is a failure, not a skip: without it nothing here
would prove anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))  # tests/fakes is not a package: the fake runs as a script

import fc_spec  # noqa: E402

from vmm.engines.base import BootSpec, Drive, Nic, RunPaths  # noqa: E402
from vmm.engines.firecracker import bodies  # noqa: E402
from vmm.engines.firecracker.bodies import ApiRequest  # noqa: E402
from vmm.errors import ValidationError  # noqa: E402

pytestmark = pytest.mark.unit

VM = Path("/var/lib/vmm/vms/dev1")
CMDLINE = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp"


@pytest.fixture(scope="module")
def validator() -> fc_spec.SpecValidator:
    try:
        spec = fc_spec.load_spec()
    except fc_spec.SpecMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return fc_spec.SpecValidator(spec)


def paths(vm: Path = VM) -> RunPaths:
    return RunPaths(
        vm_dir=vm,
        console_log=vm / "console.log",
        api_socket=vm / "api.sock",
        console_socket=vm / "console.sock",
        engine_log=vm / "firecracker.log",
    )


def make_spec(**overrides: Any) -> BootSpec:
    fields: dict[str, Any] = {
        "vm_id": "dev1-0a1b2c",
        "name": "dev1",
        "kernel": Path("/var/lib/vmm/images/kernels/vmlinux-6.1"),
        "cmdline": CMDLINE,
        "cpus": 2,
        "memory_mb": 1024,
        "paths": paths(),
        "drives": (Drive("rootfs", VM / "rootfs.ext4", root=True),),
    }
    fields.update(overrides)
    return BootSpec(**fields)


ROOT = Drive("rootfs", VM / "rootfs.ext4", root=True)
ROOT_RO = Drive("rootfs", VM / "rootfs.ext4", root=True, read_only=True)
DATA = Drive("data_1", Path("/var/lib/vmm/mounts/dev1-src.ext4"))
DATA_RO = Drive("cache_2", Path("/var/lib/vmm/mounts/dev1-cache.ext4"), read_only=True)
NIC = Nic("eth0", "vmm-0a1b2c", "06:00:AC:10:00:02")
NIC_NO_MAC = Nic("eth1", "vmm-0a1b2d", "")

# Every optional variant the builders can produce.
SPECS = {
    "minimal": make_spec(),
    "initrd": make_spec(initrd=Path("/var/lib/vmm/images/kernels/initrd.img")),
    "read-only-root": make_spec(drives=(ROOT_RO,)),
    "data-drives": make_spec(drives=(DATA, ROOT, DATA_RO)),
    "nic-with-mac": make_spec(nics=(NIC,)),
    "nic-without-mac": make_spec(nics=(NIC_NO_MAC,)),
    "everything": make_spec(
        initrd=Path("/boot/initrd.img"), drives=(ROOT_RO, DATA, DATA_RO), nics=(NIC, NIC_NO_MAC)
    ),
    "initrd-only": make_spec(drives=(), cmdline=CMDLINE + " root=/dev/ram0"),
    "max-vcpus": make_spec(cpus=32, memory_mb=1),
}


def all_requests() -> Iterator[tuple[str, ApiRequest]]:
    for name, spec in SPECS.items():
        for i, req in enumerate(bodies.boot_requests(spec)):
            yield f"{name}-{i}-{req.method}{req.path}", req
    for level in ("Error", "Warning", "Info", "Debug", "Trace", "Off"):
        yield f"logger-{level}", bodies.logger_request(VM / "fc.log", level=level)
    yield (
        "logger-plain",
        ApiRequest(
            "PUT",
            "/logger",
            bodies.logger_body(VM / "fc.log", show_level=False, show_log_origin=True),
        ),
    )
    yield (
        "machine-smt",
        ApiRequest(
            "PUT",
            "/machine-config",
            bodies.machine_config_body(
                vcpu_count=4, mem_size_mib=512, smt=True, track_dirty_pages=True
            ),
        ),
    )
    yield "instance-start", bodies.instance_start_request()
    yield "send-ctrl-alt-del", bodies.send_ctrl_alt_del_request()


REQUESTS = dict(all_requests())


@pytest.mark.parametrize("req", REQUESTS.values(), ids=REQUESTS.keys())
def test_body_conforms_to_spec(validator: fc_spec.SpecValidator, req: ApiRequest) -> None:
    definition = validator.body_definition(req.method, req.path)
    errors = [fc_spec.describe_error(e) for e in validator.errors(definition, req.body)]
    assert errors == [], f"{req.method} {req.path} violates {definition}: {errors}"


@pytest.mark.parametrize("req", REQUESTS.values(), ids=REQUESTS.keys())
def test_request_shape(validator: fc_spec.SpecValidator, req: ApiRequest) -> None:
    assert req.method in ("PUT", "PATCH")
    assert req.body, "Firecracker answers an empty PUT with 400 'Empty PUT request.'"
    assert all(v is not None for v in req.body.values()), "vmm never sends null"
    _, params, _ = validator.operation(req.method, req.path)
    for param, value in params.items():
        # The path id must equal the body id, and follow Firecracker's resource-id rule.
        assert req.body[param] == value
        assert fc_spec.API_ID_RE.fullmatch(value)


def test_every_builder_is_covered(validator: fc_spec.SpecValidator) -> None:
    used = {validator.body_definition(r.method, r.path) for r in REQUESTS.values()}
    assert used == {
        "Logger",
        "MachineConfiguration",
        "BootSource",
        "Drive",
        "NetworkInterface",
        "InstanceActionInfo",
    }
    actions = {r.body["action_type"] for r in REQUESTS.values() if r.path == "/actions"}
    assert actions == {"InstanceStart", "SendCtrlAltDel"}
    drives = [r.body for r in REQUESTS.values() if r.path.startswith("/drives/")]
    assert {(d["is_root_device"], d["is_read_only"]) for d in drives} == {
        (True, False),
        (True, True),
        (False, False),
        (False, True),
    }
    assert any("initrd_path" in r.body for r in REQUESTS.values())
    assert any("guest_mac" in r.body for r in REQUESTS.values())


# -- the validator itself must be able to fail ----------------------------------------------------

GOOD_DRIVE = {"drive_id": "rootfs", "path_on_host": "/x.ext4", "is_root_device": True}


def test_validator_rejects_unknown_property(validator: fc_spec.SpecValidator) -> None:
    assert validator.errors("Drive", GOOD_DRIVE) == []
    errors = validator.errors("Drive", {**GOOD_DRIVE, "direct_write": True})
    assert [e.validator for e in errors] == ["additionalProperties"]
    assert "unknown field `direct_write`" in fc_spec.describe_error(errors[0])


def test_validator_closes_nested_objects(validator: fc_spec.SpecValidator) -> None:
    limiter = {"bandwidth": {"size": 1, "refill_time": 100, "burst": 5}}
    errors = validator.errors("Drive", {**GOOD_DRIVE, "rate_limiter": limiter})
    assert [list(e.absolute_path) for e in errors] == [["rate_limiter", "bandwidth"]]


def test_validator_rejects_missing_required_wrong_type_and_enum(
    validator: fc_spec.SpecValidator,
) -> None:
    assert validator.errors("Drive", {"drive_id": "x"})
    assert validator.errors("MachineConfiguration", {"vcpu_count": "2", "mem_size_mib": 128})
    assert validator.errors("MachineConfiguration", {"vcpu_count": 33, "mem_size_mib": 128})
    assert validator.errors("InstanceActionInfo", {"action_type": "Reboot"})
    assert validator.errors("BootSource", {"kernel_image_path": "/k", "initrd_path": None})


def test_every_closed_definition_forbids_extra_properties(
    validator: fc_spec.SpecValidator,
) -> None:
    for name, schema in validator.definitions.items():
        if "properties" in schema:
            assert schema["additionalProperties"] is False, name
    # Free-form by design: the MMDS store.
    assert "additionalProperties" not in validator.definitions["MmdsContentsObject"]


def test_spec_is_read_as_yaml_1_2(validator: fc_spec.SpecValidator) -> None:
    # YAML 1.1 (PyYAML's default) would read the level `Off` as the boolean False.
    assert "Off" in validator.definitions["Logger"]["properties"]["level"]["enum"]
    assert "None" in validator.definitions["CpuTemplate"]["enum"]


def test_paths_come_from_the_spec(validator: fc_spec.SpecValidator) -> None:
    assert validator.body_definition("PUT", "/drives/rootfs") == "Drive"
    assert validator.body_definition("PATCH", "/drives/rootfs") == "PartialDrive"
    with pytest.raises(KeyError):
        validator.body_definition("PUT", "/drive/rootfs")
    with pytest.raises(KeyError):
        validator.body_definition("POST", "/actions")


# -- ordering and exact bodies --------------------------------------------------------------------


def test_boot_sequence_order() -> None:
    reqs = bodies.boot_requests(SPECS["everything"])
    assert [r.path for r in reqs] == [
        "/logger",
        "/machine-config",
        "/boot-source",
        "/drives/rootfs",  # root first (it becomes /dev/vda) although given in this order too
        "/drives/data_1",
        "/drives/cache_2",
        "/network-interfaces/eth0",
        "/network-interfaces/eth1",
        "/actions",
    ]
    reqs = bodies.boot_requests(SPECS["data-drives"])
    assert [r.path for r in reqs if r.path.startswith("/drives/")] == [
        "/drives/rootfs",
        "/drives/data_1",
        "/drives/cache_2",
    ]
    assert reqs[-1].body == {"action_type": "InstanceStart"}
    assert reqs[0].body["log_path"] == str(VM / "firecracker.log")


def test_bodies_match_the_documented_examples() -> None:
    """docs/firecracker.md, Boot sequence: each body as the table there describes it."""
    assert bodies.logger_body(Path("/var/lib/vmm/vms/NAME/firecracker.log")) == {
        "log_path": "/var/lib/vmm/vms/NAME/firecracker.log",
        "level": "Info",
        "show_level": True,
        "show_log_origin": False,
    }
    assert bodies.machine_config_body(vcpu_count=2, mem_size_mib=1024) == {
        "vcpu_count": 2,
        "mem_size_mib": 1024,
        "smt": False,
        "track_dirty_pages": False,
    }
    assert bodies.boot_source_body(Path("/abs/vmlinux"), "console=ttyS0 reboot=k panic=1") == {
        "kernel_image_path": "/abs/vmlinux",
        "boot_args": "console=ttyS0 reboot=k panic=1",
    }
    assert bodies.boot_source_body(Path("/k"), "x", Path("/i"))["initrd_path"] == "/i"
    assert bodies.drive_body(Drive("rootfs", Path("/abs/rootfs.ext4"), root=True)) == {
        "drive_id": "rootfs",
        "path_on_host": "/abs/rootfs.ext4",
        "is_root_device": True,
        "is_read_only": False,
        "cache_type": "Writeback",
    }
    assert bodies.drive_body(Drive("data_1", Path("/abs/data.ext4"))) == {
        "drive_id": "data_1",
        "path_on_host": "/abs/data.ext4",
        "is_root_device": False,
        "is_read_only": False,
        "cache_type": "Writeback",
    }
    assert bodies.network_interface_body(Nic("eth0", "vmtap0", "06:00:AC:10:00:02")) == {
        "iface_id": "eth0",
        "host_dev_name": "vmtap0",
        "guest_mac": "06:00:AC:10:00:02",
    }
    assert bodies.action_body("InstanceStart") == {"action_type": "InstanceStart"}
    assert bodies.action_body("SendCtrlAltDel") == {"action_type": "SendCtrlAltDel"}


# -- rules checked before anything is spawned -----------------------------------------------------


def test_id_rules_match_firecracker() -> None:
    assert bodies.INSTANCE_ID_RE.pattern == fc_spec.INSTANCE_ID_RE.pattern
    assert bodies.RESOURCE_ID_RE.pattern == fc_spec.API_ID_RE.pattern


@pytest.mark.parametrize("vm_id", ["a", "dev-1", "A" * 64, "0-9-x"])
def test_valid_instance_ids(vm_id: str) -> None:
    assert bodies.validate_instance_id(vm_id) == vm_id


@pytest.mark.parametrize("vm_id", ["", "dev_1", "A" * 65, "dev 1", "dév", "a/b"])
def test_invalid_instance_ids(vm_id: str) -> None:
    with pytest.raises(ValidationError, match="instance id"):
        bodies.boot_requests(make_spec(vm_id=vm_id))


@pytest.mark.parametrize("drive_id", ["root-fs", "", "a b", "a/b", "a.b"])
def test_invalid_drive_ids(drive_id: str) -> None:
    with pytest.raises(ValidationError, match="drive_id"):
        bodies.boot_requests(make_spec(drives=(Drive(drive_id, VM / "r.ext4", root=True),)))


@pytest.mark.parametrize("iface_id", ["eth-0", "", "eth 0"])
def test_invalid_iface_ids(iface_id: str) -> None:
    with pytest.raises(ValidationError, match="iface_id"):
        bodies.boot_requests(make_spec(nics=(Nic(iface_id, "tap0", "06:00:00:00:00:01"),)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drives": (ROOT, ROOT_RO)}, "duplicate Firecracker drive_id|more than one root"),
        ({"drives": (ROOT, Drive("other", VM / "o.ext4", root=True))}, "more than one root"),
        ({"drives": (ROOT, DATA, DATA)}, "duplicate Firecracker drive_id"),
        ({"nics": (NIC, NIC)}, "duplicate Firecracker iface_id"),
        ({"cmdline": CMDLINE + " root=/dev/vdb"}, "must not set root="),
        ({"cmdline": "console=ttyS0\nquiet"}, "printable ASCII"),
        ({"cpus": 0}, "1 to 32 vCPUs"),
        ({"cpus": 33}, "1 to 32 vCPUs"),
        ({"memory_mb": 0}, "memory size"),
        ({"kernel": Path("vmlinux")}, "absolute path"),
        ({"initrd": Path("initrd.img")}, "absolute path"),
        ({"drives": (Drive("rootfs", Path("rootfs.ext4"), root=True),)}, "absolute path"),
        ({"paths": paths(Path("vms/dev1"))}, "absolute path"),
        ({"nics": (Nic("eth0", "vmm-0123456789abcdef", ""),)}, "TAP device name"),
        ({"nics": (Nic("eth0", "", ""),)}, "TAP device name"),
        ({"nics": (Nic("eth0", "tap0", "06:00:AC:10:00"),)}, "MAC address"),
        ({"nics": (Nic("eth0", "tap0", "06-00-AC-10-00-02"),)}, "MAC address"),
    ],
)
def test_bad_specs_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        bodies.boot_requests(make_spec(**overrides))


def test_smt_needs_an_even_vcpu_count() -> None:
    with pytest.raises(ValidationError, match="SMT"):
        bodies.machine_config_body(vcpu_count=3, mem_size_mib=128, smt=True)
    assert bodies.machine_config_body(vcpu_count=1, mem_size_mib=128, smt=True)["smt"] is True


def test_root_arg_allowed_without_root_drive() -> None:
    reqs = bodies.boot_requests(SPECS["initrd-only"])
    assert not any(r.path.startswith("/drives/") for r in reqs)


def test_cmdline_limit_counts_what_firecracker_appends() -> None:
    devices = 3  # root + data drive + NIC
    appended = len(" root=/dev/vda rw") + devices * len(" virtio_mmio.device=4K@0xd0000000:10")
    fits = "x" * (bodies.CMDLINE_MAX_SIZE - 1 - appended)
    spec = make_spec(cmdline=fits, drives=(ROOT, DATA), nics=(NIC,))
    assert bodies.boot_requests(spec)[2].body["boot_args"] == fits
    with pytest.raises(ValidationError, match="too long"):
        bodies.boot_requests(make_spec(cmdline=fits + "x", drives=(ROOT, DATA), nics=(NIC,)))
