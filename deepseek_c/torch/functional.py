"""deepseek_c's ops as differentiable PyTorch functions.

Each function takes torch tensors (CPU or CUDA; ``requires_grad`` welcome) and returns torch
tensors on the same device, computed by the C core through a ``torch.library`` custom op
(namespace ``deepseek_c``) with a fake kernel (``torch.compile`` traces it without a graph
break) and an autograd formula over the C backward. Shapes and dtypes are those of the
deepseek_c function of the same name; what each takes:

=====================  ====================================  ===============================
function               dtypes                                 gradient to
=====================  ====================================  ===============================
rms_norm               float32 | bfloat16 (x and weight)      x, weight (float32)
rope                   float32 | bfloat16; positions int      x
linear                 float32 | bfloat16 (x and weight)      x, weight
swiglu                 float32 | bfloat16                     gate, up
embedding              table float32 | bfloat16, ids int      table (float32)
cross_entropy          logits float32 | bfloat16              logits
moe_route              logits float32 | bfloat16              logits (via weights and scores)
moe_seq_aux_loss       scores float32                         scores
fp8_linear             x float32 | bfloat16, weight float32   x, weight (float32), FP8 backward
moe_layer              float32                                x, every weight but the bias
mla                    float32                                x, every weight
fp8_quantize/dequantize, fp8_cast, fp8_gemm, moe_expert_load: no gradient (E4M3 codes,
integer counts)
=====================  ====================================  ===============================

Under ``torch.autocast``: rms_norm, cross_entropy, moe_layer and mla run in float32 (their
floating inputs are cast, as autocast does for its float32 ops), linear in bfloat16,
fp8_linear quantizes its input to E4M3 whatever its dtype and returns bfloat16; the rest run
in the dtype they are given.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from deepseek_c import ops as _dops
from deepseek_c import moe as _dmoe

from . import _ops

__all__ = [
    "rms_norm", "rope", "linear", "swiglu", "embedding", "cross_entropy", "moe_route", "MoERouteOutput",
    "moe_seq_aux_loss", "moe_expert_load", "moe_update_bias", "fp8_cast", "fp8_quantize", "fp8_dequantize",
    "fp8_gemm", "fp8_linear", "moe_layer", "MoELayerOutput", "mla", "mla_params", "MLAParams",
]


def _pos(x: Tensor, positions: Optional[Tensor], fn: str) -> Tensor:
    """int32 positions [B, T] (default 0..T-1 for each row of x [B, T, ...])."""
    if positions is None:
        if x.dim() < 2:
            raise ValueError(f"{fn}: x: expected at least 2 dims (B, T, ...) to default the positions, got {x.dim()}")
        B, T = x.shape[0], x.shape[1]
        return torch.arange(T, dtype=torch.int32, device=x.device).expand(B, T)
    if positions.dtype != torch.int32:
        positions = positions.to(torch.int32)
    return positions


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """weight * x / sqrt(mean(x**2, -1) + eps). x [..., D], weight [D] (same dtype)."""
    return _ops.rms_norm(x, weight, float(eps))[0]


def rope(x: Tensor, positions: Optional[Tensor] = None, *, layout: str = "interleaved", theta: float = 10000.0,
         scaling: Optional[Mapping[str, Any]] = None) -> Tensor:
    """Rotary embedding of the last dim of x [B, T, H, D] or [B, T, D] at positions [B, T]
    (default 0..T-1); layout 'interleaved' (DeepSeek) or 'half' (NeoX); scaling: a Hugging
    Face rope_scaling dict for YaRN (see deepseek_c.rope)."""
    p = _dops._rope_params("dsc_rope_forward", int(x.shape[-1]) if x.dim() else 0, layout, theta, scaling)
    return _ops.rope(x, _pos(x, positions, "dsc_rope_forward"), [float(v) for v in p])


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight^T (no bias). x [..., K], weight [N, K]."""
    return _ops.linear(x, weight)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up."""
    return _ops.swiglu(gate, up)


def embedding(ids: Tensor, table: Tensor) -> Tensor:
    """table[ids]: ids [...] int32 | int64, table [V, D] -> [..., D]."""
    return _ops.embedding(ids, table)


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy over the tokens whose target != ignore_index (0-d float32; 0 when
    none is). logits [..., V], targets [...] int32 | int64."""
    return _ops.cross_entropy(logits, targets, int(ignore_index))


class MoERouteOutput(NamedTuple):
    """indices [T, k] int32 (best first), weights [T, k] float32, scores [T, E] float32."""

    indices: Tensor
    weights: Tensor
    scores: Tensor


def _route_list(fn: str, top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob,
                route_scale) -> tuple[list[int], float]:
    p = _dmoe._route_params(fn, top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob, route_scale)
    return [int(v) for v in p[:6]], float(p[6])


def moe_route(logits: Tensor, bias: Optional[Tensor] = None, *, top_k: int = 8, n_group: int = 8,
              topk_group: int = 4, scoring: str = "sigmoid", topk_method: str = "noaux_tc",
              norm_topk_prob: bool = True, route_scale: float = 2.5) -> MoERouteOutput:
    """Route T tokens to top_k of E experts (see deepseek_c.moe_route; V3 defaults).
    Gradients reach the logits through both the weights and the scores; none reaches the
    correction bias (it only selects)."""
    r, s = _route_list("dsc_moe_route", top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob,
                       route_scale)
    w, sc, idx = _ops.moe_route(logits, bias, r, s)
    return MoERouteOutput(idx, w, sc)


def moe_seq_aux_loss(scores: Tensor, indices: Tensor, seq_len: int, alpha: float = 1e-4) -> Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (0-d float32), differentiable
    in the scores (moe_route's .scores)."""
    return _ops.moe_seq_aux_loss(scores, indices, int(seq_len), float(alpha))


def moe_expert_load(indices: Tensor, n_experts: int) -> Tensor:
    """Tokens per expert: int64 [n_experts]."""
    return _ops.moe_expert_load(indices, int(n_experts))


def moe_update_bias(bias: Tensor, load: Tensor, rate: float = 1e-3) -> Tensor:
    """The aux-loss-free balancing step in place: bias += rate * sign(mean(load) - load).
    bias: float32 [E] (a buffer); load: int [E]. Returns bias."""
    with torch.no_grad():
        _ops.moe_update_bias(bias, load, float(rate))
    return bias


def _dtype(d: Any, fn: str, arg: str, allowed: Sequence[str]) -> torch.dtype:
    from deepseek_c._arrays import parse_dtype

    return getattr(torch, parse_dtype(d, fn, arg, allowed=allowed))


def fp8_cast(x: Tensor, dtype: Any) -> Tensor:
    """Elementwise cast between float32 | bfloat16 and float8_e4m3fn | float8_e5m2 (RNE,
    saturating; bit-identical to ml_dtypes). Not differentiable."""
    return _ops.fp8_cast(x, _dtype(dtype, "dsc_fp8_cast", "dtype",
                                   ("float8_e4m3fn", "float8_e5m2", "float32", "bfloat16")))


def fp8_quantize(x: Tensor, block: Sequence[int] = (1, 128), fmt: Any = "e4m3", transpose: bool = False,
                 pow2_scale: bool = False, amax_floor: float = 1e-4) -> tuple[Tensor, Tensor]:
    """(q, scale): block quantization as deepseek_c.fp8_quantize. Not differentiable."""
    return _ops.fp8_quantize(x, [int(b) for b in block], _dtype(fmt, "dsc_fp8_quantize", "fmt",
                                                                 ("float8_e4m3fn", "float8_e5m2")),
                             bool(transpose), bool(pow2_scale), float(amax_floor))


def fp8_dequantize(q: Tensor, scale: Tensor, block: Sequence[int] = (1, 128), dtype: Any = "float32") -> Tensor:
    """float(q) * scale per block. Not differentiable."""
    return _ops.fp8_dequantize(q, scale, [int(b) for b in block],
                               _dtype(dtype, "dsc_fp8_dequantize", "dtype", ("float32", "bfloat16")))


def fp8_gemm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, out_dtype: Any = "bfloat16") -> Tensor:
    """C = A @ B^T over block-scaled E4M3 operands with FP32 accumulation (deepseek_c.fp8_gemm).
    Not differentiable: its operands are E4M3 codes; fp8_linear is the differentiable FP8
    matmul (quantization inside, FP8 dgrad and wgrad)."""
    return _ops.fp8_gemm(a, a_scale, b, b_scale, _dtype(out_dtype, "dsc_fp8_gemm", "out_dtype",
                                                        ("float32", "bfloat16")))


def fp8_linear(x: Tensor, weight: Tensor, out_dtype: Optional[Any] = None) -> Tensor:
    """y = x @ weight^T the DeepSeek-V3 way: x quantized to E4M3 in 1x128 tiles, the float32
    master weight in 128x128 blocks, FP32 accumulation; backward in FP8 too (dgrad with the
    transposed weight blocks, wgrad with both operands re-tiled along the tokens); the weight
    gradient is float32. y in out_dtype (default x's dtype; bfloat16 under autocast)."""
    if out_dtype is None:
        if torch.is_autocast_enabled(x.device.type):
            out = torch.bfloat16
        else:
            out = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
    else:
        out = _dtype(out_dtype, "dsc_fp8_linear_forward", "out_dtype", ("float32", "bfloat16"))
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    return _ops.fp8_linear(x, weight, out)[0]


class MoELayerOutput(NamedTuple):
    """y like x; aux_loss: 0-d float32 (alpha * L_bal, 0 when off); expert_load: int32 [E]."""

    hidden_states: Tensor
    aux_loss: Tensor
    expert_load: Tensor


def moe_layer(x: Tensor, gate: Tensor, experts_gate: Tensor, experts_up: Tensor, experts_down: Tensor, *,
              bias: Optional[Tensor] = None, shared_gate: Optional[Tensor] = None,
              shared_up: Optional[Tensor] = None, shared_down: Optional[Tensor] = None, top_k: int = 8,
              n_group: int = 8, topk_group: int = 4, scoring: str = "sigmoid", topk_method: str = "noaux_tc",
              norm_topk_prob: bool = True, route_scale: float = 2.5, fp8: bool = False, align: Optional[int] = None,
              seq_len: Optional[int] = None, aux_alpha: float = 0.0) -> MoELayerOutput:
    """The whole DeepSeekMoE layer in one C call (dsc_moe_layer_forward / _backward): router
    gate [E, D] (logits in float32), V3 routing with the correction `bias` [E] (selection
    only), routed SwiGLU experts stacked experts_gate/up [E, F, D], experts_down [E, D, F],
    shared experts shared_gate/up [Fs, D], shared_down [D, Fs] (optional). x [..., D] float32.
    fp8: the expert GEMMs forward and backward in E4M3 (V3's recipe). aux_alpha > 0: the
    sequence-wise balance loss over sequences of seq_len tokens (default: x.shape[-2] for
    x [B, T, D], else all tokens), returned and differentiated. Activations are kept in C
    memory only when a gradient is needed, and freed with the autograd graph."""
    fn = "dsc_moe_layer_forward"
    r, s = _route_list(fn, top_k, n_group, topk_group, scoring, topk_method, norm_topk_prob, route_scale)
    if align is None:
        align = 128 if x.is_cuda else 1
    if seq_len is None:
        seq_len = int(x.shape[-2]) if x.dim() >= 3 else int(x.numel() // max(int(x.shape[-1]), 1))
    ws = (x, gate, experts_gate, experts_up, experts_down, shared_gate, shared_up, shared_down)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ws)
    y, load, aux, _h = _ops.moe_layer(x, gate, bias, experts_gate, experts_up, experts_down, shared_gate, shared_up,
                                      shared_down, r, s, int(align), bool(fp8), int(seq_len), float(aux_alpha),
                                      bool(keep))
    return MoELayerOutput(y, aux, load)


class MLAParams(NamedTuple):
    """An MLA layer's C parameters (dims, RMSNorm eps, RoPE/YaRN, softmax scale, fp8) as the
    op carries them, computed once from a config by mla_params."""

    ints: list
    floats: list
    q_lora: bool


def mla_params(cfg: Any, fp8: bool = False) -> MLAParams:
    """The MLAParams of a deepseek_c.ModelConfig (computed by the C core: YaRN's softmax
    scale). Compute them outside torch.compile (a module does it at construction)."""
    from deepseek_c import mla as _dmla

    c = _dmla._cfg(cfg, "dsc_mla_forward")
    ints, floats = _ops.mla_flat_params(_dmla.mla_params_tuple(c, fp8))
    return MLAParams(ints, floats, bool(c.q_lora))


_MLA_NAMES = ("q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_a_layernorm",
              "kv_b_proj", "o_proj")


def mla(x: Tensor, weights: Mapping[str, Tensor], cfg: Any, positions: Optional[Tensor] = None, *,
        fp8: bool = False) -> Tensor:
    """Causal Multi-head Latent Attention (training form, dsc_mla_forward / _backward).
    x [B, T, hidden] float32; weights by Hugging Face name ("q_a_proj", ... "o_proj", with
    or without ".weight"); cfg: a deepseek_c.ModelConfig (MLA dims, RoPE/YaRN, eps, softmax
    scale) or, under torch.compile, the MLAParams of mla_params(cfg, fp8) (then fp8 is
    theirs); positions [B, T] int (default 0..T-1). fp8: the projections in E4M3."""
    p = cfg if isinstance(cfg, MLAParams) else mla_params(cfg, fp8)
    needed = (("q_a_proj", "q_a_layernorm", "q_b_proj") if p.q_lora else ("q_proj",)) + (
        "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
    w = []
    for n in _MLA_NAMES:
        t = weights.get(n + ".weight", weights.get(n)) if n in needed else None
        if n in needed and t is None:
            raise ValueError(f"dsc_mla_forward: weights: expected '{n}.weight', got keys {sorted(weights)}")
        w.append(t)
    keep = torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in w))
    return _ops.mla(x, _pos(x, positions, "dsc_mla_forward"), *w, p.ints, p.floats, bool(keep))[0]
