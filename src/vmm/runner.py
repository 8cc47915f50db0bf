"""The one place that runs external programs (ip, nft, mkfs.ext4, debugfs, qemu, ssh, ...).

Every call is an argv list (never a shell), is logged, has a timeout, and a failure is raised
as ``CommandError`` carrying the command, its exit code and the tail of stderr. Tests pass a
``RecordingRunner`` instead of the real one where they only check what would be run.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vmm.errors import CommandError, ToolMissing, VmmError
from vmm.log import get_logger
from vmm.record import Record

log = get_logger(__name__)

DEFAULT_TIMEOUT = 120.0


class Result(Record):
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
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        """Run ``argv`` to completion, output captured. ``env`` (the whole environment, when
        given) and ``cwd`` are passed as they are; ``pass_fds`` stay open in the child."""
        argv = [str(a) for a in argv]
        log.debug("run: %s", shlex.join(argv))
        try:
            proc = subprocess.run(
                argv,
                input=input,
                pass_fds=tuple(pass_fds),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                capture_output=True,
                text=True,
                # Output that is not UTF-8 (a guest's file read back with debugfs) must not
                # crash vmm; the bytes survive a round trip through encode("surrogateescape").
                errors="surrogateescape",
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            if cwd is not None and not Path(cwd).is_dir():
                raise VmmError(f"cannot run {argv[0]}: {cwd} does not exist") from None
            raise ToolMissing(argv[0], hint=hint) from None
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise CommandError(argv, None, stderr, hint=hint) from None
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr or proc.stdout, hint=hint)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], None],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        tail_lines: int = 40,
    ) -> Result:
        """Run a long command (a kernel build) with its output (stdout and stderr merged) handed
        to ``on_line`` line by line as it comes, nothing kept but the last ``tail_lines`` (for
        the error). Killed at ``timeout``; a failure raises ``CommandError`` like ``run``."""
        import collections
        import time

        argv = [str(a) for a in argv]
        log.debug("stream: %s", shlex.join(argv))
        last: collections.deque[str] = collections.deque(maxlen=tail_lines)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="surrogateescape", env=dict(env) if env is not None else None,
                cwd=cwd,
            )  # fmt: skip
        except FileNotFoundError:
            raise ToolMissing(argv[0]) from None
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                last.append(line)
                on_line(line)
                if time.monotonic() > deadline:
                    raise CommandError(argv, None, "\n".join(last))
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            raise CommandError(argv, code, "\n".join(last))
        return Result(argv, code, "\n".join(last), "")

    def which(self, name: str) -> str | None:
        return shutil.which(name)


class RecordingRunner(Runner):
    """Records argv lists and returns canned results; for unit tests of appliers."""

    def __init__(self, responses: dict[str, Result] | None = None):
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []  # what each call got on stdin
        self.responses: dict[str, Result] = dict(responses or {})

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        hint: str | None = None,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        self.inputs.append(input)
        return self.responses.get(shlex.join(argv), Result(argv, 0, "", ""))
