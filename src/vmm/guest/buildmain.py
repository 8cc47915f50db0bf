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


def kernelbuild_main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m vmm.guest.kernelbuild build --version V --out DIR [--source S] [-j N]``.

    Progress and make's own output go to stderr as they come (the script's build log)."""
    import argparse
    import contextlib

    from vmm.guest import kernelbuild

    p = argparse.ArgumentParser(prog="python3 -m vmm.guest.kernelbuild")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build vmlinux, kernel.config, kernelrelease into --out")
    b.add_argument("--version", default="6.1", choices=kernelbuild.VERSIONS)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--source", type=Path)
    b.add_argument("--config-fragment", type=Path, action="append", default=[])
    b.add_argument("-j", "--jobs", type=int)
    sub.add_parser("recipe", help="print the recipe's inputs (for cache keys)")
    args = p.parse_args(argv)
    if args.cmd == "recipe":
        print("\n".join(kernelbuild.REQUIRED))
        print(kernelbuild.config_text())
        return 0
    try:
        with contextlib.suppress(FileExistsError):
            args.out.mkdir(parents=True)
        kernelbuild.build(Runner(), args.version, args.out, source=args.source,
                          fragments=args.config_fragment, jobs=args.jobs,
                          work_parent=args.out.parent, progress=_stderr, output=_stderr)
    except VmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
