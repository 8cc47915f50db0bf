"""Snapshot commands: suspend, snapshot create|list|restore|delete, clone, image snapshot.

``vmm start`` resumes a suspended VM (``VmService.start``'s hook); ``image snapshot`` is added
to the ``image`` group through ``EXTENDS`` (``cli.parser``)."""

from __future__ import annotations

import sys
import time

from vmm.cli.common import app, help_of, human_size, print_json, require_root, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers

SNAPSHOTS = """\
A snapshot of a running VM holds its memory, devices and disks, taken while it is paused for a
moment: restoring it brings the VM back running exactly as it was (processes, open files,
uptime). A snapshot of a suspended VM holds its saved state and disks (restored: suspended
again); of a stopped VM, its disks only (restored: stopped). A restore replaces the VM's
current state, running or not. Snapshots are deleted with their VM.

A memory snapshot can be restored only under the same engine and hypervisor version, on the
same machine (CPUs, memory, kernel); VMs with mounts have no snapshots.
"""


def _add_suspend(sub: SubParsers) -> None:
    s = sub.add_parser(
        "suspend", help="save a running VM's memory to disk and end it ('vmm start' resumes)",
        description="Pause the VM, save its memory and device state under its directory, end "
        "its process and remove its TAP. 'vmm start NAME' resumes it where it was: processes, "
        "open files and uptime go on. 'vmm stop NAME' on a suspended VM discards the saved "
        "state (its disk stays; the next start boots it afresh).",
    )  # fmt: skip
    s.add_argument("name")
    s.set_defaults(handler=cmd_suspend)


def _add_snapshot(sub: SubParsers) -> None:
    import argparse

    sp = sub.add_parser("snapshot", help="named snapshots of a VM (memory + disks)",
                        description=SNAPSHOTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    s_sub = sp.add_subparsers(title="commands", metavar="COMMAND")
    c = s_sub.add_parser("create", help="take a snapshot (running VM: memory + disks)")
    c.add_argument("name")
    c.add_argument("snapshot")
    c.add_argument("--stop", action="store_true", help="then stop the VM (gracefully)")
    c.set_defaults(handler=cmd_snapshot_create)
    ls = s_sub.add_parser("list", help="snapshots of one VM, or of all")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_snapshot_list)
    r = s_sub.add_parser("restore", help="bring the VM back to a snapshot (its state now is lost)")
    r.add_argument("name")
    r.add_argument("snapshot")
    r.set_defaults(handler=cmd_snapshot_restore)
    d = s_sub.add_parser("delete", aliases=["rm"], help="delete a snapshot")
    d.add_argument("name")
    d.add_argument("snapshot")
    d.set_defaults(handler=cmd_snapshot_delete)
    sp.set_defaults(handler=help_of(sp))


def _add_clone(sub: SubParsers) -> None:
    c = sub.add_parser(
        "clone", help="a new VM from a stopped VM's disk, with its own identity",
        description="Copy stopped VM SRC's disk (sharing blocks where the filesystem can) to a "
        "new VM DST with its own id, IP, MAC, hostname, SSH host keys and machine-id; CPUs, "
        "memory, image, kernel and SSH key as SRC's. Port forwards and autostart are not copied.",
    )  # fmt: skip
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(handler=cmd_clone)


def _extend_image(img_sub: SubParsers) -> None:
    s = img_sub.add_parser(
        "snapshot", help="a stopped VM's disk as a new image",
        description="Register stopped VM VM's disk as image NAME: new VMs start from its files. "
        "Its machine-id is emptied and its SSH host keys removed where the image makes new ones "
        "at boot; every VM made from it gets its own hostname and root keys.",
    )  # fmt: skip
    s.add_argument("vm")
    s.add_argument("--name", required=True, help="the image's name")
    s.add_argument("-f", "--force", action="store_true", help="replace an image of that name")
    s.set_defaults(handler=cmd_image_snapshot)


def cmd_suspend(args: argparse.Namespace) -> int:
    require_root()
    m = app()
    t0 = time.monotonic()
    vm = m.suspend(args.name)
    took = time.monotonic() - t0
    state = m.store.suspend_dir(vm.name)
    from vmm.services.suspend import dir_usage

    print(f"Suspended VM {vm.name} in {took:.1f} s ({human_size(dir_usage(state))} saved in {state})")
    print(f"Resume it with: vmm start {vm.name}")
    return 0


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    require_root()
    t0 = time.monotonic()
    info = app().snapshots.create(args.name, args.snapshot, stop=args.stop)
    took = time.monotonic() - t0
    what = "memory + disks" if info.kind == "memory" else "disks only: the VM was stopped"
    print(f"Created snapshot {info.name} of VM {info.vm} in {took:.1f} s "
          f"({what}, {human_size(info.size)})")
    if args.stop:
        print(f"Stopped VM {info.vm}")
    return 0


def _state(kind: str, vm_state: str) -> str:
    return f"{vm_state} (memory+disks)" if kind == "memory" else f"{vm_state} (disks only)"


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    require_root()
    infos = app().snapshots.list(args.name)
    if args.json:
        print_json([i.to_json() for i in infos])
        return 0
    if not infos:
        where = f" of VM {args.name}" if args.name else ""
        print(f"No snapshots{where}: take one with 'vmm snapshot create VM NAME'", file=sys.stderr)
        return 0
    table(
        ["VM", "NAME", "CREATED", "SIZE", "ENGINE", "STATE"],
        [[i.vm, i.name, i.created_at, human_size(i.size),
          i.engine + (f" {i.engine_version}" if i.engine_version else ""), _state(i.kind, i.vm_state)]
         for i in infos],
    )  # fmt: skip
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    require_root()
    t0 = time.monotonic()
    vm = app().snapshots.restore(args.name, args.snapshot)
    took = time.monotonic() - t0
    how = {"running": f"running at {vm.ip}", "suspended": "suspended ('vmm start' resumes it)"}
    print(f"Restored VM {vm.name} to snapshot {args.snapshot} in {took:.1f} s: "
          f"{how.get(vm.state, vm.state)}")
    return 0


def cmd_snapshot_delete(args: argparse.Namespace) -> int:
    require_root()
    app().snapshots.delete(args.name, args.snapshot)
    print(f"Deleted snapshot {args.snapshot} of VM {args.name}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    require_root()
    t0 = time.monotonic()
    vm = app().clones.clone(args.src, args.dst)
    print(f"Cloned VM {args.src} to {vm.name} in {time.monotonic() - t0:.1f} s "
          f"(id {vm.id}, IP {vm.ip}, MAC {vm.mac})")
    print(f"Start it with: vmm start {vm.name}")
    return 0


def cmd_image_snapshot(args: argparse.Namespace) -> int:
    require_root()
    img = app().clones.image_snapshot(
        args.vm, args.name, force=args.force,
        note=lambda line: print(f"note: {line}", file=sys.stderr),
    )
    print(f"Created image {img.name} from VM {args.vm} ({human_size(img.virtual_size)}, "
          f"{human_size(img.disk_usage)} on disk)")
    return 0


COMMANDS = {
    "suspend": _add_suspend,
    "snapshot": _add_snapshot,
    "clone": _add_clone,
}
# Sub-commands of another module's command group (``cli.parser.EXTENSIONS``).
EXTENDS = {"image": _extend_image}
