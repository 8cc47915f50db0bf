"""Mount image build for 1,000 files / 100 MB (target <= 1.5 s): what `vmm start` does per
mount — fingerprint the host tree and `mkfs.ext4 -d` an image — and the check that decides
whether an rw image may be rebuilt (superblock stamp; content comparison via `debugfs rdump`
when the guest mounted it).

    sudo .venv/bin/python bench/bench_mounts.py [--runs 5]
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

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent)]

from common import machine  # noqa: E402

from vmm.guest import mountfs, mounts  # noqa: E402
from vmm.runner import Runner  # noqa: E402


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runner = Runner()
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        t = Path(tmp)
        host = t / "host"
        for i in range(1000):
            d = host / f"d{i % 20}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(os.urandom(100 * 1024))
        print(machine())
        print(f"host tree: 1000 files, {sum(f.stat().st_size for f in host.rglob('*') if f.is_file()) // 2**20} MB")
        for mode in ("ro", "rw"):
            m = mounts.parse_mount_spec(f"{host}:bench:{mode}")
            image = t / f"{mode}.ext4"
            ms = timed(lambda m=m, image=image: mountfs.build_image(runner, m, image), args.runs)
            print(f"build {mode} image (scan + mkfs.ext4 -d): median {ms:.0f} ms")
        image = t / "rw.ext4"
        ms = timed(lambda: mountfs.superblock_stamp(image), args.runs)
        print(f"unchanged check (superblock stamp): median {ms:.2f} ms")
        subprocess.run(["debugfs", "-w", "-R", "ssv mnt_count 3", str(image)], check=True, capture_output=True)
        ms = timed(lambda: mountfs.image_digest(runner, image, t / "scratch"), args.runs)
        print(f"content check after a guest mount (rdump + fingerprint): median {ms:.0f} ms")


if __name__ == "__main__":
    main()
