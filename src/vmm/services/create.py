"""``vmm create``: validate every choice, then allocate the name, IP and id under the global lock
and save the record. Nothing on the host changes before the last check has passed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from vmm import faults
from vmm.config import expand_user_path
from vmm.errors import ConflictError, ValidationError
from vmm.models import (
    VM,
    new_vm_id,
    now,
    validate_cpus,
    validate_disk,
    validate_dns_servers,
    validate_memory,
    validate_name,
)
from vmm.record import Record

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from vmm.services.vms import VmService  # the caller: create is its use case
    from vmm.store import RecordProblem, Store

MiB = 1024 * 1024


class CreateRequest(Record):
    """What ``vmm create`` was asked for; ``None`` takes the config's default."""

    name: str
    cpus: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    ssh_key: str | None = None
    dns: list[str] | None = None
    image: str | None = None
    kernel: str | None = None
    engine: str | None = None
    accel: str | None = None
    boot_args: str | None = None
    ip: str | None = None  # a pinned address (else the lowest free one)
    autostart: bool = False
    mounts: list[str] | None = None  # --mount /host/path:tag[:ro|rw] specs


def read_public_key(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ValidationError(
            f"SSH key file {path} does not exist",
            hint="give a public key with --ssh-key (e.g. ~/.ssh/id_ed25519.pub); "
            "create one with ssh-keygen -t ed25519",
        ) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError):
        raise ValidationError(f"SSH key file {path} is not a readable text file") from None
    first = text.splitlines()[0] if text else ""
    if not re.match(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+", first):
        hint = "use the .pub file" if "PRIVATE KEY" in text else "expected a line like 'ssh-ed25519 AAAA... user@host'"
        raise ValidationError(f"{path} is not an SSH public key", hint=hint)
    return text


def _engine_and_accel(req: CreateRequest, engine_name: str, accel: str) -> str:
    """The accel to record: checked against what the engine can do."""
    from vmm.engines import registry

    engine_info = registry.info(engine_name)
    if accel not in ("auto", "kvm", "tcg"):
        raise ValidationError(f"unknown accel {accel!r}", hint="use auto, kvm or tcg")
    if not engine_info.can(registry.TCG):
        if req.accel == "tcg":
            emulating = [n for n in registry.names() if registry.info(n).can(registry.TCG)]
            raise ValidationError(
                f"the {engine_name} engine needs KVM; --accel tcg works only with "
                + " or ".join(f"--engine {n}" for n in emulating)
            )
        accel = "kvm"  # the config's accel is for engines that can emulate
    return accel


def create(svc: VmService, req: CreateRequest, *, note: Callable[[str], None]) -> VM:
    cfg = svc.config
    store = svc.store
    vd = cfg.vm_defaults
    name = validate_name(req.name)
    cpus = validate_cpus(req.cpus if req.cpus is not None else vd.cpus)
    memory = validate_memory(req.memory_mb if req.memory_mb is not None else vd.memory_mb)
    disk = validate_disk(req.disk_mb if req.disk_mb is not None else vd.disk_size_mb)
    dns = validate_dns_servers(req.dns if req.dns else list(vd.dns_servers))
    engine_name = req.engine or cfg.engine
    accel = _engine_and_accel(req, engine_name, req.accel or cfg.accel)
    image = svc.images.get(req.image or vd.image)
    kernel = svc.kernels.get(req.kernel or vd.kernel)
    image_mb = -(-image.virtual_size // MiB)
    if disk < image_mb and req.disk_mb is None:
        # The default disk is smaller than this image: the disk is sized to fit the image
        # (only an explicit --disk below it is an error).
        note(
            f"the disk is {image_mb} MB, the size of image {image.name!r} (the default, "
            f"{disk} MB, is smaller); use --disk for more"
        )
        disk = image_mb
    if disk * MiB < image.virtual_size:
        raise ValidationError(
            f"--disk {disk} MB is smaller than image {image.name!r} ({image_mb} MB)",
            hint=f"use --disk {image_mb} or more",
        )
    from vmm.guest import customize

    boot_args = customize.validate_boot_args(req.boot_args or "", mounts=len(req.mounts or []))
    key_path_str = req.ssh_key or vd.ssh_key_path
    key_path = expand_user_path(key_path_str) if key_path_str else None
    public_key = read_public_key(key_path) if key_path else None
    engine = svc.engine(engine_name)
    try:
        engine.check_paths(store.run_paths(name))
    except ValidationError as exc:
        raise ValidationError(
            f"the data dir {cfg.data_dir} is too deep for VM {name!r}'s socket paths",
            details=exc.brief,
            hint="use a shorter name or data dir (Unix socket paths are limited to 107 bytes)",
        ) from None
    engine.check_available()
    from vmm.guest import mounts as guest_mounts

    mounts = guest_mounts.parse_mounts(req.mounts or [], vm_name=name, mounts_dir=store.mounts_dir)

    from vmm.network import ipam

    subnet, gateway = ipam.validate_network(cfg.subnet, cfg.gateway)
    store.ensure_dirs()
    with store.global_lock():
        faults.point("create.locked")
        if store.exists(name):
            raise ConflictError(f"VM {name!r} already exists", hint="choose another name")
        vms, problems = store.load_all()  # read once under the lock
        used_ips, used_ids = allocations(store, vms, problems)
        svc.network.check_unchanged(vms)
        if mounts:
            guest_mounts.check_image_clash(mounts, vms)
        ip = ipam.allocate(subnet, gateway, used_ips, requested=req.ip)
        vm_id = new_vm_id()
        while vm_id in used_ids:
            vm_id = new_vm_id()
        vm = VM(
            name=name,
            id=vm_id,
            engine=engine_name,
            accel=accel,
            cpus=cpus,
            memory_mb=memory,
            disk_mb=disk,
            image=image.name,
            kernel=kernel.name,
            ssh_key_path=str(key_path) if key_path else None,
            ssh_public_key=public_key,
            dns_servers=dns,
            ip=str(ip),
            mac=ipam.mac_for(ip),
            tap=f"vmm-{vm_id}",
            boot_args=boot_args,
            autostart=req.autostart,
            mounts=mounts,
            created_at=now(),
        )
        store.save(vm)
        faults.point("create.saved")
    return vm


def allocations(
    store: Store, vms: list[VM], problems: list[RecordProblem]
) -> tuple[set[str], set[str]]:
    """IPs and ids in use — read from corrupt records too, so they are never reused."""
    ips: set[str] = set()
    ids: set[str] = set()
    for vm in vms:
        ips.add(vm.ip)
        ids.add(vm.id)
    for problem in problems:
        found = store.salvage(problem.name)
        if found.ip:
            ips.add(found.ip)
        if found.id:
            ids.add(found.id)
    return ips, ids
