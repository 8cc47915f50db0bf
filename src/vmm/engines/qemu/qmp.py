"""A small synchronous QMP client over QEMU's Unix socket (stdlib only).

QMP is line-delimited JSON: QEMU greets with ``{"QMP": {...}}``, the client enters command mode
with ``qmp_capabilities``, then each ``{"execute": ..., "id": n}`` gets one ``{"return": ...}``
or ``{"error": {"class": ..., "desc": ...}}`` carrying the same id. Asynchronous events
(``{"event": ...}``) can arrive at any point, even before the reply to the command that caused
them (``system_powerdown`` emits POWERDOWN first); they are skipped.

A QMP socket serves one client at a time: a second client's connection is accepted by the kernel
but gets no greeting until the first leaves, so every read has a timeout.

    EngineError
     ├── QmpConnectionError   the socket cannot be reached, timed out, closed, or spoke garbage
     └── QmpError             QEMU answered a command with an error (``desc`` is its message)
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from vmm.errors import EngineError
from vmm.log import get_logger

log = get_logger(__name__)

DEFAULT_TIMEOUT = 5.0
_MAX_LINE = 16 * 1024 * 1024


class QmpConnectionError(EngineError):
    """The QMP socket could not be used (not there, no answer, closed, not QMP)."""


class QmpError(EngineError):
    """QEMU rejected a command; ``error_class`` and ``desc`` are QMP's own."""

    def __init__(self, command: str, error_class: str, desc: str):
        super().__init__(
            f"QEMU rejected {command}: {desc}", details=f"QMP error class {error_class}"
        )
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpClient:
    """One QMP session. Use as a context manager, or call ``connect`` and ``close``."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self.greeting: dict[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._file: io.BufferedRWPair | None = None
        self._next_id = 0

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, read the greeting and negotiate capabilities (none are enabled)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise QmpConnectionError(
                f"cannot connect to QMP socket {self.path}: {exc.strerror or exc}"
            ) from exc
        self._sock = sock
        self._file = sock.makefile("rwb")
        try:
            greeting = self._read_message()
            if "QMP" not in greeting:
                raise QmpConnectionError(f"{self.path} did not greet as QMP: {greeting!r}")
            self.greeting = greeting["QMP"]
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for closable in (self._file, self._sock):
            if closable is not None:
                with contextlib.suppress(OSError):
                    closable.close()
        self._file = None
        self._sock = None

    def execute(
        self, command: str, /, arguments: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Run ``command`` and return its ``return`` value; raise ``QmpError`` on an error.

        Arguments come as keywords, or in ``arguments`` for names that are not identifiers
        (many QMP arguments contain ``-``).
        """
        if self._file is None:
            raise QmpConnectionError("QMP client is not connected")
        args = {**(arguments or {}), **kwargs}
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": self._next_id}
        if args:
            request["arguments"] = args
        log.debug("qmp %s: %s", self.path, command)
        try:
            self._file.write(json.dumps(request).encode() + b"\n")
            self._file.flush()
        except OSError as exc:
            raise QmpConnectionError(f"QMP {command} could not be sent: {exc}") from exc
        while True:
            message = self._read_message()
            if "event" in message:
                log.debug("qmp event skipped: %s", message.get("event"))
                continue
            if message.get("id") != self._next_id:
                log.debug("qmp message for another request skipped: %r", message)
                continue
            if "error" in message:
                error = message["error"]
                if not isinstance(error, dict):
                    error = {"desc": error}
                raise QmpError(command, str(error.get("class", "?")), str(error.get("desc", error)))
            if "return" in message:
                return message["return"]
            raise QmpConnectionError(f"unexpected QMP reply to {command}: {message!r}")

    def _read_message(self) -> dict[str, Any]:
        assert self._file is not None
        try:
            line = self._file.readline(_MAX_LINE)
        except TimeoutError as exc:
            raise QmpConnectionError(
                f"QMP socket {self.path} did not answer within {self.timeout:g} s"
            ) from exc
        except OSError as exc:
            raise QmpConnectionError(f"QMP socket {self.path}: {exc}") from exc
        if not line:
            raise QmpConnectionError(f"QEMU closed the QMP connection on {self.path}")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise QmpConnectionError(
                f"QMP sent something that is not JSON: {line[:200]!r}"
            ) from exc
        if not isinstance(message, dict):
            raise QmpConnectionError(f"QMP sent a non-object: {line[:200]!r}")
        return message


def qmp_execute(
    path: Path, command: str, /, *, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any
) -> Any:
    """Connect, run one command, disconnect."""
    with QmpClient(path, timeout=timeout) as client:
        return client.execute(command, **kwargs)
