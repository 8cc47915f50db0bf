"""``vmm start A B C`` / ``vmm stop A B C``: one command, many VMs, in parallel.

The parent has already paid for the interpreter and the imports; it forks one child per VM
(copy-on-write, a millisecond each) and each child runs the single-VM command's handler through
``cli.running.invoke`` — the same code, locks, fault points, signal handling and messages as
``vmm start A`` run on its own. The parent only waits: on SIGTERM/SIGHUP/SIGINT it passes the
signal on to the children still running, waits for their cleanup, and exits 128+N.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from vmm.cli.running import Terminated

MAX_PARALLEL = 32  # children at once; each mostly waits (the hypervisor, SSH)


def run_each(command: str, names: Sequence[str], one: Callable[[str], int]) -> int:
    """``one(name)`` (the command for one VM, its exit code) for every name, each in a forked
    child, at most ``MAX_PARALLEL`` at once; 0 when every one succeeded, else 1 with a summary
    line (each child printed its own error)."""
    pending = list(dict.fromkeys(names))  # a name given twice runs once
    running: dict[int, str] = {}
    failed: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        while pending or running:
            while pending and len(running) < MAX_PARALLEL:
                name = pending.pop(0)
                running[_fork(one, name)] = name
            pid, status = os.wait()
            name = running.pop(pid, "")
            if name and os.waitstatus_to_exitcode(status) != 0:
                failed.append(name)
    except Terminated as exc:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, exc.signum)
        for pid in list(running):
            os.waitpid(pid, 0)  # their own cleanup (undo a start) runs to the end
        raise
    if failed:
        print(
            f"error: {len(failed)} of {len(dict.fromkeys(names))} VMs failed to {command}: "
            + ", ".join(sorted(failed)),
            file=sys.stderr,
        )
        return 1
    return 0


def _fork(one: Callable[[str], int], name: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: the one-VM command, then out without running the parent's cleanup
        code = one(name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
