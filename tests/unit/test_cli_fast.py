"""The argparse-free fast paths (``list``, ``start``, ``stop``) parse exactly what the full
parser does for the forms they take, and hand everything else to it."""

from __future__ import annotations

import pytest

from vmm.cli import _fast_lifecycle_args, _fast_list_args
from vmm.cli.parser import build_parser

pytestmark = pytest.mark.unit

FIELDS = ("handler", "name", "wait", "timeout", "all", "json")


def full(argv: list[str]) -> dict[str, object]:
    ns = build_parser(argv).parse_args(argv)
    if isinstance(getattr(ns, "name", None), list) and len(ns.name) == 1:
        ns.name = ns.name[0]  # start/stop take several names; the fast path takes one
    return {f: getattr(ns, f) for f in FIELDS if hasattr(ns, f)}


@pytest.mark.parametrize(
    "line",
    [
        "start dev",
        "start dev --no-wait",
        "start dev --timeout 5",
        "start dev --timeout 2.5 --no-wait",
        "stop dev",
        "stop web-1 --timeout 0",
        "list",
        "ls -a --json",
    ],
)
def test_fast_path_matches_the_parser(line: str) -> None:
    argv = line.split()  # vmm's arguments, e.g. "start dev --no-wait"
    fast = _fast_list_args(list(argv)) or _fast_lifecycle_args(list(argv))
    assert fast is not None
    assert {f: getattr(fast, f) for f in FIELDS if hasattr(fast, f)} == full(argv)


@pytest.mark.parametrize(
    "line",
    [
        "start",
        "start --no-wait dev",
        "start dev --timeout",
        "start dev --timeout soon",
        "start dev --timeout=5",
        "start dev extra",
        "start dev -h",
        "stop dev --no-wait",
        "delete dev",
        "list dev",
    ],
)
def test_anything_else_goes_to_the_parser(line: str) -> None:
    argv = line.split()
    assert _fast_list_args(list(argv)) is None and _fast_lifecycle_args(list(argv)) is None
