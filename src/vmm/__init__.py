"""vmm: manage Firecracker and QEMU microVMs for development environments.

``from vmm import Vmm`` is the Python API (``vmm.app``); it is imported on first use, so the
CLI's read-only commands do not pay for it."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Vmm"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmm.app import Vmm


def __getattr__(name: str) -> object:
    if name == "Vmm":
        from vmm.app import Vmm

        return Vmm
    raise AttributeError(f"module 'vmm' has no attribute {name!r}")
