"""The exception tree of vmm.

Every error a user can meet is a ``VmmError``: the CLI catches only this root, prints
``error: <brief>`` and the hint, and exits 1 (2 for ``UsageError``).

    VmmError
     ├── UsageError           bad command-line input (exit code 2)
     ├── ValidationError      bad values: names, sizes, specs, config fields
     ├── ConfigError          the config file cannot be read or is invalid
     ├── NotFoundError        unknown VM, image, kernel
     ├── ConflictError        duplicate name, VM in the wrong state, address in use
     ├── PermissionDenied     the command needs root
     ├── RecordError          a VM record on disk is corrupt or from a newer vmm
     ├── CommandError         an external program failed (argv, exit code, stderr tail)
     ├── ToolMissing          an external program is not installed (hint: its package)
     └── EngineError          a hypervisor failed to launch, answer or stop
          └── ApiError        Firecracker answered a request with an error (fault_message)
"""

from __future__ import annotations

from collections.abc import Sequence


class VmmError(Exception):
    """Base of all vmm errors: a one-line ``brief``, optional ``details`` and ``hint``."""

    exit_code = 1

    def __init__(self, brief: str, *, details: str | None = None, hint: str | None = None):
        super().__init__(brief)
        self.brief = brief
        self.details = details
        self.hint = hint

    def __str__(self) -> str:
        return self.brief


class UsageError(VmmError):
    exit_code = 2


class ValidationError(VmmError):
    pass


class ConfigError(VmmError):
    pass


class NotFoundError(VmmError):
    pass


class ConflictError(VmmError):
    pass


class PermissionDenied(VmmError):
    pass


class RecordError(VmmError):
    pass


class EngineError(VmmError):
    pass


class ApiError(EngineError):
    """Firecracker rejected a request; ``fault_message`` is its own explanation."""

    def __init__(self, method: str, path: str, status: int, fault_message: str):
        super().__init__(
            f"firecracker rejected {method} {path} ({status}): {fault_message}",
        )
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


def json_field(parent: str, key: str) -> str:
    """``$.key`` for an error message, one line whatever the key holds: a key that is not a
    plain name (a newline, a quote, a control character from a hostile file) is quoted."""
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return f"{parent}.{key}"
    import json

    return f"{parent}[{json.dumps(key)}]"


def tail(text: str, lines: int = 12) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


class CommandError(VmmError):
    """An external program failed: carries the argv, exit code and the tail of stderr."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str = "",
        *,
        brief: str | None = None,
        hint: str | None = None,
    ):
        import shlex  # only when a command failed: keeps read-only commands lean

        cmd = shlex.join(argv)
        if returncode is None:
            default = f"command timed out: {cmd}"
        else:
            last = tail(stderr, 1)
            default = f"command failed (exit {returncode}): {cmd}" + (f": {last}" if last else "")
        super().__init__(brief or default, details=tail(stderr) or None, hint=hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class ToolMissing(VmmError):
    """A program vmm needs is not installed; the hint names the package that has it."""

    def __init__(self, program: str, *, hint: str | None = None):
        from vmm.host.tools import install_hint

        super().__init__(f"{program} is not installed", hint=hint or install_hint(program))
        self.program = program
