"""Pull and build end to end over the API: a real ``image pull`` job against a fake CI bucket
served inside the server's network namespace (the job's progress arrives live on the event
stream, the kernel and the image are registered and listed), and a real ``kernel build`` job on
Debian's kernel tree that stops at the config check, before compiling, with the CLI's message."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_image_import import cat
from tests.web.bucket import KEY, ROOTFS
from tests.web.harness import SSE, Server

pytestmark = pytest.mark.integration

TREE = Path(os.environ.get("VMM_TEST_CACHE", "/var/cache/vmm-test")) / "src"


def pull_job(server: Server, body: dict[str, Any], timeout: float = 120.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a pull; its last job event and every one before it, read from the event stream."""
    events = SSE(server)
    try:
        r = server.request("POST", "/api/v1/images/pull", body)
        assert r.status == 202, r
        job_id = r.json()["job"]["id"]
        seen: list[dict[str, Any]] = []

        def ended(event: str, data: Any) -> bool:
            if event != "job" or data["id"] != job_id:
                return False
            seen.append(data)
            return bool(data["state"] != "running")

        _, last, _ = events.wait_for(ended, timeout)
        return last, seen
    finally:
        events.close()


def test_pull_over_the_api_registers_and_lists_the_kernel_and_image(
    server: Server, bucket: tuple[str, dict[str, bytes]]
) -> None:
    base, files = bucket
    job, seen = pull_job(server, {"name": "pulled", "base_url": base})
    assert job["state"] == "succeeded" and job["status"] == 200, job
    assert job["result"] == {"kernel": "pulled", "image": "pulled"}

    # progress arrived while the job ran: the rootfs download's live line, then the conversion
    running = [d for d in seen if d["state"] == "running"]
    live = [d["status_line"] for d in running if (d["status_line"] or "").startswith("ubuntu-24.04.squashfs: ")]
    assert live and all("/s)" in line for line in live), [d["status_line"] for d in running]
    assert any("converting the squashfs to ext4" in line for d in running for line in d["progress"])
    assert any(line.startswith("vmlinux-6.1.128: ") and line.endswith(", done") for line in job["progress"])
    assert job["progress"][-2:] == [
        f"Pulled kernel pulled (?) from {base}/{KEY}vmlinux-6.1.128",
        f"Pulled image pulled from {base}/{KEY}ubuntu-24.04.squashfs",
    ], job["progress"]

    image = next(i for i in server.request("GET", "/api/v1/images").json()["images"] if i["name"] == "pulled")
    assert image["source"] == f"{base}/{KEY}ubuntu-24.04.squashfs"
    assert image["download_sha256"] == hashlib.sha256(files[ROOTFS]).hexdigest()
    kernel = next(k for k in server.request("GET", "/api/v1/kernels").json()["kernels"] if k["name"] == "pulled")
    assert kernel["source"] == f"{base}/{KEY}vmlinux-6.1.128" and kernel["arch"] == "x86_64"
    assert "pulled" in server.cli("image", "list").stdout and "pulled" in server.cli("kernel", "list").stdout
    images = server.env.data_dir / "images"
    assert cat(images / "pulled.ext4", "/etc/marker") == "from-the-bucket\n"
    assert [p.name for d in (images, images / "kernels") for p in d.iterdir() if p.name.startswith(".")] == []

    # as the CLI: an existing one is not replaced without force; kernel_only touches the kernel
    again, _ = pull_job(server, {"name": "pulled", "base_url": base})
    assert again["state"] == "failed" and again["status"] == 409, again
    assert again["error"] == {"error": "kernel 'pulled' already exists", "hint": "use -f to replace it"}
    before = (images / "pulled.ext4").stat().st_mtime_ns
    only, _ = pull_job(server, {"name": "pulled", "base_url": base, "kernel_only": True, "force": True})
    assert only["state"] == "succeeded" and only["result"] == {"kernel": "pulled", "image": None}, only
    assert (images / "pulled.ext4").stat().st_mtime_ns == before

    # and a VM can be made from them
    r = server.request("POST", "/api/v1/vms", {"name": "frompull", "image": "pulled", "kernel": "pulled"})
    assert r.status == 201 and r.json()["vm"]["image"] == "pulled", r
    assert server.wait_job(server.request("DELETE", "/api/v1/vms/frompull"))["state"] == "succeeded"
    assert server.request("DELETE", "/api/v1/images/pulled").status == 200
    assert server.request("DELETE", "/api/v1/kernels/pulled").status == 200


def test_a_pull_missing_its_rootfs_registers_no_image(server: Server, bucket: tuple[str, dict[str, bytes]]) -> None:
    base, files = bucket
    del files[ROOTFS]
    job, _ = pull_job(server, {"name": "norootfs", "base_url": base, "rootfs_only": True})
    assert job["state"] == "failed" and "HTTP 404" in job["error"]["error"], job
    assert "norootfs" not in [i["name"] for i in server.request("GET", "/api/v1/images").json()["images"]]


@pytest.mark.skipif(not (TREE / ".complete-linux-source-6.1").exists(),
                    reason="no unpacked kernel tree: tests/integration/test_kernel_build.py makes it")
def test_kernel_build_over_the_api_stops_at_the_config_check(server: Server, tmp_path: Path) -> None:
    frag = tmp_path / "bad.fragment"
    frag.write_text("# CONFIG_VIRTIO_BLK is not set\nCONFIG_NO_SUCH_OPTION=y\n")
    r = server.request("POST", "/api/v1/kernels/build", {
        "name": "k", "version": "6.1", "source": str(TREE / "linux-source-6.1"),
        "config_fragments": [str(frag)], "jobs": 2})
    job = server.wait_job(r, timeout=180)
    assert job["state"] == "failed" and job["kind"] == "kernel-build", job
    error = job["error"]["error"]
    assert error.startswith("kernel config check failed: 2 option(s)"), error
    assert "VIRTIO_BLK=y (required)" in error and "NO_SUCH_OPTION=y (fragment)" in error
    assert "nothing was compiled" in job["error"]["hint"]
    assert any("make olddefconfig" in line for line in job["progress"]), job["progress"]
    assert not any("make -j" in line for line in job["progress"])
    assert "k" not in [k["name"] for k in server.request("GET", "/api/v1/kernels").json()["kernels"]]
