"""Image and kernel commands."""

from __future__ import annotations

import sys

from vmm.cli.common import (
    help_of,
    human_size,
    manager,
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
    ii = img_sub.add_parser("import", help="import an ext4 rootfs image")
    ii.add_argument("source", help="an ext4 image file")
    ii.add_argument("--name", required=True)
    ii.add_argument("-f", "--force", action="store_true", help="replace an image of that name")
    ii.set_defaults(handler=cmd_image_import)
    il = img_sub.add_parser("list", help="list images")
    il.add_argument("--json", action="store_true")
    il.set_defaults(handler=cmd_image_list)
    img.set_defaults(handler=help_of(img))


def _add_kernel(sub: SubParsers) -> None:
    k = sub.add_parser("kernel", help="guest kernels")
    k_sub = k.add_subparsers(title="commands", metavar="COMMAND")
    ki = k_sub.add_parser("import", help="import an ELF vmlinux kernel")
    ki.add_argument("path")
    ki.add_argument("--name", required=True)
    ki.add_argument("--initrd", metavar="FILE", help="initrd to boot the kernel with")
    ki.add_argument("-f", "--force", action="store_true", help="replace a kernel of that name")
    ki.set_defaults(handler=cmd_kernel_import)
    kl = k_sub.add_parser("list", help="list kernels")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(handler=cmd_kernel_list)
    k.set_defaults(handler=help_of(k))


def cmd_image_import(args: argparse.Namespace) -> int:
    require_root()
    from pathlib import Path

    m = manager()
    m.store.ensure_dirs()
    img = m.images.import_ext4(Path(args.source), args.name, force=args.force)
    print(f"Imported image {img.name} ({human_size(img.virtual_size)}) from {args.source}")
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
    print(f"Imported kernel {k.name} ({k.meta.get('arch')}, {human_size(k.path.stat().st_size)}){extra}")
    return 0


def cmd_kernel_list(args: argparse.Namespace) -> int:
    m = manager()
    _, used = _usage(m)
    ks = m.kernels.list()
    if args.json:
        print_json(
            [{**k.meta, "name": k.name, "path": str(k.path), "initrd": k.initrd is not None,
              "used_by": used.get(k.name, 0)} for k in ks]
        )
        return 0
    if not ks:
        print("No kernels: import one with 'vmm kernel import VMLINUX --name default'", file=sys.stderr)
        return 0
    table(
        ["NAME", "ARCH", "SIZE", "INITRD", "CREATED", "USED BY"],
        [
            [k.name, str(k.meta.get("arch", "")), human_size(k.path.stat().st_size),
             "yes" if k.initrd else "no", str(k.meta.get("created_at", "")), str(used.get(k.name, 0))]
            for k in ks
        ],
    )
    return 0


COMMANDS = {
    "image": _add_image,
    "kernel": _add_kernel,
}
