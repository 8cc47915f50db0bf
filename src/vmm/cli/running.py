"""Running one command's handler: signals unwind like Ctrl-C, and every error becomes one
line (a traceback only with ``--debug``) and an exit code. Used by ``main`` and by each forked
child of a several-VM command (``cli.fanout``)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from vmm.errors import VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _print_error(exc: VmmError) -> None:
    print(f"error: {exc.brief}", file=sys.stderr)
    if exc.details:
        for line in exc.details.splitlines():
            print(f"  {line}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGINT arrived: unwinds like Ctrl-C, so every command's cleanup
    (``finally``, ``except BaseException``) runs the same way whichever signal stopped it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    import signal

    # The cleanup that follows must not be cut short by a second signal (a service manager
    # repeats SIGTERM, an impatient user presses Ctrl-C twice): ignore the rest.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _handle_signals() -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)


def invoke(handler: Callable[[Any], int | None], args: Any, *, debug: bool, handle_signals: bool) -> int:
    """``handler(args)`` as a command: its exit code, errors printed (``handle_signals``: a
    command that changes state unwinds on SIGTERM/SIGHUP/SIGINT; ``list`` needs none)."""
    if handle_signals:  # list needs no cleanup on signals
        _handle_signals()
    try:
        rc = handler(args)
        return int(rc or 0)
    except VmmError as exc:
        if debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else 2
        import signal

        by = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"error: interrupted{by}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        return 0
    except OSError as exc:  # an unexpected file or device problem: say which, no traceback
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        print("hint: re-run with --debug for details", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in vmm: still one line, the traceback behind --debug
        if debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc})", file=sys.stderr)
        print("hint: re-run with --debug for the traceback, and please report it", file=sys.stderr)
        return 1
