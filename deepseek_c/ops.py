"""Dense transformer ops: functional, forward and backward, on any DLPack array.

Every function accepts NumPy arrays (float32 or ml_dtypes.bfloat16), PyTorch tensors,
CuPy arrays, JAX arrays or deepseek_c.Tensor, returns outputs of the first array's
kind on its device, and writes them zero-copy. Arrays must be C-contiguous.
The `*_forward` functions return ``(output, ctx)`` where ``ctx`` keeps what the
matching ``*_backward`` needs. Errors: ValueError (shape, value, strides, device),
TypeError (dtype, not an array), deepseek_c.Error (runtime failures).

Shapes: N rows, D features, B batch, T tokens, H heads, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import _C
from ._arrays import INT64, Array, as_float, as_int, dtype_name, empty_like_ns, finish

__all__ = [
    "rms_norm", "rms_norm_forward", "rms_norm_backward", "RMSNormCtx",
    "rope", "rope_backward", "rope_inv_freq", "rope_softmax_scale", "rope_cos_sin_scale",
    "matmul", "linear", "linear_forward", "linear_backward", "LinearCtx",
    "swiglu", "swiglu_forward", "swiglu_backward", "SwiGLUCtx",
    "embedding", "embedding_forward", "embedding_backward", "EmbeddingCtx",
    "cross_entropy", "global_norm", "adamw_step",
]


def _shape(x: Array) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_array(x: Any, fn: str, arg: str) -> None:
    if not hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        raise TypeError(
            f"{fn}: {arg}: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), "
            f"got {type(x).__name__}"
        )


def _out(ref: Array, out: Optional[Array], shape: Sequence[int], dtype: str, fn: str, arg: str) -> Array:
    """`out` if given, else a new array like `ref` (already checked to be an array)."""
    return empty_like_ns(ref, shape, dtype, fn, arg) if out is None else out


# ----------------------------------------------------------------------------- RMSNorm


@dataclass
class RMSNormCtx:
    """What rms_norm_backward needs: the input, the weight, 1/rms per row, eps."""

    x: Array
    w: Array
    rstd: Array
    eps: float


def rms_norm(x: Array, w: Array, eps: float = 1e-6, *, out: Optional[Array] = None) -> Array:
    """y = w * x / sqrt(mean(x**2, -1) + eps), computed in float32.

    x: [..., D] float32 | bfloat16; w: [D], same dtype; out: like x (may be x itself).
    """
    fn = "dsc_rms_norm_forward"
    _check_array(x, fn, "x")
    y = _out(x, out, _shape(x), dtype_name(x), fn, "y")
    _C.rms_norm_forward(x, w, as_float(eps, fn, "eps"), y, None)
    return finish(x, y)


def rms_norm_forward(x: Array, w: Array, eps: float = 1e-6) -> tuple[Array, RMSNormCtx]:
    """Training form of rms_norm: returns (y, ctx); ctx.rstd is float32 [...]."""
    fn = "dsc_rms_norm_forward"
    _check_array(x, fn, "x")
    y = empty_like_ns(x, _shape(x), dtype_name(x), fn, "y")
    rstd = empty_like_ns(x, _shape(x)[:-1], "float32", fn, "rstd")
    eps = as_float(eps, fn, "eps")
    _C.rms_norm_forward(x, w, eps, y, rstd)
    return finish(x, y), RMSNormCtx(x, w, rstd, eps)


def rms_norm_backward(dy: Array, ctx: RMSNormCtx) -> tuple[Array, Array]:
    """(dx like x, dw float32 [D]) from dy [..., D]."""
    fn = "dsc_rms_norm_backward"
    if not isinstance(ctx, RMSNormCtx):
        raise TypeError(f"{fn}: ctx: expected the RMSNormCtx from rms_norm_forward, got {type(ctx).__name__}")
    _check_array(dy, fn, "dy")
    _check_array(ctx.x, fn, "ctx.x")
    _check_array(ctx.w, fn, "ctx.w")
    dx = empty_like_ns(dy, _shape(ctx.x), dtype_name(ctx.x), fn, "dx")
    dw = empty_like_ns(dy, _shape(ctx.w), "float32", fn, "dw")
    _C.rms_norm_backward(dy, ctx.x, ctx.w, ctx.rstd, as_float(ctx.eps, fn, "ctx.eps"), dx, dw)
    return finish(dy, dx), finish(dy, dw)


# ----------------------------------------------------------------------------- RoPE

_LAYOUTS = {"interleaved": 0, "half": 1}


def _rope_params(fn: str, dim: int, layout: str, theta: float, scaling: Optional[Mapping[str, Any]]) -> tuple:
    """The parameter tuple of the C RoPE functions from Hugging Face-style arguments."""
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        raise ValueError(f"{fn}: layout: expected 'interleaved' or 'half', got {layout!r}")
    dim = as_int(dim, fn, "dim")
    if scaling is None:
        return (_LAYOUTS[layout], dim, as_float(theta, fn, "theta"), 1.0, 4096, 32.0, 1.0, 1.0, 0.0)
    if not isinstance(scaling, Mapping):
        raise TypeError(f"{fn}: scaling: expected None or a rope_scaling dict, got {type(scaling).__name__}")
    kind = scaling.get("type", scaling.get("rope_type", "yarn"))
    if kind != "yarn":
        raise ValueError(f"{fn}: scaling: expected type 'yarn' (the DeepSeek-V2/V3 scaling), got {kind!r}")
    if "factor" not in scaling:
        raise ValueError(f"{fn}: scaling: expected a 'factor' key, got keys {sorted(scaling)}")
    def num(key: str, default: Any) -> float:
        return as_float(scaling.get(key, default), fn, f"scaling[{key!r}]")

    theta = as_float(scaling["rope_theta"], fn, "scaling['rope_theta']") if "rope_theta" in scaling else \
        as_float(theta, fn, "theta")
    return (
        _LAYOUTS[layout], dim, theta, num("factor", None),
        as_int(scaling.get("original_max_position_embeddings", 4096), fn,
               "scaling['original_max_position_embeddings']"),
        num("beta_fast", 32.0), num("beta_slow", 1.0), num("mscale", 1.0), num("mscale_all_dim", 0.0),
    )


def rope(x: Array, positions: Array, *, layout: str = "interleaved", theta: float = 10000.0,
         scaling: Optional[Mapping[str, Any]] = None, out: Optional[Array] = None) -> Array:
    """Rotary position embedding over the last dim of x.

    x: [B, T, H, D] or [B, T, D] float32 | bfloat16; positions: [B, T] int32 (>= 0).
    layout: 'interleaved' rotates pairs (x[2i], x[2i+1]) (DeepSeek checkpoints, GPT-J);
    'half' rotates (x[i], x[i + D/2]) (NeoX rotate_half).
    scaling: a Hugging Face ``rope_scaling`` dict for YaRN, e.g. DeepSeek-V3's
    ``{"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}``; cos and
    sin are multiplied by YaRN's attention factor m(factor, mscale)/m(factor, mscale_all_dim).
    """
    fn = "dsc_rope_forward"
    _check_array(x, fn, "x")
    p = _rope_params(fn, _shape(x)[-1] if len(_shape(x)) else 0, layout, theta, scaling)
    y = _out(x, out, _shape(x), dtype_name(x), fn, "y")
    _C.rope_forward(x, positions, p, y)
    return finish(x, y)


def rope_backward(dy: Array, positions: Array, *, layout: str = "interleaved", theta: float = 10000.0,
                  scaling: Optional[Mapping[str, Any]] = None) -> Array:
    """The gradient of rope: the inverse rotation of dy (same arguments as rope)."""
    fn = "dsc_rope_backward"
    _check_array(dy, fn, "dy")
    p = _rope_params(fn, _shape(dy)[-1] if len(_shape(dy)) else 0, layout, theta, scaling)
    dx = empty_like_ns(dy, _shape(dy), dtype_name(dy), fn, "dx")
    _C.rope_backward(dy, positions, p, dx)
    return finish(dy, dx)


def rope_inv_freq(dim: int, *, theta: float = 10000.0, scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """Inverse frequencies [dim/2] float32, YaRN-corrected when scaling is given."""
    p = _rope_params("dsc_rope_inv_freq", dim, "interleaved", theta, scaling)
    return np.asarray(_C.rope_inv_freq(p), dtype=np.float32)


def rope_cos_sin_scale(*, scaling: Optional[Mapping[str, Any]] = None) -> float:
    """YaRN's multiplier on cos/sin (1.0 without scaling and for DeepSeek-V3)."""
    p = _rope_params("dsc_rope_cos_sin_scale", 2, "interleaved", 10000.0, scaling)
    return _C.rope_scales(p, 1)[0]


def rope_softmax_scale(qk_head_dim: int, *, scaling: Optional[Mapping[str, Any]] = None) -> float:
    """Attention softmax scale: qk_head_dim**-0.5 * m(factor, mscale_all_dim)**2."""
    p = _rope_params("dsc_rope_softmax_scale", 2, "interleaved", 10000.0, scaling)
    return _C.rope_scales(p, as_int(qk_head_dim, "dsc_rope_softmax_scale", "qk_head_dim"))[1]


# ----------------------------------------------------------------------------- matmul / linear


def matmul(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
           beta: float = 0.0, out: Optional[Array] = None, bf16_operands: bool = False) -> Array:
    """out = alpha * op(a) @ op(b) + beta * out, with FP32 accumulation.

    a: [M, K] ([K, M] with trans_a) or batched [Bt, ., .]; b: [K, N] ([N, K] with trans_b),
    batched [Bt, ., .] or 2-D shared by the batch. All float32 or all bfloat16.
    beta != 0 needs out= (it is read).
    bf16_operands: the context math mode DSC_MATH_BF16_OPERANDS for this call: on CUDA,
    float32 a and b may be rounded to BF16 for the tensor cores (cuBLASLt
    CUBLAS_COMPUTE_32F_FAST_16BF, FP32 accumulation); the CPU computes exact float32.
    """
    fn = "dsc_matmul"
    _check_array(a, fn, "a")
    _check_array(b, fn, "b")
    alpha = as_float(alpha, fn, "alpha")
    beta = as_float(beta, fn, "beta")
    if beta != 0.0 and out is None:
        raise ValueError(f"{fn}: out: expected an array to accumulate into when beta != 0, got None")
    sa, sb = _shape(a), _shape(b)
    if out is None:
        if len(sa) not in (2, 3) or len(sb) not in (2, 3):
            raise ValueError(f"{fn}: a, b: expected 2-D or 3-D arrays, got shapes {sa} and {sb}")
        m = sa[-1] if trans_a else sa[-2]
        n = sb[-2] if trans_b else sb[-1]
        shape = (sa[0], m, n) if len(sa) == 3 else (m, n)
        out = empty_like_ns(a, shape, dtype_name(a), fn, "out")
    _C.matmul(a, b, out, bool(trans_a), bool(trans_b), alpha, beta, 1 if bf16_operands else 0)
    return finish(a, out)


@dataclass
class LinearCtx:
    """What linear_backward needs: the input and the weight."""

    x: Array
    w: Array


def linear(x: Array, w: Array, *, out: Optional[Array] = None) -> Array:
    """y = x @ w.T (no bias). x: [..., K], w: [N, K] -> y: [..., N]."""
    fn = "dsc_linear_forward"
    _check_array(x, fn, "x")
    _check_array(w, fn, "w")
    sx, sw = _shape(x), _shape(w)
    if out is None and (len(sx) < 1 or len(sw) != 2):
        raise ValueError(f"{fn}: x, w: expected x (..., K) and w (N, K), got {sx} and {sw}")
    y = _out(x, out, sx[:-1] + (sw[0],), dtype_name(x), fn, "y")
    _C.linear_forward(x, w, y)
    return finish(x, y)


def linear_forward(x: Array, w: Array) -> tuple[Array, LinearCtx]:
    """Training form of linear: (y, ctx)."""
    return linear(x, w), LinearCtx(x, w)


def linear_backward(dy: Array, ctx: LinearCtx) -> tuple[Array, Array]:
    """(dx = dy @ w, dw = dy^T @ x); dx like x, dw like w."""
    fn = "dsc_linear_backward"
    if not isinstance(ctx, LinearCtx):
        raise TypeError(f"{fn}: ctx: expected the LinearCtx from linear_forward, got {type(ctx).__name__}")
    _check_array(dy, fn, "dy")
    _check_array(ctx.x, fn, "ctx.x")
    _check_array(ctx.w, fn, "ctx.w")
    dx = empty_like_ns(dy, _shape(ctx.x), dtype_name(ctx.x), fn, "dx")
    dw = empty_like_ns(dy, _shape(ctx.w), dtype_name(ctx.w), fn, "dw")
    _C.linear_backward(dy, ctx.x, ctx.w, dx, dw)
    return finish(dy, dx), finish(dy, dw)


# ----------------------------------------------------------------------------- SwiGLU


@dataclass
class SwiGLUCtx:
    """What swiglu_backward needs: both inputs."""

    gate: Array
    up: Array


def swiglu(gate: Array, up: Array, *, out: Optional[Array] = None) -> Array:
    """silu(gate) * up, elementwise. gate, up: [..., F] float32 | bfloat16."""
    fn = "dsc_swiglu_forward"
    _check_array(gate, fn, "gate")
    o = _out(gate, out, _shape(gate), dtype_name(gate), fn, "out")
    _C.swiglu_forward(gate, up, o)
    return finish(gate, o)


def swiglu_forward(gate: Array, up: Array) -> tuple[Array, SwiGLUCtx]:
    """Training form of swiglu: (out, ctx)."""
    return swiglu(gate, up), SwiGLUCtx(gate, up)


def swiglu_backward(dout: Array, ctx: SwiGLUCtx) -> tuple[Array, Array]:
    """(dgate, dup), both like gate."""
    fn = "dsc_swiglu_backward"
    if not isinstance(ctx, SwiGLUCtx):
        raise TypeError(f"{fn}: ctx: expected the SwiGLUCtx from swiglu_forward, got {type(ctx).__name__}")
    _check_array(dout, fn, "dout")
    _check_array(ctx.gate, fn, "ctx.gate")
    _check_array(ctx.up, fn, "ctx.up")
    dg = empty_like_ns(dout, _shape(ctx.gate), dtype_name(ctx.gate), fn, "dgate")
    du = empty_like_ns(dout, _shape(ctx.up), dtype_name(ctx.up), fn, "dup")
    _C.swiglu_backward(dout, ctx.gate, ctx.up, dg, du)
    return finish(dout, dg), finish(dout, du)


# ----------------------------------------------------------------------------- embedding


@dataclass
class EmbeddingCtx:
    """What embedding_backward needs: the ids and the table's shape."""

    ids: Array
    num_embeddings: int
    dim: int


def embedding(ids: Array, table: Array, *, out: Optional[Array] = None) -> Array:
    """table[ids]: ids [...] int32 | int64 in [0, V), table [V, D] -> [..., D].

    The output lives in the namespace/device of `table` (ids are often host-built).
    """
    fn = "dsc_embedding_forward"
    _check_array(ids, fn, "ids")
    _check_array(table, fn, "table")
    st = _shape(table)
    if out is None and len(st) != 2:
        raise ValueError(f"{fn}: table: expected 2 dims (V, D), got {len(st)} dims {st}")
    o = out if out is not None else empty_like_ns(table, _shape(ids) + (st[1],), dtype_name(table), fn, "out")
    _C.embedding_forward(ids, table, o)
    return finish(table, o)


def embedding_forward(ids: Array, table: Array) -> tuple[Array, EmbeddingCtx]:
    """Training form of embedding: (out, ctx)."""
    o = embedding(ids, table)
    st = _shape(table)
    return o, EmbeddingCtx(ids, st[0], st[1])


def embedding_backward(dout: Array, ctx: EmbeddingCtx) -> Array:
    """dtable float32 [V, D]: the rows of dout scatter-added by id."""
    fn = "dsc_embedding_backward"
    if not isinstance(ctx, EmbeddingCtx):
        raise TypeError(f"{fn}: ctx: expected the EmbeddingCtx from embedding_forward, got {type(ctx).__name__}")
    _check_array(dout, fn, "dout")
    shape = (as_int(ctx.num_embeddings, fn, "ctx.num_embeddings", 0, INT64[1]),
             as_int(ctx.dim, fn, "ctx.dim", 0, INT64[1]))
    dt = empty_like_ns(dout, shape, "float32", fn, "dtable")
    _C.embedding_backward(ctx.ids, dout, dt)
    return finish(dout, dt)


# ----------------------------------------------------------------------------- cross-entropy


def cross_entropy(logits: Array, targets: Array, *, ignore_index: int = -100, grad_scale: float = 1.0,
                  return_dlogits: bool = True) -> tuple[Array, Optional[Array]]:
    """Fused softmax cross-entropy, mean over tokens whose target != ignore_index.

    logits: [..., V] float32 | bfloat16; targets: [...] int32 | int64.
    Returns (loss, dlogits): loss is a 0-d float32 array (0 when no token is valid);
    dlogits = grad_scale * (softmax - onehot) / n_valid, zero on ignored rows, like logits
    (None with return_dlogits=False).
    """
    fn = "dsc_cross_entropy"
    _check_array(logits, fn, "logits")
    loss = empty_like_ns(logits, (), "float32", fn, "loss")
    dl = empty_like_ns(logits, _shape(logits), dtype_name(logits), fn, "dlogits") if return_dlogits else None
    _C.cross_entropy(logits, targets, as_int(ignore_index, fn, "ignore_index", *INT64),
                     as_float(grad_scale, fn, "grad_scale"), loss, dl, None)
    return finish(logits, loss), (finish(logits, dl) if dl is not None else None)


# ----------------------------------------------------------------------------- optimizer


def _array_list(v: Any, fn: str, arg: str) -> list:
    """A list or tuple of arrays as a list (an array itself is refused: it is not a list of
    tensors, and iterating it would hand out its rows)."""
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{fn}: {arg}: expected a list of arrays, got {type(v).__name__}")
    return list(v)


def global_norm(tensors: Sequence[Array]) -> float:
    """sqrt(sum of squares) over a list of float32 arrays (accumulated in float64)."""
    return _C.global_norm(_array_list(tensors, "dsc_global_norm", "tensors"))


def adamw_step(params: Sequence[Array], grads: Sequence[Array], exp_avg: Sequence[Array],
               exp_avg_sq: Sequence[Array], *, lr: float, step: int, beta1: float = 0.9,
               beta2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
               max_grad_norm: float = 0.0) -> float:
    """One AdamW step, in place, over lists of float32 master weights.

    exp_avg / exp_avg_sq: float32 or bfloat16 moments of the same shapes. Decoupled
    weight decay (p -= lr * weight_decay * p), bias correction with the 1-based `step`.
    max_grad_norm > 0 clips by the global norm of all grads (grads are not modified).
    Returns the global gradient norm before clipping.
    """
    fn = "dsc_adamw_step"
    step = as_int(step, fn, "step", *INT64)
    f = {name: as_float(v, fn, name, finite=True)
         for name, v in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                         ("weight_decay", weight_decay), ("max_grad_norm", max_grad_norm))}
    lists = [_array_list(v, fn, name) for name, v in (("params", params), ("grads", grads), ("exp_avg", exp_avg),
                                                         ("exp_avg_sq", exp_avg_sq))]
    return _C.adamw_step(*lists, f["lr"], f["beta1"], f["beta2"], f["eps"], f["weight_decay"], step,
                         f["max_grad_norm"])
