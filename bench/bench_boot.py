"""Start-to-SSH-ready of the test guest on the QEMU engine, in a private network namespace.

    sudo .venv/bin/python bench/bench_boot.py [--runs 3] [--accel auto|tcg|kvm]

Needs the test guest (scripts/build-test-guest.sh). Reports `vmm start` wall time (which
includes waiting for the SSH banner), the accel used, and the time to the first ping reply.
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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, vmm_bin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accel", default="auto")
    args = ap.parse_args()
    guest = Path(subprocess.run([str(REPO / "scripts/build-test-guest.sh")], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1])
    ns = f"vmmb-{secrets.token_hex(3)}"
    vmm = vmm_bin()
    with tempfile.TemporaryDirectory(prefix="vmmb") as tmp:
        t = Path(tmp)
        env = dict(os.environ, VMM_DATA_DIR=str(t / "d"), VMM_CONFIG=str(t / "c.json"))
        (t / "c.json").write_text(json.dumps({"engine": "qemu", "accel": args.accel}))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "key")], check=True)

        def run(*a: str, in_ns: bool = True) -> subprocess.CompletedProcess[str]:
            argv = [vmm, *a]
            if in_ns:
                argv = ["ip", "netns", "exec", ns, *argv]
            return subprocess.run(argv, env=env, capture_output=True, text=True, check=True)

        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            run("kernel", "import", str(guest / "vmlinux"), "--name", "default", in_ns=False)
            run("image", "import", str(guest / "rootfs.ext4"), "--name", "default", in_ns=False)
            run("create", "bench", "--memory", "256", "--ssh-key", str(t / "key.pub"), in_ns=False)
            starts, pings, accel = [], [], "?"
            for _ in range(args.runs):
                t0 = time.perf_counter()
                pinger = subprocess.Popen(
                    ["ip", "netns", "exec", ns, "sh", "-c",
                     "until ping -c1 -W1 172.16.0.2 >/dev/null 2>&1; do sleep 0.05; done"])
                ping_done: list[float] = []
                watcher = threading.Thread(target=lambda p=pinger, d=ping_done: (p.wait(), d.append(time.perf_counter())))
                watcher.start()
                run("start", "bench", "--timeout", "300")
                starts.append(time.perf_counter() - t0)
                watcher.join(timeout=300)
                pings.append(ping_done[0] - t0 if ping_done else float("nan"))
                vm = json.loads(run("inspect", "bench").stdout)
                accel = vm.get("accel_in_use") or "?"
                run("stop", "bench")
            run("delete", "-f", "bench")
        finally:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid])
            subprocess.run(["ip", "netns", "del", ns])
    print(f"machine: {machine()}")
    print(f"accel: {accel}; guest: {guest.name}")
    print(f"vmm start -> SSH ready   median {statistics.median(starts):6.2f} s  (runs: {', '.join(f'{s:.2f}' for s in starts)})")
    print(f"vmm start -> first ping  median {statistics.median(pings):6.2f} s")


if __name__ == "__main__":
    main()
