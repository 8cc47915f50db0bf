"""The QEMU command line and guest kernel command line for a ``BootSpec`` (pure builders).

The machine is ``-M microvm`` (virtio-mmio, ELF vmlinux via PVH, ISA serial): the device model
Firecracker has, so one VM record boots on either engine. ACPI stays on because it is how a
microvm guest finds its virtio-mmio devices when the kernel lacks
``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`` (Firecracker's guest configs do), and how
``system_powerdown`` reaches the guest (the ACPI power button).

QEMU ids must start with a letter while Firecracker's drive and interface ids may start with a
digit or ``_``, so the QEMU ids are prefixed (``drive-<drive_id>``, ``net-<iface_id>``).
Values inside QEMU's ``key=value,...`` options have their commas doubled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmm.engines.base import BootSpec, Drive, Nic
from vmm.errors import ValidationError

# sun_path is 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
MACHINE = "microvm,x-option-roms=off,acpi=on,isa-serial=on,rtc=on"
CONSOLE_CHARDEV = "console"
QMP_CHARDEV = "qmp"
RNG_OBJECT = "rng0"
ROOT_DEVICE = "/dev/vda"
# Added to the guest command line under TCG unless the caller already set the key: the guest's
# early TSC calibration can hang under emulation, and mitigations only cost time there.
TCG_KERNEL_PARAMS = ("tsc_early_khz", "tsc", "mitigations")

_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_IFNAME_BAD = re.compile(r"[/:\s]")
_SEPARATOR = re.compile(r"(?:^|\s)--(?:\s|$)")


def qemu_drive_id(drive_id: str) -> str:
    """QEMU's id for a drive (``-drive id=``), also what QMP block commands take."""
    return f"drive-{drive_id}"


def qemu_netdev_id(iface_id: str) -> str:
    """QEMU's id for a NIC backend (``-netdev id=``)."""
    return f"net-{iface_id}"


def check_socket_path(path: Path, what: str) -> None:
    """Refuse a Unix socket path longer than AF_UNIX allows (QEMU would fail obscurely)."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ValidationError(
            f"{what} path is too long for a Unix socket ({size} bytes, at most {SUN_PATH_MAX})",
            details=str(path),
            hint="use a shorter data directory",
        )


def ordered_drives(drives: Iterable[Drive]) -> list[Drive]:
    """The root drive first (so the guest sees it as /dev/vda), then the others in order."""
    drives = list(drives)
    roots = [d for d in drives if d.root]
    if len(roots) > 1:
        raise ValidationError("more than one root drive: " + ", ".join(d.drive_id for d in roots))
    return roots + [d for d in drives if not d.root]


def _kernel_params(cmdline: str) -> str:
    """The part of a command line the kernel parses (before a ``--`` that starts init's args)."""
    match = _SEPARATOR.search(cmdline)
    return cmdline if match is None else cmdline[: match.start()]


def cmdline_keys(cmdline: str) -> set[str]:
    """The parameter names set on a kernel command line (``root`` for ``root=/dev/vda``)."""
    return {token.split("=", 1)[0] for token in _kernel_params(cmdline).split()}


def _insert_params(cmdline: str, params: Sequence[str]) -> str:
    if not params:
        return cmdline
    added = " ".join(params)
    match = _SEPARATOR.search(cmdline)
    if match is None:
        return f"{cmdline} {added}".strip()
    head, rest = cmdline[: match.start()].rstrip(), cmdline[match.start() :].lstrip()
    return f"{head} {added} {rest}".strip()


def build_cmdline(cmdline: str, *, root: Drive | None, accel: str, tsc_khz: int | None) -> str:
    """The guest kernel command line QEMU passes with ``-append``.

    Like Firecracker, add ``root=/dev/vda rw`` (``ro`` for a read-only root) when there is a root
    drive and the caller set no ``root=``. Under TCG add ``tsc_early_khz=<host kHz>
    tsc=reliable mitigations=off`` unless the caller set those keys (see TCG_KERNEL_PARAMS).
    ``console=`` is the caller's choice.
    """
    keys = cmdline_keys(cmdline)
    added: list[str] = []
    if root is not None and "root" not in keys:
        added += [f"root={ROOT_DEVICE}", "ro" if root.read_only else "rw"]
    if accel == "tcg":
        if tsc_khz is not None and "tsc_early_khz" not in keys:
            added.append(f"tsc_early_khz={tsc_khz}")
        if "tsc" not in keys:
            added.append("tsc=reliable")
        if "mitigations" not in keys:
            added.append("mitigations=off")
    return _insert_params(cmdline.strip(), added)


def _opt(value: str | Path) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are escaped by doubling."""
    return str(value).replace(",", ",,")


def _check_id(kind: str, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_]+", value):
        raise ValidationError(f"invalid {kind} {value!r}: use letters, digits and _")


def _drive_args(drive: Drive) -> list[str]:
    _check_id("drive id", drive.drive_id)
    qid = qemu_drive_id(drive.drive_id)
    opts = [f"id={qid}", f"file={_opt(drive.path)}", "format=raw", "if=none"]
    if drive.read_only:
        opts.append("readonly=on")
    opts.append("cache=writeback")
    return ["-drive", ",".join(opts), "-device", f"virtio-blk-device,drive={qid}"]


def _nic_args(nic: Nic) -> list[str]:
    _check_id("interface id", nic.iface_id)
    if not 0 < len(nic.tap) <= 15 or _IFNAME_BAD.search(nic.tap) or nic.tap in (".", ".."):
        raise ValidationError(f"invalid TAP device name {nic.tap!r}")
    if not _MAC.match(nic.mac):
        raise ValidationError(f"invalid MAC address {nic.mac!r} for {nic.iface_id}")
    qid = qemu_netdev_id(nic.iface_id)
    return [
        "-netdev",
        f"tap,id={qid},ifname={nic.tap},script=no,downscript=no",
        "-device",
        f"virtio-net-device,netdev={qid},mac={nic.mac.lower()}",
    ]


def _unique(kind: str, ids: Sequence[str]) -> None:
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValidationError(f"duplicate {kind}: " + ", ".join(dupes))


def build_argv(spec: BootSpec, *, binary: str, accel: str, tsc_khz: int | None) -> list[str]:
    """The full ``qemu-system-x86_64`` argv for ``spec`` under ``accel`` ("kvm" or "tcg").

    No default devices, no user config, no display, and ``-no-reboot`` so a guest reboot ends
    the process (as Firecracker does). The serial console is a socket server a later client can
    attach to, logged to ``paths.console_log`` whether or not anyone is attached; QMP is a second
    socket server. Guest entropy comes from the host's /dev/urandom through virtio-rng (guests
    under TCG starve for entropy otherwise).
    """
    if accel not in ("kvm", "tcg"):
        raise ValidationError(f"unknown accelerator {accel!r}", hint="use 'kvm' or 'tcg'")
    paths = spec.paths
    check_socket_path(paths.api_socket, "QMP socket")
    check_socket_path(paths.console_socket, "console socket")
    drives = ordered_drives(spec.drives)
    _unique("drive id", [d.drive_id for d in drives])
    _unique("interface id", [n.iface_id for n in spec.nics])
    _unique("TAP device", [n.tap for n in spec.nics])
    root = drives[0] if drives and drives[0].root else None

    argv = [
        binary,
        "-name", _opt(spec.name),
        "-M", MACHINE,
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", f"{spec.memory_mb}M",
        "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(spec.kernel),
    ]  # fmt: skip
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    argv += ["-append", build_cmdline(spec.cmdline, root=root, accel=accel, tsc_khz=tsc_khz)]
    argv += [
        "-object", f"rng-random,id={RNG_OBJECT},filename=/dev/urandom",
        "-device", f"virtio-rng-device,rng={RNG_OBJECT}",
        # The keyboard controller Firecracker also emulates: a guest reboot with reboot=k ends
        # QEMU in ~2.5 s instead of ~4 s (microvm has none by default).
        "-device", "i8042",
    ]  # fmt: skip
    for drive in drives:
        argv += _drive_args(drive)
    for nic in spec.nics:
        argv += _nic_args(nic)
    argv += [
        "-chardev",
        f"socket,id={CONSOLE_CHARDEV},path={_opt(paths.console_socket)},server=on,wait=off,"
        f"logfile={_opt(paths.console_log)},logappend=on",
        "-serial", f"chardev:{CONSOLE_CHARDEV}",
        "-chardev",
        f"socket,id={QMP_CHARDEV},path={_opt(paths.api_socket)},server=on,wait=off",
        "-mon", f"chardev={QMP_CHARDEV},mode=control",
    ]  # fmt: skip
    return argv
