"""A QEMU VM's state to a file and back, over QMP: QEMU 7.2's migration to and from ``exec:``.

Saving (the VM paused with ``stop`` first): ``migrate`` streams the RAM and device state into a
shell command, ``cp --sparse=always /dev/stdin FILE`` (holes for runs of zeros; QEMU itself
already sends a zero page as a flag, not as 4 KiB of zeros). The ``file:`` URI only came in
QEMU 8.2. QEMU's default bandwidth limit (32 MiB/s, meant for live migration over a network)
is lifted first: the VM is paused, so all of it goes in one pass as fast as the disk takes it.
When the migration completes QEMU has flushed and released the disks (status ``postmigrate``);
``cont`` takes them back if the same process is to run on.

Restoring: a fresh QEMU with the identical command line plus ``-incoming defer`` waits in
status ``inmigrate``; ``migrate-incoming`` with ``exec:cat FILE`` loads it, and QEMU (started
without ``-S``) runs the guest as soon as the load is done. A failed load makes QEMU 7.2 print
the reason to stderr and exit (``exit-on-error`` came in 9.1). The microvm machine's state
format is not kept stable between QEMU versions: callers record the version and refuse to
restore under another one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from pathlib import Path

from vmm.engines.qemu.qmp import QmpClient
from vmm.errors import EngineError

STATE_FILE = "vmstate"
MAX_BANDWIDTH = 64 * 1024**3  # bytes/s: no limit worth the name
POLL = 0.02


def outgoing_uri(path: Path) -> str:
    return f"exec:cp --sparse=always /dev/stdin {shlex.quote(str(path))}"


def incoming_uri(path: Path) -> str:
    return f"exec:cat {shlex.quote(str(path))}"


def save(api_socket: Path, dest: Path, *, qmp_timeout: float, timeout: float) -> None:
    """Migrate the (paused) VM at ``api_socket`` into the new file ``dest`` (created 0600);
    on failure ``dest`` is removed."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    try:
        with QmpClient(api_socket, timeout=qmp_timeout) as qmp:
            qmp.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
            qmp.execute("migrate", uri=outgoing_uri(dest))
            try:
                _wait_saved(qmp, timeout)
            except BaseException:
                _cancel(qmp)
                raise
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _wait_saved(qmp: QmpClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            why = info.get("error-desc") or status
            raise EngineError(f"QEMU could not save the VM's state: {why}")
        if time.monotonic() > deadline:
            raise EngineError(f"QEMU did not finish saving the VM's state within {timeout:g} s")
        time.sleep(POLL)


def _cancel(qmp: QmpClient) -> None:
    """Stop a migration under way (a failure or an interrupt): until it has, QEMU keeps the
    disks released and writes on, so wait (briefly) for it to end."""
    with contextlib.suppress(Exception):
        qmp.execute("migrate_cancel")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status = qmp.execute("query-migrate").get("status")
            if status not in ("active", "cancelling", "setup", "device", "pre-switchover"):
                return
            time.sleep(POLL)


def load(api_socket: Path, source: Path, *, qmp_timeout: float, timeout: float) -> None:
    """Load ``source`` into the QEMU waiting at ``api_socket`` (``-incoming defer``) and make
    sure the guest runs. A failed load ends QEMU: the caller reports its stderr."""
    with QmpClient(api_socket, timeout=qmp_timeout) as qmp:
        qmp.execute("migrate-incoming", uri=incoming_uri(source))
        deadline = time.monotonic() + timeout
        while True:
            status = qmp.execute("query-status").get("status")
            if status == "running":
                return
            if status in ("paused", "postmigrate", "prelaunch"):
                qmp.execute("cont")
            elif status != "inmigrate":
                raise EngineError(f"QEMU reports status {status!r} after loading the VM's state")
            if time.monotonic() > deadline:
                raise EngineError(f"QEMU did not finish loading the VM's state within {timeout:g} s")
            time.sleep(POLL)
