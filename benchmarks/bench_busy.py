"""The demo's training step with the default thread count against one thread, on an idle
machine and with other processes competing for the cores.

For k = 0, 1, ... --max-busy busy-looping competitor processes (each burns one core's
worth of CPU), the demo model takes --steps train steps on the demo's batch (32 x 48 tokens
of 2-digit addition) with ``num_threads=1`` and with the default (OMP_NUM_THREADS, else all
cores), interleaved round by round so that drifting load hits both alike. Reported per k:
tokens/s of each (total tokens / total wall time of the round, median over --reps rounds)
and the ratio default / one thread (> 1: the default is faster). The target: the default is
never slower than one thread by more than 10% (ratio >= 0.9) for any k.

    python benchmarks/bench_busy.py                 # k = 0, 1, 2; writes results/busy_cpu_<date>.json
    python benchmarks/bench_busy.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import time

import numpy as np

import deepseek_c as dsc
from deepseek_c import data as D
from deepseek_c.train import demo_config

from _bench import HERE, git_commit


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="train steps per round and thread setting")
    ap.add_argument("--reps", type=int, default=5, help="rounds per k")
    ap.add_argument("--max-busy", type=int, default=2, dest="max_busy", help="largest number of competitors")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 1 round, k = 0 and 1")
    ap.add_argument("--out", default=None, help="result JSON (default results/busy_cpu_<date>.json; '-' for none)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.reps, a.max_busy = 2, 1, 1
    tok = D.CharTokenizer()
    cfg = demo_config(tok.vocab_size)
    stream = D.batches(D.Addition(digits=2), tok, 32, 48, seed=0)
    batch = [next(stream) for _ in range(a.steps)]
    models = {"one": dsc.Model(cfg, seed=0, num_threads=1), "default": dsc.Model(cfg, seed=0)}
    default_threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)  # what OpenMP picks
    for m in models.values():
        m.train_step(batch[0].tokens, batch[0].targets, lr=1e-3)  # warm-up: workspaces

    def run(m: dsc.Model) -> float:
        t0, n = time.perf_counter(), 0
        for b in batch:
            m.train_step(b.tokens, b.targets, lr=1e-3)
            n += int(b.tokens.size)
        return n / (time.perf_counter() - t0)

    print(f"deepseek_c bench_busy: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"default threads {default_threads}, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for k in range(a.max_busy + 1):
        stop = mp.Event()
        procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(k)]
        for p in procs:
            p.start()
        time.sleep(0.5 if k else 0.0)
        tps: dict[str, list] = {"one": [], "default": []}
        try:
            for r in range(a.reps):
                order = ("one", "default") if r % 2 == 0 else ("default", "one")
                for name in order:
                    tps[name].append(run(models[name]))
        finally:
            stop.set()
            for p in procs:
                p.join(5)
        med = {n: float(np.median(v)) for n, v in tps.items()}
        ratios = [d / o for d, o in zip(tps["default"], tps["one"])]
        row = {"busy_processes": k, "one_thread_tokens_per_s": med["one"], "default_tokens_per_s": med["default"],
               "ratio_default_over_one_median": float(np.median(ratios)),
               "ratio_min": float(min(ratios)), "ratio_max": float(max(ratios)),
               "tokens_per_s": tps}
        rows.append(row)
        print(f"busy {k}: one thread {med['one']:8.0f} tokens/s   default {med['default']:8.0f} tokens/s   "
              f"default/one {row['ratio_default_over_one_median']:.2f} (min {row['ratio_min']:.2f}, "
              f"max {row['ratio_max']:.2f})", flush=True)
    if a.out != "-" and not a.quick:
        path = a.out or os.path.join(HERE, "results", f"busy_cpu_{datetime.date.today().isoformat()}.json")
        meta = {"bench": "bench_busy", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "commit": git_commit(), "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                "default_threads": default_threads, "steps": a.steps, "reps": a.reps,
                "command": "python benchmarks/bench_busy.py", "rows": rows}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
