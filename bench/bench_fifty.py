"""50 VMs at once on the fake firecracker: wall time of 50 parallel ``vmm start --no-wait`` and of
50 parallel ``vmm stop``, and vmm's own CPU per start (goals: the 50 starts complete in <= 10 s,
vmm adds <= 50 ms of CPU per start).

Everything runs inside a private network namespace this script creates and deletes; the data
dir is a scratch directory under /tmp. The scenario is tests/integration/test_fifty.py's: 50
VMs (64 MB ext4 image, 64 MB disks), every third one with a port forward.

How the CPU is measured: each ``vmm`` runs under a small wrapper (``WRAPPER``, inside the
namespace) that ``os.wait4``s it, which gives the CPU of the vmm process plus the children it
waited for: the short-lived tools (ip, nft, cp, resize2fs, debugfs, e2fsck). The fake
firecracker is spawned detached and never waited for, so it is not included (its own CPU is
reported apart, from /proc). The vmm process itself (``BOOT``, which is what the ``vmm``
console script does) writes its RUSAGE_CHILDREN once ``main`` returned: that is the tools'
share, the rest is vmm's Python. ``ip netns exec`` and the wrapper are outside the figures.

Round 0 is the first start of each VM (its disk is copied and prepared); rounds 1..R start
VMs whose disk exists, the common case, and are what the goals are checked against.

With ``--profile``: one start (the other VMs running) under ``python -m cProfile -s cumtime``
(wall clock) and under cProfile with a CPU clock, the CPU of each tool vmm ran for it, and the
CPU of importing the modules a start loads.

    sudo .venv/bin/python bench/bench_fifty.py [--rounds 3] [--vms 50] [--profile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from bench.common import machine, python_bin  # noqa: E402
from tests.conftest import VmmEnv, register_artifacts  # noqa: E402
from tests.fakes.fc_harness import install_fake  # noqa: E402
from tests.integration.test_fifty import forward_spec  # noqa: E402
from tests.netns import NetNS  # noqa: E402

GOAL_WALL = 10.0  # s, the 50 parallel starts
GOAL_CPU = 0.050  # s, vmm's CPU per start

# Runs each measured command inside the namespace: wait4 gives its CPU and its waited-for
# children's; the command's stdout goes to stderr so that ours carries only the JSON report.
# Run by /usr/bin/python3 -I -S: a bare interpreter (no site, no venv), a few ms per launch.
WRAPPER = r"""
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
os.environ["VMMB_CHILDREN_RUSAGE"] = report
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(2, 1)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "cpu": ru.ru_utime + ru.ru_stime,
                  "wall": time.monotonic() - t0}))
"""

# What the ``vmm`` console script does (``sys.exit(main())``), plus, once main returned, the CPU
# of the children it waited for (the tools), written where the wrapper said.
BOOT = r"""
import sys
from vmm.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    import os, resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["VMMB_CHILDREN_RUSAGE"], "w") as f:
        f.write(str(ru.ru_utime + ru.ru_stime))
raise SystemExit(rc)
"""

# cProfile with a CPU clock: where vmm's own Python CPU goes (``-m cProfile`` is wall clock).
PROFILE_CPU = r"""
import cProfile, pstats, sys, time
from vmm.cli import main
p = cProfile.Profile(time.process_time)
rc = p.runcall(main, sys.argv[1:])
pstats.Stats(p, stream=sys.stderr).sort_stats("cumtime").print_stats(40)
raise SystemExit(rc)
"""

# The CPU and wall time of each tool a start runs (vmm.runner.Runner.run is the one place that
# runs programs), and the modules the start imported, in import order (a JSON line on stderr).
TOOLS = r"""
import sys
before = set(sys.modules)
import json, resource, time
import vmm.runner
calls = []
real_run = vmm.runner.Runner.run
def run(self, argv, **kw):
    c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        return real_run(self, argv, **kw)
    finally:
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
        argv = [str(a) for a in argv]
        if argv[0].endswith("setpriv") and "--" in argv:  # e2fsprogs run unprivileged
            argv = ["setpriv", "..."] + argv[argv.index("--") + 1 :]
        calls.append([" ".join(argv[:4]), cpu, time.perf_counter() - t0])
vmm.runner.Runner.run = run
from vmm.cli import main
rc = main(sys.argv[1:])
mods = [m for m in sys.modules if m not in before and m not in ("json", "resource")]
print(json.dumps({"calls": calls, "modules": mods}), file=sys.stderr)
raise SystemExit(rc)
"""

# The CPU of importing the given modules, in order, into a fresh interpreter.
IMPORTS = r"""
import importlib, sys, time
t0 = time.process_time()
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception:
        pass
print(time.process_time() - t0)
"""


@dataclass
class Run:
    name: str
    rc: int
    cpu: float  # vmm + the tools it waited for, seconds
    tools: float  # the waited-for tools alone (0 when the command is not vmm)
    wall: float
    stderr: str

    @property
    def python(self) -> float:
        return self.cpu - self.tools


class Bench:
    def __init__(self, root: Path, ns: NetNS, env: VmmEnv, names: list[str]):
        self.root, self.ns, self.env, self.names = root, ns, env, names
        self.wrapper = shutil.which("python3", path="/usr/bin") or "python3"
        self.penv = env.env()
        self.penv.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached

    def at_once(self, argvs: dict[str, list[str]]) -> tuple[float, list[Run]]:
        """Launch every command (under the wrapper, in the namespace) before waiting for any;
        the wall time until the last has exited, and each one's report."""
        reports = {name: self.root / "ru" / name for name in argvs}
        for report in reports.values():
            report.unlink(missing_ok=True)
        t0 = time.perf_counter()
        procs = {
            name: subprocess.Popen(
                self.ns.argv([self.wrapper, "-I", "-S", "-c", WRAPPER, str(reports[name]), *argv]),
                env=self.penv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )
            for name, argv in argvs.items()
        }  # fmt: skip
        outputs = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
        wall = time.perf_counter() - t0
        runs = []
        for name, (out, err) in outputs.items():
            if procs[name].returncode != 0 or not out.strip():
                raise SystemExit(f"the wrapper of {name} failed: {err.strip()[-400:]}")
            data = json.loads(out)
            tools = float(reports[name].read_text()) if reports[name].exists() else 0.0
            runs.append(Run(name, data["rc"], data["cpu"], tools, data["wall"], err))
        bad = [(r.name, r.rc, r.stderr.strip()[-400:]) for r in runs if r.rc != 0]
        if bad:
            raise SystemExit(f"{len(bad)} commands failed, e.g. {bad[:3]}")
        return wall, runs

    def one(self, argv: list[str], name: str = "ref") -> Run:
        return self.at_once({name: argv})[1][0]

    def vmm(self, *args: str) -> list[str]:
        return [python_bin(), "-c", BOOT, *args]

    def all_vmm(self, *args: str) -> tuple[float, list[Run]]:
        return self.at_once({n: self.vmm(*args, n) for n in self.names})

    def check(self, state: str) -> list[dict[str, int | str]]:
        """Every VM in ``state`` (by ``vmm list``), distinct addresses; when running, the
        namespace's processes are exactly their hypervisors; when stopped, there are none."""
        vms = json.loads(self.env.run("list", "-a", "--json", check=True).stdout)["vms"]
        states = {str(v["state"]) for v in vms}
        if states != {state} or len({v["ip"] for v in vms}) != len(self.names):
            raise SystemExit(f"expected {len(self.names)} VMs {state} with distinct IPs: {states}")
        want = {v["pid"] for v in vms} if state == "running" else set()
        if set(self.ns.pids()) != want:
            raise SystemExit(f"the namespace's processes are not the VMs' hypervisors: {self.ns.pids()}")
        return vms  # type: ignore[no-any-return]


def proc_cpu(pids: list[int]) -> list[float]:
    """CPU seconds (user + system) each live process has used so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2 :].split()
        out.append((int(fields[11]) + int(fields[12])) / tick)
    return out


def api_delays(pids: list[int], sockets: list[Path]) -> list[float]:
    """Seconds from each hypervisor's spawn (its start time in /proc) to its API socket's
    creation (the socket's mtime; vmm's chmod changes only the ctime): vmm gives up after 5 s."""
    tick = os.sysconf("SC_CLK_TCK")
    btime = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)  # /proc/stat's is whole seconds
    out = []
    for pid, sock in zip(pids, sockets, strict=True):
        stat = Path(f"/proc/{pid}/stat").read_text()
        started = btime + int(stat[stat.rfind(")") + 2 :].split()[19]) / tick
        out.append(sock.stat().st_mtime - started)
    return out


def setup(env: VmmEnv, ns: NetNS, root: Path, names: list[str]) -> None:
    env.write_config(engine="firecracker", firecracker_bin=str(install_fake(root / "bin")))
    register_artifacts(env, root)

    def create(i: int) -> None:
        env.run("create", names[i], "--disk", "64", check=True)
        spec = forward_spec(i)
        if spec:
            env.run("port-forward", names[i], spec, ns=ns, check=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, range(len(names))))


@dataclass
class Profile:
    wall: str  # python -m cProfile -s cumtime output
    cpu: str  # cProfile with time.process_time
    calls: list[tuple[str, float, float]]  # (tool argv head, CPU s, wall s)
    imports_cpu: float  # importing what the start imported, in a fresh interpreter


def profile(b: Bench, name: str, runs: int) -> Profile:
    """One ``vmm start`` of ``name`` (the others running) under each instrument."""
    py, start = python_bin(), ["start", name, "--no-wait"]

    def restart(argv: list[str]) -> subprocess.CompletedProcess[str]:
        b.env.run("stop", name, ns=b.ns, check=True)
        return b.ns.run(argv, env=b.penv, timeout=120)

    wall = restart([py, "-m", "cProfile", "-s", "cumtime", "-m", "vmm", *start]).stdout
    cpu = restart([py, "-c", PROFILE_CPU, *start]).stderr
    data = json.loads(restart([py, "-c", TOOLS, *start]).stderr.strip().splitlines()[-1])
    imports = [float(b.ns.run([py, "-c", IMPORTS, *data["modules"]], env=b.penv).stdout) for _ in range(runs)]
    return Profile(wall, cpu, [tuple(c) for c in data["calls"]], statistics.median(imports))


def head(profile_text: str, lines: int) -> str:
    out = profile_text.splitlines()
    start = next((i for i, ln in enumerate(out) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(out[start : start + 1 + lines])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def med(values: list[float]) -> float:
    return statistics.median(values)


def split(runs: list[Run]) -> str:
    """Median CPU: total / vmm's Python / tools."""
    return " / ".join(ms(med([getattr(r, k) for r in runs])) for k in ("cpu", "python", "tools"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="rounds of starts after the first starts")
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--refs", type=int, default=10, help="runs of each reference")
    ap.add_argument("--profile", action="store_true", help="profile one start (top costs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    names = [f"vm{i:02d}" for i in range(args.vms)]
    root = Path("/tmp") / f"vmmb{secrets.token_hex(3)}"
    (root / "ru").mkdir(parents=True)
    env = VmmEnv(root, root / "config.json", root / "data")
    date = datetime.datetime.now().astimezone()
    load = os.getloadavg()
    starts: list[tuple[float, list[Run], list[float]]] = []  # (wall, runs, fakes' CPU) per round
    stops: list[tuple[float, list[Run]]] = []
    prof: Profile | None = None
    together: list[Run] = []  # one `vmm start A B C ...` of every VM
    together_stop: list[Run] = []
    delays: list[float] = []  # fake firecracker: spawn -> API socket, every start of every round
    try:
        with NetNS() as ns:
            setup(env, ns, root, names)
            b = Bench(root, ns, env, names)
            # references, same run, same wrapper, inside the namespace
            refs = {
                "`python -c pass`": [python_bin(), "-c", "pass"],
                "`python -c 'import vmm.cli'`": [python_bin(), "-c", "import vmm.cli"],
                f"`vmm list -a --json` ({args.vms} VMs)": b.vmm("list", "-a", "--json"),
            }
            for argv in refs.values():  # warm-up: bytecode, page cache
                b.one(argv)
            ref_runs = {k: [b.one(argv) for _ in range(args.refs)] for k, argv in refs.items()}
            floor = [b.at_once({n: ["/bin/true"] for n in names})[0] for _ in range(3)]

            for r in range(args.rounds + 1):
                wall, runs = b.all_vmm("start", "--no-wait")
                vms = b.check("running")
                pids = [int(v["pid"]) for v in vms]
                starts.append((wall, runs, proc_cpu(pids)))
                delays += api_delays(pids, [env.data_dir / "sockets" / f"{v['name']}.sock" for v in vms])
                print(f"round {r}: {args.vms} starts {wall:.2f} s", file=sys.stderr, flush=True)
                if r == args.rounds and args.profile:
                    prof = profile(b, names[-1], args.refs)
                wall, runs = b.all_vmm("stop")
                b.check("stopped")
                stops.append((wall, runs))
                print(f"round {r}: {args.vms} stops {wall:.2f} s", file=sys.stderr, flush=True)
            # the same 50 starts as ONE command (`vmm start vm00 ... vm49`): one interpreter and
            # one set of imports, a forked child per VM (vmm.cli.fanout)
            for _ in range(max(1, args.rounds)):
                together.append(b.one(b.vmm("start", "--no-wait", *names), "together"))
                b.check("running")
                together_stop.append(b.one(b.vmm("stop", *names), "together"))
                b.check("stopped")
            # one start with no other under way (the VM's disk ready): the uncontended cost
            alone = []
            for _ in range(max(1, args.refs // 2)):
                alone.append(b.one(b.vmm("start", "--no-wait", names[0]), names[0]))
                b.one(b.vmm("stop", names[0]), names[0])
            b.all_vmm("delete")
            if ns.run(["nft", "list", "tables"]).stdout.strip() or ns.run(["ip", "-o", "link"]).stdout.count("\n") != 1:
                raise SystemExit("a table or a device is left after deleting every VM")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    first, rest = starts[0], starts[1:]
    runs = [run for _, rr, _ in rest for run in rr]
    stop_runs = [run for _, rr in stops[1:] for run in rr]
    fakes = [c for _, _, cpus in rest for c in cpus]
    walls = [w for w, _, _ in rest]
    n, cores = args.vms, os.cpu_count() or 1
    # the machine was busy for at least this long: vmm's and the fakes' CPU over the cores
    bound = med([(sum(r.cpu for r in rr) + sum(c)) / cores for _, rr, c in rest])

    print(f"\nmachine: {machine()}; load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"date: {date:%Y-%m-%d %H:%M %Z}")
    print(f"command: .venv/bin/python bench/bench_fifty.py --rounds {args.rounds} --vms {n}"
          + (" --profile" if args.profile else "") + "\n")
    print("| what | median | runs |")
    print("|---|---|---|")
    rows = [
        (f"wall: {n} parallel `vmm start --no-wait`, disks ready", f"{med(walls):.2f} s",
         ", ".join(f"{w:.2f}" for w in walls)),
        (f"wall: {n} parallel first starts (each disk copied and prepared)", f"{first[0]:.2f} s", "1"),
        (f"wall: {n} parallel `vmm stop`", f"{med([w for w, _ in stops[1:]]):.2f} s",
         ", ".join(f"{w:.2f}" for w, _ in stops[1:])),
        (f"CPU-bound floor of the starts: (vmm + fakes' CPU) / {cores} cores", f"{bound:.2f} s", ""),
        (f"harness: {n} parallel `ip netns exec` + wrapper running `/bin/true`", f"{med(floor):.2f} s",
         ", ".join(f"{w:.2f}" for w in floor)),
        ("**vmm CPU per start**, disks ready: total / Python / tools", split(runs),
         f"{len(runs)} starts; total p90 {ms(sorted(r.cpu for r in runs)[int(len(runs) * 0.9)])}"),
        ("vmm CPU per first start: total / Python / tools", split(first[1]), f"{len(first[1])} starts"),
        ("vmm CPU per start, one start alone, disk ready: total / Python / tools", split(alone),
         f"{len(alone)} starts"),
        ("vmm CPU per stop: total / Python / tools", split(stop_runs), f"{len(stop_runs)} stops"),
        (f"wall: one `vmm start` naming all {n} VMs (--no-wait)", f"{med([r.wall for r in together]):.2f} s",
         ", ".join(f"{r.wall:.2f}" for r in together)),
        (f"**vmm CPU per start**, one `vmm start` naming all {n}: total / {n}",
         ms(med([r.cpu / n for r in together])), f"{len(together)} runs"),
        (f"wall / CPU per stop: one `vmm stop` naming all {n}",
         f"{med([r.wall for r in together_stop]):.2f} s / {ms(med([r.cpu / n for r in together_stop]))}",
         f"{len(together_stop)} runs"),
        (f"not vmm: fake firecracker CPU per VM, until all {n} started", ms(med(fakes)), f"{len(fakes)} VMs"),
        ("not vmm: fake firecracker spawn -> API socket (vmm waits <= 5 s)",
         f"{med(delays):.2f} s", f"max {max(delays):.2f} s of {len(delays)}"),
    ]  # fmt: skip
    for what, runs_ in ref_runs.items():
        rows.append((f"reference: {what}, CPU", ms(med([r.cpu for r in runs_])), f"{len(runs_)} runs"))
    if prof is not None:
        rows.append(("profile: importing the modules one start loads, CPU", ms(prof.imports_cpu),
                     f"{args.refs} runs"))  # fmt: skip
    for row in rows:
        print("| " + " | ".join(row) + " |")

    cpu, wall = med([r.cpu for r in runs]), med(walls)
    print(f"\ngoal: {n} starts in <= {GOAL_WALL:.0f} s: {'met' if wall <= GOAL_WALL else 'NOT met'} "
          f"({wall:.2f} s, {wall / GOAL_WALL:.2f}x; first starts {first[0]:.2f} s)")
    print(f"goal: vmm CPU <= {ms(GOAL_CPU)} per start: {'met' if cpu <= GOAL_CPU else 'NOT met'} "
          f"({ms(cpu)}, {cpu / GOAL_CPU:.1f}x) with {n} `vmm start` processes")
    per_vm = med([r.cpu / n for r in together])
    print(f"goal: vmm CPU <= {ms(GOAL_CPU)} per start: {'met' if per_vm <= GOAL_CPU else 'NOT met'} "
          f"({ms(per_vm)}, {per_vm / GOAL_CPU:.1f}x) with one `vmm start` naming all {n}")
    if prof is not None:
        print("\n-- tools run by one start (the other VMs running): CPU, wall --")
        for argv, c, w in prof.calls:
            print(f"{ms(c):>9} {ms(w):>9}  {argv}")
        print(f"{ms(sum(c for _, c, _ in prof.calls)):>9} {ms(sum(w for _, _, w in prof.calls)):>9}  "
              f"total, {len(prof.calls)} commands")
        print("\n-- python -m cProfile -s cumtime -m vmm start (wall clock) --")
        print(head(prof.wall, 30))
        print("\n-- cProfile with a CPU clock (time.process_time; cProfile's overhead included) --")
        print(head(prof.cpu, 30))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
