"""The QEMU engine (``qemu-system-x86_64 -M microvm``); see ``engine.py``."""

from vmm.engines.qemu.accel import host_tsc_khz, resolve_accel
from vmm.engines.qemu.argv import build_argv, build_cmdline
from vmm.engines.qemu.engine import QemuEngine
from vmm.engines.qemu.qmp import QmpClient, QmpConnectionError, QmpError

__all__ = [
    "QemuEngine",
    "QmpClient",
    "QmpConnectionError",
    "QmpError",
    "build_argv",
    "build_cmdline",
    "host_tsc_khz",
    "resolve_accel",
]
