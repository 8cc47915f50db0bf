"""Helpers for tests that run the fake firecracker as a real process.

- ``install_fake(bin_dir)`` writes an executable ``firecracker`` that execs the fake with the
  interpreter running the tests (so PyYAML and jsonschema are there, and the pid stays the
  same through the ``exec``).
- ``short_tmpdir()`` makes a directory under /tmp: AF_UNIX socket paths must stay below 108
  bytes, which pytest's ``tmp_path`` does not guarantee.
- ``processes_mentioning(text)`` finds live processes whose command line contains ``text``
  (each test puts its unique directory in the socket path), for leftover checks.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path

FAKE = Path(__file__).resolve().parent / "fake_firecracker.py"

KNOBS = (
    "FAKE_FC_CRASH_AT_STARTUP",
    "FAKE_FC_STARTUP_DELAY",
    "FAKE_FC_IGNORE_CTRL_ALT_DEL",
    "FAKE_FC_IGNORE_SIGTERM",
    "FAKE_FC_RECORD",
    "FAKE_FC_CHECK_TAP",
    "FAKE_FC_GUEST_PANIC_AFTER",
    "FAKE_FC_SNAPSHOT_CREATE_FAIL",
    "FAKE_FC_LOAD_FAIL",
)


def install_fake(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "firecracker"
    wrapper.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def short_tmpdir(prefix: str = "fc-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose argv contains ``text``."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
