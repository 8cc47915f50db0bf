"""Temporary: the old name of ``vmm.app.Vmm`` while the callers move over (removed before the
refactor lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmm.app import Vmm
from vmm.services.create import CreateRequest, read_public_key
from vmm.services.vms import DEFAULT_SSH_TIMEOUT, DEFAULT_STOP_TIMEOUT

if TYPE_CHECKING:
    from vmm.models import VM
    from vmm.network.firewall import FirewallSpec

__all__ = ["DEFAULT_SSH_TIMEOUT", "DEFAULT_STOP_TIMEOUT", "CreateRequest", "Manager", "read_public_key"]


class Manager(Vmm):
    def rebuild_network_rules(self) -> FirewallSpec | None:
        return self.network.rebuild_rules()

    def apply_network_rules_locked(self, *, starting: VM | None = None, always: bool = False) -> FirewallSpec | None:
        return self.network.apply_rules_locked(starting=starting, always=always)

    def vm_is_active(self, vm: VM) -> bool:
        return self.network.vm_is_active(vm)

    def _tap_from_corrupt_record(self, name: str) -> str | None:
        return self.store.salvage(name).tap

    def _teardown_network_if_unused(self) -> None:
        self.network.teardown_if_unused()
