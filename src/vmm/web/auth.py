"""Who may use the server: the bearer token, the browser password, sessions, CSRF tokens and the
login rate limit. Standard library only (unit-tested without the web stack).

- The **API token** lives in a root-owned 0600 file (``/etc/vmm/api-token``), made on first
  start; a file anyone else can read or write is refused, not trusted.
- The **password** is stored as a salted scrypt hash (``vmm serve --set-password``).
- A **session** is a random cookie value (only its SHA-256 is kept) with an absolute expiry and
  its own CSRF token; sessions live in memory (a restart logs everyone out).
- Every secret is compared in constant time, and none is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from vmm.errors import ConfigError, ValidationError

DEFAULT_TOKEN_FILE = Path("/etc/vmm/api-token")
DEFAULT_PASSWORD_FILE = Path("/etc/vmm/web-password")

# scrypt: 2**15 * 8 * 128 bytes = 32 MiB and ~0.1 s per guess on one core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

SESSION_TTL = 12 * 3600.0  # seconds a login lasts
MAX_SESSIONS = 256


# -- secret files ---------------------------------------------------------------------------------


def check_private(path: Path) -> os.stat_result:
    """``path`` is a regular file owned by us (root) that nobody else can read or write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file", hint="remove it; vmm serve makes a new one")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}: not trusted",
            hint=f"chown root:root {path} (or remove it; vmm serve makes a new one)",
        )
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path} can be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}): not trusted",
            hint=f"chmod 600 {path}, and replace the secret in it: others may have seen it",
        )
    return st


def write_private(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` as a 0600 file, atomically (never through a symbolic link)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The API token in ``path``, made (32 random bytes, URL-safe) when the file is missing.
    Returns the token and whether it was just made."""
    try:
        check_private(path)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
        return token, True
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigError(f"{path} holds no usable token", hint="remove it; vmm serve makes a new one")
    return token, False


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


# -- the password ---------------------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): what the password file holds."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(
            f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long",
            hint="choose a longer one (a passphrase of a few words is easy to type)",
        )
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """``password`` matches the stored hash (constant time; a malformed hash never matches)."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if not (2 <= n_ <= 2**20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt, validate=True), n=n_, r=r_, p=p_,
            maxmem=SCRYPT_MAXMEM, dklen=len(want),
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def set_password(path: Path, password: str) -> None:
    write_private(path, hash_password(password) + "\n")


def load_password_hash(path: Path) -> str | None:
    """The stored hash, or None when no password was set (browser login is then off)."""
    try:
        check_private(path)
    except FileNotFoundError:
        return None
    return path.read_text().strip() or None


# -- sessions -------------------------------------------------------------------------------------


class Session:
    __slots__ = ("csrf", "expires")

    def __init__(self, csrf: str, expires: float):
        self.csrf = csrf
        self.expires = expires


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Sessions:
    """Logged-in browsers: cookie value -> session (keyed by the cookie's hash)."""

    def __init__(self, ttl: float = SESSION_TTL, limit: int = MAX_SESSIONS):
        self.ttl = ttl
        self.limit = limit
        self._by_key: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self) -> tuple[str, Session]:
        cookie = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), time.time() + self.ttl)
        with self._lock:
            self._expire()
            while len(self._by_key) >= self.limit:  # the oldest logins go first
                oldest = min(self._by_key, key=lambda k: self._by_key[k].expires)
                del self._by_key[oldest]
            self._by_key[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 128:
            return None
        with self._lock:
            session = self._by_key.get(_key(cookie))
            if session is not None and session.expires <= time.time():
                del self._by_key[_key(cookie)]
                return None
            return session

    def end(self, cookie: str | None) -> None:
        if cookie:
            with self._lock:
                self._by_key.pop(_key(cookie), None)

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._by_key.items() if s.expires <= now]:
            del self._by_key[key]


# -- login rate limit -----------------------------------------------------------------------------


class RateLimit:
    """Failed logins per client address in a sliding window, plus a total for all clients (a
    guesser with many addresses): over either, logins are refused until the window has passed.
    """

    def __init__(self, per_client: int = 5, total: int = 30, window: float = 60.0):
        self.per_client = per_client
        self.total = total
        self.window = window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds the client must wait before the next attempt (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            mine = self._failures.get(client, [])
            every = sorted(t for times in self._failures.values() for t in times)
            waits = []
            if len(mine) >= self.per_client:
                waits.append(mine[-self.per_client] + self.window - now)
            if len(every) >= self.total:
                waits.append(every[-self.total] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _prune(self, now: float) -> None:
        for client in list(self._failures):
            kept = [t for t in self._failures[client] if t > now - self.window]
            if kept:
                self._failures[client] = kept
            else:
                del self._failures[client]
