"""scripts/install.sh against fake Firecracker releases served on 127.0.0.1 only.

Every run installs under a tmp prefix with ``--no-deps`` (no apt-get), pip is forced offline
(``PIP_NO_INDEX=1``: the venv builds vmm with Debian's setuptools/wheel wheels), proxies are
cleared, and downloads go to a ``http.server`` bound to 127.0.0.1: no traffic leaves loopback and
nothing is written outside the tmp dirs (checked for /usr/local at the end of the module).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install.sh"
V = "1.11.0"
ARCH = "x86_64"  # forced with VMM_INSTALL_ARCH: the fake binaries are shell scripts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root (it checks for it)"),
]

PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy")


# --------------------------------------------------------------------------------------------
# Fake releases


def fake_binary(name: str, version_line: str) -> bytes:
    return f'#!/bin/sh\n# fake {name} for tests/integration/test_install.py\necho "{version_line}"\n'.encode()


def release_tgz(
    version: str,
    arch: str,
    *,
    fc_says: str | None = None,
    jailer: bool = True,
) -> bytes:
    """A release tarball laid out like Firecracker's (plus a file the installer must ignore)."""
    top = f"release-v{version}-{arch}"
    members = {
        f"{top}/firecracker-v{version}-{arch}": fake_binary(
            "firecracker", fc_says or f"Firecracker v{version}"
        ),
        f"{top}/seccompiler-bin-v{version}-{arch}": fake_binary("seccompiler", "nope"),
    }
    if jailer:
        members[f"{top}/jailer-v{version}-{arch}"] = fake_binary("jailer", f"Jailer v{version}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def publish(
    root: Path, version: str, arch: str, tgz: bytes, *, checksum_of: bytes | None = None
) -> None:
    d = root / f"v{version}"
    d.mkdir(parents=True, exist_ok=True)
    name = f"firecracker-v{version}-{arch}.tgz"
    (d / name).write_bytes(tgz)
    digest = hashlib.sha256(tgz if checksum_of is None else checksum_of).hexdigest()
    (d / f"{name}.sha256.txt").write_text(f"{digest}  {name}\n")


def source_tarball() -> bytes:
    """A vmm source tarball with one top-level dir, like a GitHub archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in ("pyproject.toml", "README.md", "src"):
            tar.add(
                REPO / rel,
                arcname=f"vmm-src/{rel}",
                filter=lambda ti: None if "__pycache__" in ti.name else ti,
            )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Loopback HTTP server


@dataclass
class Server:
    root: Path
    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, User-Agent)

    def url(self, sub: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{sub}".rstrip("/")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("www")
    good = release_tgz(V, ARCH)
    publish(root / "good", V, ARCH, good)
    publish(root / "good", V, "aarch64", release_tgz(V, "aarch64"))
    publish(root / "good", "1.12.0", ARCH, release_tgz("1.12.0", ARCH))
    publish(root / "corrupt", V, ARCH, good + b"tampered", checksum_of=good)
    publish(root / "nojailer", V, ARCH, release_tgz(V, ARCH, jailer=False))
    publish(root / "wrongversion", V, ARCH, release_tgz(V, ARCH, fc_says="Firecracker v1.10.1"))
    (root / "src").mkdir()
    (root / "src" / "vmm-src.tar.gz").write_bytes(source_tarball())

    requests: list[tuple[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            requests.append((self.path, self.headers.get("User-Agent", "")))

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(root=root, port=httpd.server_address[1], requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Running the installer


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    tmpdir: Path

    @property
    def rc(self) -> int:
        return self.proc.returncode

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.proc.stderr.splitlines() if ln.startswith("error: ")]

    def explain(self) -> str:
        return f"exit {self.rc}\nstdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}"


def install(
    base_url: str,
    *args: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 900,
) -> Run:
    """Run the installer with a private TMPDIR (checked empty afterwards) and no way off loopback."""
    tmpdir = Path(tempfile.mkdtemp(dir=tmp, prefix="TMPDIR"))
    e = dict(os.environ)
    for var in PROXY_VARS:
        e.pop(var, None)
        e.pop(var.upper(), None)
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "wgetrc").touch()
    e.update(
        VMM_FIRECRACKER_BASE_URL=base_url,
        VMM_INSTALL_ARCH=ARCH,
        TMPDIR=str(tmpdir),
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        no_proxy="*",
        CURL_HOME=str(home),  # no ~/.curlrc
        WGETRC=str(home / "wgetrc"),  # no /etc/wgetrc or ~/.wgetrc
        SYSTEM_WGETRC=str(home / "wgetrc"),
    )
    e.pop("VMM_INSTALL_PYTHON", None)
    if env:
        e.update(env)
    proc = subprocess.run(
        (argv if argv is not None else [str(SCRIPT)]) + list(args),
        env=e,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or tmp,
    )
    run = Run(proc, tmpdir)
    leftovers = sorted(p.name for p in tmpdir.iterdir())
    assert leftovers == [], f"temp files left in TMPDIR: {leftovers}\n{run.explain()}"
    return run


def assert_no_firecracker(prefix: Path) -> None:
    bindir = prefix / "bin"
    present = sorted(p.name for p in bindir.iterdir()) if bindir.exists() else []
    assert not {"firecracker", "jailer"} & set(present), present
    assert not [n for n in present if n.startswith(".")], f"temp files left in bin: {present}"


def version_of(binary: Path) -> str:
    return subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def path_without(tmp: Path, *missing: str) -> str:
    """A bin dir linking every tool of the standard dirs except ``missing`` (simulates a host
    without them)."""
    bindir = tmp / "fakebin"
    bindir.mkdir()
    seen = set(missing)
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name in seen:
                continue
            seen.add(name)
            (bindir / name).symlink_to(os.path.join(d, name))
    return str(bindir)


def usr_local_state() -> dict[str, tuple[int, int, int] | None]:
    out: dict[str, tuple[int, int, int] | None] = {}
    for p in ("bin/vmm", "bin/firecracker", "bin/jailer", "lib/vmm", "lib/vmm/venv"):
        try:
            st = os.lstat(f"/usr/local/{p}")
            out[p] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            out[p] = None
    return out


@pytest.fixture(scope="module", autouse=True)
def nothing_outside_prefix() -> Iterator[None]:
    before = usr_local_state()
    yield
    assert usr_local_state() == before, "install.sh touched /usr/local outside the tmp prefix"


def require_offline_build() -> None:
    """pip runs with PIP_NO_INDEX=1, so the venv must build vmm from Debian's wheels: setuptools
    (>= 61) plus either ``wheel`` or setuptools >= 70.1."""
    wheels = "/usr/share/python-wheels"
    if glob.glob(f"{wheels}/wheel-*.whl"):
        return
    for whl in glob.glob(f"{wheels}/setuptools-*.whl"):
        major, minor = (int(x) for x in Path(whl).name.split("-")[1].split(".")[:2])
        if (major, minor) >= (70, 1):
            return
    pytest.skip("building vmm offline needs Debian's wheel: apt-get install python3-wheel-whl")


@pytest.fixture(scope="module")
def installed(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Run, list[str]]:
    """One full install (vmm into a venv + Firecracker) shared by the module: pip is slow.
    Returns the prefix, the run and the paths the installer requested."""
    require_offline_build()
    tmp = tmp_path_factory.mktemp("full")
    prefix = tmp / "prefix"
    server.requests.clear()
    run = install(server.url("good"), "--prefix", str(prefix), "--no-deps", tmp=tmp)
    assert run.rc == 0, run.explain()
    return prefix, run, [p for p, _ in server.requests]


@pytest.fixture
def own_install(installed: tuple[Path, Run, list[str]]) -> Iterator[tuple[Path, Run, list[str]]]:
    """The shared install, for a test that changes or removes it: saved before the test and put
    back after it, whatever happened, so every test finds it as installed, alone or in any order.
    Saved and restored in place (``cp -a``, then a rename back): a venv cannot be moved, its
    scripts and ``bin/vmm`` name their absolute paths; copying is much faster than pip."""
    prefix = installed[0]
    saved = prefix.with_name(prefix.name + ".saved")
    subprocess.run(["cp", "-a", "--", str(prefix), str(saved)], check=True, timeout=300)
    try:
        yield installed
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
        os.rename(saved, prefix)


# --------------------------------------------------------------------------------------------
# Tests


def test_installs_vmm_and_firecracker(installed: tuple[Path, Run, list[str]]) -> None:
    prefix, run, paths = installed
    fc, jailer, vmm = (
        prefix / "bin" / "firecracker",
        prefix / "bin" / "jailer",
        prefix / "bin" / "vmm",
    )
    assert version_of(fc) == f"Firecracker v{V}"
    assert version_of(jailer) == f"Jailer v{V}"
    for b in (fc, jailer):
        assert stat.S_IMODE(b.stat().st_mode) == 0o755 and not b.is_symlink()
    assert not (prefix / "bin" / "seccompiler").exists()

    venv = prefix / "lib" / "vmm" / "venv"
    assert vmm.is_symlink() and Path(os.readlink(vmm)) == venv / "bin" / "vmm"
    assert version_of(vmm).startswith("vmm ")
    # A real (non-editable) install in the venv, not the checkout and not the system Python.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys, vmm; print(sys.prefix); print(vmm.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.split()
    assert where[0] == str(venv)
    assert where[1].startswith(str(venv / "lib")), where
    assert not glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "__editable__*"))

    assert not [n for n in os.listdir(prefix / "bin") if n.startswith(".")]
    assert f"{prefix}/bin/firecracker" in run.proc.stdout
    assert "vmm config init" in run.proc.stdout and "vmm version" in run.proc.stdout
    assert run.errors == []
    # curl fetched the tarball and its checksum from the loopback server
    assert f"/good/v{V}/firecracker-v{V}-{ARCH}.tgz" in paths
    assert f"/good/v{V}/firecracker-v{V}-{ARCH}.tgz.sha256.txt" in paths


def test_second_run_upgrades_in_place(
    own_install: tuple[Path, Run, list[str]], server: Server, tmp_path: Path
) -> None:
    prefix, _, _ = own_install
    venv = prefix / "lib" / "vmm" / "venv"
    marker = venv / "pyvenv.cfg"
    inode = marker.stat().st_ino
    (prefix / "bin" / "firecracker").write_text("#!/bin/sh\necho old\n")  # an older install
    run = install(server.url("good"), "--prefix", str(prefix), "--no-deps", tmp=tmp_path)
    assert run.rc == 0, run.explain()
    assert "upgrading vmm" in run.proc.stderr
    assert marker.stat().st_ino == inode, "the venv was recreated instead of upgraded"
    assert version_of(prefix / "bin" / "firecracker") == f"Firecracker v{V}"
    assert version_of(prefix / "bin" / "vmm").startswith("vmm ")


def test_checksum_mismatch_installs_nothing(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(server.url("corrupt"), "--prefix", str(prefix), "--no-deps", tmp=tmp_path)
    assert run.rc == 1, run.explain()
    assert len(run.errors) == 1 and "checksum" in run.errors[0], run.explain()
    assert_no_firecracker(prefix)
    assert not (prefix / "lib" / "vmm").exists(), "vmm was installed before the check failed"


def test_server_down(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    url = f"http://127.0.0.1:{closed_port()}"
    run = install(url, "--prefix", str(prefix), "--no-deps", "--no-vmm", tmp=tmp_path, timeout=120)
    assert run.rc == 1, run.explain()
    assert len(run.errors) == 1, run.explain()
    assert f"could not download {url}/v{V}/firecracker-v{V}-{ARCH}.tgz" in run.errors[0]
    assert "--no-firecracker" in run.errors[0]
    assert_no_firecracker(prefix)


def test_missing_release_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    run = install(
        server.url("good"),
        "--prefix",
        str(tmp_path / "p"),
        "--no-deps",
        "--no-vmm",
        "--version",
        "1.99.0",
        tmp=tmp_path,
    )
    assert run.rc == 1, run.explain()
    assert "could not download" in run.errors[0] and "404" in run.errors[0], run.explain()


def test_tarball_without_jailer(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(
        server.url("nojailer"), "--prefix", str(prefix), "--no-deps", "--no-vmm", tmp=tmp_path
    )
    assert run.rc == 1, run.explain()
    assert f"jailer-v{V}-{ARCH}" in run.errors[0], run.explain()
    assert_no_firecracker(prefix)


def test_binary_reporting_another_version_is_refused(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(
        server.url("wrongversion"), "--prefix", str(prefix), "--no-deps", "--no-vmm", tmp=tmp_path
    )
    assert run.rc == 1, run.explain()
    assert "v1.10.1" in run.errors[0], run.explain()
    assert_no_firecracker(prefix)


def test_other_version_and_arch(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(
        server.url("good"),
        "--prefix",
        str(prefix),
        "--no-deps",
        "--no-vmm",
        tmp=tmp_path,
        env={"VMM_INSTALL_ARCH": "aarch64"},
    )
    assert run.rc == 0, run.explain()
    assert version_of(prefix / "bin" / "firecracker") == f"Firecracker v{V}"
    assert f"/good/v{V}/firecracker-v{V}-aarch64.tgz" in [p for p, _ in server.requests]

    run = install(
        server.url("good"),
        "--prefix",
        str(prefix),
        "--no-deps",
        "--no-vmm",
        "--version",
        "1.12.0",
        tmp=tmp_path,
    )
    assert run.rc == 0, run.explain()
    assert version_of(prefix / "bin" / "firecracker") == "Firecracker v1.12.0"
    assert "v1.11 API" in run.proc.stderr  # warned: vmm targets v1.11


def test_unsupported_architecture(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(
        server.url("good"),
        "--prefix",
        str(prefix),
        "--no-deps",
        tmp=tmp_path,
        env={"VMM_INSTALL_ARCH": "riscv64"},
    )
    assert run.rc == 1, run.explain()
    assert run.errors == [run.proc.stderr.strip().splitlines()[-1]]
    assert "unsupported architecture" in run.errors[0] and "riscv64" in run.errors[0]
    assert not prefix.exists()


def test_not_root(server: Server, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # A copy nobody can read, whatever the permissions of the checkout.
    shared = Path(tempfile.mkdtemp(prefix="vmm-install-test-"))
    try:
        shared.chmod(0o755)
        script = shared / "install.sh"
        shutil.copy(SCRIPT, script)
        script.chmod(0o755)
        run = install(
            server.url("good"),
            "--prefix",
            str(shared / "prefix"),
            "--no-deps",
            tmp=tmp_path,
            argv=[
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "bash",
                str(script),
            ],
            cwd=shared,
        )
        assert run.rc == 1, run.explain()
        assert len(run.errors) == 1 and "run it with sudo" in run.errors[0], run.explain()
        assert not (shared / "prefix").exists()
    finally:
        shutil.rmtree(shared)


def test_wget_fallback_without_curl(server: Server, tmp_path: Path) -> None:
    if shutil.which("wget") is None:
        pytest.skip("wget is not installed (apt-get install wget)")
    prefix = tmp_path / "prefix"
    path = path_without(tmp_path, "curl")
    server.requests.clear()
    run = install(
        server.url("good"),
        "--prefix",
        str(prefix),
        "--no-deps",
        "--no-vmm",
        tmp=tmp_path,
        env={"PATH": path},
    )
    assert run.rc == 0, run.explain()
    assert version_of(prefix / "bin" / "firecracker") == f"Firecracker v{V}"
    agents = {ua.split("/")[0] for _, ua in server.requests}
    assert agents == {"Wget"}, server.requests


def test_no_curl_nor_wget(server: Server, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    run = install(
        server.url("good"),
        "--prefix",
        str(prefix),
        "--no-deps",
        "--no-vmm",
        tmp=tmp_path,
        env={"PATH": path_without(tmp_path, "curl", "wget")},
    )
    assert run.rc == 1, run.explain()
    assert "neither curl nor wget" in run.errors[0], run.explain()


def test_piped_without_a_checkout_needs_source(server: Server, tmp_path: Path) -> None:
    run = install(
        server.url("good"),
        "-s",
        "--",
        "--prefix",
        str(tmp_path / "prefix"),
        "--no-deps",
        tmp=tmp_path,
        argv=["bash"],
        stdin=SCRIPT.read_text(),
    )
    assert run.rc == 1, run.explain()
    assert "--source" in run.errors[0], run.explain()
    assert not (tmp_path / "prefix").exists()


def test_piped_with_source_url(server: Server, tmp_path: Path) -> None:
    """``curl ... | sudo bash -s -- --source URL``: vmm from a source tarball, no Firecracker."""
    require_offline_build()
    prefix = tmp_path / "prefix"
    run = install(
        server.url("good"),
        "-s",
        "--",
        "--prefix",
        str(prefix),
        "--no-deps",
        "--no-firecracker",
        "--source",
        server.url("src/vmm-src.tar.gz"),
        tmp=tmp_path,
        argv=["bash"],
        stdin=SCRIPT.read_text(),
    )
    assert run.rc == 0, run.explain()
    assert version_of(prefix / "bin" / "vmm").startswith("vmm ")
    assert_no_firecracker(prefix)


def test_local_firecracker_tarball(server: Server, tmp_path: Path) -> None:
    """--firecracker-tarball: a release downloaded by hand, still checksum-verified."""
    name = f"firecracker-v{V}-{ARCH}.tgz"
    for suffix in ("", ".sha256.txt"):
        shutil.copy(server.root / "corrupt" / f"v{V}" / (name + suffix), tmp_path / (name + suffix))
    prefix = tmp_path / "prefix"
    args = ["--prefix", str(prefix), "--no-deps", "--no-vmm", "--firecracker-tarball"]
    unreachable = f"http://127.0.0.1:{closed_port()}"
    run = install(unreachable, *args, str(tmp_path / name), tmp=tmp_path)
    assert run.rc == 1 and "checksum mismatch" in run.errors[0], run.explain()
    assert_no_firecracker(prefix)

    for suffix in ("", ".sha256.txt"):
        shutil.copy(server.root / "good" / f"v{V}" / (name + suffix), tmp_path / (name + suffix))
    run = install(unreachable, *args, str(tmp_path / name), tmp=tmp_path)
    assert run.rc == 0, run.explain()
    assert version_of(prefix / "bin" / "firecracker") == f"Firecracker v{V}"


def test_help_and_usage_errors(tmp_path: Path) -> None:
    run = install("http://127.0.0.1:9", "--help", tmp=tmp_path)
    assert run.rc == 0 and "--no-firecracker" in run.proc.stdout and "--prefix" in run.proc.stdout
    run = install("http://127.0.0.1:9", "--bogus", tmp=tmp_path)
    assert run.rc == 2 and "unknown option" in run.errors[0], run.explain()
    run = install("http://127.0.0.1:9", "--version", "latest", tmp=tmp_path)
    assert run.rc == 2 and "--version" in run.errors[0], run.explain()


HOST_PACKAGES = (
    "iproute2",
    "nftables",
    "e2fsprogs",
    "e2tools",
    "openssh-client",
    "squashfs-tools",
    "python3",
    "python3-venv",
)


@pytest.mark.allow_skip
def test_deps_already_present_runs_no_apt(server: Server, tmp_path: Path) -> None:
    """Without --no-deps on a host that has every package: dpkg-query only, apt-get never runs."""
    if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
        pytest.skip("not a Debian/Ubuntu host")
    for pkg in HOST_PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        ).stdout
        if "install ok installed" not in status:
            pytest.skip(f"{pkg} is not installed: the installer would run apt-get")
    prefix = tmp_path / "prefix"
    run = install(server.url("good"), "--prefix", str(prefix), "--no-vmm", tmp=tmp_path)
    assert run.rc == 0, run.explain()
    assert "host packages: already present" in run.proc.stdout, run.explain()
    assert version_of(prefix / "bin" / "firecracker") == f"Firecracker v{V}"


@pytest.mark.allow_skip
def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_install_then_uninstall_purge(
    own_install: tuple[Path, Run, list[str]], tmp_path: Path
) -> None:
    """Removes the install (``own_install`` puts it back for the other tests)."""
    prefix, _, _ = own_install
    unit_dir = tmp_path / "units"
    data = tmp_path / "data"
    (data / "vms").mkdir(parents=True)
    env = dict(os.environ, VMM_CONFIG=str(tmp_path / "config.json"), VMM_DATA_DIR=str(data))
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    svc = subprocess.run(
        [str(scripts / "install-service.sh"), "--prefix", str(prefix), "--unit-dir", str(unit_dir),
         "--no-enable"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    assert svc.returncode == 0, svc.stderr
    unit = (unit_dir / "vmm.service").read_text()
    assert f"ExecStart={prefix}/bin/vmm autostart" in unit
    assert f"ExecStop={prefix}/bin/vmm autostop" in unit

    gone = subprocess.run(
        [str(scripts / "uninstall.sh"), "--prefix", str(prefix), "--unit-dir", str(unit_dir),
         "--purge", "--yes"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    assert gone.returncode == 0, gone.stderr
    for p in ("bin/vmm", "bin/firecracker", "bin/jailer", "lib/vmm"):
        assert not (prefix / p).exists(), p
    assert not (unit_dir / "vmm.service").exists()
    assert not data.exists()
    assert "vmm is uninstalled" in gone.stderr
