"""Firecracker's command line (a pure builder; the engine passes it through its ``Jail``).

``firecracker --api-sock S --id ID``: no config file (the engine configures the VM over the
API), the API socket path as the process sees it, and the instance id Firecracker uses in
its log lines and, under the jailer, in its chroot path. Stdout (the serial console) and
stderr go where the engine spawns them.
"""

from __future__ import annotations

from pathlib import Path

from vmm.engines.firecracker.bodies import validate_instance_id


def build_argv(binary: str, *, api_socket: Path, vm_id: str) -> list[str]:
    """The command that starts Firecracker for one VM; ``vm_id`` is checked (Firecracker
    panics at startup on an id it does not accept)."""
    return [binary, "--api-sock", str(api_socket), "--id", validate_instance_id(vm_id)]
