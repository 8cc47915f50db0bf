"""The Unix-socket HTTP client against a scripted in-process server (no firecracker needed)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm.engines.firecracker.api import (
    ApiUnreachable,
    BadResponse,
    FirecrackerApi,
    exchange,
    read_response,
)
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


# -- the HTTP/1.1 reader itself ---------------------------------------------------------------


def feeder(data: bytes, step: int = 1 << 20) -> Callable[[int], bytes]:
    """``socket.recv`` over canned bytes, at most ``step`` bytes a call (then b"": closed)."""
    view = io.BytesIO(data)
    return lambda n: view.read(min(n, step))


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
def test_responses_are_read_however_they_are_split(step: int) -> None:
    ok = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
    assert read_response(feeder(ok + b"trailing junk", step)) == (200, b'{"a":1}')
    no_content = b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n"
    assert read_response(feeder(no_content, step)) == (204, b"")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok
    assert read_response(feeder(interim, step)) == (200, b'{"a":1}')
    until_close = b"HTTP/1.0 400 Bad Request\r\n\r\nno length: to the end"
    assert read_response(feeder(until_close, step)) == (400, b"no length: to the end")
    assert read_response(feeder(b"HTTP/1.1 200 OK\r\ncontent-length:  0 \r\n\r\n", step)) == (200, b"")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "Remote end closed connection without response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "in the middle of the response headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", "IncompleteRead(5 bytes read, 5 more"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 20x OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000, "headers longer than"),
    ],
)
def test_unreadable_responses(raw: bytes, message: str) -> None:
    with pytest.raises(BadResponse, match=re.escape(message)):
        read_response(feeder(raw))


@settings(max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 200), deadline=None, database=None)
@given(
    st.binary(max_size=300)
    | st.tuples(
        st.sampled_from([b"HTTP/1.1 ", b"HTTP/1.0 "]),
        st.sampled_from([b"100", b"200", b"204", b"400", b"99"]),
        st.lists(
            st.sampled_from([b"Content-Length: 3", b"content-length:0", b"Content-Length: x",
                             b"Transfer-Encoding: identity", b"X-Y: z", b"bad"]),
            max_size=3,
        ),
        st.binary(max_size=20),
    ).map(lambda t: t[0] + t[1] + b" R\r\n" + b"".join(h + b"\r\n" for h in t[2]) + b"\r\n" + t[3]),
    st.integers(min_value=1, max_value=64),
)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\r\n\r\n", 64)  # a non-ASCII digit
def test_any_answer_is_a_response_or_bad_response(raw: bytes, step: int) -> None:
    try:
        status, body = read_response(feeder(raw, step))
    except BadResponse:
        return
    assert 100 <= status <= 999 and isinstance(body, bytes)


def test_what_goes_on_the_wire(sock_dir: Path) -> None:
    path = sock_dir / "raw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    seen: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _addr = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or (b"PUT" in data and not data.endswith(b"}")):
                    data += conn.recv(4096)
                seen.append(data)
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        api = FirecrackerApi(path, timeout=2.0)
        api.send(instance_start_request())
        assert api.request("GET", "/", timeout=2.0) is None
    finally:
        thread.join(5)
        listener.close()
    body = b'{"action_type": "InstanceStart"}'
    assert seen == [
        b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n",
    ]


def test_a_peer_that_hangs_up_is_unreachable(sock_dir: Path) -> None:
    path = sock_dir / "rude.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def hang_up() -> None:
        conn, _addr = listener.accept()
        conn.recv(4096)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(ApiUnreachable, match="did not answer PUT /actions: Remote end closed"):
            FirecrackerApi(path, timeout=2.0).send(instance_start_request())
    finally:
        thread.join(5)
        listener.close()


def test_request_paths_cannot_smuggle_lines(sock_dir: Path) -> None:
    with pytest.raises(ValueError, match="invalid request path"):
        exchange(sock_dir / "x.sock", "GET", "/ HTTP/1.1\r\nX: y", timeout=1.0)
