"""`vmm image pull` logic against a local HTTP server (127.0.0.1 only), and the kernel config check."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm.errors import VmmError
from vmm.guest import kernelbuild, pull

pytestmark = pytest.mark.unit

LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Name>spec.ccfc.min</Name><IsTruncated>false</IsTruncated>
{keys}
</ListBucketResult>"""


def listing(*keys: str) -> bytes:
    return LISTING.format(keys="".join(f"<Contents><Key>{k}</Key></Contents>" for k in keys)).encode()


class Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("H", (Files,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/bucket", files
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_newest_kernel_picks_highest_patch_level() -> None:
    keys = [
        "firecracker-ci/v1.11/x86_64/vmlinux-6.1.9",
        "firecracker-ci/v1.11/x86_64/vmlinux-6.1.102",
        "firecracker-ci/v1.11/x86_64/vmlinux-6.1.130.config",
        "firecracker-ci/v1.11/x86_64/vmlinux-6.1.141-no-acpi",
        "firecracker-ci/v1.11/x86_64/debug/vmlinux-6.1.150",
    ]
    assert pull.newest_kernel(keys, "6.1") == "firecracker-ci/v1.11/x86_64/debug/vmlinux-6.1.150"
    assert pull.newest_kernel(keys[:4], "6.1") == "firecracker-ci/v1.11/x86_64/vmlinux-6.1.102"
    assert pull.newest_kernel(keys, "5.10") is None


def test_find_kernel_falls_back_to_5_10(server: tuple[str, dict[str, bytes]]) -> None:
    base, files = server
    pre = "firecracker-ci/v1.11/x86_64/"
    files["/bucket/?prefix=firecracker-ci%2Fv1.11%2Fx86_64%2Fvmlinux-6.1&list-type=2"] = listing()
    files["/bucket/?prefix=firecracker-ci%2Fv1.11%2Fx86_64%2Fvmlinux-5.10&list-type=2"] = listing(
        pre + "vmlinux-5.10.7", pre + "vmlinux-5.10.223", pre + "vmlinux-5.10.230-no-acpi"
    )
    lines: list[str] = []
    assert pull.find_kernel(base, "x86_64", lines.append) == pre + "vmlinux-5.10.223"
    assert len(lines) == 2


def test_download_is_atomic_with_sha256(server: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    base, files = server
    data = bytes(range(256)) * 20000
    files["/bucket/blob"] = data
    lines: list[str] = []
    dest = tmp_path / "blob"
    assert pull.download(f"{base}/blob", dest, progress=lines.append) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert not (tmp_path / "blob.part").exists()
    assert "4.9 MB" in lines[-1] and "/s)" in lines[-1]


def test_download_errors_leave_nothing(server: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(VmmError, match="HTTP 404"):
        pull.download(f"{base}/missing", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_offline_names_the_url(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/bucket"
    with pytest.raises(VmmError) as err:
        pull.list_keys(url, "x")
    assert f"cannot reach {url}/?prefix=x" in err.value.brief
    assert "offline" in (err.value.hint or "")


def test_bad_base_url() -> None:
    with pytest.raises(VmmError, match="invalid --base-url"):
        pull.check_base_url("ftp://example.org/x")


def good_config() -> str:
    return "\n".join(f"CONFIG_{o}=y" for o in kernelbuild.REQUIRED) + "\n"


def test_config_check_required_and_fragment_lines() -> None:
    assert kernelbuild.check_config(good_config(), ["CONFIG_VIRTIO_BLK=y\n"]) == []
    missing = kernelbuild.check_config(good_config().replace("CONFIG_PVH=y\n", ""), [])
    assert missing == ["PVH=y (required)"]
    # a fragment line that did not survive (dependency unmet), and an =n that came back
    frag = "CONFIG_FOO=y\n# CONFIG_MODULES is not set\n"
    missing = kernelbuild.check_config(good_config() + "CONFIG_MODULES=y\n", [frag])
    assert missing == ["FOO=y (fragment), got unset", "MODULES=n (fragment), got y"]
    # a later fragment wins over an earlier one
    missing = kernelbuild.check_config(good_config().replace("CONFIG_VIRTIO_BLK=y\n", ""),
                                       ["CONFIG_VIRTIO_BLK=y\n", "# CONFIG_VIRTIO_BLK is not set\n"])
    assert missing == ["VIRTIO_BLK=y (required) (turned off by a fragment)"]


def test_shipped_recipe_files_exist() -> None:
    text = kernelbuild.config_text()
    assert "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" in text
    assert text.index("microvm-kernel-ci") < text.index("vmm-guest.fragment")


FAKE_MAKEFILE = """\
vmlinux:
\t@echo "make[1]: Entering directory '$(O)'"
\t@echo "  CC      init/main.o"
\t@echo "  CC      drivers/acpi/acpica/uterror.o"
\t@echo "  AR      init/built-in.a"
\t@echo "  HOSTCC  scripts/kallsyms.o"
\t@printf '\\177ELF' > $(O)/vmlinux
broken:
\t@echo "  CC      kernel/fork.o"
\t@echo "kernel/fork.c:1:2: error: expected ';'" >&2
\t@exit 2
"""


def test_compile_streams_makes_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make's lines reach ``output`` as they come; objects are counted from them (a file named
    like "uterror.o" is no error); the status line names the object; a failure its errors."""
    from vmm.runner import Runner

    src, build = tmp_path / "src", tmp_path / "build"
    src.mkdir()
    build.mkdir()
    (src / "Makefile").write_text(FAKE_MAKEFILE)
    output: list[str] = []
    status: list[str] = []
    lines: list[str] = []
    monkeypatch.setattr(kernelbuild, "STATUS_EVERY", 0.0)
    vmlinux = kernelbuild.compile_vmlinux(Runner(), src, build, 1, lines.append,
                                          status=status.append, output=output.append)
    assert vmlinux == build / "vmlinux"
    assert "  CC      init/main.o" in output and "  AR      init/built-in.a" in output
    assert len(status) == 3 and status[-1].startswith("make vmlinux: 3 objects, ")
    assert status[-1].endswith(": scripts/kallsyms.o")
    assert lines[0] == "make -j1 vmlinux (about 10 minutes on 2 cores)"
    assert lines[-1].startswith("built vmlinux in ") and lines[-1].endswith("(3 objects)")
    monkeypatch.setattr(kernelbuild, "PROGRESS_EVERY", 0.0)
    lines.clear()
    kernelbuild.compile_vmlinux(Runner(), src, build, 1, lines.append)  # no status: progress
    assert [ln.split(" s")[0].rsplit(", ", 1)[0] for ln in lines[1:4]] == [
        f"make vmlinux: {n} objects" for n in (1, 2, 3)]
    (src / "Makefile").write_text(FAKE_MAKEFILE.replace("vmlinux:", "vmlinux: broken", 1))
    with pytest.raises(VmmError, match=r"make vmlinux failed: kernel/fork.c:1:2: error: expected"):
        kernelbuild.compile_vmlinux(Runner(), src, build, 1)


def test_download_status_goes_to_its_callback(server: tuple[str, dict[str, bytes]],
                                              tmp_path: Path) -> None:
    base, files = server
    files["/bucket/blob"] = b"x" * (3 * pull.CHUNK)
    lines: list[str] = []
    status: list[str] = []
    pull.download(f"{base}/blob", tmp_path / "blob", progress=lines.append, status=status.append)
    assert lines == [lines[-1]] and lines[-1].endswith(", done")  # only the total
