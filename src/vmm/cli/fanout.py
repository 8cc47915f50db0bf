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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmm.app import Vmm

MAX_PARALLEL = 32  # children at once; each mostly waits (the hypervisor, SSH)

# What a start or stop imports lazily (each module loads only what its commands need): loaded
# once in the parent before forking, so no child pays for it. A module missing here is still
# imported by the child that needs it, only not shared.
LIFECYCLE_MODULES = (
    "vmm.services.vms", "vmm.services.network", "vmm.guest.rootfs", "vmm.guest.ext4",
    "vmm.guest.customize", "vmm.guest.mounts", "vmm.network.links", "vmm.network.firewall",
    "vmm.network.coexist", "vmm.network.sysctl", "vmm.network.ipam", "vmm.network.forwards",
    "vmm.host.ssh", "vmm.engines.base", "vmm.engines.managed",
)  # fmt: skip


def warm(app: Vmm, names: Sequence[str]) -> None:
    """Import the lifecycle's modules and the engines the named VMs use, in this process."""
    import importlib

    from vmm.errors import VmmError

    for module in LIFECYCLE_MODULES:
        importlib.import_module(module)
    for name in dict.fromkeys(names):
        try:
            app.engine(app.store.load(name).engine)
        except VmmError:
            continue  # the child says what is wrong with this one


def run_each(command: str, names: Sequence[str], one: Callable[[str], int]) -> int:
    """``one(name)`` (the command for one VM, its exit code) for every name, each in a forked
    child, at most ``MAX_PARALLEL`` at once; 0 when every one succeeded, else 1 with a summary
    line (each child printed its own error)."""
    pending = list(dict.fromkeys(names))  # a name given twice runs once
    running: dict[int, str] = {}
    failed: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    import gc

    # What the parent built stays where it is: the children's garbage collector does not walk
    # it (walking writes to every object's page, and each write copies a page into the child).
    gc.freeze()
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
