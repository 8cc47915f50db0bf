"""Shared fixtures: repository paths, a private vmm config + data dir, running the CLI.

With ``VMM_TEST_STRICT=1`` (set by scripts/test.sh in CI) a skipped test is a failure: in CI
every layer, e2e included, must really run.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["tests.netns"]

# Never the machine's /etc/vmm/config.json: tests that need a system config set their own.
os.environ.setdefault("VMM_SYSTEM_CONFIG", "/nonexistent/vmm-test/system-config.json")

REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("VMM_TEST_STRICT") == "1"
    if (
        strict
        and report.skipped
        and call.when in ("setup", "call")
        and not item.get_closest_marker("allow_skip")
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in strict mode (VMM_TEST_STRICT=1): {reason}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_skip: a skip that is acceptable even in strict mode")


@dataclass
class VmmEnv:
    """A private config file and data dir for one test (never the machine's /var/lib/vmm)."""

    root: Path
    config: Path
    data_dir: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VMM_CONFIG"] = str(self.config)
        env["VMM_DATA_DIR"] = str(self.data_dir)
        env["HOME"] = str(self.root)  # vmm's known_hosts etc. stay out of the real home
        env.pop("SUDO_USER", None)
        return env

    def write_config(self, **values: object) -> None:
        self.config.write_text(json.dumps(values, indent=2))

    def run(
        self,
        *args: str,
        ns: object | None = None,
        check: bool = False,
        timeout: float = 600,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vmm", *args]
        if ns is not None:
            argv = ["ip", "netns", "exec", ns.name, *argv]  # type: ignore[attr-defined]
        proc = subprocess.run(
            argv,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vmm {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def vmm_env() -> Iterator[VmmEnv]:
    # Short paths: Unix socket paths (data_dir/sockets/<name>.console) are limited to 107 bytes.
    root = Path("/tmp") / f"vmmt{secrets.token_hex(3)}"
    root.mkdir(mode=0o755)
    env = VmmEnv(root=root, config=root / "config.json", data_dir=root / "data")
    try:
        yield env
    finally:
        remove_test_dir(root)


def remove_test_dir(root: Path) -> None:
    """Unmount whatever a failed test left mounted below ``root``, then delete it without ever
    crossing into another filesystem: a bind mount of the host's /dev left by a killed command
    must not turn the cleanup into ``rm -rf /dev``."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        targets = [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False, capture_output=True)


def make_ext4(path: Path, size_mb: int = 64, tree: Path | None = None) -> Path:
    """A real ext4 image (sparse), optionally filled from ``tree``."""
    with path.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    argv = ["mkfs.ext4", "-q", "-F", str(path)]
    if tree is not None:
        argv[3:3] = ["-d", str(tree)]
    subprocess.run(argv, check=True)
    return path


def register_artifacts(env: VmmEnv, tmp: Path, *, image_mb: int = 64) -> None:
    """Import a fake ELF kernel and a small real ext4 image as ``default`` (no guest boots)."""
    from tests.unit.test_kernels import fake_elf

    env.run("kernel", "import", str(fake_elf(tmp / "vmlinux")), "--name", "default", check=True)
    env.run("image", "import", str(make_ext4(tmp / "root.ext4", image_mb)), "--name", "default", check=True)


def use_fake_firecracker(env: VmmEnv, tmp: Path, *, image_mb: int = 64) -> None:
    """Point ``env`` at the fake firecracker, and import a fake ELF kernel and a small real
    ext4 image (with an /etc) as ``default``: the CLI lifecycle without booting a guest."""
    from tests.fakes.fc_harness import install_fake
    from tests.unit.test_kernels import fake_elf

    env.write_config(engine="firecracker", firecracker_bin=str(install_fake(tmp / "bin")))
    (tmp / "tree" / "etc").mkdir(parents=True, exist_ok=True)
    image = make_ext4(tmp / "root.ext4", image_mb, tmp / "tree")
    env.run("kernel", "import", str(fake_elf(tmp / "vmlinux")), "--name", "default", check=True)
    env.run("image", "import", str(image), "--name", "default", check=True)
