"""vmm's loggers, without importing ``logging`` on the paths that run most.

``import logging`` costs a ``vmm start`` ~5 ms of CPU (it pulls in ``threading``, ``string``,
``traceback``...), and 50 VMs are started at once. A ``Logger`` here forwards to
``logging.getLogger(name)``, importing it only when it has something to emit: warnings and
errors always (``logging``'s last-resort handler prints them on stderr when nothing is
configured, as before); debug and info only once ``logging`` is loaded — the CLI's ``--debug``,
or a Python user's own logging set-up, load it, and nothing else would have shown them.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging


class Logger:
    __slots__ = ("_real", "name")

    def __init__(self, name: str):
        self.name = name
        self._real: logging.Logger | None = None

    def _logger(self) -> logging.Logger:
        if self._real is None:
            import logging

            self._real = logging.getLogger(self.name)
        return self._real

    def debug(self, msg: str, *args: object, exc_info: bool = False) -> None:
        if "logging" in sys.modules:
            self._logger().debug(msg, *args, exc_info=exc_info)

    def info(self, msg: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._logger().info(msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._logger().warning(msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self._logger().error(msg, *args)


def get_logger(name: str) -> Logger:
    return Logger(name)
