"""VM commands: create, start, stop, delete, list, ssh, inspect."""

from __future__ import annotations

import os
import sys

from vmm.cli.common import (
    app,
    load_config,
    positive_int,
    print_json,
    require_root,
    table,
)
from vmm.errors import ConflictError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.app import Vmm
    from vmm.cli.parser import SubParsers


def _add_create(sub: SubParsers) -> None:
    c = sub.add_parser("create", help="create a VM (does not start it)")
    c.add_argument("name")
    c.add_argument("--cpus", type=positive_int, help="vCPUs (default 1)")
    c.add_argument("--memory", type=positive_int, metavar="MB", help="memory in MB (default 512)")
    c.add_argument("--disk", type=positive_int, metavar="MB", help="root disk size in MB (default 1024)")
    c.add_argument("--ssh-key", metavar="PATH", help="SSH public key for root")
    c.add_argument("--dns", action="append", metavar="SERVER", help="DNS server (repeatable)")
    c.add_argument("--image", help="rootfs image name (default: 'default')")
    c.add_argument("--kernel", help="kernel name (default: 'default')")
    from vmm.config import ENGINES

    c.add_argument("--engine", choices=ENGINES, help="hypervisor (default from config)")
    c.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="QEMU accelerator (default from config)")
    c.add_argument("--boot-args", metavar="ARGS", help="extra kernel command-line arguments")
    c.add_argument("--ip", metavar="ADDR", help="pin the VM's address (default: the lowest free one)")
    c.add_argument("--autostart", action="store_true", help="start the VM when the host boots")
    c.add_argument(
        "--mount", action="append", metavar="PATH:TAG[:ro|rw]",
        help="host directory copied into an ext4 disk at each start, mounted at /mnt/TAG "
        "(repeatable; rw by default; see 'vmm mount --help')",
    )
    c.set_defaults(handler=cmd_create)


def _add_start(sub: SubParsers) -> None:
    s = sub.add_parser("start", help="start VMs and wait until SSH answers")
    s.add_argument("name", nargs="+", help="one or more VMs (several start in parallel)")
    s.add_argument("--no-wait", dest="wait", action="store_false", help="return once the VM is booting")
    s.add_argument("--timeout", type=float, default=180.0, metavar="S", help="how long to wait for SSH (default 180)")
    s.set_defaults(handler=cmd_start)


def _add_stop(sub: SubParsers) -> None:
    t = sub.add_parser("stop", help="stop VMs (graceful, then SIGTERM, then SIGKILL)")
    t.add_argument("name", nargs="+", help="one or more VMs (several stop in parallel)")
    t.add_argument("--timeout", type=float, default=30.0, metavar="S", help="graceful shutdown wait (default 30)")
    t.set_defaults(handler=cmd_stop)


def _add_delete(sub: SubParsers) -> None:
    d = sub.add_parser("delete", aliases=["rm"], help="delete a VM and its disk")
    d.add_argument("name")
    d.add_argument("-f", "--force", action="store_true", help="stop it first if it is running")
    d.set_defaults(handler=cmd_delete)


def _add_list(sub: SubParsers) -> None:
    ls = sub.add_parser("list", aliases=["ls"], help="list VMs")
    ls.add_argument("-a", "--all", action="store_true", help="include stopped VMs")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=cmd_list)


def _add_ssh(sub: SubParsers) -> None:
    sh = sub.add_parser("ssh", help="open a shell in a VM, or run a command after --")
    sh.add_argument("name")
    sh.add_argument("-u", "--user", default="root")
    sh.add_argument("command", nargs="...", help="command to run (after --)")  # argparse.REMAINDER
    sh.set_defaults(handler=cmd_ssh)


def _add_inspect(sub: SubParsers) -> None:
    ins = sub.add_parser("inspect", help="a VM's record and live state as JSON")
    ins.add_argument("name")
    ins.set_defaults(handler=cmd_inspect)


def _has_accel(engine: str) -> bool:
    """The engine emulates or uses KVM, as asked (``--accel``): worth showing which."""
    from vmm.engines import registry

    return engine in registry.names() and registry.info(engine).can(registry.TCG)


def cmd_create(args: argparse.Namespace) -> int:
    require_root()
    from vmm.services.create import CreateRequest

    vm = app().vms.create(
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
            ip=args.ip,
            autostart=args.autostart,
            mounts=args.mount,
        ),
        note=lambda line: print(f"note: {line}", file=sys.stderr),
    )
    engine = vm.engine + (f" (accel {vm.accel})" if _has_accel(vm.engine) else "")
    print(f"Created VM {vm.name} (id {vm.id}, IP {vm.ip}, {vm.cpus} vCPU, {vm.memory_mb} MB, {engine})")

    if not vm.ssh_public_key:
        print("note: no SSH key given (--ssh-key): 'vmm ssh' will not be able to log in", file=sys.stderr)
    print(f"Start it with: vmm start {vm.name}")
    return 0


def _services(args: argparse.Namespace) -> Vmm:
    """The composition root: a several-VM command's child gets its parent's (already built,
    engines included), anything else builds one."""
    services: Vmm | None = getattr(args, "services", None)
    return services if services is not None else app()


def _several(args: argparse.Namespace, command: str) -> int | None:
    """Several names: this command for each VM in its own forked child (``cli.fanout``)."""
    names = [args.name] if isinstance(args.name, str) else list(args.name)
    if len(names) == 1:
        args.name = names[0]
        return None
    import copy

    from vmm.cli.fanout import run_each, warm
    from vmm.cli.running import invoke

    handler = cmd_start if command == "start" else cmd_stop
    services = app()
    warm(services, names)  # the children inherit what the parent imported and built

    def one(name: str) -> int:
        single = copy.copy(args)
        single.name = name
        single.services = services
        return invoke(handler, single, debug=bool(getattr(args, "debug", False)), handle_signals=True)

    return run_each(command, names, one)


def cmd_start(args: argparse.Namespace) -> int:
    require_root()
    several = _several(args, "start")
    if several is not None:
        return several
    vms = _services(args).vms
    vm = vms.start(args.name)
    accel = f", accel {vm.accel_in_use}" if _has_accel(vm.engine) else ""
    print(f"Started VM {vm.name} ({vm.engine}{accel}) at {vm.ip}", flush=True)
    if args.wait:
        print("Waiting for SSH ...", end=" ", flush=True)
        try:
            waited = vms.wait_ready(vm, timeout=args.timeout)
        except BaseException:
            print(flush=True)
            raise
        print(f"ready after {waited:.1f} s")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    require_root()
    several = _several(args, "stop")
    if several is not None:
        return several
    from vmm.status import StopOutcome

    how = _services(args).vms.stop(args.name, timeout=args.timeout)
    if how == StopOutcome.NOT_RUNNING:
        print(f"VM {args.name} is not running")
    else:
        print(f"Stopped VM {args.name}: {how.describe()}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    require_root()
    app().vms.delete(args.name, force=args.force)
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
            if _has_accel(vm.engine):
                # a suspended VM resumes with the accelerator it was saved under
                ran = v.alive or v.state == "suspended"
                engine += "/" + (vm.accel_in_use if ran and vm.accel_in_use else vm.accel)
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
    from vmm.status import VMView

    vm = app().get(args.name)
    if not VMView.of(vm).alive:
        raise ConflictError(f"VM {vm.name!r} is not running", hint=f"start it with 'vmm start {vm.name}'")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    ssh.become_invoking_user()  # from here on, the user's own files as the user
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
        from vmm.errors import ToolMissing

        raise ToolMissing("ssh") from None


def cmd_inspect(args: argparse.Namespace) -> int:
    m = app()
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
    if view.alive:  # what the hypervisor itself reports, when it answers within 2 s
        d["live"]["engine_state"] = m.engine(vm.engine).live_state(paths, timeout=2.0)
    print_json(d)
    return 0


COMMANDS = {
    "create": _add_create,
    "start": _add_start,
    "stop": _add_stop,
    "delete": _add_delete,
    "list": _add_list,
    "ssh": _add_ssh,
    "inspect": _add_inspect,
}
