"""``vmm doctor``: a preflight report of the host, one ``Check`` per line, with fix hints.

The checks live in ``vmm.host.checks`` (system, engines, records), each a function of the
config and a ``Probes`` object (what the host shows: devices, binaries, sysctls, links,
routes, files); tests pass probes that answer from data. A ``fail`` is a problem that stops vmm
from working (exit code 1); a ``warn`` is worth knowing but does not (an optional engine
missing, leftovers that ``--fix`` removes).

The report ends with what interrupted commands left (``vmm.host.leftovers``); ``fix_all``
removes both kinds of leftovers. Nothing here prints: ``vmm.cli.doctor`` renders the report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmm.errors import VmmError
from vmm.host.checks import FAIL, OK, WARN, Check, engines, records, system
from vmm.host.checks.probes import Probes
from vmm.log import get_logger

if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.host.leftovers import Leftover
    from vmm.runner import Runner

__all__ = ["Check", "Probes", "fix", "fix_all", "healthy", "load_config", "report", "run_checks"]

log = get_logger(__name__)


def _step(
    fn: Callable[[Probes, Config], Check], p: Probes, cfg: Config
) -> tuple[str, Callable[[], Check]]:
    return fn.__name__[6:], lambda: fn(p, cfg)


def run_checks(cfg: Config, config_error: str | None, probes: Probes) -> list[Check]:
    """Every check, in report order. A broken check is reported as a failure, not raised."""
    checks = [system.check_config(config_error, str(cfg.path))]
    steps = [
        _step(engines.check_kvm, probes, cfg),
        _step(system.check_tun, probes, cfg),
        *engines.engine_checks(probes, cfg),
        *(_step(fn, probes, cfg) for fn in system.TOOL_CHECKS),
    ]
    for name, run in steps:
        checks.append(_guarded(name, run))
    try:
        inv = records.take_inventory(cfg.data_path, probes)
    except OSError as exc:
        checks.append(Check("records", WARN, f"cannot read the data dir: {exc}", "run vmm as root"))
        return checks
    checks.append(_guarded("taps", lambda: records.check_taps(probes, inv)))
    checks.append(_guarded("sockets", lambda: records.check_sockets(probes, inv)))
    checks += records.check_records(inv)
    return checks


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # one broken probe must not hide the rest of the report
        log.debug("check %s failed", name, exc_info=True)
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "re-run with --debug",
        )


def leftover_check(found: list[Leftover]) -> Check:
    """What interrupted commands left (``vmm.host.leftovers``), as one line of the report."""
    if not found:
        return Check("leftovers", OK, "nothing left by interrupted commands")
    return Check(
        "leftovers",
        WARN,
        "; ".join(lo.what for lo in found),
        "vmm doctor --fix removes them (and stops what an interrupted start left running)",
    )


def healthy(checks: list[Check]) -> bool:
    return all(c.status != FAIL for c in checks)


def fix(checks: list[Check], runner: Runner) -> list[str]:
    """Remove the leftovers the checks found; returns one line per thing removed."""
    from vmm.network import links

    done = []
    for c in checks:
        for item in c.leftovers:
            try:
                if c.name == "taps":
                    links.delete_tap(runner, item)
                elif os.path.isdir(item) and not os.path.islink(item):
                    shutil.rmtree(item)
                else:
                    os.unlink(item)
                done.append(f"removed {item}")
            except (OSError, VmmError) as exc:
                done.append(f"could not remove {item}: {exc}")
    return done


# -- the whole report ------------------------------------------------------------------------------


def load_config() -> tuple[Config, str | None]:
    """The config, and None; or, when it is broken, the defaults (with ``VMM_DATA_DIR``) and
    why it is broken: the report shows that as a check and runs the rest."""
    from vmm.config import Config, config_path
    from vmm.config import load_config as load
    from vmm.errors import ConfigError

    try:
        return load(), None
    except ConfigError as exc:
        cfg = Config(path=config_path())
        if os.environ.get("VMM_DATA_DIR"):
            cfg.data_dir = os.environ["VMM_DATA_DIR"]
        return cfg, exc.brief


def _leftovers(cfg: Config) -> list[Leftover]:
    """What interrupted commands left (needs root to see everything; [] without a data dir)."""
    if not cfg.data_path.is_dir() or os.geteuid() != 0:
        return []
    from vmm.app import Vmm
    from vmm.host import leftovers

    return leftovers.find(Vmm(cfg))


def report(
    cfg: Config, config_error: str | None, probes: Probes
) -> tuple[list[Check], list[Leftover]]:
    """Every check, the last one about what interrupted commands left; and those leftovers
    (looked for only with a valid config)."""
    found = _leftovers(cfg) if config_error is None else []
    return [*run_checks(cfg, config_error, probes), leftover_check(found)], found


def fixable(checks: list[Check], found: list[Leftover]) -> bool:
    """Whether ``fix_all`` has anything to remove."""
    return bool(found) or any(c.leftovers for c in checks)


def fix_all(cfg: Config, checks: list[Check], found: list[Leftover], probes: Probes) -> list[str]:
    """Remove what the checks found and what interrupted commands left; one line per thing."""
    fixed = fix(checks, probes.runner)
    if found:
        from vmm.app import Vmm
        from vmm.host import leftovers

        fixed += leftovers.fix(Vmm(cfg), found)
    return fixed
