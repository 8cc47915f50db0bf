"""The seam where a hypervisor gets confined: what it runs as, and where it sees host files.

An engine builds its command line and its configuration for an unconfined process, then
passes them through a ``Jail``: ``wrap_argv`` puts the confinement around the command (e.g.
Firecracker's ``jailer --id ... --exec-file ... --`` with its chroot, uid and cgroups), and
``expose`` turns a host path the VM needs (kernel, drives, log, API socket) into the path
the confined process sees (inside its chroot). Both are pure: a jail that must link or copy
files into its root does so when it is set up, not here, so that a spec is still validated
completely before anything on the host changes.

``NoJail``, the default, is the identity: the hypervisor runs as root, in the host's
filesystem, which is what vmm does today.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # typing costs every start ~2 ms; at run time a protocol is just a base class
    Protocol = object


class Jail(Protocol):
    def wrap_argv(self, argv: Sequence[str]) -> list[str]:
        """The command that runs ``argv`` confined (its first word is what gets spawned)."""

    def expose(self, host_path: Path) -> Path:
        """``host_path`` as the confined process sees it."""


class NoJail:
    """No confinement: the command as it is, every path as it is on the host."""

    def wrap_argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def expose(self, host_path: Path) -> Path:
        return host_path

    def __repr__(self) -> str:
        return "NoJail()"
