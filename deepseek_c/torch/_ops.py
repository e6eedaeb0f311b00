"""The torch.library custom ops of deepseek_c (namespace ``deepseek_c``): each op's real
kernel calls the deepseek_c function (and so the C core) on detached tensors, a fake
(meta) kernel gives the output shapes to ``torch.compile``, and an autograd formula calls
the op's backward -- itself a custom op over the C backward.

Conventions shared by every op here:

* Inputs are made contiguous (as PyTorch's own kernels do) and detached: the C core never
  sees autograd. Outputs are torch tensors on the inputs' device, allocated by PyTorch and
  written by the C core in place (``deepseek_c._arrays.empty_like_ns``): no copies.
* CUDA: the glue runs each call on PyTorch's current stream of the inputs' device
  (``deepseek_c.streams``), so the results are ordered before whatever the caller queues
  next on that stream, with no extra synchronization; state kept on its own stream (a
  model's) is joined to the current stream by events.
* State the C core keeps between a forward and its backward (the MoE layer's and MLA's
  saved activations, a model's pending forward) travels as a one-element int64 CPU tensor,
  the *handle*, whose storage owns the C object: it is freed when autograd frees the
  tensors it saved -- after the backward, or with the graph.
* Autocast: ops that compute in float32 only (MoE layer, MLA, the model, RMSNorm,
  cross-entropy) are registered with ``torch.library.register_autocast`` to float32 (as
  PyTorch's own float32-list ops); ``linear`` runs in bfloat16 under an autocast region;
  ``fp8_linear`` quantizes its input whatever its dtype and returns it in bfloat16 there;
  the others (RoPE, SwiGLU, embedding, routing) run in their inputs' dtype.
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.library import custom_op, register_autocast, register_autograd

import deepseek_c as _dsc
from deepseek_c import fp8 as _fp8
from deepseek_c import mla as _mla
from deepseek_c import moe as _moe
from deepseek_c import ops as _ops
from deepseek_c._arrays import dtype_name, empty_like_ns

NS = "deepseek_c"


# ----------------------------------------------------------------------------- plumbing


def _in(t: Optional[Tensor]) -> Optional[Tensor]:
    """What the C core reads: no autograd, C-contiguous."""
    return None if t is None else t.detach().contiguous()


class _Holder(np.ndarray):
    """A one-element int64 array (the handle's storage) carrying `obj`: torch.from_numpy keeps
    it alive exactly as long as any tensor on that storage."""

    obj: Any


_HANDLES: dict[int, "weakref.ref[_Holder]"] = {}
_KEYS = itertools.count(1)


def make_handle(obj: Any) -> Tensor:
    """A CPU int64 tensor [1] whose storage owns `obj` (None: an empty handle)."""
    if obj is None:
        return torch.zeros((1,), dtype=torch.int64)
    key = next(_KEYS)
    h = np.array([key], np.int64).view(_Holder)
    h.obj = obj
    _HANDLES[key] = weakref.ref(h, lambda _r, k=key: _HANDLES.pop(k, None))
    return torch.from_numpy(h)


def take_handle(handle: Tensor, fn: str) -> Any:
    """The object a handle owns; a clear error when it is empty or gone."""
    key = int(handle.reshape(-1)[0])
    ref = _HANDLES.get(key) if key else None
    h = ref() if ref is not None else None
    if h is None:
        raise RuntimeError(f"{fn}: saved activations: expected the handle of a training forward (one that "
                           f"ran with gradients enabled), got an empty or released one")
    return h.obj


def _handle_fake() -> Tensor:
    return torch.empty((1,), dtype=torch.int64, device="cpu")


def _autocast_f32(name: str) -> None:
    for dev in ("cpu", "cuda"):
        register_autocast(f"{NS}::{name}", dev, torch.float32)


# ----------------------------------------------------------------------------- RMSNorm


@custom_op(f"{NS}::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y like x, rstd float32 [...]) of dsc_rms_norm_forward."""
    x = _in(x)
    y, ctx = _ops.rms_norm_forward(x, _in(weight), eps)
    return y, ctx.rstd


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1], dtype=torch.float32)


@custom_op(f"{NS}::rms_norm_backward", mutates_args=())
def rms_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    dy = _in(dy)
    dx, dw = _ops.rms_norm_backward(dy, _ops.RMSNormCtx(_in(x), _in(weight), _in(rstd), eps))
    return dx, dw


@rms_norm_backward.register_fake
def _(dy, x, weight, rstd, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), weight.new_empty(weight.shape,
                                                                                        dtype=torch.float32)


def _rms_setup(ctx, inputs, output):
    x, w, eps = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1])


def _rms_bwd(ctx, dy, _drstd):
    x, w, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward(dy, x, w, rstd, ctx.eps)
    return dx, dw, None


register_autograd(f"{NS}::rms_norm", _rms_bwd, setup_context=_rms_setup)
_autocast_f32("rms_norm")


# ----------------------------------------------------------------------------- RoPE


def _rope_tuple(p: Sequence[float]) -> tuple:
    """The C parameter tuple from the flat float list the ops carry."""
    return (int(p[0]), int(p[1]), float(p[2]), float(p[3]), int(p[4]), float(p[5]), float(p[6]), float(p[7]),
            float(p[8]))


@custom_op(f"{NS}::rope", mutates_args=())
def rope(x: Tensor, positions: Tensor, params: list[float]) -> Tensor:
    """dsc_rope_forward; params: the 9 values of ops._rope_params as floats."""
    x = _in(x)
    y = empty_like_ns(x, tuple(x.shape), dtype_name(x), "dsc_rope_forward", "y")
    _dsc._C.rope_forward(x, _in(positions), _rope_tuple(params), y)
    return y


@rope.register_fake
def _(x, positions, params):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@custom_op(f"{NS}::rope_backward", mutates_args=())
def rope_backward(dy: Tensor, positions: Tensor, params: list[float]) -> Tensor:
    dy = _in(dy)
    dx = empty_like_ns(dy, tuple(dy.shape), dtype_name(dy), "dsc_rope_backward", "dx")
    _dsc._C.rope_backward(dy, _in(positions), _rope_tuple(params), dx)
    return dx


@rope_backward.register_fake
def _(dy, positions, params):
    return torch.empty_like(dy, memory_format=torch.contiguous_format)


def _rope_setup(ctx, inputs, output):
    _x, positions, params = inputs
    ctx.save_for_backward(positions)
    ctx.params = params


def _rope_bwd(ctx, dy):
    (positions,) = ctx.saved_tensors
    return rope_backward(dy, positions, ctx.params), None, None


register_autograd(f"{NS}::rope", _rope_bwd, setup_context=_rope_setup)


# ----------------------------------------------------------------------------- linear


@custom_op(f"{NS}::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor) -> Tensor:
    """y = x @ weight^T (dsc_linear_forward)."""
    x = _in(x)
    y = _ops.linear(x, _in(weight))
    return y


@linear.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@custom_op(f"{NS}::linear_backward", mutates_args=())
def linear_backward(dy: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    dy = _in(dy)
    dx, dw = _ops.linear_backward(dy, _ops.LinearCtx(_in(x), _in(weight)))
    return dx, dw


@linear_backward.register_fake
def _(dy, x, weight):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        weight, memory_format=torch.contiguous_format)


def _linear_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _linear_bwd(ctx, dy):
    x, w = ctx.saved_tensors
    return linear_backward(dy, x, w)


register_autograd(f"{NS}::linear", _linear_bwd, setup_context=_linear_setup)
for _dev in ("cpu", "cuda"):
    register_autocast(f"{NS}::linear", _dev, torch.bfloat16)


# ----------------------------------------------------------------------------- SwiGLU


@custom_op(f"{NS}::swiglu", mutates_args=())
def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up (dsc_swiglu_forward)."""
    gate = _in(gate)
    y = _ops.swiglu(gate, _in(up))
    return y


@swiglu.register_fake
def _(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@custom_op(f"{NS}::swiglu_backward", mutates_args=())
def swiglu_backward(dy: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    dy = _in(dy)
    dg, du = _ops.swiglu_backward(dy, _ops.SwiGLUCtx(_in(gate), _in(up)))
    return dg, du


@swiglu_backward.register_fake
def _(dy, gate, up):
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(gate, memory_format=torch.contiguous_format))


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_bwd(ctx, dy):
    g, u = ctx.saved_tensors
    return swiglu_backward(dy, g, u)


register_autograd(f"{NS}::swiglu", _swiglu_bwd, setup_context=_swiglu_setup)


# ----------------------------------------------------------------------------- embedding


@custom_op(f"{NS}::embedding", mutates_args=())
def embedding(ids: Tensor, table: Tensor) -> Tensor:
    """table[ids] (dsc_embedding_forward)."""
    table = _in(table)
    y = _ops.embedding(_in(ids), table)
    return y


@embedding.register_fake
def _(ids, table):
    return table.new_empty((*ids.shape, table.shape[1]))


@custom_op(f"{NS}::embedding_backward", mutates_args=())
def embedding_backward(ids: Tensor, dy: Tensor, num_embeddings: int) -> Tensor:
    dy = _in(dy)
    dt = _ops.embedding_backward(dy, _ops.EmbeddingCtx(_in(ids), num_embeddings, int(dy.shape[-1])))
    return dt


@embedding_backward.register_fake
def _(ids, dy, num_embeddings):
    return dy.new_empty((num_embeddings, dy.shape[-1]), dtype=torch.float32)


def _emb_setup(ctx, inputs, output):
    ids, table = inputs
    ctx.save_for_backward(ids)
    ctx.n = table.shape[0]


def _emb_bwd(ctx, dy):
    (ids,) = ctx.saved_tensors
    return None, embedding_backward(ids, dy, ctx.n)


register_autograd(f"{NS}::embedding", _emb_bwd, setup_context=_emb_setup)


# ----------------------------------------------------------------------------- cross-entropy


@custom_op(f"{NS}::cross_entropy", mutates_args=())
def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """Mean softmax cross-entropy over the tokens whose target != ignore_index (0-d float32)."""
    logits = _in(logits)
    loss, _ = _ops.cross_entropy(logits, _in(targets), ignore_index=ignore_index, return_dlogits=False)
    return loss


@cross_entropy.register_fake
def _(logits, targets, ignore_index):
    return logits.new_empty((), dtype=torch.float32)


@custom_op(f"{NS}::cross_entropy_backward", mutates_args=())
def cross_entropy_backward(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """dloss/dlogits for dloss = 1 (the autograd formula scales it by the incoming grad)."""
    logits = _in(logits)
    _, dl = _ops.cross_entropy(logits, _in(targets), ignore_index=ignore_index)
    return dl


@cross_entropy_backward.register_fake
def _(logits, targets, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _ce_setup(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    ctx.save_for_backward(logits, targets)
    ctx.ignore_index = ignore_index


def _ce_bwd(ctx, g):
    logits, targets = ctx.saved_tensors
    return cross_entropy_backward(logits, targets, ctx.ignore_index) * g, None, None


register_autograd(f"{NS}::cross_entropy", _ce_bwd, setup_context=_ce_setup)
_autocast_f32("cross_entropy")


# ----------------------------------------------------------------------------- routing


_SCORING = {0: "sigmoid", 1: "softmax"}
_METHODS = {0: "noaux_tc", 1: "greedy", 2: "group_limited_greedy"}


def _route(ri: Sequence[int], scale: float) -> tuple:
    """The C route tuple (top_k, n_group, topk_group, scoring, method, norm, scale)."""
    return (int(ri[0]), int(ri[1]), int(ri[2]), int(ri[3]), int(ri[4]), int(ri[5]), float(scale))


@custom_op(f"{NS}::moe_route", mutates_args=())
def moe_route(logits: Tensor, bias: Optional[Tensor], route: list[int], route_scale: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """(weights [T, k] float32, scores [T, E] float32, indices [T, k] int32) of dsc_moe_route;
    route = [top_k, n_group, topk_group, scoring code, topk_method code, norm_topk_prob]."""
    logits = _in(logits)
    T, E = int(logits.shape[0]), int(logits.shape[1])
    k = int(route[0])
    fn = "dsc_moe_route"
    idx = empty_like_ns(logits, (T, k), "int32", fn, "indices")
    w = empty_like_ns(logits, (T, k), "float32", fn, "weights")
    s = empty_like_ns(logits, (T, E), "float32", fn, "scores")
    _dsc._C.moe_route(logits, _in(bias), _route(route, route_scale), idx, w, s)
    return w, s, idx


@moe_route.register_fake
def _(logits, bias, route, route_scale):
    T, E, k = logits.shape[0], logits.shape[1], route[0]
    return (logits.new_empty((T, k), dtype=torch.float32), logits.new_empty((T, E), dtype=torch.float32),
            logits.new_empty((T, k), dtype=torch.int32))


@custom_op(f"{NS}::moe_route_backward", mutates_args=())
def moe_route_backward(dweights: Tensor, dscores: Tensor, scores: Tensor, indices: Tensor, route: list[int],
                       route_scale: float, logits_dtype: torch.dtype) -> Tensor:
    dweights = _in(dweights)
    fn = "dsc_moe_route_backward"
    dl = empty_like_ns(dweights, tuple(scores.shape), str(logits_dtype).split(".")[-1], fn, "dlogits")
    _dsc._C.moe_route_backward(_route(route, route_scale), dweights, _in(scores), _in(indices), _in(dscores), dl)
    return dl


@moe_route_backward.register_fake
def _(dweights, dscores, scores, indices, route, route_scale, logits_dtype):
    return scores.new_empty(scores.shape, dtype=logits_dtype)


def _route_setup(ctx, inputs, output):
    logits, _bias, route, scale = inputs
    _w, s, idx = output
    ctx.save_for_backward(s, idx)
    ctx.route, ctx.scale, ctx.dtype = route, scale, logits.dtype
    ctx.mark_non_differentiable(idx)


def _route_bwd(ctx, dw, ds, _didx):
    s, idx = ctx.saved_tensors
    if dw is None:
        dw = s.new_zeros(idx.shape)
    if ds is None:
        ds = torch.zeros_like(s)
    return moe_route_backward(dw, ds, s, idx, ctx.route, ctx.scale, ctx.dtype), None, None, None


register_autograd(f"{NS}::moe_route", _route_bwd, setup_context=_route_setup)


@custom_op(f"{NS}::moe_seq_aux_loss", mutates_args=())
def moe_seq_aux_loss(scores: Tensor, indices: Tensor, seq_len: int, alpha: float) -> Tensor:
    """The sequence-wise balance loss (0-d float32) of dsc_moe_seq_aux_loss."""
    scores = _in(scores)
    loss, _ = _moe.moe_seq_aux_loss(scores, _in(indices), seq_len, alpha)
    return loss


@moe_seq_aux_loss.register_fake
def _(scores, indices, seq_len, alpha):
    return scores.new_empty((), dtype=torch.float32)


@custom_op(f"{NS}::moe_seq_aux_loss_backward", mutates_args=())
def moe_seq_aux_loss_backward(scores: Tensor, indices: Tensor, seq_len: int, alpha: float) -> Tensor:
    """dloss/dscores for dloss = 1."""
    scores = _in(scores)
    ds = _moe.moe_seq_aux_loss_backward(_moe.SeqAuxCtx(scores, _in(indices), seq_len, alpha), 1.0)
    return ds


@moe_seq_aux_loss_backward.register_fake
def _(scores, indices, seq_len, alpha):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _aux_setup(ctx, inputs, output):
    scores, indices, seq_len, alpha = inputs
    ctx.save_for_backward(scores, indices)
    ctx.seq_len, ctx.alpha = seq_len, alpha


def _aux_bwd(ctx, g):
    scores, indices = ctx.saved_tensors
    return moe_seq_aux_loss_backward(scores, indices, ctx.seq_len, ctx.alpha) * g, None, None, None


register_autograd(f"{NS}::moe_seq_aux_loss", _aux_bwd, setup_context=_aux_setup)


@custom_op(f"{NS}::moe_expert_load", mutates_args=())
def moe_expert_load(indices: Tensor, n_experts: int) -> Tensor:
    """Tokens per expert, int64 [E]."""
    indices = _in(indices)
    c = _moe.moe_expert_load(indices, n_experts)
    return c


@moe_expert_load.register_fake
def _(indices, n_experts):
    return indices.new_empty((n_experts,), dtype=torch.int64)


@custom_op(f"{NS}::moe_update_bias", mutates_args=("bias",))
def moe_update_bias(bias: Tensor, load: Tensor, rate: float) -> None:
    """bias += rate * sign(mean(load) - load), in place (bias: contiguous float32 [E])."""
    if not bias.is_contiguous():
        raise ValueError(f"dsc_moe_update_bias: bias: expected a contiguous tensor (updated in place), "
                         f"got strides {tuple(bias.stride())}")
    b = bias.detach()
    _dsc._C.moe_update_bias(b, _in(load), float(rate))


@moe_update_bias.register_fake
def _(bias, load, rate):
    return None


# ----------------------------------------------------------------------------- FP8


@custom_op(f"{NS}::fp8_cast", mutates_args=())
def fp8_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    x = _in(x)
    y = _fp8.fp8_cast(x, str(dtype).split(".")[-1])
    return y


@fp8_cast.register_fake
def _(x, dtype):
    return x.new_empty(x.shape, dtype=dtype)


@custom_op(f"{NS}::fp8_quantize", mutates_args=())
def fp8_quantize(x: Tensor, block: list[int], fmt: torch.dtype, transpose: bool, pow2_scale: bool,
                 amax_floor: float) -> tuple[Tensor, Tensor]:
    x = _in(x)
    q, s = _fp8.fp8_quantize(x, tuple(block), str(fmt).split(".")[-1], transpose, pow2_scale, amax_floor)
    return q, s


@fp8_quantize.register_fake
def _(x, block, fmt, transpose, pow2_scale, amax_floor):
    K = x.shape[-1]
    M = math.prod(x.shape[:-1])
    qshape, R, C = ((K, M), K, M) if transpose else (tuple(x.shape), M, K)
    return (x.new_empty(qshape, dtype=fmt),
            x.new_empty(((R + block[0] - 1) // block[0], (C + block[1] - 1) // block[1]), dtype=torch.float32))


@custom_op(f"{NS}::fp8_dequantize", mutates_args=())
def fp8_dequantize(q: Tensor, scale: Tensor, block: list[int], dtype: torch.dtype) -> Tensor:
    q = _in(q)
    y = _fp8.fp8_dequantize(q, _in(scale), tuple(block), str(dtype).split(".")[-1])
    return y


@fp8_dequantize.register_fake
def _(q, scale, block, dtype):
    return q.new_empty(q.shape, dtype=dtype)


@custom_op(f"{NS}::fp8_gemm", mutates_args=())
def fp8_gemm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    a = _in(a)
    c = _fp8.fp8_gemm(a, _in(a_scale), _in(b), _in(b_scale), str(out_dtype).split(".")[-1])
    return c


@fp8_gemm.register_fake
def _(a, a_scale, b, b_scale, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@custom_op(f"{NS}::fp8_linear", mutates_args=())
def fp8_linear(x: Tensor, weight: Tensor, out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, xq, xs, wq, ws) of dsc_fp8_linear_forward: y = x @ weight^T with x in E4M3 1x128
    tiles and the float32 master weight in 128x128 blocks."""
    x = _in(x)
    y, c = _fp8.fp8_linear_forward(x, _in(weight), str(out_dtype).split(".")[-1])
    return y, c.xq, c.xs, c.wq, c.ws


@fp8_linear.register_fake
def _(x, weight, out_dtype):
    K, N = x.shape[-1], weight.shape[0]
    M = math.prod(x.shape[:-1])
    Kb = (K + 127) // 128
    e4 = torch.float8_e4m3fn
    return (x.new_empty((*x.shape[:-1], N), dtype=out_dtype), x.new_empty((M, K), dtype=e4),
            x.new_empty((M, Kb), dtype=torch.float32), x.new_empty((N, K), dtype=e4),
            x.new_empty(((N + 127) // 128, Kb), dtype=torch.float32))


@custom_op(f"{NS}::fp8_linear_backward", mutates_args=())
def fp8_linear_backward(dy: Tensor, xq: Tensor, xs: Tensor, wq: Tensor, ws: Tensor, x_shape: list[int],
                        x_dtype: torch.dtype, need_dx: bool, need_dw: bool) -> tuple[Tensor, Tensor]:
    dy = _in(dy)
    c = _fp8.FP8LinearCtx(_in(xq), _in(xs), _in(wq), _in(ws), tuple(int(s) for s in x_shape),
                          str(x_dtype).split(".")[-1])
    dx, dw = _fp8.fp8_linear_backward(dy, c, need_dx, need_dw)
    e = lambda: torch.empty((0,), dtype=torch.float32, device=dy.device)  # noqa: E731
    return (dx if dx is not None else e()), (dw if dw is not None else e())


@fp8_linear_backward.register_fake
def _(dy, xq, xs, wq, ws, x_shape, x_dtype, need_dx, need_dw):
    dx = dy.new_empty(tuple(x_shape), dtype=dy.dtype) if need_dx else dy.new_empty((0,), dtype=torch.float32)
    dw = dy.new_empty(wq.shape, dtype=torch.float32) if need_dw else dy.new_empty((0,), dtype=torch.float32)
    return dx, dw


def _fp8lin_setup(ctx, inputs, output):
    x, _w, _dt = inputs
    _y, xq, xs, wq, ws = output
    ctx.save_for_backward(xq, xs, wq, ws)
    ctx.x_shape, ctx.x_dtype = list(x.shape), x.dtype
    ctx.mark_non_differentiable(xq, xs, wq, ws)


def _fp8lin_bwd(ctx, dy, *_):
    xq, xs, wq, ws = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dw = fp8_linear_backward(dy, xq, xs, wq, ws, ctx.x_shape, ctx.x_dtype, need_dx, need_dw)
    return (dx if need_dx else None), (dw if need_dw else None), None


register_autograd(f"{NS}::fp8_linear", _fp8lin_bwd, setup_context=_fp8lin_setup)


# ----------------------------------------------------------------------------- the MoE layer


class _MoESaved:
    """The C layer's saved activations (a capsule) and the aux-loss settings of its forward."""

    def __init__(self, capsule: Any, seq_len: int, aux_alpha: float) -> None:
        self.capsule, self.seq_len, self.aux_alpha, self.aux_scale = capsule, seq_len, aux_alpha, 1.0


def _moe_cfg(E: int, route: Sequence[int], route_scale: float, n_shared: bool) -> _moe.MoEConfig:
    return _moe.MoEConfig(n_routed_experts=E, num_experts_per_tok=int(route[0]), n_group=int(route[1]),
                          topk_group=int(route[2]), scoring_func=_SCORING[int(route[3])],
                          topk_method=_METHODS[int(route[4])], norm_topk_prob=bool(route[5]),
                          routed_scaling_factor=float(route_scale), n_shared_experts=int(bool(n_shared)))


def _moe_params(gate, bias, eg, eu, ed, sg, su, sd) -> dict:
    P = "mlp."
    p = {P + "gate.weight": gate, P + "experts.gate_proj.weight": eg, P + "experts.up_proj.weight": eu,
         P + "experts.down_proj.weight": ed}
    if bias is not None:
        p[P + "gate.e_score_correction_bias"] = bias
    if sg is not None:
        p.update({P + "shared_experts.gate_proj.weight": sg, P + "shared_experts.up_proj.weight": su,
                  P + "shared_experts.down_proj.weight": sd})
    return p


@custom_op(f"{NS}::moe_layer", mutates_args=())
def moe_layer(x: Tensor, gate: Tensor, bias: Optional[Tensor], experts_gate: Tensor, experts_up: Tensor,
              experts_down: Tensor, shared_gate: Optional[Tensor], shared_up: Optional[Tensor],
              shared_down: Optional[Tensor], route: list[int], route_scale: float, align: int, fp8: bool,
              seq_len: int, aux_alpha: float, keep: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y like x, load int32 [E], aux_loss float32 0-d, handle) of dsc_moe_layer_forward.
    Experts stacked [E, F, D] / [E, F, D] / [E, D, F]; keep: save activations for backward."""
    x = _in(x)
    w = [_in(t) for t in (gate, bias, experts_gate, experts_up, experts_down, shared_gate, shared_up, shared_down)]
    cfg = _moe_cfg(int(gate.shape[0]), route, route_scale, shared_gate is not None)
    y, c = _moe.moe_layer_forward(x, _moe_params(*w), cfg, align=align, training=keep, fp8=fp8,
                                  seq_len=seq_len if aux_alpha > 0 else None, aux_alpha=aux_alpha if keep else 0.0)
    aux = torch.tensor(c.aux_loss if c.aux_loss is not None else 0.0, dtype=torch.float32, device=x.device)
    return y, c.load, aux, make_handle(_MoESaved(c.saved, seq_len, aux_alpha) if keep else None)


@moe_layer.register_fake
def _(x, gate, bias, experts_gate, experts_up, experts_down, shared_gate, shared_up, shared_down, route,
      route_scale, align, fp8, seq_len, aux_alpha, keep):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((gate.shape[0],), dtype=torch.int32), x.new_empty((), dtype=torch.float32), _handle_fake())


@custom_op(f"{NS}::moe_layer_backward", mutates_args=())
def moe_layer_backward(dy: Tensor, aux_grad: Tensor, handle: Tensor, x: Tensor, gate: Tensor, bias: Optional[Tensor],
                       experts_gate: Tensor, experts_up: Tensor, experts_down: Tensor, shared_gate: Optional[Tensor],
                       shared_up: Optional[Tensor], shared_down: Optional[Tensor], route: list[int],
                       route_scale: float, fp8: bool, need: list[bool]) -> list[Tensor]:
    """[dx, dgate, dexperts_gate, dexperts_up, dexperts_down, dshared_gate, dshared_up,
    dshared_down] (float32; an empty tensor where need[i] is False or the weight is absent)."""
    fn = "dsc_moe_layer_backward"
    saved = take_handle(handle, fn)
    dy, x = _in(dy), _in(x)
    w = tuple(_in(t) for t in (gate, bias, experts_gate, experts_up, experts_down, shared_gate, shared_up,
                               shared_down))
    n_shared = shared_gate is not None
    cfg = _moe_cfg(int(gate.shape[0]), route, route_scale, n_shared)
    if saved.aux_alpha > 0:
        g = float(aux_grad)
        if not (math.isfinite(g) and g >= 0):
            raise ValueError(f"{fn}: aux_loss: expected a finite gradient >= 0 reaching the balance loss, got {g}")
        if g != saved.aux_scale:  # the C layer holds alpha * dL/daux_loss for the router
            _dsc._C.moe_layer_aux_loss(saved.capsule, saved.seq_len, saved.aux_alpha * g)
            saved.aux_scale = g
    ctx = _moe.MoELayerCtx(saved.capsule, x, tuple(int(s) for s in x.shape), cfg.route_params(fn), w,
                           int(gate.shape[0]), n_shared, None, fp8)
    dx, grads = _moe._moe_layer_backward_arrays(dy, ctx, need_dx=need[0], need=tuple(need[1:]))
    e = lambda: torch.empty((0,), dtype=torch.float32, device=dy.device)  # noqa: E731  (one each: no aliases)
    return [dx if dx is not None else e()] + [g if g is not None else e() for g in grads]


@moe_layer_backward.register_fake
def _(dy, aux_grad, handle, x, gate, bias, experts_gate, experts_up, experts_down, shared_gate, shared_up,
      shared_down, route, route_scale, fp8, need):
    refs = (x, gate, experts_gate, experts_up, experts_down, shared_gate, shared_up, shared_down)
    return [dy.new_empty(r.shape, dtype=torch.float32) if (r is not None and n) else
            dy.new_empty((0,), dtype=torch.float32) for r, n in zip(refs, need)]


_MOE_W = (1, 3, 4, 5, 6, 7)  # input positions of gate, experts gate/up/down, shared gate/up/down (then down)


def _moe_setup(ctx, inputs, output):
    (x, gate, bias, eg, eu, ed, sg, su, sd, route, route_scale, _align, fp8, _seq_len, _aux_alpha, _keep) = inputs
    _y, load, _aux, handle = output
    ctx.save_for_backward(handle, x, gate, bias, eg, eu, ed, sg, su, sd)
    ctx.route, ctx.route_scale, ctx.fp8 = route, route_scale, fp8
    ctx.mark_non_differentiable(load, handle)


def _moe_bwd(ctx, dy, _dload, daux, _dhandle):
    handle, x, gate, bias, eg, eu, ed, sg, su, sd = ctx.saved_tensors
    ni = ctx.needs_input_grad
    has = (True, True, True, True, True, sg is not None, su is not None, sd is not None)
    need = [bool(ni[i]) and h for i, h in zip((0, 1, 3, 4, 5, 6, 7, 8), has)]
    if dy is None:
        dy = torch.zeros_like(x)
    if daux is None:
        daux = x.new_zeros((), dtype=torch.float32)
    g = moe_layer_backward(dy, daux, handle, x, gate, bias, eg, eu, ed, sg, su, sd, ctx.route, ctx.route_scale,
                           ctx.fp8, need)
    out = [g[i] if need[i] else None for i in range(8)]
    dx, dgate, deg, deu, ded, dsg, dsu, dsd = out
    return (dx, dgate, None, deg, deu, ded, dsg, dsu, dsd) + (None,) * 7


register_autograd(f"{NS}::moe_layer", _moe_bwd, setup_context=_moe_setup)
_autocast_f32("moe_layer")


# ----------------------------------------------------------------------------- MLA


def _mla_tuple(ints: Sequence[int], floats: Sequence[float]) -> tuple:
    """The C parameter tuple of an MLA layer from the flat lists the ops carry:
    ints (hidden, heads, q_lora_rank, kv_lora_rank, nope, rope, v, fp8, rope layout, rope dim,
    rope original_max_position), floats (eps, softmax_scale, theta, factor, beta_fast,
    beta_slow, mscale, mscale_all_dim)."""
    i, f = [int(v) for v in ints], [float(v) for v in floats]
    rope_t = (i[8], i[9], f[2], f[3], i[10], f[4], f[5], f[6], f[7])
    return (i[0], i[1], i[2], i[3], i[4], i[5], i[6], f[0], rope_t, f[1], i[7])


def mla_flat_params(p: tuple) -> tuple[list[int], list[float]]:
    """The inverse of _mla_tuple, for mla.mla_params_tuple(cfg, fp8)."""
    (hd, h, rq, rkv, dn, dr, dv, eps, rp, scale, fp8) = p
    ints = [hd, h, rq, rkv, dn, dr, dv, fp8, rp[0], rp[1], rp[4]]
    floats = [eps, scale, rp[2], rp[3], rp[5], rp[6], rp[7], rp[8]]
    return [int(v) for v in ints], [float(v) for v in floats]


def _mla_w(q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o) -> tuple:
    return tuple(_in(t) for t in (q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o))


@custom_op(f"{NS}::mla", mutates_args=())
def mla(x: Tensor, positions: Tensor, q_a_proj: Optional[Tensor], q_a_layernorm: Optional[Tensor],
        q_b_proj: Optional[Tensor], q_proj: Optional[Tensor], kv_a_proj_with_mqa: Tensor, kv_a_layernorm: Tensor,
        kv_b_proj: Tensor, o_proj: Tensor, ints: list[int], floats: list[float], keep: bool) -> tuple[Tensor, Tensor]:
    """(out [B, T, hidden] float32, handle) of dsc_mla_forward (causal self-attention)."""
    x, pos = _in(x), _in(positions)
    w = _mla_w(q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj)
    p = _mla_tuple(ints, floats)
    out = empty_like_ns(x, tuple(x.shape), "float32", "dsc_mla_forward", "out")
    saved = _dsc._C.mla_forward(x, pos, w, p, out, bool(keep))
    return out, make_handle(saved)


@mla.register_fake
def _(x, positions, q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj,
      o_proj, ints, floats, keep):
    return x.new_empty(x.shape, dtype=torch.float32), _handle_fake()


@custom_op(f"{NS}::mla_backward", mutates_args=())
def mla_backward(dout: Tensor, handle: Tensor, x: Tensor, positions: Tensor, q_a_proj: Optional[Tensor],
                 q_a_layernorm: Optional[Tensor], q_b_proj: Optional[Tensor], q_proj: Optional[Tensor],
                 kv_a_proj_with_mqa: Tensor, kv_a_layernorm: Tensor, kv_b_proj: Tensor, o_proj: Tensor,
                 ints: list[int], floats: list[float], need: list[bool]) -> list[Tensor]:
    """[dx, then the 8 weight gradients in MLA_WEIGHT_NAMES order] (float32; empty where not
    needed or absent)."""
    saved = take_handle(handle, "dsc_mla_backward")
    dout = _in(dout)
    w = _mla_w(q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj)
    ctx = _mla.MLACtx(saved, _in(x), _in(positions), w, _mla_tuple(ints, floats), None)
    dx, grads = _mla._mla_backward_arrays(dout, ctx, need_dx=need[0], need=need[1:])
    e = lambda: torch.empty((0,), dtype=torch.float32, device=dout.device)  # noqa: E731  (one each: no aliases)
    return [dx if dx is not None else e()] + [g if g is not None else e() for g in grads]


@mla_backward.register_fake
def _(dout, handle, x, positions, q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm,
      kv_b_proj, o_proj, ints, floats, need):
    refs = (x, q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj)
    return [dout.new_empty(r.shape, dtype=torch.float32) if (r is not None and n) else
            dout.new_empty((0,), dtype=torch.float32) for r, n in zip(refs, need)]


def _mla_setup(ctx, inputs, output):
    x, positions, *w = inputs[:10]
    ctx.ints, ctx.floats = inputs[10], inputs[11]
    _out, handle = output
    ctx.save_for_backward(handle, x, positions, *w)
    ctx.mark_non_differentiable(handle)


def _mla_bwd(ctx, dout, _dhandle):
    handle, x, positions, *w = ctx.saved_tensors
    ni = ctx.needs_input_grad
    need = [bool(ni[0])] + [bool(ni[2 + i]) and w[i] is not None for i in range(8)]
    g = mla_backward(dout, handle, x, positions, *w, ctx.ints, ctx.floats, need)
    out = [g[i] if need[i] else None for i in range(9)]
    return (out[0], None, *out[1:], None, None, None)


register_autograd(f"{NS}::mla", _mla_bwd, setup_context=_mla_setup)
_autocast_f32("mla")
