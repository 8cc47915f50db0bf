"""KVM and the engines' binaries, told apart by the engine registry: which engine the config
runs (its binary missing is a failure, another engine's only a warning), which config key
names each engine's binary, and which engines need KVM or can emulate without it.

``ENGINE_CHECKS`` holds each engine's own checks (how to find and version its binary), keyed by
registry name; an engine the registry adds needs its row here (``tests/unit/test_doctor.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmm.engines import registry
from vmm.host.checks import FAIL, OK, WARN, Check

if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.engines.registry import EngineInfo
    from vmm.host.checks.probes import Probes

SUPPORTED_FC = "1.11."


def check_kvm(p: Probes, cfg: Config) -> Check:
    reason = p.kvm_unusable_reason()
    if reason is None:
        return Check("kvm", OK, "/dev/kvm is usable")
    engine = registry.info(cfg.engine)
    if not engine.can(registry.TCG):
        emulators = " or ".join(
            repr(n) for n in registry.names() if registry.info(n).can(registry.TCG)
        )
        return Check(
            "kvm", FAIL, f"{reason}: the {engine.name} engine needs KVM",
            "load kvm_intel/kvm_amd (or enable nested virtualisation)"
            + (f", or use engine {emulators} (it runs guests under TCG without KVM)" if emulators else ""),
        )  # fmt: skip
    return Check(
        "kvm",
        WARN,
        f"{reason}: {engine.display_name} guests run under TCG (slower)",
        f"nothing to do for engine {engine.name}",
    )


def _configured(cfg: Config, engine: EngineInfo) -> str | None:
    """The engine's binary as the config names it (None: the engine's default)."""
    value = getattr(cfg, engine.binary_setting)
    return value if isinstance(value, str) and value else None


def _missing(cfg: Config, engine: EngineInfo) -> str:
    """How bad the engine's binary missing is: it runs the VMs, or it is the other engine."""
    return FAIL if cfg.engine == engine.name else WARN


def check_firecracker(p: Probes, cfg: Config, engine: EngineInfo) -> Check:
    from vmm.engines.firecracker.engine import parse_version

    missing = _missing(cfg, engine)
    configured = _configured(cfg, engine)
    path = (
        configured if configured and os.sep in configured else p.which(configured or engine.binaries[0])
    )
    fallback = next((b for b in engine.binaries if os.sep in b), None)
    path = path or (None if configured else fallback)
    if not path or not p.executable(path):
        where = (
            f"{engine.binary_setting} {configured!r}"
            if configured
            else "firecracker (PATH, /usr/local/bin)"
        )
        return Check(
            engine.name, missing, f"not found: {where}",
            "install it with scripts/install.sh (Firecracker v1.11.0)"
            + ("" if configured else f", or set {engine.binary_setting} in the config"),
        )  # fmt: skip
    rc, out = p.output([path, "--version"])
    version = parse_version(out) if rc == 0 else None
    if version is None:
        return Check(
            engine.name,
            missing,
            f"{path} --version failed: {out[-200:]}",
            "reinstall Firecracker",
        )
    if not version.startswith(SUPPORTED_FC):
        return Check(
            engine.name,
            WARN,
            f"{path} is v{version}; vmm is made for v1.11.x",
            "install v1.11.0 with scripts/install.sh",
        )
    return Check(engine.name, OK, f"{path} v{version}")


def check_jailer(p: Probes, cfg: Config, engine: EngineInfo) -> Check:
    configured = _configured(cfg, engine)
    candidates = [p.which("jailer"), "/usr/local/bin/jailer"]
    if configured and os.sep in configured:
        candidates.insert(0, os.path.join(os.path.dirname(configured), "jailer"))
    found = next((c for c in candidates if c and p.executable(c)), None)
    if found:
        return Check("jailer", OK, found)
    return Check(
        "jailer",
        WARN,
        "jailer not found (optional: vmm does not jail VMs yet)",
        "scripts/install.sh installs it with Firecracker",
    )


def check_qemu(p: Probes, cfg: Config, engine: EngineInfo) -> Check:
    from vmm.engines.qemu.engine import DEFAULT_BINARY, INSTALL_HINT

    name = _configured(cfg, engine) or DEFAULT_BINARY
    path = name if os.sep in name else p.which(name)
    level = _missing(cfg, engine)
    if not path or not p.executable(path):
        what = "the configured engine" if level == FAIL else "optional: the second engine"
        return Check(engine.name, level, f"{name} not found ({what})", INSTALL_HINT)
    rc, out = p.output([path, "--version"])
    m = re.search(r"version\s+(\S+)", out)
    if rc != 0 or not m:
        return Check(
            engine.name,
            level,
            f"{path} --version failed: {out[-200:]}",
            "reinstall qemu-system-x86",
        )
    return Check(engine.name, OK, f"{path} {m.group(1)}")


EngineCheck = Callable[["Probes", "Config", "EngineInfo"], Check]

# Each engine's checks (by registry name), in report order.
ENGINE_CHECKS: dict[str, tuple[EngineCheck, ...]] = {
    "firecracker": (check_firecracker, check_jailer),
    "qemu": (check_qemu,),
}


def engine_checks(p: Probes, cfg: Config) -> list[tuple[str, Callable[[], Check]]]:
    """Every engine's checks, in registry order, each as (name, run it)."""
    steps: list[tuple[str, Callable[[], Check]]] = []
    for name in registry.names():
        engine = registry.info(name)
        for fn in ENGINE_CHECKS.get(name, ()):
            steps.append((fn.__name__[6:], lambda fn=fn, engine=engine: fn(p, cfg, engine)))  # type: ignore[misc]
    return steps
