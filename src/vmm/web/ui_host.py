"""The host pages' live job panels (a page's own kinds of jobs, their progress lines and live
status line, reloaded on every ``job`` event) and the doctor page's Fix button."""

from __future__ import annotations

import re

from starlette.responses import Response
from starlette.routing import Route

from vmm.web import api_host
from vmm.web.common import ctx
from vmm.web.ui import action, flash, render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from starlette.requests import Request

    from vmm.web.jobs import Job

PANEL_JOBS = 5  # the newest jobs of the page's kinds
PANEL_LINES = 12  # progress lines shown per job (the jobs page has them all)
KIND_RE = re.compile(r"[a-z][a-z-]{0,39}")


def panel_kinds(text: str) -> tuple[str, ...]:
    """``?kinds=a,b``: job kinds (unknown ones match nothing; anything else is left out)."""
    return tuple(k for k in text.split(",")[:10] if KIND_RE.fullmatch(k))


def panel_job(job: Job) -> dict[str, Any]:
    lines = job.progress[-PANEL_LINES:]
    if job.state == "running" and job.status_line:
        lines = [*lines, job.status_line]
    return {"id": job.id, "kind": job.kind, "target": job.target, "state": job.state,
            "lines": lines, "more": max(0, len(job.progress) - PANEL_LINES), "error": job.error}


def panel_values(request: Request, kinds: tuple[str, ...]) -> dict[str, Any]:
    jobs = [j for j in ctx(request).jobs.recent() if j.kind in kinds][:PANEL_JOBS]
    return {"panel_jobs": [panel_job(j) for j in jobs], "panel_kinds": ",".join(kinds)}


async def job_panel(request: Request) -> Response:
    """The fragment a page's ``[data-live=jobs]`` panel reloads."""
    kinds = panel_kinds(request.query_params.get("kinds", ""))
    return render(request, "_job_panel.html", **panel_values(request, kinds))


async def doctor_page(request: Request) -> Response:
    from vmm.web.common import call

    report = await call(api_host.doctor_json)
    return render(request, "doctor.html", report=report, page="doctor",
                  **panel_values(request, (api_host.DOCTOR_FIX,)))


@action
async def doctor_fix(request: Request) -> Response:
    api_host.doctor_fix_job(ctx(request))
    return flash("Running vmm doctor --fix ... (its progress is below; the report follows when it ends)")


ROUTES = [
    Route("/doctor", doctor_page, methods=["GET"]),
    Route("/ui/jobs/panel", job_panel, methods=["GET"]),
    Route("/ui/doctor/fix", doctor_fix, methods=["POST"]),
]
