"""Live state without polling: the records directory watched with inotify, and each running VM's
process with a pidfd (readable the moment it exits — a guest that powers itself off changes no
record). Either wakes the watcher, which re-reads the records (a few ms for 50 VMs), compares
with what it sent last and publishes one event per VM that changed to every SSE subscriber.

A rescan also runs every ``SAFETY_RESCAN`` seconds, and every second when inotify is not
available, so a missed event costs a delay, never a stale page.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import struct

from vmm.host.liveness import ProcessRef, is_alive
from vmm.log import get_logger
from vmm.web.views import vm_json, vm_state_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from vmm.app import Vmm

log = get_logger(__name__)

IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
RECORD_EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_HEADER = struct.Struct("iIII")

SAFETY_RESCAN = 15.0  # seconds between rescans nothing asked for
POLL_WITHOUT_INOTIFY = 1.0
COALESCE = 0.01  # a start saves its record three times in a few ms: one rescan for a burst
QUEUE_LIMIT = 1000  # events waiting for a slow subscriber before it is dropped


class Inotify:
    """A minimal inotify(7) over ctypes: ``watch`` a directory, ``read`` what happened."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def watch(self, path: Path, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def read(self) -> list[tuple[int, int, str]]:
        """The events queued so far: (watch, mask, name)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset : offset + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        offset += length
        events.append((wd, mask, name))
    return events


def is_record_event(mask: int, name: str) -> bool:
    """A VM record was written, replaced or removed (not one of write_atomic's temp files)."""
    if mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF):
        return True
    return name.endswith(".json") and not name.startswith(".")


class Hub:
    """The SSE subscribers, each a bounded queue of ``(event, json text)``; lives on the loop."""

    def __init__(self, limit: int = QUEUE_LIMIT):
        self.limit = limit
        self._subscribers: set[asyncio.Queue[tuple[str, str]]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self) -> asyncio.Queue[tuple[str, str]]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(self.limit)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, str]]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: str, data: Any) -> None:
        """On the loop's thread: queue ``event`` for every subscriber (one that is too far
        behind is dropped: its browser reconnects and starts from a fresh snapshot)."""
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((event, text))
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(("overflow", "{}"))

    def publish_threadsafe(self, event: str, data: Any) -> None:
        """From any thread (a job's)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.publish, event, data)


class Watcher:
    """Keeps ``vms`` (name -> the JSON the API shows) current and publishes every change."""

    def __init__(self, vmm: Vmm, hub: Hub, *, reap: Callable[[int], None] | None = None):
        self.vmm = vmm
        self.hub = hub
        self.vms: dict[str, dict[str, Any]] = {}
        self.scans = 0
        self._reap = reap or (lambda _pid: None)
        self._wake = asyncio.Event()
        self._inotify: Inotify | None = None
        self._pidfds: dict[str, tuple[int, int]] = {}  # VM name -> (pid, pidfd)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def scan(self) -> dict[str, dict[str, Any]]:
        return {view.vm.name: vm_json(view) for view in self.vmm.list()}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.hub.loop = self._loop
        store = self.vmm.store
        await asyncio.to_thread(store.ensure_dirs)
        try:
            self._inotify = Inotify()
            self._inotify.watch(store.vms_dir, RECORD_EVENTS)
            self._loop.add_reader(self._inotify.fd, self._on_inotify)
        except OSError as exc:
            log.warning("cannot watch %s (%s): looking every %.0f s instead", store.vms_dir, exc,
                        POLL_WITHOUT_INOTIFY)
            if self._inotify is not None:
                self._inotify.close()
            self._inotify = None
        self.vms = await asyncio.to_thread(self.scan)
        self._watch_processes()
        self._task = asyncio.create_task(self._run(), name="vmm-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inotify is not None and self._loop is not None:
            self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
        for name in list(self._pidfds):
            self._unwatch(name)

    def poke(self) -> None:
        """Something may have changed: rescan soon (safe from the loop's thread only)."""
        self._wake.set()

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        if any(is_record_event(mask, name) for _wd, mask, name in self._inotify.read()):
            self._wake.set()

    async def _run(self) -> None:
        period = SAFETY_RESCAN if self._inotify is not None else POLL_WITHOUT_INOTIFY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            await asyncio.sleep(COALESCE)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # a rescan that failed (a vanished dir): try again later
                log.warning("rescanning the VM records failed: %s", exc)

    async def refresh(self) -> None:
        new = await asyncio.to_thread(self.scan)
        self.scans += 1
        old, self.vms = self.vms, new
        for name, data in new.items():
            before = old.get(name)
            if before is None or vm_state_key(before) != vm_state_key(data):
                self.hub.publish("vm", {"name": name, "vm": data})
        for name in old.keys() - new.keys():
            self.hub.publish("vm-removed", {"name": name})
        self._watch_processes()

    # -- the running VMs' processes ----------------------------------------------------------

    def _watch_processes(self) -> None:
        assert self._loop is not None
        want = {n: d for n, d in self.vms.items() if d.get("alive") and d.get("pid")}
        for name in list(self._pidfds):
            if name not in want or want[name]["pid"] != self._pidfds[name][0]:
                self._unwatch(name)
        for name, data in want.items():
            if name in self._pidfds:
                continue
            ref = ProcessRef(int(data["pid"]), int(data["pid_start_time"]), data.get("pid_boot_id"))
            try:
                fd = os.pidfd_open(ref.pid)
            except OSError:
                self._wake.set()  # gone already
                continue
            if not is_alive(ref):  # the pid was reused between the scan and the open
                os.close(fd)
                self._wake.set()
                continue
            self._pidfds[name] = (ref.pid, fd)
            self._loop.add_reader(fd, self._on_exit, name)

    def _on_exit(self, name: str) -> None:
        pid = self._pidfds[name][0]
        self._unwatch(name)
        self._reap(pid)  # a VM this server started is its child: collect it
        self._wake.set()

    def _unwatch(self, name: str) -> None:
        _pid, fd = self._pidfds.pop(name)
        if self._loop is not None:
            self._loop.remove_reader(fd)
        os.close(fd)
