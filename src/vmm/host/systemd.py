"""The ``vmm.service`` systemd unit: built by a pure function, installed by a thin applier.

The unit is a oneshot that stays "active" after ``vmm autostart`` (``RemainAfterExit=yes``), so
that at shutdown systemd runs ``ExecStop=vmm autostop`` — the graceful path (Ctrl-Alt-Del or
the ACPI power button, then SIGTERM, then SIGKILL) — *before* its own SIGTERM reaches the VM
processes in the unit's cgroup: SIGTERM to Firecracker is an immediate kill with no guest
flush. ``TimeoutStopSec`` therefore covers one VM's whole escalation (VMs stop in parallel)
plus a margin.

The service runs as root without the installing user's environment, so the config path (and
``VMM_DATA_DIR``) in effect at install time are written into the unit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vmm.errors import ConfigError, PermissionDenied, VmmError
from vmm.record import FrozenRecord
from vmm.runner import Runner

UNIT_NAME = "vmm.service"
WEB_UNIT_NAME = "vmm-web.service"  # 'vmm serve', next to vmm.service (service install --web)
UNIT_DIR = Path("/etc/systemd/system")
WANTED_BY = "multi-user.target"
# Per VM: the graceful wait, then SIGTERM (5 s), then SIGKILL (5 s), then QEMU's settle.
GRACEFUL_STOP_S = 30
ESCALATION_S = 15
STOP_MARGIN_S = 45
START_TIMEOUT_S = 600  # first starts copy and grow disk images


class UnitSpec(FrozenRecord):
    vmm_bin: str
    environment: tuple[tuple[str, str], ...] = ()
    stop_timeout_s: int = GRACEFUL_STOP_S


def quote(word: str) -> str:
    """One word for a unit file: ``%`` doubled (specifiers), quoted when it needs to be."""
    word = word.replace("%", "%%")
    if word and not any(c in word for c in " \t\"'\\;$"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def timeout_stop_s(stop_timeout_s: int) -> int:
    return stop_timeout_s + ESCALATION_S + STOP_MARGIN_S


def render_unit(spec: UnitSpec) -> str:
    """The text of ``vmm.service`` for ``spec``. Pure."""
    if not os.path.isabs(spec.vmm_bin):
        raise VmmError(f"the vmm binary must be an absolute path, got {spec.vmm_bin!r}")
    vmm = quote(spec.vmm_bin)
    lines = [
        "# Installed by 'vmm service install'. Starts VMs at boot, stops them gracefully at",
        "# shutdown. Edit the config (autostart_policy), not this file.",
        "[Unit]",
        "Description=vmm microVMs (autostart at boot, graceful stop at shutdown)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
    ]
    lines += [f"Environment={quote(f'{k}={v}')}" for k, v in spec.environment]
    lines += [
        f"ExecStart={vmm} autostart",
        f"ExecStop={vmm} autostop --timeout {spec.stop_timeout_s}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        f"TimeoutStopSec={timeout_stop_s(spec.stop_timeout_s)}",
        "",
        "[Install]",
        f"WantedBy={WANTED_BY}",
        "",
    ]
    return "\n".join(lines)


def render_web_unit(spec: UnitSpec) -> str:
    """The text of ``vmm-web.service``: ``vmm serve`` with its defaults (127.0.0.1:8080, the
    token in /etc/vmm/api-token). Pure.

    ``KillMode=process``: stopping the web server signals the server alone, never a VM it
    started (they run in scopes of their own where systemd-run exists, else in this cgroup).
    Options (``--listen``, TLS) go into a drop-in: ``systemctl edit vmm-web``."""
    if not os.path.isabs(spec.vmm_bin):
        raise VmmError(f"the vmm binary must be an absolute path, got {spec.vmm_bin!r}")
    lines = [
        "# Installed by 'vmm service install --web'. The web UI and JSON API ('vmm serve');",
        "# add options with 'systemctl edit vmm-web' (an ExecStart= line, then the new one).",
        "[Unit]",
        "Description=vmm web UI and JSON API (vmm serve)",
        "After=network-online.target vmm.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
    ]
    lines += [f"Environment={quote(f'{k}={v}')}" for k, v in spec.environment]
    lines += [
        f"ExecStart={quote(spec.vmm_bin)} serve",
        "Restart=on-failure",
        "RestartSec=2",
        "KillMode=process",
        "TimeoutStopSec=30",
        "UMask=0077",
        "",
        "[Install]",
        f"WantedBy={WANTED_BY}",
        "",
    ]
    return "\n".join(lines)


def default_spec(vmm_bin: str | None = None) -> UnitSpec:
    """The unit for this vmm: its own executable and the config/data dir now in effect."""
    from vmm.config import config_path, root_only_writable, system_config_path

    path = config_path()
    env = []
    if path.exists() and not root_only_writable(path):
        # The unit runs vmm as root at every boot: a file a user can edit must not configure it.
        raise ConfigError(
            f"the service would read {path}, which others than root can change",
            hint=f"put the settings the service needs in {system_config_path()} (sudo vmm config "
            "init --system), then run 'sudo vmm service install' again",
        )
    if path.exists():
        env.append(("VMM_CONFIG", str(path)))
    if os.environ.get("VMM_DATA_DIR"):
        env.append(("VMM_DATA_DIR", os.environ["VMM_DATA_DIR"]))
    return UnitSpec(vmm_bin=vmm_bin or find_vmm_bin(), environment=tuple(env))


def find_vmm_bin() -> str:
    """The installed ``vmm`` executable (absolute): the running one, else the one on PATH."""
    import sys

    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "vmm" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    beside = Path(sys.executable).parent / "vmm"  # the venv's console script
    if beside.is_file():
        return str(beside)
    found = shutil.which("vmm")
    if found:
        return os.path.abspath(found)
    raise VmmError("cannot find the vmm executable", hint="pass --vmm PATH")


def systemd_running(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is PID 1 (the test sd_booted(3) does)."""
    return run_dir.is_dir()


class ServiceStatus(FrozenRecord):
    unit_path: str
    installed: bool
    up_to_date: bool
    enabled: bool
    active: str | None  # systemctl is-active, or None without systemd


class Service:
    """Install, remove and query ``vmm.service`` (or ``unit_name``: ``vmm-web.service``);
    ``systemctl`` only when systemd runs."""

    def __init__(
        self,
        *,
        unit_dir: Path = UNIT_DIR,
        runner: Runner | None = None,
        systemd: bool | None = None,
        unit_name: str = UNIT_NAME,
    ):
        self.unit_dir = unit_dir
        self.runner = runner or Runner()
        self.systemd = systemd_running() if systemd is None else systemd
        self.unit_name = unit_name

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / self.unit_name

    @property
    def wants_link(self) -> Path:
        return self.unit_dir / f"{WANTED_BY}.wants" / self.unit_name

    def _systemctl(self, *args: str, check: bool = True) -> str:
        return self.runner.run(
            ["systemctl", *args], check=check, timeout=60, hint="apt-get install systemd"
        ).stdout.strip()

    def install(self, text: str, *, enable: bool = True) -> list[str]:
        """Write the unit (atomically) and enable it; returns what was done, one line each."""
        from vmm.store import write_atomic

        done = []
        try:
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.unit_path, text.encode())
        except PermissionError:
            raise PermissionDenied(
                f"cannot write {self.unit_path}: permission denied", hint="run it with sudo"
            ) from None
        done.append(f"wrote {self.unit_path}")
        if not enable:
            return done
        if self.systemd:
            self._systemctl("daemon-reload")
            self._systemctl("enable", self.unit_name)
            done.append(f"enabled {self.unit_name} (starts at the next boot; now: systemctl start {self.unit_name.removesuffix('.service')})")
        else:
            done.append(
                "systemd is not running (not PID 1): skipped 'systemctl enable'; on a systemd "
                f"host run: systemctl daemon-reload && systemctl enable {self.unit_name}"
            )
        return done

    def uninstall(self, *, stop: bool = False) -> list[str]:
        """Disable and remove the unit. Does not stop it (for ``vmm.service`` that would stop
        every VM) unless ``stop``: ``vmm-web.service``'s server must not outlive its unit."""
        done = []
        if self.systemd and self.unit_path.exists():
            if stop:
                self._systemctl("disable", "--now", self.unit_name, check=False)
                done.append(f"disabled and stopped {self.unit_name}")
            else:
                self._systemctl("disable", self.unit_name, check=False)
                done.append(f"disabled {self.unit_name}")
        elif self.wants_link.is_symlink():
            self.wants_link.unlink()
            done.append(f"removed {self.wants_link}")
        if self.unit_path.exists():
            try:
                self.unit_path.unlink()
            except PermissionError:
                raise PermissionDenied(
                    f"cannot remove {self.unit_path}: permission denied", hint="run it with sudo"
                ) from None
            done.append(f"removed {self.unit_path}")
            if self.systemd:
                self._systemctl("daemon-reload", check=False)
        else:
            done.append(f"{self.unit_path} is not installed")
        return done

    def status(self, expected: str | None = None) -> ServiceStatus:
        try:
            text: str | None = self.unit_path.read_text()
        except FileNotFoundError:
            text = None
        enabled = self.wants_link.exists()
        active = None
        if self.systemd and text is not None:
            active = self._systemctl("is-active", self.unit_name, check=False) or "unknown"
            enabled = self._systemctl("is-enabled", self.unit_name, check=False) == "enabled"
        return ServiceStatus(
            unit_path=str(self.unit_path),
            installed=text is not None,
            up_to_date=text is not None and (expected is None or text == expected),
            enabled=enabled,
            active=active,
        )
