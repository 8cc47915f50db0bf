"""The ``vmm`` command line: argument parsing, rendering, and errors → exit codes.

This package is the only one that prints. It catches ``VmmError`` only: the user sees
``error: <brief>`` plus a hint and exit code 1 (2 for usage errors); a traceback only with
``--debug``. argparse (stdlib) rather than click keeps ``vmm list`` start-up cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vmm.cli.running import Terminated, invoke

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__all__ = ["Terminated", "main"]

_LIST_FLAGS = {"-a": "all", "--all": "all", "--json": "json"}


def _fast_list_args(argv: list[str]) -> Namespace | None:
    """``vmm list [-a] [--json]`` without argparse: the most frequent command, run by scripts
    and prompts, pays no parser set-up. Anything else goes through the full parser."""
    if not argv or argv[0] not in ("list", "ls") or any(a not in _LIST_FLAGS for a in argv[1:]):
        return None
    from vmm.cli.vms import cmd_list

    flags = {_LIST_FLAGS[a] for a in argv[1:]}
    return Namespace(handler=cmd_list, all="all" in flags, json="json" in flags, debug=False, read_only=True)


def _fast_lifecycle_args(argv: list[str]) -> Namespace | None:
    """``vmm start NAME [--no-wait] [--timeout S]`` and ``vmm stop NAME [--timeout S]`` in their
    plain forms, without argparse (~6 ms of a start's CPU, times 50 VMs started at once).
    Anything else — help, an unknown option, a bad number — goes to the full parser, which
    gives the usual messages."""
    if len(argv) < 2 or argv[0] not in ("start", "stop") or argv[1].startswith("-"):
        return None
    command, name, rest = argv[0], argv[1], argv[2:]
    wait, timeout = True, 180.0 if command == "start" else 30.0
    while rest:
        opt = rest.pop(0)
        if opt == "--no-wait" and command == "start":
            wait = False
        elif opt == "--timeout" and rest:
            try:
                timeout = float(rest.pop(0))
            except ValueError:
                return None
        else:
            return None
    from vmm.cli import vms

    if command == "stop":
        return Namespace(handler=vms.cmd_stop, name=name, timeout=timeout, debug=False)
    return Namespace(handler=vms.cmd_start, name=name, wait=wait, timeout=timeout, debug=False)


class Namespace:
    """The subset of argparse.Namespace the fast path needs."""

    def __init__(self, **kwargs: object):
        self.__dict__.update(kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args: Any = _fast_list_args(argv) or _fast_lifecycle_args(argv)
    if args is None:
        from vmm.cli.parser import build_parser

        parser = build_parser(argv)
        args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if debug:  # logging is imported only when asked for: it costs read-only commands ~5 ms
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        from vmm.cli.parser import build_parser

        build_parser().print_help(sys.stderr)
        return 2
    return invoke(handler, args, debug=debug, handle_signals=not getattr(args, "read_only", False))
