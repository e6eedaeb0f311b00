"""DeepSeekMoE: routing, balancing, dispatch/combine, grouped expert GEMMs and the whole
MoE layer, forward and backward, on any DLPack array (outputs come back in the first
array's kind and on its device, written zero-copy by the C core).

Shapes: T tokens, E routed experts, k experts per token, D hidden, F expert
intermediate size, R permuted rows (R = sum over experts of count_e rounded up to align).

Routing follows DeepSeek-V3 (``scoring="sigmoid"``, ``topk_method="noaux_tc"``: the
correction bias picks the experts but never enters the weights; group score = sum of the
two best biased affinities; excluded groups masked with -inf) and DeepSeek-V2
(``scoring="softmax"``, ``topk_method="greedy" | "group_limited_greedy"``, group score =
max). Ties go to the lower expert index, for groups and experts alike. Dropless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

import numpy as np

from . import _C
from ._C import Error
from ._arrays import INT64, Array, as_float, as_int, device_of, dtype_name, empty_like_ns, finish, namespace

__all__ = [
    "MoERoute", "moe_route", "moe_route_backward", "moe_expert_load", "moe_update_bias",
    "moe_load_stats", "SeqAuxCtx", "moe_seq_aux_loss", "moe_seq_aux_loss_backward",
    "MoEPermute", "moe_permute_rows", "moe_permute", "moe_permute_backward", "moe_unpermute",
    "moe_unpermute_backward", "grouped_linear", "grouped_linear_backward",
    "MoEConfig", "MoECtx", "moe_forward", "moe_backward",
    "MoELayerCtx", "moe_layer_forward", "moe_layer_backward",
]

_SCORING = {"sigmoid": 0, "softmax": 1}
_METHODS = {"noaux_tc": 0, "greedy": 1, "group_limited_greedy": 2}


def _shape(x: Array) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _arr(x: Any, fn: str, arg: str) -> None:
    if not hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        raise TypeError(
            f"{fn}: {arg}: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), "
            f"got {type(x).__name__}"
        )


def _int(v: Any, fn: str, arg: str, bits: int = 32) -> int:
    """An int parameter (int32, or int64 with bits=64): TypeError / ValueError naming it."""
    return as_int(v, fn, arg, *(INT64 if bits == 64 else (-(1 << 31), (1 << 31) - 1)))


def _num(v: Any, fn: str, arg: str) -> float:
    return as_float(v, fn, arg, finite=True)


def _ndim(x: Array, n: int, fn: str, arg: str, what: str) -> tuple[int, ...]:
    s = _shape(x)
    if len(s) != n:
        raise ValueError(f"{fn}: {arg}: expected {n} dims {what}, got {len(s)} dims {s}")
    return s


# ----------------------------------------------------------------------------- routing


@dataclass
class MoERoute:
    """The result of moe_route: the choice and what moe_route_backward needs.

    indices [T, k] int32 (best first), weights [T, k] float32, scores [T, E] float32
    (the affinities s: sigmoid or softmax of the logits, before the bias).
    """

    indices: Array
    weights: Array
    scores: Array
    params: tuple
    logits_dtype: str
    n_experts: int

    @property
    def top_k(self) -> int:
        return self.params[0]


def _route_params(fn: str, top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob,
                  route_scale) -> tuple:
    if scoring not in _SCORING:
        raise ValueError(f"{fn}: scoring: expected 'sigmoid' or 'softmax', got {scoring!r}")
    if topk_method not in _METHODS:
        raise ValueError(
            f"{fn}: topk_method: expected 'noaux_tc', 'greedy' or 'group_limited_greedy', got {topk_method!r}")
    k = _int(top_k, fn, "top_k")
    g = _int(n_group, fn, "n_group")
    tg = _int(topk_group, fn, "topk_group")
    if k < 1:
        raise ValueError(f"{fn}: top_k: expected a number >= 1, got {k}")
    return (k, g, tg, _SCORING[scoring], _METHODS[topk_method], int(bool(norm_topk_prob)),
            _num(route_scale, fn, "route_scale"))


def moe_route(logits: Array, bias: Optional[Array] = None, *, top_k: int = 8, n_group: int = 8,
              topk_group: int = 4, scoring: str = "sigmoid", topk_method: str = "noaux_tc",
              norm_topk_prob: bool = True, route_scale: float = 2.5) -> MoERoute:
    """Route T tokens to top_k of E experts.

    logits: [T, E] float32 | bfloat16 router logits (compute them in float32).
    bias: [E] float32 e_score_correction_bias (V3; selection only) or None.
    V3: scoring="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, route_scale=2.5.
    V2: scoring="softmax", bias=None, topk_method="greedy" (V2-Lite) or
    "group_limited_greedy" (V2), norm_topk_prob=False, route_scale 1.0 / 16.0.
    Returns a MoERoute with .indices [T, k] int32, .weights [T, k] float32, .scores [T, E].
    """
    fn = "dsc_moe_route"
    _arr(logits, fn, "logits")
    p = _route_params(fn, top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob, route_scale)
    T, E = _ndim(logits, 2, fn, "logits", "(tokens, n_experts)")
    if bias is not None:
        _arr(bias, fn, "bias")
    if p[0] > E:
        raise ValueError(f"{fn}: top_k: expected 1 <= top_k <= n_experts = {E}, got {p[0]}")
    idx = empty_like_ns(logits, (T, p[0]), "int32", fn, "indices")
    w = empty_like_ns(logits, (T, p[0]), "float32", fn, "weights")
    s = empty_like_ns(logits, (T, E), "float32", fn, "scores")
    _C.moe_route(logits, bias, p, idx, w, s)
    return MoERoute(finish(logits, idx), finish(logits, w), finish(logits, s), p, dtype_name(logits), E)


def moe_route_backward(dweights: Array, r: MoERoute, dscores: Optional[Array] = None) -> Array:
    """dL/dlogits [T, E] (dtype of the logits) from dL/dweights [T, k] float32.

    dscores: optional extra dL/dscores [T, E] float32 (e.g. from moe_seq_aux_loss_backward),
    added before the chain through sigmoid/softmax. No gradient reaches the bias.
    """
    fn = "dsc_moe_route_backward"
    if not isinstance(r, MoERoute):
        raise TypeError(f"{fn}: r: expected the MoERoute from moe_route, got {type(r).__name__}")
    _arr(dweights, fn, "dweights")
    _arr(r.scores, fn, "scores")
    dl = empty_like_ns(dweights, _shape(r.scores), r.logits_dtype, fn, "dlogits")
    _C.moe_route_backward(r.params, dweights, r.scores, r.indices, dscores, dl)
    return finish(dweights, dl)


# ----------------------------------------------------------------------------- balancing


def moe_expert_load(indices: Array, n_experts: int) -> Array:
    """Tokens per expert: counts [E] int64 of the expert ids in indices (any shape)."""
    fn = "dsc_moe_expert_load"
    _arr(indices, fn, "indices")
    E = _int(n_experts, fn, "n_experts")
    if E < 1:
        raise ValueError(f"{fn}: n_experts: expected a number >= 1, got {E}")
    c = empty_like_ns(indices, (E,), "int64", fn, "counts")
    _C.moe_expert_load(indices, c)
    return finish(indices, c)


def moe_update_bias(bias: Array, load: Array, rate: float = 1e-3) -> Array:
    """Auxiliary-loss-free balancing step: bias += rate * sign(mean(load) - load).

    bias [E] float32 is updated in place when it is writable (and returned); a read-only
    NumPy array is copied first. load [E] int32 | int64 (from moe_expert_load).
    """
    fn = "dsc_moe_update_bias"
    _arr(bias, fn, "bias")
    _arr(load, fn, "load")
    r = _num(rate, fn, "rate")
    if isinstance(bias, np.ndarray) and not bias.flags.writeable:
        bias = bias.copy()
    _C.moe_update_bias(bias, load, r)
    return bias


def moe_load_stats(load: Any) -> dict[str, float]:
    """Monitoring numbers of one layer's expert load (counts per expert):
    max_over_mean (1 = perfectly balanced), min, max and cv (std / mean)."""
    from . import to_numpy

    c = np.asarray(to_numpy(load) if hasattr(load, "__dlpack__") else load, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("moe_load_stats: load: expected at least one expert, got an empty array")
    mean = float(c.mean())
    return dict(
        max_over_mean=float(c.max() / mean) if mean > 0 else float("nan"),
        min=float(c.min()), max=float(c.max()),
        cv=float(c.std() / mean) if mean > 0 else float("nan"),
    )


@dataclass
class SeqAuxCtx:
    """What moe_seq_aux_loss_backward needs."""

    scores: Array
    indices: Array
    seq_len: int
    alpha: float


def moe_seq_aux_loss(scores: Array, indices: Array, seq_len: int, alpha: float = 1e-4) -> tuple[Array, SeqAuxCtx]:
    """Complementary sequence-wise balance loss of DeepSeek-V3 (eqs. 17-20), averaged over
    the T / seq_len sequences: alpha * sum_i f_i P_i with f from the routed indices and P
    from s / sum(s). scores [T, E] float32 (MoERoute.scores), indices [T, k].
    Returns (loss 0-d float32, ctx for moe_seq_aux_loss_backward)."""
    fn = "dsc_moe_seq_aux_loss"
    _arr(scores, fn, "scores")
    _arr(indices, fn, "indices")
    L = _int(seq_len, fn, "seq_len", 64)
    a = _num(alpha, fn, "alpha")
    loss = empty_like_ns(scores, (), "float32", fn, "loss")
    _C.moe_seq_aux_loss(scores, indices, L, a, loss, None)
    return finish(scores, loss), SeqAuxCtx(scores, indices, L, a)


def moe_seq_aux_loss_backward(ctx: SeqAuxCtx, grad: float = 1.0) -> Array:
    """dL/dscores [T, E] float32 for dL/dloss = grad (pass it to moe_route_backward)."""
    fn = "dsc_moe_seq_aux_loss"
    if not isinstance(ctx, SeqAuxCtx):
        raise TypeError(f"{fn}: ctx: expected the SeqAuxCtx from moe_seq_aux_loss, got {type(ctx).__name__}")
    g = _num(grad, fn, "grad")
    _arr(ctx.scores, fn, "scores")
    L = _int(ctx.seq_len, fn, "seq_len", 64)
    alpha = _num(ctx.alpha, fn, "alpha") * g
    loss = empty_like_ns(ctx.scores, (), "float32", fn, "loss")
    ds = empty_like_ns(ctx.scores, _shape(ctx.scores), "float32", fn, "dscores")
    _C.moe_seq_aux_loss(ctx.scores, ctx.indices, L, as_float(alpha, fn, "alpha * grad"), loss, ds)
    return finish(ctx.scores, ds)


# ----------------------------------------------------------------------------- dispatch / combine


@dataclass
class MoEPermute:
    """Tokens in the contiguous per-expert layout.

    x [R, D]: expert e owns rows group_offsets[e] .. group_offsets[e+1]-1 (its tokens in
    token order, then zero padding up to a multiple of align); group_offsets [E+1] int32;
    row_map [T, k] int32: the row of (token, slot); counts [E] int64: tokens per expert.
    """

    x: Array
    group_offsets: Array
    row_map: Array
    counts: Array
    n_tokens: int
    n_experts: int
    align: int


def moe_permute_rows(indices: Array, n_experts: int, align: int = 128) -> int:
    """R = sum_e roundup(count_e, align): the rows moe_permute produces."""
    fn = "dsc_moe_permute_rows"
    _arr(indices, fn, "indices")
    return _C.moe_permute_rows(indices, _int(n_experts, fn, "n_experts"), _int(align, fn, "align"))


def moe_permute(x: Array, indices: Array, n_experts: int, align: int = 128) -> MoEPermute:
    """Dispatch: each token copied to one row per chosen expert, experts contiguous.
    x [T, D] float32 | bfloat16, indices [T, k] (MoERoute.indices)."""
    fn = "dsc_moe_permute"
    _arr(x, fn, "x")
    _arr(indices, fn, "indices")
    E = _int(n_experts, fn, "n_experts")
    a = _int(align, fn, "align")
    T, D = _ndim(x, 2, fn, "x", "(tokens, D)")
    si = _ndim(indices, 2, fn, "indices", "(tokens, top_k)")
    try:
        R = _C.moe_permute_rows(indices, E, a)
    except (ValueError, TypeError, Error) as e:  # name the function the caller called
        msg = str(e)
        if msg.startswith("dsc_moe_permute_rows:"):
            raise type(e)(fn + msg[len("dsc_moe_permute_rows"):]) from None
        raise
    out = empty_like_ns(x, (R, D), dtype_name(x), fn, "out")
    offs = empty_like_ns(x, (E + 1,), "int32", fn, "group_offsets")
    rm = empty_like_ns(x, si, "int32", fn, "row_map")
    _C.moe_permute(x, indices, E, a, out, offs, rm)
    counts = moe_expert_load(indices, E)
    return MoEPermute(finish(x, out), finish(x, offs), finish(x, rm), counts, T, E, a)


def moe_permute_backward(dout: Array, p: MoEPermute) -> Array:
    """dx [T, D]: the rows of dout [R, D] summed back per token."""
    fn = "dsc_moe_permute_backward"
    if not isinstance(p, MoEPermute):
        raise TypeError(f"{fn}: p: expected the MoEPermute from moe_permute, got {type(p).__name__}")
    _arr(dout, fn, "dout")
    s = _ndim(dout, 2, fn, "dout", "(R, D)")
    dx = empty_like_ns(dout, (p.n_tokens, s[1]), dtype_name(dout), fn, "dx")
    _C.moe_permute_backward(dout, p.row_map, dx)
    return finish(dout, dx)


def moe_unpermute(expert_out: Array, p: MoEPermute, weights: Array) -> Array:
    """Combine: y[t] = sum_j weights[t, j] * expert_out[row_map[t, j]].
    expert_out [R, D], weights [T, k] float32 -> y [T, D] (dtype of expert_out)."""
    fn = "dsc_moe_unpermute"
    if not isinstance(p, MoEPermute):
        raise TypeError(f"{fn}: p: expected the MoEPermute from moe_permute, got {type(p).__name__}")
    _arr(expert_out, fn, "expert_out")
    s = _ndim(expert_out, 2, fn, "expert_out", "(R, D)")
    y = empty_like_ns(expert_out, (p.n_tokens, s[1]), dtype_name(expert_out), fn, "y")
    _C.moe_unpermute(expert_out, p.row_map, weights, y)
    return finish(expert_out, y)


def moe_unpermute_backward(dy: Array, expert_out: Array, p: MoEPermute, weights: Array) -> tuple[Array, Array]:
    """(dexpert_out [R, D] like dy, dweights [T, k] float32) of moe_unpermute."""
    fn = "dsc_moe_unpermute_backward"
    if not isinstance(p, MoEPermute):
        raise TypeError(f"{fn}: p: expected the MoEPermute from moe_permute, got {type(p).__name__}")
    _arr(dy, fn, "dy")
    _arr(expert_out, fn, "expert_out")
    de = empty_like_ns(dy, _shape(expert_out), dtype_name(dy), fn, "dexpert_out")
    dw = empty_like_ns(dy, _shape(p.row_map), "float32", fn, "dweights")
    _C.moe_unpermute_backward(dy, expert_out, p.row_map, weights, de, dw)
    return finish(dy, de), finish(dy, dw)


def grouped_linear(x: Array, w: Array, group_offsets: Array) -> Array:
    """Expert GEMM: rows group_offsets[e]..group_offsets[e+1]-1 of x [R, K] times w[e]^T,
    w [E, N, K] -> y [R, N]. All float32 or all bfloat16, FP32 accumulation."""
    fn = "dsc_grouped_linear_forward"
    _arr(x, fn, "x")
    _arr(w, fn, "w")
    sx = _ndim(x, 2, fn, "x", "(R, K)")
    sw = _ndim(w, 3, fn, "w", "(n_experts, N, K)")
    y = empty_like_ns(x, (sx[0], sw[1]), dtype_name(x), fn, "y")
    _C.grouped_linear_forward(x, w, group_offsets, y)
    return finish(x, y)


def grouped_linear_backward(dy: Array, x: Array, w: Array, group_offsets: Array, *,
                            need_dx: bool = True) -> tuple[Optional[Array], Array]:
    """(dx [R, K] like x or None, dw [E, N, K] float32) of grouped_linear."""
    fn = "dsc_grouped_linear_backward"
    _arr(dy, fn, "dy")
    _arr(x, fn, "x")
    _arr(w, fn, "w")
    dx = empty_like_ns(dy, _shape(x), dtype_name(x), fn, "dx") if need_dx else None
    dw = empty_like_ns(dy, _shape(w), "float32", fn, "dw")
    _C.grouped_linear_backward(dy, x, w, group_offsets, dx, dw)
    return (finish(dy, dx) if dx is not None else None), finish(dy, dw)


# ----------------------------------------------------------------------------- the MoE layer


@dataclass
class MoEConfig:
    """The MoE keys of a Hugging Face DeepSeek-V2/V3 config (defaults: DeepSeek-V3)."""

    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    n_shared_experts: int = 1
    moe_intermediate_size: int = 2048

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], fn: str = "moe_forward") -> "MoEConfig":
        """Takes the known keys of a config dict (others are ignored); None n_group -> 1."""
        if isinstance(d, MoEConfig):
            return d
        if not isinstance(d, Mapping):
            raise TypeError(f"{fn}: cfg: expected a MoEConfig or a config dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("n_group", "topk_group", "n_shared_experts"):
            if k in kw and kw[k] is None:
                kw[k] = 0 if k == "n_shared_experts" else 1
        if "n_routed_experts" not in kw:
            raise ValueError(f"{fn}: cfg: expected the key 'n_routed_experts', got none")
        return cls(**kw)


@dataclass
class MoECtx:
    """Everything moe_backward needs, plus monitoring: load [E] int64 (tokens per
    expert), aux_loss (0-d float32 or None), route (the MoERoute)."""

    cfg: MoEConfig
    x: Array
    x_shape: tuple
    x_router: Array
    params: Mapping[str, Any]
    route: MoERoute
    perm: MoEPermute
    w_gate: Array
    w_up: Array
    w_down: Array
    h_gate: Array
    h_up: Array
    act: Array
    expert_out: Array
    shared: Optional[tuple]
    load: Array
    aux: Optional[SeqAuxCtx] = None
    aux_loss: Optional[Array] = None
    extra: dict = field(default_factory=dict)


_P = "mlp."


def _stack(arrs: list, ref: Array, fn: str = "moe_forward", names: Optional[list] = None) -> Array:
    """The per-expert weights as one [E, ., .] array (arrays of ref's kind)."""
    names = names or [f"params[{i}]" for i in range(len(arrs))]
    what = f"{names[0]} .. {names[-1]}" if names else "params"
    for a, n in zip(arrs, names):
        _arr(a, fn, n)
    try:
        ns = namespace(ref, fn, "params")
        if ns == "torch":
            import torch

            return torch.stack(arrs).contiguous()
        if ns == "cupy":
            import cupy

            return cupy.ascontiguousarray(cupy.stack(arrs))
        return np.ascontiguousarray(np.stack([np.asarray(a) for a in arrs]))
    except (ValueError, RuntimeError) as e:  # shapes that do not stack
        raise ValueError(f"{fn}: params: expected {what} of one shape, got shapes "
                         f"{[tuple(int(d) for d in a.shape) for a in arrs][:4]}: {e}") from None


def _expert_stack(params: Mapping[str, Any], E: int, proj: str, ref: Array, fn: str = "moe_forward") -> Array:
    key = f"{_P}experts.{proj}.weight"  # an optional pre-stacked [E, ., .] (not an HF name)
    if key in params:
        _arr(params[key], fn, f"params['{key}']")
        return params[key]
    names = [f"{_P}experts.{e}.{proj}.weight" for e in range(E)]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{fn}: params: expected {names[0]} .. {names[-1]} (or the stacked {key}), "
                         f"missing {missing[:3]}")
    return _stack([params[n] for n in names], ref, fn, [f"params['{n}']" for n in names])


def _need(params: Mapping[str, Any], name: str, fn: str = "moe_forward") -> Array:
    if name not in params:
        raise ValueError(f"{fn}: params: expected the key {name!r}, got keys {sorted(params)[:8]}")
    return params[name]


def _f32(x: Array) -> Array:
    """float32 view/copy for the router (HF computes the gate in float32)."""
    if dtype_name(x) == "float32":
        return x
    if isinstance(x, np.ndarray):
        return x.astype(np.float32)
    if namespace(x, "moe_forward", "x") in ("torch", "cupy"):
        return x.float() if hasattr(x, "float") else x.astype("float32")
    return x


def _linear_f32_dw(dy: Array, x: Array, w: Array, need_dx: bool = True) -> tuple[Optional[Array], Array]:
    fn = "dsc_linear_backward"
    dx = empty_like_ns(dy, _shape(x), dtype_name(x), fn, "dx") if need_dx else None
    dw = empty_like_ns(dy, _shape(w), "float32", fn, "dw")
    _C.linear_backward(dy, x, w, dx, dw)
    return dx, dw


def moe_forward(x: Array, params: Mapping[str, Any], cfg: Any, *, align: Optional[int] = None,
                seq_len: Optional[int] = None, aux_alpha: float = 0.0) -> tuple[Array, MoECtx]:
    """The whole DeepSeekMoE layer: routed experts (top-k of E, SwiGLU) + shared experts.

    x: [..., D] float32 | bfloat16 (the FFN input after RMSNorm).
    params: one layer's tensors by Hugging Face name: mlp.gate.weight [E, D],
    mlp.gate.e_score_correction_bias [E] (V3), mlp.experts.{e}.{gate,up,down}_proj.weight
    ([F, D], [F, D], [D, F]), mlp.shared_experts.{gate,up,down}_proj.weight (when
    n_shared_experts > 0).
    cfg: MoEConfig or a config dict with the HF keys.
    align: row alignment of the permuted layout (default 1 on CPU, 128 on GPU).
    seq_len, aux_alpha: with aux_alpha > 0, the sequence-wise balance loss over sequences
    of seq_len tokens is computed (ctx.aux_loss) and differentiated by moe_backward.
    Returns (out like x, ctx); ctx.load is the expert load for moe_update_bias.
    """
    fn = "moe_forward"
    c = MoEConfig.from_dict(cfg)
    _arr(x, fn, "x")
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: params: expected a dict of HF-named arrays, got {type(params).__name__}")
    xs = _shape(x)
    if len(xs) < 1:
        raise ValueError(f"{fn}: x: expected at least 1 dim (..., D), got a scalar")
    D = xs[-1]
    x2 = x.reshape(-1, D)
    E = int(c.n_routed_experts)
    if align is None:
        align = 1 if device_of(x)[0] == 1 else 128

    wg = _need(params, f"{_P}gate.weight")
    xr = _f32(x2)
    logits = dsc_linear(xr, _f32(wg))
    bias = params.get(f"{_P}gate.e_score_correction_bias") \
        if (c.topk_method == "noaux_tc" and c.scoring_func == "sigmoid") else None
    r = moe_route(logits, bias, top_k=c.num_experts_per_tok, n_group=c.n_group or 1,
                  topk_group=c.topk_group or 1, scoring=c.scoring_func, topk_method=c.topk_method,
                  norm_topk_prob=c.norm_topk_prob, route_scale=c.routed_scaling_factor)
    aux = aux_loss = None
    if aux_alpha:
        if seq_len is None:
            raise ValueError(f"{fn}: seq_len: expected the sequence length with aux_alpha > 0, got None")
        aux_loss, aux = moe_seq_aux_loss(r.scores, r.indices, seq_len, aux_alpha)

    p = moe_permute(x2, r.indices, E, align)
    w_gate = _expert_stack(params, E, "gate_proj", x)
    w_up = _expert_stack(params, E, "up_proj", x)
    w_down = _expert_stack(params, E, "down_proj", x)
    h_gate = grouped_linear(p.x, w_gate, p.group_offsets)
    h_up = grouped_linear(p.x, w_up, p.group_offsets)
    act = _C_swiglu(h_gate, h_up)
    eo = grouped_linear(act, w_down, p.group_offsets)
    y = moe_unpermute(eo, p, r.weights)

    shared = None
    if c.n_shared_experts:
        sg_w = _need(params, f"{_P}shared_experts.gate_proj.weight")
        su_w = _need(params, f"{_P}shared_experts.up_proj.weight")
        sd_w = _need(params, f"{_P}shared_experts.down_proj.weight")
        sg = dsc_linear(x2, sg_w)
        su = dsc_linear(x2, su_w)
        sa = _C_swiglu(sg, su)
        from .ops import matmul

        y = matmul(sa, sd_w, trans_b=True, beta=1.0, out=y)  # y += shared(x)
        shared = (sg_w, su_w, sd_w, sg, su, sa)

    ctx = MoECtx(c, x2, xs, xr, params, r, p, w_gate, w_up, w_down, h_gate, h_up, act, eo, shared,
                 p.counts, aux, aux_loss)
    return y.reshape(xs), ctx


def dsc_linear(x: Array, w: Array) -> Array:
    from .ops import linear

    return linear(x, w)


def _C_swiglu(g: Array, u: Array) -> Array:
    from .ops import swiglu

    return swiglu(g, u)


def moe_backward(dout: Array, ctx: MoECtx) -> dict[str, Array]:
    """Gradients for dout like the output of moe_forward: a dict keyed by the HF names of
    the params, float32 (expert grads are views of one [E, ., .] array), plus "x": the
    input gradient (like x). The router gets its gradient through the gate weights (and
    the sequence-wise loss when moe_forward computed one); the correction bias gets none."""
    fn = "moe_backward"
    if not isinstance(ctx, MoECtx):
        raise TypeError(f"{fn}: ctx: expected the MoECtx from moe_forward, got {type(ctx).__name__}")
    _arr(dout, fn, "dout")
    if _shape(dout) != ctx.x_shape:
        raise ValueError(f"{fn}: dout: expected shape {ctx.x_shape} (the shape of x), got {_shape(dout)}")
    from .ops import swiglu_backward, SwiGLUCtx

    c, p, r = ctx.cfg, ctx.perm, ctx.route
    D = ctx.x_shape[-1]
    E = int(c.n_routed_experts)
    dy = dout.reshape(-1, D)
    grads: dict[str, Array] = {}

    # routed experts
    deo, dweights = moe_unpermute_backward(dy, ctx.expert_out, p, r.weights)
    dact, dw_down = grouped_linear_backward(deo, ctx.act, ctx.w_down, p.group_offsets)
    dhg, dhu = swiglu_backward(dact, SwiGLUCtx(ctx.h_gate, ctx.h_up))
    dpx_g, dw_gate = grouped_linear_backward(dhg, p.x, ctx.w_gate, p.group_offsets)
    dpx_u, dw_up = grouped_linear_backward(dhu, p.x, ctx.w_up, p.group_offsets)
    dx = moe_permute_backward(dpx_g + dpx_u, p)
    for e in range(E):
        grads[f"{_P}experts.{e}.gate_proj.weight"] = dw_gate[e]
        grads[f"{_P}experts.{e}.up_proj.weight"] = dw_up[e]
        grads[f"{_P}experts.{e}.down_proj.weight"] = dw_down[e]

    # router (+ the sequence-wise loss through the affinities)
    dscores = moe_seq_aux_loss_backward(ctx.aux) if ctx.aux is not None else None
    dlogits = moe_route_backward(dweights, r, dscores)
    wg = _f32(ctx.params[f"{_P}gate.weight"])
    dxr, dwg = _linear_f32_dw(dlogits, ctx.x_router, wg)
    grads[f"{_P}gate.weight"] = dwg
    dx = dx + (dxr if dtype_name(dxr) == dtype_name(dx) else dxr.astype(dx.dtype))

    # shared experts
    if ctx.shared is not None:
        sg_w, su_w, sd_w, sg, su, sa = ctx.shared
        dsa, dsd = _linear_f32_dw(dy, sa, sd_w)
        dsg, dsu = swiglu_backward(dsa, SwiGLUCtx(sg, su))
        dx_g, dsg_w = _linear_f32_dw(dsg, ctx.x, sg_w)
        dx_u, dsu_w = _linear_f32_dw(dsu, ctx.x, su_w)
        dx = dx + dx_g + dx_u
        grads[f"{_P}shared_experts.gate_proj.weight"] = dsg_w
        grads[f"{_P}shared_experts.up_proj.weight"] = dsu_w
        grads[f"{_P}shared_experts.down_proj.weight"] = dsd
    grads["x"] = dx.reshape(ctx.x_shape)
    return grads


# ----------------------------------------------------------------------------- the C layer


@dataclass
class MoELayerCtx:
    """What moe_layer_backward needs: the C handle of saved activations, the inputs, the
    route parameters and the (stacked) weights; load [E] int32 is this call's expert load."""

    saved: Any
    x: Array
    x_shape: tuple
    route: tuple
    weights: tuple
    n_experts: int
    n_shared: bool
    load: Array
    fp8: bool = False


def _layer_scales(params: Mapping[str, Any], c: "MoEConfig", x: Array, fn: str) -> Optional[tuple]:
    """The weight_scale_inv of FP8-held expert weights: (experts gate, up, down stacked
    [E, ., .], shared gate, up, down), None where that weight is float32; None if none."""
    E = _int(c.n_routed_experts, fn, "cfg['n_routed_experts']")
    out: list = []
    for proj in ("gate_proj", "up_proj", "down_proj"):
        names = [f"{_P}experts.{e}.{proj}.weight_scale_inv" for e in range(E)]
        have = [n in params for n in names]
        if any(have) and not all(have):
            raise ValueError(f"{fn}: params: expected {names[0]} .. {names[-1]} for every expert "
                             f"or none, missing {[n for n, h in zip(names, have) if not h][:3]}")
        out.append(_stack([params[n] for n in names], x, fn, [f"params['{n}']" for n in names]) if all(have)
                   else params.get(f"{_P}experts.{proj}.weight_scale_inv"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        out.append(params.get(f"{_P}shared_experts.{proj}.weight_scale_inv") if c.n_shared_experts else None)
    return tuple(out) if any(v is not None for v in out) else None


def _layer_weights(params: Mapping[str, Any], c: "MoEConfig", x: Array, fn: str) -> tuple:
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: params: expected a dict of HF-named arrays, got {type(params).__name__}")
    E = _int(c.n_routed_experts, fn, "cfg['n_routed_experts']")
    if E < 1:
        raise ValueError(f"{fn}: cfg: expected n_routed_experts >= 1, got {E}")
    bias = params.get(f"{_P}gate.e_score_correction_bias") \
        if (c.topk_method == "noaux_tc" and c.scoring_func == "sigmoid") else None
    gate = _need(params, f"{_P}gate.weight", fn)
    _arr(gate, fn, f"params['{_P}gate.weight']")
    w = [_f32(gate), bias,
         _expert_stack(params, E, "gate_proj", x, fn), _expert_stack(params, E, "up_proj", x, fn),
         _expert_stack(params, E, "down_proj", x, fn)]
    if c.n_shared_experts:
        w += [_need(params, f"{_P}shared_experts.{n}_proj.weight", fn) for n in ("gate", "up", "down")]
    else:
        w += [None, None, None]
    return tuple(w)


def moe_layer_forward(x: Array, params: Mapping[str, Any], cfg: Any, *, align: int = 1,
                      training: bool = True, fp8: bool = False) -> tuple[Array, MoELayerCtx]:
    """The whole MoE layer in one C call (dsc_moe_layer_forward): same math and parameter
    names as moe_forward, float32 only. With training=False no activations are kept.
    fp8: the routed and shared expert GEMMs (forward and moe_layer_backward) run the V3 FP8
    way (E4M3, activations in 1x128 tiles, each expert's weight in 128x128 blocks); the
    router stays float32. With fp8 and training=False the expert weights may be held in FP8
    as DeepSeek ships them: "<name>.weight" float8_e4m3fn with "<name>.weight_scale_inv"."""
    fn = "dsc_moe_layer_forward"
    c = MoEConfig.from_dict(cfg, fn)
    _arr(x, fn, "x")
    xs = _shape(x)
    if len(xs) < 1:
        raise ValueError(f"{fn}: x: expected at least 1 dim (..., D), got a scalar")
    route = _route_params(fn, c.num_experts_per_tok, c.n_group or 1, c.topk_group or 1, c.scoring_func,
                          c.topk_method, c.norm_topk_prob, c.routed_scaling_factor)
    w = _layer_weights(params, c, x, fn)
    y = empty_like_ns(x, xs, dtype_name(x), fn, "y")
    load = empty_like_ns(x, (int(c.n_routed_experts),), "int32", fn, "counts")
    saved = _C.moe_layer_forward(x, route, _int(align, fn, "align"), w, y, load, bool(training),
                                 bool(fp8), _layer_scales(params, c, x, fn))
    return finish(x, y), MoELayerCtx(saved, x, xs, route, w, int(c.n_routed_experts),
                                     bool(c.n_shared_experts), finish(x, load), bool(fp8))


def moe_layer_backward(dy: Array, ctx: MoELayerCtx) -> dict[str, Array]:
    """Gradients of the C layer (float32), keyed like moe_backward: HF names, per-expert
    views of the stacked gradients, and "x" for the input gradient."""
    fn = "dsc_moe_layer_backward"
    if not isinstance(ctx, MoELayerCtx) or ctx.saved is None:
        raise TypeError(f"{fn}: ctx: expected the MoELayerCtx of moe_layer_forward(training=True)")
    _arr(dy, fn, "dy")
    E = ctx.n_experts
    gate, _bias, eg, eu, ed, sg, su, sd = ctx.weights
    mk = lambda ref: empty_like_ns(dy, _shape(ref), "float32", fn, "grads")  # noqa: E731
    grads_t = [mk(gate), mk(eg), mk(eu), mk(ed)]
    grads_t += [mk(sg), mk(su), mk(sd)] if ctx.n_shared else [None, None, None]
    dx = empty_like_ns(dy, ctx.x_shape, "float32", fn, "dx")
    _C.moe_layer_backward(ctx.x, dy, ctx.route, ctx.weights, ctx.saved, dx, tuple(grads_t), ctx.fp8)
    dgate, deg, deu, ded, dsg, dsu, dsd = [finish(dy, g) if g is not None else None for g in grads_t]
    grads: dict[str, Array] = {f"{_P}gate.weight": dgate}
    for e in range(E):
        grads[f"{_P}experts.{e}.gate_proj.weight"] = deg[e]
        grads[f"{_P}experts.{e}.up_proj.weight"] = deu[e]
        grads[f"{_P}experts.{e}.down_proj.weight"] = ded[e]
    if ctx.n_shared:
        grads[f"{_P}shared_experts.gate_proj.weight"] = dsg
        grads[f"{_P}shared_experts.up_proj.weight"] = dsu
        grads[f"{_P}shared_experts.down_proj.weight"] = dsd
    grads["x"] = finish(dy, dx)
    return grads
