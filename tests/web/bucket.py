"""A fake Firecracker CI bucket (what ``vmm image pull`` lists and downloads) served over HTTP
from inside a server's network namespace, so ``vmm serve`` pulls from it as from the real one:
a listing, an ELF kernel-shaped file and a squashfs built here with mksquashfs, as in
tests/integration/test_pull.py. The rootfs can be sent slowly to see a download's live line."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.test_image_import import guest_tree
from tests.netns import NetNS
from tests.unit.test_kernels import fake_elf
from tests.unit.test_pull import listing
from tests.web.harness import in_netns

KEY = "firecracker-ci/v1.11/x86_64/"
PRE = "/bucket/" + KEY
KERNEL = PRE + "vmlinux-6.1.128"
ROOTFS = PRE + "ubuntu-24.04.squashfs"


class Bucket(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    slow: set[str] = set()  # paths sent in 64 KiB pieces at about 2 MiB/s
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        step = 64 * 1024 if self.path in self.slow else len(body) or 1
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if self.path in self.slow:
                self.wfile.flush()
                time.sleep(step / (2 * 1024 * 1024))
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def bucket_files(work: Path, *, rootfs_mb: int = 0, marker: str = "from-the-bucket") -> dict[str, bytes]:
    """The bucket's objects: the listing vmm asks for, a kernel, a squashfs of a guest tree
    (with ``rootfs_mb`` MiB of random data, so its download takes a while when slow)."""
    files = {
        f"/bucket/?prefix={KEY.replace('/', '%2F')}vmlinux-6.1&list-type=2": listing(
            KEY + "vmlinux-6.1.5", KEY + "vmlinux-6.1.128", KEY + "vmlinux-6.1.128.config"),
        KERNEL: fake_elf(work / "vmlinux").read_bytes(),
    }
    tree = guest_tree(work / "tree", marker=marker)
    if rootfs_mb:
        (tree / "padding").write_bytes(os.urandom(rootfs_mb * 1024 * 1024))
    sq = work / "ubuntu.squashfs"
    subprocess.run(["mksquashfs", str(tree), str(sq), "-quiet", "-noappend", "-all-root"],
                   check=True, capture_output=True)
    files[ROOTFS] = sq.read_bytes()
    return files


@contextlib.contextmanager
def serve_bucket(ns: NetNS, files: dict[str, bytes], slow: set[str] | None = None) -> Iterator[str]:
    """Serve ``files`` on 127.0.0.1 inside ``ns`` (the listening socket is made there, so only
    that namespace reaches it); yields the base URL to pull from."""
    handler = type("H", (Bucket,), {"files": files, "slow": slow or set()})
    httpd = in_netns(ns, lambda: http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/bucket"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
