"""The ``vmm`` command line: argument parsing, rendering, and errors → exit codes.

This package is the only one that prints. It catches ``VmmError`` only: the user sees
``error: <brief>`` plus a hint and exit code 1 (2 for usage errors); a traceback only with
``--debug``. argparse (stdlib) rather than click keeps ``vmm list`` start-up cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vmm.cli.parser import build_parser
from vmm.errors import VmmError


def _print_error(exc: VmmError) -> None:
    print(f"error: {exc.brief}", file=sys.stderr)
    if exc.details:
        for line in exc.details.splitlines():
            print(f"  {line}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if debug:  # logging is imported only when asked for: it costs read-only commands ~5 ms
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = handler(args)
        return int(rc or 0)
    except VmmError as exc:
        if debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
