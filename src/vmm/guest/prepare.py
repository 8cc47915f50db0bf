"""Imported Debian/Ubuntu trees made vmm guests: the missing packages through chroot + apt.

``vmm image import`` of a tree (directory, tarball, squashfs, OCI/Docker) whose
``/etc/os-release`` says Debian or Ubuntu (``ID`` or ``ID_LIKE``) and that lacks systemd or
sshd is prepared here, unless ``--as-is``:

1. /proc, /sys, /dev and /dev/pts are bind-mounted into the tree — always vmm's own temp copy
   (a directory source is copied first), never the user's directory; this is the one place vmm
   mounts anything, and it only mounts pseudo-filesystems. They are unmounted in ``finally``,
   also on Ctrl-C; ``sources.Staged.cleanup`` refuses to delete a tree with mounts below it.
2. A temporary resolv.conf from the host and a ``policy-rc.d`` that forbids starting services.
3. ``apt-get update`` and ``apt-get install --no-install-recommends`` of the vmm package set
   (``debootstrap.PACKAGES``), with ``DEBIAN_FRONTEND=noninteractive``.
4. The same preparation as ``vmm image build --debootstrap`` (``debootstrap.prepare_tree``:
   sshd, host key at first boot, serial getty, networkd, fstab, masked units, apt caches).
5. policy-rc.d removed (resolv.conf is replaced by ``prepare_tree``).

The tree's own apt sources are used: an Ubuntu tree needs Ubuntu's mirrors, and when they are
unreachable the apt failure is one error line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from vmm.errors import ValidationError, VmmError
from vmm.guest import debootstrap
from vmm.runner import Runner

Progress = Callable[[str], None]
DEBIAN_IDS = ("debian", "ubuntu")
POLICY_RC_D = "#!/bin/sh\n# vmm: no services are started while packages are installed\nexit 101\n"
PSEUDO_MOUNTS = ("proc", "sys", "dev", "dev/pts")


def os_release(tree: Path) -> dict[str, str]:
    """The tree's os-release (``etc/os-release``, else ``usr/lib/os-release``), parsed.

    A symbolic link is followed inside the tree only (an absolute target means the tree's root).
    """
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = _inside(tree, rel)
        if path is None or not path.is_file():
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep or key.startswith("#"):
                continue
            try:
                words = shlex.split(value)
            except ValueError:
                continue
            values[key] = words[0] if words else ""
        return values
    return {}


def _inside(tree: Path, rel: str, depth: int = 0) -> Path | None:
    """``tree/rel`` with symbolic links resolved inside the tree (None if it leaves it)."""
    cur = tree
    for part in [p for p in rel.split("/") if p not in ("", ".")]:
        if part == "..":
            cur = cur.parent if cur != tree else tree
            continue
        nxt = cur / part
        if nxt.is_symlink():
            if depth > 16:
                return None
            target = os.readlink(nxt)
            base = "" if target.startswith("/") else str(cur.relative_to(tree))
            resolved = _inside(tree, os.path.join(base, target), depth + 1)
            if resolved is None:
                return None
            nxt = resolved
        cur = nxt
    return cur


def is_debian_like(tree: Path) -> bool:
    info = os_release(tree)
    ids = [info.get("ID", "").lower(), *info.get("ID_LIKE", "").lower().split()]
    return any(i in DEBIAN_IDS for i in ids)


def distro_name(tree: Path) -> str:
    info = os_release(tree)
    return info.get("PRETTY_NAME") or info.get("ID") or "unknown (no /etc/os-release)"


def _real_dir(tree: Path, rel: str) -> Path:
    """``tree/rel`` as a real directory (made if missing); no component may be a symbolic link."""
    cur = tree
    for part in rel.split("/"):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            cur.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ValidationError(
                f"cannot prepare the imported tree: /{cur.relative_to(tree)} is not a directory "
                "(a symbolic link?)",
                hint="import it with --as-is, or fix the tree",
            )
    return cur


@contextlib.contextmanager
def pseudo_mounts(runner: Runner, tree: Path) -> Iterator[None]:
    """/proc, /sys, /dev, /dev/pts bind-mounted into ``tree``; all unmounted on the way out."""
    try:
        for rel in PSEUDO_MOUNTS:
            target = _real_dir(tree, rel)
            runner.run(["mount", "--bind", f"/{rel}", str(target)], timeout=30)
        yield
    finally:
        unmount_below(runner, tree)


def unmount_below(runner: Runner, tree: Path) -> None:
    """Unmount everything at or below ``tree`` (deepest first; lazily if busy)."""
    for target in debootstrap.mounts_below(tree):
        done = runner.run(["umount", target], check=False, timeout=60)
        if done.returncode != 0:
            runner.run(["umount", "-l", target], check=False, timeout=60)
    left = debootstrap.mounts_below(tree)
    if left:
        raise VmmError(f"could not unmount {', '.join(left)}", hint="umount them by hand")


def _apt(runner: Runner, tree: Path, *args: str, timeout: float, after: str = "") -> str:
    """apt-get ARGS in the tree; its last error line (``""`` if none). A failure raises, naming
    ``after`` (the update's error) when the command itself says nothing clearer."""
    argv = ["chroot", str(tree), "env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8",
            "apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold", *args]
    result = runner.run(argv, check=False, timeout=timeout)
    out = (result.stdout + "\n" + result.stderr).splitlines()
    errors = [  # an "Err:" line gives the URL, the indented line after it the reason
        ln.strip() + (" " + out[i + 1].strip() if ln.startswith("Err:") and i + 1 < len(out)
                      and out[i + 1][:1].isspace() else "")
        for i, ln in enumerate(out) if ln.startswith(("E:", "Err:"))
    ]
    if result.returncode == 0:
        # apt-get update exits 0 when a source is unreachable; install then says why it failed
        return errors[-1] if errors else ""
    line = errors[-1] if errors else ""
    if after and (not line or any(w in line for w in ("locate package", "candidate", "fetch"))):
        line = after  # the packages are unknown because the index could not be downloaded
    line = line or next((ln.strip() for ln in reversed(out) if ln.strip()), "")
    raise VmmError(
        f"apt-get {args[0]} in the imported tree failed: {line}",
        hint="the tree's own apt sources are used (an Ubuntu tree needs Ubuntu's mirrors); "
        "install systemd-sysv and openssh-server in the image yourself, or import it with --as-is",
    )


def prepare_imported(
    runner: Runner,
    tree: Path,
    *,
    packages: tuple[str, ...] = debootstrap.PACKAGES,
    progress: Progress = debootstrap._stderr,
) -> None:
    """Install ``packages`` into the Debian/Ubuntu ``tree`` and prepare it as vmm images are."""
    if runner.which("chroot") is None:
        raise VmmError("chroot is not installed", hint="apt-get install coreutils")
    etc = _real_dir(tree, "etc")
    sbin = _real_dir(tree, "usr/sbin")
    policy = sbin / "policy-rc.d"
    resolv = etc / "resolv.conf"
    had_policy = os.path.lexists(policy)
    try:
        with pseudo_mounts(runner, tree):
            if not had_policy:
                policy.write_text(POLICY_RC_D)
                os.chmod(policy, 0o755)
            if os.path.lexists(resolv):
                resolv.unlink()  # may be a link to /run/..., never written through
            host = Path("/etc/resolv.conf")
            resolv.write_text(host.read_text() if host.exists() else "")
            progress(f"installing {', '.join(packages)} into the imported tree with apt "
                     "(a minute or more)")
            update_error = _apt(runner, tree, "update", timeout=900)
            _apt(runner, tree, "install", "--no-install-recommends", *packages, timeout=3600,
                 after=update_error)
            progress("preparing the tree for vmm (sshd, serial console, networkd, fstab)")
            debootstrap.prepare_tree(runner, tree)
    finally:
        if not had_policy:
            with contextlib.suppress(FileNotFoundError):
                policy.unlink()
