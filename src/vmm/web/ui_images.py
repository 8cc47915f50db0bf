"""The images page's actions: import an image or a kernel from a path on the host, pull
Firecracker's CI kernel and rootfs. Each is a job (its progress on the jobs page)."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.routing import Route

from vmm.models import validate_name
from vmm.web.api_host import import_source
from vmm.web.common import ctx, host_path, read_form
from vmm.web.ui import action, flash

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from starlette.requests import Request


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
    return flash(f"Importing image {name} from {source} ... (see the jobs)")


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
    return flash(f"Importing kernel {name} from {path} ... (see the jobs)")


ROUTES = [
    Route("/ui/images/import", import_image, methods=["POST"]),
    Route("/ui/kernels/import", import_kernel, methods=["POST"]),
]
