"""Command handlers: parse → call the core → render. Heavy modules are imported inside handlers
so read-only commands stay fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from vmm.errors import ConflictError, PermissionDenied

TYPE_CHECKING = False  # typing and argparse cost read-only commands ~7 ms
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from vmm.config import Config
    from vmm.manager import Manager


def help_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def require_root() -> None:
    if os.geteuid() != 0:
        import shlex

        cmd = shlex.join(["vmm", *sys.argv[1:]])
        raise PermissionDenied(f"requires root: try sudo {cmd}")


def load_config() -> Config:
    from vmm.config import load_config as load

    return load()


def manager() -> Manager:
    from vmm.manager import Manager

    return Manager(load_config())


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers).rstrip())
    for row in rows:
        print(fmt.format(*row).rstrip())


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


# -- VMs ----------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    require_root()
    from vmm.manager import CreateRequest

    m = manager()
    vm = m.create(
        CreateRequest(
            name=args.name,
            cpus=args.cpus,
            memory_mb=args.memory,
            disk_mb=args.disk,
            ssh_key=args.ssh_key,
            dns=args.dns,
            image=args.image,
            kernel=args.kernel,
            engine=args.engine,
            accel=args.accel,
            boot_args=args.boot_args,
        )
    )
    engine = vm.engine + (f" (accel {vm.accel})" if vm.engine == "qemu" else "")
    print(f"Created VM {vm.name} (id {vm.id}, IP {vm.ip}, {vm.cpus} vCPU, {vm.memory_mb} MB, {engine})")
    if not vm.ssh_public_key:
        print("note: no SSH key given (--ssh-key): 'vmm ssh' will not be able to log in", file=sys.stderr)
    print(f"Start it with: vmm start {vm.name}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    require_root()
    m = manager()
    vm = m.start(args.name)
    accel = f", accel {vm.accel_in_use}" if vm.engine == "qemu" else ""
    print(f"Started VM {vm.name} ({vm.engine}{accel}) at {vm.ip}", flush=True)
    if args.wait:
        print("Waiting for SSH ...", end=" ", flush=True)
        try:
            waited = m.wait_ready(vm, timeout=args.timeout)
        except BaseException:
            print(flush=True)
            raise
        print(f"ready after {waited:.1f} s")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    require_root()
    how = manager().stop(args.name, timeout=args.timeout)
    if how == "not-running":
        print(f"VM {args.name} is not running")
    else:
        detail = {"graceful": "shut down", "sigterm": "terminated (SIGTERM)", "sigkill": "killed (SIGKILL)"}
        print(f"Stopped VM {args.name}: {detail.get(how, how)}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    require_root()
    manager().delete(args.name, force=args.force)
    print(f"Deleted VM {args.name}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    # Read-only and frequent: records + /proc only, without the manager's imports.
    from vmm.status import VMView
    from vmm.store import Store

    vms, record_problems = Store(load_config().data_path).load_all()
    views = [VMView.of(vm) for vm in vms]
    problems = [(p.name, p.error) for p in record_problems]
    shown = [v for v in views if args.all or v.state not in ("stopped", "created")]
    if args.json:
        out = []
        for v in shown:
            d = v.vm.to_dict()
            d["recorded_state"] = d["state"]
            d["state"] = v.state
            d.pop("ssh_public_key", None)
            out.append(d)
        print_json({"vms": out, "errors": [{"name": n, "error": e} for n, e in problems]})
    else:
        rows = []
        for v in shown:
            vm = v.vm
            engine = vm.engine
            if vm.engine == "qemu":
                engine += "/" + (vm.accel_in_use if v.alive and vm.accel_in_use else vm.accel)
            rows.append(
                [vm.name, v.state, vm.ip, str(vm.cpus), f"{vm.memory_mb}M", f"{vm.disk_mb}M", engine, vm.image]
            )
        if rows:
            table(["NAME", "STATE", "IP", "CPUS", "MEMORY", "DISK", "ENGINE", "IMAGE"], rows)
        elif not problems:
            hidden = len(views) - len(shown)
            msg = "No running VMs" + (f" ({hidden} stopped: use -a)" if hidden else "")
            print(msg, file=sys.stderr)
    for name, error in problems:
        print(f"warning: {name}: {error}", file=sys.stderr)
    return 1 if problems and not views else 0


def cmd_ssh(args: argparse.Namespace) -> int:
    from vmm.host import ssh

    m = manager()
    vm = m.get(args.name)
    if not m.view(vm).alive:
        raise ConflictError(f"VM {vm.name!r} is not running", hint=f"start it with 'vmm start {vm.name}'")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    known = ssh.known_hosts_file()
    ssh.ensure_known_hosts(known)
    argv = ssh.ssh_argv(
        ip=vm.ip,
        vm_id=vm.id,
        user=args.user,
        identities=ssh.identity_files(vm.ssh_key_path),
        known_hosts=known,
        command=command,
    )
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        from vmm.errors import VmmError

        raise VmmError("ssh is not installed", hint="apt-get install openssh-client") from None


def cmd_inspect(args: argparse.Namespace) -> int:
    m = manager()
    vm = m.get(args.name)
    view = m.view(vm)
    d = vm.to_dict()
    paths = m.store.run_paths(vm.name)
    d["live"] = {
        "state": view.state,
        "process_alive": view.alive,
        "rootfs": str(m.store.rootfs_path(vm.name)),
        "console_log": str(paths.console_log),
        "api_socket": str(paths.api_socket),
    }
    print_json(d)
    return 0


# -- config -------------------------------------------------------------------------------


def cmd_config_init(args: argparse.Namespace) -> int:
    from vmm.config import config_path, write_default_config

    path = config_path()
    cfg = write_default_config(path, force=args.force)
    print(f"Wrote {path} (host_interface {cfg.host_interface})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config()
    rows = cfg.rows()
    if args.json:
        print_json({k: {"value": v, "source": s} for k, v, s in rows})
        return 0
    suffix = "" if cfg.file_exists else " (not present: all defaults)"
    print(f"config file: {cfg.path}{suffix}")
    table(["KEY", "VALUE", "SOURCE"], [[k, v, s] for k, v, s in rows[1:]])
    return 0


# -- images and kernels -------------------------------------------------------------------


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


def cmd_version(args: argparse.Namespace) -> int:
    from vmm import __version__

    m = manager()
    engines: dict[str, str | None] = {}
    for name in ("firecracker", "qemu"):
        try:
            engines[name] = m.engine(name).version()
        except Exception:
            engines[name] = None
    if args.json:
        print_json({"vmm": __version__, "engines": engines})
    else:
        print(f"vmm {__version__}")
        for name, ver in engines.items():
            print(f"{name}: {ver or 'not found'}")
    return 0
