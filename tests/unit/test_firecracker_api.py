"""The Unix-socket HTTP client against a scripted in-process server (no firecracker needed)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from vmm.engines.firecracker.api import ApiUnreachable, FirecrackerApi
from vmm.engines.firecracker.bodies import instance_start_request
from vmm.errors import ApiError, EngineError

pytestmark = pytest.mark.unit


@dataclass
class Script:
    """Canned answers by (method, path) and a log of what was received."""

    answers: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    script: Script


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.script.received.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        status, payload = self.server.script.answers.get((self.command, self.path), (204, b""))
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if status != 204:
            self.wfile.write(payload)

    do_GET = do_PUT = do_PATCH = _serve


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="fcapi-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sock_dir: Path) -> Iterator[tuple[FirecrackerApi, Script]]:
    script = Script()
    srv = _Server(str(sock_dir / "api.sock"), _Handler)
    srv.script = script
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield FirecrackerApi(sock_dir / "api.sock", timeout=2.0), script
    srv.shutdown()
    srv.server_close()


def test_put_204_returns_none_and_sends_json(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    assert api.request("PUT", "/actions", {"action_type": "InstanceStart"}) is None
    api.send(instance_start_request())
    first = script.received[0]
    assert (first["method"], first["path"]) == ("PUT", "/actions")
    assert json.loads(first["body"]) == {"action_type": "InstanceStart"}
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["Host"] == "localhost"
    assert int(first["headers"]["Content-Length"]) == len(first["body"])
    assert "Transfer-Encoding" not in first["headers"]  # micro_http has no chunked encoding
    assert len(script.received) == 2


def test_get_200_returns_the_object(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    info = {"id": "a", "state": "Running", "vmm_version": "1.11.0", "app_name": "Firecracker"}
    script.answers[("GET", "/")] = (200, json.dumps(info).encode())
    assert api.instance_info() == info
    assert script.received[0]["body"] == b""
    assert api.is_ready()


def test_fault_message_becomes_api_error(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    fault = "Boot source error: The kernel file cannot be opened: No such file or directory"
    script.answers[("PUT", "/boot-source")] = (400, json.dumps({"fault_message": fault}).encode())
    with pytest.raises(ApiError) as info:
        api.put("/boot-source", {"kernel_image_path": "/nope"})
    err = info.value
    assert (err.method, err.path, err.status, err.fault_message) == (
        "PUT",
        "/boot-source",
        400,
        fault,
    )
    assert fault in str(err)
    assert isinstance(err, EngineError)


def test_error_without_json_keeps_the_raw_text(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    script.answers[("PUT", "/mmds")] = (413, b"payload too large")
    with pytest.raises(ApiError) as info:
        api.put("/mmds", {"a": "b" * 10})
    assert (info.value.status, info.value.fault_message) == (413, "payload too large")


def test_bad_success_bodies_are_engine_errors(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    script.answers[("GET", "/version")] = (200, b"not json")
    script.answers[("GET", "/mmds")] = (200, b"[1, 2]")
    with pytest.raises(EngineError, match="invalid JSON"):
        api.get("/version")
    with pytest.raises(EngineError, match="non-object"):
        api.get("/mmds")


def test_empty_put_is_refused_before_sending(server: tuple[FirecrackerApi, Script]) -> None:
    api, script = server
    with pytest.raises(ValueError, match="non-empty body"):
        api.put("/entropy", {})
    with pytest.raises(ValueError):
        api.request("PATCH", "/vm")
    assert script.received == []


def test_missing_socket_is_unreachable(sock_dir: Path) -> None:
    api = FirecrackerApi(sock_dir / "nothing.sock", timeout=1.0)
    with pytest.raises(ApiUnreachable, match="did not answer GET /"):
        api.instance_info()
    assert not api.is_ready()


def test_stale_socket_is_unreachable(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a dead firecracker leaves behind
    with pytest.raises(ApiUnreachable):
        FirecrackerApi(path).get("/")


def test_silent_server_times_out(sock_dir: Path) -> None:
    path = sock_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        api = FirecrackerApi(path, timeout=0.2)
        with pytest.raises(ApiUnreachable, match="timed out"):
            api.get("/")
        assert not api.is_ready(timeout=0.2)
    finally:
        listener.close()
