from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.config import (
    Config,
    detect_host_interface,
    expand_user_path,
    load_config,
    write_default_config,
)
from vmm.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VMM_CONFIG", "VMM_DATA_DIR", "SUDO_USER"):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_defaults_when_file_missing(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.json")
    assert not cfg.file_exists
    assert cfg.data_dir == "/var/lib/vmm"
    assert cfg.bridge_name == "vmm-br0"
    assert cfg.subnet == "172.16.0.0/16"
    assert cfg.gateway == "172.16.0.1"
    assert cfg.engine == "firecracker"
    vd = cfg.vm_defaults
    assert (vd.cpus, vd.memory_mb, vd.disk_size_mb) == (1, 512, 1024)
    assert vd.dns_servers == ["8.8.8.8", "8.8.4.4", "1.1.1.1"]
    assert cfg.source("vm_defaults.cpus") == "default"
    assert cfg.source("host_interface") == "detected"


def test_file_values_and_sources(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {
            "data_dir": "/srv/vmm",
            "host_interface": "wlp3s0",
            "engine": "qemu",
            "vm_defaults": {"cpus": 2, "memory_mb": 1024, "ssh_key_path": "~/.ssh/id.pub",
                            "dns_servers": ["9.9.9.9"]},
        },
    )
    cfg = load_config(path)
    assert cfg.data_dir == "/srv/vmm" and cfg.source("data_dir") == "config file"
    assert cfg.engine == "qemu"
    assert cfg.vm_defaults.cpus == 2 and cfg.source("vm_defaults.cpus") == "config file"
    assert cfg.vm_defaults.disk_size_mb == 1024 and cfg.source("vm_defaults.disk_size_mb") == "default"
    assert cfg.vm_defaults.dns_servers == ["9.9.9.9"]
    assert cfg.host_interface == "wlp3s0" and cfg.source("host_interface") == "config file"


def test_env_data_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.json", {"data_dir": "/srv/vmm"})
    monkeypatch.setenv("VMM_DATA_DIR", "/tmp/x")
    cfg = load_config(path)
    assert cfg.data_dir == "/tmp/x"
    assert "environment" in cfg.source("data_dir")


def test_vmm_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.json", {"bridge_name": "br-test"})
    monkeypatch.setenv("VMM_CONFIG", str(path))
    assert load_config().bridge_name == "br-test"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("{not json", "not valid JSON"),
        ({"vm_defaults": {"cpus": "two"}}, "$.vm_defaults.cpus"),
        ({"vm_defaults": {"cpus": 0}}, "$.vm_defaults.cpus"),
        ({"vm_defaults": {"cpus": True}}, "$.vm_defaults.cpus"),
        ({"vm_defaults": {"memory_mb": 1.5}}, "$.vm_defaults.memory_mb"),
        ({"vm_defaults": {"dns_servers": "8.8.8.8"}}, "$.vm_defaults.dns_servers"),
        ({"vm_defaults": {"dns_servers": ["nope"]}}, "$.vm_defaults.dns_servers"),
        ({"vm_defaults": []}, "$.vm_defaults"),
        ({"vm_defaults": {"cpu": 1}}, "$.vm_defaults.cpu"),
        ({"bridge_name": 3}, "$.bridge_name"),
        ({"engine": "xen"}, "$.engine"),
        ({"accel": "hvf"}, "$.accel"),
        ({"colour": "blue"}, "$.colour"),
        ([1, 2], "$"),
        ({"data_dir": "relative/dir"}, "$.data_dir"),
        ({"gateway": "10.0.0.1"}, "gateway"),
        ({"subnet": "172.16.0.0/33"}, "172.16.0.0/33"),
    ],
)
def test_bad_config_names_field_and_is_not_rewritten(tmp_path: Path, content: object, field: str) -> None:
    path = write(tmp_path / "c.json", content)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert field in err.value.brief
    assert "\n" not in err.value.brief
    assert path.read_bytes() == before


def test_init_writes_defaults_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    write_default_config(path)
    data = json.loads(path.read_text())
    assert data["bridge_name"] == "vmm-br0" and data["vm_defaults"]["cpus"] == 1
    assert load_config(path).source("bridge_name") == "config file"
    with pytest.raises(ConfigError):
        write_default_config(path)
    write_default_config(path, force=True)


def test_detect_host_interface(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth9\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "wlp3s0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "enp0s3\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    )
    assert detect_host_interface(route) == "enp0s3"
    route.write_text("Iface\tDestination\n")
    assert detect_host_interface(route) == "eth0"
    assert detect_host_interface(tmp_path / "missing") == "eth0"


def test_expand_user_path_uses_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import pwd

    monkeypatch.setenv("HOME", "/home/nobody-here")
    assert expand_user_path("~/.ssh/k.pub") == Path("/home/nobody-here/.ssh/k.pub")
    if os.geteuid() == 0:
        monkeypatch.setenv("SUDO_USER", "nobody")
        assert expand_user_path("~/x") == Path(pwd.getpwnam("nobody").pw_dir) / "x"


def test_rows_show_sources() -> None:
    cfg = Config(host_interface="eth0")
    rows = {k: (v, s) for k, v, s in cfg.rows()}
    assert rows["vm_defaults.cpus"] == ("1", "default")
    assert rows["vm_defaults.dns_servers"][0] == "8.8.8.8, 8.8.4.4, 1.1.1.1"
