"""The JSON API through real HTTP against a running ``vmm serve`` (fake firecracker, its own
network namespace): the whole lifecycle, jobs, the CLI's errors, SSE events for changes made by
the CLI, and a table of bad input that each answer one clear 4xx and change nothing."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.web.harness import SSE, Server

pytestmark = pytest.mark.integration


def vm_names(server: Server) -> list[str]:
    return [v["name"] for v in server.request("GET", "/api/v1/vms").json()["vms"]]


def test_lifecycle(server: Server) -> None:
    r = server.request("POST", "/api/v1/vms", {"name": "life", "cpus": 2, "memory_mb": 256})
    assert r.status == 201, r
    assert r.headers["Location"] == "/api/v1/vms/life"
    vm = r.json()["vm"]
    assert (vm["state"], vm["cpus"], vm["memory_mb"]) == ("created", 2, 256)
    assert "ssh_public_key" not in vm

    job = server.wait_job(server.request("POST", "/api/v1/vms/life/start", {"wait": False}))
    assert job["state"] == "succeeded" and job["kind"] == "start", job
    assert job["result"]["vm"]["state"] == "running"
    assert any("Started VM life" in line for line in job["progress"])
    assert "life  running" in server.cli("list").stdout  # the CLI sees what the API did

    r = server.request("POST", "/api/v1/vms/life/forwards", {"spec": "18080:80"})
    assert r.status == 201 and r.json()["port_forward"]["state"] == "active", r
    got = server.request("GET", "/api/v1/vms/life").json()["vm"]
    assert got["state"] == "running" and got["alive"] and got["uptime_s"] is not None
    assert [f["host_port"] for f in got["forwards"]] == [18080]
    assert "18080" in server.cli("port-forward", "list").stdout
    r = server.request("DELETE", "/api/v1/vms/life/forwards/18080/tcp")
    assert r.status == 200 and r.json()["removed"]["host_port"] == 18080, r

    again = server.wait_job(server.request("POST", "/api/v1/vms/life/start", {"wait": False}))
    assert again["state"] == "failed" and again["status"] == 409
    assert again["error"]["error"] == "VM 'life' is already running"  # the CLI's own message

    stop = server.wait_job(server.request("POST", "/api/v1/vms/life/stop", {}))
    assert stop["state"] == "succeeded" and stop["result"]["outcome"] == "ctrl-alt-del", stop
    assert server.request("GET", "/api/v1/vms/life").json()["vm"]["state"] == "stopped"

    console = server.request("GET", "/api/v1/vms/life/console")
    assert console.status == 200 and console.headers["Content-Type"].startswith("text/plain")

    delete = server.wait_job(server.request("DELETE", "/api/v1/vms/life"))
    assert delete["state"] == "succeeded", delete
    r = server.request("GET", "/api/v1/vms/life")
    assert r.status == 404 and r.json() == {"error": "VM 'life' does not exist", "hint": r.json()["hint"]}


def test_start_waits_for_ssh_as_a_job(server: Server) -> None:
    """The fake has no sshd: the job's wait ends at its timeout with the CLI's reason, and
    the VM stays running (as after 'vmm start --timeout')."""
    assert server.request("POST", "/api/v1/vms", {"name": "waiter"}).status == 201
    job = server.wait_job(server.request("POST", "/api/v1/vms/waiter/start", {"timeout": 1}))
    assert job["state"] == "failed" and "Waiting for SSH ..." in job["progress"], job
    assert server.request("GET", "/api/v1/vms/waiter").json()["vm"]["state"] == "running"
    assert server.wait_job(server.request("DELETE", "/api/v1/vms/waiter?force=1"))["state"] == "succeeded"


def test_jobs_are_listed_and_unknown_ones_are_404(server: Server) -> None:
    assert server.request("GET", "/api/v1/jobs").status == 200
    r = server.request("GET", "/api/v1/jobs/nope")
    assert r.status == 404 and "no job" in r.json()["error"]


def test_events_follow_changes_made_by_the_cli(server: Server) -> None:
    events = SSE(server)
    try:
        kind, data = events.next_event()
        assert kind == "snapshot" and isinstance(data["vms"], list)

        server.cli("create", "evt")
        _, data, _ = events.wait_for(lambda e, d: e == "vm" and d["name"] == "evt")
        assert data["vm"]["state"] == "created"

        server.cli("start", "evt", "--no-wait")
        _, data, took = events.wait_for(lambda e, d: e == "vm" and d["vm"]["state"] == "running")
        assert took < 1.0, took

        # the guest "powers off": no record changes, the process exits (pidfd)
        pid = server.request("GET", "/api/v1/vms/evt").json()["vm"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _, data, took = events.wait_for(lambda e, d: e == "vm" and d["name"] == "evt" and d["vm"]["state"] == "stopped")
        assert took < 1.0, took
        assert data["vm"]["recorded_state"] == "running" and not data["vm"]["alive"]

        server.cli("delete", "evt")
        _, data, _ = events.wait_for(lambda e, d: e == "vm-removed")
        assert data == {"name": "evt"}
    finally:
        events.close()


def test_job_events_arrive_on_the_stream(server: Server) -> None:
    assert server.request("POST", "/api/v1/vms", {"name": "jobevt"}).status == 201
    events = SSE(server)
    try:
        r = server.request("POST", "/api/v1/vms/jobevt/start", {"wait": False})
        job_id = r.json()["job"]["id"]
        _, data, _ = events.wait_for(lambda e, d: e == "job" and d["id"] == job_id and d["state"] != "running")
        assert data["state"] == "succeeded"
    finally:
        events.close()
        server.wait_job(server.request("DELETE", "/api/v1/vms/jobevt?force=1"))


BAD_INPUT = [
    # (method, path, body, status, words in the error)
    ("POST", "/api/v1/vms", {"name": "Bad_Name"}, 400, "invalid VM name 'Bad_Name'"),
    ("POST", "/api/v1/vms", {"name": "<script>alert(1)</script>"}, 400, "invalid VM name"),
    ("POST", "/api/v1/vms", {}, 400, "field 'name' is required"),
    ("POST", "/api/v1/vms", {"name": "x", "cpus": "two"}, 400, "field 'cpus' must be a whole number"),
    ("POST", "/api/v1/vms", {"name": "x", "cpus": True}, 400, "field 'cpus' must be a whole number"),
    ("POST", "/api/v1/vms", {"name": "x", "cpus": 0}, 400, "--cpus must be between 1 and 32"),
    ("POST", "/api/v1/vms", {"name": "x", "memory_mb": 1}, 400, "--memory must be at least 128 MB"),
    ("POST", "/api/v1/vms", {"name": "x", "colour": "red"}, 400, "unknown field 'colour'"),
    ("POST", "/api/v1/vms", {"name": "x", "image": "nope"}, 404, "image"),
    ("POST", "/api/v1/vms", {"name": "x", "ssh_key": "relative/key.pub"}, 400, "absolute path"),
    ("POST", "/api/v1/vms", {"name": "x", "ssh_key": "/etc/../etc/shadow"}, 400, "normalized"),
    ("POST", "/api/v1/vms", {"name": "x", "ssh_key": "/etc/shadow"}, 400, "is not an SSH public key"),
    ("POST", "/api/v1/vms", {"name": "x", "dns": ["not-an-ip"]}, 400, "not-an-ip"),
    ("POST", "/api/v1/vms", {"name": "x", "engine": "vmware"}, 400, "vmware"),
    ("POST", "/api/v1/vms", ["name"], 400, "must be a JSON object"),
    ("POST", "/api/v1/vms", "{", 400, "not valid JSON"),
    ("GET", "/api/v1/vms/NOPE", None, 400, "invalid VM name"),
    ("GET", "/api/v1/vms/ghost", None, 404, "VM 'ghost' does not exist"),
    ("POST", "/api/v1/vms/ghost/start", {}, 404, "VM 'ghost' does not exist"),
    ("POST", "/api/v1/vms/ghost/stop", {"timeout": 5}, 404, "VM 'ghost' does not exist"),
    ("DELETE", "/api/v1/vms/ghost", None, 404, "VM 'ghost' does not exist"),
    ("POST", "/api/v1/vms/keep/start", {"timeout": -1}, 400, "timeout must be between"),
    ("POST", "/api/v1/vms/keep/start", {"wait": "yes"}, 400, "field 'wait' must be true or false"),
    ("POST", "/api/v1/vms/keep/forwards", {"spec": "80"}, 400, "port forward"),
    ("POST", "/api/v1/vms/keep/forwards", {"spec": "99999:80"}, 400, "99999"),
    ("POST", "/api/v1/vms/keep/forwards", {}, 400, "field 'spec' is required"),
    ("DELETE", "/api/v1/vms/keep/forwards/4444", None, 404, "4444"),
    ("POST", "/api/v1/vms", {"name": "keep"}, 409, "already exists"),
    ("DELETE", "/api/v1/images/default", None, 409, "used by"),
    ("DELETE", "/api/v1/kernels/default", None, 409, "used by"),
    ("DELETE", "/api/v1/images/nope", None, 404, "nope"),
    ("POST", "/api/v1/images/import", {"source": "../etc/passwd", "name": "x"}, 400, "absolute path"),
    ("POST", "/api/v1/images/import", {"source": "/x", "name": "../x"}, 400, "invalid image name"),
    ("POST", "/api/v1/kernels/import", {"path": "/a/./b", "name": "k"}, 400, "normalized"),
    ("POST", "/api/v1/images/pull", {"base_url": "ftp://x"}, 400, "invalid --base-url"),
    ("POST", "/api/v1/images/pull", {"kernel_only": True, "rootfs_only": True}, 400, "exclude each other"),
    ("POST", "/api/v1/images/build", {"name": "img", "suite": "bookworm; rm -rf /"}, 400, "invalid suite"),
    ("POST", "/api/v1/images/build", {"name": "img", "mirror": "file:///etc"}, 400, "mirror must be"),
    ("POST", "/api/v1/kernels/build", {"name": "k", "version": "2.6"}, 400, "unknown kernel version"),
    ("POST", "/api/v1/kernels/build", {"name": "k", "source": "linux.tar.xz"}, 400, "absolute path"),
    ("POST", "/api/v1/kernels/build", {"name": "k", "jobs": 0}, 400, "jobs must be between"),
    ("POST", "/api/v1/doctor/fix", {"all": True}, 400, "unknown field 'all'"),
    ("GET", "/api/v1/jobs/x?wait=abc", None, 404, "no job"),
    ("GET", "/api/v1/nothing-here", None, 404, ""),
]


@pytest.fixture(scope="module")
def keep(server: Server) -> str:
    assert server.request("POST", "/api/v1/vms", {"name": "keep"}).status == 201
    return "keep"


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_INPUT,
                         ids=[f"{m} {p} {json.dumps(b)[:40]}" for m, p, b, _, _ in BAD_INPUT])
def test_bad_input_is_one_clear_4xx_and_changes_nothing(
    server: Server, keep: str, method: str, path: str, body: object, status: int, words: str
) -> None:
    before = server.request("GET", "/api/v1/vms").json()
    raw = body.encode() if isinstance(body, str) else None
    r = server.request(method, path, None if isinstance(body, str) else body, raw=raw,
                       headers={"Content-Type": "application/json"} if raw else None)
    assert r.status == status, r
    if words:
        error = r.json()
        assert set(error) <= {"error", "hint", "details"} and words in error["error"], error
        assert "\n" not in error["error"] and "Traceback" not in r.text
    assert server.request("GET", "/api/v1/vms").json() == before


def test_openapi_describes_every_route(server: Server) -> None:
    doc = server.request("GET", "/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    from vmm.web.openapi import ENDPOINTS

    for method, path, *_ in ENDPOINTS:
        assert method.lower() in doc["paths"][path], (method, path)
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_network_doctor_images_kernels(server: Server) -> None:
    net = server.request("GET", "/api/v1/network").json()
    assert net["bridge"]["name"] == "vmm-br0" and "allocations" in net
    doctor = server.request("GET", "/api/v1/doctor").json()
    assert isinstance(doctor["healthy"], bool) and doctor["checks"]
    assert [i["name"] for i in server.request("GET", "/api/v1/images").json()["images"]] == ["default"]
    assert [k["name"] for k in server.request("GET", "/api/v1/kernels").json()["kernels"]] == ["default"]


def test_mounts_autostart_and_network_prune(server: Server) -> None:
    share = server.env.root / "share"
    share.mkdir(exist_ok=True)
    (share / "hello.txt").write_text("hi from the host\n")
    r = server.request("POST", "/api/v1/vms", {"name": "mnt", "mounts": [f"{share}:code"]})
    assert r.status == 201, r
    mounts = server.request("GET", "/api/v1/vms/mnt/mounts").json()["mounts"]
    assert [(m["tag"], m["host_path"], m["guest_path"]) for m in mounts] == [("code", str(share), "/mnt/code")]

    job = server.wait_job(server.request("POST", "/api/v1/vms/mnt/mounts/code/sync", {}))
    assert job["state"] == "succeeded", job
    out = server.env.root / "pulled"
    job = server.wait_job(server.request("POST", "/api/v1/vms/mnt/mounts/code/pull", {"to": str(out)}))
    assert job["state"] == "succeeded", job
    assert (out / "hello.txt").read_text() == "hi from the host\n"
    bad = server.request("POST", "/api/v1/vms/mnt/mounts/code/pull", {"to": "relative"})
    assert bad.status == 400 and "absolute path" in bad.json()["error"]
    assert server.request("POST", "/api/v1/vms/mnt/mounts/a$b/sync", {}).status == 400
    missing = server.wait_job(server.request("POST", "/api/v1/vms/mnt/mounts/nope/sync", {}))
    assert missing["state"] == "failed" and missing["status"] == 404, missing

    cookie, csrf = server.login()
    page = server.request("GET", "/vms/mnt", auth=False, headers={"Cookie": cookie}).text
    assert 'id="mounts"' in page and "Sync from host" in page and "/mnt/code" in page
    r = server.request("POST", "/ui/vms/mnt/mounts/code/sync", auth=False, raw=b"",
                       headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert r.status == 200 and "Syncing mount code" in r.text, r

    r = server.request("PUT", "/api/v1/vms/mnt/autostart", {"enabled": True})
    assert r.status == 200 and r.json()["autostart"] is True, r
    assert json.loads(server.cli("inspect", "mnt").stdout)["autostart"] is True
    assert server.request("PUT", "/api/v1/vms/mnt/autostart", {}).status == 400

    r = server.request("POST", "/api/v1/network/prune")
    assert r.status == 200 and "removed_taps" in r.json(), r
    assert server.wait_job(server.request("DELETE", "/api/v1/vms/mnt"))["state"] == "succeeded"


def test_a_failed_pull_is_a_failed_job_with_the_clis_message(server: Server) -> None:
    job = server.wait_job(server.request("POST", "/api/v1/images/pull",
                                         {"name": "pulled", "base_url": "http://127.0.0.1:9"}))
    assert job["state"] == "failed" and job["status"] >= 400, job
    assert job["error"]["error"] and "Traceback" not in job["error"]["error"]
    assert "pulled" not in [i["name"] for i in server.request("GET", "/api/v1/images").json()["images"]]


def test_images_page_imports_an_image_and_a_kernel_as_jobs(server: Server) -> None:
    from urllib.parse import urlencode

    cookie, csrf = server.login()
    headers = {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded"}
    page = server.request("GET", "/images", auth=False, headers={"Cookie": cookie}).text
    assert 'id="image-import-form"' in page and 'id="kernel-import-form"' in page
    fake = server.env.root / "fake"
    for path, form in (("/ui/images/import", {"source": str(fake / "root.ext4"), "name": "second"}),
                       ("/ui/kernels/import", {"path": str(fake / "vmlinux"), "name": "second"})):
        r = server.request("POST", path, auth=False, raw=urlencode(form).encode(), headers=headers)
        assert r.status == 200 and "Importing" in r.text, r
    r = server.request("POST", "/ui/images/import", auth=False, headers=headers,
                       raw=urlencode({"source": "rel/path", "name": "x"}).encode())
    assert r.status == 400 and "absolute path" in r.text
    for _ in range(100):
        jobs = [j for j in server.request("GET", "/api/v1/jobs").json()["jobs"] if j["target"] == "second"]
        if len(jobs) == 2 and all(j["state"] != "running" for j in jobs):
            break
        time.sleep(0.1)
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert "second" in [i["name"] for i in server.request("GET", "/api/v1/images").json()["images"]]
    assert "second" in [k["name"] for k in server.request("GET", "/api/v1/kernels").json()["kernels"]]
    assert server.request("DELETE", "/api/v1/images/second").status == 200
    assert server.request("DELETE", "/api/v1/kernels/second").status == 200
