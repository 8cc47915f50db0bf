"""An image's programs never run with host privileges (vmm.guest.sandbox), the host's edits of
a tree never follow a link out of it, and an interrupted import leaves nothing behind.

The hostile trees are made of busybox-static (downloaded once with ``apt-get download``,
unpacked with ``dpkg-deb``, never installed on the host): shell scripts named apt-get, env,
dpkg-query, systemctl, usermod... that try every way out a chroot used to give."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VmmEnv
from tests.waiting import wait_until
from vmm.errors import CommandError, ValidationError, VmmError
from vmm.guest import debootstrap, nsinit, sandbox
from vmm.runner import Runner

pytestmark = pytest.mark.integration

CACHE = Path("/var/cache/vmm-test/busybox")
HOST_FILES = ("/etc/shadow", "/etc/passwd", "/etc/machine-id", "/etc/hostname", "/etc/hosts")


@pytest.fixture(scope="module")
def busybox() -> Path:
    """A static busybox binary (from Debian's busybox-static package, cached)."""
    binary = CACHE / "busybox"
    if binary.is_file():
        return binary
    if os.geteuid() != 0:
        pytest.skip("needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f".work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        got = subprocess.run(["apt-get", "download", "-q", "busybox-static"], cwd=work,
                             capture_output=True, text=True, timeout=300)
        debs = list(work.glob("busybox-static_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.skip(f"apt-get download busybox-static failed: {got.stderr[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True)
        shutil.copy2(work / "x/bin/busybox", work / "busybox")
        os.replace(work / "busybox", binary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def busybox_tree(dest: Path, busybox: Path, scripts: dict[str, str]) -> Path:
    """A Debian-looking tree (os-release ID=debian) whose programs are ``scripts``."""
    for d in ("bin", "etc", "tmp", "usr/bin", "usr/sbin", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin/busybox")
    (dest / "bin/sh").symlink_to("busybox")
    (dest / "etc/os-release").write_text('PRETTY_NAME="Debian (hostile)"\nID=debian\n')
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/shadow").write_text("root:TREE-SHADOW:19000:0:99999:7:::\n")
    for rel, text in scripts.items():
        (dest / rel).write_text(text)
        os.chmod(dest / rel, 0o755)
    return dest


def payload(host: Path, marker: str) -> str:
    """A program that tries to reach the host the ways a chroot with host /proc allowed, keeps
    what it saw in /evidence, and pretends to install systemd and sshd."""
    return f"""#!/bin/sh
B=/bin/busybox
E=/evidence
$B mkdir -p $E
name=$($B basename "$0")
echo "$name $* uid=$($B id -u) ppid=$PPID" >> $E/ran
for p in "/proc/$PPID/root" /proc/1/root /proc/self/root "/proc/$$/root" "/proc/$PPID/cwd" \\
         /proc/[0-9]*/root /proc/[0-9]*/cwd ""; do
    echo pwned > "$p{marker}" 2>/dev/null
    echo pwned > "$p{host}/marker" 2>/dev/null
    $B cat "$p/etc/shadow" >> $E/shadow 2>/dev/null
    $B cat "$p{host}/secret" >> $E/secret 2>/dev/null
done
$B ls /proc >> $E/proc 2>&1
$B head -c 512 /evil-disk >> $E/disk 2>/dev/null
$B mkdir -p /mnt; $B mount -t sysfs sysfs /mnt >> $E/mount 2>&1
$B mknod /evil-made b 8 0 >> $E/mknod 2>&1
case "$name $*" in
    *install*)
        $B mkdir -p /usr/lib/systemd
        $B cp "$0" /usr/lib/systemd/systemd
        $B cp "$0" /usr/sbin/sshd
        $B cp "$0" /usr/bin/systemctl ;;
    dpkg-query*) echo "fake 1.0" ;;
esac
exit 0
"""


def host_state(paths: list[Path]) -> dict[str, tuple[int, int, int, str]]:
    state = {}
    for p in paths:
        for f in [p] + (sorted(p.rglob("*")) if p.is_dir() else []):
            st = os.lstat(f)
            data = f.read_bytes() if f.is_file() and not f.is_symlink() else b""
            state[str(f)] = (st.st_uid, st.st_gid, st.st_mode, hashlib.sha256(data).hexdigest())
    return state


def debugfs_cat(image: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                          text=True, errors="replace").stdout


def host_dir(tmp_path: Path) -> tuple[Path, str]:
    host = tmp_path / "host"
    host.mkdir()
    secret = f"HOST-SECRET-{secrets.token_hex(8)}"
    (host / "secret").write_text(secret + "\n")
    return host, secret


def test_hostile_tarball_changes_and_reads_nothing_on_the_host(
    vmm_env: VmmEnv, tmp_path: Path, busybox: Path
) -> None:
    host, secret = host_dir(tmp_path)
    marker = f"/tmp/vmm-sandbox-marker-{secrets.token_hex(6)}"
    evil = payload(host, marker)
    tree = busybox_tree(tmp_path / "tree", busybox, {
        rel: evil for rel in ("usr/bin/env", "usr/bin/apt-get", "usr/bin/dpkg",
                              "usr/bin/dpkg-query", "usr/sbin/usermod")
    })
    tarball = tmp_path / "hostile.tar"
    with tarfile.open(tarball, "w") as tf:
        tf.add(tree, arcname=".")
        disk = tarfile.TarInfo("./evil-disk")  # the host's root disk, readable by anyone
        disk.type, disk.mode = tarfile.BLKTYPE, 0o666
        root_dev = os.stat("/").st_dev
        disk.devmajor, disk.devminor = os.major(root_dev), os.minor(root_dev)
        tf.addfile(disk, io.BytesIO(b""))
    watched = [Path(p) for p in HOST_FILES if Path(p).exists()] + [host]
    before = host_state(watched)

    done = vmm_env.run("image", "import", str(tarball), "--name", "hostile", timeout=300)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and secret not in done.stdout + done.stderr
    assert not os.path.lexists(marker) and not (host / "marker").exists()
    assert host_state(watched) == before
    image = vmm_env.data_dir / "images/hostile.ext4"
    ran = debugfs_cat(image, "/evidence/ran")
    for name in (" update uid", "install --no-install-recommends", "usermod", "dpkg-query",
                 "systemctl --quiet enable", "apt-get clean"):
        assert name in ran, ran  # the hostile programs really ran, as root of the sandbox
    assert "uid=0" in ran and "uid=0 ppid=1" in ran
    shadow = debugfs_cat(image, "/evidence/shadow")
    assert "TREE-SHADOW" in shadow  # reading works, inside the tree
    assert set(shadow.splitlines()) == {"root:TREE-SHADOW:19000:0:99999:7:::"}
    assert secret not in debugfs_cat(image, "/evidence/secret")
    assert debugfs_cat(image, "/evidence/disk") == ""  # the device node opens nothing
    assert "Permission denied" in debugfs_cat(image, "/evidence/mknod") or \
        "not permitted" in debugfs_cat(image, "/evidence/mknod")
    procs = debugfs_cat(image, "/evidence/proc").split()
    assert max(int(p) for p in procs if p.isdigit()) < 50  # its own pid namespace
    assert not ours(vmm_env, "")
    assert not [p for p in (vmm_env.data_dir / "images").iterdir() if p.name.startswith(".")]


def test_prepare_tree_never_follows_links_out_of_the_tree(tmp_path: Path, busybox: Path) -> None:
    host, _ = host_dir(tmp_path)
    for name in ("machine-id", "somefile", "hostname", "hosts", "authorized_keys",
                 "dbus-machine-id"):
        (host / name).write_text(f"host {name}\n")
    for d in ("lists", "log", "tmp", "dotssh", "sshdir"):
        (host / d).mkdir()
        (host / d / "keep.log").write_text("host\n")
    (host / "sshdir/ssh_host_rsa_key").write_text("host key\n")
    (host / "dotssh/authorized_keys").write_text("host keys\n")
    ok = "#!/bin/sh\n[ \"$(/bin/busybox basename $0)\" = dpkg-query ] && echo 'fake 1.0'\nexit 0\n"
    tree = busybox_tree(tmp_path / "tree", busybox, {
        rel: ok for rel in ("usr/bin/systemctl", "usr/bin/apt-get", "usr/bin/dpkg-query",
                            "usr/sbin/usermod", "usr/bin/env")
    })
    for rel in ("etc/ssh", "var/lib/apt", "var/lib/dbus", "var/cache/apt", "var/tmp"):
        (tree / rel).mkdir(parents=True, exist_ok=True)
    links = {
        "etc/machine-id": host / "machine-id",
        "etc/ssh/ssh_host_ed25519_key": host / "somefile",
        "etc/ssh/ssh_host_rsa_key": host / "sshdir/ssh_host_rsa_key",
        "etc/hostname": host / "hostname",
        "etc/hosts": Path("../" * 12 + str(host).lstrip("/") + "/hosts"),  # relative, too far up
        "var/lib/apt/lists": host / "lists",  # glob-deleted directories that are links
        "var/log": host / "log",
        "var/tmp": host / "tmp",
        "var/lib/dbus/machine-id": host / "dbus-machine-id",
        "etc/systemd": host / "sshdir",
    }
    shutil.rmtree(tree / "var/tmp")
    shutil.rmtree(tree / "root")
    (tree / "root").symlink_to(host / "dotssh" / "..")  # root/.ssh would be the host's
    for rel, target in links.items():
        (tree / rel).symlink_to(target)
    before = host_state([host])

    debootstrap.prepare_tree(Runner(), tree)

    assert host_state([host]) == before
    assert (tree / "etc/machine-id").read_text() == "" and not (tree / "etc/machine-id").is_symlink()
    assert not os.path.lexists(tree / "etc/ssh/ssh_host_ed25519_key")
    assert (tree / "etc/hostname").read_text() == "vmm-guest\n"
    assert os.readlink(tree / "etc/resolv.conf") == "/proc/net/pnp"
    assert (tree / "etc/ssh/sshd_config.d/00-vmm.conf").is_file()


def ours(env: VmmEnv, token: str) -> list[int]:
    """This test's sandbox processes: the helper and pid 1 name the data dir, the rest ``token``."""
    found = []
    for pid in sandbox.all_sandbox_processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(env.data_dir) in cmdline or (token and token in cmdline):
            found.append(pid)
    return found


def mounts_of(env: VmmEnv) -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True)
    return [m for m in out.stdout.splitlines() if str(env.data_dir) in m or str(env.root) in m]


def staging(env: VmmEnv) -> list[Path]:
    images = env.data_dir / "images"
    return [p for p in images.iterdir() if p.name.startswith(".")] if images.is_dir() else []


def stubborn_tree(tmp_path: Path, busybox: Path) -> tuple[Path, str]:
    """A tree whose apt-get leaves daemons behind (one ignores SIGTERM, one in its own session)
    and then sleeps: an import of it is still in the sandbox when the signal comes."""
    token = str(600 + secrets.randbelow(300))
    script = f"""#!/bin/sh
B=/bin/busybox
$B sh -c 'trap "" TERM HUP INT; exec $B sleep {token}1' &
$B setsid $B sleep {token}2 &
exec $B sleep {token}3
"""
    env = '#!/bin/sh\nexec /bin/busybox env "$@"\n'
    tree = busybox_tree(tmp_path / "tree", busybox, {"usr/bin/apt-get": script, "usr/bin/env": env})
    return tree, token


def start_import(env: VmmEnv, tree: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmm", "image", "import", str(tree), "--name", "stubborn"],
        env=env.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("when", ["staged", "in-sandbox"])
def test_sigterm_leaves_no_mount_process_or_staging_dir(
    vmm_env: VmmEnv, tmp_path: Path, busybox: Path, when: str
) -> None:
    tree, token = stubborn_tree(tmp_path, busybox)
    proc = start_import(vmm_env, tree)
    try:
        ready: Callable[[], object] = (
            (lambda: staging(vmm_env)) if when == "staged"
            else (lambda: len(ours(vmm_env, token)) >= 5)  # helper, pid 1, three sleeps
        )
        wait_until(lambda: ready() or proc.poll() is not None, 120, what=when)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: interrupted (SIGTERM)"], stderr
    assert "Traceback" not in stderr
    assert ours(vmm_env, token) == []  # at vmm's exit already, not eventually
    assert mounts_of(vmm_env) == []
    assert staging(vmm_env) == []
    assert not (vmm_env.data_dir / "images/stubborn.ext4").exists()


def test_sigkill_leaves_no_mount_or_process(vmm_env: VmmEnv, tmp_path: Path, busybox: Path) -> None:
    tree, token = stubborn_tree(tmp_path, busybox)
    proc = start_import(vmm_env, tree)
    try:
        wait_until(lambda: len(ours(vmm_env, token)) >= 5 or proc.poll() is not None, 120,
                   what="the sandbox's processes")
        assert proc.poll() is None, proc.communicate()
        proc.kill()
        proc.communicate(timeout=60)
        # The helper dies with vmm (parent-death signal), pid 1 with the helper, the rest with
        # pid 1 (the kernel empties a pid namespace whose init exits).
        wait_until(lambda: not ours(vmm_env, token), 10, what="no sandbox process")
        assert mounts_of(vmm_env) == []
    finally:
        for leftover in staging(vmm_env):  # SIGKILL cannot clean up: the next import's job
            debootstrap.remove_tree(Runner(), leftover)


def test_a_timed_out_command_leaves_no_process(tmp_path: Path, busybox: Path) -> None:
    tree = busybox_tree(tmp_path / "tree", busybox, {})
    with sandbox.sandbox(Runner(), tree) as box:
        with pytest.raises(CommandError, match="timed out: sh -c"):
            box.run(["sh", "-c", "/bin/busybox sleep 600 & /bin/busybox setsid /bin/busybox "
                     "sleep 600 & exec /bin/busybox sleep 600"], timeout=2)
        assert sandbox.processes_in(box.base, nsinit.RANGE) == []
        assert box.run(["sh", "-c", "/bin/busybox hostname"]).stdout == "vmm-sandbox\n"


def test_the_sandbox_network_is_vmms_proxy_only(tmp_path: Path, busybox: Path) -> None:
    tree = busybox_tree(tmp_path / "tree", busybox, {})
    with sandbox.sandbox(Runner(), tree, network=True) as box:
        assert box.proxy is not None
        port = box.proxy.rstrip("/").rpartition(":")[2]

        def sh(code: str) -> str:
            r = box.run(["sh", "-c", code], check=False, timeout=60)
            return r.stdout + r.stderr

        def via_proxy(url: str, wait: int = 1) -> str:
            """busybox's nc gives up when its input ends: keep it open ``wait`` seconds."""
            host = url.split("/")[2]
            request = f"GET {url} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n"
            return sh(f'(printf "{request}"; /bin/busybox sleep {wait}) | '
                      f"/bin/busybox timeout 30 /bin/busybox nc 127.0.0.1 {port} | "
                      "/bin/busybox head -12")

        devs = sh("/bin/busybox cat /proc/net/dev")
        assert [ln.split(":")[0].strip() for ln in devs.splitlines()[2:]] == ["lo"]
        assert "unreachable" in sh("/bin/busybox nc -w 3 151.101.2.132 80 </dev/null")
        for url in ("http://127.0.0.1:22/", "http://169.254.169.254/latest/meta-data/",
                    "http://localhost/", "http://[::1]/", "http://0.0.0.0:22/"):
            assert via_proxy(url).startswith("HTTP/1.1 403 vmm refuses"), url
        fetched = via_proxy("http://deb.debian.org/debian/dists/bookworm/Release", 8)
        if "200 OK" not in fetched:
            pytest.skip(f"deb.debian.org is not reachable from here: {fetched[:200]}")
        assert "Codename: bookworm" in fetched


def set_caps(path: Path, version: int, rootid: int | None = None) -> bytes:
    value = struct.pack("<IIIII", version | 1, 1 << 13, 0, 0, 0)  # cap_net_raw+ep
    if rootid is not None:
        value += struct.pack("<I", rootid)
    os.setxattr(path, "security.capability", value)
    return value


def test_ownership_shift_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    passwd = tree / "bin/passwd"
    passwd.write_text("x")
    os.chown(passwd, 0, 42)
    os.chmod(passwd, 0o4755)
    chage = tree / "bin/chage"
    chage.write_text("x")
    os.chown(chage, 0, 42)
    os.chmod(chage, 0o2755)
    ping = tree / "bin/ping"
    ping.write_text("x")
    caps = set_caps(ping, sandbox.VFS_CAP_REVISION_2)
    os.link(passwd, tree / "bin/passwd-link")
    (tree / "home").mkdir()
    os.chown(tree / "home", 1000, 1000)
    (tree / "link").symlink_to("/nowhere")
    os.chown(tree / "link", 5, 6, follow_symlinks=False)
    with sandbox.uid_range() as base:
        sandbox.shift_ownership(tree, base)
        assert (os.lstat(passwd).st_uid, os.lstat(passwd).st_gid) == (base, base + 42)
        assert os.lstat(passwd).st_mode & 0o7777 == 0o4755
        assert os.lstat(chage).st_mode & 0o7777 == 0o2755
        assert os.lstat(tree / "home").st_uid == base + 1000
        assert os.lstat(tree / "link").st_uid == base + 5
        assert os.getxattr(ping, "security.capability") == caps
        namespaced = tree / "bin/ping6"  # setcap inside the sandbox writes a v3 xattr
        namespaced.write_text("x")
        os.chown(namespaced, base, base)
        set_caps(namespaced, sandbox.VFS_CAP_REVISION_3, base)
        sandbox.shift_ownership(tree, base, back=True)
    assert (os.lstat(passwd).st_uid, os.lstat(passwd).st_gid) == (0, 42)
    assert os.lstat(passwd).st_mode & 0o7777 == 0o4755
    assert os.lstat(tree / "home").st_uid == 1000 and os.lstat(tree / "link").st_gid == 6
    assert os.getxattr(ping, "security.capability") == caps
    assert os.getxattr(namespaced, "security.capability") == caps  # now a plain v2
    assert os.lstat(namespaced).st_uid == 0


def test_ids_outside_the_range_are_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    odd = tree / "odd"
    odd.write_text("")
    os.chown(odd, 70000, 0)
    with sandbox.uid_range() as base:
        with pytest.raises(ValidationError, match="owned by id 70000"):
            sandbox.shift_ownership(tree, base)
        assert os.lstat(tree).st_uid == 0  # refused before anything changed
        os.chown(odd, 0, 0)
        sandbox.shift_ownership(tree, base)
        os.chown(odd, 0, base)  # host root's file: never made root's by shifting back
        with pytest.raises(VmmError, match="outside the sandbox's range"):
            sandbox.shift_ownership(tree, base, back=True)
        assert os.lstat(tree).st_uid == base
