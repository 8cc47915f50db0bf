"""vmm logs and vmm console through the CLI (no guest: the log and the console socket are faked)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, register_artifacts
from tests.fakes.fc_harness import install_fake
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


class LineReader:
    """Lines from a pipe, each within a deadline: a bug fails the test instead of hanging it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no complete line within {timeout:g} s (got {self.buf!r})")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"the pipe closed before a complete line (got {self.buf!r})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode() + "\n"


@pytest.fixture
def env(vmm_env: VmmEnv, tmp_path: Path) -> VmmEnv:
    vmm_env.write_config(engine="firecracker", firecracker_bin=str(install_fake(tmp_path / "bin")))
    register_artifacts(vmm_env, tmp_path)
    vmm_env.run("create", "web", check=True)
    return vmm_env


def test_logs_of_a_vm_never_started(env: VmmEnv) -> None:
    r = env.run("logs", "web")
    assert r.returncode == 1
    assert r.stderr.startswith("error: VM 'web' has no console log yet: it has never been started")
    assert "hint: start it with 'vmm start web'" in r.stderr
    unknown = env.run("logs", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr


def test_logs_tail_and_follow(env: VmmEnv) -> None:
    log = env.data_dir / "logs" / "web.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert env.run("logs", "web", check=True).stdout.count("\n") == 100
    assert env.run("logs", "web", "-n", "2", check=True).stdout == "line 98\nline 99\n"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmm", "logs", "web", "-f", "-n", "1"],
        # as for a user piping it somewhere: a missing flush must show, PYTHONUNBUFFERED would hide it
        env={k: v for k, v in env.env().items() if k != "PYTHONUNBUFFERED"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        out = LineReader(proc.stdout.fileno())
        assert out.readline() == "line 99\n"
        with log.open("a") as f:
            f.write("booted\n")
        assert out.readline() == "booted\n"
        assert proc.poll() is None  # still following
    finally:
        proc.kill()
        proc.wait()


def test_console(env: VmmEnv, tmp_path: Path) -> None:
    not_running = env.run("console", "web")
    assert not_running.returncode == 1 and "not running" in not_running.stderr
    # Pretend the VM runs on QEMU: a live process of ours, and an echoing console socket.
    sleeper = subprocess.Popen(["sleep", "60"])
    record = env.data_dir / "vms" / "web.json"
    vm = json.loads(record.read_text())
    start_time = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    vm.update(engine="firecracker", pid=sleeper.pid, pid_start_time=start_time, state="running")
    record.write_text(json.dumps(vm))
    try:
        fc = env.run("console", "web")
        assert fc.returncode == 1 and "vmm logs -f web" in fc.stderr
        vm["engine"] = "qemu"
        record.write_text(json.dumps(vm))
        path = env.data_dir / "sockets" / "web.console"
        path.parent.mkdir(parents=True, exist_ok=True)
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen(1)

        received: list[bytes] = []
        closed: list[bool] = []  # one entry per console connection the server has finished

        def echo() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return  # the test closed the server
                try:
                    # a console that detaches at once may be gone before the greeting
                    with contextlib.suppress(OSError):
                        conn.sendall(b"login: ")
                    # read to the end whatever happens to the replies: what it sent is the point
                    with contextlib.suppress(OSError):
                        while data := conn.recv(1024):
                            received.append(data)
                            with contextlib.suppress(OSError):
                                conn.sendall(data.upper())
                finally:
                    conn.close()
                    closed.append(True)

        threading.Thread(target=echo, daemon=True).start()
        r = env.run("console", "web", input="root\n", timeout=20)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "login: ROOT\n"
        # Ctrl-] detaches: what follows it is not sent
        r = env.run("console", "web", input="ls\x1dreboot\n", timeout=20)
        assert r.returncode == 0, r.stderr
        # everything the second console sent has arrived once the server saw it hang up
        wait_until(lambda: len(closed) == 2, 10, what="the server done with both connections")
        assert b"".join(received) == b"root\nls"
        server.close()
        os.unlink(path)
    finally:
        sleeper.kill()
        sleeper.wait()
