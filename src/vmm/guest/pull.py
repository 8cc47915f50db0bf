"""``vmm image pull``: Firecracker v1.11's CI guest (kernel + Ubuntu 24.04 rootfs).

The CI artifacts bucket (Firecracker's docs/getting-started.md names it) is listed with S3's ``list-type=2`` API; the newest
``vmlinux-6.1.N`` is taken (``vmlinux-5.10.N`` when there is no 6.1), and
``ubuntu-24.04.squashfs`` is converted to ext4 by the squashfs import (``unsquashfs`` +
``mkfs.ext4 -d``). Downloads go to a ``.part`` file renamed when complete; the sha256 of what
was downloaded is recorded in the metadata.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from vmm.errors import ValidationError, VmmError
from vmm.guest.progress import Progress, quiet
from vmm.store import scratch_prefix

TYPE_CHECKING = False

DEFAULT_BASE_URL = "https://s3.amazonaws.com/spec.ccfc.min"
PREFIX = "firecracker-ci/v1.11/{arch}/"
ROOTFS_KEY = "ubuntu-24.04.squashfs"
KERNEL_SERIES = ("6.1", "5.10")
CHUNK = 1024 * 1024


def check_base_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValidationError(f"invalid --base-url {url!r}", hint="an http:// or https:// URL")
    return url.rstrip("/")


def _open(url: str, timeout: float) -> object:
    req = urllib.request.Request(url, headers={"User-Agent": "vmm"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise VmmError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VmmError(
            f"cannot reach {url}: {reason}",
            hint="this machine may be offline; use --base-url for a mirror, or import a kernel "
            "and rootfs you have ('vmm kernel import', 'vmm image import')",
        ) from None


def list_keys(base_url: str, prefix: str, *, timeout: float = 30) -> list[str]:
    """Keys under ``prefix`` (S3 ListObjectsV2, all pages)."""
    keys: list[str] = []
    token = None
    for _page in range(100):
        query = {"prefix": prefix, "list-type": "2"}
        if token:
            query["continuation-token"] = token
        url = f"{base_url}/?{urllib.parse.urlencode(query)}"
        with _open(url, timeout) as resp:  # type: ignore[attr-defined]
            body = resp.read()
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise VmmError(f"{url}: not an S3 listing ({exc})") from None
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "Key" and el.text:
                keys.append(el.text)
            elif tag == "NextContinuationToken":
                token = el.text
        truncated = next((el.text for el in root.iter() if el.tag.endswith("IsTruncated")), None)
        if truncated != "true" or not token:
            break
    return keys


def newest_kernel(keys: list[str], series: str) -> str | None:
    """The key of the newest ``vmlinux-SERIES.N`` (no suffixes such as ``-no-acpi``)."""
    pat = re.compile(rf"(?:.*/)?vmlinux-{re.escape(series)}\.(\d{{1,4}})")
    best: tuple[int, str] | None = None
    for key in keys:
        if m := pat.fullmatch(key):
            n = int(m.group(1))
            if best is None or n > best[0]:
                best = (n, key)
    return best[1] if best else None


def find_kernel(base_url: str, arch: str, progress: Progress = quiet) -> str:
    prefix = PREFIX.format(arch=arch)
    for series in KERNEL_SERIES:
        progress(f"listing {base_url} for {prefix}vmlinux-{series}.*")
        key = newest_kernel(list_keys(base_url, f"{prefix}vmlinux-{series}"), series)
        if key:
            return key
    raise VmmError(f"no vmlinux-6.1.* or vmlinux-5.10.* under {base_url}/{prefix}")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def download(
    url: str, dest: Path, *, progress: Progress = quiet, timeout: float = 60,
    status: Progress | None = None,
) -> str:
    """``url`` → ``dest`` through ``dest.part``; returns the sha256.

    Bytes so far and the rate go to ``status`` five times a second when given (a terminal's
    status line), else to ``progress`` every 5 s; the total to ``progress`` at the end."""
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    start = last = time.monotonic()
    done = 0
    try:
        with _open(url, timeout) as resp, part.open("wb") as out:  # type: ignore[attr-defined]
            total = int(resp.headers.get("Content-Length") or 0)
            name = url.rsplit("/", 1)[-1]

            def line() -> str:
                rate = done / max(time.monotonic() - start, 1e-6)
                of = f" / {_human(total)}" if total else ""
                return f"{name}: {_human(done)}{of} ({_human(rate)}/s)"

            while chunk := resp.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= (0.2 if status else 5):
                    last = now
                    (status or progress)(line())
            if total and done != total:
                raise VmmError(f"{url}: got {done} of {total} bytes (connection cut?)")
        progress(line() + ", done")
        os.replace(part, dest)
    except (OSError, TimeoutError) as exc:
        raise VmmError(f"downloading {url} failed: {exc}") from None
    finally:
        if part.exists():
            part.unlink()
    return h.hexdigest()


def pull(
    images: ImageRegistry,
    kernels: KernelRegistry,
    *,
    name: str = "default",
    base_url: str = DEFAULT_BASE_URL,
    kernel: bool = True,
    rootfs: bool = True,
    force: bool = False,
    progress: Progress = quiet,
    status: Progress | None = None,
) -> tuple[Kernel | None, Image | None]:
    """Download, convert and register the CI kernel and/or rootfs as ``name`` (``status``: see
    ``download``)."""
    import shutil
    import tempfile

    from vmm.errors import ConflictError
    from vmm.models import validate_name

    validate_name(name, "image")
    validate_name(name, "kernel")
    base_url = check_base_url(base_url)
    if not force:
        if kernel and (kernels.dir / name).exists():
            raise ConflictError(f"kernel {name!r} already exists", hint="use -f to replace it")
        if rootfs and images.path_of(name).exists():
            raise ConflictError(f"image {name!r} already exists", hint="use -f to replace it")
    arch = os.uname().machine
    prefix = PREFIX.format(arch=arch)
    images.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=scratch_prefix("pull"), dir=images.dir))
    k = img = None
    try:
        if kernel:
            key = find_kernel(base_url, arch, progress)
            url = f"{base_url}/{key}"
            path = work / key.rsplit("/", 1)[-1]
            sha = download(url, path, progress=progress, status=status)
            k = kernels.import_kernel(path, name, force=True,
                                      extra={"source": url, "download_sha256": sha})
        if rootfs:
            url = f"{base_url}/{prefix}{ROOTFS_KEY}"
            path = work / ROOTFS_KEY
            sha = download(url, path, progress=progress, status=status)
            progress("converting the squashfs to ext4 (unsquashfs, mkfs.ext4 -d)")
            img = images.import_source(str(path), name, force=True, label=url,
                                       extra={"download_sha256": sha}, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return k, img


if TYPE_CHECKING:
    from vmm.guest.images import Image, ImageRegistry
    from vmm.guest.kernels import Kernel, KernelRegistry
