"""``stop_escalating`` with real processes: each graceful way in turn, sharing the timeout,
then SIGTERM and SIGKILL; the step that worked is what ``vmm stop`` reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from vmm.host.liveness import ref_for
from vmm.host.process import ProcessRef, stop_escalating

pytestmark = pytest.mark.integration

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"


@pytest.fixture
def proc() -> Iterator[tuple[subprocess.Popen[str], ProcessRef]]:
    p = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "up\n"
    try:
        yield p, ref_for(p.pid)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def killer(p: subprocess.Popen[str]) -> tuple[str, object]:
    def send() -> bool:
        os.kill(p.pid, signal.SIGKILL)
        return True

    return ("ssh-poweroff", send)


def test_the_next_way_is_tried_when_one_is_ignored(proc: tuple[subprocess.Popen[str], ProcessRef]) -> None:
    p, ref = proc
    sent: list[str] = []
    steps = [("acpi", lambda: sent.append("acpi") or True), ("ctrl-alt-del", lambda: sent.append("cad") or True), killer(p)]
    t0 = time.monotonic()
    how = stop_escalating(ref, steps, timeout=4.0)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert how == "ssh-poweroff" and sent == ["acpi", "cad"]
    assert 2.9 <= took < 4.5, took  # acpi waited half (2 s), ctrl-alt-del a third of the rest


def test_an_undeliverable_way_costs_no_time(proc: tuple[subprocess.Popen[str], ProcessRef]) -> None:
    p, ref = proc

    def broken() -> bool:
        raise OSError("no QMP socket")

    t0 = time.monotonic()
    how = stop_escalating(ref, [("acpi", broken), ("ctrl-alt-del", lambda: False), killer(p)], timeout=30.0)  # type: ignore[list-item]
    assert how == "ssh-poweroff" and time.monotonic() - t0 < 2.0


def test_a_guest_ignoring_everything_is_killed_within_the_bound(proc: tuple[subprocess.Popen[str], ProcessRef]) -> None:
    _p, ref = proc
    t0 = time.monotonic()
    how = stop_escalating(ref, [("acpi", lambda: True), ("ctrl-alt-del", lambda: True)], timeout=2.0, term_timeout=1.0)
    took = time.monotonic() - t0
    assert how == "sigkill"  # it ignores SIGTERM too
    assert 3.0 <= took < 2.0 + 1.0 + 5.0, took
