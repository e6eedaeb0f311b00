"""Verifiable rewards for reinforcement learning (DeepSeek-R1's rule-based rewards): a
program checks each completion; no learned reward model.

    from deepseek_c import rewards
    task = dsc.data.Addition(digits=3)
    reward = rewards.exact_answer(task) + 0.1 * rewards.format(task)
    r = reward(["12+34="], ["46"], finished=[True])        # float64 array: [1.1]
    r, terms = reward.evaluate(prompts, completions, finished)   # terms: {"exact_answer": ..., "format": ...}

A reward is called on a batch: ``reward(prompts, completions, finished)`` with the prompts'
and completions' texts (a completion decoded up to its end-of-sequence token) and whether
each completion ended with that token (False: cut at max_new_tokens). It returns one finite
number per completion. Rewards combine linearly (``+``, ``-``, ``*`` by a number), and any
Python callable ``f(prompts, completions)`` (or with a ``finished`` keyword) is one
(``Reward(f)``, or pass it straight to dsc.GRPO).
"""

from __future__ import annotations

import inspect
import numbers
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import data as D

__all__ = ["Reward", "exact_answer", "format", "length_penalty", "as_reward"]


def _accepts_finished(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return "finished" in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


class Reward:
    """A weighted sum of reward terms plus a constant. ``Reward(fn, name)`` makes a single
    term of a batched callable ``fn(prompts, completions[, finished=...]) -> numbers``."""

    def __init__(self, fn: Optional[Callable] = None, name: Optional[str] = None) -> None:
        self._terms: list[tuple[float, str, Callable]] = []
        self._const = 0.0
        if fn is not None:
            if not callable(fn):
                raise TypeError(f"Reward: fn: expected a callable (prompts, completions) -> numbers, got "
                                f"{type(fn).__name__}")
            self._terms.append((1.0, name or getattr(fn, "__name__", "reward"), fn))

    @property
    def names(self) -> list[str]:
        return [n for _, n, _ in self._terms]

    def _copy(self) -> "Reward":
        r = Reward()
        r._terms, r._const = list(self._terms), self._const
        return r

    # ---- algebra
    def __add__(self, other: Any) -> "Reward":
        r = self._copy()
        if isinstance(other, Reward):
            r._terms += other._terms
            r._const += other._const
        elif isinstance(other, numbers.Real) and not isinstance(other, bool):
            r._const += float(other)
        elif callable(other):
            r._terms.append((1.0, getattr(other, "__name__", "reward"), other))
        else:
            return NotImplemented
        return r

    __radd__ = __add__

    def __mul__(self, k: Any) -> "Reward":
        if isinstance(k, bool) or not isinstance(k, numbers.Real):
            return NotImplemented
        r = Reward()
        r._terms = [(w * float(k), n, f) for w, n, f in self._terms]
        r._const = self._const * float(k)
        return r

    __rmul__ = __mul__

    def __neg__(self) -> "Reward":
        return self * -1.0

    def __sub__(self, other: Any) -> "Reward":
        if isinstance(other, Reward):
            return self + (-other)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self + (-float(other))
        return NotImplemented

    def __rsub__(self, other: Any) -> "Reward":
        return (-self) + other

    def __repr__(self) -> str:
        parts = [f"{w:g} * {n}" for w, n, _ in self._terms]
        if self._const or not parts:
            parts.append(f"{self._const:g}")
        return "Reward(" + " + ".join(parts) + ")"

    # ---- evaluation
    def evaluate(self, prompts: Sequence[str], completions: Sequence[str],
                 finished: Optional[Sequence[bool]] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(total [n] float64, {term name: its unweighted values [n]}). Each term must give
        one finite number per completion (ValueError naming the term otherwise)."""
        prompts, completions = list(prompts), list(completions)
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"Reward: prompts: expected {n} prompts (one per completion), got {len(prompts)}")
        fin = [True] * n if finished is None else [bool(f) for f in finished]
        if len(fin) != n:
            raise ValueError(f"Reward: finished: expected {n} values (one per completion), got {len(fin)}")
        total = np.full(n, self._const, np.float64)
        terms: dict[str, np.ndarray] = {}
        for w, name, fn in self._terms:
            out = fn(prompts, completions, finished=fin) if _accepts_finished(fn) else fn(prompts, completions)
            try:
                v = np.asarray(out, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"reward {name!r}: expected a sequence of numbers, got {type(out).__name__}") from None
            if v.shape[0] != n or np.ndim(out) > 1:
                raise ValueError(f"reward {name!r}: expected {n} values (one per completion), got {v.shape[0]}")
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise ValueError(f"reward {name!r}: expected finite values, got {v[bad[0]]} at index {bad[0]}")
            key = name
            while key in terms:
                key += "'"
            terms[key] = v
            total += w * v
        return total, terms

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 finished: Optional[Sequence[bool]] = None) -> np.ndarray:
        return self.evaluate(prompts, completions, finished)[0]


def as_reward(fn: Any) -> Reward:
    """A Reward from a Reward or a callable (prompts, completions[, finished]) -> numbers."""
    if isinstance(fn, Reward):
        return fn
    if callable(fn):
        return Reward(fn)
    raise TypeError(f"reward: expected a deepseek_c.rewards.Reward or a callable (prompts, completions) -> "
                    f"numbers, got {type(fn).__name__}")


def _check_task(task: Any, fn: str) -> None:
    if not isinstance(task, D.Task):
        raise TypeError(f"rewards.{fn}: task: expected a deepseek_c.data.Task (e.g. dsc.data.Addition(3)), got "
                        f"{type(task).__name__}")


def exact_answer(task: D.Task) -> Reward:
    """1 when task.verify(prompt, completion) (the exact answer), else 0."""
    _check_task(task, "exact_answer")

    def exact_answer(prompts: list, completions: list) -> list:
        return [1.0 if task.verify(p, c) else 0.0 for p, c in zip(prompts, completions)]

    return Reward(exact_answer, "exact_answer")


def _pattern(task: D.Task, prompt: str) -> Optional[str]:
    """The regular expression a well-formed answer of `task` to `prompt` matches."""
    if isinstance(task, D.Mixture):
        try:
            return _pattern(task._owner(prompt), prompt)
        except ValueError:
            return None
    if isinstance(task, D.Addition):
        return rf"\d{{1,{task.digits + 1}}}"
    if isinstance(task, D.Sorting):
        return rf"\d{{{max(0, len(prompt) - 3)}}}"
    if isinstance(task, (D.Copy, D.Reverse)):
        return rf"[a-z]{{{max(0, len(prompt) - 3)}}}"
    return r".+"


def format(task: D.Task) -> Reward:  # noqa: A001 - the issue's name: rewards.format(task)
    """1 when the completion has the task's answer form (addition: 1 to digits + 1 digits;
    sorting: as many digits as the prompt; copy / reverse: as many letters) and ended with
    the end-of-sequence token, else 0. Right or wrong does not matter here."""
    _check_task(task, "format")

    def format(prompts: list, completions: list, finished: list) -> list:
        out = []
        for p, c, f in zip(prompts, completions, finished):
            pat = _pattern(task, p)
            out.append(1.0 if f and pat is not None and re.fullmatch(pat, c) else 0.0)
        return out

    return Reward(format, "format")


def length_penalty(max_chars: int) -> Reward:
    """-(characters beyond max_chars) / max_chars (0 within the budget): DAPO's overlong
    shaping in its simplest form."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, numbers.Integral) or max_chars < 1:
        raise ValueError(f"rewards.length_penalty: max_chars: expected an int >= 1, got {max_chars!r}")

    def length_penalty(prompts: list, completions: list) -> list:
        return [-max(0, len(c) - max_chars) / max_chars for c in completions]

    return Reward(length_penalty, "length_penalty")
