"""Issue-3 image benchmarks: `vmm image import DIR` of a 300 MB rootfs tree, and the per-VM
rootfs copy (`cp --sparse=always --reflink=auto`, what `vmm start` does at a VM's first start)
of a 1 GiB image with 300 MB used — on the data dir's filesystem, and on an XFS loop file
(reflink) when mkfs.xfs is installed (the loop mount is this benchmark's scratch only).

    sudo .venv/bin/python bench/bench_images.py [--runs 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent)]

from common import machine, python_bin  # noqa: E402

from vmm.guest import ext4  # noqa: E402
from vmm.runner import Runner  # noqa: E402

MiB = 1024 * 1024


def make_tree(root: Path, total_mb: int = 300) -> None:
    """A rootfs-like tree: ~3,000 files of 4 KB-1 MB (incompressible), systemd + sshd present."""
    rnd = os.urandom(MiB)
    sizes = [4096, 16384, 65536, 262144, MiB]
    written, i = 0, 0
    while written < total_mb * MiB:
        d = root / "usr" / f"d{i % 60}"
        d.mkdir(parents=True, exist_ok=True)
        size = sizes[i % len(sizes)]
        (d / f"f{i}").write_bytes(rnd[:size])
        written += size
        i += 1
    for rel in ("lib/systemd/systemd", "usr/sbin/sshd"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("#!/bin/true\n")


def timed(fn, runs: int, cold: bool = False) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        subprocess.run(["sync"], check=True)
        if cold:  # the source image not in the page cache, as after a reboot
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def copy_bench(where: Path, runs: int, cold: bool = False) -> tuple[list[float], int]:
    runner = Runner()
    image = where / "img.ext4"
    tree = where / "tree"
    make_tree(tree, 300)
    with image.open("wb") as f:
        f.truncate(1024 * MiB)
    runner.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], timeout=600)
    shutil.rmtree(tree)
    used = image.stat().st_blocks * 512
    n = 0

    def once() -> None:
        nonlocal n
        n += 1
        ext4.copy_sparse(runner, image, where / f"vm{n}.ext4")

    samples = timed(once, runs, cold)
    for p in where.glob("vm*.ext4"):
        p.unlink()
    return samples, used


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} s (runs: {', '.join(f'{s:.3f}' for s in samples)})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="vmm-bench-images-", dir=args.data_dir) as tmp:
        base = Path(tmp)
        # 1. import of a 300 MB rootfs directory, through the CLI
        tree = base / "rootfs"
        make_tree(tree, 300)
        env = dict(os.environ, VMM_DATA_DIR=str(base / "data"), VMM_CONFIG=str(base / "config.json"))
        (base / "config.json").write_text("{}")
        argv = [python_bin(), "-m", "vmm", "image", "import", str(tree), "--name", "b", "-f"]
        samples = timed(lambda: subprocess.run(argv, env=env, check=True, capture_output=True), args.runs)
        print(f"image import DIR (300 MB, {sum(1 for _ in tree.rglob('*'))} entries): {fmt(samples)}")
        shutil.rmtree(tree)
        shutil.rmtree(base / "data")

        # 2. per-VM copy on the data dir's filesystem
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(base)], capture_output=True,
                            text=True).stdout.strip()
        for cold in (False, True):
            d = base / "copy"
            d.mkdir()
            samples, used = copy_bench(d, args.runs, cold)
            cache = "cold page cache" if cold else "warm page cache"
            print(f"per-VM copy 1 GiB image, {used // MiB} MB used, on {fs} ({cache}): {fmt(samples)}")
            shutil.rmtree(d)

        # 3. the same on XFS (reflink=1) in a loop file, if mkfs.xfs is there
        if shutil.which("mkfs.xfs"):
            loop_file, mnt = base / "xfs.img", base / "xfs"
            with loop_file.open("wb") as f:
                f.truncate(4096 * MiB)
            subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(loop_file)], check=True)
            mnt.mkdir()
            subprocess.run(["mount", "-o", "loop", str(loop_file), str(mnt)], check=True)
            try:
                samples, used = copy_bench(mnt, args.runs)
                print(f"per-VM copy 1 GiB image, {used // MiB} MB used, on xfs (reflink): {fmt(samples)}")
            finally:
                with contextlib.suppress(subprocess.CalledProcessError):
                    subprocess.run(["umount", str(mnt)], check=True)
        else:
            print("xfs: mkfs.xfs not installed (apt-get install xfsprogs); reflink case skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
