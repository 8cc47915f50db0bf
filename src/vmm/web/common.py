"""What the API and the pages share: the server's context, request bodies read strictly, and
blocking service calls moved off the event loop."""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

from vmm.errors import ValidationError, VmmError
from vmm.web.views import error_json, error_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any, ParamSpec, TypeVar

    from starlette.requests import Request

    from vmm.app import Vmm
    from vmm.web.auth import RateLimit, Sessions
    from vmm.web.events import Hub, Watcher
    from vmm.web.jobs import Jobs

    P = ParamSpec("P")
    T = TypeVar("T")

MAX_BODY = 64 * 1024  # bytes: every request body the server takes is small JSON or a form


class Context:
    """Everything a handler needs, built once by ``vmm.web.server.build_app``."""

    def __init__(
        self,
        vmm: Vmm,
        *,
        hub: Hub,
        watcher: Watcher,
        jobs: Jobs,
        token: str,
        password_file: Path,
        sessions: Sessions,
        ratelimit: RateLimit,
        tls: bool,
        network_info: Callable[[], dict[str, Any]],
        network_prune: Callable[[], dict[str, Any]],
    ):
        self.vmm = vmm
        self.hub = hub
        self.watcher = watcher
        self.jobs = jobs
        self.token = token
        self.password_file = password_file
        self.sessions = sessions
        self.ratelimit = ratelimit
        self.tls = tls
        self.network_info = network_info  # the services' netreport, handed over by vmm.cli.serve
        self.network_prune = network_prune


def ctx(request: Any) -> Context:
    context: Context = request.app.state.vmm
    return context


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking service call (files, locks, ip/nft) in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def error_response(exc: VmmError) -> JSONResponse:
    return JSONResponse(error_json(exc), status_code=error_status(exc))


def problem(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    if "json" not in request.headers.get("content-type", "application/json"):
        raise ValidationError("send the body as JSON", hint="Content-Type: application/json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object")
    return data


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body: each field's last value."""
    raw = await request.body()
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("the form could not be read") from None
    return {k: v[-1] for k, v in fields.items()}


_KINDS: dict[type, str] = {str: "a string", int: "a whole number", bool: "true or false", float: "a number", list: "a list of strings"}


def take(body: dict[str, Any], spec: dict[str, type]) -> dict[str, Any]:
    """The fields of ``body`` checked against ``spec`` (name -> type; ``None`` is allowed for
    any): an unknown field or a wrong type is a 400 naming the field."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        known = "known fields: " + ", ".join(sorted(spec)) if spec else "this request takes no fields"
        raise ValidationError(f"unknown field {unknown[0]!r}", hint=known)
    out: dict[str, Any] = {}
    for name, value in body.items():
        kind = spec[name]
        if value is None:
            out[name] = None
            continue
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if kind is list:
            ok = ok and all(isinstance(v, str) for v in value)
        if not ok:
            raise ValidationError(f"field {name!r} must be {_KINDS[kind]}")
        out[name] = value
    return out


def host_path(text: str, what: str) -> str:
    """A path on the host given in a request: absolute, normalized, no NUL, no '..'; the
    service then checks what is there as it would for the CLI."""
    if not text or "\0" in text or not text.startswith("/") or len(text) > 4096:
        raise ValidationError(f"{what} must be an absolute path on the host, got {text[:100]!r}")
    if ".." in text.split("/") or os.path.normpath(text) != text.rstrip("/") and text != "/":
        raise ValidationError(f"{what} must be a normalized absolute path (no '..', '.' or '//'), got {text[:100]!r}")
    return text


def client_ip(request: Any) -> str:
    client = request.client
    return client.host if client else "unknown"
