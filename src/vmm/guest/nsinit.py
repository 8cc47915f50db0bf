"""Inside the sandbox: vmm's helper and the sandbox's pid 1 (see ``vmm.guest.sandbox``).

``Sandbox.run`` starts ``python3 -I -c ... inner_main`` (this module: stdlib only, so the
helper imports nothing else of vmm). Still host root and single-threaded, the helper arms the
parent-death signal, joins or makes the network namespace, unshares the others while a forked
mapper writes the id maps, and forks pid 1, which builds the new root (the tree bound
``nodev``, a fresh ``/proc``, a tmpfs ``/dev`` with a few harmless nodes, a tmpfs ``/run``),
``pivot_root``s into it and execs the program. A failure of the set-up itself is reported on
stderr after ``MARK`` with the exit status ``HELPER_FAILED``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

RANGE = 65536  # ids 0..65535 of the tree: every Debian user, nobody (65534) included
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HELPER_FAILED = 125  # the helper's exit status when it could not set the sandbox up
MARK = "vmm-sandbox:"

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


class _Failed(Exception):
    """The helper could not set the sandbox up: what it was doing, and why."""


def libc_call(name: str, *args: object) -> int:
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

    libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


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


def inner_main(args: list[str]) -> None:
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
                libc_call("setns", fd, CLONE_NEWNET)
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
        libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
            libc_call("unshare", flags)
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
        libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
            libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
        libc_call("pivot_root", b".", b".")
        libc_call("umount2", b".", MNT_DETACH)
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
