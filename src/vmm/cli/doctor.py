"""``vmm doctor``: the host's preflight report (``vmm.host.doctor``), rendered; ``--fix``."""

from __future__ import annotations

from vmm.cli.common import print_json, require_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers


def _add_doctor(sub: SubParsers) -> None:
    d = sub.add_parser("doctor", help="check the host for what vmm needs; find and clean leftovers")
    d.add_argument("--json", action="store_true")
    d.add_argument(
        "--fix", action="store_true", help="remove orphaned TAPs, stale sockets, leftover files"
    )
    d.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from vmm.host import doctor

    cfg, error = doctor.load_config()
    probes = doctor.Probes()
    checks, found = doctor.report(cfg, error, probes)
    fixed: list[str] = []
    if args.fix and doctor.fixable(checks, found):
        require_root()
        fixed = doctor.fix_all(cfg, checks, found, probes)
        checks, found = doctor.report(cfg, error, probes)
    ok = doctor.healthy(checks)
    if args.json:
        print_json({"healthy": ok, "checks": [c.to_json() for c in checks], "fixed": fixed})
        return 0 if ok else 1
    labels = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    for line in fixed:
        print(f"fixed: {line}")
    for c in checks:
        print(f"{labels[c.status]}  {c.name:<{width}}  {c.message}")
        if c.status != "ok" and c.hint:
            print(f"      {'':<{width}}  hint: {c.hint}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    print(f"{'healthy' if ok else 'NOT healthy'}: {fails} failed, {warns} warning(s)")
    return 0 if ok else 1


COMMANDS = {"doctor": _add_doctor}
