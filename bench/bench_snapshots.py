"""Instant VMs on the QEMU engine: suspend, resume -> SSH-ready against a cold start -> SSH-ready
of the same guest in the same run, snapshot create time and sizes, and where a resume's time goes.

    sudo .venv/bin/python bench/bench_snapshots.py [--runs 3] [--memory 512,2048] [--fill 256]
                                                   [--guest DIR]

``--guest``: a directory with vmlinux and rootfs.ext4 (default: $VMM_TEST_GUEST, else what
scripts/build-test-guest.sh prints). Everything runs in a private data dir and network
namespace. Per memory size: one VM; ``runs`` times each of: stop + cold ``vmm start`` (waits
for the SSH banner), ``vmm suspend``, ``vmm start`` resuming (waits for the banner too), and
``vmm snapshot create`` of the running VM. ``--fill MB`` adds a case whose guest first writes
MB of random data to a tmpfs (memory a snapshot must carry). The resume breakdown comes from one
extra resume run in-process with the steps timed (``--child-breakdown``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, vmm_bin

GiB = 1024**3
MiB = 1024**2


def guest_dir(given: str | None) -> Path:
    if given or os.environ.get("VMM_TEST_GUEST"):
        return Path(given or os.environ["VMM_TEST_GUEST"])
    out = subprocess.run([str(REPO / "scripts/build-test-guest.sh")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


class Bench:
    def __init__(self, tmp: Path, ns: str):
        self.ns = ns
        self.env = dict(os.environ, VMM_DATA_DIR=str(tmp / "d"), VMM_CONFIG=str(tmp / "c.json"))
        self.tmp = tmp

    def run(self, *a: str, in_ns: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [vmm_bin(), *a]
        if in_ns:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"vmm {' '.join(a)} failed: {r.stderr.strip()}")
        return r

    def timed(self, *a: str) -> float:
        t0 = time.perf_counter()
        self.run(*a)
        return time.perf_counter() - t0

    def sizes(self, path: Path) -> tuple[int, int]:
        apparent = allocated = 0
        for p in path.rglob("*"):
            if p.is_file():
                st = p.stat()
                apparent += st.st_size
                allocated += st.st_blocks * 512
        return apparent, allocated


def breakdown_child(name: str) -> None:
    """Inside the namespace: resume VM ``name`` in-process with its steps timed (JSON out)."""
    t_start = time.perf_counter()
    from vmm.app import Vmm
    from vmm.engines.qemu import migrate

    m = Vmm()
    t_built = time.perf_counter()
    marks: dict[str, float] = {}

    def wrap(obj: Any, attr: str, label: str) -> None:
        inner = getattr(obj, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                marks[label] = marks.get(label, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, timed)

    engine = m.engine("qemu")
    wrap(m.network, "ensure_for", "network (bridge, nft rules, TAP)")
    wrap(engine, "_wait_ready", "QEMU spawned until QMP answers")
    wrap(migrate, "load", "state loaded (migrate-incoming until running)")
    wrap(engine, "version", "qemu --version (version check)")
    t0 = time.perf_counter()
    vm = m.vms.start(name)
    t_resumed = time.perf_counter()
    m.vms.wait_ready(vm, timeout=120)
    t_ssh = time.perf_counter()
    accounted = sum(marks.values())
    out = {
        "python start + imports + Vmm()": t_built - t_start,
        **marks,
        "the rest of start (lock, records, checks)": (t_resumed - t0) - accounted,
        "guest answers SSH (after the resume returned)": t_ssh - t_resumed,
    }
    print(json.dumps(out))


def measure(b: Bench, name: str, memory: int, fill: int, runs: int, key: Path) -> dict[str, Any]:
    b.run("create", name, "--memory", str(memory), "--ssh-key", str(key) + ".pub", in_ns=False)
    cold = b.timed("start", name, "--timeout", "300")
    if fill:
        b.run("ssh", name, "--", f"mount -o remount,size={fill + 64}M /dev/shm 2>/dev/null; "
              f"head -c {fill}M /dev/urandom > /dev/shm/fill")
    time.sleep(5)  # let the guest settle after boot
    colds, suspends, resumes, creates = [cold], [], [], []
    state_sizes: list[tuple[int, int]] = []
    snap_sizes: list[tuple[int, int]] = []
    data = Path(b.env["VMM_DATA_DIR"]) / "vms" / name
    for i in range(runs):
        suspends.append(b.timed("suspend", name))
        state_sizes.append(b.sizes(data / "suspend"))
        resumes.append(b.timed("start", name, "--timeout", "120"))
        creates.append(b.timed("snapshot", "create", name, f"s{i}"))
        snap_sizes.append(b.sizes(data / "snapshots" / f"s{i}"))
        b.run("snapshot", "delete", name, f"s{i}")
        if not fill:  # a cold boot loses the filled tmpfs: cold starts only without --fill
            b.run("stop", name)
            colds.append(b.timed("start", name, "--timeout", "300"))
            time.sleep(3)
    b.run("suspend", name)
    child = subprocess.run(["ip", "netns", "exec", b.ns, sys.executable, __file__, "--child-breakdown", name],
                           env=b.env, capture_output=True, text=True)
    steps = json.loads(child.stdout) if child.returncode == 0 else {"error": child.stderr.strip()[-300:]}
    b.run("delete", "-f", name)
    return {"memory": memory, "fill": fill, "cold": colds, "suspend": suspends, "resume": resumes,
            "create": creates, "state": state_sizes, "snapshot": snap_sizes, "steps": steps}


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({', '.join(f'{x:.2f}' for x in xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", default="512,2048", help="guest memory sizes in MB")
    ap.add_argument("--fill", type=int, default=256, help="MB of tmpfs data for an extra 512 MB case (0: none)")
    ap.add_argument("--guest")
    ap.add_argument("--child-breakdown", metavar="VM", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_breakdown:
        breakdown_child(args.child_breakdown)
        return
    guest = guest_dir(args.guest)
    ns = f"vmmb-{secrets.token_hex(3)}"
    results = []
    with tempfile.TemporaryDirectory(prefix="vmmb") as tmp:
        b = Bench(Path(tmp), ns)
        (b.tmp / "c.json").write_text(json.dumps({"engine": "qemu", "accel": "auto"}))
        key = b.tmp / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            b.run("kernel", "import", str(guest / "vmlinux"), "--name", "default", in_ns=False)
            b.run("image", "import", str(guest / "rootfs.ext4"), "--name", "default", in_ns=False)
            cases = [(int(m), 0) for m in args.memory.split(",")]
            if args.fill:
                cases.append((512, args.fill))
            for i, (memory, fill) in enumerate(cases):
                results.append(measure(b, f"b{i}", memory, fill, args.runs, key))
        finally:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid])
            subprocess.run(["ip", "netns", "del", ns])
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"machine: {machine()}")
    print(f"{qemu}; guest: {guest}")
    for r in results:
        label = f"{r['memory']} MB guest" + (f", {r['fill']} MB in tmpfs" if r["fill"] else "")
        print(f"\n## {label}")
        if not r["fill"]:
            print(f"cold start -> SSH ready    median {fmt(r['cold'])}")
        print(f"resume -> SSH ready        median {fmt(r['resume'])}")
        if not r["fill"]:
            ratio = statistics.median(r["cold"]) / statistics.median(r["resume"])
            print(f"  resume is {ratio:.1f}x faster than the cold start")
        print(f"suspend                    median {fmt(r['suspend'])}")
        print(f"snapshot create (running)  median {fmt(r['create'])}")
        app, alloc = r["state"][-1]
        print(f"suspend state on disk      {alloc / MiB:.1f} MB allocated ({app / MiB:.1f} MB apparent)")
        app, alloc = r["snapshot"][-1]
        print(f"snapshot on disk           {alloc / MiB:.1f} MB allocated ({app / MiB:.1f} MB apparent; "
              "state + a sparse copy of the disk)")
        print("resume breakdown (one in-process run):")
        for step, secs in r["steps"].items():
            print(f"  {step:48s} {secs if isinstance(secs, str) else f'{secs * 1000:7.0f} ms'}")


if __name__ == "__main__":
    main()
