"""Completion scripts: valid syntax, and bash really completes commands and VM/image/kernel names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.cli.completion import names, script

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "vms" / "web").mkdir(parents=True)
    (d / "images" / "kernels").mkdir(parents=True)
    for f in (
        "vms/web.json",
        "vms/db.json",
        "vms/.db.json.1.tmp",
        "images/base.ext4",
        "images/base.json",
        "images/kernels/k61",
        "images/kernels/k61.json",
        "images/kernels/k61.initrd",
    ):
        (d / f).write_text("{}")
    return d


def test_names_from_the_data_dir(data: Path) -> None:
    assert names("vms", data) == ["db", "web"]
    assert names("images", data) == ["base"]
    assert names("kernels", data) == ["k61"]
    commands = names("commands", data)
    assert "create" in commands and "doctor" in commands
    assert "autostop" not in commands and "__complete" not in commands
    assert names("vms", data / "missing") == []


def test_bash_syntax() -> None:
    subprocess.run(["bash", "-n"], input=script("bash"), text=True, check=True)
    subprocess.run(["bash", "-n"], input=script("zsh").split("\n", 3)[3], text=True, check=True)
    assert "bashcompinit" in script("zsh")


def test_fish_completes(tmp_path: Path) -> None:
    """The fish script parses and really completes (scripts/test.sh installs fish)."""
    subprocess.run(["fish", "--no-execute"], input=script("fish"), text=True, check=True)
    (tmp_path / "vmm.fish").write_text(script("fish"))
    prog = (
        f"function vmm; env PYTHONPATH={REPO / 'src'} VMM_DATA_DIR={tmp_path / 'data'} "
        f"VMM_CONFIG=/nonexistent {sys.executable} -m vmm $argv; end; "
        f"source {tmp_path / 'vmm.fish'}; complete -C 'vmm sta'; echo ===; complete -C 'vmm image '"
    )
    out = subprocess.run(
        ["fish", "--no-config", "-c", prog],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    ).stdout
    first, second = out.split("===\n")
    assert first.split() == ["start"]
    assert {"import", "list", "delete", "build", "pull"} <= set(second.split())


def complete(data: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    prog = (
        f'vmm() {{ PYTHONPATH={REPO / "src"} VMM_DATA_DIR={data} VMM_CONFIG=/nonexistent {sys.executable} -m vmm "$@"; }}\n'
        + script("bash")
        + f"\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _vmm; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True).stdout
    return sorted(w for w in out.split("\n") if w)


def test_bash_completes(data: Path) -> None:
    assert "start" in complete(data, "vmm", "st")
    assert complete(data, "vmm", "start", "") == ["db", "web"]
    assert complete(data, "vmm", "logs", "-f", "w") == ["web"]
    assert complete(data, "vmm", "create", "x", "--image", "") == ["base"]
    assert complete(data, "vmm", "create", "x", "--kernel", "") == ["k61"]
    assert complete(data, "vmm", "autostart", "") == ["disable", "enable"]
    assert complete(data, "vmm", "autostart", "enable", "") == ["db", "web"]
    assert complete(data, "vmm", "service", "") == ["install", "status", "uninstall"]
    assert complete(data, "vmm", "start", "web", "") == []
