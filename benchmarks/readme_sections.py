"""The README's measured sections, rendered from the committed benchmark results, so that the
numbers the README quotes are the ones the benchmarks recorded:

- ``<!-- demo:begin -->`` .. ``<!-- demo:end -->``: the demo's outcome over seeds, thread
  counts and BLAS kernels (the newest results/demo_cpu_<date>.json, from bench_demo.py);
- ``<!-- busy:begin -->`` .. ``<!-- busy:end -->``: default threads vs one thread with busy
  competitors (the newest results/busy_cpu_<date>.json, from bench_busy.py);
- ``<!-- dist:begin -->`` .. ``<!-- dist:end -->``: expert- and data-parallel training on 1-4
  MPI processes (the newest results/dist_cpu_<date>.json, from bench_dist.py).

    python benchmarks/readme_sections.py            # print the sections
    python benchmarks/readme_sections.py --write    # rewrite README.md between the markers
    python benchmarks/readme_sections.py --check    # exit 1 where README.md differs

tests/test_readme.py checks that README.md equals the rendering.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")


def newest(prefix: str) -> str:
    """The newest results/<prefix>_<date>.json (ISO dates sort as strings)."""
    paths = sorted(glob.glob(os.path.join(HERE, "results", f"{prefix}_*.json")))
    if not paths:
        raise FileNotFoundError(f"no benchmarks/results/{prefix}_*.json: run the benchmark with --write")
    return paths[-1]


def _range(vals, fmt: str) -> str:
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _wall(rs: list) -> str:
    """Wall-time range of the runs whose timing is valid (a run paused by hand is not)."""
    t = [r["wall_seconds"] for r in rs if r.get("timing_valid", True)]
    return _range(t, "{:.0f}") if t else "-"


def render_demo(res: dict, name: str) -> str:
    runs = res["runs"]
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["blas_kernel"], r["threads"]), []).append(r)
    out = ["| OpenBLAS kernel | threads | runs (seeds) | exact match | final loss | wall time, s |",
           "|---|---|---|---|---|---|"]
    for (kernel, threads), rs in sorted(groups.items()):
        seeds = ",".join(str(s) for s in sorted({r["seed"] for r in rs}))
        out.append(f"| {kernel} | {threads} | {len(rs)} ({seeds}) | "
                   f"{_range([100 * r['accuracy'] for r in rs], '{:.1f}%')} | "
                   f"{_range([r['final_loss'] for r in rs], '{:.4f}')} | "
                   f"{_wall(rs)} |")
    acc = [100 * r["accuracy"] for r in runs]
    m = res["machine"]
    load = m.get("loadavg_at_end")
    load_s = f"load {load[0]:.1f} at the end" if load else "load not recorded"
    out.append("")
    out.append(f"All {len(runs)} runs: {_range(acc, '{:.1f}%')} exact match on 200 problems (chance is about 1%). "
               f"Wall time is the whole command (training, evaluation, generation, plots) on {m.get('cpus')} vCPUs "
               f"({m.get('cpu')}) shared with other work ({load_s}; {res.get('note', 'an idle machine is faster')}). "
               f"`{name}`, commit {res['commit']}, {res['date']}.")
    return "\n".join(out)


def render_busy(res: dict, name: str) -> str:
    out = ["| busy competitors | one thread, tokens/s | default threads, tokens/s | default / one (min-max) |",
           "|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['busy_processes']} | {r['one_thread_tokens_per_s']:,.0f} | {r['default_tokens_per_s']:,.0f} | "
                   f"{r['ratio_default_over_one_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
    load = res.get("load_at_start")
    out.append("")
    out.append(f"The demo's training step (batch 32 x 48), {res['steps']} steps per round, {res['reps']} interleaved "
               f"rounds; {res['cores']} cores, default {res['default_threads']} threads"
               + (f", load average {load:.1f} from other work before it started" if load is not None else "")
               + f". `{name}`, commit {res['commit']}, {res['date'][:10]}.")
    return "\n".join(out)


def render_dist(res: dict, name: str) -> str:
    out = ["| ranks | parallel | MoE micro-batches / gradient sum | tokens/s | efficiency | wait share | "
           "MB sent per step (rank 0) | bytes = analytic |",
           "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if r["mode"] == "ep":
            how = f"EP {r['expert_parallel']}", f"{r['ep_micro_batches']} micro-batch{'es' if r['ep_micro_batches'] > 1 else ''}"
        elif r["mode"] == "dp":
            how = f"DP {r['data_parallel']}", "overlapping the backward" if r["overlap"] else "after the backward"
        else:
            how = "one process", "-"
        c = r["comm"]
        out.append(f"| {r['world']} | {how[0]} | {how[1]} | {r['tokens_per_s']:,.0f} | {r['efficiency']:.2f} | "
                   f"{c['wait_share_mean']:.2f} | {c['bytes_sent_per_step_rank0'] / 1e6:,.1f} | "
                   f"{'yes' if r['bytes_check']['exact'] else 'NO'} |")
    cfg = res["config"]
    l0, l1 = res.get("load_at_start", {}).get("load1"), res.get("load_at_end", {}).get("load1")
    out.append("")
    out.append(f"The {cfg['name']} config ({cfg['num_hidden_layers']} layers + {cfg['mtp_depths']} MTP, hidden "
               f"{cfg['hidden_size']}, {cfg['n_routed_experts']} experts, top-{cfg['num_experts_per_tok']}), "
               f"{res['batch_per_rank']} x {res['seq']} tokens per rank per step (weak scaling), "
               f"{res['timed_steps']} timed steps after {res['warmup_steps']} warm-up, one thread per rank, "
               f"`mpirun --oversubscribe` on {res['cpu_count']} cores (load {l0} at the start, {l1} at the end; "
               f"{res.get('note', 'the ranks are the load')}). Efficiency = tokens/s / (ranks x one process's); with more ranks than cores "
               f"it measures the parallel step's overhead, not a speedup. Wait share: the time a rank's computation "
               f"was blocked on communication. `{name}`, commit {res['commit']}, {res['date']}.")
    return "\n".join(out)


SECTIONS = {"demo": ("demo_cpu", render_demo), "busy": ("busy_cpu", render_busy), "dist": ("dist_cpu", render_dist)}


def render(key: str) -> str:
    prefix, fn = SECTIONS[key]
    path = newest(prefix)
    with open(path, encoding="utf-8") as fh:
        return fn(json.load(fh), "benchmarks/results/" + os.path.basename(path))


def section(readme: str, key: str) -> str:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise ValueError(f"README.md: expected one {begin} line and one {end} line")
    a, b = readme.index(begin) + len(begin), readme.index(end)
    if b < a:
        raise ValueError(f"README.md: {end} comes before {begin}")
    return readme[a:b].strip()


def replace(readme: str, key: str, body: str) -> str:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    a, b = readme.index(begin) + len(begin), readme.index(end)
    return readme[:a] + "\n" + body + "\n" + readme[b:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    a = ap.parse_args()
    with open(README, encoding="utf-8") as fh:
        readme = fh.read()
    bad = 0
    for key in SECTIONS:
        body = render(key)
        if a.write:
            readme = replace(readme, key, body)
        elif a.check:
            if section(readme, key) != body:
                print(f"README.md: the {key} section differs from the newest results (run --write)")
                bad = 1
        else:
            print(f"<!-- {key} -->\n{body}\n")
    if a.write:
        with open(README + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(readme)
        os.replace(README + ".tmp", README)
    return bad


if __name__ == "__main__":
    sys.exit(main())
