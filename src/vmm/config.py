"""The config files, their defaults, and where things live.

Precedence for every value: command-line flag > the user's config file > the system config file
(``/etc/vmm/config.json``) > built-in default. The user's file is the invoking user's
``~/.config/vmm/config.json`` — under sudo that is ``SUDO_USER``'s, not root's — or
``$VMM_CONFIG``. ``$VMM_DATA_DIR`` overrides ``data_dir`` (tests use both).

vmm runs as root, and a file in a user's home is the user's to change. So when vmm runs as
root, the settings that name a program root runs or a place root writes (``PRIVILEGED_KEYS``:
the engine binaries, the data dir, the host network) are taken only from a file that only root
can write (``root_only_writable``); a user's file that sets one of them to another value is an
error that says where to put it. ``vm_defaults`` and the other settings stay per user.

A file that is not valid JSON, has an unknown key or a wrong type is an error naming the field
(``$.vm_defaults.cpus``); vmm never rewrites a file it could not read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from pathlib import Path

from vmm.engines.registry import ENGINES as ENGINE_REGISTRY
from vmm.errors import ConfigError, json_field
from vmm.record import Record, field

TYPE_CHECKING = False  # typing costs read-only commands ~2 ms; mypy still sees the imports
if TYPE_CHECKING:
    from typing import Any

DEFAULT_DATA_DIR = "/var/lib/vmm"
DEFAULT_BRIDGE = "vmm-br0"
DEFAULT_SUBNET = "172.16.0.0/16"
DEFAULT_GATEWAY = "172.16.0.1"
DEFAULT_DNS = ("8.8.8.8", "8.8.4.4", "1.1.1.1")
DEFAULT_IMAGE = "default"
DEFAULT_KERNEL = "default"
SYSTEM_CONFIG = "/etc/vmm/config.json"
# Settings that make root run a program, write somewhere, or change the host's network.
PRIVILEGED_KEYS = ("data_dir", "firecracker_bin", "qemu_bin", "bridge_name", "subnet", "gateway")
ENGINES = tuple(ENGINE_REGISTRY)
ACCELS = ("auto", "kvm", "tcg")
AUTOSTART_POLICIES = ("flagged", "running")
AUTOSTOP_MODES = ("stop", "suspend")


def invoking_user_home() -> Path:
    """The home of the user who ran vmm: SUDO_USER's under sudo, else the current user's."""
    sudo_user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and sudo_user and sudo_user != "root":
        try:
            return Path(pwd.getpwnam(sudo_user).pw_dir)
        except KeyError:
            pass
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def invoking_user_ids() -> tuple[int, int] | None:
    """(uid, gid) of SUDO_USER when running under sudo, else None."""
    sudo_user = os.environ.get("SUDO_USER")
    if os.geteuid() == 0 and sudo_user and sudo_user != "root":
        try:
            pw = pwd.getpwnam(sudo_user)
        except KeyError:
            return None
        return pw.pw_uid, pw.pw_gid
    return None


def expand_user_path(path: str) -> Path:
    """Expand ``~`` to the invoking user's home (sudo-aware), not root's."""
    if path == "~" or path.startswith("~/"):
        return invoking_user_home() / path[2:]
    return Path(path).expanduser()


def config_path() -> Path:
    env = os.environ.get("VMM_CONFIG")
    if env:
        return Path(env)
    return invoking_user_home() / ".config" / "vmm" / "config.json"


def system_config_path() -> Path:
    return Path(os.environ.get("VMM_SYSTEM_CONFIG") or SYSTEM_CONFIG)


def root_only_writable(path: Path) -> bool:
    """Only root can change what ``path`` holds: the file (symbolic links resolved) and every
    directory above it belong to root and are not writable by group or others — except a
    sticky directory such as /tmp, where others cannot replace root's entries."""
    import stat

    try:
        real = Path(os.path.realpath(path))
        st = os.stat(real)
    except OSError:
        return False
    if st.st_uid != 0 or st.st_mode & 0o022:
        return False
    for d in real.parents:
        try:
            dst = os.stat(d)
        except OSError:
            return False
        if dst.st_uid != 0:
            return False
        if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
            return False
    return True


def detect_host_interface(route_file: Path = Path("/proc/net/route")) -> str:
    """The interface of the default route (lowest metric), or ``eth0`` when there is none."""
    best: tuple[int, str] | None = None
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return "eth0"
    for line in lines:
        cols = line.split()
        if len(cols) < 8:
            continue
        iface, dest, mask, metric = cols[0], cols[1], cols[7], cols[6]
        if dest == "00000000" and mask == "00000000":
            try:
                m = int(metric)
            except ValueError:
                continue
            if best is None or m < best[0]:
                best = (m, iface)
    return best[1] if best else "eth0"


class VMDefaults(Record):
    cpus: int = 1
    memory_mb: int = 512
    disk_size_mb: int = 1024
    image: str = DEFAULT_IMAGE
    kernel: str = DEFAULT_KERNEL
    ssh_key_path: str | None = None
    dns_servers: list[str] = field(default_factory=lambda: list(DEFAULT_DNS))


class Config(Record):
    data_dir: str = DEFAULT_DATA_DIR
    bridge_name: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    gateway: str = DEFAULT_GATEWAY
    host_interface: str = ""
    engine: str = "firecracker"
    accel: str = "auto"
    # What ``vmm autostart`` (the boot service) starts: VMs flagged --autostart, or exactly
    # the VMs that were running when ``vmm autostop`` last ran.
    autostart_policy: str = "flagged"
    # What ``vmm autostop`` does to a running VM: shut it down, or suspend it (its memory saved;
    # the next start, autostart's too, resumes it where it was).
    autostop_mode: str = "stop"
    firecracker_bin: str | None = None
    qemu_bin: str | None = None
    vm_defaults: VMDefaults = field(default_factory=VMDefaults)
    # Where each value came from: "default", "config file" or "environment" (VMM_DATA_DIR).
    sources: dict[str, str] = field(default_factory=dict)
    path: Path = field(default_factory=config_path)
    file_exists: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def to_file_dict(self) -> dict[str, Any]:
        """The JSON written by ``vmm config init`` (the seed's keys, plus vmm's)."""
        d: dict[str, Any] = {
            "data_dir": self.data_dir,
            "bridge_name": self.bridge_name,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "host_interface": self.host_interface,
            "engine": self.engine,
            "accel": self.accel,
            "autostart_policy": self.autostart_policy,
            "autostop_mode": self.autostop_mode,
        }
        if self.firecracker_bin:
            d["firecracker_bin"] = self.firecracker_bin
        if self.qemu_bin:
            d["qemu_bin"] = self.qemu_bin
        vd = self.vm_defaults
        defaults: dict[str, Any] = {
            "cpus": vd.cpus,
            "memory_mb": vd.memory_mb,
            "disk_size_mb": vd.disk_size_mb,
            "image": vd.image,
            "kernel": vd.kernel,
            "dns_servers": list(vd.dns_servers),
        }
        if vd.ssh_key_path:
            defaults["ssh_key_path"] = vd.ssh_key_path
        d["vm_defaults"] = defaults
        return d

    def rows(self) -> list[tuple[str, str, str]]:
        """(key, value, source) for ``vmm config show``."""
        out: list[tuple[str, str, str]] = [("config_file", str(self.path), "")]
        for key in (
            "data_dir",
            "bridge_name",
            "subnet",
            "gateway",
            "host_interface",
            "engine",
            "accel",
            "autostart_policy",
            "autostop_mode",
            "firecracker_bin",
            "qemu_bin",
        ):
            value = getattr(self, key)
            out.append((key, "" if value is None else str(value), self.source(key)))
        vd = self.vm_defaults
        for key in ("cpus", "memory_mb", "disk_size_mb", "image", "kernel", "ssh_key_path"):
            value = getattr(vd, key)
            out.append(
                (f"vm_defaults.{key}", "" if value is None else str(value), self.source(f"vm_defaults.{key}"))
            )
        out.append(
            ("vm_defaults.dns_servers", ", ".join(vd.dns_servers), self.source("vm_defaults.dns_servers"))
        )
        return out


_STR_KEYS = ("data_dir", "bridge_name", "subnet", "gateway", "host_interface")
_OPT_STR_KEYS = ("firecracker_bin", "qemu_bin")
_VM_INT_KEYS = ("cpus", "memory_mb", "disk_size_mb")
_VM_STR_KEYS = ("image", "kernel")


def _type_error(path: Path, field_name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(
        f"config {path}: {field_name} must be {expected}, got {json.dumps(value)}",
        hint=f"fix {field_name} in {path} (or move the file away to use defaults)",
    )


def _parse(raw: Any, path: Path, cfg: Config) -> None:
    if not isinstance(raw, dict):
        raise _type_error(path, "$", "a JSON object", raw)
    known = set(_STR_KEYS) | set(_OPT_STR_KEYS) | {"engine", "accel", "autostart_policy", "autostop_mode", "vm_defaults"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"config {path}: unknown field {json_field('$', key)}",
                hint=f"remove it from {path}; known fields: {', '.join(sorted(known))}",
            )
    for key in _STR_KEYS:
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not value:
                raise _type_error(path, f"$.{key}", "a non-empty string", value)
            setattr(cfg, key, value)
            cfg.sources[key] = "config file"
    for key in _OPT_STR_KEYS:
        if key in raw and raw[key] is not None:
            value = raw[key]
            if not isinstance(value, str) or not value:
                raise _type_error(path, f"$.{key}", "a non-empty string or null", value)
            setattr(cfg, key, value)
            cfg.sources[key] = "config file"
    for key, allowed in (
        ("engine", ENGINES), ("accel", ACCELS), ("autostart_policy", AUTOSTART_POLICIES),
        ("autostop_mode", AUTOSTOP_MODES),
    ):  # fmt: skip
        if key in raw:
            value = raw[key]
            if value not in allowed:
                raise _type_error(path, f"$.{key}", " or ".join(f'"{a}"' for a in allowed), value)
            setattr(cfg, key, value)
            cfg.sources[key] = "config file"
    if "vm_defaults" in raw and raw["vm_defaults"] is not None:
        _parse_vm_defaults(raw["vm_defaults"], path, cfg)


def _parse_vm_defaults(raw: Any, path: Path, cfg: Config) -> None:
    if not isinstance(raw, dict):
        raise _type_error(path, "$.vm_defaults", "an object", raw)
    vd = cfg.vm_defaults
    known = set(_VM_INT_KEYS) | set(_VM_STR_KEYS) | {"ssh_key_path", "dns_servers"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"config {path}: unknown field {json_field('$.vm_defaults', key)}",
                hint=f"remove it; known fields: {', '.join(sorted(known))}",
            )
    for key in _VM_INT_KEYS:
        if key in raw and raw[key] is not None:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _type_error(path, f"$.vm_defaults.{key}", "a positive integer", value)
            setattr(vd, key, value)
            cfg.sources[f"vm_defaults.{key}"] = "config file"
    for key in (*_VM_STR_KEYS, "ssh_key_path"):
        if key in raw and raw[key] not in (None, ""):
            value = raw[key]
            if not isinstance(value, str):
                raise _type_error(path, f"$.vm_defaults.{key}", "a string", value)
            setattr(vd, key, value)
            cfg.sources[f"vm_defaults.{key}"] = "config file"
    if "dns_servers" in raw and raw["dns_servers"] is not None:
        value = raw["dns_servers"]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise _type_error(path, "$.vm_defaults.dns_servers", "a list of strings", value)
        from vmm.models import validate_dns_servers

        try:
            vd.dns_servers = validate_dns_servers(value)
        except Exception as exc:
            raise ConfigError(f"config {path}: $.vm_defaults.dns_servers: {exc}") from None
        cfg.sources["vm_defaults.dns_servers"] = "config file"


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(f"cannot read config {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config {path} is not UTF-8 text", hint="fix the file, or move it away"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="fix the file, or move it away and run 'vmm config init'",
        ) from None
    except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
        raise ConfigError(
            f"config {path} is not usable JSON ({type(exc).__name__})",
            hint="fix the file, or move it away and run 'vmm config init'",
        ) from None


def _check_privileged(raw: Any, path: Path, cfg: Config) -> None:
    """As root, a file others can write may not change a privileged setting."""
    if os.geteuid() != 0 or not isinstance(raw, dict) or root_only_writable(path):
        return
    changed = [k for k in PRIVILEGED_KEYS if raw.get(k) is not None and raw[k] != getattr(cfg, k)]
    if changed:
        raise ConfigError(
            f"config {path} sets {', '.join(changed)}, but it is not a root-only file: vmm runs "
            "as root and takes settings that name a program it runs or a place it writes only "
            "from a file only root can write",
            hint=f"move {', '.join(changed)} to {system_config_path()} (sudo vmm config init "
            "--system writes one), and keep your own settings (vm_defaults) in your file",
        )


def load_config(path: Path | None = None) -> Config:
    """Read the system and the user's config files (if any) over the defaults; never writes."""
    path = path or config_path()
    cfg = Config(path=path)
    system = system_config_path()
    if system != path:
        raw_system = _read_json(system)
        if raw_system is not None:
            if os.geteuid() == 0 and not root_only_writable(system):
                raise ConfigError(
                    f"the system config {system} can be changed by others than root",
                    hint=f"make it and its directories root's alone: chown root: {system}; "
                    f"chmod go-w {system}",
                )
            _parse(raw_system, system, cfg)
            for key, src in cfg.sources.items():
                if src == "config file":
                    cfg.sources[key] = "system config"
    raw = _read_json(path)
    if raw is not None:
        cfg.file_exists = True
        _check_privileged(raw, path, cfg)
        _parse(raw, path, cfg)
    if "host_interface" not in cfg.sources:
        cfg.host_interface = detect_host_interface()
        cfg.sources["host_interface"] = "detected"
    env_dir = os.environ.get("VMM_DATA_DIR")
    if env_dir:
        cfg.data_dir = env_dir
        cfg.sources["data_dir"] = "environment (VMM_DATA_DIR)"
    if not os.path.isabs(cfg.data_dir):
        raise ConfigError(f"config {path}: $.data_dir must be an absolute path, got {cfg.data_dir!r}")
    if "subnet" in cfg.sources or "gateway" in cfg.sources:  # the defaults are known good
        from vmm.network.ipam import validate_network

        try:
            validate_network(cfg.subnet, cfg.gateway)
        except Exception as exc:
            raise ConfigError(f"config {path}: {exc}") from None
    return cfg


def detect_engine() -> tuple[str, str]:
    """The engine this host can run, and why: the first engine of the registry (Firecracker)
    whose binary is installed and that has the KVM it needs, else the last one (QEMU, which
    falls back to TCG emulation without KVM)."""
    from vmm.engines import registry

    reasons: list[str] = []
    kvm: str | None = None
    for name in registry.names():
        info = registry.info(name)
        binary = info.find_binary()
        if binary is None:
            reasons.append(f"no {name} binary found ({info.install_hint})")
            continue
        if info.can(registry.NEEDS_KVM):
            if kvm is None:
                from vmm.engines.qemu.accel import kvm_unusable_reason

                kvm = kvm_unusable_reason() or ""
            if kvm:
                reasons.append(f"KVM cannot run guests here ({kvm}); {info.display_name} needs it")
                continue
            return name, f"{binary} found and KVM usable"
        return name, "; ".join(reasons) or f"{binary} found"
    return registry.names()[-1], "; ".join(reasons)


def write_default_config(path: Path, *, force: bool = False, system: bool = False) -> Config:
    """``vmm config init``: write the defaults (with the detected uplink) to ``path``.

    Under sudo the user's file and the directories made for it are given to the user — only
    what this call created: an existing directory (``VMM_CONFIG=/etc/vmm/...``) is never
    chowned. ``system`` writes root's own file (0644, root's directories)."""
    if path.exists() and not force:
        raise ConfigError(
            f"config {path} already exists", hint="use --force to overwrite it with the defaults"
        )
    engine, _why = detect_engine()
    cfg = Config(path=path, host_interface=detect_host_interface(), engine=engine)
    created = [d for d in (path.parent.parent, path.parent) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(cfg.to_file_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    ids = None if system else invoking_user_ids()
    if ids:
        for p in (path, *created):
            with contextlib.suppress(OSError):
                os.lchown(p, *ids)
    return cfg
