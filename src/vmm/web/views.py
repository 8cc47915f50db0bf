"""What the API and the pages show of vmm's objects, as plain JSON-able data (one place, so the
dashboard, ``GET /api/v1/vms`` and the SSE events always agree)."""

from __future__ import annotations

import time
from datetime import datetime

from vmm.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PermissionDenied,
    RecordError,
    ToolMissing,
    UsageError,
    ValidationError,
    VmmError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from vmm.status import VMView

# The CLI's error model over HTTP: the same brief and hint, a status code per kind.
STATUS_OF: tuple[tuple[type[VmmError], int], ...] = (
    (UsageError, 400),
    (ValidationError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PermissionDenied, 403),
    (RecordError, 500),
    (ConfigError, 500),
    (ToolMissing, 501),
)


def error_status(exc: VmmError) -> int:
    for kind, status in STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 500  # CommandError, EngineError: the host or the hypervisor failed


def error_json(exc: VmmError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.brief, "hint": exc.hint}
    if exc.details:
        body["details"] = exc.details
    return body


def uptime_s(started_at: str | None, now: float | None = None) -> int | None:
    if not started_at:
        return None
    try:
        started = datetime.fromisoformat(started_at).timestamp()
    except ValueError:
        return None
    return max(0, int((now or time.time()) - started))


def human_duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def vm_json(view: VMView) -> dict[str, Any]:
    """A VM as ``vmm list --json`` shows it (live ``state``, the record's as ``recorded_state``;
    no SSH public key), plus ``alive``, the accelerator in use and the uptime."""
    vm = view.vm
    d = vm.to_dict()
    d["recorded_state"] = d["state"]
    d["state"] = view.state
    d["alive"] = view.alive
    d.pop("ssh_public_key", None)
    d["accel_shown"] = (vm.accel_in_use if view.alive and vm.accel_in_use else vm.accel)
    d["uptime_s"] = uptime_s(vm.started_at) if view.alive else None
    return d


def vm_state_key(d: dict[str, Any]) -> dict[str, Any]:
    """What a change event is about: a VM's JSON without the ticking uptime."""
    return {k: v for k, v in d.items() if k != "uptime_s"}
