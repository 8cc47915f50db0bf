"""The engines vmm knows, and what each can do: callers ask about capabilities, not names.

Config validation, the CLI's ``--engine`` choices, ``vmm version`` and the lifecycle read this
table; a third engine is one more entry here (and its package under ``engines/``). Kept free
of the engines' own imports: ``vmm list`` and ``config show`` load it cheaply, and an engine's
module is imported only when one of its VMs is acted on.
"""

from __future__ import annotations

from vmm.engines import firecracker, qemu  # their facts only, not the engines
from vmm.errors import ValidationError
from vmm.record import FrozenRecord

TYPE_CHECKING = False  # typing costs read-only commands ~2 ms; mypy still sees the imports
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmm.config import Config
    from vmm.engines.base import Engine

# Capabilities
TCG = "tcg"  # can emulate the CPU where KVM is missing (the accel setting applies, and
# what a VM runs with is worth showing: "qemu/tcg"); without it the engine runs on KVM only
CONSOLE = "console"  # a serial console socket to attach to (vmm console): the engine's
# console_socket(paths) is not None (tests/unit/test_*_engine.py check the two agree)
NEEDS_KVM = "needs-kvm"
SNAPSHOT = "snapshot"  # saves a running VM's memory and device state and restores it in a new
# process (suspend/resume, snapshots with memory): its engine is an ``engines.base.Snapshotting``


class EngineInfo(FrozenRecord):
    name: str
    display_name: str  # how prose names it ("QEMU guests run under TCG")
    binary_setting: str  # the config key naming its binary
    capabilities: frozenset[str]
    factory: str  # "module:function" building the engine from a Config, imported on first use
    binaries: tuple[str, ...]  # where its binary is looked for: names on PATH, then paths
    install_hint: str  # how to get the binary

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def build(self, cfg: Config) -> Engine:
        """The engine, its module imported now (and only now: ``vmm list`` never does)."""
        import importlib

        module, _, function = self.factory.partition(":")
        make: Callable[[Config], Engine] = getattr(importlib.import_module(module), function)
        return make(cfg)

    def find_binary(self, configured: str | None = None) -> str | None:
        """The binary to run: ``configured`` (a path, or a name looked up on PATH), else the
        first of ``binaries`` found; None when there is none."""
        import os
        import shutil

        for candidate in (configured,) if configured else self.binaries:
            if os.sep in candidate:
                if os.path.isfile(candidate):
                    return candidate
            elif found := shutil.which(candidate):
                return found
        return None


# In order of preference: ``vmm config init`` picks the first one the host can run.
ENGINES: dict[str, EngineInfo] = {
    "firecracker": EngineInfo(
        "firecracker", "Firecracker", "firecracker_bin", frozenset({NEEDS_KVM, SNAPSHOT}),
        "vmm.engines.firecracker.engine:from_config",
        firecracker.BINARIES, firecracker.INSTALL_HINT,
    ),
    "qemu": EngineInfo(
        "qemu", "QEMU", "qemu_bin", frozenset({TCG, CONSOLE, SNAPSHOT}),
        "vmm.engines.qemu.engine:from_config",
        qemu.BINARIES, qemu.INSTALL_HINT,
    ),
}  # fmt: skip


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def info(name: str) -> EngineInfo:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValidationError(
            f"unknown engine {name!r}", hint=f"use {' or '.join(ENGINES)}"
        ) from None


def accel_in_use(engine: str, resolved: str) -> str:
    """What a VM of ``engine`` runs with: the resolved accel for an engine that can emulate,
    else KVM (the only way it runs)."""
    return resolved if info(engine).can(TCG) else "kvm"
