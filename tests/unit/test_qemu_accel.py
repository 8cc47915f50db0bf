"""Accelerator resolution with injected /dev/kvm and /sys/module probes; host TSC rate."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from vmm.engines.qemu.accel import (
    host_tsc_khz,
    kvm_unusable_reason,
    parse_cpuinfo_tsc_khz,
    resolve_accel,
    unusable_kvm_module,
)
from vmm.errors import ValidationError, VmmError

pytestmark = pytest.mark.unit


def api(version: int) -> Callable[[], int]:
    return lambda: version


def api_fails(code: int) -> Callable[[], int]:
    def probe() -> int:
        raise OSError(
            code, {errno.ENOENT: "No such file or directory"}.get(code, "Permission denied")
        )

    return probe


def no_module() -> str | None:
    return None


def pvm() -> str | None:
    return "kvm_pvm"


def test_auto_picks_kvm_when_usable() -> None:
    accel, reason = resolve_accel("auto", api_version=api(12), unusable_module=no_module)
    assert (accel, reason) == ("kvm", "auto: /dev/kvm is usable")


def test_auto_picks_tcg_on_kvm_pvm_and_says_why() -> None:
    accel, reason = resolve_accel("auto", api_version=api(12), unusable_module=pvm)
    assert accel == "tcg"
    assert "kvm_pvm" in reason and "unmodified guest" in reason


@pytest.mark.parametrize(
    ("probe", "text"),
    [
        (api_fails(errno.ENOENT), "No such file"),
        (api_fails(errno.EACCES), "Permission denied"),
        (api(11), "API version 11"),
    ],
)
def test_auto_picks_tcg_without_kvm(probe: Callable[[], int], text: str) -> None:
    accel, reason = resolve_accel("auto", api_version=probe, unusable_module=no_module)
    assert accel == "tcg"
    assert text in reason


def test_explicit_kvm_usable() -> None:
    assert resolve_accel("kvm", api_version=api(12), unusable_module=no_module)[0] == "kvm"


def test_explicit_kvm_unusable_is_a_clear_error() -> None:
    with pytest.raises(VmmError, match="KVM cannot run guests") as err:
        resolve_accel("kvm", api_version=api(12), unusable_module=pvm)
    assert err.value.details is not None and "kvm_pvm" in err.value.details
    assert err.value.hint is not None and "tcg" in err.value.hint


def test_explicit_kvm_without_device() -> None:
    with pytest.raises(VmmError) as err:
        resolve_accel("kvm", api_version=api_fails(errno.ENOENT), unusable_module=no_module)
    assert err.value.details is not None and "/dev/kvm" in err.value.details


def test_tcg_never_probes() -> None:
    def boom() -> int:
        raise AssertionError("probed")

    assert resolve_accel("tcg", api_version=boom, unusable_module=pvm)[0] == "tcg"


def test_unknown_accel() -> None:
    with pytest.raises(ValidationError, match="unknown accelerator 'hvf'"):
        resolve_accel("hvf")


def test_module_probe_is_only_consulted_when_kvm_answers() -> None:
    assert kvm_unusable_reason(api_version=api(12), unusable_module=no_module) is None


def test_unusable_module_reads_sys_module(tmp_path: Path) -> None:
    assert unusable_kvm_module(tmp_path) is None
    (tmp_path / "kvm").mkdir()
    assert unusable_kvm_module(tmp_path) is None
    (tmp_path / "kvm_pvm").mkdir()
    assert unusable_kvm_module(tmp_path) == "kvm_pvm"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2300.000
cache size\t: 16384 KB

processor\t: 1
cpu MHz\t\t: 2299.998
"""


def test_parse_cpuinfo() -> None:
    assert parse_cpuinfo_tsc_khz(CPUINFO) == 2300000
    assert parse_cpuinfo_tsc_khz("cpu MHz\t\t: 2599.9995\n") == 2600000
    assert parse_cpuinfo_tsc_khz("processor : 0\n") is None


def test_host_tsc_prefers_sysfs(tmp_path: Path) -> None:
    sysfs, cpuinfo = tmp_path / "tsc_freq_khz", tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert host_tsc_khz(sysfs=sysfs, cpuinfo=cpuinfo) == 2300000
    sysfs.write_text("2294687\n")
    assert host_tsc_khz(sysfs=sysfs, cpuinfo=cpuinfo) == 2294687
    sysfs.write_text("garbage\n")
    assert host_tsc_khz(sysfs=sysfs, cpuinfo=cpuinfo) == 2300000
    assert host_tsc_khz(sysfs=sysfs, cpuinfo=tmp_path / "missing") is None
