"""Distillation of a teacher into a (smaller) student that shares its tokenizer, in the two
forms DeepSeek-R1 users meet:

(a) SFT on the teacher's verified samples -- what R1 did for its distilled models: the
    teacher samples completions of task prompts, a verifier keeps the right ones
    (rejection sampling), and the student trains on them with the ordinary next-token loss
    on the completion tokens (Model.train_step);
(b) logit distillation: at every answer position the student matches the teacher's top-k
    distribution (KL at a temperature, dsc_topk_kl) mixed with the hard-label loss
    (Model.distill_step, dsc_model_distill_step in C).

    samples, info = dsc.distill.sample_verified(teacher, task, n=4000)          # (a)
    hist = dsc.distill.sft(student, samples, steps=600, batch_size=32, seq_len=48)
    hist = dsc.distill.logit_distill(student, teacher, dsc.data.batches(task, tok, 32, 48),
                                     steps=600, k=8, temperature=2.0, alpha=0.5)  # (b)

Teacher and student may have different configs (sizes, layers, experts); the vocabulary
must be the same.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from . import data as D
from .model import Model, lr_schedule
from .rl_ops import logits_topk


def _host(x: Any) -> np.ndarray:
    from . import to_numpy  # deepseek_c/__init__ defines it after importing this module
    return to_numpy(x)


__all__ = ["student_config", "sample_verified", "sample_batches", "sft", "teacher_topk", "logit_distill"]


def student_config(teacher_cfg: Any, **overrides: Any) -> Any:
    """A smaller student for a teacher config: half the width (hidden, FFN, expert, ranks and
    head dims), the same layers, experts and vocabulary; `overrides` replace any key."""
    d = teacher_cfg.to_dict()
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "q_lora_rank", "kv_lora_rank",
                "qk_nope_head_dim", "v_head_dim"):
        if d.get(key):
            d[key] = max(4, int(d[key]) // 2)
    d.update(overrides)
    return type(teacher_cfg).from_dict(d)


def _check_pair(teacher: Model, student: Optional[Model], fn: str) -> None:
    if not isinstance(teacher, Model):
        raise TypeError(f"distill.{fn}: teacher: expected a deepseek_c.Model, got {type(teacher).__name__}")
    if student is not None:
        if not isinstance(student, Model):
            raise TypeError(f"distill.{fn}: student: expected a deepseek_c.Model, got {type(student).__name__}")
        if student.cfg.vocab_size != teacher.cfg.vocab_size:
            raise ValueError(f"distill.{fn}: student: expected the teacher's vocabulary (vocab_size "
                             f"{teacher.cfg.vocab_size}: teacher and student share the tokenizer), got "
                             f"{student.cfg.vocab_size}")


def _pos_int(fn: str, name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
        raise ValueError(f"distill.{fn}: {name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def sample_verified(teacher: Model, task: D.Task, n: int, *, tokenizer: Any = None, samples_per_prompt: int = 4,
                    temperature: float = 1.0, top_p: Optional[float] = None, max_new_tokens: Optional[int] = None,
                    seed: int = 0, batch_prompts: int = 64, max_rounds: int = 100,
                    exclude: Optional[set] = None) -> tuple[list[tuple[str, str]], dict]:
    """Rejection sampling: up to n (prompt, completion) pairs that task.verify accepts, from
    the teacher's sampled completions (samples_per_prompt per prompt, at most one kept per
    prompt). Prompts in `exclude` (e.g. the held-out set) are never used. Returns (samples,
    info) with info = dict(prompts, sampled, accepted, accept_rate, seconds)."""
    fn = "sample_verified"
    _check_pair(teacher, None, fn)
    if not isinstance(task, D.Task):
        raise TypeError(f"distill.{fn}: task: expected a deepseek_c.data.Task, got {type(task).__name__}")
    n = _pos_int(fn, "n", n)
    spp = _pos_int(fn, "samples_per_prompt", samples_per_prompt)
    tok = tokenizer if tokenizer is not None else D.CharTokenizer()
    mnt = max_new_tokens or task.max_len + 2
    rng = np.random.default_rng(seed)
    excl = set(exclude or ())
    out: list[tuple[str, str]] = []
    used: set = set()
    sampled = tried = 0
    t0 = time.perf_counter()
    for rnd in range(max_rounds):
        if len(out) >= n:
            break
        prompts = []
        while len(prompts) < batch_prompts:
            p, _ = task.sample(rng)
            if p in excl or p in used:
                tried += 1
                if tried > 100 * n:
                    break
                continue
            used.add(p)
            prompts.append(p)
        if not prompts:
            break
        ids = [[tok.bos_id] + tok.encode(p) for p in prompts for _ in range(spp)]
        g = teacher.generate(ids, max_new_tokens=mnt, temperature=temperature, top_p=top_p, seed=seed * 1000 + rnd,
                             eos_token_id=tok.eos_id)
        sampled += len(ids)
        for i, p in enumerate(prompts):
            for j in range(spp):
                c = g.tokens[i * spp + j]
                text = tok.decode(c)
                if c and c[-1] == tok.eos_id and task.verify(p, text):
                    out.append((p, text))
                    break
            if len(out) >= n:
                break
    secs = time.perf_counter() - t0
    return out, dict(prompts=len(used), sampled=sampled, accepted=len(out),
                     accept_rate=len(out) / max(1, len(used)), seconds=secs)


def sample_batches(samples: Sequence[tuple[str, str]], tokenizer: Any = None, batch_size: int = 32, seq_len: int = 48,
                   seed: int = 0) -> Iterator[D.Batch]:
    """Endless packed training batches (as dsc.data.batches) of (prompt, completion) pairs
    drawn uniformly with replacement: <bos> prompt completion <eos>, loss on the completion."""
    if not samples:
        raise ValueError("distill.sample_batches: samples: expected at least one (prompt, completion) pair, got none")
    tok = tokenizer if tokenizer is not None else D.CharTokenizer()

    class _Pool(D.Task):
        name = "samples"

        def sample(self, rng: np.random.Generator) -> tuple[str, str]:
            return samples[int(rng.integers(len(samples)))]

        def answer(self, prompt: str) -> str:
            # the first completion recorded for this prompt (the pool has no verifier of its own)
            for p, a in samples:
                if p == prompt:
                    return a
            raise KeyError(f"distill.sample_batches: prompt {prompt!r} is not one of the {len(samples)} samples")

        @property
        def max_len(self) -> int:
            return max(len(p) + len(a) for p, a in samples)

    return D.batches(_Pool(), tok, batch_size, seq_len, seed=seed)


def sft(student: Model, samples: Sequence[tuple[str, str]], steps: int, *, tokenizer: Any = None,
        batch_size: int = 32, seq_len: int = 48, lr: float = 3e-3, seed: int = 0, progress: bool = False,
        **step_kw: Any) -> dict:
    """(a): train the student on the verified samples for `steps` steps (train.fit: warmup +
    cosine learning rate, Model.train_step). Returns train.fit's history."""
    from .train import fit
    return fit(student, sample_batches(samples, tokenizer, batch_size, seq_len, seed), steps, lr=lr,
               progress=progress, **step_kw)


def teacher_topk(teacher: Model, tokens: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k logits at every position of tokens [B, T]: (indices [B, T, k]
    int32, logits [B, T, k] float32), by its forward and dsc.logits_topk. NumPy arrays for a
    CPU teacher; a GPU teacher's stay on its device (no round trip through the host)."""
    logits = teacher.forward(tokens)
    values, idx = logits_topk(logits, k)
    if teacher.device == "cpu":
        return np.asarray(idx), np.asarray(values)
    return idx, values


def logit_distill(student: Model, teacher: Model, batches: Iterator, steps: int, *, k: int = 8,
                  temperature: float = 1.0, alpha: float = 0.5, lr: float = 3e-3, warmup: Optional[int] = None,
                  min_lr: Optional[float] = None, progress: bool = False, log_every: int = 50,
                  **step_kw: Any) -> dict:
    """(b): `steps` distillation steps on batches of dsc.data.Batch (tokens, targets): the
    teacher's top-k at every position (teacher_topk), then Model.distill_step (loss = alpha
    tau^2 KL + (1 - alpha) CE on the target positions) with warmup + cosine LR. Returns the
    history: per step loss, kl, ce, grad_norm, lr; seconds, tokens, tokens_per_s."""
    fn = "logit_distill"
    _check_pair(teacher, student, fn)
    steps = _pos_int(fn, "steps", steps)
    k = _pos_int(fn, "k", k)
    if k > teacher.cfg.vocab_size:
        raise ValueError(f"distill.{fn}: k: expected at most vocab_size = {teacher.cfg.vocab_size}, got {k}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"distill.{fn}: temperature: expected a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"distill.{fn}: alpha: expected a number in [0, 1], got {alpha!r}")
    warmup = max(1, steps // 20) if warmup is None else warmup
    hist: dict = {key: [] for key in ("loss", "kl", "ce", "grad_norm", "lr")}
    start = student.step
    t0 = time.perf_counter()
    tokens = 0
    for s in range(steps):
        b = next(batches)
        idx, val = teacher_topk(teacher, b.tokens, k)
        if teacher.device != student.device:  # e.g. a GPU teacher for a CPU student: through the host
            idx, val = _host(idx), _host(val)
        st = student.distill_step(b.tokens, b.targets, idx, val, temperature=float(temperature), alpha=float(alpha),
                                  lr=lambda i: lr_schedule(i - start, lr, warmup, steps, min_lr), **step_kw)
        for key in hist:
            hist[key].append(st[key])
        tokens += int(b.tokens.size)
        if progress and (s % log_every == 0 or s == steps - 1):
            print(f"step {s + 1:5d}/{steps}  loss {st['loss']:.4f}  kl {st['kl']:.4f}  ce {st['ce']:.4f}",
                  file=sys.stdout, flush=True)
    hist["seconds"] = time.perf_counter() - t0
    hist["tokens"] = tokens
    hist["tokens_per_s"] = tokens / hist["seconds"] if hist["seconds"] > 0 else 0.0
    return hist
