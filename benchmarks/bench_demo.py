"""The demo's outcome over seeds, thread counts and BLAS kernels: does
`python -m deepseek_c demo` land where the README says, on any x86-64 CPU?

Each run is the README's demo command (`python -m deepseek_c demo --seed S --quiet`) in its own
process, with OMP_NUM_THREADS set and, optionally, OPENBLAS_CORETYPE forcing the OpenBLAS
kernel another CPU would get (Haswell = AVX2, SkylakeX = AVX-512, Prescott = SSE3; the BLAS
kernels differ in their summation order, so the runs differ in their rounding the way runs
on different CPUs do). Recorded per run: exact-match accuracy on the 200 held-out problems,
final loss, training seconds and wall seconds, and the BLAS kernel threadpoolctl reports.

    python benchmarks/bench_demo.py                                  # seeds 0-4 x threads 1,2, native kernel
    python benchmarks/bench_demo.py --cores Haswell,SkylakeX --threads 1 --seeds 0,1,2,3,4
    python benchmarks/bench_demo.py --write                          # also results/demo_cpu_<date>.json

Training is bitwise the same for any thread count (tests/test_train_determinism.py), so the
thread axis checks that claim end to end; the kernel and seed axes are where outcomes spread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from _bench import HERE, git_commit

ROOT = os.path.dirname(HERE)

_KERNEL = ("import json, deepseek_c, threadpoolctl; "
           "print(json.dumps([i.get('architecture') for i in threadpoolctl.threadpool_info() "
           "if 'deepseek_c' in i.get('filepath', '') and i.get('user_api') == 'blas']))")


def blas_kernel(env: dict) -> str:
    """The OpenBLAS kernel deepseek_c's own OpenBLAS picks under `env` (threadpoolctl)."""
    try:
        r = subprocess.run([sys.executable, "-c", _KERNEL], env=env, capture_output=True, text=True,
                           timeout=60, check=True)
        names = json.loads(r.stdout.strip().splitlines()[-1])
        return names[0] if names else "unknown"
    except Exception as e:  # noqa: BLE001 -- threadpoolctl missing or the probe failed: say so
        return f"unknown ({type(e).__name__})"


def one_run(seed: int, threads: int, core: str | None, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OPENBLAS_CORETYPE", None)
    if core:
        env["OPENBLAS_CORETYPE"] = core
    kernel = blas_kernel(env)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "deepseek_c", "demo", "--seed", str(seed), "--quiet",
                            "--out", out, *extra], env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench_demo: seed {seed}, {threads} threads, {core or 'native'}: the demo "
                             f"failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        s = json.load(open(os.path.join(out, "summary.json")))
    return dict(seed=seed, threads=threads, coretype=core or "native", blas_kernel=kernel,
                accuracy=s["accuracy"], final_loss=s["final_loss"],
                train_seconds=s.get("train_seconds"), wall_seconds=round(wall, 1))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", default="1,2", help="OMP_NUM_THREADS values")
    ap.add_argument("--cores", default="", help="OPENBLAS_CORETYPE values (comma list; empty: the CPU's own)")
    ap.add_argument("--write", action="store_true", help="write results/demo_cpu_<date>.json (runs already "
                    "there are kept: several invocations, e.g. one per kernel, build one file)")
    ap.add_argument("--out", default=None, help="with --write: another result file")
    ap.add_argument("demo_args", nargs="*", help="extra demo arguments (after --)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s]
    threads = [int(t) for t in a.threads.split(",") if t]
    cores = [c for c in a.cores.split(",") if c] or [None]
    runs: list[dict] = []
    for core in cores:
        for t in threads:
            for seed in seeds:
                r = one_run(seed, t, core, a.demo_args)
                runs.append(r)
                print(f"seed {seed}  threads {t}  kernel {r['blas_kernel']:<10} accuracy {r['accuracy']:.3f}  "
                      f"loss {r['final_loss']:.4f}  train {r['train_seconds'] or 0:.0f} s  wall {r['wall_seconds']:.0f} s",
                      flush=True)
                if a.write:  # after every run: a long grid stopped early keeps what it measured
                    path = write(a, [r])
    acc = [r["accuracy"] for r in runs]
    wall = [r["wall_seconds"] for r in runs]
    print(f"\n{len(runs)} runs: accuracy min {min(acc):.3f} median {sorted(acc)[len(acc) // 2]:.3f} "
          f"max {max(acc):.3f}; wall {min(wall):.0f}-{max(wall):.0f} s")
    if a.write:
        print(f"wrote {path}")


def write(a: argparse.Namespace, new_runs: list[dict]) -> str:
    """Add runs to the result file (atomically): runs already there are kept, so several
    invocations (one per kernel, say) build one file."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    date = datetime.date.today().isoformat()
    path = a.out or os.path.join(HERE, "results", f"demo_cpu_{date}.json")
    old = json.load(open(path)) if os.path.exists(path) else {}
    runs = old.get("runs", []) + new_runs
    acc = [r["accuracy"] for r in runs]
    wall = [r["wall_seconds"] for r in runs]
    res = dict(benchmark="demo", date=date, commit=git_commit(),
               machine=dict(platform=platform.platform(), cpu=cpu_model(), cpus=os.cpu_count(), loadavg_at_end=load),
               command="python -m deepseek_c demo --seed S --quiet " + " ".join(a.demo_args),
               runs=runs, accuracy_min=min(acc), accuracy_max=max(acc),
               wall_seconds_min=min(wall), wall_seconds_max=max(wall))
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


if __name__ == "__main__":
    main()
