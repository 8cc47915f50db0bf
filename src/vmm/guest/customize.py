"""What vmm writes into a VM's root filesystem (pure builders; ext4.write_files applies them).

The guest gets its address twice on purpose: the kernel's ``ip=`` (kernels with IP_PNP, up
before init runs) and a systemd-networkd file matched on the MAC (kernels without IP_PNP, and
so the address survives networkd taking over the interface).
"""

from __future__ import annotations

import ipaddress

from vmm.errors import ValidationError
from vmm.guest.ext4 import GuestFile, paths_to_check

NETWORK_FILE = "/etc/systemd/network/10-vmm.network"
NETWORKD_UNIT = "/lib/systemd/system/systemd-networkd.service"
NETWORKD_WANTS = "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# Where an image may have systemd-networkd's unit (merged /usr or not): either means networkd.
NETWORKD_UNITS = ("/usr/lib/systemd/system/systemd-networkd.service", NETWORKD_UNIT)


def kernel_ip_arg(ip: str, gateway: str, subnet: str, hostname: str, dns: list[str]) -> str:
    """``ip=<client>::<gw>:<mask>:<host>:eth0:off[:<dns0>[:<dns1>]]`` (at most two DNS servers)."""
    mask = ipaddress.IPv4Network(subnet).netmask
    arg = f"ip={ip}::{gateway}:{mask}:{hostname}:eth0:off"
    if dns:
        arg += ":" + ":".join(dns[:2])
    return arg


def kernel_cmdline(
    *, ip: str, gateway: str, subnet: str, hostname: str, dns: list[str], extra: str = ""
) -> str:
    """The guest's kernel command line, without ``root=`` (the engine adds it, as Firecracker does).

    ``reboot=k`` turns a guest reboot (and Firecracker's Ctrl-Alt-Del) into a process exit;
    ``panic=1`` makes a panicking guest exit instead of hanging; ``pci=off`` skips the PCI scan
    (there is no PCI bus on either engine's microvm); the ``i8042.*`` flags skip slow probing.
    """
    parts = [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "pci=off",
        "i8042.noaux",
        "i8042.nomux",
        "i8042.nopnp",
        "i8042.dumbkbd",
        "net.ifnames=0",
        kernel_ip_arg(ip, gateway, subnet, hostname, dns),
    ]
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


# The longest command line vmm itself builds (addresses, hostname, two DNS servers) plus what
# the engines append (root=, one virtio_mmio.device= per device) stays far below x86's 2,047
# bytes; this leaves the user's --boot-args what remains with room to spare.
BOOT_ARGS_MAX = 1024


def validate_boot_args(extra: str, *, mounts: int = 0) -> str:
    """``--boot-args``, checked at ``create`` so a bad value never reaches a record: one line
    of printable ASCII, no ``root=`` (the engine sets the root device), and short enough that
    the whole command line fits the kernel's limit with every drive attached."""
    extra = extra.strip()
    if any(not (" " <= c <= "~") for c in extra):
        raise ValidationError(
            "--boot-args may only contain printable ASCII characters (no newlines or tabs)"
        )
    if any(tok.startswith("root=") for tok in extra.split()):
        raise ValidationError(
            "--boot-args must not set root=",
            hint="vmm attaches the VM's disk as the root device (/dev/vda) itself",
        )
    limit = BOOT_ARGS_MAX - 40 * mounts
    if len(extra) > limit:
        raise ValidationError(
            f"--boot-args is too long ({len(extra)} characters; at most {limit} "
            f"with {mounts} mount(s))"
        )
    return extra


def networkd_file(*, mac: str, ip: str, subnet: str, gateway: str, dns: list[str]) -> str:
    prefix = ipaddress.IPv4Network(subnet).prefixlen
    lines = [
        "# Written by vmm at VM creation; vmm rewrites it on each start.",
        "[Match]",
        f"MACAddress={mac.lower()}",
        "",
        "[Network]",
        f"Address={ip}/{prefix}",
        f"Gateway={gateway}",
    ]
    lines += [f"DNS={d}" for d in dns]
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", ""]
    return "\n".join(lines)


def resolv_conf(dns: list[str]) -> str:
    return "# Written by vmm\n" + "".join(f"nameserver {d}\n" for d in dns)


def hosts_file(hostname: str) -> str:
    return (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n"
    )


def first_boot_files(
    *, hostname: str, ssh_public_key: str | None, dns: list[str], power_key: str | None = None
) -> list[GuestFile]:
    """Files written once, when the VM's rootfs is made: the guest owns them afterwards.

    ``power_key`` is vmm's own authorized_keys line (a forced command that can only power the
    guest off), how ``vmm stop`` reaches a guest that ignores the power button."""
    files = [
        GuestFile("/etc/hostname", (hostname + "\n").encode()),
        GuestFile("/etc/hosts", hosts_file(hostname).encode()),
        GuestFile("/etc/resolv.conf", resolv_conf(dns).encode()),
    ]
    keys = [k.strip() for k in (ssh_public_key, power_key) if k]
    if keys:
        text = "".join(k + "\n" for k in keys)
        files.append(GuestFile("/root/.ssh/authorized_keys", text.encode(), mode=0o600))
    return files


def every_boot_files(
    *, mac: str, ip: str, subnet: str, gateway: str, dns: list[str], networkd_present: bool
) -> list[GuestFile]:
    """Files vmm owns and rewrites at every start (the network follows the VM record)."""
    files = [
        GuestFile(
            NETWORK_FILE,
            networkd_file(mac=mac, ip=ip, subnet=subnet, gateway=gateway, dns=dns).encode(),
        )
    ]
    if networkd_present:
        files.append(GuestFile(NETWORKD_WANTS, symlink_to=NETWORKD_UNIT))
    return files


def every_boot_probes() -> list[str]:
    """The guest paths to look up before the every-boot write, all in one
    ``ext4.existing`` session: networkd's unit (``networkd_present``), and what
    ``ext4.write_files`` needs to know for either variant of ``every_boot_files``."""
    written = [GuestFile(NETWORK_FILE), GuestFile(NETWORKD_WANTS, symlink_to=NETWORKD_UNIT)]
    return [*NETWORKD_UNITS, *paths_to_check(written)]


def networkd_present(found: set[str]) -> bool:
    """Whether the image has systemd-networkd, from an ``ext4.existing`` result that looked
    up ``every_boot_probes()``."""
    return any(p in found for p in NETWORKD_UNITS)
