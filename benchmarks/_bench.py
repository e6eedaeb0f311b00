"""Shared benchmark helpers: timing (median of batches after a warm-up, with an optional
device sync) and the commit id recorded with every result file."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def timeit(fn: Callable[[], object], sync: Optional[Callable[[], None]] = None, min_time: float = 0.3,
           reps: int = 5, max_batch: int = 1 << 16) -> float:
    """Median seconds per call over `reps` batches; the batch size grows until one batch
    takes about min_time / reps. `sync` (e.g. torch.cuda.synchronize) ends each batch."""
    sync = sync or (lambda: None)
    fn()
    sync()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        if time.perf_counter() - t0 > min_time / reps or n >= max_batch:
            break
        n *= 2
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


def git_commit() -> str:
    """Short commit id of the repository the benchmarks live in ('unknown' outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"
