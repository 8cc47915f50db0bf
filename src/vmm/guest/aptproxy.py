"""The sandbox's only way out: a private network namespace and vmm's HTTP proxy for apt.

apt needs to download, but the host's network namespace would hand the image the host's
network position: services on 127.0.0.1, the cloud metadata endpoint (169.254.169.254),
abstract unix sockets. With ``network=True`` vmm makes a private network namespace (its only
interface is ``lo``; it belongs to the host's user namespace, so the sandbox cannot change it)
and listens there on 127.0.0.1 with a small HTTP proxy that runs in vmm, on the host side:
absolute-URI GET/HEAD and CONNECT only, to any address except loopback, link-local,
multicast, unspecified and reserved ones. apt is pointed at it with ``Acquire::http(s)::Proxy``
(and ``http_proxy``); there is no DNS inside, the proxy resolves names.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import select
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

from vmm.errors import VmmError
from vmm.guest.nsinit import CLONE_NEWNET, libc_call

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


@contextlib.contextmanager
def network(enabled: bool) -> Iterator[tuple[str | None, str | None]]:
    """(netns path, proxy URL) of a private network namespace with vmm's proxy, or Nones."""
    if not enabled:
        yield None, None
        return
    fd, listener = _private_netns()
    proxy = _Proxy(listener)
    proxy.start()
    try:
        port = listener.getsockname()[1]
        yield f"/proc/{os.getpid()}/fd/{fd}", f"http://127.0.0.1:{port}/"
    finally:
        proxy.close()
        os.close(fd)


def _private_netns() -> tuple[int, socket.socket]:
    """A new network namespace (lo up) and a listening socket in it; vmm stays in its own.

    A namespace change of one thread is that thread's alone, so a short-lived thread makes it."""
    made: dict[str, object] = {}

    def make() -> None:
        try:
            libc_call("unshare", CLONE_NEWNET)
            made["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            made["listener"] = listener
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make, name="vmm-netns")
    thread.start()
    thread.join()
    fd, listener = made.get("fd"), made.get("listener")
    if not isinstance(fd, int) or not isinstance(listener, socket.socket):
        if isinstance(fd, int):
            os.close(fd)
        error = made.get("error")
        why = error.strerror if isinstance(error, OSError) else "unknown error"
        raise VmmError(f"cannot make a private network namespace for the sandbox: {why}")
    return fd, listener


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0))
        flags = struct.unpack("16sh22x", got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


class ProxyRefused(Exception):
    """A request the proxy does not forward: the HTTP status and why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def forbidden(address: str) -> bool:
    """Addresses the sandbox may not reach: the host itself, link-local (cloud metadata)..."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved)


def parse_request(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, what to send upstream) of a proxy request's head.

    CONNECT sends nothing; GET/HEAD of an absolute http URL are rewritten to origin form with
    ``Connection: close`` (one request per connection keeps the relay a plain byte pump)."""
    lines = head.split(b"\r\n")
    try:
        method, target, _version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise ProxyRefused(400, "bad request line") from None
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ProxyRefused(400, "CONNECT needs host:port")
        return method, host.strip("[]"), int(port), b""
    if method not in ("GET", "HEAD"):
        raise ProxyRefused(405, f"method {method} is not forwarded")
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ProxyRefused(400, "only absolute http:// URLs are forwarded")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    drop = (b"connection:", b"proxy-", b"keep-alive:")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(drop)]
    if not any(ln.lower().startswith(b"host:") for ln in kept):
        kept.insert(0, b"Host: " + url.netloc.encode())
    first = f"{method} {path} HTTP/1.1".encode()
    return method, url.hostname, url.port or 80, b"\r\n".join([first, *kept, b"Connection: close",
                                                                b"", b""])


class _Proxy:
    """vmm's HTTP proxy for the sandbox: accepts in the sandbox's namespace, connects from the
    host's (its threads are started from vmm's main thread)."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.thread = threading.Thread(target=self._serve, name="vmm-proxy", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        upstream = None
        try:
            conn.settimeout(120)
            head, rest = _read_head(conn)
            method, host, port, request = parse_request(head)
            upstream = _connect(host, port)
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(request + rest)
            _pump(conn, upstream)
        except ProxyRefused as exc:
            with contextlib.suppress(OSError):
                conn.sendall(f"HTTP/1.1 {exc.status} {exc.reason}\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n".encode())
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 65536:
            raise ProxyRefused(400, "incomplete request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _connect(host: str, port: int) -> socket.socket:
    """A connection to ``host``: to an address that was checked, never a name resolved twice."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ProxyRefused(502, f"cannot resolve {host}") from None
    allowed = [info for info in infos if not forbidden(str(info[4][0]))]
    if not allowed:
        raise ProxyRefused(403, f"vmm refuses {host}: a local or link-local address")
    for family, kind, proto, _name, address in allowed:
        s = socket.socket(family, kind, proto)
        s.settimeout(30)
        try:
            s.connect(address)
        except OSError:
            s.close()
            continue
        s.settimeout(300)
        return s
    raise ProxyRefused(502, f"cannot connect to {host}:{port}")


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until the upstream side is done. The client's end of input is not passed
    on (a server may drop a request whose sender half-closed), the upstream's is."""
    peer = {client: upstream, upstream: client}
    reading = {client, upstream}
    while upstream in reading:
        ready, _, _ = select.select(list(reading), [], [], 300)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if data:
                peer[s].sendall(data)
            else:
                reading.discard(s)
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)
