"""The interface every hypervisor engine implements, and the spec it boots from.

Both engines take the same ``BootSpec`` (kernel, initrd, command line, cpus, memory, drives,
NICs) and return a ``ProcessRef``; a VM record can boot on either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmm.host.liveness import ProcessRef
from vmm.host.process import GracefulStep
from vmm.store import RunPaths

__all__ = ["BootSpec", "Drive", "Engine", "Nic", "OnSpawn", "ProcessRef", "RunPaths", "StopResult"]

OnSpawn = Callable[[ProcessRef], None]


@dataclass(frozen=True)
class Drive:
    """A block device. ``drive_id`` follows Firecracker's rule: ``[A-Za-z0-9_]+``."""

    drive_id: str
    path: Path
    read_only: bool = False
    root: bool = False


@dataclass(frozen=True)
class Nic:
    """A network interface backed by an existing, up TAP device on the host."""

    iface_id: str
    tap: str
    mac: str


@dataclass(frozen=True)
class BootSpec:
    """Everything needed to boot a VM, independent of the engine."""

    vm_id: str  # Firecracker --id: [A-Za-z0-9-]{1,64}
    name: str
    kernel: Path
    cmdline: str
    cpus: int
    memory_mb: int
    paths: RunPaths
    initrd: Path | None = None
    drives: tuple[Drive, ...] = ()
    nics: tuple[Nic, ...] = ()
    accel: str = "tcg"  # QEMU only: "kvm" or "tcg" (already resolved from "auto")
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    """How a VM stopped: the graceful step that worked ("acpi", "ctrl-alt-del", "ssh"), or
    "sigterm", "sigkill", "already-stopped"."""

    how: str
    exit_code: int | None = None


class Engine(Protocol):
    name: str

    def check_available(self) -> None:
        """Raise ``VmmError`` with an install hint when the hypervisor cannot be used."""

    def version(self) -> str | None:
        """The hypervisor's version string, or None when it is not installed."""

    def launch(self, spec: BootSpec, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """Start the VM detached from the caller and return its process once it is booting.

        ``on_spawn`` is called with the process as soon as it exists, before the engine waits
        for it or configures it: the caller records it there, so a caller killed mid-launch
        leaves a record that names the process (and the next command can stop it)."""

    # The command that makes the guest end this engine's process (``poweroff`` or ``reboot``).
    guest_stop_command: str

    def stop(
        self,
        ref: ProcessRef,
        paths: RunPaths,
        *,
        timeout: float,
        guest_steps: Sequence[GracefulStep] = (),
    ) -> StopResult:
        """The engine's graceful ways, then ``guest_steps``, then SIGTERM, then SIGKILL; clean
        the engine's sockets."""

    def kill(self, ref: ProcessRef, paths: RunPaths) -> None:
        """Stop at once (used to undo a failed start)."""

    def cleanup(self, paths: RunPaths) -> None:
        """Remove stale sockets left by a process that is gone."""
