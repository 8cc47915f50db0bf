"""Progress of long guest jobs (downloads, builds, imports): lines handed to a callback.

The caller decides where they go (the CLI prints them on stderr); core code never prints.
A ``status`` callback, where a job takes one, gets transient lines (a download's bytes so
far, the file the compiler is on) that a terminal shows in place and a log can do without.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(line: str) -> None:
    """The default: progress goes nowhere."""
