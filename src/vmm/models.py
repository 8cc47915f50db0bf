"""The VM record and the validation of everything a user can type about a VM.

A record is decoded strictly at the boundary: unknown keys, missing keys and wrong types are
``RecordError``s naming the field, so a corrupt file is reported by name instead of crashing.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum

from vmm.errors import RecordError, ValidationError, json_field
from vmm.record import Record, field

TYPE_CHECKING = False  # typing costs read-only commands ~2 ms; mypy still sees the imports
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")

MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 1024 * 1024
MAX_CPUS = 32  # Firecracker's vcpu_count limit
MIN_DISK_MB = 64


class VMState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    # No process: its memory and device state are saved in vms/<name>/suspend/ and ``start``
    # resumes from there (vmm.services.snapshots).
    SUSPENDED = "suspended"


def validate_name(name: str, what: str = "VM") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {name!r}",
            hint="use 1-63 lower-case letters, digits and '-', starting with a letter or digit",
        )
    return name


def validate_cpus(cpus: int) -> int:
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise ValidationError(f"--cpus must be between 1 and {MAX_CPUS}, got {cpus}")
    return cpus


def validate_memory(memory_mb: int) -> int:
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise ValidationError(
            f"--memory must be at least {MIN_MEMORY_MB} MB, got {memory_mb}",
            hint="a Linux guest with systemd needs 256 MB or more",
        )
    if memory_mb > MAX_MEMORY_MB:
        raise ValidationError(f"--memory {memory_mb} MB is larger than {MAX_MEMORY_MB} MB")
    return memory_mb


def validate_disk(disk_mb: int) -> int:
    if isinstance(disk_mb, bool) or not isinstance(disk_mb, int) or disk_mb < MIN_DISK_MB:
        raise ValidationError(f"--disk must be at least {MIN_DISK_MB} MB, got {disk_mb}")
    return disk_mb


def validate_dns_servers(servers: list[str]) -> list[str]:
    import ipaddress

    out = []
    for s in servers:
        try:
            out.append(str(ipaddress.IPv4Address(s)))
        except ValueError:
            raise ValidationError(f"invalid DNS server {s!r}: expected an IPv4 address") from None
    if not out:
        raise ValidationError("at least one DNS server is needed")
    return out


def now() -> str:
    """The time a record notes (created, started, stopped): UTC, to the second, ISO 8601."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def new_vm_id() -> str:
    """8 hex characters from a UUID4: short enough for TAP names (``vmm-<id>``, 12 chars)."""
    import uuid

    return uuid.uuid4().hex[:8]


class Mount(Record):
    """A host directory mounted in the guest at ``/mnt/<tag>`` (see ``vmm.guest.mounts``)."""

    host_path: str
    tag: str
    read_only: bool = False
    image_path: str | None = None
    label: str | None = None  # the image's ext4 label; the guest's fstab finds it by this
    stamp: str | None = None  # the image's superblock stamp after the last build/sync/pull
    fingerprint: str | None = None  # digest of the image's contents at that time
    synced_at: str | None = None
    # Set while ``mount pull`` rewrites the host directory (the image's stamp): a pull that
    # was interrupted there may be run again without --force (the host dir differs by our own
    # half-done copy, and the guest's data is still whole in the image).
    pull_pending: str | None = None


class PortForward(Record):
    """A stored port forward: host [``host_addr``:]``host_port`` -> the VM's ``guest_port``.

    The guest address is not stored: it is the VM's own ``ip``. ``host_addr`` None means every
    address of the host (including 127.0.0.1). Parsed and checked by ``vmm.network.forwards``.
    """

    host_port: int
    guest_port: int
    proto: str = "tcp"
    host_addr: str | None = None

    @property
    def key(self) -> str:
        """How the user names it: ``8080/tcp``, or ``127.0.0.1:8080/tcp``."""
        host = f"{self.host_addr}:" if self.host_addr else ""
        return f"{host}{self.host_port}/{self.proto}"


class VM(Record):
    name: str
    id: str
    state: str = VMState.CREATED.value
    engine: str = "firecracker"
    accel: str = "auto"  # requested (QEMU); accel_in_use is what the running VM uses
    accel_in_use: str | None = None
    cpus: int = 1
    memory_mb: int = 512
    disk_mb: int = 1024
    image: str = "default"
    kernel: str = "default"
    ssh_key_path: str | None = None
    ssh_public_key: str | None = None
    dns_servers: list[str] = field(default_factory=list)
    ip: str = ""
    mac: str = ""
    tap: str = ""
    boot_args: str = ""  # extra kernel arguments
    mounts: list[Mount] = field(default_factory=list)
    port_forwards: list[PortForward] = field(default_factory=list)
    autostart: bool = False
    pid: int | None = None
    pid_start_time: int | None = None
    pid_boot_id: str | None = None  # the host boot the pid belongs to (pids restart at boot)
    rootfs_ready: bool = False
    created_at: str = ""
    started_at: str | None = None
    stopped_at: str | None = None
    last_error: str | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> VM:
        if not isinstance(raw, dict):
            raise RecordError(f"VM record {source} is not a JSON object")
        version = raw.get("schema_version")
        if not isinstance(version, int):
            raise RecordError(f"VM record {source}: missing or invalid schema_version")
        if version > SCHEMA_VERSION:
            raise RecordError(
                f"VM record {source} has schema version {version}; this vmm reads up to "
                f"{SCHEMA_VERSION}",
                hint="upgrade vmm",
            )
        known = set(cls.fields())
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise RecordError(f"VM record {source}: unknown field {json_field('$', unknown[0])}")
        for required in ("name", "id", "state", "ip"):
            if required not in raw:
                raise RecordError(f"VM record {source}: missing field $.{required}")
        data = dict(raw)
        _check_types(data, source)
        mounts = []
        for i, m in enumerate(data.get("mounts") or []):
            if not isinstance(m, dict) or set(m) - set(Mount.fields()):
                raise RecordError(f"VM record {source}: invalid $.mounts[{i}]")
            try:
                mount = Mount(**m)
            except TypeError:
                raise RecordError(f"VM record {source}: invalid $.mounts[{i}]") from None
            if not (
                isinstance(mount.host_path, str)
                and isinstance(mount.tag, str)
                and isinstance(mount.read_only, bool)
                and all(
                    isinstance(getattr(mount, k), (str, type(None)))
                    for k in ("image_path", "label", "stamp", "fingerprint", "synced_at", "pull_pending")
                )
            ):
                raise RecordError(f"VM record {source}: $.mounts[{i}] has a field of the wrong type")
            mounts.append(mount)
        data["mounts"] = mounts
        data["port_forwards"] = _decode_forwards(data.get("port_forwards") or [], source)
        if data["state"] not in {s.value for s in VMState}:
            raise RecordError(f"VM record {source}: invalid $.state {data['state']!r}")
        _check_values(data, source)
        return cls(**data)


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "id": (str,),
    "state": (str,),
    "engine": (str,),
    "accel": (str,),
    "accel_in_use": (str, type(None)),
    "cpus": (int,),
    "memory_mb": (int,),
    "disk_mb": (int,),
    "image": (str,),
    "kernel": (str,),
    "ssh_key_path": (str, type(None)),
    "ssh_public_key": (str, type(None)),
    "dns_servers": (list,),
    "ip": (str,),
    "mac": (str,),
    "tap": (str,),
    "boot_args": (str,),
    "mounts": (list,),
    "port_forwards": (list,),
    "autostart": (bool,),
    "pid": (int, type(None)),
    "pid_start_time": (int, type(None)),
    "pid_boot_id": (str, type(None)),
    "rootfs_ready": (bool,),
    "created_at": (str,),
    "started_at": (str, type(None)),
    "stopped_at": (str, type(None)),
    "last_error": (str, type(None)),
    "schema_version": (int,),
}


_ID_RE = re.compile(r"[a-z0-9]{8}")


def _check_values(data: dict[str, Any], source: str) -> None:
    """Values that name things on the host (a TAP to delete, an image or kernel file to
    open) must have vmm's shapes: a hand-edited record must not make vmm act on eth0 or on
    ../../etc/passwd. A record that fails is reported as corrupt (``delete -f`` still works)."""
    checks = {
        "name": NAME_RE.fullmatch(data["name"]),
        "id": _ID_RE.fullmatch(data["id"]),
        "tap": data.get("tap", "") in ("", f"vmm-{data['id']}"),
        "image": NAME_RE.fullmatch(data.get("image", "default")),
        "kernel": NAME_RE.fullmatch(data.get("kernel", "default")),
    }
    for key, ok in checks.items():
        if not ok:
            raise RecordError(f"VM record {source}: invalid $.{key} {data.get(key)!r}")
    if not all(isinstance(d, str) for d in data.get("dns_servers") or []):
        raise RecordError(f"VM record {source}: $.dns_servers must be a list of strings")
    for i, m in enumerate(data.get("mounts") or []):
        # a mount image is always <data>/mounts/<vm>-<tag>.ext4: vmm builds and deletes it
        file_ok = m.image_path is None or os.path.basename(m.image_path) == f"{data['name']}-{m.tag}.ext4"
        if not TAG_RE.fullmatch(m.tag) or not file_ok:
            raise RecordError(f"VM record {source}: invalid $.mounts[{i}] (tag or image_path)")


def _check_types(data: dict[str, Any], source: str) -> None:
    for key, value in data.items():
        expected = _TYPES.get(key)
        if expected is None:
            continue
        ok = isinstance(value, expected)
        if ok and isinstance(value, bool) and bool not in expected:
            ok = False
        if not ok:
            raise RecordError(
                f"VM record {source}: $.{key} has the wrong type ({type(value).__name__})"
            )


def _decode_forwards(raw: list[Any], source: str) -> list[PortForward]:
    forwards = []
    for i, f in enumerate(raw):
        where = f"VM record {source}: invalid $.port_forwards[{i}]"
        if not isinstance(f, dict) or set(f) - set(PortForward.fields()):
            raise RecordError(where)
        ports = (f.get("host_port"), f.get("guest_port"))
        if any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in ports):
            raise RecordError(f"{where}: ports must be 1-65535")
        if f.get("proto", "tcp") not in ("tcp", "udp"):
            raise RecordError(f"{where}: proto must be tcp or udp")
        addr = f.get("host_addr")
        if addr is not None and not (isinstance(addr, str) and _is_ipv4(addr)):
            raise RecordError(f"{where}: host_addr must be an IPv4 address or null")
        forwards.append(PortForward(**f))
    return forwards


def _is_ipv4(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
