"""The sandbox without privileges: in-tree path resolution and edits that never follow a link
out of the tree (treefiles), the capability rewrite, the proxy's rules (aptproxy), the helper's
command line."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from vmm.errors import ValidationError, VmmError
from vmm.guest import aptproxy, nsinit, sandbox, treefiles
from vmm.runner import RecordingRunner, Result

pytestmark = pytest.mark.unit


@pytest.fixture
def tree_and_host(tmp_path: Path) -> tuple[Path, Path]:
    tree, host = tmp_path / "tree", tmp_path / "host"
    (tree / "etc").mkdir(parents=True)
    host.mkdir()
    (host / "victim").write_text("host data\n")
    return tree, host


def test_resolve_keeps_links_inside(tree_and_host: tuple[Path, Path]) -> None:
    tree, host = tree_and_host
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    (tree / "abs").symlink_to(str(host))  # absolute: the tree's root, as in the guest
    (tree / "up").symlink_to("../../../../..")
    assert treefiles.resolve(tree, "lib/x") == tree / "usr/lib/x"
    assert treefiles.resolve(tree, "abs/victim") == tree / str(host).lstrip("/") / "victim"
    assert treefiles.resolve(tree, "up") == tree
    assert treefiles.resolve(tree, "up/etc") == tree / "etc"
    assert treefiles.resolve(tree, "../../etc/../..") == tree
    assert treefiles.resolve(tree, "abs", follow_last=False) == tree / "abs"


def test_resolve_refuses_loops(tree_and_host: tuple[Path, Path]) -> None:
    tree, _ = tree_and_host
    (tree / "etc/machine-id").symlink_to("/etc/machine-id")  # itself, seen from inside
    with pytest.raises(ValidationError, match="too many levels"):
        treefiles.resolve(tree, "etc/machine-id")
    assert not treefiles.exists(tree, "etc/machine-id")


def test_write_replaces_a_link_and_never_writes_through_it(tree_and_host: tuple[Path, Path]) -> None:
    tree, host = tree_and_host
    (tree / "etc/machine-id").symlink_to(host / "victim")
    (tree / "etc/hosts").symlink_to("../../../host/victim")
    treefiles.write_file(tree, "etc/machine-id", "")
    treefiles.write_file(tree, "etc/hosts", "127.0.0.1 localhost\n", 0o600)
    assert (host / "victim").read_text() == "host data\n"
    assert not (tree / "etc/machine-id").is_symlink()
    assert (tree / "etc/machine-id").read_text() == ""
    assert oct((tree / "etc/hosts").stat().st_mode & 0o777) == "0o600"


def test_write_into_a_linked_directory_stays_in_the_tree(tree_and_host: tuple[Path, Path]) -> None:
    tree, host = tree_and_host
    (tree / "etc/ssh").symlink_to(str(host))
    treefiles.write_file(tree, "etc/ssh/victim", "tree\n")
    assert (host / "victim").read_text() == "host data\n"
    assert (tree / str(host).lstrip("/") / "victim").read_text() == "tree\n"


def test_write_does_not_write_through_a_hard_link(tree_and_host: tuple[Path, Path]) -> None:
    tree, _ = tree_and_host
    (tree / "etc/passwd").write_text("root\n")
    os.link(tree / "etc/passwd", tree / "etc/hostname")
    treefiles.write_file(tree, "etc/hostname", "vm\n")
    assert (tree / "etc/passwd").read_text() == "root\n"


def test_remove_and_glob_never_follow(tree_and_host: tuple[Path, Path]) -> None:
    tree, host = tree_and_host
    (host / "ssh_host_rsa_key").write_text("host key\n")
    (tree / "etc/ssh").mkdir()
    (tree / "etc/ssh/ssh_host_ed25519_key").symlink_to(host / "victim")
    (tree / "etc/ssh/ssh_host_ecdsa_key").write_text("tree key\n")
    (tree / "etc/ssh/ssh_config").write_text("kept\n")
    (tree / "var/lib/apt").mkdir(parents=True)
    (tree / "var/lib/apt/lists").symlink_to(str(host))  # a glob-deleted dir that is a link
    (tree / "var/log").mkdir(parents=True)
    (tree / "var/log/dir.log").symlink_to(str(host))
    treefiles.remove_glob(tree, "etc/ssh", "ssh_host_*")
    treefiles.remove_glob(tree, "var/lib/apt/lists", "*")
    treefiles.remove_glob(tree, "var/log", "*.log")
    treefiles.remove(tree, "var/lib/apt/lists/victim")
    assert sorted(os.listdir(tree / "etc/ssh")) == ["ssh_config"]
    assert sorted(os.listdir(host)) == ["ssh_host_rsa_key", "victim"]
    assert (host / "victim").read_text() == "host data\n"
    assert not os.path.lexists(tree / "var/log/dir.log")


def test_make_dir_and_symlink(tree_and_host: tuple[Path, Path]) -> None:
    tree, host = tree_and_host
    (tree / "root").symlink_to(str(host))
    made = treefiles.make_dir(tree, "root/.ssh", 0o700)
    assert made == tree / str(host).lstrip("/") / ".ssh" and made.is_dir()
    assert not (host / ".ssh").exists()
    (tree / "etc/resolv.conf").symlink_to(host / "victim")
    treefiles.symlink(tree, "etc/resolv.conf", "/proc/net/pnp")
    assert os.readlink(tree / "etc/resolv.conf") == "/proc/net/pnp"
    (tree / "etc/file").write_text("")
    with pytest.raises(ValidationError, match="not a directory"):
        treefiles.make_dir(tree, "etc/file/x")


def test_os_release_is_read_inside(tree_and_host: tuple[Path, Path]) -> None:
    from vmm.guest import prepare

    tree, host = tree_and_host
    (host / "os-release").write_text("ID=debian\n")
    (tree / "etc/os-release").symlink_to(host / "os-release")
    assert prepare.os_release(tree) == {}
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text('ID=ubuntu\nPRETTY_NAME="Ubuntu 24.04"\n')
    (tree / "etc/os-release").unlink()
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert prepare.distro_name(tree) == "Ubuntu 24.04" and prepare.is_debian_like(tree)


def test_namespaced_capabilities_become_global() -> None:
    base = sandbox.FIRST_BASE
    data = struct.pack("<IIII", 1 << 13, 0, 0, 0)  # cap_net_raw
    v3 = struct.pack("<I", sandbox.VFS_CAP_REVISION_3 | 1) + data + struct.pack("<I", base)
    assert sandbox.global_caps(v3, base) == struct.pack("<I", sandbox.VFS_CAP_REVISION_2 | 1) + data
    other = v3[:20] + struct.pack("<I", 1000)
    assert sandbox.global_caps(other, base) == other
    v2 = struct.pack("<I", sandbox.VFS_CAP_REVISION_2 | 1) + data
    assert sandbox.global_caps(v2, base) == v2


@pytest.mark.parametrize(("address", "refused"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("169.254.169.254", True),
    ("fe80::1%eth0", True), ("0.0.0.0", True), ("224.0.0.1", True), ("::ffff:127.0.0.1", True),
    ("240.0.0.1", True), ("151.101.2.132", False), ("192.168.1.10", False),
    ("2a04:4e42::644", False),
])
def test_proxy_refuses_the_host_and_link_local(address: str, refused: bool) -> None:
    assert aptproxy.forbidden(address) is refused


def test_proxy_requests() -> None:
    head = (b"GET http://deb.debian.org/debian/dists/bookworm/InRelease?x=1 HTTP/1.1\r\n"
            b"Host: deb.debian.org\r\nConnection: keep-alive\r\nProxy-Authorization: x\r\n"
            b"User-Agent: Debian APT-HTTP/1.3")
    method, host, port, request = aptproxy.parse_request(head)
    assert (method, host, port) == ("GET", "deb.debian.org", 80)
    assert request == (b"GET /debian/dists/bookworm/InRelease?x=1 HTTP/1.1\r\n"
                       b"Host: deb.debian.org\r\nUser-Agent: Debian APT-HTTP/1.3\r\n"
                       b"Connection: close\r\n\r\n")
    assert aptproxy.parse_request(b"CONNECT mirror.example:443 HTTP/1.1\r\nHost: x") == (
        "CONNECT", "mirror.example", 443, b"")
    assert aptproxy.parse_request(b"CONNECT [2001:db8::1]:8443 HTTP/1.1")[1:3] == ("2001:db8::1", 8443)
    for bad, status in ((b"POST http://x/ HTTP/1.1", 405), (b"GET /local HTTP/1.1", 400),
                        (b"GET ftp://x/ HTTP/1.1", 400), (b"CONNECT x HTTP/1.1", 400),
                        (b"\xff\xfe", 400)):
        with pytest.raises(aptproxy.ProxyRefused) as exc:
            aptproxy.parse_request(bad)
        assert exc.value.status == status


def test_the_helper_is_vmms_code_isolated_from_the_tree(tmp_path: Path) -> None:
    box = sandbox.Sandbox(RecordingRunner(), tmp_path, sandbox.FIRST_BASE, "/proc/1/fd/3",
                          "http://127.0.0.1:1234/")
    argv = box.helper_argv(["apt-get", "update"], {"DEBIAN_FRONTEND": "noninteractive"})
    assert argv[:3] == [sys.executable, "-I", "-B"]  # no PYTHONPATH, no cwd (the tree)
    assert Path(argv[5], "vmm/guest/nsinit.py").is_file()
    assert argv[argv.index("--") + 1:] == ["apt-get", "update"]
    assert "http_proxy=http://127.0.0.1:1234/" in argv and "--netns" in argv
    assert "Acquire::http::Proxy=http://127.0.0.1:1234/" in box.apt_options()


def test_run_names_the_program_and_reports_a_broken_sandbox(tmp_path: Path) -> None:
    runner = RecordingRunner()
    box = sandbox.Sandbox(runner, tmp_path, sandbox.FIRST_BASE)
    result = box.run(["dpkg-query", "-W"])
    assert result.argv == ["dpkg-query", "-W"]
    failed = Result([], nsinit.HELPER_FAILED, "", f"{nsinit.MARK} unshare: Operation not permitted\n")
    with pytest.raises(VmmError, match="cannot run usermod in a sandbox: unshare"):
        sandbox._check_helper(["usermod"], failed)
    sandbox._check_helper(["x"], Result([], nsinit.HELPER_FAILED, "", "the program's own 125\n"))
