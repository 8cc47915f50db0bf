"""What a VM looks like right now: its record plus what the host shows (cheap, read-only)."""

from __future__ import annotations

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


_STOPPED_BY = {
    "acpi": "shut down by the ACPI power button",
    "ctrl-alt-del": "shut down by Ctrl-Alt-Del",
    "ssh-poweroff": "shut down by poweroff over SSH",
    "ssh-reboot": "shut down by reboot over SSH",
    "sigterm": "terminated (SIGTERM)",
    "sigkill": "killed (SIGKILL)",
}


def describe_stop(how: str) -> str:
    """What ``stop`` reports: which of the escalating steps ended the VM."""
    return _STOPPED_BY.get(how, how)
