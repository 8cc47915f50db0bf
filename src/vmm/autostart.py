"""Boot and shutdown of the host: ``vmm autostart`` / ``vmm autostop`` (run by vmm.service).

``autostop`` stops every running VM in parallel, each through ``VmService.stop`` (graceful, then
SIGTERM, then SIGKILL) — or with ``autostop_mode: "suspend"`` suspends it (its memory saved,
``vmm.services.suspend``; a VM that cannot be suspended is stopped instead) — after writing the names of the VMs it found running to
``<data_dir>/autostart-running.json``. ``autostart`` then starts, by ``autostart_policy``:

- ``flagged``: the VMs created with ``--autostart`` (or ``vmm autostart enable``);
- ``running``: exactly the VMs that file names. Without the file (the host went down without
  ``autostop``: a crash or power loss), the VMs whose record still says running — they were
  running when the host went down. The file is consumed: it describes one shutdown only.

Starting a suspended VM resumes it, so a host reboot with ``suspend`` and ``running`` brings
every VM back where it was.

One VM failing never stops the others; every VM gets one ``Outcome``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vmm import faults
from vmm.errors import ConfigError, VmmError
from vmm.log import get_logger
from vmm.models import VM, VMState, validate_name
from vmm.record import FrozenRecord
from vmm.status import VMView, describe_stop

if TYPE_CHECKING:
    from vmm.app import Vmm

log = get_logger(__name__)

RUNNING_FILE = "autostart-running.json"
MAX_PARALLEL = 8


class Outcome(FrozenRecord):
    """What happened to one VM: ``action`` is started, stopped, suspended, already-running,
    not-running, skipped or failed; ``detail`` says how (or why not)."""

    name: str
    action: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.action != "failed"

    def line(self) -> str:
        return f"{self.name}: {self.action}" + (f" ({self.detail})" if self.detail else "")


def set_flag(manager: Vmm, name: str, enabled: bool) -> VM:
    """``vmm autostart enable|disable NAME``."""
    validate_name(name)
    store = manager.store
    if not store.exists(name):
        manager.get(name)  # the NotFoundError with its hint
    with store.vm_lock(name):
        vm = store.load(name)
        if vm.autostart != enabled:
            vm.autostart = enabled
            store.save(vm)
        return vm


def _parallel(
    names: Iterable[str],
    work: Callable[[str], Outcome],
    on_done: Callable[[Outcome], None] | None,
    *,
    limit: int | None = MAX_PARALLEL,
) -> list[Outcome]:
    names = list(names)
    if not names:
        return []

    def guarded(name: str) -> Outcome:
        try:
            outcome = work(name)
        except VmmError as exc:
            outcome = Outcome(name, "failed", exc.brief)
        except Exception as exc:  # one VM's bug must not leave the others running or stopped
            log.debug("%s failed", name, exc_info=True)
            outcome = Outcome(name, "failed", f"{type(exc).__name__}: {exc}")
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=min(limit or len(names), len(names))) as pool:
        return list(pool.map(guarded, names))


# -- autostop -------------------------------------------------------------------------------


def write_running(manager: Vmm, names: list[str]) -> None:
    from vmm.store import write_atomic

    data = {"stopped_at": datetime.now(UTC).isoformat(timespec="seconds"), "vms": sorted(names)}
    manager.store.root.mkdir(parents=True, exist_ok=True)
    write_atomic(manager.store.root / RUNNING_FILE, (json.dumps(data, indent=2) + "\n").encode())


def read_running(manager: Vmm) -> list[str] | None:
    """The names ``autostop`` recorded, or None when there is no (valid) record."""
    path = manager.store.root / RUNNING_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    vms = raw.get("vms") if isinstance(raw, dict) else None
    if not isinstance(vms, list) or not all(isinstance(n, str) for n in vms):
        log.warning("ignoring %s: no list of VM names in $.vms", path)
        return None
    return vms


def _stopped_by_an_interrupted_autostop(manager: Vmm, vms: list[VM]) -> list[str]:
    """VMs an earlier ``autostop`` recorded and then stopped, when no ``autostart`` has used
    the record since (it deletes it): an autostop that was interrupted and is run again must
    not forget them — with ``autostart_policy: running`` they would not come back at boot."""
    path = manager.store.root / RUNNING_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    since = raw.get("stopped_at") if isinstance(raw, dict) else None
    recorded = read_running(manager) or []
    if not isinstance(since, str):
        return []
    by_name = {vm.name: vm for vm in vms}
    return [
        n for n in recorded
        if n in by_name and not VMView.of(by_name[n]).alive
        and ((by_name[n].stopped_at or "") >= since or by_name[n].state == VMState.STOPPING.value)
    ]  # fmt: skip


def autostop(
    manager: Vmm,
    *,
    timeout: float = 30.0,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Stop every running VM gracefully, in parallel; record which ones were running."""
    vms, problems = manager.store.load_all()
    running = [vm.name for vm in vms if VMView.of(vm).alive]
    if manager.store.root.is_dir():  # no data dir: nothing ran, nothing to remember
        write_running(manager, running + _stopped_by_an_interrupted_autostop(manager, vms))
    faults.point("autostop.recorded")

    suspend = manager.config.autostop_mode == "suspend"

    def stop(name: str) -> Outcome:
        why = ""
        if suspend:
            try:
                manager.suspend(name)
                return Outcome(name, "suspended", "its memory is saved; a start resumes it")
            except VmmError as exc:  # the host goes down all the same: shut it down instead
                log.warning("VM %s: cannot suspend (%s); stopping it", name, exc.brief)
                why = f"; not suspended: {exc.brief}"
        how = manager.vms.stop(name, timeout=timeout)
        if how == "not-running":
            return Outcome(name, "not-running", "it exited by itself")
        return Outcome(name, "stopped", describe_stop(how) + why)

    outcomes = [Outcome(p.name, "failed", f"cannot read its record: {p.error}") for p in problems]
    for o in outcomes:
        if on_done is not None:
            on_done(o)
    # All at once: a stop mostly waits for its guest, and systemd's TimeoutStopSec for the
    # whole host shutdown is one VM's escalation plus a margin, however many VMs there are.
    return outcomes + _parallel(running, stop, on_done, limit=None)


# -- autostart ------------------------------------------------------------------------------


def select_for_start(policy: str, vms: list[VM], recorded: list[str] | None) -> list[str]:
    """The names ``autostart`` starts under ``policy`` (a suspended one resumes). Pure."""
    if policy == "flagged":
        return [vm.name for vm in vms if vm.autostart]
    if policy == "running":
        if recorded is not None:
            existing = {vm.name for vm in vms}
            return [n for n in recorded if n in existing]
        was_running = (VMState.RUNNING.value, VMState.STARTING.value, VMState.STOPPING.value)
        return [vm.name for vm in vms if vm.state in was_running]
    raise ConfigError(f"unknown autostart_policy {policy!r}", hint="use 'flagged' or 'running'")


def autostart(
    manager: Vmm,
    *,
    policy: str | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Start the VMs the policy selects, in parallel, without waiting for SSH."""
    policy = policy or manager.config.autostart_policy
    vms, problems = manager.store.load_all()
    recorded = read_running(manager) if policy == "running" else None
    names = select_for_start(policy, vms, recorded)
    by_name = {vm.name: vm for vm in vms}
    missing = sorted(set(recorded or []) - set(by_name))

    def start(name: str) -> Outcome:
        if VMView.of(by_name[name]).alive:
            return Outcome(name, "already-running")
        resumed = by_name[name].state == VMState.SUSPENDED.value
        vm = manager.vms.start(name)
        return Outcome(name, "started", ("resumed, " if resumed else "") + f"{vm.engine} at {vm.ip}")

    outcomes = [Outcome(p.name, "failed", f"cannot read its record: {p.error}") for p in problems]
    outcomes += [Outcome(n, "skipped", "running at shutdown, deleted since") for n in missing]
    for o in outcomes:
        if on_done is not None:
            on_done(o)
    outcomes += _parallel(names, start, on_done)
    if recorded is not None:
        with contextlib.suppress(FileNotFoundError):
            (manager.store.root / RUNNING_FILE).unlink()
    return outcomes
