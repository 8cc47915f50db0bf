"""Shared by the command modules: root check, config and services loading, rendering.

Kept free of argparse and heavy imports: ``vmm list`` loads this module on its fast path."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from vmm.errors import PermissionDenied

TYPE_CHECKING = False  # typing and argparse cost read-only commands ~7 ms
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from vmm.app import Vmm
    from vmm.config import Config


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


def app() -> Vmm:
    """The composition root: every service, built from the config files."""
    from vmm.app import Vmm

    return Vmm(load_config())




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
    from vmm.status import human_size as size

    return size(n)


def positive_int(text: str) -> int:
    """argparse ``type=`` for whole numbers (range checks come later, with clear messages)."""
    try:
        return int(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
