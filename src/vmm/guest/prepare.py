"""Imported Debian/Ubuntu trees made vmm guests: the missing packages with apt, in a sandbox.

``vmm image import`` of a tree (directory, tarball, squashfs, OCI/Docker) whose
``/etc/os-release`` says Debian or Ubuntu (``ID`` or ``ID_LIKE``) and that lacks systemd or
sshd is prepared here, unless ``--as-is``. The tree is always vmm's own temp copy (a directory
source is copied first), never the user's directory, and its programs are the image's: they
run only in ``vmm.guest.sandbox`` (private user/mount/pid/network namespaces, the tree as
root, no host filesystem), never as the host's root, and nothing is mounted on the host.

1. A ``policy-rc.d`` that forbids starting services (written from the host, links inside the
   tree resolved as the guest would, never followed out of it).
2. ``apt-get update`` and ``apt-get install --no-install-recommends`` of the vmm package set
   (``debootstrap.PACKAGES``), with ``DEBIAN_FRONTEND=noninteractive``, downloading through
   vmm's proxy (the sandbox has no other network).
3. The same preparation as ``vmm image build --debootstrap`` (``debootstrap.prepare_tree``:
   sshd, host key at first boot, serial getty, networkd, fstab, masked units, apt caches).
4. policy-rc.d removed.

The tree's own apt sources are used: an Ubuntu tree needs Ubuntu's mirrors, and when they are
unreachable the apt failure is one error line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

from vmm.errors import ValidationError, VmmError
from vmm.guest import debootstrap, sandbox, treefiles
from vmm.guest.progress import Progress, quiet
from vmm.runner import Runner

DEBIAN_IDS = ("debian", "ubuntu")
POLICY_RC_D = "#!/bin/sh\n# vmm: no services are started while packages are installed\nexit 101\n"
POLICY = "usr/sbin/policy-rc.d"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}


def os_release(tree: Path) -> dict[str, str]:
    """The tree's os-release (``etc/os-release``, else ``usr/lib/os-release``), parsed.

    A symbolic link is followed inside the tree only (an absolute target means the tree's root).
    """
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            path = treefiles.resolve(tree, rel)
        except ValidationError:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        return _parse_os_release(text)
    return {}


def _parse_os_release(text: str) -> dict[str, str]:
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


def is_debian_like(tree: Path) -> bool:
    info = os_release(tree)
    ids = [info.get("ID", "").lower(), *info.get("ID_LIKE", "").lower().split()]
    return any(i in DEBIAN_IDS for i in ids)


def distro_name(tree: Path) -> str:
    info = os_release(tree)
    return info.get("PRETTY_NAME") or info.get("ID") or "unknown (no /etc/os-release)"


def _apt(box: sandbox.Sandbox, *args: str, timeout: float, after: str = "") -> str:
    """apt-get ARGS in the sandboxed tree; its last error line (``""`` if none). A failure
    raises, naming ``after`` (the update's error) when the command itself says nothing clearer."""
    argv = ["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold", *box.apt_options(), *args]
    result = box.run(argv, env=APT_ENV, check=False, timeout=timeout)
    out = (result.stdout + "\n" + result.stderr).splitlines()
    errors = [  # an "Err:" line gives the URL, the indented line after it the reason
        ln.strip() + (" " + out[i + 1].strip() if ln.startswith("Err:") and i + 1 < len(out)
                      and out[i + 1][:1].isspace() else "")
        for i, ln in enumerate(out) if ln.startswith(("E:", "Err:"))
    ]
    # "Failed to fetch URL  REASON" says more than what apt concludes from it ("not signed")
    fetch = [e for e in errors if "Failed to fetch" in e]
    line = (fetch or errors or [""])[-1]
    if result.returncode == 0:
        # apt-get update exits 0 when a source is unreachable; install then says why it failed
        return line
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
    progress: Progress = quiet,
) -> None:
    """Install ``packages`` into the Debian/Ubuntu ``tree`` and prepare it as vmm images are."""
    had_policy = os.path.lexists(treefiles.resolve(tree, POLICY, follow_last=False))
    if not had_policy:
        treefiles.write_file(tree, POLICY, POLICY_RC_D, 0o755)
    try:
        progress(f"installing {', '.join(packages)} into the imported tree with apt "
                 "(a minute or more)")
        with sandbox.sandbox(runner, tree, network=True) as box:
            update_error = _apt(box, "update", timeout=900)
            _apt(box, "install", "--no-install-recommends", *packages, timeout=3600,
                 after=update_error)
        progress("preparing the tree for vmm (sshd, serial console, networkd, fstab)")
        debootstrap.prepare_tree(runner, tree)
    finally:
        if not had_policy:
            with contextlib.suppress(OSError, ValidationError):
                treefiles.remove(tree, POLICY)
