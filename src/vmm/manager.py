"""The use cases the CLI calls: create, start, stop, delete, list.

Every command validates its input before it changes anything; a failed or interrupted start
undoes what it did (process, TAP) and leaves the VM in ``error`` with the reason, so the next
command can always finish or clean up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vmm import faults
from vmm.config import Config, expand_user_path
from vmm.engines.base import BootSpec, Drive, Engine, Nic, RunPaths
from vmm.errors import ConflictError, EngineError, NotFoundError, ValidationError, VmmError
from vmm.guest import customize, ext4
from vmm.guest.images import ImageRegistry
from vmm.guest.kernels import KernelRegistry
from vmm.host.liveness import runs_with
from vmm.host.process import GracefulStep, ProcessRef, is_alive, log_tail
from vmm.models import (
    VM,
    VMState,
    new_vm_id,
    validate_cpus,
    validate_disk,
    validate_dns_servers,
    validate_memory,
    validate_name,
)
from vmm.runner import Runner
from vmm.status import VMView, process_ref
from vmm.store import PRIVATE_FILE, Store, scratch_name, set_mode

if TYPE_CHECKING:
    from vmm.network.firewall import FirewallSpec

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_SSH_TIMEOUT = 180.0


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class CreateRequest:
    name: str
    cpus: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    ssh_key: str | None = None
    dns: list[str] | None = None
    image: str | None = None
    kernel: str | None = None
    engine: str | None = None
    accel: str | None = None
    boot_args: str | None = None
    ip: str | None = None  # a pinned address (else the lowest free one)
    autostart: bool = False
    mounts: list[str] | None = None  # --mount /host/path:tag[:ro|rw] specs


def read_public_key(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ValidationError(
            f"SSH key file {path} does not exist",
            hint="give a public key with --ssh-key (e.g. ~/.ssh/id_ed25519.pub); "
            "create one with ssh-keygen -t ed25519",
        ) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError):
        raise ValidationError(f"SSH key file {path} is not a readable text file") from None
    first = text.splitlines()[0] if text else ""
    if not re.match(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+", first):
        hint = "use the .pub file" if "PRIVATE KEY" in text else "expected a line like 'ssh-ed25519 AAAA... user@host'"
        raise ValidationError(f"{path} is not an SSH public key", hint=hint)
    return text


class Manager:
    def __init__(
        self,
        config: Config,
        *,
        runner: Runner | None = None,
        engine_factory: Callable[[str], Engine] | None = None,
    ):
        self.config = config
        self.runner = runner or Runner()
        self.store = Store(config.data_path)
        self.images = ImageRegistry(self.store, self.runner)
        self.kernels = KernelRegistry(self.store)
        self._engine_factory = engine_factory or self._default_engine

    # -- engines ------------------------------------------------------------------------

    def _default_engine(self, name: str) -> Engine:
        from vmm.engines import registry

        return registry.info(name).factory(self.config)

    def engine(self, name: str) -> Engine:
        return self._engine_factory(name)

    # -- queries ------------------------------------------------------------------------

    def view(self, vm: VM) -> VMView:
        return VMView.of(vm)

    def get(self, name: str) -> VM:
        validate_name(name)
        return self.store.load(name)

    # -- create -------------------------------------------------------------------------

    def create(self, req: CreateRequest, *, note: Callable[[str], None] = lambda _line: None) -> VM:
        """Validate everything, then allocate the name, IP and id and save the record.

        ``note`` receives what the user should know about choices made for them."""
        cfg = self.config
        vd = cfg.vm_defaults
        name = validate_name(req.name)
        cpus = validate_cpus(req.cpus if req.cpus is not None else vd.cpus)
        memory = validate_memory(req.memory_mb if req.memory_mb is not None else vd.memory_mb)
        disk = validate_disk(req.disk_mb if req.disk_mb is not None else vd.disk_size_mb)
        dns = validate_dns_servers(req.dns if req.dns else list(vd.dns_servers))
        from vmm.engines import registry

        engine_name = req.engine or cfg.engine
        engine_info = registry.info(engine_name)
        accel = req.accel or cfg.accel
        if accel not in ("auto", "kvm", "tcg"):
            raise ValidationError(f"unknown accel {accel!r}", hint="use auto, kvm or tcg")
        if not engine_info.can(registry.TCG):
            if req.accel == "tcg":
                emulating = [n for n in registry.names() if registry.info(n).can(registry.TCG)]
                raise ValidationError(
                    f"the {engine_name} engine needs KVM; --accel tcg works only with "
                    + " or ".join(f"--engine {n}" for n in emulating)
                )
            accel = "kvm"  # the config's accel is for engines that can emulate
        image = self.images.get(req.image or vd.image)
        kernel = self.kernels.get(req.kernel or vd.kernel)
        image_mb = -(-image.virtual_size // MiB)
        if disk < image_mb and req.disk_mb is None:
            # The default disk is smaller than this image: the disk is sized to fit the image
            # (only an explicit --disk below it is an error).
            note(
                f"the disk is {image_mb} MB, the size of image {image.name!r} (the default, "
                f"{disk} MB, is smaller); use --disk for more"
            )
            disk = image_mb
        if disk * MiB < image.virtual_size:
            raise ValidationError(
                f"--disk {disk} MB is smaller than image {image.name!r} "
                f"({-(-image.virtual_size // MiB)} MB)",
                hint=f"use --disk {-(-image.virtual_size // MiB)} or more",
            )
        boot_args = customize.validate_boot_args(req.boot_args or "", mounts=len(req.mounts or []))
        key_path_str = req.ssh_key or vd.ssh_key_path
        key_path = expand_user_path(key_path_str) if key_path_str else None
        public_key = read_public_key(key_path) if key_path else None
        if not self.store.socket_path_ok(name):
            raise ValidationError(
                f"the data dir {cfg.data_dir} is too deep for VM {name!r}'s socket paths",
                hint="use a shorter name or data dir (Unix socket paths are limited to 107 bytes)",
            )
        self.engine(engine_name).check_available()
        from vmm.guest import mounts as guest_mounts

        mounts = guest_mounts.parse_mounts(
            req.mounts or [], vm_name=name, mounts_dir=self.store.mounts_dir
        )

        from vmm.network import ipam

        subnet, gateway = ipam.validate_network(cfg.subnet, cfg.gateway)
        self.store.ensure_dirs()
        with self.store.global_lock():
            faults.point("create.locked")
            if self.store.exists(name):
                raise ConflictError(f"VM {name!r} already exists", hint="choose another name")
            used_ips, used_ids = self._allocations()
            self.check_network_unchanged()
            if mounts:
                guest_mounts.check_image_clash(mounts, self.store.load_all()[0])
            ip = ipam.allocate(subnet, gateway, used_ips, requested=req.ip)
            vm_id = new_vm_id()
            while vm_id in used_ids:
                vm_id = new_vm_id()
            vm = VM(
                name=name,
                id=vm_id,
                engine=engine_name,
                accel=accel,
                cpus=cpus,
                memory_mb=memory,
                disk_mb=disk,
                image=image.name,
                kernel=kernel.name,
                ssh_key_path=str(key_path) if key_path else None,
                ssh_public_key=public_key,
                dns_servers=dns,
                ip=str(ip),
                mac=ipam.mac_for(ip),
                tap=f"vmm-{vm_id}",
                boot_args=boot_args,
                autostart=req.autostart,
                mounts=mounts,
                created_at=now(),
            )
            self.store.save(vm)
            faults.point("create.saved")
        return vm

    def _allocations(self) -> tuple[set[str], set[str]]:
        """IPs and ids in use — read from corrupt records too, so they are never reused."""
        ips: set[str] = set()
        ids: set[str] = set()
        for name in self.store.names():
            try:
                text = self.store.record_path(name).read_text()
            except OSError:
                continue
            for key, bucket in (("ip", ips), ("id", ids)):
                m = re.search(rf'"{key}"\s*:\s*"([^"]+)"', text)
                if m:
                    bucket.add(m.group(1))
        return ips, ids

    # -- start --------------------------------------------------------------------------

    def start(self, name: str) -> VM:
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("start.locked")
            vm = self.store.load(name)
            ref = process_ref(vm)
            engine = self.engine(vm.engine)
            paths = self.store.run_paths(name)
            if is_alive(ref):
                assert ref is not None
                if vm.state != VMState.STARTING.value:
                    raise ConflictError(f"VM {name!r} is already running", hint=f"its IP is {vm.ip}")
                # "starting" with a live process while we hold the VM lock: the start that
                # launched it was killed before it finished. Finish the cleanup it could not do.
                log.warning("VM %s: stopping the process of an interrupted start (pid %d)", name, ref.pid)
                if self.owns_process(ref, paths):
                    engine.kill(ref, paths)
            engine.check_available()
            kernel = self.kernels.get(vm.kernel)
            self.store.ensure_dirs()  # also brings an older data dir's modes up to date
            engine.cleanup(paths)  # a crashed previous run may have left sockets behind
            accel = self._resolve_accel(vm)

            vm.state = VMState.STARTING.value
            vm.last_error = None
            vm.pid = vm.pid_start_time = vm.pid_boot_id = None
            self.store.save(vm)
            launched: ProcessRef | None = None

            from vmm.engines import registry

            def record_spawn(spawned: ProcessRef) -> None:
                # Saved before the engine waits or configures: a start killed from here on
                # leaves a record naming the process, and the next command stops it.
                vm.pid, vm.pid_start_time, vm.pid_boot_id = (
                    spawned.pid, spawned.start_time, spawned.boot_id
                )
                self.store.save(vm)
                faults.point("start.spawned")

            try:
                faults.point("start.saved-starting")
                self._prepare_rootfs(vm)
                faults.point("start.rootfs-ready")
                self._prepare_mounts(vm)
                self._ensure_network(vm)
                faults.point("start.network-ready")
                spec = self._boot_spec(vm, kernel.path, kernel.initrd, paths, accel)
                launched = engine.launch(spec, on_spawn=record_spawn)
                faults.point("start.launched")
                for sock in (paths.api_socket, paths.console_socket):
                    set_mode(sock, PRIVATE_FILE)  # in a 0700 directory already; root's alone
                vm.pid, vm.pid_start_time, vm.pid_boot_id = (
                    launched.pid, launched.start_time, launched.boot_id
                )
                vm.state = VMState.RUNNING.value
                vm.accel_in_use = registry.accel_in_use(vm.engine, accel)
                vm.started_at = now()
                self.store.save(vm)
                return vm
            except BaseException as exc:
                self._undo_start(vm, engine, launched, paths, exc)
                raise

    def owns_process(self, ref: ProcessRef, paths: RunPaths) -> bool:
        """The live process ``ref`` is this VM's hypervisor (its socket path is on its command
        line): checked before any signal, so a recycled pid is never signalled."""
        if runs_with(ref, str(paths.api_socket)):
            return True
        log.warning("pid %d is not this VM's hypervisor (no %s in its command line): left alone",
                    ref.pid, paths.api_socket)
        return False

    def _undo_start(
        self, vm: VM, engine: Engine, launched: ProcessRef | None, paths: RunPaths, exc: BaseException
    ) -> None:
        with contextlib.suppress(Exception):
            if launched is not None:
                engine.kill(launched, paths)
            elif vm.pid is not None and vm.pid_start_time is not None:  # spawned, not launched
                spawned = ProcessRef(vm.pid, vm.pid_start_time, vm.pid_boot_id)
                if is_alive(spawned) and self.owns_process(spawned, paths):
                    engine.kill(spawned, paths)
        with contextlib.suppress(Exception):
            engine.cleanup(paths)
        with contextlib.suppress(Exception):
            self._delete_tap(vm)
        vm.state = VMState.ERROR.value
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        vm.last_error = str(exc) or type(exc).__name__
        with contextlib.suppress(Exception):
            self.store.save(vm)
        with contextlib.suppress(Exception):
            self.rebuild_network_rules()  # withdraw this VM's port forwards again
        if isinstance(exc, VmmError) and not exc.details:
            console = log_tail(paths.console_log)
            if console:
                exc.details = "console log (last lines):\n" + console

    def _resolve_accel(self, vm: VM) -> str:
        from vmm.engines import registry

        if not registry.info(vm.engine).can(registry.TCG):
            return "kvm"
        from vmm.engines.qemu.accel import resolve_accel

        accel, _reason = resolve_accel(vm.accel)
        return accel

    def _prepare_rootfs(self, vm: VM) -> None:
        """First start: copy the image and grow it; every start: vmm's network file."""
        rootfs = self.store.rootfs_path(vm.name)
        vm_dir = self.store.ensure_vm_dir(vm.name)
        if not vm.rootfs_ready or not rootfs.exists():
            image = self.images.get(vm.image)
            tmp = vm_dir / scratch_name("rootfs.ext4")
            try:
                ext4.copy_sparse(self.runner, image.path, tmp)
                ext4.grow(self.runner, tmp, vm.disk_mb)
                from vmm.host import ssh

                _key, power_public = ssh.power_key(self.runner, self.store.root)
                ext4.write_files(
                    self.runner,
                    tmp,
                    customize.first_boot_files(
                        hostname=vm.name,
                        ssh_public_key=vm.ssh_public_key,
                        dns=vm.dns_servers,
                        power_key=ssh.power_key_line(power_public),
                    ),
                )
                ext4.set_dir_mode(self.runner, tmp, "/root/.ssh", 0o700)
                os.chmod(tmp, PRIVATE_FILE)
                os.replace(tmp, rootfs)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            vm.rootfs_ready = True
            self.store.save(vm)
        else:
            set_mode(rootfs, PRIVATE_FILE)  # a disk made by an older vmm was 0644
        if ext4.make_consistent(self.runner, rootfs, what=f"the disk of VM {vm.name!r}"):
            # The guest stopped uncleanly (killed, SIGTERM, host crash): its journal is replayed
            # before vmm's edits below, never after them.
            log.warning("note: VM %s was not shut down cleanly: its disk's journal was replayed", vm.name)
        networkd = next(
            (
                p
                for p in ("/usr/lib/systemd/system/systemd-networkd.service", customize.NETWORKD_UNIT)
                if ext4.path_exists(self.runner, rootfs, p)
            ),
            None,
        )
        files = customize.every_boot_files(
            mac=vm.mac,
            ip=vm.ip,
            subnet=self.config.subnet,
            gateway=self.config.gateway,
            dns=vm.dns_servers,
            networkd_present=networkd is not None,
        )
        ext4.write_files(self.runner, rootfs, files)
        if vm.mounts:
            from vmm.guest import mounts as guest_mounts

            guest_mounts.write_fstab(self.runner, rootfs, vm.mounts)

    def _prepare_mounts(self, vm: VM) -> None:
        """Build the mount images from the host directories (never over the guest's changes)."""
        if not vm.mounts:
            return
        from vmm.guest import mounts as guest_mounts

        self.store.mounts_dir.mkdir(parents=True, exist_ok=True)
        for note in guest_mounts.MountImages(self.store, self.runner).prepare(vm):
            log.warning("note: %s", note)
        self.store.save(vm)

    def _ensure_network(self, vm: VM) -> None:
        from vmm.network import coexist, ipam, links, sysctl

        subnet, gateway = ipam.validate_network(self.config.subnet, self.config.gateway)
        with self.store.global_lock():
            self.check_network_unchanged()
            links.ensure_bridge(self.runner, self.config.bridge_name, gateway, subnet.prefixlen)
            sysctl.enable_ip_forward()
            self.apply_network_rules_locked(starting=vm, always=True)
            coexist.ensure_forward_allowed(self.runner, self.config.bridge_name)
            # hairpin: with br_netfilter loaded, a guest reaching its own forward through the
            # host is DNAT'd back out of the port it came in on (tested in test_portforward)
            links.ensure_tap(
                self.runner, vm.tap, self.config.bridge_name, hairpin=bool(vm.port_forwards)
            )

    def _firewall_spec(self, starting: VM | None = None) -> FirewallSpec:
        """The ruleset as the records say: NAT, plus the forwards of running VMs (and of
        ``starting``, whose process does not exist yet). A forward that cannot be applied (an
        address outside the subnet, a clash from a hand-edited record) is logged and left out,
        so one bad record never blocks stop or delete of the others."""
        from vmm import portforward
        from vmm.network import firewall, ipam

        subnet, _ = ipam.validate_network(self.config.subnet, self.config.gateway)
        forwards: list[firewall.PortForward] = []
        vms, _problems = self.store.load_all()
        for vm in sorted(vms, key=lambda v: v.name):
            if starting is not None and vm.name == starting.name:
                vm = starting
            elif not vm.port_forwards or not self.vm_is_active(vm):
                continue
            for fwd in vm.port_forwards:
                try:
                    rule = portforward.to_firewall(fwd, vm.ip)
                except (ValueError, VmmError) as exc:
                    log.warning("VM %s: port forward %s left out: %s", vm.name, fwd.key, exc)
                    continue
                clash = next((f for f in forwards if f.clashes_with(rule)), None)
                if rule.guest_ip not in subnet or clash is not None:
                    why = f"clashes with {clash}" if clash else f"{vm.ip} is outside {subnet}"
                    log.warning("VM %s: port forward %s left out: %s", vm.name, fwd.key, why)
                    continue
                forwards.append(rule)
        return firewall.FirewallSpec(
            bridge=self.config.bridge_name, subnet=subnet, forwards=tuple(forwards)
        )

    def _teardown_network_if_unused(self) -> None:
        """With no VM left, remove what vmm added to the host: its nft table and the bridge."""
        from vmm.network import firewall, links

        bridge = self.config.bridge_name
        with self.store.global_lock():
            if self.store.names():
                return
            link = links.get_link(self.runner, bridge)
            if link is not None:
                if not link.is_bridge or any(lk.master == bridge for lk in links.list_links(self.runner)):
                    from vmm.network import sysctl

                    sysctl.disable_route_localnet(bridge)  # no forward needs it any more
                    return  # something else still uses it: leave the host as it is
                links.delete_bridge(self.runner, bridge)
            if firewall.table_exists(self.runner):
                firewall.remove(self.runner)
            from vmm.network import coexist

            coexist.remove_docker_user_rules(self.runner, bridge)

    def _delete_tap(self, vm: VM) -> None:
        from vmm.network import links

        if vm.tap:
            links.delete_tap(self.runner, vm.tap)

    def _boot_spec(
        self, vm: VM, kernel: Path, initrd: Path | None, paths: RunPaths, accel: str
    ) -> BootSpec:
        cmdline = customize.kernel_cmdline(
            ip=vm.ip,
            gateway=self.config.gateway,
            subnet=self.config.subnet,
            hostname=vm.name,
            dns=vm.dns_servers,
            extra=vm.boot_args,
        )
        drives = [Drive("rootfs", self.store.rootfs_path(vm.name), read_only=False, root=True)]
        if vm.mounts:
            from vmm.guest import mounts as guest_mounts

            drives += guest_mounts.drives(vm.mounts)
        return BootSpec(
            vm_id=f"vmm-{vm.id}",
            name=vm.name,
            kernel=kernel,
            initrd=initrd,
            cmdline=cmdline,
            cpus=vm.cpus,
            memory_mb=vm.memory_mb,
            paths=paths,
            drives=tuple(drives),
            nics=(Nic("eth0", vm.tap, vm.mac),),
            accel=accel,
        )

    def wait_ready(self, vm: VM, timeout: float = DEFAULT_SSH_TIMEOUT) -> float:
        """Wait until the guest's sshd sends its banner; returns the seconds waited."""
        t0 = time.monotonic()
        ref = process_ref(vm)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if not is_alive(ref):
                paths = self.store.run_paths(vm.name)
                raise EngineError(
                    f"VM {vm.name!r} exited while booting",
                    details="console log (last lines):\n" + log_tail(paths.console_log),
                    hint=f"see the whole console log with: cat {paths.console_log}",
                )
            if ssh_banner(vm.ip):
                return time.monotonic() - t0
            time.sleep(0.5)
        paths = self.store.run_paths(vm.name)
        raise EngineError(
            f"VM {vm.name!r} is running but SSH on {vm.ip} did not answer within {timeout:.0f} s",
            details="console log (last lines):\n" + log_tail(paths.console_log),
            hint=f"it may still be booting: try 'vmm ssh {vm.name}' later, or see {paths.console_log}",
        )

    # -- stop ---------------------------------------------------------------------------

    def stop(self, name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> str:
        """Stop a VM; returns how it ended ("graceful", "sigterm", "sigkill", "not-running")."""
        validate_name(name)
        with self.store.vm_lock(name):
            faults.point("stop.locked")
            return self._stop_locked(self.store.load(name), timeout)

    def _stop_locked(self, vm: VM, timeout: float) -> str:
        ref = process_ref(vm)
        engine = self.engine(vm.engine)
        paths = self.store.run_paths(vm.name)
        how = "not-running"
        if is_alive(ref):
            assert ref is not None
            if self.owns_process(ref, paths):
                vm.state = VMState.STOPPING.value
                self.store.save(vm)
                faults.point("stop.stopping")
                how = engine.stop(
                    ref, paths, timeout=timeout, guest_steps=self._guest_stop_steps(vm, engine)
                ).how
                faults.point("stop.stopped")
        with contextlib.suppress(Exception):
            engine.cleanup(paths)
        self._delete_tap(vm)
        if vm.state != VMState.CREATED.value or how != "not-running":
            vm.state = VMState.STOPPED.value
            vm.stopped_at = now() if how != "not-running" else vm.stopped_at
        vm.pid = vm.pid_start_time = vm.pid_boot_id = None
        self.store.save(vm)
        if vm.port_forwards:
            self.rebuild_network_rules()  # withdraw this VM's forwards
        return how

    def _guest_stop_steps(self, vm: VM, engine: Engine) -> list[GracefulStep]:
        """``poweroff`` (or ``reboot``, per engine) over SSH with vmm's own key, when the VM
        has it (VMs whose disk was made by an older vmm do not)."""
        from vmm.host import ssh

        key = self.store.root / "ssh" / ssh.POWER_KEY_NAME
        if not key.is_file():
            return []
        command = engine.guest_stop_command

        def over_ssh() -> bool:
            argv = ssh.power_argv(ip=vm.ip, key=key, command=command)
            result = self.runner.run(argv, check=False, timeout=20)
            # 255 is ssh's own failure (refused, denied, timed out) unless the guest closed
            # the connection because it is going down.
            return result.returncode != 255 or "closed by remote host" in result.stderr

        return [(f"ssh-{command}", over_ssh)]

    # -- delete -------------------------------------------------------------------------

    def delete(self, name: str, *, force: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Delete a VM and everything vmm made for it.

        Liveness is checked inside the VM's lock: a ``start`` that is under way finishes first,
        and then counts (a VM found running is refused without ``force``)."""
        validate_name(name)
        if not self.store.exists(name):
            raise NotFoundError(
                f"VM {name!r} does not exist", hint="see 'vmm list -a' for the VMs there are"
            )
        with self.store.vm_lock(name):
            faults.point("delete.locked")
            if not self.store.exists(name):  # deleted by another command while we waited
                raise NotFoundError(f"VM {name!r} does not exist")
            try:
                vm: VM | None = self.store.load(name)
            except VmmError:
                if not force:
                    raise
                vm = None  # corrupt record: -f removes what can be found by name
            if vm is not None and is_alive(process_ref(vm)):
                if not force:
                    raise ConflictError(
                        f"VM {name!r} is running",
                        hint=f"stop it first ('vmm stop {name}') or use 'vmm delete -f {name}'",
                    )
                self._stop_locked(vm, timeout)
            if vm is not None:
                self._delete_tap(vm)
                with contextlib.suppress(Exception):
                    self.engine(vm.engine).cleanup(self.store.run_paths(name))
            else:
                tap = self._tap_from_corrupt_record(name)
                if tap:
                    from vmm.network import links

                    with contextlib.suppress(Exception):
                        links.delete_tap(self.runner, tap)
            faults.point("delete.stopped")
            paths = self.store.run_paths(name)
            shutil.rmtree(self.store.vm_dir(name), ignore_errors=True)
            self._remove_mount_images(name, vm)
            for p in (paths.console_log, paths.api_socket, paths.console_socket):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            faults.point("delete.files-removed")
            with self.store.global_lock():
                self.store.remove_record(name)
            faults.point("delete.record-removed")
        # The lock file stays: unlinking it while another command waits on it would let a
        # third one lock a new file of the same name, and two commands would hold "the" lock.
        self.rebuild_network_rules()  # no rules for VMs that no longer exist
        self._teardown_network_if_unused()

    def _remove_mount_images(self, name: str, vm: VM | None) -> None:
        from vmm.guest import mounts as guest_mounts

        if vm is not None:
            paths = [m.image_path for m in vm.mounts if m.image_path]
        else:  # a corrupt record: the paths it names
            try:
                paths = guest_mounts.image_paths_in_text(self.store.record_path(name).read_text())
            except OSError:
                paths = []
        for p in paths:
            guest_mounts.remove_image(self.store, Path(p))

    def _tap_from_corrupt_record(self, name: str) -> str | None:
        try:
            text = self.store.record_path(name).read_text()
        except OSError:
            return None
        m = re.search(r'"tap"\s*:\s*"(vmm-[0-9a-f]{8})"', text) or re.search(
            r'"id"\s*:\s*"([0-9a-f]{8})"', text
        )
        if not m:
            return None
        value = m.group(1)
        return value if value.startswith("vmm-") else f"vmm-{value}"

    # -- network rules from the records (port forwards; issue 4) ----------------------------

    def vm_is_active(self, vm: VM) -> bool:
        """Its forwards apply: the VM runs, or a ``vmm start`` of it is under way right now
        (state ``starting`` while its start holds the VM lock: the process does not exist yet)."""
        if is_alive(process_ref(vm)):
            return True
        return vm.state == VMState.STARTING.value and self.store.is_locked(vm.name)

    def apply_network_rules_locked(
        self, *, starting: VM | None = None, always: bool = False
    ) -> FirewallSpec | None:
        """Replace vmm's nft table with what the records say; the caller holds the global lock.

        Without ``always`` nothing happens when the table does not exist: a host where vmm's
        network was never set up (or was torn down) is left alone.
        """
        from vmm.network import firewall, links, sysctl

        if not always and not firewall.table_exists(self.runner):
            return None
        spec = self._firewall_spec(starting)
        bridge = self.config.bridge_name
        # The table (with its guard against guest packets to 127/8) goes in first; only then
        # may route_localnet open the bridge for forwards from the host's own localhost — and
        # it is closed again as soon as no forward needs it.
        firewall.apply(self.runner, spec)
        if links.link_exists(self.runner, bridge):
            sysctl.set_route_localnet(bridge, firewall.needs_route_localnet(spec))
        return spec

    def rebuild_network_rules(self) -> FirewallSpec | None:
        """``apply_network_rules_locked`` under the global lock (when the table exists)."""
        with self.store.global_lock():
            return self.apply_network_rules_locked()

    def check_network_unchanged(self) -> None:
        """Refuse to go on when VM records do not fit the configured subnet and gateway: the
        config's ``subnet``/``gateway`` was changed while VMs exist."""
        from vmm.network import ipam

        subnet, gateway = ipam.validate_network(self.config.subnet, self.config.gateway)
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


def ssh_banner(ip: str, port: int = 22, timeout: float = 2.0) -> bool:
    """True when something at ip:port answers with an SSH identification line."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False
