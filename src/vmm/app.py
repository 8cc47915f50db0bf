"""The composition root — and vmm's Python API.

``Vmm`` builds every service once, from a ``Config`` and a ``Runner``, and hands each its
collaborators; the CLI (and the web API) call only these services. It is also what a Python
user scripts VMs with::

    from vmm import Vmm

    vmm = Vmm()                                  # the same config files as the CLI
    vmm.create("dev", image="default", memory_mb=1024)
    vmm.start("dev")                             # waits until SSH answers
    print(vmm.exec("dev", ["uname", "-r"]).stdout)
    vmm.stop("dev")
    vmm.delete("dev")

Every method validates like the CLI does and raises the same ``vmm.errors.VmmError`` subclasses
(whose ``brief``, ``hint`` and ``exit_code`` are what the CLI prints and returns). Most of them
need root, as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vmm.config import Config, load_config
from vmm.runner import Result, Runner
from vmm.store import Store

TYPE_CHECKING = False  # typing costs a start ~2 ms; mypy still sees these
if TYPE_CHECKING:
    from pathlib import Path

    from vmm.engines.base import Engine
    from vmm.models import VM
    from vmm.network.forwards import ForwardView
    from vmm.services.clones import CloneService
    from vmm.services.snapshots import SnapshotService
    from vmm.status import StopOutcome, VMView

__all__ = ["Vmm"]


class Vmm:
    """Every vmm service, wired together. Engines are built once per name and kept."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        runner: Runner | None = None,
        engines: Callable[[str], Engine] | None = None,
    ):
        from vmm.guest.images import ImageRegistry
        from vmm.guest.kernels import KernelRegistry
        from vmm.guest.rootfs import RootDisks
        from vmm.services.forwards import ForwardService
        from vmm.services.network import HostNetwork
        from vmm.services.vms import VmService

        self.config = config if config is not None else load_config()
        self.runner = runner or Runner()
        self.store = Store(self.config.data_path)
        self._engines: dict[str, Engine] = {}
        self._engine_factory = engines or self._build_engine
        self.images = ImageRegistry(self.store, self.runner)
        self.kernels = KernelRegistry(self.store)
        self.network = HostNetwork(self.config, self.store, self.runner)
        self.disks = RootDisks(self.config, self.store, self.runner, self.images)
        self.vms = VmService(
            self.config,
            self.store,
            self.runner,
            images=self.images,
            kernels=self.kernels,
            engines=self.engine,
            network=self.network,
            disks=self.disks,
        )
        self.forwards = ForwardService(self.store, self.runner, self.network)
        self._snapshots: SnapshotService | None = None
        self.vms.on_start = self._on_start

    # -- snapshots (built on first use: a plain start never imports them) -----------------

    @property
    def snapshots(self) -> SnapshotService:
        """Suspend/resume and named snapshots (``vmm.services.snapshots``)."""
        if self._snapshots is None:
            from vmm.services.snapshots import SnapshotService

            self._snapshots = SnapshotService(self.vms)
        return self._snapshots

    @property
    def clones(self) -> CloneService:
        """``vmm clone`` and ``vmm image snapshot`` (``vmm.services.clones``)."""
        from vmm.services.clones import CloneService

        return CloneService(self.vms)

    def _on_start(self, vm: VM) -> VM | None:
        """``VmService.start``'s hook: a suspended VM resumes; one stat when there is no
        saved state."""
        if vm.state != "suspended" and not self.store.suspend_dir(vm.name).exists():
            return None
        return self.snapshots.on_start(vm)

    def suspend(self, name: str) -> VM:
        """``vmm suspend``: memory and devices to disk, the process ends; ``start`` resumes."""
        return self.snapshots.suspend(name)

    # -- engines ------------------------------------------------------------------------

    def _build_engine(self, name: str) -> Engine:
        from vmm.engines import registry

        return registry.info(name).build(self.config)

    def engine(self, name: str) -> Engine:
        """The engine called ``name`` (see ``vmm.engines.registry``), built on first use."""
        if name not in self._engines:
            self._engines[name] = self._engine_factory(name)
        return self._engines[name]

    # -- the Python API: the VM lifecycle in a few calls ---------------------------------

    def create(
        self,
        name: str,
        *,
        image: str | None = None,
        kernel: str | None = None,
        cpus: int | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        ssh_key: str | None = None,
        dns: Sequence[str] | None = None,
        engine: str | None = None,
        accel: str | None = None,
        boot_args: str | None = None,
        ip: str | None = None,
        autostart: bool = False,
        mounts: Sequence[str] = (),
        note: Callable[[str], None] = lambda _line: None,
    ) -> VM:
        """``vmm create``: ``None`` takes the config's default; ``mounts`` are
        ``/host/path:tag[:ro|rw]`` specs; ``note`` receives choices made for you."""
        from vmm.services.create import CreateRequest

        request = CreateRequest(
            name=name, cpus=cpus, memory_mb=memory_mb, disk_mb=disk_mb, ssh_key=ssh_key,
            dns=list(dns) if dns else None, image=image, kernel=kernel, engine=engine,
            accel=accel, boot_args=boot_args, ip=ip, autostart=autostart,
            mounts=list(mounts) or None,
        )  # fmt: skip
        return self.vms.create(request, note=note)

    def start(self, name: str, *, wait: bool = True, timeout: float = 180.0) -> VM:
        """``vmm start``: boot the VM; with ``wait``, return once its SSH server answers."""
        vm = self.vms.start(name)
        if wait:
            self.vms.wait_ready(vm, timeout=timeout)
        return vm

    def stop(self, name: str, *, timeout: float = 30.0) -> StopOutcome:
        """``vmm stop``: which step ended it (power button ... SIGKILL, or not running)."""
        return self.vms.stop(name, timeout=timeout)

    def delete(self, name: str, *, force: bool = False) -> None:
        """``vmm delete``: refuses a running VM unless ``force``."""
        self.vms.delete(name, force=force)

    def get(self, name: str) -> VM:
        """The VM's record (a ``NotFoundError`` when there is none)."""
        return self.vms.get(name)

    def view(self, vm: VM) -> VMView:
        from vmm.status import VMView

        return VMView.of(vm)

    def list(self) -> list[VMView]:
        """Every VM with its live state, by name (unreadable records are left out)."""
        from vmm.status import VMView

        vms, _problems = self.store.load_all()
        return [VMView.of(vm) for vm in sorted(vms, key=lambda v: v.name)]

    def exec(
        self,
        name: str,
        command: Sequence[str],
        *,
        user: str = "root",
        timeout: float = 120.0,
        check: bool = False,
        input: str | None = None,
    ) -> Result:
        """Run ``command`` in the running VM over SSH (its key: the private half of the VM's
        ``ssh_key``, else your usual keys); ``returncode``, ``stdout``, ``stderr`` captured.
        With ``check`` a non-zero exit raises ``CommandError``."""
        from vmm.errors import ConflictError, ValidationError
        from vmm.host import ssh

        vm = self.get(name)
        if not self.view(vm).alive:
            raise ConflictError(f"VM {vm.name!r} is not running", hint=f"start it with 'vmm start {vm.name}'")
        if isinstance(command, str) or not command:
            raise ValidationError("give the command as a non-empty list of arguments")
        argv = ssh.ssh_argv(
            ip=vm.ip,
            vm_id=vm.id,
            user=user,
            identities=ssh.identity_files(vm.ssh_key_path),
            known_hosts=self._known_hosts(),
            command=list(command),
        )
        return self.runner.run(argv, check=check, timeout=timeout, input=input)

    def _known_hosts(self) -> Path:
        """Root keeps the guests' host keys in the data dir (never written through a user's
        home); anyone else in their own ``~/.config/vmm``."""
        import os

        from vmm.host import ssh

        if os.geteuid() == 0:
            path = self.store.root / "ssh" / "known_hosts"
            self.store.ensure_dirs()
            from vmm.store import PRIVATE_DIR

            path.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        else:
            path = ssh.known_hosts_file()
        ssh.ensure_known_hosts(path)
        return path

    # -- port forwards --------------------------------------------------------------------

    def forward(self, name: str, spec: str) -> ForwardView:
        """``vmm port-forward NAME SPEC`` (``[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]``)."""
        return self.forwards.add(name, spec)

    def unforward(self, name: str, key: str) -> ForwardView:
        """``vmm port-forward remove NAME [ADDR:]HOSTPORT[/proto]``."""
        return self.forwards.remove(name, key)
