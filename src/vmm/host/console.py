"""A VM's console: its log (read, tailed, followed) and its serial console socket (attached to
a terminal). Nothing here prints: the log comes back as chunks of bytes, and the relay hands
what the guest sends to the caller's ``write``; ``vmm.cli.console`` renders.
"""

from __future__ import annotations

import os

from vmm.errors import ConflictError, NotFoundError, VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator
    from pathlib import Path

DETACH = b"\x1d"  # Ctrl-]
FOLLOW_POLL = 0.2  # seconds between looks at a log that has nothing new


# -- the console log ------------------------------------------------------------------------------


def log_path(data_dir: Path, name: str) -> Path:
    """The console log of VM ``name``; ``NotFoundError`` for an unknown VM or one never started."""
    from vmm.models import validate_name
    from vmm.store import Store

    validate_name(name)
    store = Store(data_dir)
    if not store.exists(name):
        raise NotFoundError(
            f"VM {name!r} does not exist", hint="see 'vmm list -a' for the VMs there are"
        )
    path = store.run_paths(name).console_log
    if not path.exists():
        raise NotFoundError(
            f"VM {name!r} has no console log yet: it has never been started",
            hint=f"start it with 'vmm start {name}'",
        )
    return path


def last_lines(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


class LogReader:
    """An open console log: what it holds (``existing``), then what the VM appends (``follow``).

    Each chunk they yield is worth showing at once: the caller writes and flushes it before
    asking for the next."""

    def __init__(self, path: Path):
        self.path = path
        self._f = path.open("rb")

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def existing(self, lines: int | None = None) -> Iterator[bytes]:
        """The log's content, or only its last ``lines`` lines."""
        f = self._f
        if lines is None:
            while data := f.read(1024 * 1024):
                yield data
            return
        size = f.seek(0, os.SEEK_END)
        chunk = 64 * 1024
        while True:  # read back far enough for N lines
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read()
            if start == 0 or data.count(b"\n") > lines:
                break
            chunk *= 4
        yield last_lines(data, lines)

    def follow(self) -> Iterator[bytes]:
        """What is written after ``existing``, for ever (a log rewritten by a new start is read
        from its top); it ends when the caller stops iterating (or is interrupted)."""
        import time

        f = self._f
        while True:
            data = f.read(65536)
            if data:
                yield data
                continue
            try:
                if os.stat(self.path).st_size < f.tell():  # truncated: a new start rewrote it
                    f.seek(0)
                    continue
            except FileNotFoundError:
                pass
            time.sleep(FOLLOW_POLL)


# -- the serial console ---------------------------------------------------------------------------


def console_socket(data_dir: Path, name: str) -> Path:
    """The console socket of running VM ``name``, whose engine must have one to attach to."""
    from vmm.engines import registry
    from vmm.models import validate_name
    from vmm.status import VMView
    from vmm.store import Store

    validate_name(name)
    store = Store(data_dir)
    view = VMView.of(store.load(name))
    vm = view.vm
    if not view.alive:
        raise ConflictError(
            f"VM {vm.name!r} is not running", hint=f"'vmm logs {vm.name}' shows its console log"
        )
    if not registry.info(vm.engine).can(registry.CONSOLE):
        raise VmmError(
            f"VM {vm.name!r} runs on {vm.engine}, whose serial console cannot be attached to: "
            "its output goes to the console log",
            hint=f"follow it with 'vmm logs -f {vm.name}'; log in with 'vmm ssh {vm.name}'",
        )
    return store.run_paths(vm.name).console_socket


def connect(path: Path) -> socket.socket:
    """A connection to the console socket at ``path`` (the caller closes it)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise VmmError(
            f"cannot attach to {path}: {exc.strerror or exc}",
            hint="another 'vmm console' may be attached (QEMU takes one client at a time)",
        ) from None
    return sock


def relay(
    sock: socket.socket,
    in_fd: int,
    write: Callable[[bytes], object],
    *,
    raw: bool,
    drain: float = 0.5,
) -> None:
    """Copy between the console socket and the terminal until Ctrl-], EOF or the VM exits:
    what the guest sends goes to ``write``, what ``in_fd`` reads goes to the guest.

    With a terminal, it is put in raw mode (so Ctrl-C reaches the guest) and restored after.
    Without one (a pipe), input EOF ends the session once the guest is quiet for ``drain`` s.
    """
    import select
    import termios
    import tty

    saved = termios.tcgetattr(in_fd) if raw else None
    if raw:
        tty.setraw(in_fd)
    try:
        inputs = [sock.fileno(), in_fd]
        while True:
            ready, _, _ = select.select(inputs, [], [], None if in_fd in inputs else drain)
            if not ready:
                return  # input closed and the guest is quiet
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    return  # the VM went away
                write(data)
            if in_fd in ready:
                data = os.read(in_fd, 4096)
                if not data:
                    inputs.remove(in_fd)
                    continue
                if DETACH in data:
                    sock.sendall(data[: data.index(DETACH)])
                    return
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
