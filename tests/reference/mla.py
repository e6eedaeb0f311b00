"""Independent NumPy float64 reference of Multi-head Latent Attention (DeepSeek-V2/V3),
written from the formulas (DEEPSEEK_V3.md sections 2, 2.4 and 3): the naive path that
decompresses per-head keys and values, interleaved RoPE, YaRN frequencies and mscale.

`weights` maps Hugging Face names (with ".weight") to arrays laid out as in the checkpoints.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np


def yarn_m(factor: float, x: float) -> float:
    return 1.0 if factor <= 1.0 else 0.1 * x * math.log(factor) + 1.0


def inv_freq(dim: int, theta: float, scaling: Optional[Mapping]) -> np.ndarray:
    """theta_i = base^(-2i/dim), YaRN-blended between theta_i and theta_i / factor."""
    i = np.arange(dim // 2, dtype=np.float64)
    freq = theta ** (-2.0 * i / dim)
    if not scaling or float(scaling["factor"]) <= 1.0:
        return freq
    f = float(scaling["factor"])
    l0 = float(scaling.get("original_max_position_embeddings", 4096))
    bf, bs = float(scaling.get("beta_fast", 32)), float(scaling.get("beta_slow", 1))

    def cd(r: float) -> float:
        return dim * math.log(l0 / (r * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(cd(bf)), 0), min(math.ceil(cd(bs)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    return freq * (1 - ramp) + freq / f * ramp


def cos_sin_scale(scaling: Optional[Mapping]) -> float:
    if not scaling:
        return 1.0
    f = float(scaling["factor"])
    return yarn_m(f, float(scaling.get("mscale", 1.0))) / yarn_m(f, float(scaling.get("mscale_all_dim", 0.0)))


def softmax_scale(qk_head_dim: int, scaling: Optional[Mapping]) -> float:
    m = yarn_m(float(scaling["factor"]), float(scaling.get("mscale_all_dim", 0.0))) if scaling else 1.0
    return m * m / math.sqrt(qk_head_dim)


def rope_interleaved(x: np.ndarray, pos: np.ndarray, freq: np.ndarray, cs: float) -> np.ndarray:
    """Rotate pairs (x[2i], x[2i+1]) by pos * freq_i. x [..., D]; pos broadcastable to x[..., 0]."""
    ang = pos[..., None].astype(np.float64) * freq  # [..., D/2]
    c, s = np.cos(ang) * cs, np.sin(ang) * cs
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x, dtype=np.float64)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _w(weights: Mapping, name: str) -> np.ndarray:
    return np.asarray(weights[name + ".weight"], dtype=np.float64)


def _matmul_t(x, w):
    return x @ w.T


def mla_parts(x, weights, cfg, positions, lin=_matmul_t):
    """q [B,T,H,dqk] (rotated), ckv [B,T,R], kpe [B,T,dr] (rotated), all float64.
    lin(x, W) computes each projection x @ W^T (swap in an FP8 one to simulate it)."""
    x = np.asarray(x, np.float64)
    H, dn, dr = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
    R, eps = cfg.kv_lora_rank, cfg.rms_norm_eps
    B, T, _ = x.shape
    scaling = cfg.rope_scaling_dict
    freq, cs = inv_freq(dr, cfg.rope_theta, scaling), cos_sin_scale(scaling)
    pos = np.asarray(positions)
    if cfg.q_lora_rank:
        cq = rms_norm(lin(x, _w(weights, "q_a_proj")), _w(weights, "q_a_layernorm"), eps)
        q = lin(cq, _w(weights, "q_b_proj"))
    else:
        q = lin(x, _w(weights, "q_proj"))
    q = q.reshape(B, T, H, dn + dr).copy()
    q[..., dn:] = rope_interleaved(q[..., dn:], pos[:, :, None], freq, cs)
    kva = lin(x, _w(weights, "kv_a_proj_with_mqa"))
    ckv = rms_norm(kva[..., :R], _w(weights, "kv_a_layernorm"), eps)
    kpe = rope_interleaved(kva[..., R:], pos, freq, cs)
    return q, ckv, kpe


def attend(q, ckv, kpe, weights, cfg, mask, lin=_matmul_t):
    """Naive attention: q [B,Tq,H,dqk]; ckv [B,S,R], kpe [B,S,dr]; mask [B,Tq,S] bool
    (True = attend). Returns o_proj output [B,Tq,hidden]; rows with no key give 0."""
    H, dn, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
    B, S, _ = ckv.shape
    kv = lin(ckv, _w(weights, "kv_b_proj")).reshape(B, S, H, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    scale = softmax_scale(cfg.qk_head_dim, cfg.rope_scaling_dict)
    s = np.einsum("bthd,bshd->bhts", q[..., :dn], k_nope) + np.einsum("bthd,bsd->bhts", q[..., dn:], kpe)
    s = s * scale
    m = mask[:, None, :, :]
    s = np.where(m, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    p = np.where(m, np.exp(s - mx), 0.0)
    den = p.sum(-1, keepdims=True)
    p = p / np.where(den > 0, den, 1.0)
    o = np.einsum("bhts,bshd->bthd", p, v).reshape(B, q.shape[1], H * dv)
    return lin(o, _w(weights, "o_proj"))


def mla_forward(x, weights, cfg, positions=None, lin=_matmul_t):
    """Causal self-attention (mask by token index), float64 [B, T, hidden]."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(T), (B, T))
    q, ckv, kpe = mla_parts(x, weights, cfg, positions, lin)
    mask = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    return attend(q, ckv, kpe, weights, cfg, mask, lin)


def init_weights(cfg, rng, scale: float = 1.0) -> dict:
    """Random float32 weights of one attention layer (std ~ 1/sqrt(fan_in) * scale)."""
    out = {}
    for name, shape in cfg.mla_weight_shapes().items():
        if "layernorm" in name:
            out[name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * scale / math.sqrt(shape[1])).astype(np.float32)
    return out
