"""The guard in front of every request (plain ASGI, so streams pass through untouched):

- authentication on everything but ``/healthz``, ``/login`` and ``/static/``: a bearer token
  (scripts) or a session cookie (browsers); none is ``401``;
- CSRF for browsers: a state-changing request authenticated by the cookie must carry the
  session's token in ``X-CSRF-Token``, and must not come from another origin (``Origin``,
  ``Sec-Fetch-Site``); otherwise ``403``. The cookie is also ``SameSite=Strict``;
- WebSockets: the same authentication, and an ``Origin`` that is the server's own;
- request bodies: a ``Content-Length`` is required and at most ``MAX_BODY`` bytes;
- security headers on every response: a CSP of ``default-src 'self'`` (everything the pages
  load is vendored in the package), no framing, no sniffing, no referrer to other sites; HSTS with TLS.
  No CORS header is ever sent, so other origins cannot read any answer.
"""

from __future__ import annotations

import json

from vmm.web.auth import same
from vmm.web.common import MAX_BODY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping
    from typing import Any

    from vmm.web.common import Context

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "vmm_session"
CSRF_HEADER = "x-csrf-token"
PUBLIC_PATHS = ("/healthz", "/login")
PUBLIC_PREFIXES = ("/static/",)
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
# xterm.js sizes its rows with <style> elements it writes at run time: the terminal page alone
# allows styles (never scripts) that are not files.
CSP_TERMINAL = CSP + "; style-src 'self' 'unsafe-inline'"
HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer makes Chromium send "Origin: null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def cookies(headers: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def session_cookie(value: str, *, max_age: int, secure: bool) -> str:
    return (
        f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        + ("; Secure" if secure else "")
    )


def expected_origin(scope: Scope, headers: dict[str, str]) -> str:
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{headers.get('host', '')}"


def cross_site(scope: Scope, headers: dict[str, str]) -> bool:
    """The request comes from a page of another origin (when the browser says so)."""
    origin = headers.get("origin")
    if origin is not None and origin != expected_origin(scope, headers):
        return True
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


class Guard:
    def __init__(self, app: ASGIApp, context: Callable[[], Context], login_page: Callable[[], bytes]):
        self.app = app
        self.context = context
        self.login_page = login_page

    def authenticate(self, headers: dict[str, str]) -> tuple[str, Any] | None:
        c = self.context()
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return ("token", None) if same(auth[7:].strip(), c.token) else None
        session = c.sessions.get(cookies(headers).get(SESSION_COOKIE))
        return ("session", session) if session is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await self.websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        send = self.with_headers(send, scope)
        method = scope["method"]
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return await respond(send, 413, {"error": f"request body over {MAX_BODY} bytes"})
        if length is None and "transfer-encoding" in headers:
            return await respond(send, 411, {"error": "send the body with a Content-Length"})
        path: str = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        who = self.authenticate(headers)
        if who is None:
            return await self.unauthenticated(scope, headers, send)
        kind, session = who
        if kind == "session" and method in UNSAFE:
            if cross_site(scope, headers):
                return await respond(send, 403, {"error": "cross-origin request refused"})
            if not same(headers.get(CSRF_HEADER, ""), session.csrf):
                return await respond(send, 403, {"error": "missing or wrong CSRF token",
                                                 "hint": "reload the page and try again"})
        scope["vmm.auth"] = kind
        scope["vmm.session"] = session
        return await self.app(scope, receive, send)

    async def unauthenticated(self, scope: Scope, headers: dict[str, str], send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/api/") or "hx-request" in headers or scope["method"] != "GET":
            body = {"error": "authentication required",
                    "hint": "send 'Authorization: Bearer TOKEN' (the token is in /etc/vmm/api-token), "
                            "or log in at /login"}
            extra = [(b"www-authenticate", b'Bearer realm="vmm"')]
            if "hx-request" in headers:
                extra.append((b"hx-redirect", b"/login"))
            return await respond(send, 401, body, extra)
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": self.login_page()})

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        who = self.authenticate(headers)
        origin = headers.get("origin")
        ok_origin = origin == expected_origin(scope, headers) if origin is not None else (who or ("",))[0] == "token"
        if who is None or not ok_origin:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        scope["vmm.auth"], scope["vmm.session"] = who
        await self.app(scope, receive, send)

    def with_headers(self, send: Send, scope: Scope) -> Send:
        tls = self.context().tls
        terminal = scope["path"].startswith("/vms/") and scope["path"].endswith("/terminal")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.append((b"content-security-policy", (CSP_TERMINAL if terminal else CSP).encode()))
                headers.extend(HEADERS)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                if tls:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        return sending


async def respond(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body.setdefault("hint", None)
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
