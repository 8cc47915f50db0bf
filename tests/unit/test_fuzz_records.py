"""Property-based tests: decoding the config file and VM records (JSON from disk).

A file that is not what vmm wrote — any JSON value, wrong types, unknown keys, huge numbers,
NUL bytes, bytes that are not UTF-8 — is a ``ConfigError`` / ``RecordError`` (both
``VmmError``), never another exception.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm.config import Config, detect_host_interface, load_config
from vmm.errors import ConfigError, RecordError, VmmError
from vmm.models import VM, Mount, PortForward
from vmm.store import Store

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 200), deadline=None, database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["", "\0", "\n", "tcp", "udp", "10.0.0.1", "/abs", "rel", "default", "-1"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Deeper than json.loads can parse (RecursionError), and past int()'s 4300-digit limit
# (ValueError): neither is a json.JSONDecodeError.
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5000
NOT_UTF8 = b'{"name": "\xff\xfe"}'


# -- VM records ------------------------------------------------------------------------

VALID_RECORD = VM(
    name="dev", id="abcd1234", ip="172.16.0.2", mac="06:00:AC:10:00:02", tap="vmm-abcd1234",
    created_at="2026-01-01T00:00:00+00:00", dns_servers=["8.8.8.8"],
    mounts=[Mount("/srv/code", "code", True, "/var/lib/vmm/mounts/dev-code.ext4", "vmm-code")],
    port_forwards=[PortForward(8080, 80), PortForward(5353, 53, "udp", "127.0.0.1")],
).to_dict()


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """vmm's own record with a few fields deleted, replaced by any JSON value, or added."""
    rec = json.loads(json.dumps(VALID_RECORD))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "delete", "add", "mount", "forward"]))
        key = draw(st.sampled_from(sorted(rec) or ["name"]))
        if op == "replace":
            rec[key] = draw(json_values)
        elif op == "delete":
            rec.pop(key, None)
        elif op == "add":
            rec[draw(st.text(max_size=8))] = draw(json_values)
        else:
            field = "mounts" if op == "mount" else "port_forwards"
            items = rec.get(field)
            if isinstance(items, list) and items and isinstance(items[0], dict):
                sub = draw(st.sampled_from(sorted(items[0]) + ["extra"]))
                if draw(st.booleans()):
                    items[0][sub] = draw(json_values)
                else:
                    items[0].pop(sub, None)
            else:
                rec[field] = draw(json_values)
    return rec


def _check_vm(vm: VM) -> None:
    """A decoded record has the declared types (what the rest of vmm relies on)."""
    assert isinstance(vm, VM)
    assert all(isinstance(getattr(vm, k), str) for k in ("name", "id", "state", "ip", "tap"))
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in (vm.cpus, vm.memory_mb))
    assert all(isinstance(m, Mount) and isinstance(m.tag, str) for m in vm.mounts)
    assert all(isinstance(f, PortForward) and 1 <= f.host_port <= 65535 for f in vm.port_forwards)
    assert all(f.proto in ("tcp", "udp") for f in vm.port_forwards)


@FUZZ
@given(mutated_records())
def test_vm_from_dict_mutated(raw: dict[str, Any]) -> None:
    try:
        vm = VM.from_dict(raw, "'dev'")
    except RecordError:
        return
    _check_vm(vm)


@FUZZ
@given(json_values)
def test_vm_from_dict_any_json(raw: Any) -> None:
    with contextlib.suppress(RecordError):
        _check_vm(VM.from_dict(raw, "'dev'"))


def test_vm_from_dict_dns_servers_items() -> None:
    with pytest.raises(RecordError):
        VM.from_dict({**VALID_RECORD, "dns_servers": [1, None, {"a": []}]}, "'dev'")


@pytest.mark.parametrize(
    ("key", "value"), [("tag", "../../x"), ("image_path", "/etc/passwd")], ids=["tag", "image_path"]
)
def test_vm_from_dict_mount_shapes(key: str, value: str) -> None:
    mount = {**VALID_RECORD["mounts"][0], key: value}
    with pytest.raises(RecordError):
        VM.from_dict({**VALID_RECORD, "mounts": [mount]}, "'dev'")


_STORE = Store(Path(tempfile.mkdtemp(prefix="vmm-fuzz-store-")))
atexit.register(shutil.rmtree, _STORE.root, ignore_errors=True)
_STORE.ensure_dirs()


@FUZZ
@given(st.one_of(json_values.map(json.dumps), mutated_records().map(json.dumps), st.text()))
@example("")
@example("{")
@example("\0")
@example('{"schema_version": 1e400}')
@example('{"name": "dev", "\\n": null}')  # an unknown field whose name is a newline
def test_store_decode(text: str) -> None:
    try:
        _check_vm(_STORE._decode("dev", text))
    except RecordError as exc:
        assert "\n" not in exc.brief


@pytest.mark.parametrize("text", [DEEP, HUGE_INT, '{"pid": ' + HUGE_INT + "}"], ids=["deep", "digits", "pid"])
def test_store_decode_json_limits(text: str) -> None:
    with pytest.raises(RecordError):
        _STORE._decode("dev", text)


@FUZZ
@given(st.binary(max_size=200))
def test_store_load_any_bytes(data: bytes) -> None:
    """A record file with any bytes; only UTF-8 ones here (see the xfail below)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return
    _STORE.record_path("dev").write_bytes(data)
    with contextlib.suppress(RecordError):
        _check_vm(_STORE.load("dev"))
    vms, problems = _STORE.load_all()
    assert [p.name for p in problems] + [v.name for v in vms] == ["dev"]


def test_store_load_not_utf8() -> None:
    _STORE.record_path("dev").write_bytes(NOT_UTF8)
    try:
        vms, problems = _STORE.load_all()
        assert not vms and [p.name for p in problems] == ["dev"]
        with pytest.raises(RecordError):
            _STORE.load("dev")
    finally:
        _STORE.record_path("dev").unlink()


# -- the config file -------------------------------------------------------------------

CONFIG_KEYS = [
    "data_dir", "bridge_name", "subnet", "gateway", "host_interface", "engine", "accel",
    "autostart_policy", "firecracker_bin", "qemu_bin", "vm_defaults",
]
VM_DEFAULT_KEYS = ["cpus", "memory_mb", "disk_size_mb", "image", "kernel", "ssh_key_path", "dns_servers"]
GOOD = {
    "data_dir": "/var/lib/vmm", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1", "engine": "qemu",
    "accel": "tcg", "autostart_policy": "running", "cpus": 2, "dns_servers": ["1.1.1.1"],
}
config_value = json_values | st.sampled_from(sorted(GOOD.values(), key=repr))
config_dicts = st.dictionaries(
    st.sampled_from(CONFIG_KEYS) | st.text(max_size=8),
    config_value
    | st.dictionaries(st.sampled_from(VM_DEFAULT_KEYS) | st.text(max_size=6), config_value, max_size=4),
    max_size=6,
)
_CONFIG = Path(tempfile.mkdtemp(prefix="vmm-fuzz-config-")) / "config.json"
atexit.register(shutil.rmtree, _CONFIG.parent, ignore_errors=True)


_SYSTEM = _CONFIG.with_name("system.json")  # in a root-owned 0700 dir: root-only, as required


def _load(data: bytes, *, system: bool = False) -> Config:
    """``data`` as the user's config file, or as the system's (then with no user file)."""
    written, absent = (_SYSTEM, _CONFIG) if system else (_CONFIG, _SYSTEM)
    written.write_bytes(data)
    absent.unlink(missing_ok=True)
    saved = {k: os.environ.pop(k, None) for k in ("VMM_DATA_DIR", "VMM_SYSTEM_CONFIG")}
    os.environ["VMM_SYSTEM_CONFIG"] = str(_SYSTEM)
    try:
        return load_config(_CONFIG)
    finally:
        del os.environ["VMM_SYSTEM_CONFIG"]
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _check_config(cfg: Config) -> None:
    assert os.path.isabs(cfg.data_dir)
    assert all(isinstance(getattr(cfg, k), str) and getattr(cfg, k) for k in ("bridge_name", "subnet"))
    assert cfg.engine in ("firecracker", "qemu") and cfg.accel in ("auto", "kvm", "tcg")
    vd = cfg.vm_defaults
    assert all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (vd.cpus, vd.memory_mb, vd.disk_size_mb))
    assert vd.dns_servers and all(isinstance(s, str) for s in vd.dns_servers)
    assert isinstance(vd.image, str) and isinstance(vd.kernel, str)


@FUZZ
@given(st.one_of(config_dicts, json_values), st.booleans())
@example({"vm_defaults": {"cpus": True}}, False)
@example({"data_dir": "relative"}, True)
@example({"subnet": "10.0.0.0/8", "gateway": "x"}, True)
@example({"firecracker_bin": "/tmp/fc"}, False)  # as root, from a file others could write
@example({"\n": 1}, False)  # unknown fields whose names would break the one-line message
@example({"vm_defaults": {"a\nb": 1}}, True)
def test_load_config_any_json(raw: Any, system: bool) -> None:
    try:
        _check_config(_load(json.dumps(raw).encode(), system=system))
    except ConfigError as exc:
        assert isinstance(exc, VmmError)
        assert "\n" not in exc.brief


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode), st.booleans())
def test_load_config_any_text(data: bytes, system: bool) -> None:
    """Any UTF-8 text as a config file (other bytes: see the xfail below)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return
    with contextlib.suppress(ConfigError):
        _check_config(_load(data, system=system))


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
@pytest.mark.parametrize(
    "data", [DEEP.encode(), HUGE_INT.encode(), NOT_UTF8], ids=["deep", "digits", "not-utf8"]
)
def test_load_config_limits(data: bytes, system: bool) -> None:
    with pytest.raises(ConfigError):
        _load(data, system=system)


@FUZZ
@given(
    st.lists(
        st.lists(
            st.sampled_from(["eth0", "wlan0", "00000000", "0001A8C0", "0", "100", "-1", "x", "²", "\0"])
            | st.text(max_size=8),
            max_size=11,
        ).map("\t".join),
        max_size=6,
    ).map("\n".join)
)
def test_detect_host_interface(text: str) -> None:
    route = _CONFIG.with_name("route")
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n" + text)
    name = detect_host_interface(route)
    assert isinstance(name, str) and name
