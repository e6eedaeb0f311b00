"""Functional ops of reinforcement learning and distillation, on any DLPack array (the C
ops dsc_token_logprob, dsc_grpo_advantages, dsc_grpo_loss, dsc_logits_topk, dsc_topk_kl):

    lp, ent = dsc.token_logprob(logits, targets, return_entropy=True)   # [B, T] log p(target)
    adv, keep = dsc.grpo_advantages(rewards, group_size=8)              # (r - mean_g) / (std_g + eps)
    loss, dlp, stats = dsc.grpo_loss(lp, adv, mask, ref_logprobs=ref, beta=0.001, loss_type="dapo")
    dlogits = dsc.token_logprob_backward(logits, targets, dlp)          # chain rule into the logits
    values, idx = dsc.logits_topk(teacher_logits, k=8)                  # what a teacher keeps
    loss, dlogits = dsc.topk_kl(student_logits, idx, values, targets, temperature=2.0)

The formulas (GRPO of DeepSeekMath / R1 with the Dr. GRPO and DAPO aggregations, the k3 KL
estimator, clip-higher) are in deepseek_c.h, section "GRPO", and docs of each function.
Errors: ValueError (shape, value), TypeError (dtype, not an array), deepseek_c.Error.
Shapes: N rows, V vocabulary, B completions, T positions, K kept logits, G group size.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

from . import _C
from ._arrays import INT64, Array, as_int, dtype_name, empty_like_ns, finish

__all__ = ["token_logprob", "token_logprob_backward", "grpo_advantages", "grpo_loss", "logits_topk", "topk_kl",
           "GRPO_STATS", "sample_tokens"]

IGNORE_INDEX = -100
LOSS_TYPES = {"grpo": 0, "dr_grpo": 1, "dapo": 2}
SCALES = {"group": 0, "batch": 1, "none": 2}
# the order of dsc_grpo_stat (the stats array of dsc_grpo_loss)
GRPO_STATS = ("loss", "policy_loss", "kl", "clip_low", "clip_high", "clip_region", "ratio_mean", "tokens",
              "sequences")


def _check_array(x: Any, fn: str, arg: str) -> None:
    if not hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: {arg}: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), "
                        f"got {type(x).__name__}")


def _shape(x: Array) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _number(fn: str, name: str, v: Any, lo: Optional[float] = None, hi: Optional[float] = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{fn}: {name}: expected a number, got {type(v).__name__}")
    f = float(v)
    bad = not math.isfinite(f) or (lo is not None and (f <= lo if lo_open else f < lo)) or \
        (hi is not None and (f >= hi if hi_open else f > hi))
    if bad:
        rng = ("a finite number" if lo is None and hi is None else
               f"a number {'>' if lo_open else '>='} {lo:g}" if hi is None else
               f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        raise ValueError(f"{fn}: {name}: expected {rng}, got {v!r}")
    return f


def _int(fn: str, name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
        raise ValueError(f"{fn}: {name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def grpo_params(fn: str, *, group_size: int = 8, loss_type: str = "dapo", epsilon: float = 0.2,
                epsilon_high: Optional[float] = None, beta: float = 0.0,
                max_completion_length: Optional[int] = None, scale_rewards: Any = "group", std_eps: float = 1e-4,
                drop_zero_std_groups: bool = False) -> tuple:
    """The dsc_grpo_params tuple of the C wrappers, every value checked with its Python name.
    epsilon_high None: = epsilon. scale_rewards: "group" | "batch" | "none" (True / False:
    "group" / "none"). max_completion_length None: the padded length T."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"{fn}: loss_type: expected one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if scale_rewards is True or scale_rewards is False:
        scale_rewards = "group" if scale_rewards else "none"
    if scale_rewards not in SCALES:
        raise ValueError(f"{fn}: scale_rewards: expected 'group', 'batch' or 'none', got {scale_rewards!r}")
    if not isinstance(drop_zero_std_groups, (bool, np.bool_)):
        raise TypeError(f"{fn}: drop_zero_std_groups: expected a bool, got {type(drop_zero_std_groups).__name__}")
    eps = _number(fn, "epsilon", epsilon, 0.0, 1.0, lo_open=True, hi_open=True)
    eph = eps if epsilon_high is None else _number(fn, "epsilon_high", epsilon_high, 0.0, lo_open=True)
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or int(group_size) < 2:
        raise ValueError(f"{fn}: group_size: expected an int >= 2 (completions per prompt: a group of one has no "
                         f"relative advantage), got {group_size!r}")
    mcl = 0 if max_completion_length is None else _int(fn, "max_completion_length", max_completion_length, 1)
    return (LOSS_TYPES[loss_type], eps, eph, _number(fn, "beta", beta, 0.0), mcl, int(group_size),
            SCALES[scale_rewards], _number(fn, "std_eps", std_eps, 0.0, lo_open=True), int(bool(drop_zero_std_groups)))


# ----------------------------------------------------------------------------- token log-probabilities


def token_logprob(logits: Array, targets: Array, *, ignore_index: int = IGNORE_INDEX,
                  return_entropy: bool = False) -> Any:
    """log softmax(logits)[target] per row.

    logits: [..., V] float32 | bfloat16; targets: [...] int32 | int64 (ignore_index or in
    [0, V)). Returns logprobs [...] float32 (0 on ignored rows), and with
    return_entropy=True also the entropy of each row's softmax ([...] float32, 0 on ignored
    rows) as a second value."""
    fn = "dsc_token_logprob"
    _check_array(logits, fn, "logits")
    lead = _shape(logits)[:-1]
    lp = empty_like_ns(logits, lead, "float32", fn, "logprobs")
    ent = empty_like_ns(logits, lead, "float32", fn, "entropy") if return_entropy else None
    _C.token_logprob(logits, targets, as_int(ignore_index, fn, "ignore_index", *INT64), lp, ent)
    if return_entropy:
        return finish(logits, lp), finish(logits, ent)
    return finish(logits, lp)


def token_logprob_backward(logits: Array, targets: Array, dlogprobs: Array, *, ignore_index: int = IGNORE_INDEX,
                           out: Optional[Array] = None) -> Array:
    """dlogits = dlogprobs * (onehot(target) - softmax(logits)) per row, 0 on ignored rows.
    dlogprobs: [...] float32; out (optional): like logits, may be logits itself."""
    fn = "dsc_token_logprob_backward"
    _check_array(logits, fn, "logits")
    dl = empty_like_ns(logits, _shape(logits), dtype_name(logits), fn, "dlogits") if out is None else out
    _C.token_logprob_backward(logits, targets, as_int(ignore_index, fn, "ignore_index", *INT64), dlogprobs, dl)
    return finish(logits, dl)


# ----------------------------------------------------------------------------- GRPO


def grpo_advantages(rewards: Array, group_size: int = 8, *, scale_rewards: Any = "group", std_eps: float = 1e-4,
                    drop_zero_std_groups: bool = False) -> tuple[Array, Array]:
    """Group-relative advantages of rewards [n] float32 (the G completions of a prompt
    adjacent, n a multiple of G): A = (r - mean of the group) / (std + std_eps), std the
    group's ("group"), the batch's ("batch") sample std, or no division ("none").
    Returns (advantages [n] float32, keep [n] int32: 0 for the groups whose rewards are all
    equal when drop_zero_std_groups, else 1). Non-finite rewards are a ValueError."""
    fn = "dsc_grpo_advantages"
    _check_array(rewards, fn, "rewards")
    p = grpo_params(fn, group_size=group_size, scale_rewards=scale_rewards, std_eps=std_eps,
                    drop_zero_std_groups=drop_zero_std_groups)
    n = _shape(rewards)
    adv = empty_like_ns(rewards, n, "float32", fn, "advantages")
    keep = empty_like_ns(rewards, n, "int32", fn, "keep")
    _C.grpo_advantages(p, rewards, adv, keep)
    return finish(rewards, adv), finish(rewards, keep)


def _mask_targets(mask: Any, targets: Any, ignore_index: int, fn: str) -> tuple[Any, int]:
    """(the int targets array, its ignore value) from a mask (bool / 0-1 ints) or targets."""
    if (mask is None) == (targets is None):
        raise ValueError(f"{fn}: mask, targets: expected exactly one of them (mask: nonzero at completion tokens; "
                         f"targets: != ignore_index there), got {'both' if mask is not None else 'neither'}")
    if targets is not None:
        return targets, as_int(ignore_index, fn, "ignore_index", *INT64)
    if isinstance(mask, np.ndarray) or not hasattr(mask, "__dlpack__"):
        m = np.asarray(mask)
        if m.dtype.kind not in "biu":
            raise TypeError(f"{fn}: mask: expected a bool or integer array, got dtype {m.dtype}")
        return np.ascontiguousarray(m != 0, dtype=np.int32), 0
    if dtype_name(mask) not in ("int32", "int64"):
        raise TypeError(f"{fn}: mask: expected int32 or int64 (0/1) for a device array, got {dtype_name(mask)}")
    return mask, 0  # nonzero counts: ignore value 0


def grpo_loss(logprobs: Array, advantages: Array, mask: Any = None, *, targets: Any = None,
              ignore_index: int = IGNORE_INDEX, old_logprobs: Optional[Array] = None,
              ref_logprobs: Optional[Array] = None, loss_type: str = "dapo", epsilon: float = 0.2,
              epsilon_high: Optional[float] = None, beta: float = 0.0, max_completion_length: Optional[int] = None,
              keep: Optional[Array] = None, return_grad: bool = True) -> tuple[Array, Optional[Array], dict]:
    """The GRPO objective over B completions of T positions and its gradient.

    logprobs [B, T] float32 (log pi_theta of each token); advantages [B] float32; which
    positions are completion tokens: ``mask`` [B, T] (bool or ints, nonzero = completion
    token) or ``targets`` [B, T] int (!= ignore_index). old_logprobs [B, T] (None: pi_old =
    pi_theta, ratio 1); ref_logprobs [B, T] (needed with beta > 0; without beta it still gives
    the KL statistic). Per token, rho = exp(logp - old):
        L = -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta KL,
        KL = exp(ref - logp) - (ref - logp) - 1                          (k3, >= 0)
    aggregated by loss_type: "grpo" (token mean per completion, then the mean over
    completions), "dr_grpo" (token sum / (completions x max_completion_length, default T)),
    "dapo" (token mean over the batch). keep [B] int32 (0: leave the row out, as if absent).
    Returns (loss: 0-d float32, dlogprobs [B, T] float32 or None, stats dict with the keys
    of GRPO_STATS as floats)."""
    fn = "dsc_grpo_loss"
    _check_array(logprobs, fn, "logprobs")
    p = grpo_params(fn, loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta,
                    max_completion_length=max_completion_length)
    tg, ig = _mask_targets(mask, targets, ignore_index, fn)
    loss = empty_like_ns(logprobs, (), "float32", fn, "loss")
    dl = empty_like_ns(logprobs, _shape(logprobs), "float32", fn, "dlogprobs") if return_grad else None
    st = np.empty(len(GRPO_STATS), np.float32)
    stats_out = st if isinstance(logprobs, np.ndarray) else empty_like_ns(logprobs, st.shape, "float32", fn, "stats")
    _C.grpo_loss(p, logprobs, old_logprobs, ref_logprobs, advantages, tg, ig, keep, loss, dl, stats_out)
    host = stats_out if isinstance(stats_out, np.ndarray) else np.asarray(_to_host(stats_out))
    stats = {k: float(v) for k, v in zip(GRPO_STATS, host)}
    return finish(logprobs, loss), (finish(logprobs, dl) if dl is not None else None), stats


def _to_host(x: Any) -> np.ndarray:
    from . import to_numpy
    return to_numpy(x)


# ----------------------------------------------------------------------------- distillation


def logits_topk(logits: Array, k: int, *, index_dtype: str = "int32") -> tuple[Array, Array]:
    """The k largest logits of each row, descending (ties: lower index first; NaN last).
    logits [..., V] float32 | bfloat16, 1 <= k <= V -> (values [..., k] float32, indices
    [..., k] int32 | int64)."""
    fn = "dsc_logits_topk"
    _check_array(logits, fn, "logits")
    if index_dtype not in ("int32", "int64"):
        raise ValueError(f"{fn}: index_dtype: expected 'int32' or 'int64', got {index_dtype!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{fn}: k: expected an int, got {type(k).__name__}")
    shp = _shape(logits)
    if not shp:
        raise ValueError(f"{fn}: logits: expected at least 1 dim (..., V), got a 0-d array")
    if not 1 <= int(k) <= shp[-1]:
        raise ValueError(f"{fn}: k: expected an int in [1, V = {shp[-1]}], got {k}")
    out_shape = shp[:-1] + (int(k),)
    v = empty_like_ns(logits, out_shape, "float32", fn, "values")
    i = empty_like_ns(logits, out_shape, index_dtype, fn, "indices")
    _C.logits_topk(logits, v, i)
    return finish(logits, v), finish(logits, i)


def topk_kl(logits: Array, teacher_indices: Array, teacher_logits: Array, targets: Array, *,
            temperature: float = 1.0, ignore_index: int = IGNORE_INDEX, grad_scale: float = 1.0,
            return_dlogits: bool = True) -> tuple[Array, Optional[Array]]:
    """KL(teacher || student) at temperature tau over the teacher's top-k, mean over the rows
    whose target is not ignore_index:
        p = softmax(teacher_logits / tau) over its k;  log q = log_softmax(logits / tau)
        KL = sum_k p_k (log p_k - log q[teacher_indices_k])
    logits [..., V] float32 | bfloat16 (the student's); teacher_indices [..., K] int;
    teacher_logits [..., K] float32; targets [...] int (only compared with ignore_index).
    Returns (loss 0-d float32, dlogits like logits = grad_scale / n_valid / tau * (q - p
    scattered), or None)."""
    fn = "dsc_topk_kl"
    _check_array(logits, fn, "logits")
    tau = _number(fn, "temperature", temperature, 0.0, lo_open=True)
    gs = _number(fn, "grad_scale", grad_scale)
    loss = empty_like_ns(logits, (), "float32", fn, "loss")
    dl = empty_like_ns(logits, _shape(logits), dtype_name(logits), fn, "dlogits") if return_dlogits else None
    _C.topk_kl(logits, teacher_indices, teacher_logits, targets, as_int(ignore_index, fn, "ignore_index", *INT64),
               tau, gs, loss, dl)
    return finish(logits, loss), (finish(logits, dl) if dl is not None else None)


# ----------------------------------------------------------------------------- sampling


def sample_tokens(logits: Array, rng: Array, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  active: Optional[Array] = None, out: Optional[Array] = None) -> Array:
    """Sample one token per row of logits [B, V] float32 (dsc_sample_tokens, the rules of
    Model.generate): temperature 0 is greedy (argmax, lowest id on ties, NaN never wins);
    else softmax(logits / temperature) in float64, then top_k (0: off), then top_p (1: off).

    rng: [B, 2] int64 per row (key, counter) -- the uint64 bits of a counter-based stream;
    updated in place (the counter grows by one per draw). active: [B] int32 or None; rows
    with 0 are left as they are (in out too). Returns tokens [B] int32 (out if given), -1
    for a row whose logits are all NaN or -inf."""
    fn = "dsc_sample_tokens"
    _check_array(logits, fn, "logits")
    t = _number(fn, "temperature", temperature, lo=0.0)
    p = _number(fn, "top_p", top_p, lo=0.0, hi=1.0, lo_open=True)
    k = as_int(top_k, fn, "top_k", 0, 2**31 - 1)
    shape = _shape(logits)
    tok = empty_like_ns(logits, shape[:1], "int32", fn, "tokens") if out is None else out
    _C.sample_tokens((t, k, p), logits, rng, active, tok)
    return finish(logits, tok)
