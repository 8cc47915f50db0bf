"""The one process starter: env and cwd, streaming long output, a missing tool named with its
package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vmm.errors import CommandError, ToolMissing
from vmm.runner import Runner


def test_env_and_cwd_are_passed(tmp_path: Path) -> None:
    r = Runner().run(["sh", "-c", 'echo "$VMM_X $(pwd)"'], env={"VMM_X": "one", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert r.stdout.strip() == f"one {tmp_path}"


def test_a_missing_tool_names_its_package() -> None:
    with pytest.raises(ToolMissing) as info:
        Runner().run(["nft-not-here"])
    assert info.value.brief == "nft-not-here is not installed"
    with pytest.raises(ToolMissing) as info:
        Runner().run(["/nonexistent/debugfs"])
    assert info.value.hint == "apt-get install e2fsprogs"


def test_stream_hands_over_lines_as_they_come_and_keeps_only_a_tail() -> None:
    seen: list[str] = []
    code = "import sys\nfor i in range(5000):\n    print(i)\nprint('err', file=sys.stderr)"
    r = Runner().stream([sys.executable, "-c", code], seen.append, tail_lines=3)
    assert len(seen) == 5001 and seen[0] == "0" and seen[-1] == "err"
    assert r.stdout.splitlines() == ["4998", "4999", "err"]


def test_stream_failure_carries_the_tail() -> None:
    with pytest.raises(CommandError) as info:
        Runner().stream(["sh", "-c", "echo first; echo last >&2; exit 3"], lambda _l: None)
    assert info.value.returncode == 3 and "last" in str(info.value.details or info.value)


def test_stream_is_killed_at_its_timeout() -> None:
    with pytest.raises(CommandError):
        Runner().stream(["sh", "-c", "while :; do echo tick; sleep 0.05; done"], lambda _l: None, timeout=0.5)
