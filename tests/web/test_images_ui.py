"""The images page's pull and build forms: each starts the API's own job (the same checks: bad
input is one 4xx message in the page and starts nothing), and the page's job panel shows the
job's progress lines and its outcome with the CLI's messages."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest

from tests.web.harness import Server

pytestmark = pytest.mark.integration


def form_post(server: Server, cookie: str, csrf: str, path: str, form: dict[str, str]) -> tuple[int, str]:
    r = server.request("POST", path, auth=False, raw=urlencode(form).encode(),
                       headers={"Cookie": cookie, "X-CSRF-Token": csrf,
                                "Content-Type": "application/x-www-form-urlencoded"})
    return r.status, r.text


def job_of(server: Server, kind: str, target: str, timeout: float = 60.0) -> dict[str, object]:
    """The newest job of ``kind`` for ``target``, once it has ended."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [j for j in server.request("GET", "/api/v1/jobs").json()["jobs"]
                if j["kind"] == kind and j["target"] == target]
        if jobs and jobs[0]["state"] != "running":
            return jobs[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)


def test_the_page_has_the_forms_and_a_job_panel(server: Server) -> None:
    cookie, _ = server.login()
    page = server.request("GET", "/images", auth=False, headers={"Cookie": cookie}).text
    for form in ("pull-form", "image-build-form", "kernel-build-form", "image-import-form", "kernel-import-form"):
        assert f'id="{form}"' in page, form
    assert 'data-src="/ui/jobs/panel?kinds=image-pull,image-build,kernel-build,image-import,kernel-import"' in page
    assert 'id="image-list" data-live="job-done"' in page and 'id="kernel-list" data-live="job-done"' in page
    assert "https://s3.amazonaws.com/spec.ccfc.min" in page  # the pull's default bucket, as a placeholder


BAD_FORMS = [
    ("/ui/images/pull", {"part": "everything"}, "unknown part to pull"),
    ("/ui/images/pull", {"base_url": "ftp://x"}, "invalid --base-url"),
    ("/ui/images/pull", {"name": "Bad_Name"}, "invalid image name"),
    ("/ui/images/build", {"name": "img", "suite": "bookworm; rm -rf /"}, "invalid suite"),
    ("/ui/images/build", {"name": "img", "mirror": "file:///etc"}, "mirror must be"),
    ("/ui/images/build", {"name": "img", "size_mb": "lots"}, "must be a whole number"),
    ("/ui/images/build", {"suite": "bookworm"}, "invalid image name"),
    ("/ui/kernels/build", {"name": "k", "version": "2.6"}, "unknown kernel version"),
    ("/ui/kernels/build", {"name": "k", "source": "linux.tar.xz"}, "absolute path"),
    ("/ui/kernels/build", {"name": "k", "config_fragments": "/a/b, /c/../d"}, "normalized"),
    ("/ui/kernels/build", {"name": "k", "jobs": "0"}, "jobs must be between"),
]


@pytest.mark.parametrize(("path", "form", "words"), BAD_FORMS, ids=[f"{p} {f}" for p, f, _ in BAD_FORMS])
def test_bad_input_in_a_form_is_one_message_and_no_job(server: Server, path: str, form: dict[str, str], words: str) -> None:
    cookie, csrf = server.login()
    before = len(server.request("GET", "/api/v1/jobs").json()["jobs"])
    status, text = form_post(server, cookie, csrf, path, form)
    assert status == 400 and words in text and 'class="flash error"' in text, text
    assert len(server.request("GET", "/api/v1/jobs").json()["jobs"]) == before


def test_failed_pull_and_builds_show_the_clis_messages_in_the_panel(server: Server) -> None:
    cookie, csrf = server.login()
    status, text = form_post(server, cookie, csrf, "/ui/images/pull",
                             {"name": "nopull", "base_url": "http://127.0.0.1:9/bucket", "part": "kernel"})
    assert status == 200 and "Pulling the kernel as nopull" in text, text
    status, text = form_post(server, cookie, csrf, "/ui/images/build",
                             {"name": "nosuite", "suite": "nosuchsuite", "packages": "less, vim"})
    assert status == 200 and "Building image nosuite" in text, text
    status, text = form_post(server, cookie, csrf, "/ui/kernels/build",
                             {"name": "nosrc", "version": "6.1", "source": "/nonexistent/linux.tar.xz"})
    assert status == 200 and "Building kernel nosrc" in text, text

    pulled = job_of(server, "image-pull", "nopull")
    built = job_of(server, "image-build", "nosuite")
    kernel = job_of(server, "kernel-build", "nosrc")
    assert pulled["state"] == "failed" and "cannot reach http://127.0.0.1:9/bucket" in pulled["error"]["error"]  # type: ignore[index]
    assert built["error"]["error"].startswith("debootstrap nosuchsuite failed (exit 1)")  # type: ignore[index]
    assert any("debootstrap nosuchsuite" in line for line in built["progress"])  # type: ignore[union-attr]
    assert kernel["error"]["error"] == "kernel source /nonexistent/linux.tar.xz does not exist"  # type: ignore[index]

    panel = server.request("GET", "/ui/jobs/panel?kinds=image-pull,image-build,kernel-build",
                           auth=False, headers={"Cookie": cookie}).text
    for job in (pulled, built, kernel):
        assert f'id="job-{job["id"]}"' in panel and 'data-state="failed"' in panel
    assert "cannot reach http://127.0.0.1:9/bucket" in panel and "No such script" in panel
    assert "kernel source /nonexistent/linux.tar.xz does not exist" in panel
    page = server.request("GET", "/images", auth=False, headers={"Cookie": cookie}).text
    assert f'id="job-{kernel["id"]}"' in page  # the page shows them when opened again
    names = [i["name"] for i in server.request("GET", "/api/v1/images").json()["images"]]
    assert "nopull" not in names and "nosuite" not in names
