"""Fault-injection points: where the kill-matrix tests stop a command on purpose.

Each state-changing command calls ``point("<command>.<step>")`` between its steps. In
production this is one environment lookup and nothing happens. The tests set
``VMM_TEST_FAULT=<point>:<action>`` to act at exactly that point:

- ``kill``: SIGKILL this process (a crash, an OOM kill, a power cut of the CLI);
- ``term`` / ``hup`` / ``int``: send this process that signal (a stop of the unit, a closed
  terminal, Ctrl-C), which must run the same cleanup as Ctrl-C;
- ``pause``: create ``$VMM_TEST_FAULT_DIR/<point>`` and wait (up to 120 s) until the test
  removes it, to line up a race with another command deterministically.

``VMM_TEST_FAULT_LOG=FILE`` appends the name of every point passed, so the tests enumerate the
points of a command from a run rather than from a list that could drift from the code.
"""

from __future__ import annotations

import os
import signal
import time

_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "hup": signal.SIGHUP, "int": signal.SIGINT}


def point(name: str) -> None:
    """A named step of a command (a no-op unless a test asked for a fault here)."""
    if "VMM_TEST_FAULT" in os.environ or "VMM_TEST_FAULT_LOG" in os.environ:
        _hit(name)


def _hit(name: str) -> None:
    log = os.environ.get("VMM_TEST_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(name + "\n")
    target, _, action = os.environ.get("VMM_TEST_FAULT", "").partition(":")
    if target != name:
        return
    if action in _SIGNALS:
        os.kill(os.getpid(), _SIGNALS[action])
        time.sleep(5)  # SIGKILL lands at once; a handled signal raises from the sleep
        return
    if action == "pause":
        marker = os.path.join(os.environ.get("VMM_TEST_FAULT_DIR", "/tmp"), name)
        with open(marker, "w"):
            pass
        deadline = time.monotonic() + 120
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        return
    raise ValueError(f"VMM_TEST_FAULT: unknown action {action!r}")
