"""The command-line entry points of the guest recipes, for ``scripts/build-test-guest.sh``.

``python3 -m vmm.guest.debootstrap tree ...`` and ``python3 -m vmm.guest.kernelbuild build ...``
run these (the recipe modules hand over at ``__main__``), so the recipes themselves stay free
of printing: this module is vmm.guest's only printer, like ``vmm.cli`` is for ``vmm``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from vmm.errors import VmmError
from vmm.runner import Runner


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def debootstrap_main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m vmm.guest.debootstrap tree SUITE DIR [--mirror URL] [--packages-out FILE]``."""
    import argparse

    from vmm.guest import debootstrap

    p = argparse.ArgumentParser(prog="python3 -m vmm.guest.debootstrap")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tree", help="debootstrap SUITE into DIR and prepare it for vmm")
    t.add_argument("suite")
    t.add_argument("dir", type=Path)
    t.add_argument("--mirror", default=debootstrap.DEFAULT_MIRROR)
    t.add_argument("--packages-out", type=Path, help="write the package list here")
    args = p.parse_args(argv)
    try:
        pkgs = debootstrap.build_tree(Runner(), args.suite, args.dir, mirror=args.mirror,
                                      progress=_stderr, output=_stderr)
    except VmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.packages_out:
        args.packages_out.write_text(pkgs)
    return 0
