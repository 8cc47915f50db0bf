"""``vmm clone`` and ``vmm image snapshot``: a stopped VM's disk under a new identity.

A clone copies the source's disk (``cp --reflink=auto --sparse=always``: shared blocks where the
filesystem can, holes kept) and gives the copy its own identity before any VM boots it: its
hostname (``/etc/hostname``, ``/etc/hosts``), new SSH host keys of the same types (made on the
host with ``ssh-keygen``, so images without a first-boot key generator keep a working sshd),
and an empty ``/etc/machine-id`` (systemd makes a new one at boot and commits it, without the
"first boot" units an ``uninitialized`` would run). The record gets a new id, IP, MAC and TAP
like ``vmm create``'s, allocated under the global lock; its network file follows at its first
start. The copy is made under a temp name in ``vms/`` and moved into place only with the
record, so an interrupted clone leaves only what ``vmm doctor`` removes.

An image snapshot is the same copy registered as an image (``images/<name>.ext4``), with the
machine-id emptied and, where the image makes its own host keys at boot (vmm's
``vmm-ssh-hostkeys.service``), the host keys removed; the hostname and root's keys are
rewritten for every VM made from it anyway.

The guest's files are edited with e2fsprogs as an unprivileged user (``vmm.guest.ext4``), after
replaying the journal of a disk that was not cleanly unmounted.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, ValidationError
from vmm.host.liveness import is_alive
from vmm.log import get_logger
from vmm.models import VM, VMState, new_vm_id, now, validate_name
from vmm.status import process_ref
from vmm.store import PRIVATE_FILE, scratch_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmm.guest.ext4 import GuestFile
    from vmm.guest.images import Image
    from vmm.services.vms import VmService

log = get_logger(__name__)

HOSTKEY_UNIT = "/etc/systemd/system/vmm-ssh-hostkeys.service"
_HOST_KEY = re.compile(r"^ssh_host_(rsa|ecdsa|ed25519|dsa)_key(\.pub)?$")


def debugfs_entries(listing: str) -> dict[str, int]:
    """Name -> mode of ``debugfs ls -p`` lines (``/inode/mode/uid/gid/name/size/``). Pure."""
    out: dict[str, int] = {}
    for line in listing.splitlines():
        parts = line.strip().split("/")
        if len(parts) >= 7 and parts[2].isdigit():
            with contextlib.suppress(ValueError):
                out[parts[5]] = int(parts[2], 8)
    return out


class CloneService:
    def __init__(self, vms: VmService):
        self.vms = vms
        self.store = vms.store
        self.runner = vms.runner

    def _stopped_source(self, vm: VM, what: str) -> None:
        if is_alive(process_ref(vm)):
            raise ConflictError(f"VM {vm.name!r} is running: stop it first",
                                hint=f"{what} is made from a stopped VM's disk")
        if vm.state == VMState.SUSPENDED:
            raise ConflictError(
                f"VM {vm.name!r} is suspended: its disk belongs to its saved state",
                hint=f"resume and stop it first ('vmm start {vm.name}', 'vmm stop {vm.name}')",
            )

    def _copy(self, src: Path, dst: Path) -> None:
        from vmm.guest import ext4

        self.runner.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)], timeout=3600)
        os.chmod(dst, PRIVATE_FILE)
        ext4.make_consistent(self.runner, dst, what=f"the copy of {src}")

    # -- clone ----------------------------------------------------------------------------

    def clone(self, src: str, dst: str) -> VM:
        """A new VM ``dst`` from stopped VM ``src``'s disk, with its own identity."""
        validate_name(src)
        validate_name(dst)
        if src == dst:
            raise ValidationError("a clone needs a name of its own")
        if self.store.exists(dst):
            raise ConflictError(f"VM {dst!r} already exists", hint="choose another name")
        with self.store.vm_lock(src):
            faults.point("clone.locked")
            source = self.store.load(src)
            self._stopped_source(source, "a clone")
            if source.mounts:
                raise ValidationError(f"VM {src!r} has mounts: cloning VMs with mounts is not supported")
            disk = self.store.rootfs_path(src)
            has_disk = source.rootfs_ready and disk.is_file()
            self.store.ensure_dirs()
            tmp = self.store.vms_dir / scratch_name(f"{dst}-clone")
            try:
                if has_disk:
                    self._copy(disk, tmp)
                    faults.point("clone.copied")
                    self._reset_identity(tmp, hostname=dst, new_host_keys=True)
                    faults.point("clone.customized")
                return self._register(source, dst, tmp if has_disk else None)
            finally:
                tmp.unlink(missing_ok=True)

    def _register(self, source: VM, dst: str, disk: Path | None) -> VM:
        from vmm.network import ipam
        from vmm.services.create import allocations

        cfg = self.vms.config
        subnet, gateway = ipam.validate_network(cfg.subnet, cfg.gateway)
        with self.store.global_lock():
            faults.point("clone.global-locked")
            if self.store.exists(dst):
                raise ConflictError(f"VM {dst!r} already exists", hint="choose another name")
            vms, problems = self.store.load_all()
            used_ips, used_ids = allocations(self.store, vms, problems)
            self.vms.network.check_unchanged(vms)
            ip = ipam.allocate(subnet, gateway, used_ips)
            vm_id = new_vm_id()
            while vm_id in used_ids:
                vm_id = new_vm_id()
            vm = VM(
                name=dst, id=vm_id, engine=source.engine, accel=source.accel, cpus=source.cpus,
                memory_mb=source.memory_mb, disk_mb=source.disk_mb, image=source.image,
                kernel=source.kernel, ssh_key_path=source.ssh_key_path,
                ssh_public_key=source.ssh_public_key, dns_servers=list(source.dns_servers),
                ip=str(ip), mac=ipam.mac_for(ip), tap=f"vmm-{vm_id}", boot_args=source.boot_args,
                rootfs_ready=disk is not None, created_at=now(),
            )  # fmt: skip
            if disk is not None:
                self.store.ensure_vm_dir(dst)
                os.replace(disk, self.store.rootfs_path(dst))
                faults.point("clone.disk-placed")
            self.store.save(vm)
            faults.point("clone.saved")
        return vm

    # -- image snapshot -------------------------------------------------------------------

    def image_snapshot(self, name: str, image: str, *, force: bool = False,
                       note: Callable[[str], None] = lambda _line: None) -> Image:
        """Stopped VM ``name``'s disk as image ``image``."""
        validate_name(name)
        validate_name(image, "image")
        images = self.vms.images
        dest = images.path_of(image)
        if dest.exists() and not force:
            raise ConflictError(f"image {image!r} already exists", hint="use -f to replace it")
        with self.store.vm_lock(name):
            faults.point("image-snapshot.locked")
            vm = self.store.load(name)
            self._stopped_source(vm, "an image")
            disk = self.store.rootfs_path(name)
            if not vm.rootfs_ready or not disk.is_file():
                raise ConflictError(f"VM {name!r} has no disk yet (it never started)",
                                    hint=f"its image is {vm.image!r}")
            self.store.ensure_dirs()
            tmp = images.dir / scratch_name(image, "importing")
            try:
                self._copy(disk, tmp)
                faults.point("image-snapshot.copied")
                if not self._reset_identity(tmp, hostname=None, new_host_keys=False):
                    note(f"the image keeps VM {name}'s SSH host keys (it makes none at boot): "
                         "VMs made from it share them")
                os.replace(tmp, dest)
                faults.point("image-snapshot.placed")
            finally:
                tmp.unlink(missing_ok=True)
            images.register(image, source=f"vm:{name}", kind="vm",
                            extra={"vm": name, "vm_image": vm.image})
        return images.get(image)

    # -- identity -------------------------------------------------------------------------

    def _reset_identity(self, image: Path, *, hostname: str | None, new_host_keys: bool) -> bool:
        """Hostname (when given), machine-id and SSH host keys of the guest on ``image``.
        Host keys: new ones of the same types (``new_host_keys``), else removed where the
        image makes its own at boot. False when host keys were kept as they were."""
        from vmm.guest import customize, ext4

        known = ext4.existing(self.runner, image, ["/etc/ssh", "/etc/machine-id",
                                                    "/var/lib/dbus/machine-id", HOSTKEY_UNIT])
        files: list[GuestFile] = []
        removed: list[str] = []
        if hostname is not None:
            files += [ext4.GuestFile("/etc/hostname", (hostname + "\n").encode()),
                      ext4.GuestFile("/etc/hosts", customize.hosts_file(hostname).encode())]
        if "/etc/machine-id" in known:
            files.append(ext4.GuestFile("/etc/machine-id", b"", mode=0o444))
        if "/var/lib/dbus/machine-id" in known:
            dbus = debugfs_entries(ext4.run_debugfs(
                self.runner, image, "ls -p /var/lib/dbus\n", write=False).stdout)
            if (dbus.get("machine-id", 0) & 0o170000) == 0o100000:  # a copy, not the usual link
                removed.append("/var/lib/dbus/machine-id")
        kept = False
        if "/etc/ssh" in known:
            listing = ext4.run_debugfs(self.runner, image, "ls -p /etc/ssh\n", write=False).stdout
            keys = sorted(n for n in debugfs_entries(listing) if _HOST_KEY.match(n))
            if new_host_keys:
                removed += [f"/etc/ssh/{k}" for k in keys]
                files += self._new_host_keys(keys)
            elif HOSTKEY_UNIT in known:
                removed += [f"/etc/ssh/{k}" for k in keys]
            else:
                kept = bool(keys)
        if removed:
            script = "".join(f"rm {p}\n" for p in removed)
            ext4.run_debugfs_checked(self.runner, image, script, what="remove the old identity")
        ext4.write_files(self.runner, image, files)
        return not kept

    def _new_host_keys(self, existing: list[str]) -> list[GuestFile]:
        """A fresh host key pair for each type the guest had (DSA: none, ssh-keygen has
        dropped it); ed25519 when it had none at all."""
        import tempfile

        from vmm.guest.ext4 import GuestFile

        types = sorted({m.group(1) for k in existing if (m := _HOST_KEY.match(k))} - {"dsa"})
        if not existing:
            return []
        files = []
        with tempfile.TemporaryDirectory(prefix="vmm-hostkeys-") as tmp:
            for kind in types or ["ed25519"]:
                path = Path(tmp) / f"ssh_host_{kind}_key"
                self.runner.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)],
                                timeout=120)
                files.append(GuestFile(f"/etc/ssh/{path.name}", path.read_bytes(), mode=0o600))
                files.append(GuestFile(f"/etc/ssh/{path.name}.pub", Path(f"{path}.pub").read_bytes()))
        return files
