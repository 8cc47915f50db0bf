"""A small HTTP/1.1 client for Firecracker's API on its Unix socket (stdlib ``http.client``).

Firecracker (micro_http) answers 204 for a successful PUT/PATCH, 200 + JSON for a GET, and
400 (413 for an oversized MMDS store) + ``{"fault_message": ...}`` for anything it rejects,
unknown paths included. The API is synchronous, so a response means the change is applied.
Each request opens its own connection: micro_http serves only about ten at once, and a
short-lived connection never goes stale while the VM runs for days.

    EngineError
     ├── ApiError          Firecracker answered with an error status (carries fault_message)
     └── ApiUnreachable    no answer: no socket, nobody listening, timeout, connection reset
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from vmm.engines.firecracker.bodies import ApiRequest
from vmm.errors import ApiError, EngineError

log = logging.getLogger(__name__)

# Per request. The Go SDK's 500 ms is too short on slow or emulated hosts.
DEFAULT_REQUEST_TIMEOUT = 10.0

Method = Literal["GET", "PUT", "PATCH"]


class ApiUnreachable(EngineError):
    """The API socket did not answer (missing, refused, reset or timed out)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over AF_UNIX; the Host header stays ``localhost``."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        log.debug("firecracker api: %s %s %s", method, path, data.decode() if data else "")
        conn = _UnixHTTPConnection(str(self.socket_path), timeout or self.timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(
                f"firecracker API did not answer {method} {path}: {exc or type(exc).__name__}",
                details=f"socket: {self.socket_path}",
            ) from exc
        finally:
            conn.close()
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
