"""Attacks on a running ``vmm serve``: no or bad credentials on every endpoint, CSRF, cross-origin
requests, login brute force, hostile names, oversized bodies, exposure without TLS, the token
file's mode, and secrets in the log."""

from __future__ import annotations

import http.client
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.web.conftest import make_server
from tests.web.harness import PASSWORD, Server

pytestmark = pytest.mark.integration

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def all_routes() -> list[tuple[str, str]]:
    from vmm.web import api, api_build, api_extra, api_host, ui, ui_host, ui_images

    out = []
    for route in [*api.ROUTES, *api_host.ROUTES, *api_extra.ROUTES, *api_build.ROUTES, *ui.ROUTES,
                  *ui_host.ROUTES, *ui_images.ROUTES]:
        if not hasattr(route, "methods"):
            continue  # the terminal's WebSocket: tests/web/test_terminal.py
        path = (route.path.replace("{name}", "keep").replace("{id}", "x")
                .replace("{key:path}", "8080").replace("{tag}", "code").replace("{verb}", "sync"))  # fmt: skip
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path))
    return out


PUBLIC = {("GET", "/healthz"), ("GET", "/login"), ("POST", "/login")}
ROUTES = [r for r in all_routes() if r not in PUBLIC]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_endpoint_wants_authentication(server: Server, method: str, path: str) -> None:
    body = b"{}" if method != "GET" else None
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
                    {"Authorization": f"Basic {server.token}"}, {"Cookie": "vmm_session=forged"}):
        r = server.request(method, path, auth=False, raw=body, headers={"Content-Type": "application/json", **headers})
        assert r.status == 401, (headers, r)
        if path.startswith("/api/") or method != "GET":
            assert r.json()["error"] == "authentication required"
        else:
            assert 'action="/login"' in r.text  # a page: the login form, still a 401


def test_healthz_and_static_need_no_login(server: Server) -> None:
    assert server.request("GET", "/healthz", auth=False).json() == {"ok": True}
    assert server.request("GET", "/static/vendor/htmx.min.js", auth=False).status == 200
    assert server.request("GET", "/static/../auth.py", auth=False).status == 404


def test_security_headers_and_no_cors(server: Server) -> None:
    for path in ("/api/v1/vms", "/healthz", "/"):
        r = server.request("GET", path, headers={"Origin": "https://evil.example"})
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "no-store"
        assert not any(k.lower().startswith("access-control-") for k in r.headers)
    r = server.request("OPTIONS", "/api/v1/vms", headers={"Origin": "https://evil.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert r.status in (401, 405) and not any(k.lower().startswith("access-control-") for k in r.headers)


def test_session_cookie_is_httponly_strict_and_expires(fresh_server: Server) -> None:
    r = fresh_server.request("POST", "/login", auth=False, raw=urlencode({"password": PASSWORD}).encode(), headers=FORM)
    assert r.status == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert re.search(r"Max-Age=\d+", cookie) and "Secure" not in cookie  # no TLS here


def test_csrf_is_required_for_every_state_change_by_cookie(fresh_server: Server) -> None:
    s = fresh_server
    cookie, csrf = s.login()
    base = {"Cookie": cookie, "Content-Type": "application/json"}
    create = b'{"name": "csrf1"}'
    for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf[:-1] + "x"}, {"X-CSRF-Token": s.token}):
        r = s.request("POST", "/api/v1/vms", auth=False, raw=create, headers={**base, **headers})
        assert r.status == 403, (headers, r)
        r = s.request("POST", "/ui/vms", auth=False, raw=b"name=csrf1", headers={**base, **FORM, **headers})
        assert r.status == 403, (headers, r)
    assert s.request("GET", "/api/v1/vms").json()["vms"] == []
    # the right token, but from another origin
    for evil in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        r = s.request("POST", "/api/v1/vms", auth=False, raw=create, headers={**base, "X-CSRF-Token": csrf, **evil})
        assert r.status == 403 and "cross-origin" in r.json()["error"], r
    # reads need no token; the right token from the same origin works
    assert s.request("GET", "/api/v1/vms", auth=False, headers={"Cookie": cookie}).status == 200
    r = s.request("POST", "/api/v1/vms", auth=False, raw=create,
                  headers={**base, "X-CSRF-Token": csrf, "Origin": s.base, "Host": s.base[7:]})
    assert r.status == 201, r
    # a bearer token is not a cookie: no CSRF token needed
    assert s.wait_job(s.request("DELETE", "/api/v1/vms/csrf1"))["state"] == "succeeded"


def test_logout_ends_the_session(fresh_server: Server) -> None:
    s = fresh_server
    cookie, csrf = s.login()
    assert s.request("POST", "/logout", auth=False, headers={"Cookie": cookie}).status == 403  # CSRF
    r = s.request("POST", "/logout", auth=False, headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert r.status == 204 and "Max-Age=0" in r.headers["Set-Cookie"]
    assert s.request("GET", "/api/v1/vms", auth=False, headers={"Cookie": cookie}).status == 401


def test_login_brute_force_is_rate_limited(fresh_server: Server) -> None:
    s = fresh_server
    statuses = []
    for i in range(8):
        r = s.request("POST", "/login", auth=False, raw=urlencode({"password": f"guess-{i:04d}-xx"}).encode(), headers=FORM)
        statuses.append(r.status)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    assert int(r.headers["Retry-After"]) > 0 and "Too many failed logins" in r.text
    # even the right password waits now
    r = s.request("POST", "/login", auth=False, raw=urlencode({"password": PASSWORD}).encode(), headers=FORM)
    assert r.status == 429
    # a cross-origin login form is refused outright
    r = s.request("POST", "/login", auth=False, raw=urlencode({"password": PASSWORD}).encode(),
                  headers={**FORM, "Origin": "https://evil.example"})
    assert r.status == 403


def test_hostile_names_are_refused_and_escaped(fresh_server: Server) -> None:
    s = fresh_server
    cookie, csrf = s.login()
    hostile = '<script>alert("x")</script>'
    r = s.request("POST", "/api/v1/vms", {"name": hostile})
    assert r.status == 400 and r.headers["Content-Type"] == "application/json"
    r = s.request("POST", "/ui/vms", auth=False, raw=urlencode({"name": hostile}).encode(),
                  headers={"Cookie": cookie, "X-CSRF-Token": csrf, **FORM})
    assert r.status == 400 and "invalid VM name" in r.text
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text
    r = s.request("GET", "/vms/%3Cscript%3E", auth=False, headers={"Cookie": cookie})
    assert r.status == 400 and "<script>" not in r.text and "&lt;script&gt;" in r.text
    assert s.request("GET", "/api/v1/vms").json()["vms"] == []


def test_request_bodies_are_limited(server: Server) -> None:
    def answer(headers: dict[str, str]) -> int:
        """The status for a request with these headers, before any body is sent (the server
        answers from the headers: sending the body too would race its close)."""
        conn = server.connection()
        try:
            conn.putrequest("POST", "/api/v1/vms")
            conn.putheader("Authorization", f"Bearer {server.token}")
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()

    assert answer({"Content-Type": "application/json", "Content-Length": "70000"}) == 413
    assert answer({"Content-Type": "application/json", "Content-Length": "-1"}) in (400, 413)
    assert answer({"Transfer-Encoding": "chunked"}) == 411  # no Content-Length: refused


def test_token_file_is_private_and_nothing_secret_is_logged(server: Server) -> None:
    st = server.token_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
    server.login()
    server.request("GET", "/api/v1/vms")
    log = server.log.read_text()
    assert server.token not in log and PASSWORD not in log and "vmm_session=" not in log
    assert "sudo cat" in log  # it says where the token is, not what it is


def test_non_loopback_without_tls_is_refused(server: Server) -> None:
    r = server.env.run("serve", "--listen", "0.0.0.0:8099", "--token-file", str(server.token_file))
    assert r.returncode == 2 and "refusing to serve on 0.0.0.0 without TLS" in r.stderr
    r = server.env.run("serve", "--listen", "example.com:80", "--token-file", str(server.token_file))
    assert r.returncode == 2 and "--listen wants an IP address" in r.stderr
    r = server.env.run("serve", "--tls-cert", "/nonexistent", "--token-file", str(server.token_file))
    assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr


def test_a_readable_token_file_stops_the_server(server: Server) -> None:
    bad = server.token_file.with_name("bad-token")
    bad.write_text("x" * 43)
    bad.chmod(0o644)
    r = server.env.run("serve", "--listen", "127.0.0.1:8098", "--token-file", str(bad))
    assert r.returncode == 1 and "can be read or written by others" in r.stderr


def test_tls_serves_https_with_secure_cookies_and_hsts(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    # a non-loopback address is fine with TLS (no --insecure)
    gen = make_server(extra=["--listen", "0.0.0.0:8080", "--tls-cert", str(cert), "--tls-key", str(key)])
    s = next(gen)
    try:
        assert "Serving vmm on https://0.0.0.0:8080/" in s.log.read_text()
        r = s.request("GET", "/api/v1/vms")
        assert r.status == 200 and r.headers["Strict-Transport-Security"].startswith("max-age=")
        r = s.request("POST", "/login", auth=False, raw=urlencode({"password": PASSWORD}).encode(), headers=FORM)
        assert r.status == 303 and "; Secure" in r.headers["Set-Cookie"]
        plain = http.client.HTTPConnection("127.0.0.1", s.relay.port, timeout=10)  # type: ignore[union-attr]
        with pytest.raises((OSError, http.client.HTTPException)):
            plain.request("GET", "/healthz")
            assert plain.getresponse().status != 200
    finally:
        next(gen, None)
