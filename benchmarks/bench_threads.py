"""Two models in two threads against one after the other (each dsc.Model has its own C
context, so they run in parallel), for the demo config:

  * generate: batch 8, 8 random prompt tokens, --new new tokens (eos -1), greedy;
  * train: --steps train_step calls on a [8, 32] batch.

Per workload and per thread count of each model (num_threads=1, and the OpenMP default):
"one" the first model alone, "sequential" both models one after the other, "threads" both
at once in two threads; throughput in tokens/s (generate) or steps/s (train), summed over
the models, and speedup = sequential time / threads time (2 cores and one thread per model
give at most 2x). Median over --reps interleaved rounds (one, sequential, threads in turn,
so load on a shared machine hits every mode alike). "cpu_share" calibrates the machine:
the CPU seconds two busy-looping processes get per wall second together, against one alone
(about 2 with two free cores; about 1 when the machine gives this process one core's worth,
and then no parallel speedup of anything can show).

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time

import numpy as np

import deepseek_c as dsc
from deepseek_c.train import demo_config


def _burn(seconds: float) -> float:
    t0, w0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < seconds:
        pass
    return time.process_time() - t0


def cpu_share(seconds: float = 1.0) -> tuple[float, float]:
    """(CPU s per wall s of one busy process, of two together)."""
    with mp.Pool(2) as p:
        one = p.map(_burn, [seconds])[0] / seconds
        two = sum(p.map(_burn, [seconds, seconds])) / seconds
    return one, two


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt (generate)")
    ap.add_argument("--steps", type=int, default=4, help="train steps per model and round")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, few tokens and steps")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.new, a.steps = 1, 8, 1
    cfg = demo_config(48)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (8, 32)).astype(np.int32)
    prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, 8)] for _ in range(8)]

    def gen(m: dsc.Model) -> None:
        m.generate(prompts, max_new_tokens=a.new, eos_token_id=-1)

    def train(m: dsc.Model) -> None:
        for _ in range(a.steps):
            m.train_step(tok, tok, lr=1e-3)

    one_s, two_s = cpu_share()
    print(f"deepseek_c bench_threads: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"cpu_share one {one_s:.2f} / two {two_s:.2f}; {dsc.Model(cfg)}")
    for name, work, units, unit in (("generate", gen, 8 * a.new, "tokens/s"), ("train", train, a.steps, "steps/s")):
        for nt in (1, None):
            ms = [dsc.Model(cfg, seed=i, num_threads=nt) for i in range(2)]
            for m in ms:
                work(m)  # warm-up: workspaces, caches

            def threads() -> None:
                th = [threading.Thread(target=work, args=(m,)) for m in ms]
                for t in th:
                    t.start()
                for t in th:
                    t.join()

            modes = {"one": lambda: work(ms[0]), "sequential": lambda: [work(m) for m in ms], "threads": threads}
            times: dict[str, list] = {k: [] for k in modes}
            for _ in range(a.reps):
                for k, f in modes.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: float(np.median(v)) for k, v in times.items()}
            print(f"{name:9s} num_threads={str(nt):4s}  one {units / med['one']:9.1f} {unit}  "
                  f"sequential {2 * units / med['sequential']:9.1f}  threads {2 * units / med['threads']:9.1f}  "
                  f"speedup {med['sequential'] / med['threads']:.2f}x  (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
