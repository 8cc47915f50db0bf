"""What the doctor's checks observe on the host, one method per observation; tests override."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vmm.errors import VmmError

if TYPE_CHECKING:
    from vmm.network.iproute import Link, Route
    from vmm.runner import Runner


class Probes:
    """What the checks observe on the host. Each method is one observation; tests override."""

    def __init__(self, runner: Runner | None = None):
        from vmm.runner import Runner

        self.runner = runner or Runner()

    def kvm_unusable_reason(self) -> str | None:
        """None when /dev/kvm can run guests; else why not (missing, EACCES, kvm_pvm, ...)."""
        from vmm.engines.qemu.accel import KVM_DEVICE, kvm_unusable_reason

        if not KVM_DEVICE.exists():
            return "/dev/kvm does not exist"
        return kvm_unusable_reason()

    def open_rw_error(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return exc.strerror or str(exc)
        os.close(fd)
        return None

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def executable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)

    def output(self, argv: list[str]) -> tuple[int, str]:
        """Exit code and combined output of a short command (127 when it cannot run)."""
        try:
            r = self.runner.run(argv, check=False, timeout=15)
        except VmmError as exc:
            return 127, exc.brief
        return r.returncode, (r.stdout + r.stderr).strip()

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def dir_problem(self, path: Path) -> str | None:
        """Why vmm could not write in data dir ``path`` (None: it can, or can create it)."""
        p = path
        while not p.exists():
            if p.parent == p:
                return f"no existing parent of {path}"
            p = p.parent
        if not p.is_dir():
            return f"{p} is not a directory"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".doctor.", dir=p)
        except OSError as exc:
            return f"cannot write in {p}: {exc.strerror or exc}"
        os.close(fd)
        os.unlink(tmp)
        return None

    def links(self) -> list[Link]:
        from vmm.network import links

        return links.list_links(self.runner)

    def routes(self) -> list[Route]:
        from vmm.network import links

        return links.list_routes(self.runner)

    def vm_alive(self, pid: int | None, start_time: int | None, boot: str | None = None) -> bool:
        from vmm.host.liveness import ProcessRef, is_alive

        return (
            pid is not None
            and start_time is not None
            and is_alive(ProcessRef(pid, start_time, boot))
        )

    def listening(self, path: Path) -> bool:
        from vmm.host.process import socket_is_live

        return socket_is_live(path)
