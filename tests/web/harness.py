"""A running ``vmm serve`` for tests: the server (and every VM it starts, with the fake
firecracker) lives in a private network namespace; clients reach it through ``Relay``, a TCP
relay on 127.0.0.1 of the test's own namespace whose connections to the server are made from a
thread that entered the server's namespace (a socket stays in the namespace it was made in).

So the tests' HTTP client, a headless Chromium and the benchmarks talk real HTTP to the real
server, and the only thing in the main namespace is a loopback listening socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import VmmEnv
from tests.netns import NETNS_DIR, NetNS

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PASSWORD = "correct horse battery staple"
SERVER_PORT = 8080


def in_netns(ns: NetNS, make: Callable[[], T]) -> T:
    """``make()`` run by a thread that entered ``ns``: the sockets it makes (a connection, a
    listening server) stay in that namespace whichever thread uses them afterwards."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / ns.name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = make()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)  # it ends right after: its namespace dies with it
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    value: T = out["value"]
    return value


def socket_in(ns: NetNS, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """A TCP connection to ``address`` inside ``ns``."""
    sock = in_netns(ns, lambda: socket.create_connection(address, timeout=timeout))
    sock.settimeout(None)
    return sock


class Relay:
    """127.0.0.1:<port> here -> 127.0.0.1:``target`` in ``ns``; one thread pair per connection.

    ``close`` wakes and joins every thread before it closes a socket: a thread still about to
    call accept() or send() on a closed socket's descriptor number would otherwise use the
    next socket that number is given to (another server's relay, or its clients)."""

    def __init__(self, ns: NetNS, target: int = SERVER_PORT):
        self.ns = ns
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket_in(self.ns, ("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            pipes = [threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                     for a, b in ((client, upstream), (upstream, client))]
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._socks += [client, upstream]
                self._threads += pipes
                for t in pipes:
                    t.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks, threads = list(self._socks), list(self._threads)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() (EINVAL)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv() (end of file)
        for t in threads:
            t.join(timeout=10)
        self.listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


class Server:
    """A ``vmm serve`` in ``ns`` for the config in ``env``, and ways to talk to it."""

    def __init__(self, env: VmmEnv, ns: NetNS, root: Path, *, extra: list[str] | None = None):
        self.env = env
        self.ns = ns
        self.token_file = root / "api-token"
        self.password_file = root / "web-password"
        self.log = root / "serve.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: Relay | None = None
        self.token = ""

    def set_password(self, password: str = PASSWORD) -> None:
        self.env.run("serve", "--set-password", "--password-file", str(self.password_file),
                     input=password + "\n", check=True)

    def start(self, timeout: float = 30.0) -> Server:
        argv = [sys.executable, "-m", "vmm", "serve", "--listen", f"127.0.0.1:{SERVER_PORT}",
                "--token-file", str(self.token_file), "--password-file", str(self.password_file),
                *self.extra]
        with self.log.open("ab") as log:
            self.proc = self.ns.popen(argv, env=self.env.env(), stdout=log, stderr=subprocess.STDOUT)
        self.relay = Relay(self.ns)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"vmm serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.request("GET", "/healthz", auth=False).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vmm serve did not answer in {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.token = self.token_file.read_text().strip()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.relay is not None:
            self.relay.close()

    @property
    def base(self) -> str:
        assert self.relay is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.relay.port}"

    @property
    def tls(self) -> bool:
        return "--tls-cert" in self.extra

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        assert self.relay is not None
        if self.tls:  # the tests' self-signed certificate
            import ssl

            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection("127.0.0.1", self.relay.port, timeout=timeout, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.relay.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> Response:
        h = dict(headers or {})
        if auth:
            h.setdefault("Authorization", f"Bearer {self.token}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.headers, r.read())
        finally:
            conn.close()

    def wait_job(self, response: Response, timeout: float = 60.0) -> dict[str, Any]:
        assert response.status == 202, response
        url = response.headers["Location"]
        deadline = time.monotonic() + timeout
        while True:
            job = self.request("GET", f"{url}?wait=10").json()["job"]
            if job["state"] != "running":
                return job  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise AssertionError(f"job still running after {timeout} s: {job}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.env.run(*args, ns=self.ns, check=check)

    def login(self, password: str = PASSWORD) -> tuple[str, str]:
        """A browser login: the session cookie and the page's CSRF token."""
        import re
        from urllib.parse import urlencode

        r = self.request("POST", "/login", auth=False, raw=urlencode({"password": password}).encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 303, r
        cookie = r.headers["Set-Cookie"].split(";")[0]
        page = self.request("GET", "/", auth=False, headers={"Cookie": cookie})
        assert page.status == 200, page
        m = re.search(r'X-CSRF-Token&#34;: &#34;([^&]+)&#34;', page.text) or re.search(
            r'"X-CSRF-Token": "([^"]+)"', page.text)
        assert m, page.text[:2000]
        return cookie, m.group(1)


class SSE:
    """A server-sent events stream read line by line (``next_event`` with a timeout)."""

    def __init__(self, server: Server, path: str = "/api/v1/events"):
        self.conn = server.connection(timeout=30)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.sock = self.conn.sock

    def next_event(self, timeout: float = 10.0) -> tuple[str, Any]:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        event, data = "message", []
        while True:
            line = self.response.fp.readline().decode().rstrip("\n")
            if line == "":
                if data:
                    return event, json.loads("\n".join(data))
                event = "message"
                continue
            if line.startswith(":") or line.startswith("retry:"):
                continue
            key, _, value = line.partition(": ")
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)

    def wait_for(self, match: Any, timeout: float = 10.0) -> tuple[str, Any, float]:
        """The first event for which ``match(event, data)`` is true, and how long it took."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching event in time")
            event, data = self.next_event(left)
            if match(event, data):
                return event, data, time.monotonic() - start

    def close(self) -> None:
        self.conn.close()


class WebSocketClient:
    """A minimal WebSocket client (RFC 6455) over the relay: enough to test the terminal's
    handshake (status, Origin check) and read its binary frames."""

    def __init__(self, server: Server, path: str, headers: dict[str, str]):
        import base64
        import secrets as _secrets

        assert server.relay is not None
        self.sock = socket.create_connection(("127.0.0.1", server.relay.port), timeout=30)
        key = base64.b64encode(_secrets.token_bytes(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{server.relay.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head else 0

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame."""
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        return b0 & 0x0F, self._read(length)

    def send(self, payload: bytes, opcode: int = 2) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        seen = b""
        while needle not in seen:
            opcode, payload = self.recv()
            if opcode == 8:
                break
            seen += payload
        return seen

    def close(self) -> None:
        self.sock.close()
