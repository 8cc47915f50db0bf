"""Running an image's programs without host privileges.

An imported tree is untrusted: its ``apt-get``, ``dpkg``, shell and maintainer scripts are
whatever the tarball's author put there. vmm runs as root, so they must never run as the host's
root, never see the host's filesystem, processes or devices, and never outlive vmm.

The sandbox (``sandbox()`` + ``Sandbox.run``)
----------------------------------------------
vmm starts its own helper (``python3 -I -c ... inner_main`` of ``vmm.guest.nsinit``: vmm's
code, not the tree's) with the Runner. Still host root and single-threaded, the helper

1. arms ``PR_SET_PDEATHSIG=SIGKILL`` (it dies with vmm, also when vmm is SIGKILLed) and changes
   into the tree (the staging path is vmm's own, so it is walked as host root);
2. joins vmm's private network namespace (``vmm.guest.aptproxy``), or gets a new empty one;
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

The private network with vmm's proxy is ``vmm.guest.aptproxy``; the host's edits of a tree
(links resolved inside it, never followed out) are ``vmm.guest.treefiles``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import CommandError, ValidationError, VmmError
from vmm.guest import aptproxy
from vmm.guest.nsinit import HELPER_FAILED, MARK, RANGE
from vmm.runner import Result, Runner

FIRST_BASE = 0x6F000000  # the top of systemd's container range (0x80000..0x6FFFFFFF)
SLOTS = 256
LOCK_DIR = Path("/run/vmm/sandbox")
GONE_TIMEOUT = 30.0
CAP_XATTR = "security.capability"
VFS_CAP_REVISION_2, VFS_CAP_REVISION_3 = 0x02000000, 0x03000000

# The helper's first lines: vmm's own package directory first on sys.path (-I drops
# PYTHONPATH and the current directory, which is the untrusted tree).
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from vmm.guest.nsinit import inner_main; inner_main(sys.argv[2:])"
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
        with aptproxy.network(network) as (netns, proxy):
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
