"""``vmm port-forward``: add, remove and list the forwards stored in the VM records.

A forward is checked against every stored forward (the one clash rule of
``vmm.network.forwards``) and against the host's own sockets (``vmm.host.listeners``) before it
is saved; the ruleset is then rebuilt from the records by ``HostNetwork`` when the VM runs.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from vmm import faults
from vmm.errors import ConflictError, ValidationError, VmmError
from vmm.models import VM, PortForward, validate_name
from vmm.network.firewall import clashes
from vmm.network.forwards import ForwardView, describe, find, parse_spec

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from vmm.runner import Runner
    from vmm.services.network import HostNetwork
    from vmm.store import Store


class ForwardService:
    def __init__(self, store: Store, runner: Runner, network: HostNetwork):
        self.store = store
        self.runner = runner
        self.network = network

    def add(self, name: str, spec: str) -> ForwardView:
        """Store a forward in the VM's record; applied at once when the VM runs."""
        validate_name(name)
        fwd = parse_spec(spec)
        with self.store.vm_lock(name), self.store.global_lock():
            vm = self.store.load(name)
            self._check_host_addr(fwd)
            self._check_free(vm, fwd)
            vm.port_forwards.append(fwd)
            self.store.save(vm)
            faults.point("port-forward-add.saved")
            active = self.network.vm_is_active(vm)
            if active:
                try:
                    self.network.apply_rules_locked(always=True)
                    self.network.set_hairpin(vm.tap, True)
                except BaseException:
                    vm.port_forwards.remove(fwd)
                    self.store.save(vm)
                    self.network.apply_rules_locked()
                    raise
        return ForwardView(vm.name, vm.ip, fwd, active)

    def remove(self, name: str, key: str) -> ForwardView:
        """Delete a forward from the VM's record and withdraw its rule."""
        validate_name(name)
        with self.store.vm_lock(name), self.store.global_lock():
            vm = self.store.load(name)
            fwd = find(vm.port_forwards, key)
            vm.port_forwards.remove(fwd)
            self.store.save(vm)
            faults.point("port-forward-remove.saved")
            active = self.network.vm_is_active(vm)
            self.network.apply_rules_locked()
            if active and not vm.port_forwards:  # hairpin only while a forward needs it
                import contextlib

                with contextlib.suppress(VmmError):
                    self.network.set_hairpin(vm.tap, False)
        return ForwardView(vm.name, vm.ip, fwd, active)

    def list(self, name: str | None = None) -> list[ForwardView]:
        """Every stored forward (of one VM, or of all), with whether it is in effect."""
        if name is not None:
            validate_name(name)
            vms = [self.store.load(name)]
        else:
            vms, _problems = self.store.load_all()
        out: list[ForwardView] = []
        for vm in vms:
            active = self.network.vm_is_active(vm) if vm.port_forwards else False
            out.extend(ForwardView(vm.name, vm.ip, f, active) for f in vm.port_forwards)
        return sorted(out, key=lambda v: (v.forward.host_port, v.forward.proto, v.vm))

    def _check_host_addr(self, fwd: PortForward) -> None:
        if fwd.host_addr is None or IPv4Address(fwd.host_addr).is_loopback:
            return
        from vmm.network import links

        local = {str(a.ip) for addrs in links.list_addresses(self.runner).values() for a in addrs}
        if fwd.host_addr not in local:
            raise ValidationError(
                f"{fwd.host_addr} is not an address of this host",
                hint="use one of the host's addresses, 127.0.0.1, or no address (all of them)",
            )

    def _check_free(self, vm: VM, fwd: PortForward) -> None:
        """Refuse a forward that clashes with a stored one (any VM) or with a host socket."""
        from vmm.host import listeners

        vms, _problems = self.store.load_all()
        for other in vms:
            for existing in other.port_forwards:
                if clashes(fwd, existing):
                    where = "this VM" if other.name == vm.name else f"VM {other.name!r}"
                    raise ConflictError(
                        f"host port {fwd.key} is already forwarded by {where} "
                        f"({describe(existing, other.ip)})",
                        hint=f"choose another host port, or remove it: vmm port-forward remove {other.name} {existing.key}",
                    )
        sock = listeners.conflicting_listener(fwd, listeners.listeners())
        if sock is not None:
            owner = listeners.socket_owner(sock.inode) or "another process"
            raise ConflictError(
                f"host port {fwd.host_port}/{fwd.proto} is in use: {owner} listens on {sock.addr}:{sock.port}",
                hint="choose another host port, or stop that program"
                + ("" if fwd.host_addr else " (or forward from one address, e.g. 127.0.0.1:PORT:GUEST)"),
            )
