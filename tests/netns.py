"""Private network namespaces for tests: the only place tests touch networking.

Every bridge, TAP, veth, address, route, sysctl and nft rule a test makes lives in a namespace
the test created itself and deletes afterwards, so the machine's own network is never changed.

    with NetNS() as ns:                       # ip netns add vmmt-<random>; deleted on exit
        ns.run(["ip", "link", "add", "br0", "type", "bridge"])
        ns.call(ensure_bridge, Runner(), ...)  # a Python callable, in a forked child inside it
        proc = ns.popen(["python3", "-m", "http.server"])  # killed before the namespace goes

pytest: the ``netns`` fixture gives each test a fresh namespace; ``netns_factory`` makes as many
as a test needs (a "guest" and an "outside" next to the "host"), all deleted at teardown, with a
check that nothing was left behind. To use the fixtures, either list this module in the root
conftest (``pytest_plugins = ["tests.netns"]``) or import them into the test module.

Deleting a namespace first kills (by pid) every process still inside it: a namespace with a
live process survives ``ip netns del`` and would keep its devices and rules.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import secrets
import select
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

PREFIX = "vmmt-"
NETNS_DIR = Path("/run/netns")
T = TypeVar("T")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2


class NetnsError(RuntimeError):
    """A namespace could not be created, entered or deleted."""


class CommandFailed(subprocess.CalledProcessError):
    """A command in a namespace failed; its message carries stderr (CalledProcessError's does not)."""

    def __str__(self) -> str:
        detail = (self.stderr or self.output or "").strip()
        return super().__str__() + (f": {detail}" if detail else "")


def _ip(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    # Always a namespace verb (netns add/del/pids) or `ip -n NAME ...`: never the main namespace.
    proc = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def cannot_use_netns() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def require_netns() -> None:
    """Skip the calling test (with the reason) when namespaces are unavailable."""
    reason = cannot_use_netns()
    if reason:
        pytest.skip(reason)


def list_test_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of existing namespaces created by these helpers (for leftover checks)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


class NetNS:
    """One private network namespace, named ``vmmt-<random>``; a context manager.

    ``create()`` adds it and brings ``lo`` up; ``delete()`` kills whatever runs inside, deletes
    it and is safe to call twice. All commands run inside it, never in the main namespace.
    """

    def __init__(self, name: str | None = None):
        self.name = name or f"{PREFIX}{secrets.token_hex(4)}"
        if not self.name.startswith(PREFIX):
            raise ValueError(f"test namespace names start with {PREFIX!r}: {self.name!r}")
        self._procs: list[subprocess.Popen[Any]] = []
        self.created = False

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    # -- lifecycle -------------------------------------------------------------------------

    def create(self) -> NetNS:
        if self.exists():
            raise NetnsError(f"namespace {self.name} already exists")
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def pids(self) -> list[int]:
        """Pids of the processes inside the namespace (``ip netns pids``)."""
        if not self.exists():
            return []
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process in the namespace (by pid) and reap our own children."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.pids() if p != os.getpid()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise NetnsError(f"processes still running in {self.name}: {pids}")
            time.sleep(0.05)

    def _reap(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._procs = [p for p in self._procs if p.returncode is None]

    def delete(self) -> None:
        """Kill what runs inside, then delete the namespace (and with it its devices, rules)."""
        if not self.exists():
            self._reap()
            return
        self.kill_all()
        _ip("netns", "del", self.name)
        if self.exists():
            raise NetnsError(f"namespace {self.name} still exists after ip netns del")

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- running things inside -------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *[str(a) for a in argv]]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it; text output captured."""
        proc = subprocess.run(
            self.argv(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr)
        return proc

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is killed when the namespace is deleted."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def call(self, fn: Callable[..., T], /, *args: Any, timeout: float = 60.0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a forked child inside the namespace; return its result.

        The child enters the namespace with setns(2) and gets a private /sys for it (as
        ``ip netns exec`` does), so both netlink and sysfs show the namespace. The result (or
        the exception, with the child's traceback as a note) comes back pickled.
        """
        if not self.exists():
            raise NetnsError(f"namespace {self.name} does not exist")
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            try:
                os.close(rfd)
                payload: tuple[Any, ...]
                try:
                    _enter_netns(self.name)
                    payload = ("ok", fn(*args, **kwargs))
                except BaseException as exc:
                    payload = ("err", exc, traceback.format_exc())
                data = _pickle_payload(payload)
                with os.fdopen(wfd, "wb") as out:
                    out.write(data)
            finally:
                os._exit(0)
        os.close(wfd)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{fn!r} did not finish in {timeout}s inside {self.name}")
                ready, _, _ = select.select([rfd], [], [], left)
                if ready:
                    chunk = os.read(rfd, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        if not chunks:
            raise NetnsError(f"child running {fn!r} in {self.name} died without a result")
        result = pickle.loads(b"".join(chunks))
        if result[0] == "ok":
            return result[1]  # type: ignore[no-any-return]
        error: BaseException = result[1]
        if result[2]:
            error.add_note(f"in namespace {self.name}:\n{result[2]}")
        raise error

    # -- topology helpers --------------------------------------------------------------------

    def sysctl(self, key: str, value: str | None = None) -> str:
        """Read (or set, then read) a sysctl inside the namespace, e.g. ``net.ipv4.ip_forward``."""
        if value is not None:
            self.run(["sysctl", "-q", "-w", f"{key}={value}"])
        return self.run(["sysctl", "-n", key]).stdout.strip()


def connect(a: NetNS, a_if: str, b: NetNS, b_if: str) -> None:
    """A veth pair with ``a_if`` in namespace ``a`` and ``b_if`` in ``b``; both ends up."""
    _ip("-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    _ip("-n", a.name, "link", "set", a_if, "up")
    _ip("-n", b.name, "link", "set", b_if, "up")


def add_address(ns: NetNS, ifname: str, cidr: str) -> None:
    _ip("-n", ns.name, "addr", "add", cidr, "dev", ifname)


def add_default_route(ns: NetNS, via: str) -> None:
    _ip("-n", ns.name, "route", "add", "default", "via", via)


def connect_outside(
    host: NetNS,
    outside: NetNS,
    *,
    host_cidr: str = "10.200.0.1/24",
    outside_cidr: str = "10.200.0.2/24",
    host_if: str = "uplink0",
    outside_if: str = "wan0",
) -> None:
    """Give ``host`` a stand-in for the internet: a veth to ``outside`` and a default route.

    Traffic that "leaves the host" ends in ``outside``, a namespace the test owns, so NAT and
    port-forward tests never send a packet anywhere else.
    """
    connect(host, host_if, outside, outside_if)
    add_address(host, host_if, host_cidr)
    add_address(outside, outside_if, outside_cidr)
    add_default_route(host, outside_cidr.split("/")[0])


class RemoteError(Exception):
    """An exception from ``NetNS.call`` that could not be sent back as itself (not picklable).

    ``type_name`` is the qualified name of the original exception class.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


def _pickle_payload(payload: tuple[Any, ...]) -> bytes:
    # Round-trip here, in the child: an exception whose __init__ takes other arguments than
    # its args (vmm's CommandError) pickles fine but fails to unpickle in the parent.
    try:
        data = pickle.dumps(payload)
        pickle.loads(data)
        return data
    except Exception:
        value = payload[1]
        if payload[0] == "ok":
            return pickle.dumps(("err", RemoteError("unpicklable result", repr(value)), ""))
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        return pickle.dumps(("err", RemoteError(name, str(value)), payload[2]))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_netns(name: str) -> None:
    """Move the calling (single-threaded, forked) process into namespace ``name``.

    Python 3.11 has no os.setns; mirror ``ip netns exec``: setns the network namespace, then a
    private mount namespace with a fresh sysfs so /sys/class/net shows the namespace's devices.
    """
    libc = _libc()
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(fd, _CLONE_NEWNET), f"setns {name}")
    finally:
        os.close(fd)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "make / rslave")
    libc.umount2(b"/sys", _MNT_DETACH)  # may fail when no sysfs was mounted: fine
    _check(libc.mount(name.encode(), b"/sys", b"sysfs", 0, None), "mount sysfs")


# -- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], NetNS]]:
    """Make fresh namespaces on demand; all are deleted at teardown and checked gone."""
    require_netns()
    made: list[NetNS] = []

    def make() -> NetNS:
        ns = NetNS()
        made.append(ns)
        return ns.create()

    try:
        yield make
    finally:
        errors: list[str] = []
        for ns in reversed(made):
            try:
                ns.delete()
            except Exception as exc:  # keep deleting the others
                errors.append(f"{ns.name}: {exc}")
        left = [ns.name for ns in made if ns.exists()]
        if errors or left:
            raise NetnsError(f"namespace teardown failed: {errors or left}")


@pytest.fixture
def netns(netns_factory: Callable[[], NetNS]) -> NetNS:
    """One fresh private network namespace for the test."""
    return netns_factory()
