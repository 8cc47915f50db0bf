"""`vmm list` with 50 VM records vs bare interpreter start-up (targets: median <= 60 ms, <= 3x).

    .venv/bin/python bench/bench_list.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms, python_bin, time_cmd, vmm_bin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--vms", type=int, default=50)
    args = ap.parse_args()
    from vmm.models import VM
    from vmm.store import Store

    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        store = Store(Path(tmp) / "data")
        store.ensure_dirs()
        for i in range(args.vms):
            store.save(VM(name=f"vm{i:02d}", id=f"{i:08x}", ip=f"172.16.0.{i + 2}", state="running",
                          pid=1, pid_start_time=1, engine="qemu", mac="06:00:AC:10:00:02", tap=f"vmm-{i:08x}",
                          dns_servers=["8.8.8.8"], created_at="2026-01-01T00:00:00+00:00"))
        env = dict(os.environ, VMM_DATA_DIR=str(store.root), VMM_CONFIG=str(Path(tmp) / "none.json"))
        # As installed packages run: with cached bytecode (pip compiles it at install time).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        bare = time_cmd([python_bin(), "-c", "pass"], runs=args.runs, env=env)
        listed = time_cmd([vmm_bin(), "list", "-a"], runs=args.runs, env=env)
        as_json = time_cmd([vmm_bin(), "list", "-a", "--json"], runs=args.runs, env=env)
    b, lst, js = median_ms(bare), median_ms(listed), median_ms(as_json)
    print(f"machine: {machine()}")
    print(f"python -c pass        median {b:6.1f} ms")
    print(f"vmm list -a ({args.vms} VMs)  median {lst:6.1f} ms  ({lst / b:.2f}x start-up)")
    print(f"vmm list -a --json    median {js:6.1f} ms  ({js / b:.2f}x start-up)")
    print(f"runs: {args.runs} each")


if __name__ == "__main__":
    main()
