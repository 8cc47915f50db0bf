"""The host network as the VM records imply it: vmm's bridge, each running VM's TAP, and one nft
table (NAT plus the port forwards of running VMs), rebuilt from the records — never edited rule by
rule — under the store's global lock.
"""

from __future__ import annotations

from vmm.errors import ConflictError, VmmError
from vmm.host.liveness import is_alive
from vmm.log import get_logger
from vmm.models import VM, VMState
from vmm.status import process_ref

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.network.firewall import FirewallSpec
    from vmm.runner import Runner
    from vmm.store import Store

log = get_logger(__name__)



class HostNetwork:
    def __init__(self, config: Config, store: Store, runner: Runner):
        self.config = config
        self.store = store
        self.runner = runner

    # -- per VM ---------------------------------------------------------------------------

    def ensure_for(self, vm: VM) -> None:
        """Bridge, forwarding, the ruleset with ``vm``'s forwards, and ``vm``'s TAP."""
        from vmm.network import coexist, ipam, links, sysctl

        subnet, gateway = ipam.validate_network(self.config.subnet, self.config.gateway)
        with self.store.global_lock():
            vms, _problems = self.store.load_all()  # read once for the whole section
            self.check_unchanged(vms)
            bridge = self.config.bridge_name
            # The host's devices, read once and passed along (valid under the global lock)
            devices = links.ensure_bridge(self.runner, bridge, gateway, subnet.prefixlen)
            sysctl.enable_ip_forward()
            self.apply_rules_locked(starting=vm, always=True, vms=vms, bridge_present=True)
            coexist.ensure_forward_allowed(self.runner, bridge)
            # hairpin: with br_netfilter loaded, a guest reaching its own forward through the
            # host is DNAT'd back out of the port it came in on (tested in test_portforward)
            links.ensure_tap(
                self.runner, vm.tap, bridge, hairpin=bool(vm.port_forwards), devices=devices
            )

    def delete_tap(self, tap: str | None) -> None:
        from vmm.network import links

        if tap:
            links.delete_tap(self.runner, tap)

    def set_hairpin(self, tap: str, on: bool) -> None:
        from vmm.network import links

        links.set_hairpin(self.runner, tap, on)

    def vm_is_active(self, vm: VM) -> bool:
        """Its forwards apply: the VM runs, or a ``vmm start`` of it is under way right now
        (state ``starting`` while its start holds the VM lock: the process does not exist yet)."""
        if is_alive(process_ref(vm)):
            return True
        return vm.state == VMState.STARTING and self.store.is_locked(vm.name)

    # -- the ruleset from the records -------------------------------------------------------

    def firewall_spec(self, starting: VM | None = None, vms: list[VM] | None = None) -> FirewallSpec:
        """The ruleset as the records say: NAT, plus the forwards of running VMs (and of
        ``starting``, whose process does not exist yet). A forward that cannot be applied (an
        address outside the subnet, a clash from a hand-edited record) is logged and left out,
        so one bad record never blocks stop or delete of the others."""
        from vmm.network import firewall, forwards, ipam

        subnet, _ = ipam.validate_network(self.config.subnet, self.config.gateway)
        rules: list[firewall.PortForward] = []
        if vms is None:
            vms, _problems = self.store.load_all()
        for vm in sorted(vms, key=lambda v: v.name):
            if starting is not None and vm.name == starting.name:
                vm = starting
            elif not vm.port_forwards or not self.vm_is_active(vm):
                continue
            for fwd in vm.port_forwards:
                try:
                    rule = forwards.to_firewall(fwd, vm.ip)
                except (ValueError, VmmError) as exc:
                    log.warning("VM %s: port forward %s left out: %s", vm.name, fwd.key, exc)
                    continue
                clash = next((f for f in rules if f.clashes_with(rule)), None)
                if rule.guest_ip not in subnet or clash is not None:
                    why = f"clashes with {clash}" if clash else f"{vm.ip} is outside {subnet}"
                    log.warning("VM %s: port forward %s left out: %s", vm.name, fwd.key, why)
                    continue
                rules.append(rule)
        return firewall.FirewallSpec(
            bridge=self.config.bridge_name, subnet=subnet, forwards=tuple(rules)
        )

    def apply_rules_locked(
        self,
        *,
        starting: VM | None = None,
        always: bool = False,
        vms: list[VM] | None = None,
        bridge_present: bool | None = None,
    ) -> FirewallSpec | None:
        """Replace vmm's nft table with what the records say; the caller holds the global lock.

        Without ``always`` nothing happens when the table does not exist: a host where vmm's
        network was never set up (or was torn down) is left alone. ``vms``: the records, when
        the caller has just read them under the same lock; ``bridge_present``: when the caller
        knows (else ``ip`` is asked).
        """
        from vmm.network import firewall, links, sysctl

        if not always and not firewall.table_exists(self.runner):
            return None
        spec = self.firewall_spec(starting, vms)
        bridge = self.config.bridge_name
        # The table (with its guard against guest packets to 127/8) goes in first; only then
        # may route_localnet open the bridge for forwards from the host's own localhost — and
        # it is closed again as soon as no forward needs it.
        firewall.apply(self.runner, spec)
        if bridge_present is None:
            bridge_present = links.link_exists(self.runner, bridge)
        if bridge_present:
            sysctl.set_route_localnet(bridge, firewall.needs_route_localnet(spec))
        return spec

    def rebuild_rules(self) -> FirewallSpec | None:
        """``apply_rules_locked`` under the global lock (when the table exists)."""
        with self.store.global_lock():
            return self.apply_rules_locked()

    def check_unchanged(self, vms: list[VM] | None = None) -> None:
        """Refuse to go on when VM records do not fit the configured subnet and gateway: the
        config's ``subnet``/``gateway`` was changed while VMs exist."""
        from vmm.network import ipam

        subnet, gateway = ipam.validate_network(self.config.subnet, self.config.gateway)
        if vms is None:
            vms, _problems = self.store.load_all()
        bad = []
        for vm in vms:
            try:
                ip = ipam.parse_address(vm.ip)
            except VmmError:
                continue
            if ip not in subnet or ip in ipam.reserved_addresses(subnet, gateway):
                bad.append(f"{vm.name} ({vm.ip})")
        if bad:
            raise ConflictError(
                f"the configured subnet {subnet} (gateway {gateway}) does not fit existing VMs: "
                + ", ".join(bad),
                hint=f"subnet and gateway cannot change while VMs exist: restore the old values in "
                f"{self.config.path}, or delete those VMs first (vmm delete NAME)",
            )

    # -- what no VM uses --------------------------------------------------------------------

    def stale_taps(self) -> list[str]:
        """vmm's TAPs that no running (or starting/stopping) VM uses: orphans and those of
        stopped VMs (``links.unused_taps``). A corrupt record's TAP is kept, to be safe."""
        from vmm.network import links

        vms, problems = self.store.load_all()
        readable, salvaged = self.store.tap_names(vms, problems)
        keep = salvaged | {
            vm.tap for vm in vms if self.vm_is_active(vm) or self.store.is_locked(vm.name)
        }
        orphans, idle = links.unused_taps(
            links.list_links(self.runner, "vmm-"), named=readable, active=keep
        )
        return sorted(orphans + idle)

    def teardown_if_unused(self) -> None:
        """With no VM left, remove what vmm added to the host: its nft table and the bridge."""
        from vmm.network import firewall, links

        bridge = self.config.bridge_name
        with self.store.global_lock():
            if self.store.names():
                return
            present = links.list_links(self.runner)
            link = next((lk for lk in present if lk.name == bridge), None)
            if link is not None:
                if not link.is_bridge or any(lk.master == bridge for lk in present):
                    from vmm.network import sysctl

                    sysctl.disable_route_localnet(bridge)  # no forward needs it any more
                    return  # something else still uses it: leave the host as it is
                links.delete_bridge(self.runner, bridge)
            if firewall.table_exists(self.runner):
                firewall.remove(self.runner)
            from vmm.network import coexist

            coexist.remove_docker_user_rules(self.runner, bridge)
