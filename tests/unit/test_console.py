"""vmm.host.console without a VM: the log reader (tail, follow, a log rewritten by a new start)
and the relay between a console socket and a pipe (Ctrl-] detaches, EOF drains)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from vmm.host import console

pytestmark = pytest.mark.unit


def test_last_lines() -> None:
    assert console.last_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert console.last_lines(b"a\nb\nc", 1) == b"c"
    assert console.last_lines(b"", 3) == b""


def test_existing_whole_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(20000)))
    with console.LogReader(log) as r:
        assert b"".join(r.existing()) == log.read_bytes()
    with console.LogReader(log) as r:  # far more than the first 64 KiB read back
        assert b"".join(r.existing(15000)) == b"".join(b"line %d\n" % i for i in range(5000, 20000))
    with console.LogReader(log) as r:
        assert b"".join(r.existing(2)) == b"line 19998\nline 19999\n"


def test_follow_appends_and_rewrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "FOLLOW_POLL", 0.01)
    log = tmp_path / "vm.log"
    log.write_bytes(b"old boot, a long line\n")
    with console.LogReader(log) as r:
        assert b"".join(r.existing()) == b"old boot, a long line\n"
        new = r.follow()
        with log.open("ab") as f:
            f.write(b"more\n")
        assert next(new) == b"more\n"
        log.write_bytes(b"new boot\n")  # a new start truncates and rewrites it
        assert next(new) == b"new boot\n"


def test_relay_copies_both_ways_until_ctrl_bracket() -> None:
    vm_side, ours = socket.socketpair()
    in_r, in_w = os.pipe()
    got: list[bytes] = []
    vm_side.sendall(b"login: ")
    os.write(in_w, b"root\n")
    received = []

    def guest() -> None:
        data = vm_side.recv(100)
        received.append(data)
        vm_side.sendall(data.upper())
        os.write(in_w, b"ls\x1dreboot\n")

    t = threading.Thread(target=guest)
    t.start()
    try:
        console.relay(ours, in_r, got.append, raw=False)
    finally:
        t.join()
        vm_side.settimeout(5)
        rest = vm_side.recv(100)
        for fd in (in_r, in_w):
            os.close(fd)
        ours.close()
        vm_side.close()
    assert received == [b"root\n"] and rest == b"ls"  # what follows Ctrl-] is not sent
    assert b"".join(got).startswith(b"login: ")


def test_relay_ends_when_input_closes_and_the_guest_is_quiet() -> None:
    vm_side, ours = socket.socketpair()
    in_r, in_w = os.pipe()
    os.close(in_w)
    vm_side.sendall(b"bye\n")
    got: list[bytes] = []
    try:
        console.relay(ours, in_r, got.append, raw=False, drain=0.05)
    finally:
        os.close(in_r)
        ours.close()
        vm_side.close()
    assert got == [b"bye\n"]
