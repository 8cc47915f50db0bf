"""README's "Use from Python" example, run as it is written: a real guest booted, a command run
in it over SSH, stopped and deleted through ``vmm.Vmm`` — the same services the CLI calls."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section has one Python example"
    return blocks[0]


def test_readme_python_example(world: World) -> None:
    w = world
    w.env.write_config(engine="qemu", accel="tcg", vm_defaults={"ssh_key_path": f"{w.key}.pub"})
    script = w.env.root / "example.py"
    script.write_text(readme_example())
    proc = subprocess.run(
        ["ip", "netns", "exec", w.ns.name, sys.executable, str(script)],
        env=w.env.env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "created py-demo at 172.16.0.2" in out
    assert re.search(r"^0 Linux \d+\.\d+", out, re.M), out  # uname -sr in the guest, exit 0
    assert "[('py-demo', 'running')]" in out
    assert "stopped: shut down by the ACPI power button" in out
    # deleted: nothing left in the records, and the CLI agrees
    assert json.loads(w.vmm("list", "-a", "--json").stdout)["vms"] == []
    assert "vmm-" not in w.links()


def test_python_api_errors_are_the_clis(world: World) -> None:
    """The same validation and error types as the CLI, before anything is changed."""
    code = (
        "from vmm import Vmm\n"
        "from vmm.errors import VmmError\n"
        "try:\n"
        "    Vmm().create('bad name!')\n"
        "except VmmError as e:\n"
        "    print(type(e).__name__, e.exit_code, e.brief)\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", world.ns.name, sys.executable, "-c", code],
        env=world.env.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.strip() == "ValidationError 1 invalid VM name 'bad name!'", proc.stdout + proc.stderr
    cli = world.vmm("create", "bad name!", check=False)
    assert "invalid VM name 'bad name!'" in cli.stderr and cli.returncode == 1
