"""GRPO step throughput (dsc.GRPO on the C generation and policy step): per step, the rollout
(sampled generate of prompts x group completions) and the update (reference log-probabilities
when beta > 0, then dsc_model_policy_step), their tokens/s and their share of the step time.

    python benchmarks/bench_rl.py                  # demo config, 16 prompts x 8, 16 new tokens, 10 steps
    python benchmarks/bench_rl.py --quick          # smoke test: 2 steps, 4 prompts x 4
    python benchmarks/bench_rl.py --device cuda --save

rollout tokens/s = new (sampled) tokens / rollout seconds; update tokens/s = tokens of the
update batch (prompt + completion + padding, B x T) / update seconds; both the median over the
timed steps (after one warm-up step). The model is untrained (seed 0): completions mostly run to
--max-new-tokens, which is what the numbers are per. The reward (distinct characters of the
completion) only has to vary within groups so that every update has a gradient. The 1-minute
load average is recorded: figures from a busy machine are not comparable.
With --save, writes benchmarks/results/rl_<device>_<date>.json (machine, commit, numbers);
without, prints only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _bench import git_commit  # noqa: E402


def distinct_chars(prompts, completions):
    return [float(len(set(c))) for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10, --quick 2)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (default 16, --quick 4)")
    ap.add_argument("--group", type=int, default=None, help="completions per prompt (default 8, --quick 4)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.001, help="KL weight (> 0: a reference forward per step)")
    ap.add_argument("--speculative", default=None, choices=("mtp",), help="MTP speculative sampling in rollouts")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 4 prompts x 4")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/rl_<device>_<date>.json")
    ap.add_argument("--out", default=None, help="JSON path (implies --save)")
    a = ap.parse_args()
    steps = a.steps or (2 if a.quick else 10)
    n_prompts = a.prompts or (4 if a.quick else 16)
    group = a.group or (4 if a.quick else 8)

    import deepseek_c as dsc
    from deepseek_c import data as D, train as TR

    tok = D.CharTokenizer()
    task = D.Addition(digits=3)
    model = dsc.Model(TR.demo_config(tok.vocab_size), device=a.device, seed=0)
    trainer = dsc.GRPO(model, distinct_chars, group_size=group, beta=a.beta, lr=1e-4, max_new_tokens=a.max_new_tokens,
                       speculative=a.speculative, seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for s in range(steps + 1):  # step 0 warms up
        st = trainer.step([task.sample(rng)[0] for _ in range(n_prompts)])
        if s > 0:
            rows.append(st)
    med = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
    roll_s, upd_s = med("rollout_seconds"), med("update_seconds")
    res = dict(
        bench="rl", date=_dt.date.today().isoformat(), commit=git_commit(), device=a.device,
        machine=platform.machine(), processor=platform.processor(), cpus=os.cpu_count(),
        threads=dsc.info()["max_threads"], load_avg_1min=os.getloadavg()[0], config="demo",
        params=model.num_parameters(), steps=steps, prompts=n_prompts, group=group, sequences=n_prompts * group,
        max_new_tokens=a.max_new_tokens, beta=a.beta, speculative=a.speculative,
        rollout_seconds=roll_s, update_seconds=upd_s, step_seconds=med("seconds"),
        rollout_tokens=med("rollout_tokens"), rollout_tokens_per_s=med("rollout_tokens_per_s"),
        update_tokens_per_s=med("update_tokens_per_s"), completion_length=med("completion_length"),
        rollout_share=roll_s / (roll_s + upd_s), update_share=upd_s / (roll_s + upd_s))
    print(f"GRPO step, demo config ({res['params']:,} parameters), {a.device}, {n_prompts} prompts x {group}, "
          f"<= {a.max_new_tokens} new tokens, beta {a.beta}; load {res['load_avg_1min']:.2f} on {res['cpus']} CPUs")
    print(f"  rollout: {roll_s * 1e3:8.1f} ms  {res['rollout_tokens_per_s']:9.0f} new tokens/s  "
          f"({100 * res['rollout_share']:.0f}% of the step)")
    print(f"  update : {upd_s * 1e3:8.1f} ms  {res['update_tokens_per_s']:9.0f} tokens/s      "
          f"({100 * res['update_share']:.0f}% of the step)")
    print(f"  step   : {res['step_seconds'] * 1e3:8.1f} ms (median of {steps}; rewards and batching included)")
    if a.save or a.out:
        path = a.out or os.path.join(HERE, "results", f"rl_{a.device.split(':')[0]}_{res['date']}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
