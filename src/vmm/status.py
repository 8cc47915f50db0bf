"""What a VM looks like right now: its record plus what the host shows (cheap, read-only)."""

from __future__ import annotations

from enum import StrEnum

from vmm.host.liveness import ProcessRef, is_alive
from vmm.models import VM, VMState
from vmm.record import Record


class VMView(Record):
    """A record together with what the host shows about it right now."""

    vm: VM
    alive: bool

    @classmethod
    def of(cls, vm: VM) -> VMView:
        return cls(vm, is_alive(process_ref(vm)))

    @property
    def state(self) -> str:
        recorded = self.vm.state
        if self.alive:
            return recorded  # "starting" while (or, after a killed start, until) it is launched
        if recorded in (VMState.RUNNING.value, VMState.STOPPING.value, VMState.STARTING.value):
            return VMState.STOPPED.value  # the process is gone: the guest shut down or died
        return recorded


def process_ref(vm: VM) -> ProcessRef | None:
    if vm.pid is None or vm.pid_start_time is None:
        return None
    return ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id)


class StopOutcome(StrEnum):
    """Which of ``stop``'s escalating steps ended the VM."""

    ACPI = "acpi"
    CTRL_ALT_DEL = "ctrl-alt-del"
    SSH_POWEROFF = "ssh-poweroff"
    SSH_REBOOT = "ssh-reboot"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"
    ALREADY_STOPPED = "already-stopped"  # it exited while stop was starting
    NOT_RUNNING = "not-running"  # there was nothing to stop

    @classmethod
    def of(cls, how: str) -> StopOutcome:
        """The outcome an engine reported (its step names are these values)."""
        try:
            return cls(how)
        except ValueError:
            raise ValueError(f"unknown stop outcome {how!r}") from None

    def describe(self) -> str:
        """What ``stop`` reports."""
        return _STOPPED_BY.get(self, self.value)


_STOPPED_BY: dict[str, str] = {  # StrEnum keys: a plain str finds them too
    StopOutcome.ACPI: "shut down by the ACPI power button",
    StopOutcome.CTRL_ALT_DEL: "shut down by Ctrl-Alt-Del",
    StopOutcome.SSH_POWEROFF: "shut down by poweroff over SSH",
    StopOutcome.SSH_REBOOT: "shut down by reboot over SSH",
    StopOutcome.SIGTERM: "terminated (SIGTERM)",
    StopOutcome.SIGKILL: "killed (SIGKILL)",
}


def describe_stop(how: str) -> str:
    """What ``stop`` reports: which of the escalating steps ended the VM."""
    return _STOPPED_BY.get(how, how)


def human_size(n: int) -> str:
    """A byte count as the CLI and the web UI show it: 512B, 1.5K, 2.0G."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"
