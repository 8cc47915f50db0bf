"""The argument parser. Each command lives in a module of ``vmm.cli`` that exposes
``COMMANDS = {name: add_parser_function}``; only the module of the command being run is
imported and only its parser built (argparse set-up of every command costs more than a whole
``vmm list``). ``vmm --help`` builds them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from vmm import __version__

# command -> module; the order is the order of ``vmm --help``.
COMMAND_MODULES: dict[str, str] = {
    "create": "vmm.cli.vms",
    "start": "vmm.cli.vms",
    "stop": "vmm.cli.vms",
    "delete": "vmm.cli.vms",
    "list": "vmm.cli.vms",
    "ssh": "vmm.cli.vms",
    "inspect": "vmm.cli.vms",
    "suspend": "vmm.cli.snapshots",
    "snapshot": "vmm.cli.snapshots",
    "clone": "vmm.cli.snapshots",
    "port-forward": "vmm.cli.network",
    "network": "vmm.cli.network",
    "image": "vmm.cli.images",
    "kernel": "vmm.cli.images",
    "mount": "vmm.cli.mounts",
    "config": "vmm.cli.settings",
    "version": "vmm.cli.settings",
    "serve": "vmm.cli.serve",
    "service": "vmm.cli.host",
    "autostart": "vmm.cli.host",
    "autostop": "vmm.cli.host",
    "doctor": "vmm.cli.doctor",
    "logs": "vmm.cli.console",
    "console": "vmm.cli.console",
    "completion": "vmm.cli.host",
    "__complete": "vmm.cli.host",
}
ALIASES = {"rm": "delete", "ls": "list"}
# Sub-commands added to another module's command group: command -> the modules whose
# ``EXTENDS[command]`` adds them to that group (``vmm image snapshot`` is vmm.cli.snapshots').
EXTENSIONS: dict[str, tuple[str, ...]] = {"image": ("vmm.cli.snapshots",)}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a hint, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        print(f"hint: see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


if TYPE_CHECKING:
    from typing import TypeAlias

    # The type the add-parser functions receive.
    SubParsers: TypeAlias = argparse._SubParsersAction[Parser]


def _add(sub: SubParsers, command: str) -> None:
    module = importlib.import_module(COMMAND_MODULES[command])
    module.COMMANDS[command](sub)
    for extension in EXTENSIONS.get(command, ()):
        group = _subcommands(sub.choices[command])
        importlib.import_module(extension).EXTENDS[command](group)


def _subcommands(parser: argparse.ArgumentParser) -> SubParsers:
    """The sub-command group of a command's parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(f"{parser.prog} has no sub-commands")


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return ALIASES.get(arg, arg)
    return None


def build_parser(argv: Sequence[str] | None = None) -> Parser:
    """The parser; with ``argv``, only the sub-command it names is built."""
    p = Parser(prog="vmm", description="Manage Firecracker and QEMU microVMs.")
    p.add_argument("--debug", action="store_true", help="log every command run; show tracebacks")
    p.add_argument("--version", action="version", version=f"vmm {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    command = _command_of(argv) if argv is not None else None
    if command in COMMAND_MODULES:
        _add(sub, command)
    else:
        for name in COMMAND_MODULES:
            _add(sub, name)
    return p
