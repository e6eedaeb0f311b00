"""Independent NumPy float64 references of reinforcement learning and distillation:
per-token log-probabilities (and entropy) with their backward, GRPO advantages, the GRPO
loss in its three aggregations with the k3 KL estimator and clip-higher (the loss as a
function of the log-probabilities, and its gradient written the way an autograd framework
would propagate through min / clip / exp), the top-k of logits and the top-k KL of
distillation. Vectorized over whole arrays, not row loops like the C code. The analytic
gradients are checked against central differences in test_reference_selfcheck-style tests
(tests/test_grpo.py, tests/test_distill.py)."""

from __future__ import annotations

import numpy as np

IGNORE = -100


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = f64(z)
    m = z.max(-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))


# ----------------------------------------------------------------------------- token log-probabilities


def token_logprob(logits, targets, ignore_index=IGNORE):
    """(logprobs [...], entropy [...]) float64, 0 where targets == ignore_index."""
    ls = log_softmax(logits)
    t = np.asarray(targets)
    ok = t != ignore_index
    safe = np.where(ok, t, 0)
    lp = np.take_along_axis(ls, safe[..., None], -1)[..., 0]
    p = np.exp(ls)
    ent = -(p * np.where(p > 0, ls, 0.0)).sum(-1)
    return np.where(ok, lp, 0.0), np.where(ok, ent, 0.0)


def token_logprob_backward(logits, targets, dlogprobs, ignore_index=IGNORE):
    """dlogits = dlp * (onehot - softmax), 0 on ignored rows."""
    p = np.exp(log_softmax(logits))
    t = np.asarray(targets)
    ok = t != ignore_index
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, np.where(ok, t, 0)[..., None], 1.0, -1)
    return np.where(ok[..., None], f64(dlogprobs)[..., None] * (onehot - p), 0.0)


# ----------------------------------------------------------------------------- GRPO


def grpo_advantages(rewards, G, scale="group", std_eps=1e-4, drop=False):
    """(advantages [n], keep [n] int) of rewards [n] in groups of G (sample std, ddof=1)."""
    r = f64(rewards).reshape(-1, G)
    mean = r.mean(1, keepdims=True)
    if scale == "group":
        den = r.std(1, ddof=1, keepdims=True) + std_eps
    elif scale == "batch":
        den = f64(rewards).std(ddof=1) + std_eps
    else:
        den = 1.0
    adv = ((r - mean) / den).reshape(-1)
    equal = (r.max(1) == r.min(1))
    keep = np.repeat(~(drop & equal), G).astype(np.int32)
    return adv, keep


def _weights(mask, keep, loss_type, Lmax):
    """Per-token aggregation weights [B, T] (0 off the counted tokens)."""
    m = f64(mask != 0)
    if keep is not None:
        m = m * (np.asarray(keep) != 0)[:, None]
    n = m.sum(1)
    counted = n > 0
    S = counted.sum()
    if S == 0:
        return np.zeros_like(m)
    if loss_type == "grpo":
        return m / (S * np.where(counted, n, 1.0))[:, None]
    if loss_type == "dr_grpo":
        return m / (S * Lmax)
    return m / m.sum()


def grpo_token_terms(lp, adv, old=None, ref=None, eps_low=0.2, eps_high=0.2, beta=0.0):
    """(policy term, kl term) per token [B, T], both float64."""
    lp = f64(lp)
    rho = np.exp(lp - f64(old)) if old is not None else np.ones_like(lp)
    A = f64(adv)[:, None]
    pl = -np.minimum(rho * A, np.clip(rho, 1 - eps_low, 1 + eps_high) * A)
    kl = np.zeros_like(lp) if ref is None else np.exp(f64(ref) - lp) - (f64(ref) - lp) - 1
    return pl, kl


def grpo_loss(lp, adv, mask, old=None, ref=None, loss_type="dapo", eps_low=0.2, eps_high=0.2, beta=0.0, Lmax=None,
              keep=None):
    """The GRPO objective (float64) as a function of the log-probabilities lp [B, T]."""
    Lmax = np.asarray(lp).shape[1] if Lmax is None else Lmax
    pl, kl = grpo_token_terms(lp, adv, old, ref, eps_low, eps_high, beta)
    w = _weights(np.asarray(mask), keep, loss_type, Lmax)
    terms = pl + (beta * kl if beta > 0 else 0.0)
    return float((np.where(w > 0, terms, 0.0) * w).sum())


def grpo_loss_grad(lp, adv, mask, old=None, ref=None, loss_type="dapo", eps_low=0.2, eps_high=0.2, beta=0.0,
                   Lmax=None, keep=None):
    """dL/dlp [B, T], propagated like an autograd engine: d(-min(a, b)) goes to the smaller
    branch, d clip(rho) = 1 inside [1 - eps_low, 1 + eps_high] (bounds included), 0 outside;
    d rho / d lp = rho; d KL / d lp = 1 - exp(ref - lp)."""
    lp = f64(lp)
    Lmax = lp.shape[1] if Lmax is None else Lmax
    rho = np.exp(lp - f64(old)) if old is not None else np.ones_like(lp)
    A = np.broadcast_to(f64(adv)[:, None], lp.shape)
    lo, hi = 1 - eps_low, 1 + eps_high
    a, b = rho * A, np.clip(rho, lo, hi) * A
    inside = (rho >= lo) & (rho <= hi)
    # the branch the min takes (ties: both are the same function of rho there, one counted)
    d_a = np.where(a <= b, -A * rho, 0.0)
    d_b = np.where(a > b, -A * rho * inside, 0.0)
    g = d_a + d_b
    if ref is not None and beta > 0:
        g = g + beta * (1 - np.exp(f64(ref) - lp))
    w = _weights(np.asarray(mask), keep, loss_type, Lmax)
    return np.where(w > 0, g * w, 0.0)


def grpo_stats(lp, adv, mask, old=None, ref=None, eps_low=0.2, eps_high=0.2, keep=None):
    """Token means over the counted tokens of the policy term, KL, clip fractions, ratio."""
    m = np.asarray(mask) != 0
    if keep is not None:
        m = m & (np.asarray(keep) != 0)[:, None]
    pl, kl = grpo_token_terms(lp, adv, old, ref, eps_low, eps_high)
    rho = np.exp(f64(lp) - f64(old)) if old is not None else np.ones(np.asarray(lp).shape)
    A = f64(adv)[:, None]
    clo = (A < 0) & (rho < 1 - eps_low)
    chi = (A > 0) & (rho > 1 + eps_high)
    n = m.sum()
    mean = (lambda x: float(x[m].sum() / n)) if n else (lambda x: 0.0)
    return dict(policy_loss=mean(pl), kl=mean(kl), clip_low=mean(f64(clo)), clip_high=mean(f64(chi)),
                clip_region=mean(f64(clo | chi)), ratio_mean=mean(rho), tokens=float(n),
                sequences=float((m.sum(1) > 0).sum()))


# ----------------------------------------------------------------------------- distillation


def logits_topk(logits, k):
    """(values, indices): the k largest per row by (value desc, index asc), NaN last."""
    x = f64(logits)
    key = np.where(np.isnan(x), np.inf, -x)  # NaN after every number
    idx = np.argsort(key, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, -1), idx


def topk_kl(logits, t_idx, t_logits, targets, tau=1.0, ignore_index=IGNORE):
    """Mean over valid rows of KL(softmax(t_logits / tau) || log_softmax(logits / tau) at t_idx)."""
    lq = log_softmax(f64(logits) / tau)
    lp = log_softmax(f64(t_logits) / tau)
    p = np.exp(lp)
    lq_at = np.take_along_axis(lq, np.asarray(t_idx), -1)
    kl = (p * (lp - lq_at)).sum(-1)
    ok = np.asarray(targets) != ignore_index
    return float(kl[ok].sum() / ok.sum()) if ok.any() else 0.0


def topk_kl_grad(logits, t_idx, t_logits, targets, tau=1.0, ignore_index=IGNORE, grad_scale=1.0):
    """dL/dlogits = grad_scale / n_valid / tau * (q - scatter_add(p)) on valid rows."""
    q = np.exp(log_softmax(f64(logits) / tau))
    p = np.exp(log_softmax(f64(t_logits) / tau))
    ps = np.zeros_like(q)
    idx = np.asarray(t_idx)
    rows = np.indices(idx.shape)[:-1]
    np.add.at(ps, (*rows, idx), p)
    ok = np.asarray(targets) != ignore_index
    nv = ok.sum()
    if nv == 0:
        return np.zeros_like(q)
    return np.where(ok[..., None], grad_scale / nv / tau * (q - ps), 0.0)
