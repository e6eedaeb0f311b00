"""Independent NumPy float64 reference of the dense ops, written from the formulas of
DEEPSEEK_V3.md sections 0.3, 2.4 and 3 and the C ABI's comments (not from the library's code).

Every forward takes arrays of any float dtype (float32, ml_dtypes.bfloat16, float64) and
computes in float64; every `*_backward` is the analytic gradient, written out by hand.
`central_fd` is a generic central finite-difference gradient used to check both the
analytic reference gradients and the library's backward passes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


# ----------------------------------------------------------------------------- dtypes


def f64(x) -> np.ndarray:
    """float64 copy of any array (NumPy, ml_dtypes.bfloat16, ...): bf16 widens exactly."""
    return np.array(x, dtype=np.float64)


def to_bf16(x) -> np.ndarray:
    """Round to bfloat16 (round to nearest even), as an ml_dtypes.bfloat16 array."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(BF16)


def round_bf16(x) -> np.ndarray:
    """float64 values rounded to the nearest bfloat16 (emulates storing in bf16)."""
    return f64(to_bf16(x))


def round_f32(x) -> np.ndarray:
    """float64 values rounded to the nearest float32."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def cast(x, dtype) -> np.ndarray:
    """x (float64) stored in `dtype` ('float32', 'bfloat16' or a NumPy dtype), C-contiguous."""
    dt = BF16 if str(dtype) == "bfloat16" else np.dtype(dtype)
    if dt == BF16:
        return np.ascontiguousarray(to_bf16(x))
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64).astype(dt))


# ----------------------------------------------------------------------------- finite differences


def central_fd(f: Callable[..., np.ndarray], args: Sequence[np.ndarray], wrt: int,
               dy: Optional[np.ndarray] = None, h: float = 1e-6) -> np.ndarray:
    """Gradient of the scalar sum(f(*args) * dy) with respect to args[wrt], by central
    differences in float64 (step h). dy=None means f returns a scalar."""
    args = [f64(a) if isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype == BF16) else a
            for a in args]
    x = args[wrt]
    g = np.zeros_like(x)

    def scalar(xv):
        a = list(args)
        a[wrt] = xv
        out = f64(f(*a))
        return float(out.sum()) if dy is None else float((out * f64(dy)).sum())

    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for i in range(flat.size):
        xp = flat.copy()
        xm = flat.copy()
        xp[i] += h
        xm[i] -= h
        gflat[i] = (scalar(xp.reshape(x.shape)) - scalar(xm.reshape(x.shape))) / (2 * h)
    return g


# ----------------------------------------------------------------------------- RMSNorm


def rms_norm_rstd(x, eps=1e-6) -> np.ndarray:
    x = f64(x)
    return 1.0 / np.sqrt(np.mean(x * x, axis=-1) + eps)


def rms_norm(x, w, eps=1e-6) -> np.ndarray:
    """y = w * x / sqrt(mean(x^2) + eps) over the last dim."""
    x, w = f64(x), f64(w)
    return w * x * rms_norm_rstd(x, eps)[..., None]


def rms_norm_backward(dy, x, w, eps=1e-6):
    """(dx, dw). With r = (mean(x^2)+eps)^-1/2 and g = w*dy:
    dx = r*g - x * r^3 * mean(g*x);   dw = sum over rows of dy * x * r."""
    dy, x, w = f64(dy), f64(x), f64(w)
    r = rms_norm_rstd(x, eps)[..., None]
    g = w * dy
    dx = r * g - x * r ** 3 * np.mean(g * x, axis=-1, keepdims=True)
    dw = (dy * x * r).reshape(-1, x.shape[-1]).sum(axis=0)
    return dx, dw


# ----------------------------------------------------------------------------- RoPE / YaRN


def yarn_m(factor: float, mscale: float) -> float:
    """m(f, x) = 0.1 * x * ln(f) + 1 if f > 1 else 1."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_inv_freq(dim: int, theta: float = 10000.0, scaling: Optional[dict] = None) -> np.ndarray:
    """theta_i = theta^(-2i/dim), i < dim/2; with YaRN (factor > 1), blended towards
    theta_i / factor by the ramp r_i = clamp((i - low)/(high - low), 0, 1) where
    low = max(floor(cd(beta_fast)), 0), high = min(ceil(cd(beta_slow)), dim - 1),
    cd(r) = dim * ln(L0 / (2 pi r)) / (2 ln theta); high += 0.001 when low == high."""
    i = np.arange(dim // 2, dtype=np.float64)
    base = theta ** (-2.0 * i / dim)
    if not scaling or float(scaling.get("factor", 1.0)) <= 1.0:
        return base
    factor = float(scaling["factor"])
    L0 = float(scaling.get("original_max_position_embeddings", 4096))
    bf, bs = float(scaling.get("beta_fast", 32)), float(scaling.get("beta_slow", 1))

    def cd(r):
        return dim * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(theta))

    low = max(math.floor(cd(bf)), 0)
    high = min(math.ceil(cd(bs)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    return base * (1 - ramp) + base / factor * ramp


def rope_cos_sin_scale(scaling: Optional[dict] = None) -> float:
    """m(factor, mscale) / m(factor, mscale_all_dim); 1 without YaRN."""
    if not scaling:
        return 1.0
    f = float(scaling["factor"])
    return yarn_m(f, float(scaling.get("mscale", 1.0))) / yarn_m(f, float(scaling.get("mscale_all_dim", 0.0)))


def rope_softmax_scale(qk_head_dim: int, scaling: Optional[dict] = None) -> float:
    """qk_head_dim^-1/2 * m(factor, mscale_all_dim)^2."""
    s = qk_head_dim ** -0.5
    if not scaling:
        return s
    return s * yarn_m(float(scaling["factor"]), float(scaling.get("mscale_all_dim", 0.0))) ** 2


def _rope_cos_sin(x_shape, positions, inv_freq, scale):
    """cos, sin [B, T, (1,) D/2] * scale, broadcastable against the pairs of x."""
    ang = f64(positions)[..., None] * f64(inv_freq)  # [B, T, D/2]
    if len(x_shape) == 4:
        ang = ang[:, :, None, :]
    return np.cos(ang) * scale, np.sin(ang) * scale


def _pairs(x, layout):
    d = x.shape[-1]
    if layout == "interleaved":
        return x[..., 0::2], x[..., 1::2]
    return x[..., : d // 2], x[..., d // 2:]


def _unpairs(a, b, layout):
    if layout == "interleaved":
        out = np.empty(a.shape[:-1] + (2 * a.shape[-1],))
        out[..., 0::2], out[..., 1::2] = a, b
        return out
    return np.concatenate([a, b], axis=-1)


def rope(x, positions, layout="interleaved", theta=10000.0, scaling=None, inv_freq=None):
    """Rotate pair i of the last dim by angle p * inv_freq_i, times the cos/sin scale:
    (a, b) -> (a cos - b sin, a sin + b cos). Pairs: (x[2i], x[2i+1]) interleaved,
    (x[i], x[i + D/2]) half. x [B,T,H,D] or [B,T,D], positions [B,T]."""
    x = f64(x)
    if inv_freq is None:
        inv_freq = rope_inv_freq(x.shape[-1], theta, scaling)
    c, s = _rope_cos_sin(x.shape, positions, inv_freq, rope_cos_sin_scale(scaling))
    a, b = _pairs(x, layout)
    return _unpairs(a * c - b * s, a * s + b * c, layout)


def rope_backward(dy, positions, layout="interleaved", theta=10000.0, scaling=None, inv_freq=None):
    """dx = R^T dy: (da, db) = (dA cos + dB sin, -dA sin + dB cos), times the scale."""
    dy = f64(dy)
    if inv_freq is None:
        inv_freq = rope_inv_freq(dy.shape[-1], theta, scaling)
    c, s = _rope_cos_sin(dy.shape, positions, inv_freq, rope_cos_sin_scale(scaling))
    da, db = _pairs(dy, layout)
    return _unpairs(da * c + db * s, -da * s + db * c, layout)


def interleaved_to_half_perm(d: int) -> np.ndarray:
    """Index permutation [0, 2, ..., d-2, 1, 3, ..., d-1] (HF's view(d/2, 2).T.flatten())."""
    return np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])


# ----------------------------------------------------------------------------- matmul / linear


def matmul(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    """alpha * op(a) @ op(b) + beta * c; a 2-D or 3-D, b 2-D (shared) or 3-D."""
    a, b = f64(a), f64(b)
    if trans_a:
        a = np.swapaxes(a, -1, -2)
    if trans_b:
        b = np.swapaxes(b, -1, -2)
    out = alpha * (a @ b)
    if beta != 0.0:
        out = out + beta * f64(c)
    return out


def linear(x, w):
    """y = x @ w^T, x [..., K], w [N, K]."""
    return f64(x) @ f64(w).T


def linear_backward(dy, x, w):
    """(dx = dy @ w, dw = dy^T @ x over all leading dims)."""
    dy, x, w = f64(dy), f64(x), f64(w)
    dx = dy @ w
    dw = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return dx, dw


# ----------------------------------------------------------------------------- SwiGLU


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def swiglu(gate, up):
    """silu(g) * u, silu(g) = g * sigmoid(g)."""
    g, u = f64(gate), f64(up)
    return g * _sigmoid(g) * u


def swiglu_backward(dout, gate, up):
    """dgate = dout * u * s * (1 + g (1 - s)), dup = dout * g * s, s = sigmoid(g)."""
    d, g, u = f64(dout), f64(gate), f64(up)
    s = _sigmoid(g)
    return d * u * s * (1 + g * (1 - s)), d * g * s


# ----------------------------------------------------------------------------- embedding


def embedding(ids, table):
    """table[ids]."""
    return f64(table)[np.asarray(ids, dtype=np.int64)]


def embedding_backward(dout, ids, num_embeddings):
    """dtable [V, D]: rows of dout scatter-added by id (repeats accumulate)."""
    dout = f64(dout)
    d = dout.shape[-1]
    dt = np.zeros((num_embeddings, d))
    np.add.at(dt, np.asarray(ids, dtype=np.int64).reshape(-1), dout.reshape(-1, d))
    return dt


# ----------------------------------------------------------------------------- cross-entropy


def logsumexp(z):
    z = f64(z)
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[..., 0]


def cross_entropy(logits, targets, ignore_index=-100, grad_scale=1.0):
    """(loss, dlogits): loss = mean over valid tokens of (logsumexp - logit[target]),
    0 with no valid token; dlogits = grad_scale * (softmax - onehot) / n_valid on valid
    rows, 0 on ignored rows."""
    z = f64(logits)
    V = z.shape[-1]
    z2 = z.reshape(-1, V)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    valid = t != ignore_index
    n = int(valid.sum())
    lse = logsumexp(z2)
    tt = np.where(valid, t, 0)
    per = lse - z2[np.arange(len(t)), tt]
    loss = float(per[valid].sum() / n) if n else 0.0
    p = np.exp(z2 - lse[:, None])
    p[np.arange(len(t)), tt] -= 1.0
    d = np.where(valid[:, None], p * (grad_scale / max(n, 1)), 0.0)
    return loss, d.reshape(z.shape)


def cross_entropy_loss(logits, targets, ignore_index=-100, grad_scale=1.0):
    """grad_scale * loss: the scalar whose gradient is dlogits (for finite differences)."""
    return grad_scale * cross_entropy(logits, targets, ignore_index)[0]


# ----------------------------------------------------------------------------- AdamW


def global_norm(tensors) -> float:
    return math.sqrt(sum(float((f64(t) ** 2).sum()) for t in tensors))


def adamw_step(params, grads, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.95, eps=1e-8,
               weight_decay=0.1, max_grad_norm=0.0, moments_bf16=False):
    """One AdamW step in float64 on lists; returns (new params, new m, new v, norm).
    c = min(1, max/(norm + 1e-6)) if max > 0 else 1; g = c * grad;
    p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    moments_bf16: the stored m and v are rounded to bfloat16 after the update."""
    norm = global_norm(grads)
    c = min(1.0, max_grad_norm / (norm + 1e-6)) if max_grad_norm > 0 else 1.0
    P, M, Vs = [], [], []
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        p, g, m, v = f64(p), f64(g) * c, f64(m), f64(v)
        p = p - lr * weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        if moments_bf16:
            m, v = round_bf16(m), round_bf16(v)
        P.append(p)
        M.append(m)
        Vs.append(v)
    return P, M, Vs, norm
