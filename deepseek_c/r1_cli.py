"""The R1 commands of the command line (added to ``python -m deepseek_c`` by add_parsers):

    python -m deepseek_c r1 --ckpt demo_out/ --task addition --steps 200 --group 8
        GRPO with verifiable rewards (exact answer + 0.1 * format) from a checkpoint; held-out
        greedy accuracy before, during and after; writes the policy, r1_history.json,
        r1_curves.png and r1_summary.json to --out.
    python -m deepseek_c distill --teacher big_out/ [--student-config small.json] --task addition
        distil the teacher into a (smaller) student -- logit distillation (--mode logit) or SFT on
        the teacher's verified samples (--mode sft) -- and, with --baseline, train the same student
        on the raw task data for the same steps; held-out accuracy of all three.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np


def _load(path: str, what: str, device: str):
    import deepseek_c as dsc

    if not os.path.isdir(path):
        raise SystemExit(f"{what}: expected a checkpoint directory (config.json + model.safetensors), got {path!r}")
    try:
        return dsc.Model.from_pretrained(path, device=device)
    except (ValueError, OSError, dsc.Error) as e:
        raise SystemExit(f"{what}: could not load {path!r}: {e}")


def _save(model, out: str, tok, summary: dict, hist: Any, name: str) -> None:
    from deepseek_c import data as D

    os.makedirs(out, exist_ok=True)
    model.save(out)
    D.save_vocab(tok, os.path.join(out, "vocab.txt"))
    with open(os.path.join(out, f"{name}_history.json"), "w", encoding="utf-8") as fh:
        json.dump(hist, fh, default=float)
    with open(os.path.join(out, f"{name}_summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=float)


def cmd_r1(args: argparse.Namespace) -> int:
    """GRPO on a built-in verifiable task from a checkpoint."""
    import deepseek_c as dsc
    from deepseek_c import data as D, train as TR
    from deepseek_c.rl import plot_history

    tok = D.CharTokenizer()
    task = TR.make_task(args.task)
    model = _load(args.ckpt, "r1: --ckpt", args.device)
    held = {p for p, _ in D.heldout(task, args.eval)}
    reward = dsc.rewards.exact_answer(task) + args.format_weight * dsc.rewards.format(task)
    try:
        trainer = dsc.GRPO(model, reward, group_size=args.group, loss_type=args.loss_type, epsilon=args.epsilon,
                           epsilon_high=args.epsilon_high, beta=args.beta, lr=args.lr, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens or task.max_len, num_iterations=args.iterations,
                           drop_zero_std_groups=args.drop_zero_std, seed=args.seed)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"r1: {e}")
    acc0 = TR.evaluate(model, task, tok, n=args.eval)["accuracy"]
    print(f"{model}\nheld-out accuracy before GRPO: {100 * acc0:.1f}% ({args.eval} {task.name} problems, greedy)")
    rng = np.random.default_rng(args.seed)
    evals = [(0, acc0)]
    every = args.eval_every or max(1, args.steps // 4)
    t0 = time.perf_counter()
    for s in range(1, args.steps + 1):
        prompts = []
        while len(prompts) < args.prompts:
            p, _ = task.sample(rng)
            if p not in held:
                prompts.append(p)
        st = trainer.step(prompts)
        if s % every == 0 or s == args.steps:
            evals.append((s, TR.evaluate(model, task, tok, n=args.eval)["accuracy"]))
        if not args.quiet and (s % args.log_every == 0 or s == args.steps):
            h = trainer.history[-args.log_every:]
            print(f"step {s:5d}/{args.steps}  reward {np.mean([x['reward_mean'] for x in h]):.3f}  "
                  f"accuracy {np.mean([x['accuracy'] for x in h]):.3f}  kl {st['kl']:.4f}  "
                  f"length {st['completion_length']:.2f}  held-out {100 * evals[-1][1]:.1f}% (step {evals[-1][0]})",
                  flush=True)
    secs = time.perf_counter() - t0
    H = trainer.history
    roll_s, upd_s = sum(h["rollout_seconds"] for h in H), sum(h["update_seconds"] for h in H)
    summary = dict(task=task.name, steps=args.steps, group=args.group, prompts=args.prompts, loss_type=args.loss_type,
                   beta=args.beta, lr=args.lr, seed=args.seed, accuracy_before=acc0, accuracy_after=evals[-1][1],
                   evals=evals, seconds=secs, rollout_seconds=roll_s, update_seconds=upd_s,
                   rollout_tokens_per_s=sum(h["rollout_tokens"] for h in H) / roll_s if roll_s > 0 else 0.0)
    _save(model, args.out, tok, summary, H, "r1")
    try:
        plot_history(H, os.path.join(args.out, "r1_curves.png"), evals=evals,
                     title=f"GRPO on {task.name} ({args.loss_type}, group {args.group})")
        plots = ", r1_curves.png"
    except ImportError:
        plots = " (no matplotlib: no plot)"
    print(f"held-out accuracy {100 * acc0:.1f}% -> {100 * evals[-1][1]:.1f}% after {args.steps} GRPO steps "
          f"({secs:.1f} s: {100 * roll_s / max(secs, 1e-9):.0f}% rollouts, {100 * upd_s / max(secs, 1e-9):.0f}% "
          f"updates)")
    print(f"wrote {args.out}/: config.json, model.safetensors, optimizer.safetensors, vocab.txt, r1_history.json, "
          f"r1_summary.json{plots}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a teacher checkpoint into a student (and optionally the raw-data baseline)."""
    import deepseek_c as dsc
    from deepseek_c import data as D, distill as DI, train as TR

    tok = D.CharTokenizer()
    task = TR.make_task(args.task)
    teacher = _load(args.teacher, "distill: --teacher", args.device)
    if args.student_config:
        try:
            cfg = dsc.ModelConfig.from_json(args.student_config)
        except (ValueError, OSError) as e:
            raise SystemExit(f"distill: --student-config: {e}")
    else:
        cfg = DI.student_config(teacher.cfg)
    if cfg.vocab_size != teacher.cfg.vocab_size:
        raise SystemExit(f"distill: --student-config: expected the teacher's vocab_size {teacher.cfg.vocab_size} "
                         f"(one tokenizer), got {cfg.vocab_size}")
    held = {p for p, _ in D.heldout(task, args.eval)}
    acc_t = TR.evaluate(teacher, task, tok, n=args.eval)["accuracy"]
    student = dsc.Model(cfg, device=args.device, seed=args.seed)
    print(f"teacher {teacher.num_parameters():,} parameters, held-out accuracy {100 * acc_t:.1f}%; student "
          f"{student.num_parameters():,} parameters; {args.mode} distillation, {args.steps} steps")
    summary: dict = dict(task=task.name, mode=args.mode, steps=args.steps, teacher_accuracy=acc_t,
                         teacher_parameters=teacher.num_parameters(), student_parameters=student.num_parameters())
    t0 = time.perf_counter()
    if args.mode == "sft":
        samples, info = DI.sample_verified(teacher, task, args.samples, seed=args.seed, exclude=held)
        print(f"rejection sampling: {info['accepted']} verified samples from {info['sampled']} teacher completions "
              f"({info['seconds']:.1f} s)")
        if not samples:
            raise SystemExit("distill: the teacher produced no verified sample; train it more or use --mode logit")
        summary["sampling"] = info
        hist = DI.sft(student, samples, args.steps, batch_size=args.batch, seq_len=args.seq, lr=args.lr,
                      seed=args.seed, progress=not args.quiet)
    else:
        batches = D.batches(task, tok, args.batch, args.seq, seed=args.seed)
        hist = DI.logit_distill(student, teacher, batches, args.steps, k=args.k, temperature=args.temperature,
                                alpha=args.alpha, lr=args.lr, progress=not args.quiet)
    summary["seconds"] = time.perf_counter() - t0
    summary["student_accuracy"] = TR.evaluate(student, task, tok, n=args.eval)["accuracy"]
    line = f"student (distilled, {args.mode}): {100 * summary['student_accuracy']:.1f}%"
    if args.baseline:
        base = dsc.Model(cfg, device=args.device, seed=args.seed)
        TR.fit(base, D.batches(task, tok, args.batch, args.seq, seed=args.seed), args.steps, lr=args.lr,
               progress=False)
        summary["baseline_accuracy"] = TR.evaluate(base, task, tok, n=args.eval)["accuracy"]
        line += f"; same student on the raw task data: {100 * summary['baseline_accuracy']:.1f}%"
    print(f"held-out accuracy ({args.eval} {task.name} problems, greedy): teacher {100 * acc_t:.1f}%; {line}")
    _save(student, args.out, tok, summary, {k: v for k, v in hist.items() if k != "expert_load"}, "distill")
    print(f"wrote {args.out}/: config.json, model.safetensors, optimizer.safetensors, vocab.txt, "
          f"distill_history.json, distill_summary.json")
    return 0


def _pos(name: str):
    def conv(v: str) -> int:
        try:
            i = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an int >= 1, got {v!r}")
        if i < 1:
            raise argparse.ArgumentTypeError(f"{name}: expected an int >= 1, got {i}")
        return i
    return conv


def add_parsers(sub: Any) -> None:
    """The r1 and distill subcommands."""
    d = sub.add_parser("r1", help="GRPO with verifiable rewards on a built-in task, from a checkpoint")
    d.add_argument("--ckpt", required=True, help="the starting policy (a demo/train output directory)")
    d.add_argument("--task", default="addition", help="built-in task (addition, addition3, sorting, copy, reverse, "
                   "mixture)")
    d.add_argument("--steps", type=_pos("--steps"), default=200, help="GRPO steps (default 200)")
    d.add_argument("--group", type=int, default=8, help="completions per prompt (default 8, >= 2)")
    d.add_argument("--prompts", type=_pos("--prompts"), default=8, help="prompts per step (default 8)")
    d.add_argument("--loss-type", default="dapo", choices=("grpo", "dr_grpo", "dapo"))
    d.add_argument("--epsilon", type=float, default=0.2)
    d.add_argument("--epsilon-high", type=float, default=0.28)
    d.add_argument("--beta", type=float, default=0.001, help="KL weight to the frozen start (default 0.001)")
    d.add_argument("--lr", type=float, default=2e-4)
    d.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    d.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's longest answer")
    d.add_argument("--iterations", type=_pos("--iterations"), default=1, help="updates per rollout")
    d.add_argument("--drop-zero-std", action="store_true", help="drop groups with equal rewards (DAPO)")
    d.add_argument("--format-weight", type=float, default=0.1, help="weight of the format reward (default 0.1)")
    d.add_argument("--eval", type=_pos("--eval"), default=200, help="held-out problems (default 200)")
    d.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default steps / 4)")
    d.add_argument("--log-every", type=_pos("--log-every"), default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--out", default="r1_out")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_r1)
    d = sub.add_parser("distill", help="distil a teacher checkpoint into a smaller student (logit KL or SFT on "
                       "verified samples)")
    d.add_argument("--teacher", required=True, help="the teacher's checkpoint directory")
    d.add_argument("--student-config", default=None, help="the student's config.json (default: the teacher's "
                   "halved in width)")
    d.add_argument("--task", default="addition")
    d.add_argument("--mode", default="logit", choices=("logit", "sft"))
    d.add_argument("--steps", type=_pos("--steps"), default=600)
    d.add_argument("--batch", type=_pos("--batch"), default=32)
    d.add_argument("--seq", type=_pos("--seq"), default=48)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--k", type=_pos("--k"), default=8, help="teacher logits kept per position (logit mode)")
    d.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (logit mode)")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the KL vs the hard-label loss (logit mode)")
    d.add_argument("--samples", type=_pos("--samples"), default=4000, help="verified samples to collect (sft mode)")
    d.add_argument("--baseline", action="store_true", help="also train the student on the raw task data")
    d.add_argument("--eval", type=_pos("--eval"), default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--out", default="distill_out")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_distill)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
