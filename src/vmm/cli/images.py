"""Image and kernel commands."""

from __future__ import annotations

import sys

from vmm.cli.common import (
    help_of,
    human_size,
    manager,
    positive_int,
    print_json,
    require_root,
    table,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers
    from vmm.manager import Manager


def _add_image(sub: SubParsers) -> None:
    img = sub.add_parser("image", help="rootfs images")
    img_sub = img.add_subparsers(title="commands", metavar="COMMAND")
    import argparse

    ii = img_sub.add_parser(
        "import", help="import a rootfs: ext4 file, directory, tarball, squashfs, OCI/Docker image",
        description=IMPORT_SOURCES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ii.add_argument("source", help="see above")
    ii.add_argument("--name", required=True)
    ii.add_argument("--size", type=positive_int, metavar="MB", help="image size (default: the tree + 25%% + 128 MB)")
    ii.add_argument("--as-is", action="store_true", help="do not require systemd and sshd in the tree")
    ii.add_argument("-f", "--force", action="store_true", help="replace an image of that name")
    ii.set_defaults(handler=cmd_image_import)
    idel = img_sub.add_parser("delete", aliases=["rm"], help="delete an image (refused while VMs use it)")
    idel.add_argument("name")
    idel.add_argument("-f", "--force", action="store_true", help="delete even if VMs use it")
    idel.set_defaults(handler=cmd_image_delete)
    il = img_sub.add_parser("list", help="list images")
    il.add_argument("--json", action="store_true")
    il.set_defaults(handler=cmd_image_list)
    img.set_defaults(handler=help_of(img))


def _add_kernel(sub: SubParsers) -> None:
    k = sub.add_parser("kernel", help="guest kernels")
    k_sub = k.add_subparsers(title="commands", metavar="COMMAND")
    ki = k_sub.add_parser(
        "import", help="import a kernel: an ELF vmlinux, or a bzImage (its vmlinux is extracted)"
    )
    ki.add_argument("path", help="an ELF vmlinux, or a bzImage such as /boot/vmlinuz-*")
    ki.add_argument("--name", required=True)
    ki.add_argument("--initrd", metavar="FILE", help="initrd to boot the kernel with")
    ki.add_argument("-f", "--force", action="store_true", help="replace a kernel of that name")
    ki.set_defaults(handler=cmd_kernel_import)
    kl = k_sub.add_parser("list", help="list kernels")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(handler=cmd_kernel_list)
    kd = k_sub.add_parser("delete", aliases=["rm"], help="delete a kernel (refused while a VM uses it)")
    kd.add_argument("name")
    kd.set_defaults(handler=cmd_kernel_delete)
    k.set_defaults(handler=help_of(k))


IMPORT_SOURCES = """\
Import a root filesystem as an ext4 image. SOURCE is one of:
  FILE.ext4                    an ext4 image (copied)
  DIR                          a root filesystem tree
  FILE.tar[.gz|.xz|.zst]       a rootfs tarball (members leaving the tree are refused)
  FILE.squashfs                e.g. Firecracker's CI rootfs (unsquashfs, then mkfs.ext4 -d)
  oci:DIR[:REF]                an OCI image layout (layers applied with whiteouts)
  oci-archive:FILE[:REF]       the same as a tar file
  docker-archive:FILE          the output of 'docker save IMAGE -o FILE'
  NAME[:TAG] | docker://NAME   an image of the local Docker daemon
Trees must contain systemd and sshd (vmm guests boot systemd and 'vmm ssh' needs sshd) unless
--as-is is given; vmm does not install packages into imported trees.
"""


def cmd_image_import(args: argparse.Namespace) -> int:
    require_root()
    m = manager()
    m.store.ensure_dirs()
    img = m.images.import_source(
        args.source, args.name, size_mb=args.size, force=args.force, as_is=args.as_is
    )
    print(
        f"Imported image {img.name} ({human_size(img.virtual_size)}, "
        f"{human_size(img.disk_usage)} on disk) from {img.meta.get('source', args.source)}"
    )
    return 0


def cmd_image_delete(args: argparse.Namespace) -> int:
    require_root()
    m = manager()
    vms, _ = m.store.load_all()
    m.images.delete(args.name, used_by=[vm.name for vm in vms if vm.image == args.name], force=args.force)
    print(f"Deleted image {args.name}")
    return 0


def _usage(m: Manager) -> tuple[dict[str, int], dict[str, int]]:
    vms, _ = m.store.load_all()
    images: dict[str, int] = {}
    kernels: dict[str, int] = {}
    for vm in vms:
        images[vm.image] = images.get(vm.image, 0) + 1
        kernels[vm.kernel] = kernels.get(vm.kernel, 0) + 1
    return images, kernels


def cmd_image_list(args: argparse.Namespace) -> int:
    m = manager()
    used, _ = _usage(m)
    imgs = m.images.list()
    if args.json:
        print_json(
            [
                {**i.meta, "name": i.name, "path": str(i.path), "virtual_size": i.virtual_size,
                 "disk_usage": i.disk_usage, "used_by": used.get(i.name, 0)}
                for i in imgs
            ]
        )
        return 0
    if not imgs:
        print("No images: import one with 'vmm image import ROOTFS.ext4 --name default'", file=sys.stderr)
        return 0
    table(
        ["NAME", "SIZE", "ON DISK", "SOURCE", "CREATED", "USED BY"],
        [
            [i.name, human_size(i.virtual_size), human_size(i.disk_usage), str(i.meta.get("source", "")),
             str(i.meta.get("created_at", "")), str(used.get(i.name, 0))]
            for i in imgs
        ],
    )
    return 0


def cmd_kernel_import(args: argparse.Namespace) -> int:
    require_root()
    from pathlib import Path

    m = manager()
    m.store.ensure_dirs()
    k = m.kernels.import_kernel(
        Path(args.path), args.name, initrd=Path(args.initrd) if args.initrd else None, force=args.force
    )
    extra = " with initrd" if k.initrd else ""
    fmt = str(k.meta.get("format", "elf"))
    origin = f", vmlinux extracted from a bzImage ({fmt.split('/')[-1]})" if fmt.startswith("bzImage") else ""
    version = k.meta.get("version") or "unknown version"
    pvh = ", PVH" if k.meta.get("pvh") else ""
    print(
        f"Imported kernel {k.name} ({version}, {k.meta.get('arch')}, "
        f"{human_size(k.path.stat().st_size)}{pvh}{origin}){extra}"
    )
    return 0


def cmd_kernel_delete(args: argparse.Namespace) -> int:
    require_root()
    m = manager()
    vms, _ = m.store.load_all()
    m.kernels.delete(args.name, used_by=[vm.name for vm in vms if vm.kernel == args.name])
    print(f"Deleted kernel {args.name}")
    return 0


def cmd_kernel_list(args: argparse.Namespace) -> int:
    m = manager()
    _, used = _usage(m)
    ks = m.kernels.list()
    details = {k.name: m.kernels.details(k) for k in ks}
    if args.json:
        print_json(
            [{**details[k.name], "name": k.name, "path": str(k.path), "initrd": k.initrd is not None,
              "size": k.path.stat().st_size, "used_by": used.get(k.name, 0)} for k in ks]
        )
        return 0
    if not ks:
        print("No kernels: import one with 'vmm kernel import VMLINUX --name default'", file=sys.stderr)
        return 0
    def yes_no(value: object) -> str:
        return "?" if value is None else "yes" if value else "no"

    table(
        ["NAME", "VERSION", "ARCH", "SIZE", "PVH", "INITRD", "CREATED", "USED BY"],
        [
            [k.name, str(details[k.name].get("version") or "?"), str(details[k.name].get("arch", "")),
             human_size(k.path.stat().st_size), yes_no(details[k.name].get("pvh")),
             "yes" if k.initrd else "no", str(k.meta.get("created_at", "")), str(used.get(k.name, 0))]
            for k in ks
        ],
    )
    return 0


COMMANDS = {
    "image": _add_image,
    "kernel": _add_kernel,
}
