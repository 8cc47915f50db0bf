"""``vmm doctor --fix`` over the API and from the doctor page: a job running the CLI's steps
(``vmm.host.doctor``: the report, ``fix_all``, the report again) on what interrupted commands
left — an orphaned TAP in the server's network namespace, a VM directory without a record."""

from __future__ import annotations

import pytest

from tests.web.harness import Server

pytestmark = pytest.mark.integration


def leave_leftovers(server: Server) -> None:
    server.ns.run(["ip", "tuntap", "add", "vmm-deadbeef", "mode", "tap"])
    (server.env.data_dir / "vms" / "gone").mkdir(parents=True)  # an interrupted delete


def links(server: Server) -> str:
    return server.ns.run(["ip", "-o", "link"]).stdout


def test_doctor_fix_over_the_api(fresh_server: Server) -> None:
    s = fresh_server
    leave_leftovers(s)
    before = s.request("GET", "/api/v1/doctor").json()
    assert before["fixable"] is True, before
    taps = next(c for c in before["checks"] if c["name"] == "taps")
    assert taps["status"] == "warn" and "vmm-deadbeef" in taps["message"]

    r = s.request("POST", "/api/v1/doctor/fix")
    assert r.status == 202 and r.headers["Location"].startswith("/api/v1/jobs/"), r
    job = s.wait_job(r)
    assert job["state"] == "succeeded" and job["kind"] == "doctor-fix", job
    fixed = job["result"]["fixed"]
    assert "removed vmm-deadbeef" in fixed and any(line.endswith("/vms/gone") for line in fixed), fixed
    assert "fixed: removed vmm-deadbeef" in job["progress"]  # the CLI's own lines
    assert job["progress"][-1].startswith(("healthy: ", "NOT healthy: "))
    after = {c["name"]: c for c in job["result"]["checks"]}
    assert after["taps"]["status"] == "ok" and after["records"]["status"] == "ok", after
    assert "vmm-deadbeef" not in links(s) and not (s.env.data_dir / "vms" / "gone").exists()
    assert s.request("GET", "/api/v1/doctor").json()["fixable"] is False

    # nothing left: the job says so, as 'vmm doctor --fix' prints nothing fixed
    again = s.wait_job(s.request("POST", "/api/v1/doctor/fix", {}))
    assert again["state"] == "succeeded" and again["result"]["fixed"] == [] and again["progress"][0] == "nothing to fix"
    assert s.request("POST", "/api/v1/doctor/fix", {"all": True}).status == 400


def test_doctor_page_fix_button(fresh_server: Server) -> None:
    s = fresh_server
    cookie, csrf = s.login()
    page = s.request("GET", "/doctor", auth=False, headers={"Cookie": cookie}).text
    assert 'id="doctor-fix"' not in page and 'id="doctor-nothing"' in page
    leave_leftovers(s)
    page = s.request("GET", "/doctor", auth=False, headers={"Cookie": cookie}).text
    assert 'id="doctor-fix"' in page and 'hx-post="/ui/doctor/fix"' in page and "vmm-deadbeef" in page
    assert s.request("POST", "/ui/doctor/fix", auth=False, headers={"Cookie": cookie}).status == 403  # CSRF

    r = s.request("POST", "/ui/doctor/fix", auth=False, headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert r.status == 200 and "Running vmm doctor --fix" in r.text, r
    job = next(j for j in s.request("GET", "/api/v1/jobs").json()["jobs"] if j["kind"] == "doctor-fix")
    job = s.request("GET", f"/api/v1/jobs/{job['id']}?wait=30").json()["job"]
    assert job["state"] == "succeeded" and "removed vmm-deadbeef" in job["result"]["fixed"], job
    assert "vmm-deadbeef" not in links(s)

    # the page's job panel (what the page reloads on each job event) shows the job's lines
    panel = s.request("GET", "/ui/jobs/panel?kinds=doctor-fix", auth=False, headers={"Cookie": cookie}).text
    assert f'id="job-{job["id"]}"' in panel and "fixed: removed vmm-deadbeef" in panel and "succeeded" in panel
    page = s.request("GET", "/doctor", auth=False, headers={"Cookie": cookie}).text
    assert 'id="doctor-nothing"' in page and "fixed: removed vmm-deadbeef" in page
    # kinds it does not know match nothing; markup in them goes nowhere
    panel = s.request("GET", "/ui/jobs/panel?kinds=<b>,nope", auth=False, headers={"Cookie": cookie}).text
    assert "job-box" not in panel and "<b>" not in panel
