"""vmm.service: built from data by a pure function; systemd-analyze verify accepts it silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.host.systemd import Service, UnitSpec, quote, render_unit, timeout_stop_s
from vmm.runner import RecordingRunner

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_shape() -> None:
    k = keys(render_unit(UnitSpec(vmm_bin="/usr/local/bin/vmm")))
    assert k["Type"] == ["oneshot"] and k["RemainAfterExit"] == ["yes"]
    assert k["ExecStart"] == ["/usr/local/bin/vmm autostart"]
    assert k["ExecStop"] == ["/usr/local/bin/vmm autostop --timeout 30"]
    assert k["After"] == ["network-online.target"] and k["Wants"] == ["network-online.target"]
    assert k["WantedBy"] == ["multi-user.target"]
    # longer than one VM's whole escalation (graceful 30 + SIGTERM 5 + SIGKILL 5), VMs in parallel
    assert int(k["TimeoutStopSec"][0]) >= 30 + 10 + 30
    assert timeout_stop_s(60) > timeout_stop_s(30)


def test_environment_and_quoting() -> None:
    text = render_unit(
        UnitSpec(vmm_bin="/opt/my vmm/vmm", environment=(("VMM_CONFIG", "/home/a b/c%d.json"),))
    )
    assert 'Environment="VMM_CONFIG=/home/a b/c%%d.json"' in text
    assert 'ExecStart="/opt/my vmm/vmm" autostart' in text
    assert quote("plain") == "plain" and quote('a"b') == '"a\\"b"'
    with pytest.raises(Exception, match="absolute"):
        render_unit(UnitSpec(vmm_bin="vmm"))


def test_shipped_unit_is_the_generated_one() -> None:
    assert (REPO / "scripts" / "vmm.service").read_text() == render_unit(
        UnitSpec(vmm_bin="/usr/local/bin/vmm")
    )


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing: apt-get install systemd",
)
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    vmm = Path(sys.executable).parent / "vmm"
    assert vmm.exists()
    unit = tmp_path / "vmm.service"
    unit.write_text(
        render_unit(UnitSpec(vmm_bin=str(vmm), environment=(("VMM_CONFIG", "/etc/vmm.json"),)))
    )
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_install_without_systemd_writes_and_explains(tmp_path: Path) -> None:
    runner = RecordingRunner()
    svc = Service(unit_dir=tmp_path, runner=runner, systemd=False)
    done = svc.install("[Unit]\n")
    assert (tmp_path / "vmm.service").read_text() == "[Unit]\n"
    assert runner.calls == [] and "systemd is not running" in done[-1]
    st = svc.status("[Unit]\n")
    assert st.installed and st.up_to_date and not st.enabled and st.active is None
    assert not svc.status("other").up_to_date
    svc.uninstall()
    assert not (tmp_path / "vmm.service").exists() and not svc.status().installed


def test_install_with_systemd_enables(tmp_path: Path) -> None:
    runner = RecordingRunner()
    Service(unit_dir=tmp_path, runner=runner, systemd=True).install("[Unit]\n")
    assert runner.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "vmm.service"]]
    runner.calls.clear()
    Service(unit_dir=tmp_path, runner=runner, systemd=True).uninstall()
    assert ["systemctl", "disable", "vmm.service"] in runner.calls
    assert not any("stop" in c for call in runner.calls for c in call)  # never stops the VMs
