"""``vmm serve`` with 50 VMs on the fake firecracker: ``GET /api/v1/vms`` latency (goal: median
<= 20 ms), the time from a state change to its SSE event (goal: <= 500 ms), and the server's
memory with 10 open dashboards.

Everything runs in a private network namespace this script creates and deletes (the server and
the VMs it sees); the client's sockets are made in that namespace too (no relay in the path),
with the bearer token, over one keep-alive connection and over a new connection per request.

State change -> event is measured two ways:
- ``vmm start/stop`` by the CLI: from the record's mtime (the moment the CLI saved the new
  state; the kernel's coarse clock, a few ms of granularity) to the event's arrival;
- a guest that dies (SIGKILL of the fake firecracker, no record written): from ``kill()`` to
  the ``stopped`` event (the server's pidfd).

    sudo .venv/bin/python bench/bench_api.py [--vms 50] [--requests 300] [--changes 20]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from bench.common import machine  # noqa: E402
from tests.web.conftest import make_server  # noqa: E402
from tests.web.harness import SERVER_PORT, SSE, Server, socket_in  # noqa: E402


def direct(server: Server) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", SERVER_PORT, timeout=30)
    conn.sock = socket_in(server.ns, ("127.0.0.1", SERVER_PORT))
    return conn


def get(conn: http.client.HTTPConnection, server: Server, path: str) -> bytes:
    conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return body


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class DirectSSE(SSE):
    def __init__(self, server: Server, path: str = "/api/v1/events"):
        self.conn = direct(server)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.sock = self.conn.sock


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespace, VMs): sudo .venv/bin/python bench/bench_api.py")

    gen = make_server()
    server = next(gen)
    try:
        names = [f"b{i:02d}" for i in range(args.vms)]
        t0 = time.perf_counter()
        for name in names:
            server.cli("create", name, "--disk", "64", "--memory", "128")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: server.cli("start", n, "--no-wait"), names))
        setup = time.perf_counter() - t0
        assert pid_of(server)
        rss_idle = rss_kb(pid_of(server))

        # GET /api/v1/vms, keep-alive and a connection per request
        conn = direct(server)
        body = get(conn, server, "/api/v1/vms")
        assert body.count(b'"state":"running"') == args.vms, body[:300]
        for _ in range(20):
            get(conn, server, "/api/v1/vms")
        keep: list[float] = []
        for _ in range(args.requests):
            t = time.perf_counter()
            get(conn, server, "/api/v1/vms")
            keep.append(time.perf_counter() - t)
        conn.close()
        fresh: list[float] = []
        for _ in range(args.requests // 3):
            t = time.perf_counter()
            c = direct(server)
            get(c, server, "/api/v1/vms")
            c.close()
            fresh.append(time.perf_counter() - t)
        conn = direct(server)
        one: list[float] = []
        for _ in range(args.requests):
            t = time.perf_counter()
            get(conn, server, "/api/v1/vms/b00")
            one.append(time.perf_counter() - t)
        conn.close()
        cli: list[float] = []
        for _ in range(20):
            t = time.perf_counter()
            server.cli("list", "-a", "--json")
            cli.append(time.perf_counter() - t)

        # state change -> SSE event
        events = DirectSSE(server)
        events.next_event()  # the snapshot
        record = server.env.data_dir / "vms" / "b01.json"
        cli_lat: list[float] = []
        kill_lat: list[float] = []
        for i in range(args.changes):
            verb, want = ("stop", "stopped") if i % 2 == 0 else ("start", "running")
            server.cli(verb, "b01", *(["--no-wait"] if verb == "start" else []))
            _, data, _ = events.wait_for(lambda e, d, w=want: e == "vm" and d["name"] == "b01" and d["vm"]["state"] == w)
            cli_lat.append(time.time() - record.stat().st_mtime_ns / 1e9)
        for i in range(args.changes):
            name = names[2 + i % (args.vms - 2)]
            pid = server.request("GET", f"/api/v1/vms/{name}").json()["vm"]["pid"]
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            events.wait_for(lambda e, d, n=name: e == "vm" and d["name"] == n and d["vm"]["state"] == "stopped")
            kill_lat.append(time.perf_counter() - t)
            server.cli("start", name, "--no-wait")
        events.close()

        # memory with 10 open dashboards: each a page load and an open event stream
        cookie, _csrf = server.login()
        streams = []
        for _ in range(10):
            c = direct(server)
            c.request("GET", "/", headers={"Cookie": cookie})
            assert c.getresponse().read()
            c.close()
            s = direct(server)
            s.request("GET", "/api/v1/events", headers={"Cookie": cookie})
            s.getresponse()
            streams.append(s)
        time.sleep(1.0)
        rss_ten = rss_kb(pid_of(server))
        server.cli("stop", "b00")  # one change fanned out to 10 streams
        time.sleep(0.5)
        rss_after = rss_kb(pid_of(server))
        for s in streams:
            s.close()

        print(f"## bench_api: {args.vms} running VMs (fake firecracker) — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
        print(f"machine: {machine()}; setup (create + start {args.vms}): {setup:.1f} s")
        print()
        print("| what | median | p90 | p99 | n |")
        print("|---|---|---|---|---|")
        for label, xs in (
            (f"`GET /api/v1/vms` ({args.vms} VMs, {len(body) // 1024} KiB), keep-alive", keep),
            ("`GET /api/v1/vms`, a new connection each", fresh),
            ("`GET /api/v1/vms/b00`, keep-alive", one),
            (f"reference: `vmm list -a --json` ({args.vms} VMs), whole process", cli),
            ("state change by the CLI (record written) -> SSE event", cli_lat),
            ("guest process killed (no record change) -> SSE event", kill_lat),
        ):
            print(f"| {label} | {statistics.median(xs) * 1000:.1f} ms | {pct(xs, 0.9):.1f} ms | {pct(xs, 0.99):.1f} ms | {len(xs)} |")
        print()
        print(f"server RSS: idle with {args.vms} VMs {rss_idle / 1024:.1f} MiB; 10 dashboards open "
              f"{rss_ten / 1024:.1f} MiB; after an event to all 10 {rss_after / 1024:.1f} MiB")
    finally:
        try:
            for name in [n for n in os.listdir(server.env.data_dir / "vms") if n.endswith(".json")]:
                server.cli("delete", "-f", name[:-5], check=False)
        except OSError:
            pass
        next(gen, None)


def pid_of(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid  # `ip netns exec` execs the server: the same pid


if __name__ == "__main__":
    main()
