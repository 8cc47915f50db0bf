"""vmm.web.auth without a server: the token file, the password hash, sessions, the login rate
limit (standard library only)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmm.errors import ConfigError, ValidationError
from vmm.web import auth

pytestmark = pytest.mark.unit


def test_token_file_is_made_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "api-token"
    token, made = auth.load_or_create_token(path)
    assert made and len(token) >= 40
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert auth.load_or_create_token(path) == (token, False)
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no temp file left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api-token"
    path.write_text("x" * 43)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="can be read or written by others"):
        auth.load_or_create_token(path)


def test_a_token_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    path = tmp_path / "api-token"
    path.write_text("x" * 43)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="not trusted"):
        auth.load_or_create_token(path)


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x" * 43)
    (tmp_path / "api-token").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="not a regular file"):
        auth.load_or_create_token(tmp_path / "api-token")


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    one = auth.hash_password("correct horse battery")
    two = auth.hash_password("correct horse battery")
    assert one.startswith("scrypt$32768$8$1$") and one != two  # salted
    assert auth.verify_password("correct horse battery", one)
    assert not auth.verify_password("correct horse batterx", one)
    assert not auth.verify_password("", one)
    for broken in ("", "plain", "scrypt$1$1$1$!!$!!", "md5$a$b$c$d$e", one.replace("32768", "999999999")):
        assert not auth.verify_password("correct horse battery", broken)


def test_short_passwords_are_refused() -> None:
    with pytest.raises(ValidationError, match="10 to 1024 characters"):
        auth.hash_password("short")


def test_password_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "web-password"
    assert auth.load_password_hash(path) is None
    auth.set_password(path, "a long enough password")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = auth.load_password_hash(path)
    assert stored and auth.verify_password("a long enough password", stored)
    assert "a long enough password" not in path.read_text()


def test_sessions_expire_and_end(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = auth.Sessions(ttl=100, limit=3)
    cookie, session = sessions.create()
    assert sessions.get(cookie) is session and len(session.csrf) >= 40
    assert sessions.get(cookie + "x") is None and sessions.get(None) is None
    assert sessions.get("x" * 1000) is None
    now = auth.time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + 101)
    assert sessions.get(cookie) is None
    monkeypatch.undo()
    cookie, _ = sessions.create()
    sessions.end(cookie)
    assert sessions.get(cookie) is None


def test_session_limit_drops_the_oldest() -> None:
    sessions = auth.Sessions(limit=2)
    first, _ = sessions.create()
    second, _ = sessions.create()
    third, _ = sessions.create()
    assert sessions.get(first) is None and sessions.get(second) and sessions.get(third)


def test_rate_limit_per_client_and_in_total() -> None:
    limit = auth.RateLimit(per_client=3, total=5, window=60)
    for _ in range(3):
        assert limit.retry_after("a") == 0
        limit.failed("a")
    assert 0 < limit.retry_after("a") <= 61
    assert limit.retry_after("b") == 0  # another client is not held back by a's failures
    limit.failed("b")
    limit.failed("c")
    assert limit.retry_after("d") > 0  # 5 failures in total: everyone waits
    limit.succeeded("a")


def test_same_is_constant_time_compare() -> None:
    assert auth.same("abc", "abc") and not auth.same("abc", "abd") and not auth.same("abc", "")
