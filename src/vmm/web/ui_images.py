"""The images page's actions, each a job whose progress the page shows live (its job panel):
import an image or a kernel from a path on the host, pull Firecracker's CI kernel and rootfs,
build an image (debootstrap) or a kernel. Pull and builds go through the API's own job
functions (``api_build``): the same checks, the same work."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.responses import Response
from starlette.routing import Route

from vmm.errors import ValidationError
from vmm.models import validate_name
from vmm.web import api_build, api_host
from vmm.web.api_host import import_source
from vmm.web.common import call, ctx, host_path, read_form
from vmm.web.ui import _int_field, action, flash, render
from vmm.web.ui_host import panel_values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from starlette.requests import Request

# The job kinds the images page follows: its panel shows them, its lists reload when one ends.
IMAGE_KINDS = ("image-import", "image-pull", "image-build")
KERNEL_KINDS = ("kernel-import", "image-pull", "kernel-build")
PAGE_KINDS = ("image-pull", "image-build", "kernel-build", "image-import", "kernel-import")
PULL_PARTS = {"both": "the kernel and the rootfs", "kernel": "the kernel", "rootfs": "the rootfs"}


def _text(form: dict[str, str], key: str) -> str | None:
    """A text field, None when left empty (the service's default then, as for the CLI)."""
    return form.get(key, "").strip() or None


def _words(form: dict[str, str], key: str) -> list[str]:
    """A list typed into one field: separated by commas or spaces."""
    return [w for w in re.split(r"[\s,]+", form.get(key, "")) if w]


async def images_page(request: Request) -> Response:
    from vmm.guest.pull import DEFAULT_BASE_URL

    c = ctx(request)
    images = await call(api_host.images_json, c.vmm)
    kernels = await call(api_host.kernels_json, c.vmm)
    return render(request, "images.html", images=images, kernels=kernels, page="images",
                  image_kinds=",".join(IMAGE_KINDS), kernel_kinds=",".join(KERNEL_KINDS),
                  kernel_versions=api_build.KERNEL_VERSIONS, default_base_url=DEFAULT_BASE_URL,
                  **panel_values(request, PAGE_KINDS))


@action
async def import_image(request: Request) -> Response:
    c = ctx(request)
    form = await read_form(request)
    name = validate_name(form.get("name", "").strip(), "image")
    source = import_source(form.get("source", "").strip())
    force = form.get("force") == "1"

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        img = c.vmm.images.import_source(source, name, force=force, progress=note)
        note(f"Imported image {img.name} from {img.meta.get('source', source)}")
        return {"image": img.name}

    c.jobs.submit("image-import", name, work)
    return flash(f"Importing image {name} from {source} ... (progress below)")


@action
async def import_kernel(request: Request) -> Response:
    c = ctx(request)
    form = await read_form(request)
    name = validate_name(form.get("name", "").strip(), "kernel")
    path = Path(host_path(form.get("path", "").strip(), "path"))
    force = form.get("force") == "1"

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        k = c.vmm.kernels.import_kernel(path, name, force=force)
        note(f"Imported kernel {k.name} ({k.meta.get('version') or 'unknown version'})")
        return {"kernel": k.name}

    c.jobs.submit("kernel-import", name, work)
    return flash(f"Importing kernel {name} from {path} ... (progress below)")


@action
async def pull(request: Request) -> Response:
    """``vmm image pull`` from the form: name, base URL, which part, replace."""
    form = await read_form(request)
    part = form.get("part") or "both"
    if part not in PULL_PARTS:
        raise ValidationError(f"unknown part to pull {part[:20]!r}", hint="both, kernel or rootfs")
    job = api_build.pull_job(ctx(request), {
        "name": _text(form, "name"), "base_url": _text(form, "base_url"),
        "kernel_only": part == "kernel", "rootfs_only": part == "rootfs", "force": form.get("force") == "1",
    })  # fmt: skip
    return flash(f"Pulling {PULL_PARTS[part]} as {job.target} ... (progress below)")


@action
async def build_image(request: Request) -> Response:
    """``vmm image build NAME --debootstrap SUITE`` from the form."""
    form = await read_form(request)
    job = api_build.build_image_job(ctx(request), {
        "name": _text(form, "name"), "suite": _text(form, "suite"), "mirror": _text(form, "mirror"),
        "packages": _words(form, "packages"), "size_mb": _int_field(form, "size_mb"),
        "force": form.get("force") == "1",
    })  # fmt: skip
    return flash(f"Building image {job.target} ... (progress below)")


@action
async def build_kernel(request: Request) -> Response:
    """``vmm kernel build`` from the form."""
    form = await read_form(request)
    job = api_build.build_kernel_job(ctx(request), {
        "name": _text(form, "name"), "version": _text(form, "version"), "source": _text(form, "source"),
        "config_fragments": _words(form, "config_fragments"), "jobs": _int_field(form, "jobs"),
        "force": form.get("force") == "1",
    })  # fmt: skip
    return flash(f"Building kernel {job.target} ... (progress below)")


ROUTES = [
    Route("/images", images_page, methods=["GET"]),
    Route("/ui/images/import", import_image, methods=["POST"]),
    Route("/ui/kernels/import", import_kernel, methods=["POST"]),
    Route("/ui/images/pull", pull, methods=["POST"]),
    Route("/ui/images/build", build_image, methods=["POST"]),
    Route("/ui/kernels/build", build_kernel, methods=["POST"]),
]
