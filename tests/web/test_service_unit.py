"""vmm-web.service ('vmm service install --web'): the unit systemd-analyze accepts silently,
written next to vmm.service and enabled like it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.host.systemd import WEB_UNIT_NAME, Service, UnitSpec, render_web_unit
from vmm.runner import RecordingRunner

pytestmark = pytest.mark.unit

VMM = str(Path(sys.executable).parent / "vmm")


def test_the_web_unit_runs_vmm_serve_and_leaves_vms_alone() -> None:
    text = render_web_unit(UnitSpec(vmm_bin=VMM, environment=(("VMM_CONFIG", "/etc/vmm/config.json"),)))
    assert f"ExecStart={VMM} serve\n" in text
    assert "KillMode=process" in text  # stopping the server never signals a VM
    assert "After=network-online.target vmm.service" in text and "Restart=on-failure" in text
    assert 'Environment=VMM_CONFIG=/etc/vmm/config.json' in text
    assert text.endswith("WantedBy=multi-user.target\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing: apt-get install systemd")
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    unit = tmp_path / WEB_UNIT_NAME
    unit.write_text(render_web_unit(UnitSpec(vmm_bin=VMM)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_install_web_enables_vmm_web(tmp_path: Path) -> None:
    runner = RecordingRunner()
    svc = Service(unit_dir=tmp_path, runner=runner, systemd=True, unit_name=WEB_UNIT_NAME)
    done = svc.install(render_web_unit(UnitSpec(vmm_bin=VMM)))
    assert (tmp_path / WEB_UNIT_NAME).exists() and not (tmp_path / "vmm.service").exists()
    assert [c[-1] for c in runner.calls] == ["daemon-reload", WEB_UNIT_NAME]
    assert done[-1].startswith(f"enabled {WEB_UNIT_NAME}") and "systemctl start vmm-web" in done[-1]


def test_cli_service_install_web(tmp_path: Path) -> None:
    env = dict(os.environ, VMM_CONFIG=str(tmp_path / "none.json"))
    r = subprocess.run([VMM, "service", "install", "--web", "--print"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ExecStart=" in r.stdout and " serve\n" in r.stdout, r.stderr
    r = subprocess.run([VMM, "service", "install", "--web", "--unit-dir", str(tmp_path), "--no-enable"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and (tmp_path / WEB_UNIT_NAME).exists(), r.stderr
    assert not (tmp_path / "vmm.service").exists()
