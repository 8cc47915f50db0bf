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


def test_uninstall_web_disables_and_stops_the_server_only(tmp_path: Path) -> None:
    runner = RecordingRunner()
    Service(unit_dir=tmp_path, runner=runner, systemd=True).install("[Unit]\n")
    web = Service(unit_dir=tmp_path, runner=runner, systemd=True, unit_name=WEB_UNIT_NAME)
    web.install(render_web_unit(UnitSpec(vmm_bin=VMM)))
    runner.calls.clear()
    done = web.uninstall(stop=True)
    assert runner.calls == [["systemctl", "disable", "--now", WEB_UNIT_NAME], ["systemctl", "daemon-reload"]]
    assert done == [f"disabled and stopped {WEB_UNIT_NAME}", f"removed {tmp_path / WEB_UNIT_NAME}"]
    assert not (tmp_path / WEB_UNIT_NAME).exists() and (tmp_path / "vmm.service").exists()
    runner.calls.clear()
    assert web.uninstall(stop=True) == [f"{tmp_path / WEB_UNIT_NAME} is not installed"] and runner.calls == []


def test_web_status_and_uninstall_without_systemd(tmp_path: Path) -> None:
    """No systemd as PID 1 (as here): status reads the files, uninstall removes the unit and
    the enablement link by hand, vmm.service's untouched."""
    wants = tmp_path / "multi-user.target.wants"
    wants.mkdir()
    runner = RecordingRunner()
    web = Service(unit_dir=tmp_path, runner=runner, systemd=False, unit_name=WEB_UNIT_NAME)
    text = render_web_unit(UnitSpec(vmm_bin=VMM))
    web.install(text)
    (tmp_path / "vmm.service").write_text("[Unit]\n")
    for unit in (WEB_UNIT_NAME, "vmm.service"):
        (wants / unit).symlink_to(tmp_path / unit)
    st = web.status(text)
    assert (st.installed, st.up_to_date, st.enabled, st.active) == (True, True, True, None)
    assert st.unit_path == str(tmp_path / WEB_UNIT_NAME) and not web.status("other").up_to_date
    assert web.uninstall(stop=True) == [f"removed {wants / WEB_UNIT_NAME}", f"removed {tmp_path / WEB_UNIT_NAME}"]
    assert runner.calls == [] and not web.status().installed and not web.status().enabled
    assert (wants / "vmm.service").is_symlink() and (tmp_path / "vmm.service").exists()


def vmm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VMM, *args], capture_output=True, text=True, env=env)


def test_cli_service_status_and_uninstall_web(tmp_path: Path) -> None:
    import json

    env = dict(os.environ, VMM_CONFIG=str(tmp_path / "none.json"))
    env.pop("VMM_DATA_DIR", None)
    units = str(tmp_path / "units")
    r = vmm("service", "status", "--web", "--unit-dir", units, env=env)
    assert r.returncode == 1
    assert r.stdout == (f"{WEB_UNIT_NAME}: not installed ({units}/{WEB_UNIT_NAME}); "
                        "install it with: sudo vmm service install --web\n")
    for extra in (["--web"], []):
        r = vmm("service", "install", *extra, "--unit-dir", units, "--no-enable", env=env)
        assert r.returncode == 0, r.stderr

    r = vmm("service", "status", "--web", "--unit-dir", units, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"unit_path": f"{units}/{WEB_UNIT_NAME}", "installed": True,
                                    "up_to_date": True, "enabled": False, "active": None}
    r = vmm("service", "status", "--web", "--unit-dir", units, env=env)
    assert r.returncode == 0 and r.stdout == (f"{WEB_UNIT_NAME}: installed ({units}/{WEB_UNIT_NAME})\n"
                                              "enabled: no\nactive: unknown (systemd is not running)\n")
    with open(f"{units}/{WEB_UNIT_NAME}", "a") as f:
        f.write("# changed by hand\n")
    r = vmm("service", "status", "--web", "--unit-dir", units, env=env)
    assert "differs from 'vmm service install --web --print'" in r.stdout
    r = vmm("service", "status", "--unit-dir", units, env=env)  # vmm.service, as before
    assert r.returncode == 0 and r.stdout.startswith(f"vmm.service: installed ({units}/vmm.service)\n"), r.stdout

    r = vmm("service", "uninstall", "--web", "--unit-dir", units, env=env)
    assert r.returncode == 0 and r.stdout == f"removed {units}/{WEB_UNIT_NAME}\n", r.stdout + r.stderr
    assert not Path(units, WEB_UNIT_NAME).exists() and Path(units, "vmm.service").exists()
    assert vmm("service", "status", "--web", "--unit-dir", units, env=env).returncode == 1
    r = vmm("service", "uninstall", "--unit-dir", units, env=env)
    assert r.returncode == 0 and r.stdout == f"removed {units}/vmm.service\n"
    r = vmm("service", "status", "--unit-dir", units, env=env)
    assert r.returncode == 1 and r.stdout == (f"vmm.service: not installed ({units}/vmm.service); "
                                              "install it with: sudo vmm service install\n")
