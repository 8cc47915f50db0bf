"""A vmm guest root filesystem from debootstrap, prepared for vmm.

The one recipe for a Debian guest tree: ``vmm image build NAME --debootstrap SUITE`` uses it,
and so does ``scripts/build-test-guest.sh`` (``python3 -m vmm.guest.debootstrap tree SUITE DIR``),
which is how the tests and CI get their rootfs.

Preparation (``prepare_tree``): hostname/hosts, fstab (``/dev/vda /``), resolv.conf from the
kernel's ``ip=`` (``/proc/net/pnp``), root without password (keys only, injected by vmm), sshd
keys-only with an ed25519 host key made at first boot (never shared between VMs), a serial getty
on ttyS0, systemd-networkd enabled, units that only cost CPU in a microVM masked, an empty
machine-id, apt caches emptied. The tree's own programs (usermod, systemctl, dpkg-query,
apt-get) run in ``vmm.guest.sandbox``, never as the host's root, and the host's edits of the
tree never follow a symbolic link out of it: an imported tree gets the same preparation.
debootstrap itself still runs as root (it chroots into the tree it is building from the
mirror's signed packages).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from vmm.errors import CommandError, ValidationError, VmmError
from vmm.guest import sandbox, treefiles
from vmm.guest.progress import Progress, quiet
from vmm.runner import Runner

DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd", "systemd-sysv", "openssh-server", "iproute2", "iputils-ping", "udev", "kmod",
    "procps", "ca-certificates",
)
HOSTNAME = "vmm-guest"
SUITE_RE = re.compile(r"[a-z][a-z0-9.-]{1,31}")
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
MIRROR_RE = re.compile(r"(https?|file)://\S+")

SSHD_CONFIG = """\
# vmm guest
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
"""

HOSTKEY_UNIT = """\
[Unit]
Description=Generate this VM's SSH host key
DefaultDependencies=no
After=local-fs.target
Before=ssh.service sshd.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=ssh.service
"""

# Things that only cost CPU in a short-lived guest (under TCG one emulated CPU runs all of
# it), or could prompt on the console (firstboot with an empty machine-id). Masked, so that
# presets cannot bring them back. vmm kernels have no modules, so modprobe@/modules-load do
# nothing; getty-static starts gettys on tty2-6 because there is no logind.
MASKED_UNITS = (
    "getty@tty1.service", "getty-static.service", "systemd-firstboot.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "systemd-pstore.service",
    "modprobe@.service", "systemd-modules-load.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
)

def check_inputs(suite: str, mirror: str, packages: Sequence[str]) -> None:
    if not SUITE_RE.fullmatch(suite):
        raise ValidationError(f"invalid suite {suite!r}", hint="e.g. bookworm, trixie, jammy")
    if not MIRROR_RE.fullmatch(mirror):
        raise ValidationError(f"invalid mirror {mirror!r}", hint=f"a URL such as {DEFAULT_MIRROR}")
    for p in packages:
        if not PACKAGE_RE.fullmatch(p):
            raise ValidationError(f"invalid package name {p!r} in --packages")


def debootstrap(
    runner: Runner,
    suite: str,
    root: Path,
    *,
    mirror: str = DEFAULT_MIRROR,
    packages: Sequence[str] = (),
    progress: Progress = quiet,
    output: Progress | None = None,
) -> None:
    """debootstrap --variant=minbase with the vmm package set (+ ``packages``) into ``root``.

    ``output`` gets debootstrap's own lines as they come (``I: Retrieving ...``)."""
    check_inputs(suite, mirror, packages)
    if runner.which("debootstrap") is None:
        raise VmmError("debootstrap is not installed", hint="apt-get install debootstrap")
    include = ",".join(dict.fromkeys([*PACKAGES, *packages]))
    argv = ["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root), mirror]
    progress(f"debootstrap {suite} from {mirror} (about a minute)")
    errors: list[str] = []
    last = [""]

    def on_line(line: str) -> None:
        if line.startswith("E:"):
            errors.append(line.strip())
        if line.strip():
            last[0] = line.strip()
        if output is not None:
            output(line)

    try:
        runner.stream(argv, on_line, timeout=3600)
    except CommandError as exc:
        if exc.returncode is None:  # timed out
            raise
        raise VmmError(
            f"debootstrap {suite} failed (exit {exc.returncode}): {(errors or last)[-1]}",
            hint=f"check the suite name and the mirror ({mirror})",
        ) from None


def prepare_tree(runner: Runner, root: Path, *, hostname: str = HOSTNAME) -> str:
    """Make a debootstrapped tree a vmm guest; returns its package list (``name version``).

    The host edits files (``vmm.guest.treefiles``: links resolved inside the tree, never
    followed out of it); the tree's own programs (usermod, systemctl, dpkg-query,
    apt-get) run only in the sandbox."""
    if not any(treefiles.exists(root, p) for p in ("usr/bin/systemctl", "bin/systemctl")):
        raise ValidationError(f"{root} has no systemd (systemctl); cannot prepare it")
    _write_identity(root, hostname)
    _write_ssh(root)
    # A fresh machine-id per VM (systemd creates and commits it at boot).
    treefiles.write_file(root, "etc/machine-id", "")
    treefiles.remove(root, "var/lib/dbus/machine-id")
    with sandbox.sandbox(runner, root) as box:
        packages = _configure_inside(box)
    for rel_dir, pattern in CLEANED:
        treefiles.remove_glob(root, rel_dir, pattern)
    treefiles.make_dir(root, "var/lib/apt/lists/partial")
    return packages


# Emptied after the packages are in: apt's lists and caches, logs, temp files.
CLEANED = (
    ("var/lib/apt/lists", "*"), ("var/cache/apt", "*.bin"), ("var/cache/debconf", "*-old"),
    ("var/lib/dpkg", "*-old"), ("var/log", "*.log"), ("var/log/apt", "*"), ("tmp", "*"),
    ("var/tmp", "*"),
)


def _write_identity(root: Path, hostname: str) -> None:
    """Hostname, hosts, fstab, locale, resolver: vmm sets hostname, keys and network per VM."""
    treefiles.write_file(root, "etc/hostname", hostname + "\n")
    treefiles.write_file(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                         "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    treefiles.write_file(root, "etc/fstab", "/dev/vda / ext4 defaults 0 1\n")
    # minbase has no locales; C.UTF-8 is built into libc (and silences pam_env).
    treefiles.write_file(root, "etc/default/locale", "LANG=C.UTF-8\n")
    # debootstrap copied the build host's resolver. DNS servers given with the kernel's ip=
    # land in /proc/net/pnp (resolv.conf syntax).
    treefiles.symlink(root, "etc/resolv.conf", "/proc/net/pnp")


def _write_ssh(root: Path) -> None:
    """sshd keys only; host keys made at first boot, never shared between VMs. Only ed25519,
    because RSA key generation takes seconds under TCG. root's keys are injected by vmm."""
    ssh_dir = treefiles.make_dir(root, "root/.ssh", 0o700)
    os.chown(ssh_dir, 0, 0, follow_symlinks=False)
    os.chmod(ssh_dir, 0o700)
    treefiles.remove(root, "root/.ssh/authorized_keys")
    treefiles.remove_glob(root, "etc/ssh", "ssh_host_*")
    treefiles.write_file(root, "etc/ssh/sshd_config.d/00-vmm.conf", SSHD_CONFIG)
    treefiles.write_file(root, "etc/systemd/system/vmm-ssh-hostkeys.service", HOSTKEY_UNIT)


def _configure_inside(box: sandbox.Sandbox) -> str:
    """The steps that need the tree's own programs; returns the package list."""
    env = {"SYSTEMD_OFFLINE": "1"}

    def inside(*argv: str) -> str:
        return box.run(argv, env=env, timeout=600).stdout

    # root: no password can match ('*'); logins only with the keys vmm injects.
    inside("usermod", "-p", "*", "root")
    inside("systemctl", "--quiet", "enable", "vmm-ssh-hostkeys.service", "ssh.service")
    # Console and network: a serial getty on ttyS0; systemd-networkd applies the .network
    # file vmm writes per VM (none baked in: the kernel's ip= works alone).
    inside("systemctl", "--quiet", "enable", "serial-getty@ttyS0.service",
           "systemd-networkd.service")
    for unit in MASKED_UNITS:
        box.run(["systemctl", "disable", "--quiet", unit], env=env, check=False)
    inside("systemctl", "mask", "--quiet", *MASKED_UNITS)
    packages = inside("dpkg-query", "-W", "-f=${Package} ${Version}\n")
    inside("apt-get", "clean")
    return packages


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def remove_tree(runner: Runner, path: Path) -> None:
    """rm -rf, after unmounting what an interrupted debootstrap left mounted (proc, sys)."""
    if not path.exists():
        return
    for target in mounts_below(path):
        runner.run(["umount", "-l", target], check=False)
    runner.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False, timeout=600)


def build_tree(
    runner: Runner,
    suite: str,
    root: Path,
    *,
    mirror: str = DEFAULT_MIRROR,
    packages: Sequence[str] = (),
    progress: Progress = quiet,
    output: Progress | None = None,
) -> str:
    """debootstrap + prepare; returns the package list."""
    debootstrap(runner, suite, root, mirror=mirror, packages=packages, progress=progress,
                output=output)
    progress("preparing the tree for vmm (sshd, serial console, networkd, fstab)")
    return prepare_tree(runner, root)


if __name__ == "__main__":  # scripts/build-test-guest.sh; the printing is in vmm.guest.buildmain
    from vmm.guest.buildmain import debootstrap_main

    sys.exit(debootstrap_main())
