"""The interface every hypervisor engine implements, and the spec it boots from.

Both engines take the same ``BootSpec`` (kernel, initrd, command line, cpus, memory, drives,
NICs) and return a ``ProcessRef``; a VM record can boot on either. The value types are
``vmm.record`` records rather than dataclasses: this module is on every command that starts
or stops a VM, and ``dataclasses`` (with ``inspect``) costs several milliseconds to import and
more to build each class.

How an engine runs its process (pre-launch, spawn, wait-ready, post-shutdown) is shared in
``engines.managed``; what each engine can do that callers must know without importing it is
in ``engines.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from vmm.host.liveness import ProcessRef
from vmm.host.process import GracefulStep
from vmm.record import FrozenRecord
from vmm.store import RunPaths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # typing costs every start ~2 ms; at run time a protocol is just a base class
    Protocol = object

__all__ = [
    "BootSpec", "Drive", "Engine", "Nic", "OnSpawn", "ProcessRef", "RunPaths", "Snapshotting",
    "StopResult",
]  # fmt: skip

OnSpawn = Callable[[ProcessRef], None]


class Drive(FrozenRecord):
    """A block device. ``drive_id`` follows Firecracker's rule: ``[A-Za-z0-9_]+``."""

    drive_id: str
    path: Path
    read_only: bool = False
    root: bool = False


class Nic(FrozenRecord):
    """A network interface backed by an existing, up TAP device on the host."""

    iface_id: str
    tap: str
    mac: str


class BootSpec(FrozenRecord):
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
    # The accelerator, already resolved from "auto" ("kvm" or "tcg"). Only an engine that can
    # emulate (registry capability TCG: QEMU) reads it; Firecracker always runs on KVM and
    # ignores it (callers pass "kvm", see ``registry.accel_in_use``).
    accel: str = "tcg"


class StopResult(FrozenRecord):
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

    def check_paths(self, paths: RunPaths) -> None:
        """Raise ``ValidationError`` when this engine cannot use ``paths`` (a socket path too
        long for AF_UNIX): what ``launch`` would refuse, checkable when a VM is created."""

    def sockets(self, paths: RunPaths) -> tuple[Path, ...]:
        """The Unix sockets this engine's process serves for a VM (its API socket first): the
        ones ``cleanup`` removes once stale, and that a caller may chmod after launch."""

    def console_socket(self, paths: RunPaths) -> Path | None:
        """The serial console socket to attach to, or None when the engine has none (its
        console output only goes to ``paths.console_log``)."""

    def live_state(self, paths: RunPaths, *, timeout: float = 2.0) -> str | None:
        """What the hypervisor itself reports about the VM ("running", "Running", "paused"...),
        or None when it does not answer within ``timeout``."""

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


class Snapshotting(Engine, Protocol):
    """What an engine with the registry's SNAPSHOT capability adds: a running VM's memory and
    device state saved to a directory, and a fresh process that runs the guest on from it.
    Disks are the caller's: it copies them while the VM is paused."""

    # The files ``save_state`` writes into its directory.
    state_files: tuple[str, ...]

    def pause(self, paths: RunPaths) -> None:
        """Stop the guest's vCPUs; the process stays and disk writes in flight complete."""

    def resume(self, paths: RunPaths) -> None:
        """Let a paused guest run again."""

    def save_state(self, paths: RunPaths, dest: Path) -> None:
        """Write the paused VM's state into the existing directory ``dest`` (new files, 0600,
        sparse); the VM stays paused. On failure none of ``state_files`` is left there."""

    def restore(self, spec: BootSpec, state_dir: Path, on_spawn: OnSpawn | None = None) -> ProcessRef:
        """Spawn a fresh process for ``spec`` that loads ``state_dir`` and runs; like
        ``launch``, a failure kills that process. ``state_dir`` is only read."""
