"""The browser terminal: xterm.js over a WebSocket, to the VM's serial console (engines that
have one: QEMU) or to an SSH session (any engine).

Frames: binary both ways is terminal data; a text frame from the browser is a JSON control
message (``{"type": "resize", "cols": C, "rows": R}``). The guard has checked the session (or
token) and that ``Origin`` is the server's own before the socket is accepted.

- console: a connection to the console socket (``vmm.host.console``); QEMU takes one client
  at a time, as for ``vmm console``.
- ssh: the system ssh client (``vmm.host.ssh.ssh_argv`` with ``-tt``, the VM's key, vmm's
  known_hosts) on a pseudo-terminal, run through the ``Runner`` in a thread of its own for the
  session's life (at most ``SSH_SESSION_MAX``); closing the pty's master side hangs it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading

from vmm.errors import ConflictError, VmmError
from vmm.log import get_logger
from vmm.models import validate_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import Any

    from starlette.websockets import WebSocket

    from vmm.web.common import Context

log = get_logger(__name__)

SSH_SESSION_MAX = 12 * 3600.0
# Run by the Runner as `python -c PTY_SCRIPT FD ARGV...`: ARGV on the pty's slave side (FD,
# kept open by pass_fds) as its stdio and controlling terminal, in a session of its own.
PTY_SCRIPT = (
    "import fcntl, os, sys, termios\n"
    "fd = int(sys.argv[1])\n"
    "for i in (0, 1, 2):\n"
    "    os.dup2(fd, i)\n"
    "os.close(fd)\n"
    "os.setsid()\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
MAX_INPUT = 64 * 1024  # bytes in one frame from the browser


async def terminal(websocket: WebSocket) -> None:
    from vmm.web.common import ctx

    c = ctx(websocket)
    kind = websocket.path_params.get("kind", "")
    try:
        name = validate_name(websocket.path_params["name"])
        if kind not in ("console", "ssh"):
            raise VmmError(f"unknown terminal kind {kind[:20]!r}", hint="console or ssh")
        await websocket.accept()
        if kind == "console":
            await _console(c, websocket, name)
        else:
            await _ssh(c, websocket, name)
    except VmmError as exc:
        await _fail(websocket, exc.brief + (f"\r\nhint: {exc.hint}" if exc.hint else ""))


async def _fail(websocket: WebSocket, message: str) -> None:
    from starlette.websockets import WebSocketState

    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    with contextlib.suppress(Exception):
        await websocket.send_bytes(f"\r\n\x1b[31merror: {message}\x1b[0m\r\n".encode())
        await websocket.close(1011)


async def _from_browser(
    websocket: WebSocket,
    write: Callable[[bytes], Awaitable[None]],
    resize: Callable[[int, int], None],
) -> None:
    """Browser -> guest until the socket closes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            data: bytes = message["bytes"][:MAX_INPUT]
            await write(data)
        elif message.get("text"):
            try:
                control = json.loads(message["text"])
                if control.get("type") == "resize":
                    cols, rows = int(control["cols"]), int(control["rows"])
                    if 1 <= cols <= 1000 and 1 <= rows <= 1000:
                        resize(cols, rows)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue


async def _console(c: Context, websocket: WebSocket, name: str) -> None:
    from vmm.host import console

    path = await asyncio.to_thread(console.console_socket, c.vmm.store.root, name)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise VmmError(f"cannot attach to {name}'s console: {exc.strerror or exc}",
                       hint="another 'vmm console' may be attached (QEMU takes one client at a time)") from None

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def to_browser() -> None:
        while data := await reader.read(65536):
            await websocket.send_bytes(data)

    try:
        await _race(to_browser(), _from_browser(websocket, write, lambda _c, _r: None))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _ssh(c: Context, websocket: WebSocket, name: str) -> None:
    import fcntl
    import pty
    import struct
    import termios

    from vmm.host import ssh

    vm = await asyncio.to_thread(c.vmm.get, name)
    if not c.vmm.view(vm).alive:
        raise ConflictError(f"VM {name!r} is not running", hint="start it first")
    known = await asyncio.to_thread(c.vmm._known_hosts)
    argv = ssh.ssh_argv(ip=vm.ip, vm_id=vm.id, user="root", identities=ssh.identity_files(vm.ssh_key_path),
                        known_hosts=known, command=[])
    argv.insert(1, "-tt")
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def run() -> None:
        try:
            c.vmm.runner.run([sys.executable, "-c", PTY_SCRIPT, str(slave), *argv], check=False,
                             timeout=SSH_SESSION_MAX, pass_fds=[slave])
        except VmmError as exc:
            log.warning("terminal ssh to %s: %s", name, exc.brief)
        finally:
            loop.call_soon_threadsafe(ended.set)

    threading.Thread(target=run, name=f"terminal-{name}", daemon=True).start()
    output: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        output.put_nowait(data)
        if not data:
            loop.remove_reader(master)

    loop.add_reader(master, readable)

    async def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(master, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def resize(cols: int, rows: int) -> None:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def to_browser() -> None:
        while True:
            get = asyncio.ensure_future(output.get())
            done = asyncio.ensure_future(ended.wait())
            finished, _ = await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
            if get in finished:
                done.cancel()
                data = get.result()
                if not data:
                    return
                await websocket.send_bytes(data)
            else:
                get.cancel()
                return

    try:
        await _race(to_browser(), _from_browser(websocket, write, resize))
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        os.close(master)  # hangs the session up: ssh gets SIGHUP and exits
        os.close(slave)
        with contextlib.suppress(Exception):
            await websocket.send_bytes(b"\r\n[session ended]\r\n")
            await websocket.close()


async def _race(*coros: Coroutine[Any, Any, None]) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
