"""The QMP client against a scripted QMP server on a Unix socket in a thread."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmm.engines.qemu.qmp import QmpClient, QmpConnectionError, QmpError, qmp_execute
from vmm.errors import EngineError

pytestmark = pytest.mark.unit

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}
Handler = Callable[[dict[str, Any]], list[Any] | None]  # None: hang up


def default_handler(request: dict[str, Any]) -> list[Any]:
    rid = request.get("id")
    command = request["execute"]
    if command == "qmp_capabilities":
        return [{"return": {}, "id": rid}]
    if command == "query-status":
        return [{"return": {"status": "running", "running": True}, "id": rid}]
    if command == "system_powerdown":
        return [
            {"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}},
            {"return": {}, "id": rid},
        ]
    if command == "echo":
        return [{"return": request.get("arguments", {}), "id": rid}]
    return [
        {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}, "id": rid}
    ]  # fmt: skip


class FakeQmp:
    """Serves one client at a time; ``greeting`` and ``handler`` script the conversation."""

    def __init__(self, path: Path, handler: Handler = default_handler, greeting: Any = GREETING):
        self.path = path
        self.handler = handler
        self.greeting = greeting
        self.requests: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn, conn.makefile("rwb") as f:
            if self.greeting is not None:
                f.write(self._encode(self.greeting))
                f.flush()
            for line in f:
                request = json.loads(line)
                self.requests.append(request)
                replies = self.handler(request)
                if replies is None:
                    return
                for reply in replies:
                    f.write(self._encode(reply))
                f.flush()

    @staticmethod
    def _encode(message: Any) -> bytes:
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        return raw + b"\r\n"

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vq") as d:
        yield Path(d) / "qmp.sock"


def test_handshake_and_commands(sock_path: Path) -> None:
    server = FakeQmp(sock_path)
    with QmpClient(sock_path, timeout=2) as qmp:
        assert qmp.greeting is not None and qmp.greeting["version"]["qemu"]["major"] == 7
        assert qmp.execute("query-status")["status"] == "running"
        assert qmp.execute("echo", arguments={"node-name": "a"}, size=3) == {
            "node-name": "a",
            "size": 3,
        }
    server.close()
    assert [r["execute"] for r in server.requests] == ["qmp_capabilities", "query-status", "echo"]
    assert "arguments" not in server.requests[0]
    ids = [r["id"] for r in server.requests]
    assert len(set(ids)) == 3


def test_events_before_the_reply_are_skipped(sock_path: Path) -> None:
    server = FakeQmp(sock_path)
    assert qmp_execute(sock_path, "system_powerdown", timeout=2) == {}
    server.close()


def test_error_reply_raises_with_qmp_desc(sock_path: Path) -> None:
    server = FakeQmp(sock_path)
    with QmpClient(sock_path, timeout=2) as qmp, pytest.raises(QmpError) as err:
        qmp.execute("no-such-command")
    server.close()
    assert isinstance(err.value, EngineError)
    assert err.value.desc == "The command no-such-command has not been found"
    assert err.value.error_class == "CommandNotFound"
    assert "no-such-command has not been found" in str(err.value)


def test_reply_for_another_id_is_skipped(sock_path: Path) -> None:
    def handler(request: dict[str, Any]) -> list[Any]:
        return [{"return": "stale", "id": "other"}, *default_handler(request)]

    server = FakeQmp(sock_path, handler)
    assert qmp_execute(sock_path, "query-status", timeout=2)["status"] == "running"
    server.close()


def test_missing_socket(sock_path: Path) -> None:
    with pytest.raises(QmpConnectionError, match="cannot connect"):
        QmpClient(sock_path, timeout=1).connect()


def test_not_qmp(sock_path: Path) -> None:
    server = FakeQmp(sock_path, greeting={"hello": 1})
    with pytest.raises(QmpConnectionError, match="did not greet as QMP"):
        QmpClient(sock_path, timeout=2).connect()
    server.close()


def test_garbage(sock_path: Path) -> None:
    server = FakeQmp(sock_path, greeting=b"SSH-2.0-nope")
    with pytest.raises(QmpConnectionError, match="not JSON"):
        QmpClient(sock_path, timeout=2).connect()
    server.close()


def test_silent_server_times_out(sock_path: Path) -> None:
    # Like a QMP socket whose single client slot is taken: connected, but no greeting.
    server = FakeQmp(sock_path, greeting=None)
    with pytest.raises(QmpConnectionError, match="did not answer within 0.3 s"):
        QmpClient(sock_path, timeout=0.3).connect()
    server.close()


def test_connection_closed_mid_command(sock_path: Path) -> None:
    def handler(request: dict[str, Any]) -> list[Any] | None:
        return None if request["execute"] == "quit" else default_handler(request)

    server = FakeQmp(sock_path, handler)
    with QmpClient(sock_path, timeout=2) as qmp, pytest.raises(QmpConnectionError, match="closed"):
        qmp.execute("quit")
    server.close()


def test_execute_without_connect(sock_path: Path) -> None:
    with pytest.raises(QmpConnectionError, match="not connected"):
        QmpClient(sock_path).execute("query-status")
