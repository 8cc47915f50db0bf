"""As root, vmm takes settings that name a program it runs or a place it writes only from a file
only root can write; a user's own file keeps its user settings (vm_defaults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VmmEnv

pytestmark = pytest.mark.integration

NOBODY = 65534


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A directory (and config file) that an ordinary user owns, as their home would be."""
    d = tmp_path / "home" / ".config" / "vmm"
    d.mkdir(parents=True)
    for p in (tmp_path / "home", tmp_path / "home" / ".config", d):
        os.chown(p, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)
    return d


def write_user_config(user_dir: Path, **values: object) -> Path:
    path = user_dir / "config.json"
    path.write_text(json.dumps(values))
    os.chown(path, NOBODY, NOBODY)
    return path


def vmm_with(env: VmmEnv, config: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    e = env.env() | {"VMM_CONFIG": str(config)} | extra
    return subprocess.run([sys.executable, "-m", "vmm", *args], env=e, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_a_users_file_cannot_name_a_program_for_root(vmm_env: VmmEnv, user_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    config = write_user_config(user_dir, engine="firecracker", firecracker_bin=str(evil))
    for args in (["create", "x"], ["version"]):
        r = vmm_with(vmm_env, config, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(f"error: config {config} sets firecracker_bin, but it is not a root-only file"), r.stderr
        assert "hint: move firecracker_bin to " in r.stderr
    doctor = vmm_with(vmm_env, config, "doctor")  # reports it as a failed check, runs nothing
    assert doctor.returncode == 1 and "sets firecracker_bin, but it is not a root-only file" in doctor.stdout
    assert not marker.exists(), "root ran a program named in a user's file"
    assert not vmm_env.data_dir.exists()


def test_a_users_file_cannot_move_the_data_dir(vmm_env: VmmEnv, user_dir: Path, tmp_path: Path) -> None:
    config = write_user_config(user_dir, data_dir=str(tmp_path / "elsewhere"))
    env = vmm_env.env()
    env.pop("VMM_DATA_DIR")
    r = subprocess.run([sys.executable, "-m", "vmm", "create", "x"], env=env | {"VMM_CONFIG": str(config)},
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "sets data_dir, but it is not a root-only file" in r.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_user_settings_and_the_system_file_still_work(vmm_env: VmmEnv, user_dir: Path, tmp_path: Path) -> None:
    system = tmp_path / "etc" / "config.json"
    system.parent.mkdir()
    system.write_text(json.dumps({"engine": "qemu", "qemu_bin": "/usr/bin/qemu-system-x86_64"}))
    # the user's file may repeat a privileged value unchanged (what 'vmm config init' writes)
    config = write_user_config(user_dir, vm_defaults={"cpus": 3}, qemu_bin="/usr/bin/qemu-system-x86_64",
                               bridge_name="vmm-br0")
    r = vmm_with(vmm_env, config, "config", "show", "--json", VMM_SYSTEM_CONFIG=str(system))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["qemu_bin"]["source"] == "config file" and shown["engine"]["source"] == "system config"
    assert shown["vm_defaults.cpus"] == {"value": "3", "source": "config file"}
    # a system file others can write is refused as a whole
    os.chmod(system, 0o666)
    r = vmm_with(vmm_env, config, "config", "show", VMM_SYSTEM_CONFIG=str(system))
    assert r.returncode == 1 and f"error: the system config {system} can be changed by others than root" in r.stderr


def test_config_init_chowns_only_what_it_created(vmm_env: VmmEnv, tmp_path: Path) -> None:
    existing = tmp_path / "etc-vmm"
    existing.mkdir()
    r = vmm_with(vmm_env, existing / "config.json", "config", "init", SUDO_USER="nobody")
    assert r.returncode == 0, r.stderr
    assert existing.stat().st_uid == 0, "config init gave away a directory it did not create"
    assert (existing / "config.json").stat().st_uid == NOBODY
    fresh = tmp_path / "newhome" / ".config" / "vmm" / "config.json"
    (tmp_path / "newhome").mkdir()
    assert vmm_with(vmm_env, fresh, "config", "init", SUDO_USER="nobody").returncode == 0
    assert fresh.parent.stat().st_uid == NOBODY and fresh.parent.parent.stat().st_uid == NOBODY
    assert (tmp_path / "newhome").stat().st_uid == 0


def test_the_service_unit_never_points_at_a_users_file(vmm_env: VmmEnv, user_dir: Path) -> None:
    config = write_user_config(user_dir, vm_defaults={"cpus": 2})
    code = "from vmm.host.systemd import default_spec; print(default_spec('/usr/local/bin/vmm').environment)"
    env = vmm_env.env() | {"VMM_CONFIG": str(config)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and f"the service would read {config}, which others than root can change" in r.stderr
    trusted = vmm_env.root / "config.json"
    trusted.write_text("{}")
    r = subprocess.run([sys.executable, "-c", code], env=env | {"VMM_CONFIG": str(trusted)},
                       capture_output=True, text=True, check=True)
    assert f"('VMM_CONFIG', '{trusted}')" in r.stdout


def test_vmm_ssh_drops_to_the_sudo_user_first() -> None:
    code = (
        "import os; os.environ['SUDO_USER'] = 'nobody'\n"
        "from vmm.host.ssh import become_invoking_user\n"
        "become_invoking_user(); print(os.getuid(), os.getgid(), os.geteuid())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(NOBODY), str(NOBODY), str(NOBODY)]


def test_config_init_picks_the_engine_the_host_can_run(vmm_env: VmmEnv, tmp_path: Path) -> None:
    from vmm.engines.qemu.accel import kvm_unusable_reason

    bare = vmm_with(vmm_env, tmp_path / "a.json", "config", "init", PATH="/usr/bin:/bin")
    assert bare.returncode == 0, bare.stderr
    if not Path("/usr/local/bin/firecracker").exists():
        assert "engine qemu: no firecracker binary found" in bare.stdout
        assert json.loads((tmp_path / "a.json").read_text())["engine"] == "qemu"
    fake = tmp_path / "bin" / "firecracker"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    r = vmm_with(vmm_env, tmp_path / "b.json", "config", "init", PATH=f"{fake.parent}:/usr/bin:/bin")
    engine = json.loads((tmp_path / "b.json").read_text())["engine"]
    if kvm_unusable_reason() is not None:  # these machines: a nested hypervisor KVM cannot use
        assert engine == "qemu" and "KVM cannot run guests here" in r.stdout
    else:
        assert engine == "firecracker" and "found and KVM usable" in r.stdout
