"""The web UI: server-rendered pages (Jinja2, autoescaped) and htmx fragments, over the same
services and the same job runner as the API. Pages subscribe to ``/api/v1/events`` and reload
the fragment that changed (``static/app.js``); every action is an htmx POST carrying the
session's CSRF token (``hx-headers`` on ``<body>``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

from vmm.errors import ValidationError, VmmError
from vmm.models import TAG_RE, validate_name
from vmm.web import api, api_extra, api_host
from vmm.web.auth import load_password_hash, verify_password
from vmm.web.common import call, client_ip, ctx, read_form
from vmm.web.security import cross_site, session_cookie
from vmm.web.terminal import terminal
from vmm.web.views import error_status, human_duration, vm_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import Any

    from jinja2 import Environment
    from starlette.requests import Request

    Handler = Callable[[Request], Awaitable[Response]]

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def env() -> Environment:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    e = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                    trim_blocks=True, lstrip_blocks=True)
    e.filters["duration"] = human_duration
    e.filters["mb"] = lambda n: f"{n / 1024:.1f} GB" if n >= 1024 else f"{n} MB"
    e.filters["size"] = _size
    return e


def _size(n: int) -> str:
    from vmm.status import human_size

    return human_size(n)


def render(request: Request | None, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    session = request.scope.get("vmm.session") if request is not None else None
    html = env().get_template(template).render(csrf=session.csrf if session else "", **values)
    return HTMLResponse(html, status_code=status)


def login_page_bytes(message: str | None = None) -> bytes:
    return env().get_template("login.html").render(message=message, csrf="").encode()


def flash(message: str, *, error: VmmError | None = None, status: int = 200) -> HTMLResponse:
    """A message for the page's #flash box (an error keeps its status code)."""
    html = env().get_template("_flash.html").render(message=message, error=error)
    headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
    return HTMLResponse(html, status_code=error_status(error) if error else status, headers=headers)


def action(handler: Handler) -> Handler:
    """A UI action: a VmmError becomes an error message in #flash with its status code."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except VmmError as exc:
            return flash(exc.brief, error=exc)

    return wrapped


# -- login ----------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    return HTMLResponse(login_page_bytes())


async def login(request: Request) -> Response:
    c = ctx(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    if cross_site(request.scope, headers):
        return HTMLResponse(login_page_bytes("Cross-origin login refused."), status_code=403)
    who = client_ip(request)
    wait = c.ratelimit.retry_after(who)
    if wait:
        return HTMLResponse(login_page_bytes(f"Too many failed logins: try again in {wait} s."),
                            status_code=429, headers={"Retry-After": str(wait)})
    try:
        password = (await read_form(request)).get("password", "")
    except ValidationError:
        password = ""
    stored = await call(load_password_hash, c.password_file)
    if stored is None:
        return HTMLResponse(login_page_bytes("No password is set: run 'sudo vmm serve --set-password'."),
                            status_code=401)
    if not password or not await call(verify_password, password, stored):
        c.ratelimit.failed(who)
        return HTMLResponse(login_page_bytes("Wrong password."), status_code=401)
    c.ratelimit.succeeded(who)
    cookie, _session = c.sessions.create()
    response = RedirectResponse("/", status_code=303)
    response.headers.append("set-cookie", session_cookie(cookie, max_age=int(c.sessions.ttl), secure=c.tls))
    return response


async def logout(request: Request) -> Response:
    from vmm.web.security import SESSION_COOKIE, cookies

    c = ctx(request)
    c.sessions.end(cookies({"cookie": request.headers.get("cookie", "")}).get(SESSION_COOKIE))
    response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.headers.append("set-cookie", session_cookie("", max_age=0, secure=c.tls))
    return response


# -- pages ----------------------------------------------------------------------------------------


def _choices(c: Any) -> dict[str, Any]:
    from vmm.engines import registry

    return {
        "images": [i.name for i in c.vmm.images.list()],
        "kernels": [k.name for k in c.vmm.kernels.list()],
        "engines": list(registry.names()),
        "default_engine": c.vmm.config.engine,
    }


def _vm_rows(c: Any) -> list[dict[str, Any]]:
    rows = sorted(c.watcher.vms.values(), key=lambda v: v["name"])
    return [{**r, "uptime_s": _uptime(r)} for r in rows]


def _uptime(row: dict[str, Any]) -> int | None:
    from vmm.web.views import uptime_s

    return uptime_s(row.get("started_at")) if row.get("alive") else None


async def dashboard(request: Request) -> Response:
    c = ctx(request)
    choices = await call(_choices, c)
    return render(request, "dashboard.html", vms=_vm_rows(c), jobs=c.jobs.recent()[:10], page="vms", **choices)


async def vms_fragment(request: Request) -> Response:
    return render(request, "_vms.html", vms=_vm_rows(ctx(request)))


async def jobs_fragment(request: Request) -> Response:
    return render(request, "_jobs.html", jobs=ctx(request).jobs.recent()[:10])


async def vm_page(request: Request) -> Response:
    c = ctx(request)
    try:
        name = validate_name(request.path_params["name"])
        vm = await call(c.vmm.get, name)
        forwards = await call(c.vmm.forwards.list, name)
    except VmmError as exc:
        return render(request, "error.html", status=error_status(exc), error=exc)
    data = vm_json(c.vmm.view(vm))
    mounts = await call(api_extra.mounts_json, c.vmm, name) if vm.mounts else []
    return render(request, "vm.html", vm=data, forwards=forwards, mounts=mounts, page="vms")


async def vm_fragment(request: Request) -> Response:
    c = ctx(request)
    try:
        name = validate_name(request.path_params["name"])
        vm = await call(c.vmm.get, name)
        forwards = await call(c.vmm.forwards.list, name)
        mounts = await call(api_extra.mounts_json, c.vmm, name) if vm.mounts else []
    except VmmError as exc:
        return render(request, "_gone.html", error=exc)
    return render(request, "_vm_detail.html", vm=vm_json(c.vmm.view(vm)), forwards=forwards, mounts=mounts)


async def terminal_page(request: Request) -> Response:
    from vmm.engines import registry

    c = ctx(request)
    try:
        name = validate_name(request.path_params["name"])
        vm = await call(c.vmm.get, name)
    except VmmError as exc:
        return render(request, "error.html", status=error_status(exc), error=exc)
    has_console = registry.info(vm.engine).can(registry.CONSOLE)
    kind = request.query_params.get("kind") or ("console" if has_console else "ssh")
    if kind not in ("console", "ssh") or (kind == "console" and not has_console):
        kind = "ssh"
    return render(request, "terminal.html", vm=vm_json(c.vmm.view(vm)), kind=kind,
                  has_console=has_console, page="vms")


async def network_page(request: Request) -> Response:
    c = ctx(request)
    try:
        info = await call(c.network_info)
    except VmmError as exc:
        return render(request, "error.html", status=error_status(exc), error=exc, page="network")
    return render(request, "network.html", info=info, page="network")


async def jobs_page(request: Request) -> Response:
    return render(request, "jobs.html", jobs=ctx(request).jobs.recent(), page="jobs")


# -- actions --------------------------------------------------------------------------------------


def _int_field(form: dict[str, str], key: str) -> int | None:
    text = form.get(key, "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValidationError(f"{key.replace('_', ' ')} must be a whole number, got {text[:20]!r}")
    return int(text)


@action
async def create(request: Request) -> Response:
    c = ctx(request)
    form = await read_form(request)
    body: dict[str, Any] = {"name": form.get("name", "").strip()}
    for key in ("cpus", "memory_mb", "disk_mb"):
        body[key] = _int_field(form, key)
    for key in ("image", "kernel", "engine", "ssh_key"):
        body[key] = form.get(key, "").strip() or None
    args = api.create_args(body)
    notes: list[str] = []
    vm = await call(lambda: c.vmm.create(**args, note=notes.append))
    c.watcher.poke()
    if form.get("start"):
        api.start_job(c, vm.name, wait=True, timeout=180.0)
        return flash(f"Created VM {vm.name} ({vm.ip}); starting it.", status=201)
    extra = "".join(f" Note: {n}." for n in notes)
    return flash(f"Created VM {vm.name} ({vm.ip}).{extra}", status=201)


@action
async def start(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    await call(c.vmm.get, name)
    api.start_job(c, name, wait=True, timeout=180.0)
    return flash(f"Starting VM {name} ...")


@action
async def stop(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    await call(c.vmm.get, name)
    api.stop_job(c, name, timeout=30.0)
    return flash(f"Stopping VM {name} ...")


@action
async def delete(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    await call(c.vmm.get, name)
    api.delete_job(c, name, force=True)
    headers = {"HX-Redirect": "/"} if request.headers.get("hx-current-url", "").rstrip("/").endswith(f"/vms/{name}") else {}
    response = flash(f"Deleting VM {name} ...")
    response.headers.update(headers)
    return response


@action
async def add_forward(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    spec = (await read_form(request)).get("spec", "").strip()
    if not spec:
        raise ValidationError("give a forward as [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80")
    view = await call(c.vmm.forward, name, spec)
    f = view.forward
    return flash(f"Forwarding {f.host_addr or '0.0.0.0'}:{f.host_port}/{f.proto} -> {name} port {f.guest_port}.")


@action
async def remove_forward(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    key = (await read_form(request)).get("key", "")
    view = await call(c.vmm.unforward, name, key)
    c.watcher.poke()
    return flash(f"Removed port forward {view.forward.key}.")


@action
async def mount_action(request: Request) -> Response:
    """Sync (host -> disk) or pull (disk -> host directory) a mount: a job."""
    c = ctx(request)
    name = validate_name(request.path_params["name"])
    tag, verb = request.path_params["tag"], request.path_params["verb"]
    if verb not in ("sync", "pull") or not TAG_RE.fullmatch(tag):
        raise ValidationError("unknown mount action")
    force = (await read_form(request)).get("force") == "1"
    await call(c.vmm.get, name)
    images = api_extra.mount_images(c.vmm)

    def work(note: Callable[[str], None]) -> dict[str, str]:
        if verb == "sync":
            m = images.sync(name, tag, force=force)
            note(f"Rebuilt mount {m.tag} of VM {name} from {m.host_path}")
        else:
            m, target = images.pull(name, tag, to=None, force=force)
            note(f"Copied mount {m.tag} of VM {name} to {target}")
        return {"tag": tag}

    c.jobs.submit(f"mount-{verb}", f"{name}:{tag}", work)
    return flash(f"{'Syncing' if verb == 'sync' else 'Pulling'} mount {tag} of {name} ... (see the jobs)")


@action
async def autostart_flag(request: Request) -> Response:
    from vmm import autostart

    c = ctx(request)
    name = validate_name(request.path_params["name"])
    enabled = (await read_form(request)).get("enabled") == "1"
    vm = await call(autostart.set_flag, c.vmm, name, enabled)
    return flash(f"VM {vm.name} {'will' if vm.autostart else 'will not'} start when the host boots.")


@action
async def delete_image(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"], "image")
    await call(api_host.delete_image, c.vmm, name, False)
    return _reload()


@action
async def delete_kernel(request: Request) -> Response:
    c = ctx(request)
    name = validate_name(request.path_params["name"], "kernel")
    await call(api_host.delete_kernel, c.vmm, name)
    return _reload()


def _reload() -> Response:
    return Response(status_code=200, headers={"HX-Refresh": "true"})


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/", dashboard, methods=["GET"]),
    Route("/vms/{name}", vm_page, methods=["GET"]),
    Route("/vms/{name}/terminal", terminal_page, methods=["GET"]),
    Route("/network", network_page, methods=["GET"]),
    Route("/jobs", jobs_page, methods=["GET"]),
    Route("/ui/vms", vms_fragment, methods=["GET"]),
    Route("/ui/jobs", jobs_fragment, methods=["GET"]),
    Route("/ui/vms/{name}", vm_fragment, methods=["GET"]),
    Route("/ui/vms", create, methods=["POST"]),
    Route("/ui/vms/{name}/start", start, methods=["POST"]),
    Route("/ui/vms/{name}/stop", stop, methods=["POST"]),
    Route("/ui/vms/{name}/delete", delete, methods=["POST"]),
    Route("/ui/vms/{name}/forwards", add_forward, methods=["POST"]),
    Route("/ui/vms/{name}/forwards/remove", remove_forward, methods=["POST"]),
    Route("/ui/vms/{name}/mounts/{tag}/{verb}", mount_action, methods=["POST"]),
    Route("/ui/vms/{name}/autostart", autostart_flag, methods=["POST"]),
    Route("/ui/images/{name}/delete", delete_image, methods=["POST"]),
    Route("/ui/kernels/{name}/delete", delete_kernel, methods=["POST"]),
    WebSocketRoute("/ws/vms/{name}/{kind}", terminal),
]
