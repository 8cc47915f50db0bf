"""The one place that runs external programs (ip, nft, mkfs.ext4, debugfs, qemu, ssh, ...).

Every call is an argv list (never a shell), is logged, has a timeout, and a failure is raised
as ``CommandError`` carrying the command, its exit code and the tail of stderr. Tests pass a
``RecordingRunner`` instead of the real one where they only check what would be run.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmm.errors import CommandError, VmmError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Runs commands for real."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        hint: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Result:
        argv = [str(a) for a in argv]
        log.debug("run: %s", shlex.join(argv))
        try:
            proc = subprocess.run(
                argv,
                input=input,
                pass_fds=tuple(pass_fds),
                capture_output=True,
                text=True,
                # Output that is not UTF-8 (a guest's file read back with debugfs) must not
                # crash vmm; the bytes survive a round trip through encode("surrogateescape").
                errors="surrogateescape",
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise VmmError(
                f"{argv[0]} is not installed",
                hint=hint or f"install the package that provides {argv[0]}",
            ) from None
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise CommandError(argv, None, stderr, hint=hint) from None
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr or proc.stdout, hint=hint)
        return result

    def which(self, name: str) -> str | None:
        return shutil.which(name)


@dataclass
class RecordingRunner(Runner):
    """Records argv lists and returns canned results; for unit tests of appliers."""

    calls: list[list[str]] = field(default_factory=list)
    inputs: list[str | None] = field(default_factory=list)  # what each call got on stdin
    responses: dict[str, Result] = field(default_factory=dict)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        hint: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        self.inputs.append(input)
        return self.responses.get(shlex.join(argv), Result(argv, 0, "", ""))
