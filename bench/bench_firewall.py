"""Benchmark: applying vmm's nft table with 50 VMs x 4 port forwards (target <= 100 ms) and
``vmm port-forward add`` end to end on a running VM among 50 (target <= 150 ms).

Everything runs inside a private network namespace this script creates and deletes.

    sudo .venv/bin/python bench/bench_firewall.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "src")]

from bench.common import machine, median_ms, python_bin  # noqa: E402
from tests.conftest import VmmEnv  # noqa: E402
from tests.fakes.fc_harness import install_fake  # noqa: E402
from tests.netns import NetNS  # noqa: E402
from tests.unit.test_kernels import fake_elf  # noqa: E402

NET = IPv4Network("172.16.0.0/16")


def _apply_times(runs: int) -> tuple[list[float], list[float]]:
    from vmm.network import firewall, links
    from vmm.network.firewall import FirewallSpec, PortForward
    from vmm.runner import Runner

    links.ensure_bridge(Runner(), "vmm-br0", "172.16.0.1", 16)
    forwards = tuple(
        PortForward(10000 + vm * 4 + k, IPv4Address(f"172.16.0.{vm + 2}"), 80 + k)
        for vm in range(50)
        for k in range(4)
    )
    spec = FirewallSpec("vmm-br0", NET, forwards=forwards)
    render, apply = [], []
    for _ in range(runs + 2):
        t0 = time.perf_counter()
        firewall.render_ruleset(spec)
        t1 = time.perf_counter()
        firewall.apply(Runner(), spec)
        t2 = time.perf_counter()
        render.append(t1 - t0)
        apply.append(t2 - t1)
    firewall.remove(Runner())
    links.delete_bridge(Runner(), "vmm-br0")
    return render[2:], apply[2:]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    root = Path("/tmp") / f"vmmb{secrets.token_hex(3)}"
    root.mkdir()
    env = VmmEnv(root, root / "config.json", root / "data")
    try:
        with NetNS() as ns:
            render, apply = ns.call(_apply_times, args.runs, timeout=600)
            # a data dir with 50 VMs, one running (fake firecracker), the others with 4 forwards each
            fake = install_fake(root / "bin")
            env.write_config(engine="firecracker", firecracker_bin=str(fake))
            img = root / "root.ext4"
            with img.open("wb") as f:
                f.truncate(64 << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
            env.run("kernel", "import", str(fake_elf(root / "vmlinux")), "--name", "default", check=True)
            env.run("image", "import", str(img), "--name", "default", check=True)
            for i in range(50):
                env.run("create", f"vm{i:02d}", "--disk", "128", check=True)
                if i:
                    for k in range(4):
                        env.run("port-forward", f"vm{i:02d}", f"{10000 + i * 4 + k}:{80 + k}", ns=ns, check=True)
            env.run("start", "vm00", "--no-wait", ns=ns, check=True)
            adds = []
            for r in range(args.runs + 2):
                t0 = time.perf_counter()
                env.run("port-forward", "vm00", f"{20000 + r}:80", ns=ns, check=True)
                t1 = time.perf_counter()
                env.run("port-forward", "remove", "vm00", f"{20000 + r}", ns=ns, check=True)
                if r >= 2:
                    adds.append(t1 - t0)
            ref = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", ns.name, python_bin(), "-c", "pass"], check=True)
                ref.append(time.perf_counter() - t0)
            env.run("delete", "-f", "vm00", ns=ns, check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"render 200 forwards: median {median_ms(render):.1f} ms")
    print(f"apply (nft -f) 200 forwards: median {median_ms(apply):.1f} ms (min {min(apply) * 1000:.1f}, max {max(apply) * 1000:.1f})")
    print(f"vmm port-forward add (50 VMs, 196 stored forwards, running VM): median {median_ms(adds):.1f} ms "
          f"(stdev {statistics.pstdev(adds) * 1000:.1f})")
    print(f"reference: ip netns exec + python -c pass: median {median_ms(ref):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
