"""Chaos under load: concurrent workers doing random operations through the real CLI on a pool
of VMs (fake firecracker, one private network namespace), with the invariant checker of
``tests/invariants.py`` run after every operation.

Operations: create, start, stop, delete (with and without -f), port-forward add/remove, and
kill -9 of a VM's hypervisor (what a host OOM killer does). Every operation must succeed or
fail with its normal one-line error (the VM does not exist, already exists, is running, the
port is taken, ...); after it returns, the worker checks the invariants without holding any
lock. VMs other workers are working on at that moment are "busy" (the checker's allowances);
VMs whose hypervisor the test killed are "crashed".

At the end, with nothing running: the invariants hold strictly, ``vmm doctor --fix`` cleans
what the crashes left, and deleting every VM leaves nothing.

Seeded and repeatable: ``VMM_CHAOS_SEED`` (else a random seed, printed, and in every failure
message) fixes the sequence of operations; how the workers interleave is up to the scheduler.
``VMM_CHAOS_OPS`` (300), ``VMM_CHAOS_WORKERS`` (8) and ``VMM_CHAOS_VMS`` (30) set the load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, make_ext4
from tests.integration.test_kill_matrix import doctor_lines, env_at, install_fast_fake, new_root
from tests.invariants import Problem, observe, problems
from tests.netns import NetNS
from tests.unit.test_kernels import fake_elf
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("VMM_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
OPS = int(os.environ.get("VMM_CHAOS_OPS", "300"))
WORKERS = int(os.environ.get("VMM_CHAOS_WORKERS", "8"))
VMS = int(os.environ.get("VMM_CHAOS_VMS", "30"))
PORTS = range(20000, 20016)
# The share of operations aimed at a VM they fit (a stopped one to start, a running one to
# stop or kill, a forward that exists to remove, a free name to create); the others take the
# planned VM whatever its state, so the refusals are exercised too.
DIRECTED = 0.7

WEIGHTS = {
    "create": 10,
    "start": 24,
    "stop": 14,
    "delete": 8,
    "pf-add": 16,
    "pf-remove": 12,
    "kill-9": 16,
}
# The normal one-line errors each operation may end with (first line of stderr).
EXPECTED = {
    "create": [r"^error: VM '\w+' already exists$"],
    "start": [r"^error: VM '\w+' does not exist$", r"^error: VM '\w+' is already running$"],
    "stop": [r"^error: VM '\w+' does not exist$"],
    "delete": [r"^error: VM '\w+' does not exist$", r"^error: VM '\w+' is running$"],
    "pf-add": [
        r"^error: VM '\w+' does not exist$",
        r"^error: host port \d+/tcp is already forwarded by ",
    ],
    "pf-remove": [r"^error: VM '\w+' does not exist$", r"^error: no port forward \d+$"],
}


@dataclass(frozen=True)
class Op:
    index: int
    kind: str
    vm: str
    port: int = 0
    guest_port: int = 0
    force: bool = False
    pick: float | None = None  # directed: choose the target among the VMs it fits (see direct)

    def argv(self) -> list[str]:
        if self.kind == "create":
            return ["create", self.vm, "--disk", "128"]
        if self.kind == "start":
            return ["start", self.vm, "--no-wait"]
        if self.kind == "stop":
            return ["stop", self.vm, "--timeout", "5"]
        if self.kind == "delete":
            return ["delete", *(["-f"] if self.force else []), self.vm]
        if self.kind == "pf-add":
            return ["port-forward", "add", self.vm, f"{self.port}:{self.guest_port}"]
        if self.kind == "pf-remove":
            return ["port-forward", "remove", self.vm, str(self.port)]
        raise AssertionError(self.kind)

    def __str__(self) -> str:
        if self.kind == "kill-9":
            return f"#{self.index} kill -9 the hypervisor of {self.vm}"
        return f"#{self.index} vmm {shlex.join(self.argv())}"


def plan(seed: int, count: int, vms: int) -> list[Op]:
    rng = random.Random(seed)
    names = [f"c{i:02d}" for i in range(vms)]
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    return [
        Op(
            i,
            rng.choices(kinds, weights)[0],
            rng.choice(names),
            rng.choice(PORTS),
            rng.randrange(1, 1024),
            rng.random() < 0.5,
            rng.random() if rng.random() < DIRECTED else None,
        )  # fmt: skip
        for i in range(count)
    ]


@dataclass
class Chaos:
    env: VmmEnv
    ns: NetNS
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[int, str] = field(default_factory=dict)  # op index -> VM
    finished: list[tuple[str, float]] = field(default_factory=list)  # (VM, when it ended)
    crashed: set[tuple[int, int]] = field(default_factory=set)  # (pid, start time) we killed
    kills: dict[str, list[float]] = field(default_factory=dict)  # VM -> when we killed it
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # "start ok" -> count
    checks: int = 0
    check_seconds: float = 0.0

    def vmm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "vmm", *args],
            env=self.env.env(), capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def busy_since(self, t0: float) -> set[str]:
        with self.lock:
            return set(self.in_flight.values()) | {vm for vm, end in self.finished if end >= t0}

    def kill9(self, op: Op) -> str:
        try:
            rec = json.loads((self.env.data_dir / "vms" / f"{op.vm}.json").read_text())
        except (OSError, ValueError):
            return "no record"
        pid, start = rec.get("pid"), rec.get("pid_start_time")
        if not isinstance(pid, int):
            return "not running"
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return "not running"
        if int(stat[stat.rfind(")") + 2 :].split()[19]) != start:
            return "not running (pid reused)"
        if str(self.env.data_dir / "sockets" / f"{op.vm}.sock").encode() not in cmdline:
            return "not its hypervisor"
        with self.lock:
            self.crashed.add((pid, start))  # before the kill: checkers may see it dead at once
            self.kills.setdefault(op.vm, []).append(time.monotonic())
        os.kill(pid, signal.SIGKILL)
        return f"killed pid {pid}"

    def direct(self, op: Op) -> Op:
        """A directed operation, aimed at a VM it fits now (else the planned one)."""
        if op.pick is None:
            return op
        recs: dict[str, dict[str, object]] = {}
        for f in (self.env.data_dir / "vms").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                recs[f.stem] = json.loads(f.read_text())
        running = {n for n, r in recs.items() if _alive(r)}
        if op.kind == "create":
            fits = [f"c{i:02d}" for i in range(VMS) if f"c{i:02d}" not in recs]
        elif op.kind == "start":
            fits = sorted(set(recs) - running)
        elif op.kind in ("stop", "kill-9"):
            fits = sorted(running)
        elif op.kind == "pf-remove":
            fits = sorted(
                f"{n} {f['host_port']}"
                for n, r in recs.items()
                for f in r.get("port_forwards") or []
            )  # type: ignore[attr-defined]
        else:
            fits = sorted(recs)
        if not fits:
            return op
        target = fits[int(op.pick * len(fits))]
        if op.kind == "pf-remove":
            name, port = target.split()
            return dataclasses.replace(op, vm=name, port=int(port))
        return dataclasses.replace(op, vm=target)

    def run(self, op: Op) -> None:
        t0 = time.monotonic()
        if op.kind == "kill-9":
            outcome = self.kill9(op)
        else:
            r = self.vmm(*op.argv())
            first = (r.stderr.strip().splitlines() or [""])[0]
            outcome = "ok" if r.returncode == 0 else first
            with self.lock:
                killed = [t for t in self.kills.get(op.vm, []) if t >= t0]
            if r.returncode == 1 and op.kind == "start" and killed and "Traceback" not in r.stderr:
                outcome += " (its hypervisor was killed during the start)"  # fails like a crash
            elif r.returncode != 0 and not (
                r.returncode == 1 and any(re.search(p, first) for p in EXPECTED[op.kind])
            ):
                self.fail(f"{op} exited {r.returncode}: {r.stderr.strip()}")
            elif "Traceback" in r.stderr:
                self.fail(f"{op}: traceback: {r.stderr.strip()}")
        with self.lock:
            self.log.append(f"{t0 - T0:7.2f}-{time.monotonic() - T0:7.2f} {op} -> {outcome}")
            key = f"{op.kind} {'ok' if outcome == 'ok' or outcome.startswith('killed') else 'refused'}"
            self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def check(
        self, after: str, *, busy: set[str] | None = None, quiescent: bool = False
    ) -> list[Problem]:
        t0 = time.monotonic()
        obs = observe(self.env.data_dir, self.ns.name)
        busy_now = self.busy_since(t0) if busy is None else busy
        with self.lock:
            crashed = set(self.crashed)
        found = problems(obs, busy=busy_now, crashed=crashed, quiescent=quiescent)
        with self.lock:
            self.checks += 1
            self.check_seconds += time.monotonic() - t0
        if found:
            self.fail(f"after {after} (busy: {sorted(busy_now)}): " + "; ".join(map(str, found)))
        return found

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    def report(self) -> str:
        with self.lock:
            return (
                f"VMM_CHAOS_SEED={SEED} VMM_CHAOS_OPS={OPS} VMM_CHAOS_WORKERS={WORKERS} VMM_CHAOS_VMS={VMS}\n"
                + "\n".join(self.failures[:5])
                + "\n\nthe operations (start-end seconds, in the order they ended), last 40:\n"
                + "\n".join(self.log[-40:])
            )


T0 = time.monotonic()


def _alive(rec: dict[str, object]) -> bool:
    try:
        stat = Path(f"/proc/{rec.get('pid')}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == rec.get("pid_start_time")


@pytest.fixture
def chaos_root() -> Iterator[Path]:
    root = new_root()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def setup_env(root: Path) -> VmmEnv:
    """Config (fake firecracker), a kernel and a small image, as ``default``."""
    env = env_at(root)
    env.write_config(engine="firecracker", firecracker_bin=str(install_fast_fake(root / "bin")))
    env.run("kernel", "import", str(fake_elf(root / "vmlinux")), "--name", "default", check=True)
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    env.run(
        "image",
        "import",
        str(make_ext4(root / "root.ext4", 16, tree)),
        "--name",
        "default",
        check=True,
    )
    return env


def test_the_checker_sees_what_it_checks(chaos_root: Path, netns: NetNS) -> None:
    """Each invariant, broken on purpose, is reported; a busy or crashed VM is allowed for."""
    env = setup_env(chaos_root)
    c = Chaos(env, netns)
    for args in (("create", "a"), ("create", "b"), ("port-forward", "a", "20001:80"),
                 ("start", "a", "--no-wait"), ("start", "b", "--no-wait")):  # fmt: skip
        assert c.vmm(*args).returncode == 0
    data, ns = env.data_dir, netns.name

    def kinds(**kw: object) -> set[str]:
        return {p.kind for p in problems(observe(data, ns), **kw)}  # type: ignore[arg-type]

    assert kinds(quiescent=True) == set()
    a = json.loads((data / "vms" / "a.json").read_text())
    os.kill(a["pid"], signal.SIGKILL)
    wait_until(lambda: "dead-running" in kinds(), 10, what="a's death to be seen")
    assert kinds() == {"dead-running", "rules", "stale-socket", "tap-not-running"}
    assert kinds(crashed={(a["pid"], a["pid_start_time"])}) == set()
    lock = os.open(data / "locks" / "a.lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a command at work on a: anything goes for it
        assert kinds() == set()
    finally:
        os.close(lock)
    assert kinds(busy={"a"}) == set()
    assert c.vmm("stop", "a").returncode == 0
    assert kinds(quiescent=True) == set()

    netns.run(["ip", "tuntap", "add", "vmm-deadbeef", "mode", "tap"])
    assert kinds() == {"orphan-tap"}
    netns.run(["ip", "link", "del", "vmm-deadbeef"])
    b = (data / "vms" / "b.json").read_text()
    (data / "vms" / "c.json").write_text(b.replace('"name": "b"', '"name": "c"'))
    # c: b's ip, mac, tap and id; it says running, but b's process is not its hypervisor
    assert kinds() == {"duplicate", "dead-running", "tap-not-running"}
    (data / "vms" / "c.json").write_text("{")
    assert kinds() == {"corrupt-record"}
    (data / "vms" / "c.json").unlink()
    (data / "images" / ".default.99999999.importing").touch()
    assert kinds() == {"temp"}
    (data / "images" / ".default.99999999.importing").unlink()
    netns.run(
        [
            "nft",
            "add",
            "rule",
            "ip",
            "vmm",
            "prerouting",
            "tcp",
            "dport",
            "20009",
            "dnat",
            "to",
            "172.16.0.3:9",
        ]
    )
    assert kinds() == {"rules", "nft"}  # not the records', and not in output as in prerouting
    assert c.vmm("delete", "-f", "a").returncode == 0 and c.vmm("delete", "-f", "b").returncode == 0
    assert kinds(quiescent=True) == set()


def test_chaos_under_load(chaos_root: Path, netns: NetNS) -> None:
    global T0
    print(f"\nchaos: VMM_CHAOS_SEED={SEED} ops={OPS} workers={WORKERS} vms={VMS}")
    env = setup_env(chaos_root)
    c = Chaos(env, netns)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # the pool of VMs, created
        for r in pool.map(lambda i: c.vmm("create", f"c{i:02d}", "--disk", "128"), range(VMS)):
            assert r.returncode == 0, r.stderr

    ops = plan(SEED, OPS, VMS)
    queue = iter(ops)
    take = threading.Lock()
    T0 = time.monotonic()

    def worker() -> None:
        while not c.failures:
            with take:
                planned = next(queue, None)
                if planned is None:
                    return
                op = c.direct(planned)
                with c.lock:
                    c.in_flight[op.index] = op.vm
            try:
                c.run(op)
            finally:
                with c.lock:
                    del c.in_flight[op.index]
                    c.finished.append((op.vm, time.monotonic()))
            c.check(str(op))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for f in [pool.submit(worker) for _ in range(WORKERS)]:
            f.result()
    elapsed = time.monotonic() - T0
    done = len(c.log)
    print(
        f"chaos: {done} operations in {elapsed:.0f} s, {c.checks} checks ({c.check_seconds / max(c.checks, 1):.2f} s each)"
    )
    print("chaos: " + ", ".join(f"{k} {v}" for k, v in sorted(c.outcomes.items())))
    assert not c.failures, c.report()
    assert done == OPS, c.report()

    # quiescent: the invariants hold strictly; doctor names what the crashes left and fixes it
    c.check("the last operation", busy=set(), quiescent=True)
    assert not c.failures, c.report()
    r = c.vmm("list", "-a", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["errors"] == [], r.stdout + r.stderr
    fix = c.vmm("doctor", "--fix", "--json")
    print(f"chaos: vmm doctor --fix: {json.loads(fix.stdout)['fixed']}")
    left = doctor_lines(json.loads(fix.stdout))
    assert left == [], f"vmm doctor --fix left {left}\n{c.report()}"
    after = problems(observe(env.data_dir, netns.name), crashed=c.crashed, quiescent=True)
    assert after == [], f"after doctor --fix: {after}\n{c.report()}"

    # and deleting every VM leaves nothing at all
    for name in sorted(p.stem for p in (env.data_dir / "vms").glob("*.json")):
        r = c.vmm("delete", "-f", name)
        assert r.returncode == 0, r.stderr
    obs = observe(env.data_dir, netns.name)
    assert problems(obs, quiescent=True) == [], c.report()
    assert (obs.procs, obs.taps, obs.table, obs.bridge) == ({}, {}, False, False), c.report()
