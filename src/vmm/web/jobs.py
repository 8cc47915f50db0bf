"""Long work as jobs: ``POST`` answers ``202`` with the job's URL at once, the work runs in a
thread of the server (so it goes on when the browser tab closes), and its progress lines and
result are read by polling ``GET /api/v1/jobs/ID`` or from the ``job`` events on the SSE stream.

Jobs live in memory: the newest ``KEEP`` are kept, a restart of the server forgets them (the
work itself is done by the same services as the CLI's, so an interrupted start is finished or
cleaned up by the next command, as after a killed ``vmm start``).
"""

from __future__ import annotations

import secrets
import threading
import time

from vmm.errors import VmmError
from vmm.log import get_logger
from vmm.web.views import error_json, error_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from vmm.web.events import Hub

log = get_logger(__name__)

KEEP = 200
MAX_LINES = 200
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


class Job:
    def __init__(self, kind: str, target: str):
        self.id = secrets.token_hex(8)
        self.kind = kind
        self.target = target
        self.state = RUNNING
        self.progress: list[str] = []
        self.status_line: str | None = None  # a long step's live line (a build's, a download's)
        self._published = 0.0
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.status = 202  # what the work's outcome maps to: 200, or the error's status code
        self.created = time.time()
        self.finished: float | None = None
        self.done = threading.Event()

    @property
    def url(self) -> str:
        return f"/api/v1/jobs/{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "target": self.target, "state": self.state,
            "progress": list(self.progress), "status_line": self.status_line,
            "result": self.result, "error": self.error,
            "status": self.status, "url": self.url, "created": self.created,
            "finished": self.finished,
        }  # fmt: skip


class Jobs:
    def __init__(self, hub: Hub, keep: int = KEEP):
        self.hub = hub
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, target: str, work: Callable[[Callable[[str], None]], Any]) -> Job:
        """Run ``work(note)`` in a thread; ``note(line)`` adds a progress line, and a line that
        starts with ``\r`` replaces the job's live status line (published at most 4 times a
        second)."""
        job = Job(kind, target)
        with self._lock:
            self._jobs[job.id] = job
            for old in list(self._jobs.values())[: max(0, len(self._jobs) - self.keep)]:
                if old.state != RUNNING:
                    del self._jobs[old.id]
        self._publish(job)
        thread = threading.Thread(target=self._run, args=(job, work), name=f"job-{kind}-{target}", daemon=True)
        thread.start()
        return job

    def _note(self, job: Job, line: str) -> None:
        if line.startswith("\r"):
            job.status_line = line[1:].rstrip()[:500]
            if time.monotonic() - job._published < 0.25:
                return
        else:
            job.progress.append(line.rstrip()[:500])
            del job.progress[:-MAX_LINES]
        job._published = time.monotonic()
        self._publish(job)

    def _run(self, job: Job, work: Callable[[Callable[[str], None]], Any]) -> None:
        try:
            job.result = work(lambda line: self._note(job, line))
            job.state, job.status = SUCCEEDED, 200
        except VmmError as exc:
            job.state, job.status, job.error = FAILED, error_status(exc), error_json(exc)
        except Exception as exc:  # a bug: one line, as the CLI says it
            log.warning("job %s %s failed: %s: %s", job.kind, job.target, type(exc).__name__, exc)
            job.state, job.status = FAILED, 500
            job.error = {"error": f"internal error ({type(exc).__name__}: {exc})", "hint": None}
        finally:
            job.finished = time.time()
            job.done.set()
            self._publish(job)

    def _publish(self, job: Job) -> None:
        self.hub.publish_threadsafe("job", job.to_json())

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[Job]:
        """Newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def running(self) -> list[Job]:
        return [j for j in self.recent() if j.state == RUNNING]
