"""Image and kernel commands."""

from __future__ import annotations

import sys

from vmm.cli.common import (
    app,
    help_of,
    human_size,
    positive_int,
    print_json,
    require_root,
    table,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.app import Vmm
    from vmm.cli.parser import SubParsers


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
    ip = img_sub.add_parser(
        "pull", help="download Firecracker v1.11's CI guest (kernel + Ubuntu 24.04 rootfs)",
        description="Download the newest vmlinux-6.1.N (5.10 when there is none) and "
        "ubuntu-24.04.squashfs from the Firecracker CI artifacts bucket, convert the squashfs to "
        "ext4 and register both as the default kernel and image (--name).",
    )
    only = ip.add_mutually_exclusive_group()
    only.add_argument("--kernel-only", action="store_true")
    only.add_argument("--rootfs-only", action="store_true")
    ip.add_argument("--name", default="default", help="kernel and image name (default: default)")
    ip.add_argument("--base-url", metavar="URL", help="bucket URL (default: https://s3.amazonaws.com/spec.ccfc.min)")
    ip.add_argument("-f", "--force", action="store_true", help="replace an existing kernel/image")
    ip.set_defaults(handler=cmd_image_pull)
    ib = img_sub.add_parser(
        "build", help="build a ready vmm guest image with debootstrap (Debian/Ubuntu)",
        description="Build a vmm guest image: debootstrap --variant=minbase SUITE with systemd, "
        "openssh-server, iproute2, udev (+ --packages), prepared for vmm (sshd keys only with a "
        "host key made at first boot, serial console on ttyS0, systemd-networkd, fstab), then "
        "mkfs.ext4 -d. Needs root, debootstrap and the mirror.",
    )
    ib.add_argument("name")
    ib.add_argument("--debootstrap", required=True, metavar="SUITE", help="e.g. bookworm")
    ib.add_argument("--mirror", metavar="URL", help="default: http://deb.debian.org/debian")
    ib.add_argument("--packages", metavar="A,B", default="", help="extra packages to install")
    ib.add_argument("--size", type=positive_int, metavar="MB", help="image size (default: the tree + 25%% + 128 MB)")
    ib.add_argument("-f", "--force", action="store_true", help="replace an image of that name")
    ib.set_defaults(handler=cmd_image_build)
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
    kb = k_sub.add_parser(
        "build", help="build a Firecracker-compatible vmlinux from source and import it",
        description="Build a guest kernel: Firecracker v1.11's CI config + vmm's fragment "
        "(+ --config-fragment), make olddefconfig, a check that every required option survived "
        "(fails before compiling otherwise), make vmlinux, import. 6.1 defaults to Debian's "
        "/usr/src/linux-source-6.1.tar.xz (apt-get install linux-source-6.1 when missing); other "
        "versions need --source. About 10 minutes on 2 cores.",
    )
    kb.add_argument("--version", default="6.1", choices=("5.10", "6.1", "6.6"))
    kb.add_argument("--name", required=True)
    kb.add_argument("--source", metavar="TARBALL|DIR", help="kernel source tarball or clean tree")
    kb.add_argument("--config-fragment", metavar="FILE", action="append", default=[],
                    help="extra kconfig lines applied last (repeatable)")
    kb.add_argument("-j", "--jobs", type=positive_int, metavar="N", help="default: all CPUs")
    kb.add_argument("-f", "--force", action="store_true", help="replace a kernel of that name")
    kb.set_defaults(handler=cmd_kernel_build)
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
vmm guests boot systemd and 'vmm ssh' needs sshd: a Debian/Ubuntu tree lacking them gets them
with apt, run in a sandbox (never with host privileges), and is prepared like 'vmm image
build' images; other trees without them are
refused unless --as-is is given (imported unchanged).
"""


def cmd_image_import(args: argparse.Namespace) -> int:
    require_root()
    m = app()
    m.store.ensure_dirs()
    progress = _Progress(prefix="")
    try:
        img = m.images.import_source(
            args.source, args.name, size_mb=args.size, force=args.force, as_is=args.as_is,
            progress=progress,
        )
    finally:
        progress.clear()
    print(
        f"Imported image {img.name} ({human_size(img.virtual_size)}, "
        f"{human_size(img.disk_usage)} on disk) from {img.meta.get('source', args.source)}"
    )
    return 0


class _Progress:
    """Progress of a long command on stderr: each line as ``[vmm] line``; on a terminal also a
    status line rewritten in place (a download's bytes, the file the compiler is on), which a
    pipe or a log never gets (``status`` is None there)."""

    def __init__(self, prefix: str = "[vmm] ") -> None:
        self.prefix = prefix
        self.status = self._status if sys.stderr.isatty() else None
        self._shown = False

    def __call__(self, line: str) -> None:
        self.clear()
        print(f"{self.prefix}{line}", file=sys.stderr, flush=True)

    def _status(self, line: str) -> None:
        import shutil

        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write("\r\033[K" + f"{self.prefix}{line}"[:width])
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the status line (before a line, and when the command ends, also on an error)."""
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False


def cmd_image_pull(args: argparse.Namespace) -> int:
    require_root()
    from vmm.guest import pull

    m = app()
    m.store.ensure_dirs()
    progress = _Progress()
    try:
        k, img = pull.pull(
            m.images, m.kernels, name=args.name, base_url=args.base_url or pull.DEFAULT_BASE_URL,
            kernel=not args.rootfs_only, rootfs=not args.kernel_only, force=args.force,
            progress=progress, status=progress.status,
        )
    finally:
        progress.clear()
    if k is not None:
        print(f"Pulled kernel {k.name} ({k.meta.get('version') or '?'}) from {k.meta.get('source')}")
    if img is not None:
        print(f"Pulled image {img.name} ({human_size(img.virtual_size)}) from {img.meta.get('source')}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    require_root()
    m = app()
    m.store.ensure_dirs()
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    progress = _Progress()
    try:
        img = m.images.build_debootstrap(
            args.name, args.debootstrap, mirror=args.mirror, packages=packages, size_mb=args.size,
            force=args.force, progress=progress, output=progress.status,
        )
    finally:
        progress.clear()
    print(
        f"Built image {img.name} from {img.meta.get('source')} ({human_size(img.virtual_size)}, "
        f"{img.meta.get('packages')} packages)"
    )
    return 0


def cmd_image_delete(args: argparse.Namespace) -> int:
    require_root()
    m = app()
    vms, _ = m.store.load_all()
    m.images.delete(args.name, used_by=[vm.name for vm in vms if vm.image == args.name], force=args.force)
    print(f"Deleted image {args.name}")
    return 0


def _usage(m: Vmm) -> tuple[dict[str, int], dict[str, int]]:
    vms, _ = m.store.load_all()
    images: dict[str, int] = {}
    kernels: dict[str, int] = {}
    for vm in vms:
        images[vm.image] = images.get(vm.image, 0) + 1
        kernels[vm.kernel] = kernels.get(vm.kernel, 0) + 1
    return images, kernels


def cmd_image_list(args: argparse.Namespace) -> int:
    m = app()
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

    m = app()
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


def cmd_kernel_build(args: argparse.Namespace) -> int:
    require_root()
    from pathlib import Path

    m = app()
    m.store.ensure_dirs()
    progress = _Progress()
    try:
        k, config, release = m.kernels.build(
            args.name, args.version, source=Path(args.source) if args.source else None,
            fragments=[Path(f) for f in args.config_fragment], jobs=args.jobs, force=args.force,
            progress=progress, status=progress.status,
        )
    finally:
        progress.clear()
    print(f"Built kernel {k.name} ({k.meta.get('version') or release}, "
          f"{human_size(k.path.stat().st_size)}); config: {config}")
    return 0


def cmd_kernel_delete(args: argparse.Namespace) -> int:
    require_root()
    m = app()
    vms, _ = m.store.load_all()
    m.kernels.delete(args.name, used_by=[vm.name for vm in vms if vm.kernel == args.name])
    print(f"Deleted kernel {args.name}")
    return 0


def cmd_kernel_list(args: argparse.Namespace) -> int:
    m = app()
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
