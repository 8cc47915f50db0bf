"""A VM's own disk: made from its image at the first start, brought up to date at every start.

The first start copies the image (sparse, reflinked where the filesystem can), grows it to the
VM's disk size and writes vmm's first-boot files (hostname, the user's SSH key, vmm's power key,
resolv.conf). Every start replays the journal of a guest that stopped uncleanly *before* any
edit, then writes the network file for the VM's address and the fstab of its mounts. The tools
run unprivileged on the image (``vmm.guest.ext4``): the disk holds what the guest wrote.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vmm.guest import customize, ext4
from vmm.log import get_logger
from vmm.store import PRIVATE_FILE, scratch_name, set_mode

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.guest.images import ImageRegistry
    from vmm.models import VM
    from vmm.runner import Runner
    from vmm.store import Store

log = get_logger(__name__)

class RootDisks:
    def __init__(self, config: Config, store: Store, runner: Runner, images: ImageRegistry):
        self.config = config
        self.store = store
        self.runner = runner
        self.images = images

    def prepare(self, vm: VM) -> None:
        """First start: copy the image and grow it; every start: vmm's network file. Saves the
        record when the disk was made (``vm.rootfs_ready``)."""
        rootfs = self.store.rootfs_path(vm.name)
        vm_dir = self.store.ensure_vm_dir(vm.name)  # 0700, also for an older vmm's directory
        if not vm.rootfs_ready or not rootfs.exists():
            self._make(vm, vm_dir / scratch_name("rootfs.ext4"))
            vm.rootfs_ready = True
            self.store.save(vm)
        else:
            set_mode(rootfs, PRIVATE_FILE)  # a disk made by an older vmm was 0644
        if ext4.make_consistent(self.runner, rootfs, what=f"the disk of VM {vm.name!r}"):
            # The guest stopped uncleanly (killed, SIGTERM, host crash): its journal is replayed
            # before vmm's edits below, never after them.
            log.warning("note: VM %s was not shut down cleanly: its disk's journal was replayed", vm.name)
        # One debugfs session looks up everything the write below needs to know.
        known = ext4.existing(self.runner, rootfs, customize.every_boot_probes())
        files = customize.every_boot_files(
            mac=vm.mac,
            ip=vm.ip,
            subnet=self.config.subnet,
            gateway=self.config.gateway,
            dns=vm.dns_servers,
            networkd_present=customize.networkd_present(known),
        )
        ext4.write_files(self.runner, rootfs, files, known=known)
        if vm.mounts:
            from vmm.guest import mounts as guest_mounts

            guest_mounts.write_fstab(self.runner, rootfs, vm.mounts)

    def _make(self, vm: VM, tmp: Path) -> None:
        """The disk from the image, under a temp name (``tmp``) until it is complete."""
        image = self.images.get(vm.image)
        rootfs = self.store.rootfs_path(vm.name)
        try:
            ext4.copy_sparse(self.runner, image.path, tmp)
            ext4.grow(self.runner, tmp, vm.disk_mb)
            from vmm.host import ssh

            _key, power_public = ssh.power_key(self.runner, self.store.root)
            ext4.write_files(
                self.runner,
                tmp,
                customize.first_boot_files(
                    hostname=vm.name,
                    ssh_public_key=vm.ssh_public_key,
                    dns=vm.dns_servers,
                    power_key=ssh.power_key_line(power_public),
                ),
            )
            ext4.set_dir_mode(self.runner, tmp, "/root/.ssh", 0o700)
            os.chmod(tmp, PRIVATE_FILE)
            os.replace(tmp, rootfs)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def prepare_mounts(self, vm: VM) -> None:
        """Build the mount images from the host directories (never over the guest's changes)."""
        if not vm.mounts:
            return
        from vmm.guest.mountsync import MountImages

        self.store.mounts_dir.mkdir(parents=True, exist_ok=True)
        for note in MountImages(self.store, self.runner).prepare(vm):
            log.warning("note: %s", note)
        self.store.save(vm)

    def remove_mount_images(self, name: str, vm: VM | None) -> None:
        """The VM's mount images (for a corrupt record: the paths it still names)."""
        from vmm.guest import mounts as guest_mounts

        if vm is not None:
            paths = [m.image_path for m in vm.mounts if m.image_path]
        else:
            paths = list(self.store.salvage(name).image_paths)
        for p in paths:
            guest_mounts.remove_image(self.store, Path(p))
