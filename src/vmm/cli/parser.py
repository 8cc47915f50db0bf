"""The argument parser: one sub-command per use case, handlers in ``vmm.cli.commands``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from vmm import __version__
from vmm.cli import commands


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a hint, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        print(f"hint: see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _top() -> tuple[Parser, argparse._SubParsersAction[Parser]]:
    p = Parser(prog="vmm", description="Manage Firecracker and QEMU microVMs.")
    p.add_argument("--debug", action="store_true", help="log every command run; show tracebacks")
    p.add_argument("--version", action="version", version=f"vmm {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    return p, sub


def _add_create(sub: argparse._SubParsersAction[Parser]) -> None:
    c = sub.add_parser("create", help="create a VM (does not start it)")
    c.add_argument("name")
    c.add_argument("--cpus", type=positive_int, help="vCPUs (default 1)")
    c.add_argument("--memory", type=positive_int, metavar="MB", help="memory in MB (default 512)")
    c.add_argument("--disk", type=positive_int, metavar="MB", help="root disk size in MB (default 1024)")
    c.add_argument("--ssh-key", metavar="PATH", help="SSH public key for root")
    c.add_argument("--dns", action="append", metavar="SERVER", help="DNS server (repeatable)")
    c.add_argument("--image", help="rootfs image name (default: 'default')")
    c.add_argument("--kernel", help="kernel name (default: 'default')")
    c.add_argument("--engine", choices=("firecracker", "qemu"), help="hypervisor (default from config)")
    c.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="QEMU accelerator (default from config)")
    c.add_argument("--boot-args", metavar="ARGS", help="extra kernel command-line arguments")
    c.set_defaults(handler=commands.cmd_create)


def _add_start(sub: argparse._SubParsersAction[Parser]) -> None:
    s = sub.add_parser("start", help="start a VM and wait until SSH answers")
    s.add_argument("name")
    s.add_argument("--no-wait", dest="wait", action="store_false", help="return once the VM is booting")
    s.add_argument("--timeout", type=float, default=180.0, metavar="S", help="how long to wait for SSH (default 180)")
    s.set_defaults(handler=commands.cmd_start)


def _add_stop(sub: argparse._SubParsersAction[Parser]) -> None:
    t = sub.add_parser("stop", help="stop a VM (graceful, then SIGTERM, then SIGKILL)")
    t.add_argument("name")
    t.add_argument("--timeout", type=float, default=30.0, metavar="S", help="graceful shutdown wait (default 30)")
    t.set_defaults(handler=commands.cmd_stop)


def _add_delete(sub: argparse._SubParsersAction[Parser]) -> None:
    d = sub.add_parser("delete", aliases=["rm"], help="delete a VM and its disk")
    d.add_argument("name")
    d.add_argument("-f", "--force", action="store_true", help="stop it first if it is running")
    d.set_defaults(handler=commands.cmd_delete)


def _add_list(sub: argparse._SubParsersAction[Parser]) -> None:
    ls = sub.add_parser("list", aliases=["ls"], help="list VMs")
    ls.add_argument("-a", "--all", action="store_true", help="include stopped VMs")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=commands.cmd_list)


def _add_ssh(sub: argparse._SubParsersAction[Parser]) -> None:
    sh = sub.add_parser("ssh", help="open a shell in a VM, or run a command after --")
    sh.add_argument("name")
    sh.add_argument("-u", "--user", default="root")
    sh.add_argument("command", nargs=argparse.REMAINDER, help="command to run (after --)")
    sh.set_defaults(handler=commands.cmd_ssh)


def _add_inspect(sub: argparse._SubParsersAction[Parser]) -> None:
    ins = sub.add_parser("inspect", help="a VM's record and live state as JSON")
    ins.add_argument("name")
    ins.set_defaults(handler=commands.cmd_inspect)


def _add_config(sub: argparse._SubParsersAction[Parser]) -> None:
    cfg = sub.add_parser("config", help="show or initialise the config file")
    cfg_sub = cfg.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    ci = cfg_sub.add_parser("init", help="write the default config file")
    ci.add_argument("--force", action="store_true", help="overwrite an existing file")
    ci.set_defaults(handler=commands.cmd_config_init)
    cs = cfg_sub.add_parser("show", help="each setting with where it came from")
    cs.add_argument("--json", action="store_true")
    cs.set_defaults(handler=commands.cmd_config_show)
    cfg.set_defaults(handler=commands.help_of(cfg))


def _add_image(sub: argparse._SubParsersAction[Parser]) -> None:
    img = sub.add_parser("image", help="rootfs images")
    img_sub = img.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    ii = img_sub.add_parser("import", help="import an ext4 rootfs image")
    ii.add_argument("source", help="an ext4 image file")
    ii.add_argument("--name", required=True)
    ii.add_argument("-f", "--force", action="store_true", help="replace an image of that name")
    ii.set_defaults(handler=commands.cmd_image_import)
    il = img_sub.add_parser("list", help="list images")
    il.add_argument("--json", action="store_true")
    il.set_defaults(handler=commands.cmd_image_list)
    img.set_defaults(handler=commands.help_of(img))


def _add_kernel(sub: argparse._SubParsersAction[Parser]) -> None:
    k = sub.add_parser("kernel", help="guest kernels")
    k_sub = k.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    ki = k_sub.add_parser("import", help="import an ELF vmlinux kernel")
    ki.add_argument("path")
    ki.add_argument("--name", required=True)
    ki.add_argument("--initrd", metavar="FILE", help="initrd to boot the kernel with")
    ki.add_argument("-f", "--force", action="store_true", help="replace a kernel of that name")
    ki.set_defaults(handler=commands.cmd_kernel_import)
    kl = k_sub.add_parser("list", help="list kernels")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(handler=commands.cmd_kernel_list)
    k.set_defaults(handler=commands.help_of(k))


def _add_version(sub: argparse._SubParsersAction[Parser]) -> None:
    v = sub.add_parser("version", help="vmm's version and the engines found")
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=commands.cmd_version)


BUILDERS = {
    "create": _add_create,
    "start": _add_start,
    "stop": _add_stop,
    "delete": _add_delete,
    "list": _add_list,
    "ssh": _add_ssh,
    "inspect": _add_inspect,
    "config": _add_config,
    "image": _add_image,
    "kernel": _add_kernel,
    "version": _add_version,
}
ALIASES = {"rm": "delete", "ls": "list"}


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return ALIASES.get(arg, arg)
    return None


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The parser; with ``argv``, only the sub-command it names is built (argparse set-up of
    every sub-command costs more than a whole ``vmm list``)."""
    p, sub = _top()
    command = _command_of(argv) if argv is not None else None
    if command in BUILDERS:
        BUILDERS[command](sub)
    else:
        for build in BUILDERS.values():
            build(sub)
    return p
