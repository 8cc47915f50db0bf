"""`vmm create` with a 1 GiB sparse image (target <= 0.5 s), and the first-start disk work
(sparse/reflink copy, grow, key/hostname/network injection with debugfs).

    sudo .venv/bin/python bench/bench_create.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, vmm_bin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        t = Path(tmp)
        tree = t / "tree"
        (tree / "etc").mkdir(parents=True)
        (tree / "usr/bin").mkdir(parents=True)
        # ~300 MB of content in a 1 GiB image: the shape of a Debian rootfs with tools installed
        for i in range(30):
            with (tree / "usr/bin" / f"blob{i}").open("wb") as f:
                f.write(os.urandom(10 * 1024 * 1024))
        img = t / "base.ext4"
        with img.open("wb") as f:
            f.truncate(1024 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img)], check=True)
        kernel = t / "vmlinux"
        head = bytearray(64)
        head[:4] = b"\x7fELF"
        head[4:7] = b"\x02\x01\x01"
        head[16:20] = b"\x02\x00\x3e\x00"
        kernel.write_bytes(bytes(head) + b"\0" * 4096)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "key")], check=True)
        env = dict(os.environ, VMM_DATA_DIR=str(t / "data"), VMM_CONFIG=str(t / "config.json"))
        (t / "config.json").write_text('{"engine": "qemu", "accel": "tcg"}')
        vmm = vmm_bin()
        subprocess.run([vmm, "kernel", "import", str(kernel), "--name", "default"], env=env, check=True, capture_output=True)
        subprocess.run([vmm, "image", "import", str(img), "--name", "default"], env=env, check=True, capture_output=True)

        create, prep = [], []
        from vmm.app import Vmm
        from vmm.config import load_config

        for i in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([vmm, "create", f"b{i}", "--disk", "1024", "--ssh-key", str(t / "key.pub")],
                           env=env, check=True, capture_output=True)
            create.append(time.perf_counter() - t0)
            os.environ.update(VMM_DATA_DIR=env["VMM_DATA_DIR"], VMM_CONFIG=env["VMM_CONFIG"])
            m = Vmm(load_config())
            vm = m.get(f"b{i}")
            t0 = time.perf_counter()
            m.disks.prepare(vm)  # what the first `vmm start` does before booting
            prep.append(time.perf_counter() - t0)
        fs = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine()}; data dir filesystem: {fs}")
    print(f"vmm create (1 GiB sparse image)          median {statistics.median(create) * 1000:7.1f} ms")
    print(f"first-start disk prep (copy+grow+inject) median {statistics.median(prep) * 1000:7.1f} ms")
    print(f"runs: {args.runs}")


if __name__ == "__main__":
    main()
