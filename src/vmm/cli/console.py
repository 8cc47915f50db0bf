"""A VM's console: ``vmm logs`` (its console log) and ``vmm console`` (attach to its serial
console). The reading, following and relaying are ``vmm.host.console``; this module prints."""

from __future__ import annotations

import os
import sys

from vmm.cli.common import load_config, positive_int

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from vmm.cli.parser import SubParsers


def _add_logs(sub: SubParsers) -> None:
    lg = sub.add_parser("logs", help="a VM's console log")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing what the VM writes")
    lg.add_argument("-n", "--lines", type=positive_int, metavar="N", help="only the last N lines")
    lg.set_defaults(handler=cmd_logs)


def _add_console(sub: SubParsers) -> None:
    c = sub.add_parser("console", help="attach to a VM's serial console (QEMU; Ctrl-] detaches)")
    c.add_argument("name")
    c.set_defaults(handler=cmd_console)


def cmd_logs(args: argparse.Namespace) -> int:
    from vmm.host import console

    path = console.log_path(load_config().data_path, args.name)
    out = sys.stdout.buffer
    with console.LogReader(path) as log:
        for data in log.existing(args.lines):
            out.write(data)
        out.flush()
        if not args.follow:
            return 0
        try:
            for data in log.follow():
                out.write(data)
                out.flush()
        except KeyboardInterrupt:
            return 0
    return 0


def _write_all(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def cmd_console(args: argparse.Namespace) -> int:
    from vmm.host import console

    sock = console.connect(console.console_socket(load_config().data_path, args.name))
    tty = os.isatty(sys.stdin.fileno())
    if tty:
        print(f"Attached to {args.name}'s console; Ctrl-] detaches.\r", file=sys.stderr, flush=True)
    try:
        console.relay(sock, sys.stdin.fileno(), _write_all(sys.stdout.fileno()), raw=tty)
    finally:
        sock.close()
    if tty:
        print("\r\ndetached", file=sys.stderr)
    return 0


COMMANDS = {"logs": _add_logs, "console": _add_console}
