"""Waiting for conditions, never for luck: poll with a short interval up to a bounded deadline,
and when it runs out, say what was waited for and what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float, *, interval: float = 0.05, what: str = ""
) -> None:
    """Return as soon as ``predicate()`` is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate!r} (last seen: {last!r})")
        time.sleep(interval)
