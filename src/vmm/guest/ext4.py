"""ext4 images edited in user space: copy, grow, write files — never mounted on the host.

Files go in with one ``debugfs -w -f`` script per edit (a single process however many files),
so guest disks are changed without loop devices and the host kernel never parses a filesystem
a guest wrote.

The e2fsprogs tools that parse a guest-written filesystem (``e2fsck``, ``resize2fs``,
``debugfs``) do not run as root: a crafted filesystem that exploits a parser bug gets an
unprivileged uid (``TOOL_UID``) with no capabilities and ``no_new_privs``, and the one file it
may write is the image itself, which the guest controls anyway. For the duration of the call
the image is owned by that uid and opened through a file descriptor vmm passes in
(``/proc/self/fd/N``), so the tool needs no access to vmm's root-only directories.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from vmm.errors import CommandError, ValidationError, VmmError
from vmm.record import Value
from vmm.runner import Result, Runner

MiB = 1024 * 1024
# The uid the filesystem tools run as (see the module docstring): no account, no files of
# its own outside what vmm hands it for one call. Debian leaves 65533 unassigned (65534 is
# nobody, whose files other services may own).
TOOL_UID = 65533

# debugfs keeps going after a failed command and exits 0, so its stderr is the error channel.
# Its ``mkdir`` of an existing directory corrupts the filesystem (e2fsprogs 1.47.0: the inode
# is allocated before the name clash is found), so scripts only ever create missing directories
# and remove existing files: existence is checked first, in one read-only pass.
_NOT_FOUND = re.compile(r"^(/\S*): File not found by ext2_lookup")


class GuestFile(Value):
    """A file to put into a guest image; ``symlink_to`` makes it a symbolic link instead.
    A frozen value (equal, hashable, read-only attributes): it is on every start's path."""

    __slots__ = ("path", "content", "mode", "uid", "gid", "symlink_to")
    path: str
    content: bytes
    mode: int
    uid: int
    gid: int
    symlink_to: str | None

    def __init__(
        self,
        path: str,
        content: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        symlink_to: str | None = None,
    ) -> None:
        self._init(path, content, mode, uid, gid, symlink_to)


def is_ext4(path: Path) -> bool:
    """True when ``path`` holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080)."""
    try:
        with path.open("rb") as f:
            f.seek(1080)
            return f.read(2) == b"\x53\xef"
    except OSError:
        return False


class ToolCall:
    """How to run one tool on an image as ``TOOL_UID`` (see ``as_tool_user``)."""

    def __init__(self, prefix: list[str], image: str, dirs: list[str], fds: tuple[int, ...]):
        self.prefix = prefix  # setpriv ... --
        self.image = image  # the path the tool opens the image by
        self.dirs = dirs  # the paths it reaches the handed-over directories by
        self.fds = fds  # to pass to the child


@contextlib.contextmanager
def as_tool_user(
    image: Path, *, readable: tuple[Path, ...] = (), dirs: tuple[Path, ...] = ()
) -> Iterator[ToolCall]:
    """Hand ``image`` (and ``readable`` files, and writable ``dirs``) to ``TOOL_UID`` for one
    call, reachable through passed file descriptors (``/proc/self/fd/N``: no path through
    vmm's root-only directories), and give them back afterwards. Without root there is
    nothing to drop: the tool runs as the caller on the plain paths."""
    if os.geteuid() != 0:
        yield ToolCall([], str(image), [str(d) for d in dirs], ())
        return
    fds: list[int] = []
    lent: list[tuple[Path, os.stat_result]] = []
    try:
        fd = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        fds.append(fd)
        lent.append((image, os.fstat(fd)))
        os.fchown(fd, TOOL_UID, TOOL_UID)
        dir_paths = []
        for d in dirs:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fds.append(dfd)
            dir_paths.append(f"/proc/self/fd/{dfd}")
        for p in (*readable, *dirs):
            lent.append((p, os.lstat(p)))
            os.lchown(p, TOOL_UID, TOOL_UID)
        prefix = [
            "setpriv", f"--reuid={TOOL_UID}", f"--regid={TOOL_UID}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        ]  # fmt: skip
        yield ToolCall(prefix, f"/proc/self/fd/{fd}", dir_paths, tuple(fds))
    finally:
        for p, st in lent:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(p, st.st_uid, st.st_gid)
        for f in fds:
            os.close(f)


def run_tool(
    runner: Runner,
    image: Path,
    argv: Callable[[ToolCall], list[str]],
    *,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
    readable: tuple[Path, ...] = (),
    dirs: tuple[Path, ...] = (),
) -> Result:
    """Run an e2fsprogs tool on ``image`` without privileges; ``argv(call)`` builds its
    command line from the paths in ``call`` (``call.image``, ``call.dirs``)."""
    with as_tool_user(image, readable=readable, dirs=dirs) as call:
        return runner.run(
            [*call.prefix, *argv(call)], check=check, timeout=timeout, input=input,
            pass_fds=call.fds, hint="apt-get install e2fsprogs util-linux",
        )  # fmt: skip


def superblock_state(image: Path) -> tuple[int, int]:
    """``(s_state, s_feature_incompat)`` of the ext4 superblock."""
    import struct

    with image.open("rb") as f:
        f.seek(1024)
        sb = f.read(0x64)
    if len(sb) < 0x64:
        raise VmmError(f"{image} is not an ext4 image (its superblock is cut off)")
    (state,) = struct.unpack_from("<H", sb, 0x3A)
    (incompat,) = struct.unpack_from("<I", sb, 0x60)
    return state, incompat


def needs_repair(image: Path) -> bool:
    """The filesystem was not unmounted cleanly (its journal holds changes not yet in place,
    or it is not marked clean) or has recorded errors: editing it now would work on stale
    metadata — the guest replays the journal at its next mount, over vmm's edits."""
    state, incompat = superblock_state(image)
    valid, errors, recover = state & 0x1, state & 0x2, incompat & 0x4
    return bool(recover or errors or not valid)


def make_consistent(runner: Runner, image: Path, *, what: str) -> bool:
    """Before vmm edits or reads a guest-written filesystem: replay its journal and fix what
    ``e2fsck -p`` (preen) fixes safely. Returns True when it had to. Refuses with a clear
    error when the damage needs decisions (``e2fsck -p`` exit 4 or more): vmm never edits a
    filesystem in that state."""
    if not needs_repair(image):
        return False
    result = run_tool(runner, image, lambda c: ["e2fsck", "-p", c.image], check=False, timeout=1800)
    if result.returncode >= 4:
        raise VmmError(
            f"{what} ({image}) has errors that need a manual repair (e2fsck -p exit "
            f"{result.returncode}); vmm did not change it",
            details=(result.stdout + result.stderr).strip() or None,
            hint=f"repair it with 'e2fsck -f {image}' (it asks before each fix), then try again",
        )
    return True


def copy_sparse(runner: Runner, src: Path, dst: Path) -> None:
    """Copy keeping holes, and share blocks (reflink) where the filesystem can."""
    runner.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], timeout=1800)


def grow(runner: Runner, image: Path, size_mb: int) -> None:
    """Grow the file to ``size_mb`` and the filesystem to fill it; never shrinks."""
    current = image.stat().st_size
    target = size_mb * MiB
    if target < current:
        raise ValidationError(
            f"disk size {size_mb} MB is smaller than the image ({current // MiB} MB)"
        )
    if target == current:
        return
    os.truncate(image, target)
    result = run_tool(runner, image, lambda c: ["e2fsck", "-f", "-p", c.image], check=False, timeout=600)
    if result.returncode >= 4:
        raise CommandError(result.argv, result.returncode, result.stderr or result.stdout)
    run_tool(runner, image, lambda c: ["resize2fs", c.image], timeout=600)


def _parents(path: str) -> list[str]:
    out = []
    d = posixpath.dirname(path)
    while d not in ("/", ""):
        out.append(d)
        d = posixpath.dirname(d)
    return list(reversed(out))


def debugfs_script(files: list[GuestFile], local_names: list[str], existing: set[str]) -> str:
    """The debugfs commands that install ``files`` (pure: tested from data).

    ``existing`` are the paths (directories and targets) already in the image.
    """
    lines: list[str] = []
    made: set[str] = set(existing)
    for f, local in zip(files, local_names, strict=True):
        check_guest_path(f.path)
        for d in _parents(f.path):
            if d not in made:
                lines.append(f"mkdir {d}")
                made.add(d)
        if f.path in existing:
            lines.append(f"rm {f.path}")
        if f.symlink_to is not None:
            lines.append(f"symlink {f.path} {f.symlink_to}")
            continue
        lines.append(f"write {local} {f.path}")
        lines.append(f"sif {f.path} mode 0{0o100000 | f.mode:o}")
        lines.append(f"sif {f.path} uid {f.uid}")
        lines.append(f"sif {f.path} gid {f.gid}")
    return "\n".join(lines) + "\n"


def check_guest_path(path: str) -> None:
    if not path.startswith("/") or any(c in path for c in ' "\n\t') or "/../" in path + "/":
        raise ValidationError(f"invalid guest path {path!r}")


def debugfs_errors(stderr: str) -> list[str]:
    """debugfs exits 0 whatever happens: every stderr line but its banner is an error."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]


def run_debugfs(
    runner: Runner,
    image: Path,
    commands: str,
    *,
    write: bool,
    timeout: float = 120,
    readable: tuple[Path, ...] = (),
) -> Result:
    """Run a debugfs command script against ``image`` (read-only unless ``write``); the
    script goes in on stdin (``-f -``)."""
    return run_tool(
        runner, image, lambda c: ["debugfs", *(["-w"] if write else []), "-f", "-", c.image],
        timeout=timeout, input=commands, readable=readable,
    )  # fmt: skip


def run_debugfs_checked(
    runner: Runner, image: Path, commands: str, *, what: str, readable: tuple[Path, ...] = ()
) -> None:
    """A writing debugfs script whose every command must succeed (stderr is its error channel)."""
    errors = debugfs_errors(run_debugfs(runner, image, commands, write=True, readable=readable).stderr)
    if errors:
        raise VmmError(f"could not {what} in {image}: {errors[0]}", details="\n".join(errors))


class Existing(set[str]):
    """The paths ``existing`` found (the set itself), and every path it looked for
    (``checked``): ``write_files`` reuses a result only for paths that were looked for, since
    a path missing from the set because nobody asked is not a path known to be absent."""

    __slots__ = ("checked",)

    def __init__(self, found: Iterable[str] = (), checked: Iterable[str] = ()) -> None:
        super().__init__(found)
        self.checked: frozenset[str] = frozenset(checked) | self


def existing(runner: Runner, image: Path, paths: Iterable[str]) -> Existing:
    """Which of ``paths`` exist in the image: one read-only debugfs session for all of them.

    A path counts as absent only when debugfs says exactly that of it (``File not found by
    ext2_lookup``, naming the path vmm asked for); any other answer counts as present, so a
    damaged or crafted filesystem can make vmm skip a ``mkdir`` (the write then fails), never
    make it ``mkdir`` over an existing directory (which corrupts the filesystem)."""
    wanted = list(dict.fromkeys(paths))
    if not wanted:
        return Existing()
    for p in wanted:
        check_guest_path(p)
    result = run_debugfs(runner, image, "".join(f"stat {p}\n" for p in wanted), write=False)
    missing = set()
    for line in result.stderr.splitlines():
        m = _NOT_FOUND.match(line)
        if m:
            missing.add(m.group(1))
    return Existing((p for p in wanted if p not in missing), wanted)




def paths_to_check(files: Iterable[GuestFile]) -> list[str]:
    """What ``write_files`` must know about before it writes ``files``: each file's parent
    directories and the file itself (sorted, no duplicates). Pass them (with anything else
    to look up in the same session) to ``existing``, and its result to ``write_files``."""
    files = list(files)
    return sorted({d for f in files for d in _parents(f.path)} | {f.path for f in files})


@contextlib.contextmanager
def _scratch_dir(prefix: str) -> Iterator[str]:
    """A new private directory under $TMPDIR (or /tmp), named with the pid, removed afterwards:
    ``tempfile.TemporaryDirectory`` without importing ``tempfile`` (and ``random``) at every
    start."""
    base = os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, f"{prefix}-{os.getpid()}-{os.urandom(8).hex()}")
    os.mkdir(path, 0o700)  # fails if the name exists: never a directory someone else made
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def write_files(
    runner: Runner, image: Path, files: list[GuestFile], *, known: Existing | None = None
) -> None:
    """Install ``files`` into the ext4 ``image`` (creating parent directories).

    One debugfs session writes everything; one read-only session before it looks up which
    parents and files exist, unless ``known`` (an ``existing()`` result for this image, taken
    after its last change) already covers ``paths_to_check(files)``.
    """
    if not files:
        return
    candidates = paths_to_check(files)
    present: set[str] = set()
    if known is not None:
        present = {p for p in candidates if p in known}
        candidates = [p for p in candidates if p not in known.checked]
    if candidates:
        present |= existing(runner, image, candidates)
    with _scratch_dir("vmm-debugfs") as tmp:
        names = []
        for i, f in enumerate(files):
            local = os.path.join(tmp, f"f{i}")
            with open(local, "wb") as out:
                out.write(f.content)
            names.append(local)
        script = debugfs_script(files, names, present)
        lent = (Path(tmp), *(Path(n) for n in names))  # what debugfs reads, for this call
        run_debugfs_checked(runner, image, script, what="write files", readable=lent)


def set_dir_mode(runner: Runner, image: Path, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
    cmds = f"sif {path} mode 0{0o040000 | mode:o}\nsif {path} uid {uid}\nsif {path} gid {gid}\n"
    run_debugfs_checked(runner, image, cmds, what=f"set the mode of {path}")


def path_exists(runner: Runner, image: Path, path: str) -> bool:
    check_guest_path(path)
    result = run_tool(runner, image, lambda c: ["debugfs", "-R", f"stat {path}", c.image], check=False, timeout=60)
    return result.returncode == 0 and "Inode:" in result.stdout


def read_file(runner: Runner, image: Path, path: str) -> str | None:
    check_guest_path(path)
    result = run_tool(runner, image, lambda c: ["debugfs", "-R", f"cat {path}", c.image], check=False, timeout=60)
    if "File not found" in result.stderr:
        return None
    return result.stdout
