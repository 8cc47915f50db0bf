"""Choosing QEMU's accelerator (KVM or TCG) and reading the host TSC frequency.

``/dev/kvm`` answering is not enough: on hosts whose KVM is the ``kvm_pvm`` paravirtual
hypervisor, the device opens and reports API version 12, but an unmodified guest kernel crashes
in its instruction emulator. Such a host counts as "KVM present but unusable", so ``auto`` picks
TCG there and an explicit ``kvm`` is refused with an explanation.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path

from vmm.errors import ValidationError, VmmError
from vmm.log import get_logger

log = get_logger(__name__)

ACCELS = ("auto", "kvm", "tcg")
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
KVM_DEVICE = Path("/dev/kvm")
SYS_MODULE = Path("/sys/module")
# Hypervisor modules that answer on /dev/kvm but cannot run an unmodified guest kernel.
UNUSABLE_KVM_MODULES = ("kvm_pvm",)


def kvm_api_version(device: Path = KVM_DEVICE) -> int:
    """Open ``device`` read-write and ask KVM_GET_API_VERSION; raises ``OSError``."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION)
    finally:
        os.close(fd)


def unusable_kvm_module(sys_module: Path = SYS_MODULE) -> str | None:
    """The loaded hypervisor module that cannot run unmodified guests, if any."""
    for name in UNUSABLE_KVM_MODULES:
        if (sys_module / name).exists():
            return name
    return None


def kvm_unusable_reason(
    *,
    api_version: Callable[[], int] = kvm_api_version,
    unusable_module: Callable[[], str | None] = unusable_kvm_module,
) -> str | None:
    """Why KVM cannot run guests here, or None when it can. Probes are injectable for tests."""
    try:
        version = api_version()
    except OSError as exc:
        return f"/dev/kvm cannot be used: {exc.strerror or exc}"
    if version != KVM_API_VERSION:
        return f"/dev/kvm reports KVM API version {version}, expected {KVM_API_VERSION}"
    module = unusable_module()
    if module is not None:
        return (
            f"/dev/kvm is provided by the {module} paravirtual hypervisor, "
            "which cannot run unmodified guest kernels"
        )
    return None


def resolve_accel(
    requested: str,
    *,
    api_version: Callable[[], int] = kvm_api_version,
    unusable_module: Callable[[], str | None] = unusable_kvm_module,
) -> tuple[str, str]:
    """Turn "auto" | "kvm" | "tcg" into the accelerator to run with and the reason for it.

    Raises ``VmmError`` when "kvm" is asked for explicitly and cannot run guests here.
    """
    if requested not in ACCELS:
        raise ValidationError(
            f"unknown accelerator {requested!r}",
            hint="use one of: " + ", ".join(ACCELS),
        )
    if requested == "tcg":
        return "tcg", "tcg requested"
    why_not = kvm_unusable_reason(api_version=api_version, unusable_module=unusable_module)
    if requested == "kvm":
        if why_not is not None:
            raise VmmError(
                "KVM cannot run guests on this host",
                details=why_not,
                hint="use accel 'tcg' (or 'auto', which picks tcg here)",
            )
        return "kvm", "kvm requested and usable"
    if why_not is None:
        return "kvm", "auto: /dev/kvm is usable"
    return "tcg", f"auto: {why_not}; using TCG (software emulation)"


_SYS_TSC_KHZ = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
_CPU_MHZ = re.compile(r"^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)


def parse_cpuinfo_tsc_khz(cpuinfo: str) -> int | None:
    """The first CPU's "cpu MHz" from /proc/cpuinfo text, in kHz."""
    match = _CPU_MHZ.search(cpuinfo)
    if match is None:
        return None
    mhz = float(match.group(1))
    if not mhz < 1e9:  # a run of 400 digits is inf: round() would raise OverflowError
        return None
    khz = round(mhz * 1000)
    return khz if khz > 0 else None


def host_tsc_khz(
    *, sysfs: Path = _SYS_TSC_KHZ, cpuinfo: Path = Path("/proc/cpuinfo")
) -> int | None:
    """The host TSC frequency in kHz, or None when it cannot be read.

    Under TCG the guest's rdtsc returns the host TSC, so this is the value the guest needs as
    ``tsc_early_khz``. Prefer the kernel's own figure (``tsc_freq_khz``, on kernels that export
    it); otherwise "cpu MHz", which on VMs and constant-TSC hosts is the TSC rate.
    """
    try:
        khz = int(sysfs.read_text().strip())
        if khz > 0:
            return khz
    except (OSError, ValueError):
        pass
    try:
        return parse_cpuinfo_tsc_khz(cpuinfo.read_text())
    except OSError as exc:
        log.debug("cannot read %s: %s", cpuinfo, exc)
        return None
