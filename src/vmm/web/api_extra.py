"""The rest of the CLI's VM and host commands over the API: mounts (list, sync, pull), the
autostart flag, and ``network prune``."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vmm.errors import ValidationError
from vmm.models import TAG_RE, validate_name
from vmm.web.api import api, job_response
from vmm.web.common import call, ctx, host_path, read_json, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from starlette.requests import Request

    from vmm.app import Vmm
    from vmm.guest.mountsync import MountImages


def mount_images(vmm: Vmm) -> MountImages:
    from vmm.guest.mountsync import MountImages

    return MountImages(vmm.store, vmm.runner)


def mounts_json(vmm: Vmm, name: str) -> list[dict[str, Any]]:
    """``vmm mount list NAME --json``."""
    from vmm.guest.mounts import guest_path

    _vm, statuses = mount_images(vmm).status(name)
    return [
        {**s.mount.to_dict(), "guest_path": guest_path(s.mount), "state": s.state,
         "image_exists": s.image_exists, "image_disk_usage": s.image_size}
        for s in statuses
    ]  # fmt: skip


def _tag(request: Request) -> str:
    tag: str = request.path_params["tag"]
    if not TAG_RE.fullmatch(tag):
        raise ValidationError(f"invalid mount tag {tag[:40]!r}", hint="1-32 letters, digits, '_' and '-'")
    return tag


@api
async def list_mounts(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    return JSONResponse({"mounts": await call(mounts_json, c.vmm, name)})


@api
async def sync_mount(request: Request) -> Response:
    c = ctx(request)
    name, tag = validate_name(request.path_params["name"]), _tag(request)
    force = bool(take(await read_json(request), {"force": bool}).get("force"))
    await call(c.vmm.get, name)

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        m = mount_images(c.vmm).sync(name, tag, force=force)
        note(f"Rebuilt mount {m.tag} of VM {name} from {m.host_path}")
        return {"mount": m.to_dict()}

    return job_response(c.jobs.submit("mount-sync", f"{name}:{tag}", work))


@api
async def pull_mount(request: Request) -> Response:
    c = ctx(request)
    name, tag = validate_name(request.path_params["name"]), _tag(request)
    fields = take(await read_json(request), {"to": str, "force": bool})
    to = Path(host_path(fields["to"], "to")) if fields.get("to") else None
    await call(c.vmm.get, name)

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        m, target = mount_images(c.vmm).pull(name, tag, to=to, force=bool(fields.get("force")))
        note(f"Copied mount {m.tag} of VM {name} to {target}")
        return {"mount": m.to_dict(), "to": str(target)}

    return job_response(c.jobs.submit("mount-pull", f"{name}:{tag}", work))


@api
async def set_autostart(request: Request) -> Response:
    """``vmm autostart enable|disable NAME``: ``{"enabled": true|false}``."""
    from vmm import autostart

    c = ctx(request)
    name = validate_name(request.path_params["name"])
    enabled = take(await read_json(request), {"enabled": bool}).get("enabled")
    if enabled is None:
        raise ValidationError("field 'enabled' is required (true or false)")
    vm = await call(autostart.set_flag, c.vmm, name, enabled)
    note = None
    if vm.autostart and c.vmm.config.autostart_policy != "flagged":
        note = f"autostart_policy is {c.vmm.config.autostart_policy!r}: the flag is used only with 'flagged'"
    return JSONResponse({"name": vm.name, "autostart": vm.autostart, "note": note})


@api
async def network_prune(request: Request) -> Response:
    """``vmm network prune``: vmm-* TAPs no VM uses, and the rules rebuilt from the records."""
    c = ctx(request)
    result = await call(c.network_prune)
    c.watcher.poke()
    return JSONResponse(result)


ROUTES = [
    Route("/api/v1/vms/{name}/mounts", list_mounts, methods=["GET"]),
    Route("/api/v1/vms/{name}/mounts/{tag}/sync", sync_mount, methods=["POST"]),
    Route("/api/v1/vms/{name}/mounts/{tag}/pull", pull_mount, methods=["POST"]),
    Route("/api/v1/vms/{name}/autostart", set_autostart, methods=["PUT"]),
    Route("/api/v1/network/prune", network_prune, methods=["POST"]),
]
