"""vmm's parsers of host-program output, checked against captured outputs (tests/data/parsers).

Each folder there holds one program output (captured, or made by hand for an edge case) and a
``case.json`` naming the checks to run on it: a parser by dotted path (or a list of them, each
applied to the previous one's result), extra arguments, and the file of expected facts. The
facts are the parser's result as plain JSON: value objects become their fields (and their
``is_*``/``blocked`` properties), addresses strings, sets sorted lists; an expected
``{"raises": "VmmError", "match": "..."}`` means the parser must refuse the input.

    .venv/bin/python -m tests.unit.test_parsers_data --show CASE[/N]   # the facts, as found now
    .venv/bin/python -m tests.unit.test_parsers_data --write CASE[/N]  # accept them (review!)
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "parsers"
PROPERTIES = ("is_up", "is_bridge", "is_tap", "blocked")
ADDRESSES = (
    ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
    ipaddress.IPv4Interface, ipaddress.IPv6Interface,
)  # fmt: skip


def resolve(dotted: str) -> Callable[..., Any]:
    """``package.module.name`` (or a builtin module's function, e.g. ``json.loads``)."""
    module, _, name = dotted.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    assert callable(fn), f"{dotted} is not callable"
    return fn  # type: ignore[no-any-return]


def facts(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ADDRESSES):
        return str(value)
    if isinstance(value, dict):
        return {str(k): facts(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [facts(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((facts(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if hasattr(value, "to_dict"):  # a vmm.record.Record
        return facts(value.to_dict())
    slots = getattr(type(value), "__slots__", None)
    if slots:
        out = {name: facts(getattr(value, name)) for name in slots if not name.startswith("_")}
        for prop in PROPERTIES:
            if isinstance(getattr(type(value), prop, None), property):
                out[prop] = facts(getattr(value, prop))
        return out
    raise TypeError(f"no facts for {type(value).__name__}: teach tests/unit/test_parsers_data.py")


class Check:
    def __init__(self, case: str, index: int, spec: dict[str, Any], default_input: str | None):
        self.id = f"{case}/{index}"
        self.dir = DATA / case
        unknown = set(spec) - {"parser", "args", "input", "expected", "what", "xfail"}
        assert not unknown, f"{self.id}: unknown keys {sorted(unknown)}"
        parser = spec["parser"]
        self.parsers = [parser] if isinstance(parser, str) else list(parser)
        self.args = list(spec.get("args", []))
        input_name = spec.get("input", default_input)
        assert input_name, f"{self.id}: no input file"
        self.input = (self.dir / input_name).resolve()
        assert DATA in self.input.parents, f"{self.id}: the input must be under {DATA}"
        self.expected = self.dir / spec["expected"]
        self.xfail: str | None = spec.get("xfail")  # a known defect: the facts are the right ones

    def actual(self) -> Any:
        """The facts the parsers find now, or the refusal they raise."""
        value: Any = self.input.read_text()
        try:
            for i, dotted in enumerate(self.parsers):
                args = self.args if i == len(self.parsers) - 1 else []
                value = resolve(dotted)(value, *args)
        except Exception as exc:
            return {"raises": type(exc).__name__, "message": str(exc)}
        return facts(value)


def checks() -> list[Check]:
    found = []
    for manifest in sorted(DATA.glob("*/case.json")):
        spec = json.loads(manifest.read_text())
        unknown = set(spec) - {"input", "captured", "checks"}
        assert not unknown, f"{manifest}: unknown keys {sorted(unknown)}"
        for i, check in enumerate(spec["checks"]):
            found.append(Check(manifest.parent.name, i, check, spec.get("input")))
    return found


CHECKS = checks()


def test_the_data_is_there() -> None:
    cases = {c.id.split("/")[0] for c in CHECKS}
    assert len(cases) >= 15 and len(CHECKS) >= 20
    readme = (DATA / "README.md").read_text()
    missing = sorted(c for c in cases if f"`{c}`" not in readme)
    assert not missing, f"README.md says nothing about {missing}"


@pytest.mark.parametrize(
    "check",
    [
        pytest.param(c, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in CHECKS
    ],
    ids=[c.id for c in CHECKS],
)
def test_parser_finds_the_expected_facts(check: Check) -> None:
    expected = json.loads(check.expected.read_text())
    actual = check.actual()
    if isinstance(expected, dict) and "raises" in expected and set(expected) <= {"raises", "match"}:
        assert actual.get("raises") == expected["raises"], actual
        assert re.search(expected["match"], actual["message"]), actual["message"]
        return
    assert actual == expected


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("--show", "--write"):
        print(__doc__)
        return 2
    wanted = argv[1:]
    for check in CHECKS:
        if not any(check.id == w or check.id.split("/")[0] == w for w in wanted):
            continue
        text = json.dumps(check.actual(), indent=1, sort_keys=True) + "\n"
        if argv[0] == "--write":
            check.expected.write_text(text)
            print(f"wrote {check.expected.relative_to(DATA)}")
        else:
            print(f"== {check.id} -> {check.expected.relative_to(DATA)}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
