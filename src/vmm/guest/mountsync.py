"""Mount images of VMs: rebuilt at start unless the guest changed them; ``vmm mount`` list,
sync (host → image) and pull (image → host, the host directory made equal to it).

Whether the guest changed an image: its superblock stamp still as recorded, or else its
contents (``mountfs.image_digest``) still matching the recorded fingerprint.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vmm import faults
from vmm.errors import ConflictError, NotFoundError, ValidationError, VmmError
from vmm.guest.mountfs import build_image, image_digest, rdump, recover, scan_tree, superblock_stamp
from vmm.guest.mounts import check_host_dir, image_path, remove_image
from vmm.models import VM, Mount, validate_name
from vmm.runner import Runner
from vmm.store import Store, scratch_prefix


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class MountStatus:
    mount: Mount
    image_exists: bool
    image_size: int  # bytes on disk
    state: str  # "not built", "in sync", "changed in guest", "in use", "read-only ...", "unknown"


class MountImages:
    """Mount images of VMs: build at start, sync (host → image), pull (image → host), status."""

    def __init__(self, store: Store, runner: Runner):
        self.store = store
        self.runner = runner

    @property
    def scratch(self) -> Path:
        return self.store.mounts_dir

    def _record(self, m: Mount, scan_digest: str, path: Path) -> None:
        m.fingerprint = scan_digest
        m.stamp = superblock_stamp(path)
        m.synced_at = _now()

    def build(self, m: Mount) -> None:
        path = Path(image_path(m))
        scan = build_image(self.runner, m, path)
        self._record(m, scan.digest, path)

    def guest_changed(self, m: Mount) -> bool:
        """True when the image holds something vmm did not put there (VM stopped)."""
        path = Path(image_path(m))
        if not path.exists():
            return False
        if m.stamp is not None and superblock_stamp(path) == m.stamp:
            return False
        expected = m.fingerprint
        if expected is None:  # an image vmm has no record of: compare with the host dir
            if not Path(m.host_path).is_dir():
                return True
            expected = scan_tree(Path(m.host_path)).digest
        return image_digest(self.runner, path, self.scratch) != expected

    def prepare(self, vm: VM) -> list[str]:
        """At start: build each image, unless that would discard what the guest wrote.

        Returns notes for the user. ``vm.mounts`` is updated; the caller saves the record.
        """
        notes: list[str] = []
        for m in vm.mounts:
            path = Path(image_path(m))
            host_ok = Path(m.host_path).is_dir()
            if not m.read_only and path.exists() and self.guest_changed(m):
                notes.append(
                    f"mount {m.tag!r}: the guest changed its files since the last sync, so the "
                    f"image was kept, not rebuilt from {m.host_path}; 'vmm mount pull {vm.name} "
                    f"{m.tag}' copies them to the host, 'vmm mount sync --force {vm.name} {m.tag}' "
                    "discards them"
                )
                continue
            if not host_ok:
                if path.exists():
                    notes.append(
                        f"mount {m.tag!r}: host directory {m.host_path} is missing; "
                        "using the image from the last start"
                    )
                    continue
                raise ValidationError(
                    f"mount {m.tag!r}: host directory {m.host_path} does not exist",
                    hint=f"create it, or recreate VM {vm.name!r} without this mount",
                )
            self.build(m)
        return notes

    # -- commands (VM stopped) ---------------------------------------------------------

    def _stopped_vm(self, name: str) -> VM:
        from vmm.host.liveness import is_alive
        from vmm.status import process_ref

        vm = self.store.load(name)
        if is_alive(process_ref(vm)):
            raise ConflictError(
                f"VM {name!r} is running; its mount images can change only while it is stopped",
                hint=f"stop it first: vmm stop {name}",
            )
        return vm

    @staticmethod
    def find(vm: VM, tag: str) -> Mount:
        for m in vm.mounts:
            if m.tag == tag:
                return m
        tags = ", ".join(m.tag for m in vm.mounts) or "none"
        raise NotFoundError(f"VM {vm.name!r} has no mount {tag!r}", hint=f"its mounts: {tags}")

    def status(self, name: str) -> tuple[VM, list[MountStatus]]:
        from vmm.host.liveness import is_alive
        from vmm.status import process_ref

        validate_name(name)
        vm = self.store.load(name)
        running = is_alive(process_ref(vm))
        out = []
        for m in vm.mounts:
            path = Path(m.image_path) if m.image_path else None
            exists = bool(path and path.exists())
            size = path.stat().st_blocks * 512 if path and exists else 0
            if not exists:
                state = "not built"
            elif running:
                state = "in use"
            elif m.read_only:
                state = "read-only (rebuilt at start)"
            else:
                try:
                    state = "changed in guest" if self.guest_changed(m) else "in sync"
                except VmmError:
                    state = "unknown"
            out.append(MountStatus(m, exists, size, state))
        return vm, out

    def sync(self, name: str, tag: str, *, force: bool = False) -> Mount:
        """Host → image. Refused over guest changes unless ``force``."""
        validate_name(name)
        with self.store.vm_lock(name):
            vm = self._stopped_vm(name)
            m = self.find(vm, tag)
            check_host_dir(m.host_path)
            if not m.read_only and not force and self.guest_changed(m) and not self._same_as_host(m):
                raise ConflictError(
                    f"the guest changed mount {tag!r} of VM {name!r} since the last sync; "
                    "syncing would discard those changes",
                    hint=f"copy them to the host first ('vmm mount pull {name} {tag}'), "
                    "or discard them with --force",
                )
            faults.point("mount-sync.checked")
            self.build(m)
            faults.point("mount-sync.built")
            self.store.save(vm)
            return m

    def _same_as_host(self, m: Mount) -> bool:
        """The image holds exactly what the host directory holds now: a sync interrupted after
        building it (before the record was saved) looks like a guest change, and is not one."""
        path = Path(image_path(m))
        if not path.exists():
            return False
        return image_digest(self.runner, path, self.scratch) == scan_tree(Path(m.host_path)).digest

    def pull(
        self, name: str, tag: str, *, to: Path | None = None, force: bool = False
    ) -> tuple[Mount, Path]:
        """Image → host. Into ``to`` (new or empty, unless ``force``), or by default into the
        mount's host directory, made equal to the image — refused if the host directory
        changed since the image was built (that would overwrite host edits) unless ``force``."""
        validate_name(name)
        with self.store.vm_lock(name):
            vm = self._stopped_vm(name)
            m = self.find(vm, tag)
            image = Path(image_path(m))
            if not image.exists():
                raise NotFoundError(
                    f"mount {tag!r} of VM {name!r} has no image yet (the VM was never started)",
                    hint="there is nothing to pull",
                )
            recover(self.runner, image)
            self.scratch.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix=scratch_prefix("pull"), dir=self.scratch))
            try:
                rdump(self.runner, image, staged, keep_owners=True)
                if to is not None:
                    target = Path(os.path.abspath(to))
                    if target.exists() and not target.is_dir():
                        raise ValidationError(f"--to {target} exists and is not a directory")
                    if target.is_dir() and any(target.iterdir()) and not force:
                        raise ConflictError(
                            f"--to {target} is not empty",
                            hint="pull into a new or empty directory, or use --force to "
                            "overwrite files there (nothing is deleted)",
                        )
                    target.mkdir(parents=True, exist_ok=True)
                    self._copy_over(staged, target)
                    return m, target
                target = Path(m.host_path)
                if not target.is_dir():
                    raise ValidationError(
                        f"host directory {m.host_path} does not exist",
                        hint=f"pull elsewhere with --to DIR, or create {m.host_path}",
                    )
                resuming = m.pull_pending is not None and m.pull_pending == superblock_stamp(image)
                if not force and not resuming and m.fingerprint != scan_tree(target).digest:
                    raise ConflictError(
                        f"host directory {m.host_path} changed since the mount image was built; "
                        "pulling into it would overwrite those changes",
                        hint=f"pull elsewhere with --to DIR and merge by hand, or use --force "
                        f"to make {m.host_path} equal to the guest's copy",
                    )
                m.pull_pending = superblock_stamp(image)
                self.store.save(vm)
                faults.point("mount-pull.mirroring")
                mirror(self.runner, staged, target)
                faults.point("mount-pull.mirrored")
                self._record(m, scan_tree(target).digest, image)
                m.pull_pending = None
                self.store.save(vm)
                return m, target
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _copy_over(self, src: Path, dst: Path) -> None:
        self.runner.run(
            ["cp", "-a", "--remove-destination", "--", f"{src}/.", f"{dst}/"], timeout=1800
        )

    def remove_images(self, vm: VM) -> None:
        for m in vm.mounts:
            if m.image_path:
                remove_image(self.store, Path(m.image_path))



def mirror(runner: Runner, src: Path, dst: Path) -> None:
    """Make ``dst`` hold exactly ``src``'s tree: remove what ``src`` lacks, then copy over."""
    def kind(p: Path) -> str:
        st = os.lstat(p)
        return "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"

    for dirpath, dirnames, filenames in os.walk(dst, topdown=True):
        rel = os.path.relpath(dirpath, dst)
        for name in list(dirnames) + filenames:
            if rel == "." and name == "lost+found":
                continue
            here = Path(dirpath) / name
            there = src / rel / name
            if not os.path.lexists(there) or kind(there) != kind(here):
                if kind(here) == "d":
                    shutil.rmtree(here)
                    dirnames.remove(name)
                else:
                    here.unlink()
    runner.run(["cp", "-a", "--remove-destination", "--", f"{src}/.", f"{dst}/"], timeout=1800)
