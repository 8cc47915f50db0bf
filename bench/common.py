"""Helpers for the benchmarks: timing with a reference measured in the same run."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def vmm_bin() -> str:
    venv = REPO / ".venv" / "bin" / "vmm"
    return str(venv) if venv.exists() else "vmm"


def python_bin() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


def time_cmd(argv: Sequence[str], *, runs: int, env: dict[str, str] | None = None, warmup: int = 2) -> list[float]:
    """Wall times (seconds) of ``runs`` executions, after ``warmup`` untimed ones."""
    out = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        dt = time.perf_counter() - t0
        if i >= warmup:
            out.append(dt)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({os.cpu_count()} cores, {cpu}, Python {platform.python_version()})"
