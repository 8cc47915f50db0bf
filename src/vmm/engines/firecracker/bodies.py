"""Every request body vmm sends to Firecracker v1.11, built by pure functions.

Nothing here touches the host: the engine applies the ``ApiRequest`` list that
``boot_requests`` returns, and the unit tests validate each body against the official spec
(``tests/data/firecracker/v1.11.0/firecracker.yaml``). Rules Firecracker enforces only at run
time are checked here first, so a bad spec fails before a process is spawned (see
docs/firecracker.md, Identifiers, API conventions and Boot sequence):

- every config struct is ``deny_unknown_fields``: the builders emit only spec properties and
  never ``null``;
- API resource ids (``drive_id``, ``iface_id``) are ``[A-Za-z0-9_]+`` and the path id equals
  the body id; the process ``--id`` is ``[A-Za-z0-9-]{1,64}`` (the two rules point in opposite
  directions: a hyphen is fine in one and fatal in the other);
- one root drive, sent first so it becomes ``/dev/vda``; Firecracker appends
  ``root=/dev/vda rw|ro`` itself, so the caller's command line must not carry ``root=``;
- the x86_64 command line, including what Firecracker appends, fits in 2048 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from vmm.engines.base import BootSpec, Drive, Nic
from vmm.errors import ValidationError
from vmm.record import FrozenRecord

TYPE_CHECKING = False  # typing costs every start ~2 ms: the aliases exist for mypy only
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias

    Json: TypeAlias = dict[str, Any]
    ActionType: TypeAlias = Literal["InstanceStart", "SendCtrlAltDel"]
    VmState: TypeAlias = Literal["Paused", "Resumed"]
    LogLevel: TypeAlias = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]

INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
RESOURCE_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
TAP_NAME_MAX = 15  # IFNAMSIZ - 1
MAX_VCPUS = 32

CMDLINE_MAX_SIZE = 2048  # x86_64 arch/layout.rs, including the terminating NUL
# What Firecracker appends to boot_args: " root=/dev/vda rw" for the root drive and one
# " virtio_mmio.device=4K@0xd0001000:6" per virtio device (two-digit IRQs from the 6th on).
_ROOT_ARG_LEN = len(" root=/dev/vda rw")
_MMIO_ARG_LEN = len(" virtio_mmio.device=4K@0xd0000000:10")


class ApiRequest(FrozenRecord):
    """One API call: method, path and JSON body (never empty: Firecracker refuses that)."""

    method: Literal["PUT", "PATCH"]
    path: str
    body: Json


def _same_path(path: Path) -> Path:
    return path


# -- validation ---------------------------------------------------------------------------------


def validate_instance_id(vm_id: str) -> str:
    """The process ``--id``: Firecracker panics at startup on anything else (an ``_`` too)."""
    if not INSTANCE_ID_RE.fullmatch(vm_id):
        raise ValidationError(
            f"invalid Firecracker instance id {vm_id!r}",
            hint="use 1-64 letters, digits and '-' (no '_')",
        )
    return vm_id


def validate_resource_id(kind: str, value: str) -> str:
    """A ``drive_id`` or ``iface_id``: letters, digits and ``_`` only (no ``-``)."""
    if not RESOURCE_ID_RE.fullmatch(value):
        raise ValidationError(
            f"invalid Firecracker {kind} {value!r}",
            hint="use letters, digits and '_' only (Firecracker rejects '-')",
        )
    return value


def _absolute(what: str, path: Path) -> str:
    # Firecracker would resolve a relative path against its own working directory.
    if not path.is_absolute():
        raise ValidationError(f"{what} must be an absolute path: {path}")
    return str(path)


def _unique(kind: str, ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in ids:
        if value in seen:
            raise ValidationError(f"duplicate Firecracker {kind} {value!r}")
        seen.add(value)


def ordered_drives(drives: Sequence[Drive]) -> tuple[Drive, ...]:
    """The drives in attach order: the root drive first (it becomes /dev/vda), then the rest
    in the order given (vdb, vdc, ...)."""
    roots = [d for d in drives if d.root]
    if len(roots) > 1:
        raise ValidationError(
            "more than one root drive: " + ", ".join(d.drive_id for d in roots),
            hint="Firecracker accepts a single root block device",
        )
    _unique("drive_id", (d.drive_id for d in drives))
    return tuple(roots) + tuple(d for d in drives if not d.root)


def check_cmdline(cmdline: str, *, root_drive: bool, virtio_devices: int) -> str:
    """Check ``boot_args`` against what Firecracker will do with them."""
    if any(not (" " <= c <= "~") for c in cmdline):
        raise ValidationError("the kernel command line may only contain printable ASCII characters")
    if root_drive and any(tok.startswith("root=") for tok in cmdline.split()):
        raise ValidationError(
            "the kernel command line must not set root= when a root drive is attached",
            hint="Firecracker appends root=/dev/vda rw (or ro) for the root drive itself",
        )
    total = len(cmdline) + (_ROOT_ARG_LEN if root_drive else 0) + virtio_devices * _MMIO_ARG_LEN
    if total >= CMDLINE_MAX_SIZE:
        raise ValidationError(
            f"the kernel command line is too long ({total} of {CMDLINE_MAX_SIZE - 1} bytes "
            "with what Firecracker appends)"
        )
    return cmdline


# -- bodies -------------------------------------------------------------------------------------


def logger_body(
    log_path: Path,
    *,
    level: LogLevel = "Info",
    show_level: bool = True,
    show_log_origin: bool = False,
) -> Json:
    """``PUT /logger``. In v1.11 the file must already exist (the engine creates it)."""
    return {
        "log_path": _absolute("the Firecracker log", log_path),
        "level": level,
        "show_level": show_level,
        "show_log_origin": show_log_origin,
    }


def machine_config_body(
    *, vcpu_count: int, mem_size_mib: int, smt: bool = False, track_dirty_pages: bool = False
) -> Json:
    """``PUT /machine-config``; a PUT resets omitted fields, so all four are sent."""
    if not 1 <= vcpu_count <= MAX_VCPUS:
        raise ValidationError(f"Firecracker supports 1 to {MAX_VCPUS} vCPUs, not {vcpu_count}")
    if smt and vcpu_count > 1 and vcpu_count % 2:
        raise ValidationError("with SMT the vCPU count must be 1 or even")
    if mem_size_mib <= 0:
        raise ValidationError(f"invalid memory size: {mem_size_mib} MiB")
    return {
        "vcpu_count": vcpu_count,
        "mem_size_mib": mem_size_mib,
        "smt": smt,
        "track_dirty_pages": track_dirty_pages,
    }


def boot_source_body(kernel: Path, boot_args: str, initrd: Path | None = None) -> Json:
    """``PUT /boot-source``. ``boot_args`` is always sent: Firecracker's default has no console."""
    body: Json = {
        "kernel_image_path": _absolute("the kernel", kernel),
        "boot_args": boot_args,
    }
    if initrd is not None:
        body["initrd_path"] = _absolute("the initrd", initrd)
    return body


def drive_body(drive: Drive) -> Json:
    """``PUT /drives/{drive_id}``.

    Every drive gets ``cache_type: Writeback``: the default ``Unsafe`` does not advertise
    VIRTIO_BLK_F_FLUSH, so a guest's fsync would never reach the host disk — and the root
    disk holds the developer's work as much as any data drive does.
    """
    body: Json = {
        "drive_id": validate_resource_id("drive_id", drive.drive_id),
        "path_on_host": _absolute(f"drive {drive.drive_id}", drive.path),
        "is_root_device": drive.root,
        "is_read_only": drive.read_only,
        "cache_type": "Writeback",
    }
    return body


def network_interface_body(nic: Nic) -> Json:
    """``PUT /network-interfaces/{iface_id}``: an existing TAP (Firecracker would create a
    missing one but leave it down). An empty ``mac`` lets the guest pick a random one."""
    tap = nic.tap
    if not tap or len(tap.encode()) > TAP_NAME_MAX or "/" in tap or any(c.isspace() for c in tap):
        raise ValidationError(f"invalid TAP device name {tap!r} (1-{TAP_NAME_MAX} characters)")
    body: Json = {
        "iface_id": validate_resource_id("iface_id", nic.iface_id),
        "host_dev_name": tap,
    }
    if nic.mac:
        if not MAC_RE.fullmatch(nic.mac):
            raise ValidationError(f"invalid MAC address {nic.mac!r}")
        body["guest_mac"] = nic.mac
    return body


def action_body(action_type: ActionType) -> Json:
    """``PUT /actions``."""
    return {"action_type": action_type}


# -- requests -----------------------------------------------------------------------------------


def logger_request(log_path: Path, *, level: LogLevel = "Info") -> ApiRequest:
    return ApiRequest("PUT", "/logger", logger_body(log_path, level=level))


def machine_config_request(*, vcpu_count: int, mem_size_mib: int) -> ApiRequest:
    body = machine_config_body(vcpu_count=vcpu_count, mem_size_mib=mem_size_mib)
    return ApiRequest("PUT", "/machine-config", body)


def boot_source_request(kernel: Path, boot_args: str, initrd: Path | None = None) -> ApiRequest:
    return ApiRequest("PUT", "/boot-source", boot_source_body(kernel, boot_args, initrd))


def drive_request(drive: Drive) -> ApiRequest:
    body = drive_body(drive)
    return ApiRequest("PUT", f"/drives/{body['drive_id']}", body)


def network_interface_request(nic: Nic) -> ApiRequest:
    body = network_interface_body(nic)
    return ApiRequest("PUT", f"/network-interfaces/{body['iface_id']}", body)


def instance_start_request() -> ApiRequest:
    return ApiRequest("PUT", "/actions", action_body("InstanceStart"))


def send_ctrl_alt_del_request() -> ApiRequest:
    """Graceful shutdown on x86_64: the guest reboots (``reboot=k``) and Firecracker exits 0."""
    return ApiRequest("PUT", "/actions", action_body("SendCtrlAltDel"))


def vm_state_request(state: VmState) -> ApiRequest:
    """``PATCH /vm``: pause or resume a started VM (post-boot only)."""
    return ApiRequest("PATCH", "/vm", {"state": state})


def snapshot_create_request(snapshot_path: Path, mem_file_path: Path) -> ApiRequest:
    """``PUT /snapshot/create`` of a paused VM: a Full snapshot (the microVM state and the whole
    guest memory); the disks are not part of it (docs/firecracker.md, Snapshots)."""
    return ApiRequest("PUT", "/snapshot/create", {
        "snapshot_type": "Full",
        "snapshot_path": _absolute("the snapshot file", snapshot_path),
        "mem_file_path": _absolute("the memory file", mem_file_path),
    })  # fmt: skip


def snapshot_load_request(snapshot_path: Path, mem_file_path: Path) -> ApiRequest:
    """``PUT /snapshot/load`` on a fresh process, before any configuration but the logger:
    the memory file mapped (``File`` backend, never written), the VM resumed at once."""
    return ApiRequest("PUT", "/snapshot/load", {
        "snapshot_path": _absolute("the snapshot file", snapshot_path),
        "mem_backend": {
            "backend_type": "File",
            "backend_path": _absolute("the memory file", mem_file_path),
        },
        "resume_vm": True,
    })  # fmt: skip


def restore_requests(
    spec: BootSpec,
    snapshot_path: Path,
    mem_file_path: Path,
    *,
    log_level: LogLevel = "Info",
    expose: Callable[[Path], Path] = _same_path,
) -> list[ApiRequest]:
    """The whole sequence of a restore: the logger (the one thing allowed before a load), then
    the load. Drives, TAPs and machine come from the snapshot: the same paths and TAP names
    must exist (``network_overrides`` is 1.12's)."""
    validate_instance_id(spec.vm_id)
    return [
        logger_request(expose(spec.paths.engine_log), level=log_level),
        snapshot_load_request(expose(snapshot_path), expose(mem_file_path)),
    ]


def boot_requests(
    spec: BootSpec,
    *,
    log_level: LogLevel = "Info",
    expose: Callable[[Path], Path] = _same_path,
) -> list[ApiRequest]:
    """The whole pre-boot sequence for ``spec``, ending with InstanceStart.

    Order as in Firecracker's docs and Go SDK: logger first (so the rest is logged), machine,
    boot source, drives (root first), NICs, start. Every host path (log, kernel, initrd,
    drives) is sent as ``expose`` maps it: the path the process sees (``Jail.expose``).
    """
    validate_instance_id(spec.vm_id)
    drives = ordered_drives(spec.drives)
    _unique("iface_id", (n.iface_id for n in spec.nics))
    check_cmdline(
        spec.cmdline,
        root_drive=any(d.root for d in drives),
        virtio_devices=len(drives) + len(spec.nics),
    )
    initrd = None if spec.initrd is None else expose(spec.initrd)
    return [
        logger_request(expose(spec.paths.engine_log), level=log_level),
        machine_config_request(vcpu_count=spec.cpus, mem_size_mib=spec.memory_mb),
        boot_source_request(expose(spec.kernel), spec.cmdline, initrd),
        *(drive_request(d.replace(path=expose(d.path))) for d in drives),
        *(network_interface_request(n) for n in spec.nics),
        instance_start_request(),
    ]
