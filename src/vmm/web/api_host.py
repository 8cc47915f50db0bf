"""The JSON API for the host's side: images, kernels, network show, doctor."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vmm.errors import ConflictError
from vmm.models import validate_name
from vmm.web.api import api, job_response
from vmm.web.common import call, ctx, host_path, read_json, take

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from starlette.requests import Request

    from vmm.app import Vmm
    from vmm.web.common import Context
    from vmm.web.jobs import Job


def usage(vmm: Vmm) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Which VMs use each image and kernel."""
    vms, _problems = vmm.store.load_all()
    images: dict[str, list[str]] = {}
    kernels: dict[str, list[str]] = {}
    for vm in vms:
        images.setdefault(vm.image, []).append(vm.name)
        kernels.setdefault(vm.kernel, []).append(vm.name)
    return images, kernels


def images_json(vmm: Vmm) -> list[dict[str, Any]]:
    used, _ = usage(vmm)
    return [
        {**i.meta, "name": i.name, "path": str(i.path), "virtual_size": i.virtual_size,
         "disk_usage": i.disk_usage, "used_by": len(used.get(i.name, []))}
        for i in vmm.images.list()
    ]  # fmt: skip


def kernels_json(vmm: Vmm) -> list[dict[str, Any]]:
    _, used = usage(vmm)
    return [
        {**vmm.kernels.details(k), "name": k.name, "path": str(k.path), "initrd": k.initrd is not None,
         "size": k.path.stat().st_size, "used_by": len(used.get(k.name, []))}
        for k in vmm.kernels.list()
    ]  # fmt: skip


def delete_image(vmm: Vmm, name: str, force: bool) -> None:
    used, _ = usage(vmm)
    vmm.images.delete(name, used_by=used.get(name, []), force=force)


def delete_kernel(vmm: Vmm, name: str) -> None:
    _, used = usage(vmm)
    vmm.kernels.delete(name, used_by=used.get(name, []))


def doctor_json() -> dict[str, Any]:
    """``vmm doctor --json``, and whether ``--fix`` has anything to remove."""
    from vmm.host import doctor

    cfg, error = doctor.load_config()
    checks, found = doctor.report(cfg, error, doctor.Probes())
    return {"healthy": doctor.healthy(checks), "checks": [c.to_json() for c in checks],
            "fixable": doctor.fixable(checks, found)}


DOCTOR_FIX = "doctor-fix"


def doctor_fix(note: Callable[[str], None]) -> dict[str, Any]:
    """``vmm doctor --fix --json``, in the CLI's steps (``vmm.cli.doctor``): the report, the
    leftovers removed when there are any, the report again. A progress line per thing fixed."""
    from vmm.host import doctor

    cfg, error = doctor.load_config()
    probes = doctor.Probes()
    checks, found = doctor.report(cfg, error, probes)
    fixed: list[str] = []
    if doctor.fixable(checks, found):
        fixed = doctor.fix_all(cfg, checks, found, probes)
        for line in fixed:
            note(f"fixed: {line}")
        checks, found = doctor.report(cfg, error, probes)
    else:
        note("nothing to fix")
    ok = doctor.healthy(checks)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    note(f"{'healthy' if ok else 'NOT healthy'}: {fails} failed, {warns} warning(s)")
    return {"healthy": ok, "checks": [c.to_json() for c in checks], "fixed": fixed}


def doctor_fix_job(c: Context) -> Job:
    """``doctor --fix`` as a job (stopping what an interrupted start left running can take a
    VM's whole stop escalation); one at a time."""
    running = [j for j in c.jobs.running() if j.kind == DOCTOR_FIX]
    if running:
        raise ConflictError("vmm doctor --fix is already running", hint=f"follow it at {running[0].url}")
    return c.jobs.submit(DOCTOR_FIX, "host", doctor_fix)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "") in ("1", "true", "yes")


@api
async def list_images(request: Request) -> Response:
    return JSONResponse({"images": await call(images_json, ctx(request).vmm)})


@api
async def remove_image(request: Request) -> Response:
    name = validate_name(request.path_params["name"], "image")
    await call(delete_image, ctx(request).vmm, name, _flag(request, "force"))
    return JSONResponse({"deleted": name})


IMPORT_PREFIXES = ("oci:", "oci-archive:", "docker-archive:")


def import_source(text: str) -> str:
    """An image source from a request: a host path (absolute), or one of the archive kinds with
    an absolute path. Docker daemon names stay a CLI feature (the daemon is another trust
    boundary)."""
    for prefix in IMPORT_PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix):]
            path, _, ref = rest.partition(":") if prefix == "oci:" else (rest, "", "")
            host_path(path, "source")
            return text
    return host_path(text, "source")


@api
async def import_image(request: Request) -> Response:
    c = ctx(request)
    fields = take(await read_json(request), {"source": str, "name": str, "size_mb": int, "force": bool, "as_is": bool})
    name = validate_name(fields.get("name") or "", "image")
    source = import_source(fields.get("source") or "")

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        img = c.vmm.images.import_source(
            source, name, size_mb=fields.get("size_mb"), force=bool(fields.get("force")),
            as_is=bool(fields.get("as_is")), progress=note,
        )
        note(f"Imported image {img.name} from {img.meta.get('source', source)}")
        return {"image": {"name": img.name, "virtual_size": img.virtual_size}}

    return job_response(c.jobs.submit("image-import", name, work))


@api
async def list_kernels(request: Request) -> Response:
    return JSONResponse({"kernels": await call(kernels_json, ctx(request).vmm)})


@api
async def remove_kernel(request: Request) -> Response:
    name = validate_name(request.path_params["name"], "kernel")
    await call(delete_kernel, ctx(request).vmm, name)
    return JSONResponse({"deleted": name})


@api
async def import_kernel(request: Request) -> Response:
    c = ctx(request)
    fields = take(await read_json(request), {"path": str, "name": str, "initrd": str, "force": bool})
    name = validate_name(fields.get("name") or "", "kernel")
    path = Path(host_path(fields.get("path") or "", "path"))
    initrd = Path(host_path(fields["initrd"], "initrd")) if fields.get("initrd") else None

    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.store.ensure_dirs()
        k = c.vmm.kernels.import_kernel(path, name, initrd=initrd, force=bool(fields.get("force")))
        note(f"Imported kernel {k.name} ({k.meta.get('version') or 'unknown version'})")
        return {"kernel": {"name": k.name, "version": k.meta.get("version")}}

    return job_response(c.jobs.submit("kernel-import", name, work))


@api
async def network(request: Request) -> Response:
    return JSONResponse(await call(ctx(request).network_info))


@api
async def doctor(request: Request) -> Response:
    return JSONResponse(await call(doctor_json))


@api
async def fix_doctor(request: Request) -> Response:
    """``vmm doctor --fix``: a job whose result is ``{"healthy", "checks", "fixed"}``."""
    take(await read_json(request), {})
    return job_response(doctor_fix_job(ctx(request)))


@api
async def openapi(_request: Request) -> Response:
    from vmm.web.openapi import document

    return JSONResponse(document())


ROUTES = [
    Route("/api/v1/images", list_images, methods=["GET"]),
    Route("/api/v1/images/import", import_image, methods=["POST"]),
    Route("/api/v1/images/{name}", remove_image, methods=["DELETE"]),
    Route("/api/v1/kernels", list_kernels, methods=["GET"]),
    Route("/api/v1/kernels/import", import_kernel, methods=["POST"]),
    Route("/api/v1/kernels/{name}", remove_kernel, methods=["DELETE"]),
    Route("/api/v1/network", network, methods=["GET"]),
    Route("/api/v1/doctor", doctor, methods=["GET"]),
    Route("/api/v1/doctor/fix", fix_doctor, methods=["POST"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
]
