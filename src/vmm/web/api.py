"""The JSON API, ``/api/v1``: VMs, port forwards, jobs, events and console logs.

Every handler calls the same services as the CLI (through ``vmm.app.Vmm``) in a worker thread;
a ``VmmError`` becomes its status code and ``{"error", "hint"}`` (see ``views.STATUS_OF``).
Long work (start and the wait for SSH, stop, delete) is a job: ``202`` with its URL.
"""

from __future__ import annotations

import asyncio
import functools

from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from vmm.errors import NotFoundError, ValidationError, VmmError
from vmm.models import validate_name
from vmm.web.common import call, ctx, error_response, problem, read_json, take
from vmm.web.views import vm_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path
    from typing import Any

    from starlette.requests import Request

    from vmm.web.common import Context
    from vmm.web.jobs import Job

    Handler = Callable[[Request], Awaitable[Response]]

KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream
CONSOLE_POLL = 0.2
CONSOLE_TAIL = 64 * 1024  # bytes of an existing console log sent first


def api(handler: Handler) -> Handler:
    """Errors as the CLI's error model in JSON."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except VmmError as exc:
            return error_response(exc)

    return wrapped


def name_of(request: Request) -> str:
    return validate_name(request.path_params["name"])


def job_response(job: Job) -> JSONResponse:
    return JSONResponse({"job": job.to_json()}, status_code=202, headers={"Location": job.url})


# -- VMs --------------------------------------------------------------------------------------------


@api
async def list_vms(request: Request) -> Response:
    c = ctx(request)
    views = await call(c.vmm.list)
    return JSONResponse({"vms": [vm_json(v) for v in views]})


@api
async def get_vm(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    vm = await call(c.vmm.get, name)
    data = vm_json(c.vmm.view(vm))
    data["forwards"] = [f.to_json() for f in await call(c.vmm.forwards.list, name)]
    return JSONResponse({"vm": data})


CREATE_FIELDS: dict[str, type] = {
    "name": str, "cpus": int, "memory_mb": int, "disk_mb": int, "image": str, "kernel": str,
    "engine": str, "accel": str, "boot_args": str, "ip": str, "autostart": bool, "dns": list,
    "mounts": list, "ssh_key": str,
}  # fmt: skip


def create_args(body: dict[str, Any]) -> dict[str, Any]:
    """The body of ``POST /api/v1/vms`` as ``Vmm.create``'s arguments (the service validates
    the values, with the CLI's messages)."""
    from vmm.web.common import host_path

    fields = take(body, CREATE_FIELDS)
    name = fields.pop("name", None)
    if not name:
        raise ValidationError("field 'name' is required")
    if fields.get("ssh_key"):
        fields["ssh_key"] = host_path(fields["ssh_key"], "ssh_key")
    for key in ("image", "kernel", "engine", "accel", "boot_args", "ip", "ssh_key"):
        if fields.get(key) == "":
            fields[key] = None  # an empty form field: the config's default, as when not given
    fields["autostart"] = bool(fields.get("autostart"))
    fields["mounts"] = fields.get("mounts") or ()
    return {"name": name, **fields}


@api
async def create_vm(request: Request) -> Response:
    c = ctx(request)
    args = create_args(await read_json(request))
    notes: list[str] = []
    vm = await call(lambda: c.vmm.create(**args, note=notes.append))
    c.watcher.poke()
    return JSONResponse({"vm": vm_json(c.vmm.view(vm)), "notes": notes}, status_code=201,
                        headers={"Location": f"/api/v1/vms/{vm.name}"})


def start_job(c: Context, name: str, *, wait: bool, timeout: float) -> Job:
    def work(note: Callable[[str], None]) -> dict[str, Any]:
        vm = c.vmm.vms.start(name)
        note(f"Started VM {vm.name} ({vm.engine}) at {vm.ip}")
        if wait:
            note("Waiting for SSH ...")
            waited = c.vmm.vms.wait_ready(vm, timeout=timeout)
            note(f"SSH ready after {waited:.1f} s")
        return {"vm": vm_json(c.vmm.view(c.vmm.get(name)))}

    return c.jobs.submit("start", name, work)


def stop_job(c: Context, name: str, *, timeout: float) -> Job:
    def work(note: Callable[[str], None]) -> dict[str, Any]:
        how = c.vmm.stop(name, timeout=timeout)
        message = f"VM {name} is not running" if how == "not-running" else f"Stopped VM {name}: {how.describe()}"
        note(message)
        return {"outcome": str(how), "message": message}

    return c.jobs.submit("stop", name, work)


def delete_job(c: Context, name: str, *, force: bool) -> Job:
    def work(note: Callable[[str], None]) -> dict[str, Any]:
        c.vmm.delete(name, force=force)
        note(f"Deleted VM {name}")
        return {"deleted": name}

    return c.jobs.submit("delete", name, work)


def _timeout(fields: dict[str, Any], default: float) -> float:
    value = fields.get("timeout")
    if value is None:
        return default
    if not 0 < value <= 3600:
        raise ValidationError(f"timeout must be between 0 and 3600 seconds, got {value}")
    return float(value)


@api
async def start_vm(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    fields = take(await read_json(request), {"wait": bool, "timeout": float})
    await call(c.vmm.get, name)  # 404 now rather than a failed job
    wait = fields.get("wait") is not False
    return job_response(start_job(c, name, wait=wait, timeout=_timeout(fields, 180.0)))


@api
async def stop_vm(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    fields = take(await read_json(request), {"timeout": float})
    await call(c.vmm.get, name)
    return job_response(stop_job(c, name, timeout=_timeout(fields, 30.0)))


@api
async def delete_vm(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    force = request.query_params.get("force", "") in ("1", "true", "yes")
    await call(c.vmm.get, name)
    return job_response(delete_job(c, name, force=force))


# -- port forwards ---------------------------------------------------------------------------------


@api
async def list_forwards(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request) if "name" in request.path_params else None
    views = await call(c.vmm.forwards.list, name)
    return JSONResponse({"port_forwards": [v.to_json() for v in views]})


@api
async def add_forward(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    spec = take(await read_json(request), {"spec": str}).get("spec")
    if not spec:
        raise ValidationError("field 'spec' is required", hint="[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80")
    view = await call(c.vmm.forward, name, spec)
    return JSONResponse({"port_forward": view.to_json()}, status_code=201)


@api
async def remove_forward(request: Request) -> Response:
    c = ctx(request)
    name = name_of(request)
    view = await call(c.vmm.unforward, name, request.path_params["key"])
    return JSONResponse({"removed": view.to_json()})


# -- jobs and events --------------------------------------------------------------------------------


@api
async def list_jobs(request: Request) -> Response:
    return JSONResponse({"jobs": [j.to_json() for j in ctx(request).jobs.recent()]})


@api
async def get_job(request: Request) -> Response:
    job = ctx(request).jobs.get(request.path_params["id"])
    if job is None:
        raise NotFoundError(f"no job {request.path_params['id'][:40]!r}", hint="jobs are kept in memory until the server restarts")
    wait = request.query_params.get("wait")
    if wait and job.state == "running":  # long polling: ?wait=SECONDS (at most 60)
        try:
            seconds = min(max(float(wait), 0.0), 60.0)
        except ValueError:
            raise ValidationError(f"wait must be a number of seconds, got {wait[:20]!r}") from None
        await asyncio.to_thread(job.done.wait, seconds)
    return JSONResponse({"job": job.to_json()})


def sse(event: str, text: str) -> str:
    return f"event: {event}\ndata: {text}\n\n"


async def events(request: Request) -> Response:
    """Server-sent events: ``snapshot`` first (every VM), then ``vm``, ``vm-removed`` and
    ``job`` as they happen."""
    import json

    c = ctx(request)
    queue = c.hub.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\n"
            snapshot = {"vms": sorted(c.watcher.vms.values(), key=lambda v: v["name"])}
            yield sse("snapshot", json.dumps(snapshot, separators=(",", ":"), sort_keys=True))
            while True:
                try:
                    event, text = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield sse(event, text)
                if event == "overflow":
                    return
        finally:
            c.hub.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


# -- console log ------------------------------------------------------------------------------------


def _console_path(c: Context, name: str) -> Path:
    c.vmm.get(name)  # 404 for an unknown VM
    return c.vmm.store.run_paths(name).console_log


@api
async def console_log(request: Request) -> Response:
    """The end of the VM's console log (``?bytes=N``, 64 KiB by default) as text."""
    c = ctx(request)
    path = await call(_console_path, c, name_of(request))
    want = request.query_params.get("bytes", str(CONSOLE_TAIL))
    if not want.isdigit():
        raise ValidationError(f"bytes must be a whole number, got {want[:20]!r}")
    data = await call(_tail, path, min(int(want), 1024 * 1024))
    return PlainTextResponse(data.decode("utf-8", "replace"))


def _tail(path: Any, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read(size)
    except FileNotFoundError:
        return b""


def _read_from(path: Any, offset: int) -> tuple[bytes, int]:
    """What the log holds past ``offset`` (from the start again when it was truncated)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            if end < offset:
                offset = 0
            f.seek(offset)
            data = f.read(256 * 1024)
            return data, offset + len(data)
    except FileNotFoundError:
        return b"", 0


@api
async def console_stream(request: Request) -> Response:
    """The console log followed live, as SSE ``log`` events (text, JSON-quoted)."""
    import json

    c = ctx(request)
    path = await call(_console_path, c, name_of(request))

    async def stream() -> AsyncIterator[str]:
        data = await call(_tail, path, CONSOLE_TAIL)
        size = await call(lambda: path.stat().st_size if path.exists() else 0)
        if data:
            yield sse("log", json.dumps(data.decode("utf-8", "replace")))
        quiet = 0.0
        while True:
            data, size = await call(_read_from, path, size)
            if data:
                quiet = 0.0
                yield sse("log", json.dumps(data.decode("utf-8", "replace")))
                continue
            await asyncio.sleep(CONSOLE_POLL)
            quiet += CONSOLE_POLL
            if quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"ok": True})


def not_found(_request: Request) -> Response:
    return problem(404, "no such endpoint", "see /api/v1/openapi.json")


ROUTES = [
    Route("/api/v1/vms", list_vms, methods=["GET"]),
    Route("/api/v1/vms", create_vm, methods=["POST"]),
    Route("/api/v1/vms/{name}", get_vm, methods=["GET"]),
    Route("/api/v1/vms/{name}", delete_vm, methods=["DELETE"]),
    Route("/api/v1/vms/{name}/start", start_vm, methods=["POST"]),
    Route("/api/v1/vms/{name}/stop", stop_vm, methods=["POST"]),
    Route("/api/v1/vms/{name}/forwards", list_forwards, methods=["GET"]),
    Route("/api/v1/vms/{name}/forwards", add_forward, methods=["POST"]),
    Route("/api/v1/vms/{name}/forwards/{key:path}", remove_forward, methods=["DELETE"]),
    Route("/api/v1/vms/{name}/console", console_log, methods=["GET"]),
    Route("/api/v1/vms/{name}/console/stream", console_stream, methods=["GET"]),
    Route("/api/v1/forwards", list_forwards, methods=["GET"]),
    Route("/api/v1/jobs", list_jobs, methods=["GET"]),
    Route("/api/v1/jobs/{id}", get_job, methods=["GET"]),
    Route("/api/v1/events", events, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
