"""Mount commands: list, sync (host → image), pull (image → host)."""

from __future__ import annotations

from vmm.cli.common import help_of, human_size, load_config, print_json, require_root, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers
    from vmm.guest.mountsync import MountImages

DESCRIPTION = """\
A mount (vmm create --mount /host/path:tag[:ro|rw]) is a copy of a host directory on an ext4
disk, mounted in the guest at /mnt/<tag>; it is not a live share. At each start the disk is
rebuilt from the host directory, except an rw disk the guest has written to: vmm never
discards the guest's changes silently. Copy them back with 'vmm mount pull', or discard them
with 'vmm mount sync --force'. The VM must be stopped for sync and pull.
"""


def _add_mount(sub: SubParsers) -> None:
    import argparse

    mp = sub.add_parser(
        "mount", help="host directories mounted in VMs", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m_sub = mp.add_subparsers(title="commands", metavar="COMMAND")
    ls = m_sub.add_parser("list", help="a VM's mounts and whether the guest changed them")
    ls.add_argument("name")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_mount_list)
    sy = m_sub.add_parser(
        "sync", help="rebuild a mount's disk from the host directory (VM stopped)",
        description="Rebuild a mount's disk from its host directory now (the VM must be "
        "stopped). Refused if the guest changed an rw mount since the last sync, unless --force "
        "(which discards the guest's changes).",
    )
    sy.add_argument("name")
    sy.add_argument("tag")
    sy.add_argument("-f", "--force", action="store_true", help="discard changes made in the guest")
    sy.set_defaults(handler=cmd_mount_sync)
    pl = m_sub.add_parser(
        "pull", help="copy a mount's files from its disk back to the host (VM stopped)",
        description="Copy the files of a mount's disk to the host (the VM must be stopped). "
        "Without --to, the mount's host directory is made equal to the guest's copy (files the "
        "guest deleted are deleted) — refused if the host directory changed since the disk was "
        "built, unless --force. With --to DIR, the files go to DIR, which must be new or empty "
        "(--force: overwrite files in a non-empty DIR; nothing is deleted there).",
    )
    pl.add_argument("name")
    pl.add_argument("tag")
    pl.add_argument("--to", metavar="DIR", help="where to put the files (default: the host directory)")
    pl.add_argument("-f", "--force", action="store_true", help="overwrite, see above")
    pl.set_defaults(handler=cmd_mount_pull)
    mp.set_defaults(handler=help_of(mp))


def _images() -> MountImages:
    from vmm.guest.mountsync import MountImages
    from vmm.runner import Runner
    from vmm.store import Store

    return MountImages(Store(load_config().data_path), Runner())


def cmd_mount_list(args: argparse.Namespace) -> int:
    from vmm.guest.mounts import guest_path

    vm, statuses = _images().status(args.name)
    if args.json:
        print_json(
            [
                {**s.mount.to_dict(), "guest_path": guest_path(s.mount), "state": s.state,
                 "image_exists": s.image_exists, "image_disk_usage": s.image_size}
                for s in statuses
            ]
        )
        return 0
    if not statuses:
        print(f"VM {vm.name} has no mounts (add them at creation: vmm create --mount PATH:TAG)")
        return 0
    table(
        ["TAG", "HOST PATH", "GUEST PATH", "MODE", "DISK", "STATE"],
        [
            [s.mount.tag, s.mount.host_path, guest_path(s.mount), "ro" if s.mount.read_only else "rw",
             human_size(s.image_size) if s.image_exists else "-", s.state]
            for s in statuses
        ],
    )
    return 0


def cmd_mount_sync(args: argparse.Namespace) -> int:
    require_root()
    m = _images().sync(args.name, args.tag, force=args.force)
    print(f"Rebuilt mount {m.tag} of VM {args.name} from {m.host_path}")
    return 0


def cmd_mount_pull(args: argparse.Namespace) -> int:
    require_root()
    from pathlib import Path

    m, target = _images().pull(
        args.name, args.tag, to=Path(args.to) if args.to else None, force=args.force
    )
    print(f"Copied mount {m.tag} of VM {args.name} to {target}")
    return 0


COMMANDS = {"mount": _add_mount}
