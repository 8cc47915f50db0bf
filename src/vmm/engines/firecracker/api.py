"""A minimal HTTP/1.1 client for Firecracker's API on its Unix socket.

Firecracker (micro_http) answers 204 for a successful PUT/PATCH, 200 + JSON for a GET, and
400 (413 for an oversized MMDS store) + ``{"fault_message": ...}`` for anything it rejects,
unknown paths included. The API is synchronous, so a response means the change is applied.
Each request opens its own connection: micro_http serves only about ten at once, and a
short-lived connection never goes stale while the VM runs for days.

The protocol is written out here (``exchange``) rather than taken from ``http.client``, whose
import (with ``email`` and ``ssl``) cost every ``vmm start`` and ``vmm stop`` more than 10 ms of
CPU for a few requests of a fixed shape: a request line, ``Host``, ``Accept`` and, with a body,
``Content-Type`` and ``Content-Length``; then a status line, headers and a body of
``Content-Length`` bytes (none for 1xx/204/304; to the end of the stream without a length).
micro_http has no chunked encoding; a response that uses one is refused as unreadable.

    EngineError
     ├── ApiError          Firecracker answered with an error status (carries fault_message)
     └── ApiUnreachable    no answer: no socket, nobody listening, timeout, connection reset
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from vmm.engines.firecracker.bodies import ApiRequest
from vmm.errors import ApiError, EngineError
from vmm.log import get_logger

log = get_logger(__name__)

# Per request. The Go SDK's 500 ms is too short on slow or emulated hosts.
DEFAULT_REQUEST_TIMEOUT = 10.0

TYPE_CHECKING = False  # typing costs every start ~2 ms: for mypy only
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias

    Method: TypeAlias = Literal["GET", "PUT", "PATCH"]


class ApiUnreachable(EngineError):
    """The API socket did not answer (missing, refused, reset or timed out)."""


_MAX_HEAD = 64 * 1024  # status line + headers
_MAX_BODY = 64 * 1024 * 1024  # Firecracker's largest answer (an MMDS store) is far below
_NO_BODY = (204, 304)


class BadResponse(Exception):
    """The peer's answer is not an HTTP/1.x response this client can read."""


def exchange(
    socket_path: str | Path,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float,
    content_type: str | None = "application/json",
) -> tuple[int, bytes]:
    """One request on a fresh connection to the Unix socket ``socket_path``; the response's
    status and body. ``timeout`` bounds each connect, send and receive. Raises ``OSError``
    (missing socket, refused, reset, ``TimeoutError``) and ``BadResponse``."""
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise ValueError(f"invalid request path {path!r}")
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    if body is not None:
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n"
    request = head.encode("ascii") + b"\r\n" + (body or b"")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(request)
        return read_response(sock.recv, head_only=method == "HEAD")
    finally:
        sock.close()


def read_response(recv: Callable[[int], bytes], *, head_only: bool = False) -> tuple[int, bytes]:
    """Read one response from ``recv`` (``socket.recv``): its status and body. Interim 1xx
    responses are skipped."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > _MAX_HEAD:
                raise BadResponse(f"response headers longer than {_MAX_HEAD} bytes")
            chunk = recv(65536)
            if not chunk:
                raise BadResponse(
                    "Remote end closed connection without response"
                    if not buf
                    else "connection closed in the middle of the response headers"
                )
            buf += chunk
            end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(chunk) - 3))
        status, length = parse_head(buf[:end])
        buf = buf[end + 4 :]
        if not 100 <= status < 200:
            break
    if head_only or status in _NO_BODY:
        return status, b""
    if length is None:  # no length: the body ends with the connection
        while len(buf) <= _MAX_BODY:
            chunk = recv(65536)
            if not chunk:
                return status, buf
            buf += chunk
        raise BadResponse(f"response body longer than {_MAX_BODY} bytes")
    while len(buf) < length:
        chunk = recv(min(65536, length - len(buf)))
        if not chunk:
            raise BadResponse(
                f"IncompleteRead({len(buf)} bytes read, {length - len(buf)} more expected)"
            )
        buf += chunk
    return status, buf[:length]


def parse_head(head: bytes) -> tuple[int, int | None]:
    """The status and the Content-Length (None: not given) of a response's status line and
    headers (without the blank line that ends them)."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if (
        not version.startswith(b"HTTP/1.")
        or len(code) != 3
        or not (code.isdigit() and code.isascii())
        or rest[3:4] not in (b"", b" ")
    ):
        raise BadResponse(f"bad status line {lines[0][:200]!r}")
    length: int | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadResponse(f"bad header line {line[:200]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not (value.isdigit() and value.isascii()) or (
                length is not None and int(value) != length
            ):
                raise BadResponse(f"bad Content-Length {value[:50]!r}")
            length = int(value)
            if length > _MAX_BODY:
                raise BadResponse(f"response body longer than {_MAX_BODY} bytes")
        elif name == b"transfer-encoding" and value.lower() != b"identity":
            raise BadResponse(f"unsupported Transfer-Encoding {value[:50]!r}")
    return int(code), length


class FirecrackerApi:
    """Firecracker's API at ``socket_path``."""

    def __init__(self, socket_path: Path, *, timeout: float = DEFAULT_REQUEST_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(
        self,
        method: Method,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """Send one request; return the decoded JSON of a 200, None for a 204.

        Raises ``ApiError`` when Firecracker rejects the request and ``ApiUnreachable`` when
        it does not answer.
        """
        if method != "GET" and not body:
            # Firecracker answers "Empty PUT request." - a bug on our side, not the VM's.
            raise ValueError(f"{method} {path} needs a non-empty body")
        data = None if body is None else json.dumps(body).encode()
        log.debug("firecracker api: %s %s %s", method, path, data.decode() if data else "")
        try:
            status, raw = exchange(
                self.socket_path, method, path, data, timeout=timeout or self.timeout
            )
        except (OSError, BadResponse) as exc:
            raise ApiUnreachable(
                f"firecracker API did not answer {method} {path}: {exc or type(exc).__name__}",
                details=f"socket: {self.socket_path}",
            ) from exc
        if status == 204:
            return None
        if status == 200:
            return self._decode_object(method, path, raw)
        raise ApiError(method, path, status, self._fault_message(raw))

    def send(self, req: ApiRequest, *, timeout: float | None = None) -> None:
        self.request(req.method, req.path, req.body, timeout=timeout)

    def get(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        result = self.request("GET", path, timeout=timeout)
        if result is None:
            raise EngineError(f"firecracker answered GET {path} without a body")
        return result

    def put(self, path: str, body: Mapping[str, Any], *, timeout: float | None = None) -> None:
        self.request("PUT", path, body, timeout=timeout)

    def patch(self, path: str, body: Mapping[str, Any], *, timeout: float | None = None) -> None:
        self.request("PATCH", path, body, timeout=timeout)

    def instance_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /``: ``{"id", "state": "Not started"|"Running"|"Paused", "vmm_version", ...}``."""
        return self.get("/", timeout=timeout)

    def vm_config(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /vm/config``: the effective configuration (boot-source, drives, ...)."""
        return self.get("/vm/config", timeout=timeout)

    def is_ready(self, *, timeout: float = 1.0) -> bool:
        """True when the API answers ``GET /`` with 200 (the socket file alone proves nothing:
        Firecracker never deletes it)."""
        try:
            self.instance_info(timeout=timeout)
        except (ApiUnreachable, ApiError):
            return False
        return True

    @staticmethod
    def _decode_object(method: str, path: str, raw: bytes) -> dict[str, Any]:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise EngineError(f"firecracker sent invalid JSON for {method} {path}: {exc}") from None
        if not isinstance(value, dict):
            raise EngineError(f"firecracker sent a non-object for {method} {path}: {value!r}")
        return value

    @staticmethod
    def _fault_message(raw: bytes) -> str:
        text = raw.decode(errors="replace").strip()
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return text or "(no fault message)"
        if isinstance(value, dict) and isinstance(value.get("fault_message"), str):
            return str(value["fault_message"])
        return text
