"""Long image and kernel work over the API, as jobs with live progress: ``image pull`` (the
Firecracker CI kernel and rootfs), ``image build`` (debootstrap) and ``kernel build``. Their
steps are the job's progress lines; a download's or a compile's live line is its status line.

The ``*_job`` functions check the fields (already typed by ``common.take``) and submit the job:
the API's handlers here and the images page's forms (``ui_images``) share them."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.routing import Route

from vmm.errors import ValidationError
from vmm.models import validate_name
from vmm.web.api import api, job_response
from vmm.web.common import ctx, host_path, read_json, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from starlette.requests import Request

    from vmm.web.common import Context
    from vmm.web.jobs import Job

KERNEL_VERSIONS = ("5.10", "6.1", "6.6")
PULL_FIELDS: dict[str, type] = {"name": str, "base_url": str, "kernel_only": bool, "rootfs_only": bool, "force": bool}
IMAGE_BUILD_FIELDS: dict[str, type] = {"name": str, "suite": str, "mirror": str, "packages": list, "size_mb": int,
                                       "force": bool}
KERNEL_BUILD_FIELDS: dict[str, type] = {"name": str, "version": str, "source": str, "config_fragments": list,
                                        "jobs": int, "force": bool}
KINDS = ("image-pull", "image-build", "kernel-build")


def _status(note: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: note("\r" + line)


def pull_job(c: Context, f: dict[str, Any]) -> Job:
    """``vmm image pull``: ``{"name", "base_url", "kernel_only", "rootfs_only", "force"}``."""
    from vmm.guest import pull

    name = validate_name(f.get("name") or "default", "image")
    base_url = pull.check_base_url(f.get("base_url") or pull.DEFAULT_BASE_URL)
    if f.get("kernel_only") and f.get("rootfs_only"):
        raise ValidationError("kernel_only and rootfs_only exclude each other")

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        k, img = pull.pull(
            c.vmm.images, c.vmm.kernels, name=name, base_url=base_url,
            kernel=not f.get("rootfs_only"), rootfs=not f.get("kernel_only"),
            force=bool(f.get("force")), progress=note, status=_status(note),
        )  # fmt: skip
        if k:
            note(f"Pulled kernel {k.name} ({k.meta.get('version') or '?'}) from {k.meta.get('source')}")
        if img:
            note(f"Pulled image {img.name} from {img.meta.get('source')}")
        return {"kernel": k.name if k else None, "image": img.name if img else None}

    return c.jobs.submit("image-pull", name, work)


def build_image_job(c: Context, f: dict[str, Any]) -> Job:
    """``vmm image build``: ``{"name", "suite", "mirror", "packages", "size_mb", "force"}``."""
    name = validate_name(f.get("name") or "", "image")
    suite = f.get("suite") or "bookworm"
    if not suite.isascii() or not suite.replace("-", "").isalnum():
        raise ValidationError(f"invalid suite {suite[:40]!r}", hint="e.g. bookworm, trixie, noble")
    mirror = f.get("mirror")
    if mirror is not None and not mirror.startswith(("http://", "https://")):
        raise ValidationError("mirror must be an http:// or https:// URL")

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        img = c.vmm.images.build_debootstrap(
            name, suite, mirror=mirror, packages=f.get("packages") or (), size_mb=f.get("size_mb"),
            force=bool(f.get("force")), progress=note, output=_status(note),
        )
        note(f"Built image {img.name} from {img.meta.get('source')} ({img.meta.get('packages')} packages)")
        return {"image": img.name, "virtual_size": img.virtual_size}

    return c.jobs.submit("image-build", name, work)


def build_kernel_job(c: Context, f: dict[str, Any]) -> Job:
    """``vmm kernel build``: ``{"name", "version", "source", "config_fragments", "jobs", "force"}``
    (paths absolute, on the host)."""
    name = validate_name(f.get("name") or "", "kernel")
    version = f.get("version") or "6.1"
    if version not in KERNEL_VERSIONS:
        raise ValidationError(f"unknown kernel version {version[:20]!r}", hint="one of " + ", ".join(KERNEL_VERSIONS))
    source = Path(host_path(f["source"], "source")) if f.get("source") else None
    fragments = [Path(host_path(p, "config_fragments")) for p in f.get("config_fragments") or ()]
    jobs = f.get("jobs")
    if jobs is not None and not 1 <= jobs <= 256:
        raise ValidationError(f"jobs must be between 1 and 256, got {jobs}")

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        k, config, release = c.vmm.kernels.build(
            name, version, source=source, fragments=fragments, jobs=jobs, force=bool(f.get("force")),
            progress=note, status=_status(note),
        )
        note(f"Built kernel {k.name} ({k.meta.get('version') or release}); config: {config}")
        return {"kernel": k.name, "config": str(config), "release": release}

    return c.jobs.submit("kernel-build", name, work)


@api
async def pull_image(request: Request) -> Response:
    return job_response(pull_job(ctx(request), take(await read_json(request), PULL_FIELDS)))


@api
async def build_image(request: Request) -> Response:
    return job_response(build_image_job(ctx(request), take(await read_json(request), IMAGE_BUILD_FIELDS)))


@api
async def build_kernel(request: Request) -> Response:
    return job_response(build_kernel_job(ctx(request), take(await read_json(request), KERNEL_BUILD_FIELDS)))


ROUTES = [
    Route("/api/v1/images/pull", pull_image, methods=["POST"]),
    Route("/api/v1/images/build", build_image, methods=["POST"]),
    Route("/api/v1/kernels/build", build_kernel, methods=["POST"]),
]
