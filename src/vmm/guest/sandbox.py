"""Running an image's programs without host privileges, and editing its tree from the host.

An imported tree is untrusted: its ``apt-get``, ``dpkg``, shell and maintainer scripts are
whatever the tarball's author put there. vmm runs as root, so they must never run as the host's
root, never see the host's filesystem, processes or devices, and never outlive vmm.

The sandbox (``sandbox()`` + ``Sandbox.run``)
----------------------------------------------
vmm starts its own helper (``python3 -I -c ... _inner_main``, vmm's code, not the tree's) with
the Runner. Still host root and single-threaded, the helper

1. arms ``PR_SET_PDEATHSIG=SIGKILL`` (it dies with vmm, also when vmm is SIGKILLed) and changes
   into the tree (the staging path is vmm's own, so it is walked as host root);
2. joins vmm's private network namespace (see *Network*), or gets a new empty one;
3. unshares user, mount, pid, ipc, uts and cgroup namespaces; a forked mapper still in the
   host's namespace writes ``0 BASE 65536`` to its uid_map and gid_map (a private range of host
   ids, one per concurrent sandbox, from systemd's container range; ``/run/vmm/sandbox``
   holds the locks), and the helper becomes uid/gid 0 *of that namespace*;
4. forks the namespace's pid 1, which binds the tree (``nodev``: a device node that came in a
   tarball opens nothing) under a private tmpfs, mounts a fresh ``/proc`` of the new pid
   namespace, a tmpfs ``/dev`` with only null, zero, full, random, urandom and tty bound in
   from the host, a tmpfs ``/run``, no ``/sys``; then ``pivot_root`` into the tree and a lazy
   unmount of the old root: nothing of the host's filesystem is reachable any more, not through
   ``/proc/$PPID/root``, ``/proc/1/root``, ``..`` or a chroot escape;
5. execs the program (the tree's own, found on a fixed ``PATH`` in the tree) with a clean
   environment in a new session, reaps orphans, and exits with the program's status; when
   pid 1 exits the kernel kills everything left in the namespace.

Inside, "root" holds capabilities only over the namespace: host files it could still name are
owned by unmapped ids (it cannot read ``/etc/shadow``), it cannot load modules, mknod, change
the host's network, or ptrace anything outside. This helper is the one place besides
``vmm.runner`` that starts a program: the exec must happen inside the namespaces.

The mounts exist only in the sandbox's mount namespace, which dies with its last process: there
is no host-side mount to leak on SIGTERM or SIGKILL. vmm kills the helper when interrupted (the
Runner does) or when it times out; pid 1 then gets SIGKILL from the kernel, and ``Sandbox.run``
waits until no process with an id in the sandbox's range is left before the caller removes the
tree (a process cannot leave its range: ids outside it are unmapped).

Why not bubblewrap or unshare(1)
--------------------------------
``unshare --map-users`` of util-linux 2.38 (Debian 12) needs ``newuidmap`` (package uidmap)
and a root entry in ``/etc/subuid``: a new dependency and a change to the host's account
configuration. bubblewrap is a new dependency too, and maps exactly one id: dpkg cannot chown
files to ``_apt``, ``messagebus`` or ``systemd-*`` in such a namespace, and bwrap run as root
without ``--unshare-user`` keeps full root. The helper is ~150 lines of stdlib Python (ctypes
for unshare/setns/mount/pivot_root) and needs nothing but a kernel with user namespaces.

Ownership
---------
A tree owned by host ids 0..65535 is shifted into the range before the first command
(``lchown`` of each entry to BASE+id) and back afterwards, so files created inside belong to
the right users in the image. An id of 65536 or more refuses preparation; on the way back
anything outside the range is refused. ``chown`` clears setuid/setgid bits and the
``security.capability`` xattr, so the mode and the capability are written back after each
chown; a capability set inside the sandbox (``setcap`` in a postinst: a namespaced v3 xattr
whose root is BASE) is rewritten as a plain v2 one, so ``ping`` keeps ``cap_net_raw``. POSIX
ACL entries are not shifted (they name the same ids before and after; inside they show as
nobody). When a command fails or vmm is interrupted the tree is not shifted back: it is
vmm's staging copy and is deleted.

Network
-------
apt needs to download, but the host's network namespace would hand the image the host's
network position: services on 127.0.0.1, the cloud metadata endpoint (169.254.169.254),
abstract unix sockets. With ``network=True`` vmm makes a private network namespace (its only
interface is ``lo``; it belongs to the host's user namespace, so the sandbox cannot change it)
and listens there on 127.0.0.1 with a small HTTP proxy that runs in vmm, on the host side:
absolute-URI GET/HEAD and CONNECT only, to any address except loopback, link-local,
multicast, unspecified and reserved ones. apt is pointed at it with ``Acquire::http(s)::Proxy``
(and ``http_proxy``); there is no DNS inside, the proxy resolves names.

Editing a tree from the host
----------------------------
``resolve``, ``write_file``, ``remove``, ``remove_glob``, ``make_dir`` and ``symlink`` take a
path relative to the tree and resolve symbolic links as the guest would (an absolute target
means the tree's root, ``..`` stops at it), checking every directory on the way with
``lstat``; the last component is never followed when it is written or removed. Nothing runs in
the tree while vmm edits it, so the checks cannot be raced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import ipaddress
import os
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vmm.errors import CommandError, ValidationError, VmmError
from vmm.runner import Result, Runner

RANGE = 65536  # ids 0..65535 of the tree: every Debian user, nobody (65534) included
FIRST_BASE = 0x6F000000  # the top of systemd's container range (0x80000..0x6FFFFFFF)
SLOTS = 256
LOCK_DIR = Path("/run/vmm/sandbox")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HELPER_FAILED = 125  # the helper's exit status when it could not set the sandbox up
MARK = "vmm-sandbox:"
GONE_TIMEOUT = 30.0
MAX_LINKS = 40

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
CAP_XATTR = "security.capability"
VFS_CAP_REVISION_2, VFS_CAP_REVISION_3 = 0x02000000, 0x03000000

# The helper's first lines: vmm's own package directory first on sys.path (-I drops
# PYTHONPATH and the current directory, which is the untrusted tree).
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from vmm.guest.sandbox import _inner_main; _inner_main(sys.argv[2:])"
)


# -- host side: the sandbox ---------------------------------------------------------------


@dataclass
class Sandbox:
    """Runs programs of ``tree`` in the sandbox; made by ``sandbox()``."""

    runner: Runner
    tree: Path
    base: int
    netns: str | None = None  # /proc/<vmm>/fd/N: the private network namespace with the proxy
    proxy: str | None = None  # http://127.0.0.1:PORT inside that namespace

    def apt_options(self) -> list[str]:
        """apt-get options that send its downloads through vmm's proxy (none without it)."""
        if self.proxy is None:
            return []
        return ["-o", f"Acquire::http::Proxy={self.proxy}", "-o",
                f"Acquire::https::Proxy={self.proxy}", "-o", "Acquire::http::Pipeline-Depth=0"]

    def helper_argv(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """The Runner's argv: vmm's helper, which sets the sandbox up and execs ``argv``."""
        src = str(Path(__file__).resolve().parents[2])
        helper = [sys.executable, "-I", "-B", "-c", _BOOT, src, "--tree", str(self.tree),
                  "--base", str(self.base), "--parent", str(os.getpid())]
        if self.netns is not None:
            helper += ["--netns", self.netns]
        full_env = dict(env)
        if self.proxy is not None:
            full_env.setdefault("http_proxy", self.proxy)
            full_env.setdefault("https_proxy", self.proxy)
        for key, value in full_env.items():
            helper += ["--env", f"{key}={value}"]
        return [*helper, "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
        check: bool = True,
    ) -> Result:
        """``argv`` inside the sandbox; a ``Result`` named after ``argv``, not the helper.

        Returns only when every process of the sandbox is gone, also when interrupted."""
        try:
            done = self.runner.run(self.helper_argv(argv, env or {}), check=False,
                                   timeout=timeout)
        except CommandError as exc:  # timed out: name the program, not the helper
            raise CommandError(list(argv), exc.returncode, exc.stderr, hint=exc.hint) from None
        finally:
            wait_gone(self.base)
        _check_helper(argv, done)
        result = Result(list(argv), done.returncode, done.stdout, done.stderr)
        if check and result.returncode != 0:
            raise CommandError(result.argv, result.returncode, result.stderr or result.stdout)
        return result


def _check_helper(argv: Sequence[str], done: Result) -> None:
    """Raise when the helper itself failed (it says so with ``MARK`` and ``HELPER_FAILED``)."""
    if done.returncode != HELPER_FAILED:
        return
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(MARK)]
    if lines:
        raise VmmError(
            f"cannot run {argv[0]} in a sandbox: {lines[-1].removeprefix(MARK).strip()}",
            hint="preparing an image needs user namespaces (user.max_user_namespaces > 0)",
        )


@contextlib.contextmanager
def sandbox(runner: Runner, tree: Path, *, network: bool = False) -> Iterator[Sandbox]:
    """A ``Sandbox`` for ``tree``: its ids shifted into a private range for the duration.

    On success the ownership is shifted back; on an exception it is not (the tree is a staging
    copy that the caller deletes)."""
    with uid_range() as base:
        shift_ownership(tree, base)
        with _network(network) as (netns, proxy):
            yield Sandbox(runner, tree, base, netns, proxy)
        shift_ownership(tree, base, back=True)


@contextlib.contextmanager
def uid_range() -> Iterator[int]:
    """The base of a free range of host ids, locked (flock) for as long as it is used."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for slot in range(SLOTS):
        fd = os.open(LOCK_DIR / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        base = FIRST_BASE + slot * RANGE
        try:
            if not processes_in(base, RANGE):  # not one a SIGKILLed vmm left dying
                yield base
                return
        finally:
            os.close(fd)
    raise VmmError("no free id range for a sandbox (too many image preparations at once?)")


def processes_in(base: int, count: int) -> list[int]:
    """Live (not zombie) processes with a uid in ``base .. base+count-1``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").split()[:1] == ["Z"]:
            continue
        uids = [int(u) for u in fields.get("Uid", "").split()]
        if any(base <= u < base + count for u in uids):
            found.append(int(entry.name))
    return found


def all_sandbox_processes() -> list[int]:
    """Processes of any vmm sandbox (for tests and leftover checks)."""
    return processes_in(FIRST_BASE, SLOTS * RANGE)


def wait_gone(base: int, timeout: float = GONE_TIMEOUT) -> None:
    """Wait until the sandbox of range ``base`` has no process left (they were SIGKILLed)."""
    deadline = time.monotonic() + timeout
    while processes_in(base, RANGE):
        if time.monotonic() > deadline:
            raise VmmError(f"processes of the sandbox (uids {base}+) did not exit",
                           hint="kill them by hand (they run without host privileges)")
        time.sleep(0.02)


# -- host side: ownership shift -------------------------------------------------------------


def shift_ownership(tree: Path, base: int, *, back: bool = False) -> None:
    """Every entry of ``tree`` (not crossing into other filesystems) from id to BASE+id, or back.

    All ids are checked before the first chown: a refused tree is left as it was."""
    for path, st in _walk(tree):
        _shifted(st.st_uid, base, back, path)
        _shifted(st.st_gid, base, back, path)
    for path, st in _walk(tree):
        _shift_entry(path, st, base, back)


def _walk(tree: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """``tree`` and everything below it on the same filesystem, each hard-linked file once.

    Iterative: a tree nested deeper than Python's recursion limit is walked all the same."""
    root = os.lstat(tree)
    seen: set[int] = set()
    yield tree, root
    pending = [tree]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise VmmError(f"cannot prepare the tree: {directory}: {exc.strerror}") from None
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if st.st_dev != root.st_dev:
                continue
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            yield Path(entry.path), st
            if stat.S_ISDIR(st.st_mode):
                pending.append(Path(entry.path))


def _shifted(tree_id: int, base: int, back: bool, path: Path) -> int:
    """``tree_id`` moved into (or out of) the range; anything that does not fit is refused."""
    if back:
        if not base <= tree_id < base + RANGE:
            raise VmmError(f"cannot finish preparing the tree: {path} is owned by id {tree_id}, "
                           "outside the sandbox's range; refusing to shift it back")
        return tree_id - base
    if tree_id >= RANGE:
        raise ValidationError(
            f"cannot prepare the tree: {path} is owned by id {tree_id} (only 0-{RANGE - 1} can "
            "be mapped into the sandbox)",
            hint="import it with --as-is, or fix the owners",
        )
    return tree_id + base


def _shift_entry(path: Path, st: os.stat_result, base: int, back: bool) -> None:
    """lchown one entry; its setuid/setgid bits and file capability survive the chown."""
    uid = _shifted(st.st_uid, base, back, path)
    gid = _shifted(st.st_gid, base, back, path)
    caps = _get_caps(path) if stat.S_ISREG(st.st_mode) else None
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            os.setxattr(path, CAP_XATTR, global_caps(caps, base) if back else caps,
                        follow_symlinks=False)
    except OSError as exc:
        raise VmmError(f"cannot prepare the tree: {path}: {exc.strerror}") from None


def _get_caps(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, CAP_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise VmmError(f"cannot prepare the tree: {path}: {exc.strerror}") from None


def global_caps(value: bytes, base: int) -> bytes:
    """A v3 (namespaced) capability whose root is the sandbox's root, as a plain v2 one."""
    if len(value) != 24:
        return value
    magic, rootid = struct.unpack_from("<I", value)[0], struct.unpack_from("<I", value, 20)[0]
    if magic & 0xFF000000 != VFS_CAP_REVISION_3 or rootid != base:
        return value
    return struct.pack("<I", VFS_CAP_REVISION_2 | (magic & 0x00FFFFFF)) + value[4:20]


# -- host side: the private network and its proxy -------------------------------------------


@contextlib.contextmanager
def _network(enabled: bool) -> Iterator[tuple[str | None, str | None]]:
    """(netns path, proxy URL) of a private network namespace with vmm's proxy, or Nones."""
    if not enabled:
        yield None, None
        return
    fd, listener = _private_netns()
    proxy = _Proxy(listener)
    proxy.start()
    try:
        port = listener.getsockname()[1]
        yield f"/proc/{os.getpid()}/fd/{fd}", f"http://127.0.0.1:{port}/"
    finally:
        proxy.close()
        os.close(fd)


def _private_netns() -> tuple[int, socket.socket]:
    """A new network namespace (lo up) and a listening socket in it; vmm stays in its own.

    A namespace change of one thread is that thread's alone, so a short-lived thread makes it."""
    made: dict[str, object] = {}

    def make() -> None:
        try:
            _libc("unshare", CLONE_NEWNET)
            made["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            made["listener"] = listener
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make, name="vmm-netns")
    thread.start()
    thread.join()
    fd, listener = made.get("fd"), made.get("listener")
    if not isinstance(fd, int) or not isinstance(listener, socket.socket):
        if isinstance(fd, int):
            os.close(fd)
        error = made.get("error")
        why = error.strerror if isinstance(error, OSError) else "unknown error"
        raise VmmError(f"cannot make a private network namespace for the sandbox: {why}")
    return fd, listener


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0))
        flags = struct.unpack("16sh22x", got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


class ProxyRefused(Exception):
    """A request the proxy does not forward: the HTTP status and why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def forbidden(address: str) -> bool:
    """Addresses the sandbox may not reach: the host itself, link-local (cloud metadata)..."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved)


def parse_request(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, what to send upstream) of a proxy request's head.

    CONNECT sends nothing; GET/HEAD of an absolute http URL are rewritten to origin form with
    ``Connection: close`` (one request per connection keeps the relay a plain byte pump)."""
    lines = head.split(b"\r\n")
    try:
        method, target, _version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise ProxyRefused(400, "bad request line") from None
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ProxyRefused(400, "CONNECT needs host:port")
        return method, host.strip("[]"), int(port), b""
    if method not in ("GET", "HEAD"):
        raise ProxyRefused(405, f"method {method} is not forwarded")
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ProxyRefused(400, "only absolute http:// URLs are forwarded")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    drop = (b"connection:", b"proxy-", b"keep-alive:")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(drop)]
    if not any(ln.lower().startswith(b"host:") for ln in kept):
        kept.insert(0, b"Host: " + url.netloc.encode())
    first = f"{method} {path} HTTP/1.1".encode()
    return method, url.hostname, url.port or 80, b"\r\n".join([first, *kept, b"Connection: close",
                                                                b"", b""])


class _Proxy:
    """vmm's HTTP proxy for the sandbox: accepts in the sandbox's namespace, connects from the
    host's (its threads are started from vmm's main thread)."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.thread = threading.Thread(target=self._serve, name="vmm-proxy", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        upstream = None
        try:
            conn.settimeout(120)
            head, rest = _read_head(conn)
            method, host, port, request = parse_request(head)
            upstream = _connect(host, port)
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(request + rest)
            _pump(conn, upstream)
        except ProxyRefused as exc:
            with contextlib.suppress(OSError):
                conn.sendall(f"HTTP/1.1 {exc.status} {exc.reason}\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n".encode())
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 65536:
            raise ProxyRefused(400, "incomplete request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _connect(host: str, port: int) -> socket.socket:
    """A connection to ``host``: to an address that was checked, never a name resolved twice."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ProxyRefused(502, f"cannot resolve {host}") from None
    allowed = [info for info in infos if not forbidden(str(info[4][0]))]
    if not allowed:
        raise ProxyRefused(403, f"vmm refuses {host}: a local or link-local address")
    for family, kind, proto, _name, address in allowed:
        s = socket.socket(family, kind, proto)
        s.settimeout(30)
        try:
            s.connect(address)
        except OSError:
            s.close()
            continue
        s.settimeout(300)
        return s
    raise ProxyRefused(502, f"cannot connect to {host}:{port}")


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until the upstream side is done. The client's end of input is not passed
    on (a server may drop a request whose sender half-closed), the upstream's is."""
    peer = {client: upstream, upstream: client}
    reading = {client, upstream}
    while upstream in reading:
        ready, _, _ = select.select(list(reading), [], [], 300)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if data:
                peer[s].sendall(data)
            else:
                reading.discard(s)
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)


# -- host side: editing a tree --------------------------------------------------------------


def resolve(tree: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``tree/rel`` with symbolic links resolved as inside the tree (never leaving it).

    Every directory on the returned path is a real directory of the tree (checked with lstat);
    the last component may be missing, and is a link only with ``follow_last=False``."""
    parts = deque(p for p in rel.split("/") if p not in ("", "."))
    done: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if done:
                done.pop()
            continue
        path = tree.joinpath(*done, part)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > MAX_LINKS:
                raise ValidationError(f"cannot prepare the tree: /{rel} has too many levels of "
                                      "symbolic links")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            raise ValidationError(f"cannot prepare the tree: /{'/'.join(done + [part])} is not "
                                  "a directory")
        done.append(part)
    return tree.joinpath(*done)


def make_dir(tree: Path, rel: str, mode: int = 0o755) -> Path:
    """The directory ``rel`` of the tree (made, with its parents, where missing)."""
    path = resolve(tree, rel)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise ValidationError(f"cannot prepare the tree: /{rel} is not a directory",
                              hint="import it with --as-is, or fix the tree")
    return path


def _entry(tree: Path, rel: str) -> Path:
    """``rel``'s last component in its (resolved, existing) directory: never followed."""
    parent, _, name = rel.rstrip("/").rpartition("/")
    return make_dir(tree, parent) / name if parent else tree / name


def remove(tree: Path, rel: str) -> None:
    """Remove ``rel`` (a link itself, never what it points to; a directory with its contents)."""
    parent, _, name = rel.rstrip("/").rpartition("/")
    directory = resolve(tree, parent)
    if not directory.is_dir() or directory.is_symlink():
        return
    _remove_entry(directory / name)


def _remove_entry(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # never follows links (it uses openat/unlinkat below path)
    else:
        path.unlink()


def remove_glob(tree: Path, rel_dir: str, pattern: str) -> None:
    """Remove the entries of directory ``rel_dir`` that match ``pattern`` (fnmatch)."""
    directory = resolve(tree, rel_dir)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    for name in sorted(os.listdir(directory)):
        if fnmatch.fnmatchcase(name, pattern):
            _remove_entry(directory / name)


def write_file(tree: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    """Write ``rel`` as a new regular file (a link or other file there is replaced first)."""
    path = _entry(tree, rel)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_nlink > 1:
            _remove_entry(path)  # a hard link would write into another file of the tree
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        os.fchmod(f.fileno(), mode)
    return path


def symlink(tree: Path, rel: str, target: str) -> None:
    """Make ``rel`` a symbolic link to ``target`` (whatever was there is removed)."""
    path = _entry(tree, rel)
    _remove_entry(path)
    path.symlink_to(target)


def exists(tree: Path, rel: str) -> bool:
    """Whether ``rel`` exists in the tree (links resolved inside it)."""
    try:
        return os.path.lexists(resolve(tree, rel))
    except ValidationError:
        return False


# -- inside: the helper and the sandbox's pid 1 ---------------------------------------------


class _Failed(Exception):
    """The helper could not set the sandbox up: what it was doing, and why."""


def _libc(name: str, *args: object) -> int:
    """A libc call that raises OSError on -1 (ctypes: os has no unshare/setns/mount in 3.11)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(getattr(libc, name)(*args))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _libc("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _step(what: str) -> contextlib.AbstractContextManager[None]:
    """OSErrors in the block become ``_Failed(what: why)``."""

    @contextlib.contextmanager
    def step() -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise _Failed(f"{what}: {exc.strerror or exc}") from None

    return step()


@dataclass
class _Options:
    tree: str
    base: int
    parent: int
    netns: str | None
    env: dict[str, str]
    argv: list[str]


def _parse(args: list[str]) -> _Options:
    sep = args.index("--")
    opts: dict[str, str] = {}
    env = {"PATH": PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}
    it = iter(args[:sep])
    for flag in it:
        value = next(it)
        if flag == "--env":
            key, _, val = value.partition("=")
            env[key] = val
        else:
            opts[flag.removeprefix("--")] = value
    return _Options(opts["tree"], int(opts["base"]), int(opts["parent"]), opts.get("netns"),
                    env, args[sep + 1:])


def _inner_main(args: list[str]) -> None:
    """The helper: host root until it has made and entered the namespaces (see the docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        opts = _parse(args)
        _die_with(opts.parent)
        with _step(f"cd {opts.tree}"):
            os.chdir(opts.tree)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        flags |= CLONE_NEWCGROUP
        if opts.netns is None:
            flags |= CLONE_NEWNET
        else:
            with _step("joining the private network namespace"):
                fd = os.open(opts.netns, os.O_RDONLY | os.O_CLOEXEC)
                _libc("setns", fd, CLONE_NEWNET)
                os.close(fd)
        _enter_namespaces(flags, opts.base)
        _die_with(opts.parent)  # the id change cleared the parent-death signal
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            _init(opts, alive_r)
        os.close(alive_r)
        os._exit(_exit_code(os.waitpid(pid, 0)[1]))
    except _Failed as exc:
        os.write(2, f"{MARK} {exc}\n".encode())
        os._exit(HELPER_FAILED)


def _die_with(parent: int) -> None:
    with _step("prctl"):
        _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(HELPER_FAILED)


def _enter_namespaces(flags: int, base: int) -> None:
    """unshare ``flags``; a mapper child (still host root, outside) writes the id maps."""
    go_r, go_w = os.pipe()
    helper = os.getpid()
    mapper = os.fork()
    if mapper == 0:
        os.close(go_w)
        _map_ids(helper, go_r, base)
    os.close(go_r)
    try:
        with _step("unshare (are user namespaces enabled?)"):
            _libc("unshare", flags)
        os.write(go_w, b"x")
    finally:
        os.close(go_w)
        status = os.waitpid(mapper, 0)[1]
    if _exit_code(status) != 0:
        raise _Failed("writing the id maps failed")
    with _step("becoming root of the namespace"):
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)


def _map_ids(helper: int, go: int, base: int) -> None:
    """The mapper: waits for the helper's unshare, maps 0..65535 to base.., exits."""
    try:
        _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.read(go, 1) != b"x":
            os._exit(1)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{helper}/{name}", "w") as f:
                f.write(f"0 {base} {RANGE}\n")
    except OSError as exc:
        os.write(2, f"{MARK} writing the id maps: {exc.strerror}\n".encode())
        os._exit(1)
    os._exit(0)


def _init(opts: _Options, alive: int) -> None:
    """pid 1 of the sandbox: the new root, then the program; exits with its status."""
    try:
        with _step("prctl"):
            _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if select.select([alive], [], [], 0)[0]:  # EOF: the helper died before the prctl
            os._exit(HELPER_FAILED)
        _make_root()
        with _step("sethostname"):
            socket.sethostname("vmm-sandbox")
        child = os.fork()
        if child == 0:
            _exec(opts)
        os._exit(_reap_until(child))
    except _Failed as exc:
        os.write(2, f"{MARK} {exc}\n".encode())
        os._exit(HELPER_FAILED)


def _make_root() -> None:
    """Bind the tree (the cwd) under a private tmpfs, mount /proc, /dev, /run, pivot into it."""
    with _step("making mounts private"):
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    stage = next((d for d in ("/tmp", "/mnt", "/run") if os.path.isdir(d)), None)
    if stage is None:
        raise _Failed("no /tmp, /mnt or /run on the host to stage the sandbox's root")
    with _step("binding the tree"):
        _mount("vmm-sandbox", stage, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700")
        new_root = os.path.join(stage, "root")
        os.mkdir(new_root, 0o755)
        _mount(".", new_root, None, MS_BIND | MS_REC)
        _mount(None, new_root, None, MS_REMOUNT | MS_BIND | MS_NODEV)
        os.chdir(new_root)
    with _step("mounting /proc"):
        _mount("proc", _mountpoint("proc", 0o555), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_dev()
    with _step("mounting /run"):
        _mount("tmpfs", _mountpoint("run", 0o755), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    with _step("pivot_root"):
        _libc("pivot_root", b".", b".")
        _libc("umount2", b".", MNT_DETACH)
        os.chdir("/")


def _mountpoint(rel: str, mode: int) -> str:
    """``rel`` (relative to the new root) as a real directory: made if missing, else checked."""
    try:
        st = os.lstat(rel)
    except FileNotFoundError:
        os.mkdir(rel, mode)
        return rel
    if not stat.S_ISDIR(st.st_mode):
        raise _Failed(f"/{rel} of the tree is not a directory")
    return rel


def _make_dev() -> None:
    """A tmpfs /dev with only the harmless host device nodes bound in."""
    with _step("making /dev"):
        _mount("tmpfs", _mountpoint("dev", 0o755), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
        for name in DEVICES:
            node = f"dev/{name}"
            os.close(os.open(node, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            _mount(f"/dev/{name}", node, None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"dev/{name}")
        os.mkdir("dev/pts", 0o755)
        os.mkdir("dev/shm", 0o1777)
        os.chmod("dev/shm", 0o1777)


def _exec(opts: _Options) -> None:
    """The program, in its own session (a terminal's signals reach vmm, not the image)."""
    try:
        os.setsid()
        os.execvpe(opts.argv[0], opts.argv, opts.env)
    except OSError as exc:
        os.write(2, f"{opts.argv[0]}: {exc.strerror}\n".encode())
    os._exit(127)


def _reap_until(child: int) -> int:
    """Reap every orphan until ``child`` exits; its exit code."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return _exit_code(status)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
