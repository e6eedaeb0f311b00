"""GRPO: reinforcement learning with verifiable rewards (DeepSeekMath, DeepSeek-R1), on the C
model's sampled generation (dsc_model_generate) and policy step (dsc_model_policy_step).

    task = dsc.data.Addition(digits=3)
    trainer = dsc.GRPO(model, reward=dsc.rewards.exact_answer(task) + 0.1 * dsc.rewards.format(task),
                       group_size=8, epsilon=0.2, epsilon_high=0.28, beta=0.001, loss_type="dapo")
    for step in range(200):
        prompts = [task.sample(rng)[0] for _ in range(8)]
        stats = trainer.step(prompts)   # rollouts, rewards, advantages, one policy update

One step: each prompt is completed group_size times by sampled generation (temperature,
top-k/top-p, seeded, ragged batches; optionally MTP speculative sampling, which follows the
model's distribution), each completion is scored by the reward, the completions of a prompt
form a group whose rewards give the advantages, and dsc_model_policy_step does the update
(the GRPO loss of deepseek_c.h, AdamW, clipping). The KL term (beta > 0) is to a frozen
copy of the starting model (or ``ref_model``). With ``num_iterations`` > 1 the same rollouts
serve several updates, with their log-probabilities at rollout time as pi_old (the clipped
ratio then matters). ``drop_zero_std_groups`` leaves out the groups whose completions all
got the same reward (no signal; DAPO's dynamic sampling) before the update.

The stats of a step: reward_mean / reward_std (all completions), accuracy (mean of the
exact_answer term, when the reward has one), the terms' means, kl, clip fractions,
entropy, completion_length (tokens), finished (fraction ended by eos), loss, grad_norm,
groups_dropped, rollout_tokens_per_s (new tokens / generation time), update_tokens_per_s
(tokens of the update batch / update time), rollout_seconds, update_seconds, step, lr.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import data as D
from .model import Model
from .rewards import Reward, as_reward
from .rl_ops import grpo_params

__all__ = ["GRPO", "Rollout", "build_batch", "plot_history"]

IGNORE_INDEX = -100


@dataclass
class Rollout:
    """The completions of one step: prompts (text, each repeated group_size times, groups
    adjacent), completions (text up to eos) and their token ids, finished flags, rewards and
    reward terms, and the training batch built from them (tokens / targets [B, T])."""

    prompts: list
    completions: list
    completion_ids: list
    finished: np.ndarray
    rewards: np.ndarray
    terms: dict
    tokens: np.ndarray
    targets: np.ndarray
    new_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def build_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int = 0,
                ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, T] = prompt + completion (right-padded with pad_id), targets [B, T] = the
    next token at the positions that predict a completion token, ignore_index elsewhere.
    T = the longest prompt + completion. A completion must not be empty."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"build_batch: completion_ids: expected {len(prompt_ids)} (one per prompt), got "
                         f"{len(completion_ids)}")
    B = len(prompt_ids)
    T = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    tokens = np.full((B, T), pad_id, np.int32)
    targets = np.full((B, T), ignore_index, np.int32)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if len(p) < 1:
            raise ValueError(f"build_batch: prompt_ids[{b}]: expected at least one token, got none")
        if len(c) < 1:
            raise ValueError(f"build_batch: completion_ids[{b}]: expected at least one token (an empty "
                             f"completion has nothing to learn from), got none")
        seq = list(p) + list(c)
        tokens[b, :len(seq)] = seq
        targets[b, len(p) - 1:len(seq) - 1] = c  # position i predicts token i + 1
    return tokens, targets


def _num(fn: str, name: str, v: Any, lo: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or \
            (float(v) <= lo if lo_open else float(v) < lo):
        raise ValueError(f"{fn}: {name}: expected a finite number {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    return float(v)


def _int(fn: str, name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
        raise ValueError(f"{fn}: {name}: expected an int >= {lo}, got {v!r}")
    return int(v)


class GRPO:
    """The GRPO trainer (see the module docstring). Arguments:

    model: the policy (a trainable deepseek_c.Model); reward: a rewards.Reward or a callable
    (prompts, completions[, finished]) -> numbers; tokenizer: encodes prompts and decodes
    completions (default data.CharTokenizer, the built-in tasks' tokenizer).
    group_size (>= 2), loss_type ("grpo" | "dr_grpo" | "dapo"), epsilon, epsilon_high (None:
    = epsilon), beta (KL weight; > 0 builds ``ref_model`` as a frozen copy of `model` unless
    one is given), scale_rewards ("group" | "batch" | "none"), std_eps,
    drop_zero_std_groups, max_completion_length (dr_grpo's normalizer; default
    max_new_tokens): as dsc.grpo_loss.
    max_new_tokens, temperature, top_k, top_p, speculative ("mtp" or None): rollouts (as
    dsc.generate; seed + step gives each step its own reproducible streams).
    lr (a number or a callable step -> lr), max_grad_norm, weight_decay, betas,
    bias_update_rate: the optimizer (as Model.train_step). num_iterations: updates per rollout.
    """

    def __init__(self, model: Model, reward: Any, *, tokenizer: Any = None, group_size: int = 8,
                 loss_type: str = "dapo", epsilon: float = 0.2, epsilon_high: Optional[float] = None,
                 beta: float = 0.001, scale_rewards: Any = "group", std_eps: float = 1e-4,
                 drop_zero_std_groups: bool = False, max_completion_length: Optional[int] = None,
                 max_new_tokens: int = 16, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, speculative: Optional[str] = None, num_iterations: int = 1,
                 lr: Union[float, Callable[[int], float]] = 1e-4, max_grad_norm: float = 1.0,
                 weight_decay: float = 0.0, betas: tuple = (0.9, 0.95), bias_update_rate: float = 1e-3,
                 ref_model: Optional[Model] = None, seed: int = 0, eos_token_id: Optional[int] = None) -> None:
        fn = "GRPO"
        if not isinstance(model, Model):
            raise TypeError(f"{fn}: model: expected a deepseek_c.Model, got {type(model).__name__}")
        if model.frozen:
            raise ValueError(f"{fn}: model: expected a trainable model, got a frozen (FP8 inference-only) one")
        self.model = model
        self.reward = as_reward(reward)
        self.tokenizer = tokenizer if tokenizer is not None else D.CharTokenizer()
        for attr in ("encode", "decode"):
            if not callable(getattr(self.tokenizer, attr, None)):
                raise TypeError(f"{fn}: tokenizer: expected an object with encode and decode, got "
                                f"{type(self.tokenizer).__name__}")
        self.max_new_tokens = _int(fn, "max_new_tokens", max_new_tokens, 1)
        mcl = self.max_new_tokens if max_completion_length is None else max_completion_length
        self.params = dict(group_size=group_size, loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high,
                           beta=beta, scale_rewards=scale_rewards, std_eps=std_eps,
                           max_completion_length=mcl)
        grpo_params(fn, drop_zero_std_groups=drop_zero_std_groups, **self.params)  # every value checked here
        self.group_size = int(group_size)
        self.beta = float(beta)
        self.drop_zero_std_groups = bool(drop_zero_std_groups)
        self.temperature = _num(fn, "temperature", temperature, 0.0, lo_open=True)
        self.top_k, self.top_p, self.speculative = top_k, top_p, speculative
        self.num_iterations = _int(fn, "num_iterations", num_iterations, 1)
        if not callable(lr):
            _num(fn, "lr", lr, 0.0)
        self.lr = lr
        self.opt = dict(max_grad_norm=_num(fn, "max_grad_norm", max_grad_norm, 0.0),
                        weight_decay=_num(fn, "weight_decay", weight_decay, 0.0), betas=tuple(betas),
                        bias_update_rate=_num(fn, "bias_update_rate", bias_update_rate, 0.0))
        if ref_model is not None and not isinstance(ref_model, Model):
            raise TypeError(f"{fn}: ref_model: expected a deepseek_c.Model, got {type(ref_model).__name__}")
        if ref_model is not None and ref_model.cfg.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"{fn}: ref_model: expected the policy's vocabulary ({model.cfg.vocab_size}), got "
                             f"{ref_model.cfg.vocab_size}")
        self.ref_model = ref_model if ref_model is not None else (model.copy() if self.beta > 0 else None)
        self.seed = _int(fn, "seed", seed, 0)
        eos = getattr(self.tokenizer, "eos_id", None) if eos_token_id is None else eos_token_id
        self.eos_token_id = -1 if eos is None else int(eos)
        self.bos = getattr(self.tokenizer, "bos_id", None)
        self.pad = int(getattr(self.tokenizer, "pad_id", 0) or 0)
        self.steps_done = 0
        self.history: list[dict] = []
        # the reward term that measures correctness, for the accuracy statistic
        self._acc_term = "exact_answer" if "exact_answer" in self.reward.names else None

    # ------------------------------------------------------------------ rollouts

    def _encode(self, prompts: Sequence[Any]) -> tuple[list[str], list[list[int]]]:
        texts, ids = [], []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"GRPO.step: prompts[{i}]: expected a str, got {type(p).__name__}")
            try:
                t = self.tokenizer.encode(p)
            except (ValueError, KeyError) as e:
                raise ValueError(f"GRPO.step: prompts[{i}]: the tokenizer cannot encode {p!r} ({e})") from None
            ids.append(([self.bos] if self.bos is not None and self.bos >= 0 else []) + list(t))
            texts.append(p)
        return texts, ids

    def rollout(self, prompts: Sequence[str], seed: Optional[int] = None) -> Rollout:
        """Sample group_size completions of every prompt and score them (no update)."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise ValueError(f"GRPO.step: prompts: expected a non-empty list of prompt strings, got "
                             f"{type(prompts).__name__ if not isinstance(prompts, Sequence) else 'an empty list'}")
        texts, ids = self._encode(prompts)
        G = self.group_size
        rep_text = [t for t in texts for _ in range(G)]
        rep_ids = [i for i in ids for _ in range(G)]
        s = self.seed + self.steps_done if seed is None else int(seed)
        t0 = time.perf_counter()
        out = self.model.generate(rep_ids, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p, seed=s, eos_token_id=self.eos_token_id,
                                  speculative=self.speculative)
        gen_s = time.perf_counter() - t0
        comp_ids = [list(c) for c in out.tokens]
        finished = np.array([len(c) > 0 and c[-1] == self.eos_token_id for c in comp_ids])
        comps = [self.tokenizer.decode(c) for c in comp_ids]
        rewards, terms = self.reward.evaluate(rep_text, comps, finished)
        tokens, targets = build_batch(rep_ids, comp_ids, self.pad)
        return Rollout(rep_text, comps, comp_ids, finished, rewards, terms, tokens, targets,
                       new_tokens=int(out.new_tokens), seconds=gen_s,
                       extra=dict(accept_rate=out.accept_rate))

    # ------------------------------------------------------------------ the step

    def _lr(self) -> float:
        return float(self.lr(self.model.step + 1)) if callable(self.lr) else float(self.lr)

    def update(self, ro: Rollout) -> dict:
        """The policy update(s) on a rollout (num_iterations of them)."""
        G = self.group_size
        r = ro.rewards.astype(np.float32)
        keep_rows = np.arange(len(r))
        dropped = 0
        if self.drop_zero_std_groups:
            g = r.reshape(-1, G)
            kept_groups = np.flatnonzero(g.max(1) != g.min(1))
            dropped = g.shape[0] - kept_groups.size
            keep_rows = (kept_groups[:, None] * G + np.arange(G)).reshape(-1)
        st: dict = dict(groups_dropped=int(dropped), sequences=int(keep_rows.size))
        if keep_rows.size == 0:
            st.update(loss=0.0, kl=0.0, clip_region=0.0, clip_low=0.0, clip_high=0.0, entropy=float("nan"),
                      grad_norm=0.0, update_seconds=0.0, update_tokens_per_s=0.0, updates=0, step=self.model.step)
            return st
        tok = np.ascontiguousarray(ro.tokens[keep_rows])
        tgt = np.ascontiguousarray(ro.targets[keep_rows])
        # trailing columns that only padding uses after dropping: cut (no position counts there)
        used = np.flatnonzero((tgt != IGNORE_INDEX).any(0))
        T = int(used[-1]) + 2 if used.size else tok.shape[1]
        tok, tgt = np.ascontiguousarray(tok[:, :min(T, tok.shape[1])]), np.ascontiguousarray(tgt[:, :min(T, tgt.shape[1])])
        rew = np.ascontiguousarray(r[keep_rows])
        t0 = time.perf_counter()
        ref = self.ref_model.token_logprobs(tok, tgt) if self.ref_model is not None else None
        old = self.model.token_logprobs(tok, tgt) if self.num_iterations > 1 else None
        last: dict = {}
        for _ in range(self.num_iterations):
            last = self.model.policy_step(tok, tgt, rew, old_logprobs=old, ref_logprobs=ref, lr=self._lr(),
                                          **self.params, **self.opt)
        secs = time.perf_counter() - t0
        for k in ("loss", "policy_loss", "kl", "clip_low", "clip_high", "clip_region", "ratio_mean", "entropy",
                  "grad_norm", "step", "tokens", "lr"):
            st[k] = last[k]
        st.update(update_seconds=secs, updates=self.num_iterations,
                  update_tokens_per_s=self.num_iterations * tok.size / secs if secs > 0 else 0.0)
        return st

    def step(self, prompts: Sequence[str]) -> dict:
        """Rollouts of `prompts` (group_size each), rewards, advantages and the policy
        update. Returns the step's statistics (see the module docstring) and appends them
        to self.history."""
        t0 = time.perf_counter()
        ro = self.rollout(prompts)
        st = self.update(ro)
        lengths = np.array([len(c) for c in ro.completion_ids])
        stats = dict(step=self.model.step, reward_mean=float(ro.rewards.mean()),
                     reward_std=float(ro.rewards.std(ddof=1)) if ro.rewards.size > 1 else 0.0,
                     accuracy=float(ro.terms[self._acc_term].mean()) if self._acc_term else None,
                     completion_length=float(lengths.mean()), finished=float(ro.finished.mean()),
                     rollout_seconds=ro.seconds, rollout_tokens=ro.new_tokens,
                     rollout_tokens_per_s=ro.new_tokens / ro.seconds if ro.seconds > 0 else 0.0,
                     accept_rate=ro.extra.get("accept_rate"))
        for k, v in ro.terms.items():
            stats[f"reward_{k}"] = float(v.mean())
        stats.update({k: v for k, v in st.items() if k != "step"})
        stats["step"] = self.model.step
        stats["seconds"] = time.perf_counter() - t0
        self.steps_done += 1
        self.history.append(stats)
        return stats


def plot_history(history: Sequence[dict], path: Optional[str] = None, evals: Optional[Sequence[tuple]] = None,
                 title: str = "GRPO"):
    """Reward / accuracy, KL to the reference, completion length and clip fraction over the
    steps of a GRPO run (and held-out accuracy at evals = [(step, accuracy), ...]). Returns
    the matplotlib figure (saved to path when given)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(history) + 1)

    def col(k):
        return np.array([np.nan if h.get(k) is None else h.get(k) for h in history], float)

    def smooth(y, w=10):
        if len(y) < w:
            return y
        k = np.ones(w) / w
        out = np.convolve(np.nan_to_num(y), k, mode="valid")
        return np.concatenate([np.full(w - 1, np.nan), out])

    fig, ax = plt.subplots(1, 4, figsize=(15, 3.4))
    ax[0].plot(steps, col("reward_mean"), lw=0.6, alpha=0.4, label="reward (batch)")
    ax[0].plot(steps, smooth(col("reward_mean")), lw=1.5, label="reward (10-step mean)")
    if any(h.get("accuracy") is not None for h in history):
        ax[0].plot(steps, smooth(col("accuracy")), lw=1.5, label="rollout accuracy (10-step mean)")
    if evals:
        e = np.array(evals, float)
        ax[0].plot(e[:, 0], e[:, 1], "o-", color="k", lw=1.2, label="held-out accuracy (greedy)")
    ax[0].set_xlabel("step"); ax[0].set_title("reward and accuracy"); ax[0].legend(fontsize=7)
    ax[1].plot(steps, col("kl"), lw=1); ax[1].set_xlabel("step"); ax[1].set_title("KL to the reference (k3)")
    ax[2].plot(steps, col("completion_length"), lw=1); ax[2].set_xlabel("step")
    ax[2].set_title("completion length (tokens)")
    ax[3].plot(steps, col("clip_region"), lw=1, label="clipped")
    ax[3].plot(steps, col("entropy"), lw=1, label="entropy")
    ax[3].set_xlabel("step"); ax[3].set_title("clip fraction, entropy"); ax[3].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=70)
    return fig
