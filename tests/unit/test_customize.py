from __future__ import annotations

import pytest

from vmm.errors import ValidationError
from vmm.guest import customize, ext4
from vmm.guest.ext4 import GuestFile, debugfs_script

pytestmark = pytest.mark.unit


def test_kernel_cmdline() -> None:
    line = customize.kernel_cmdline(
        ip="172.16.0.2", gateway="172.16.0.1", subnet="172.16.0.0/16", hostname="dev",
        dns=["8.8.8.8", "8.8.4.4", "1.1.1.1"],
    )
    parts = line.split()
    assert parts[0] == "console=ttyS0"
    assert "reboot=k" in parts and "panic=1" in parts and "pci=off" in parts
    assert "ip=172.16.0.2::172.16.0.1:255.255.0.0:dev:eth0:off:8.8.8.8:8.8.4.4" in parts
    assert not any(p.startswith("root=") for p in parts)  # the engine adds root=
    assert len(line) < 2048  # Firecracker's x86_64 limit, with room for what it appends


def test_kernel_cmdline_extra_and_single_dns() -> None:
    line = customize.kernel_cmdline(
        ip="10.0.0.5", gateway="10.0.0.1", subnet="10.0.0.0/24", hostname="h", dns=["9.9.9.9"],
        extra=" quiet ",
    )
    assert line.endswith("ip=10.0.0.5::10.0.0.1:255.255.255.0:h:eth0:off:9.9.9.9 quiet")


def test_networkd_file() -> None:
    text = customize.networkd_file(mac="06:00:AC:10:00:02", ip="172.16.0.2", subnet="172.16.0.0/16",
                                   gateway="172.16.0.1", dns=["1.1.1.1"])
    assert "MACAddress=06:00:ac:10:00:02" in text
    assert "Address=172.16.0.2/16" in text
    assert "Gateway=172.16.0.1" in text and "DNS=1.1.1.1" in text


def test_first_boot_files() -> None:
    files = {f.path: f for f in customize.first_boot_files(hostname="dev", ssh_public_key="ssh-ed25519 AAAA x", dns=["8.8.8.8"])}
    assert files["/etc/hostname"].content == b"dev\n"
    assert files["/root/.ssh/authorized_keys"].mode == 0o600
    assert files["/etc/resolv.conf"].content.endswith(b"nameserver 8.8.8.8\n")
    assert b"127.0.1.1\tdev" in files["/etc/hosts"].content
    no_key = customize.first_boot_files(hostname="dev", ssh_public_key=None, dns=["8.8.8.8"])
    assert "/root/.ssh/authorized_keys" not in {f.path for f in no_key}


def test_debugfs_script() -> None:
    script = debugfs_script(
        [GuestFile("/root/.ssh/authorized_keys", b"k", mode=0o600),
         GuestFile("/etc/x/y.wants/a.service", symlink_to="/lib/systemd/system/a.service")],
        ["/tmp/f0", "/tmp/f1"],
        existing={"/root", "/etc", "/etc/x/y.wants/a.service"},
    )
    assert script.splitlines() == [
        "mkdir /root/.ssh",
        "write /tmp/f0 /root/.ssh/authorized_keys",
        "sif /root/.ssh/authorized_keys mode 0100600",
        "sif /root/.ssh/authorized_keys uid 0",
        "sif /root/.ssh/authorized_keys gid 0",
        "mkdir /etc/x",
        "mkdir /etc/x/y.wants",
        "rm /etc/x/y.wants/a.service",
        "symlink /etc/x/y.wants/a.service /lib/systemd/system/a.service",
    ]


@pytest.mark.parametrize("path", ["relative", "/with space", '/quo"te', "/etc/../x"])
def test_debugfs_script_rejects_bad_paths(path: str) -> None:
    with pytest.raises(ValidationError):
        debugfs_script([GuestFile(path, b"")], ["/tmp/f0"], set())


@pytest.mark.parametrize("networkd", [True, False])
def test_every_boot_probes_cover_what_the_write_needs(networkd: bool) -> None:
    """One lookup session serves the write: every path write_files must know about is in it."""
    files = customize.every_boot_files(
        mac="06:00:ac:10:00:02", ip="172.16.0.2", subnet="172.16.0.0/16", gateway="172.16.0.1",
        dns=[], networkd_present=networkd,
    )  # fmt: skip
    probes = customize.every_boot_probes()
    assert set(ext4.paths_to_check(files)) <= set(probes)
    assert set(customize.NETWORKD_UNITS) <= set(probes)
    assert customize.networkd_present(ext4.Existing(found=[customize.NETWORKD_UNIT], checked=probes))
    assert customize.networkd_present({"/usr/lib/systemd/system/systemd-networkd.service"})
    assert not customize.networkd_present(ext4.Existing(found=["/etc"], checked=probes))


def test_paths_to_check() -> None:
    files = [GuestFile("/a/b/c"), GuestFile("/a/d", symlink_to="/x"), GuestFile("/top")]
    assert ext4.paths_to_check(files) == ["/a", "/a/b", "/a/b/c", "/a/d", "/top"]


def test_existing_result_knows_what_was_asked() -> None:
    found = ext4.Existing(found=["/a"], checked=["/b"])
    assert found == {"/a"} and found.checked == {"/a", "/b"}
    assert ext4.Existing() == set() and ext4.Existing().checked == frozenset()


def test_guest_file_is_a_frozen_value() -> None:
    a = GuestFile("/etc/x", b"1", mode=0o600)
    assert a == GuestFile("/etc/x", b"1", 0o600, 0, 0, None)
    assert a != GuestFile("/etc/x", b"1") and a != ("/etc/x",)
    assert len({a, GuestFile("/etc/x", b"1", mode=0o600)}) == 1
    assert repr(a) == "GuestFile(path='/etc/x', content=b'1', mode=384, uid=0, gid=0, symlink_to=None)"
    with pytest.raises(AttributeError):
        a.path = "/y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.mode  # type: ignore[misc]
    assert (GuestFile("/l", symlink_to="/t").symlink_to, GuestFile("/l").content) == ("/t", b"")
