"""nn.Modules over deepseek_c's C layers, with Hugging Face DeepSeek-V3 parameter names.

    moe = dst.MoE(cfg)             # router + correction bias, routed + shared experts (fp8=False|True)
    mla = dst.MLA(cfg)             # training attention with YaRN; .prefill / .decode over a dsc.MLACache
    lin = dst.FP8Linear(4096, 4096)
    norm = dst.RMSNorm(4096)

``cfg`` is a deepseek_c.ModelConfig or a dict of Hugging Face config keys (unset keys take
DeepSeek-V3's values). Parameters are float32 (FP32 masters; the layers compute in float32,
FP8 where asked); initialization is DeepSeek-V3's (matrices N(0, initializer_range), norms 1,
correction bias 0).

State dicts use the names of transformers' DeepseekV3 modules: a MoE's ``state_dict()``
holds ``gate.weight``, ``gate.e_score_correction_bias``, ``experts.{e}.{gate,up,down}_proj.weight``
(per expert, as the checkpoints -- views of the stacked parameters, no copy) and
``shared_experts.{gate,up,down}_proj.weight``; ``load_state_dict`` also takes the fused
layout transformers 5 keeps in memory (``experts.gate_up_proj`` [E, 2F, D],
``experts.down_proj`` [E, D, F]). In memory the experts are stacked parameters
``experts.gate_proj`` / ``up_proj`` [E, F, D] and ``down_proj`` [E, D, F] (what the C layer
and the optimizer see: three tensors, not 3E).

Auxiliary-loss-free balancing: a MoE in training mode adds each forward's expert load to its
buffer ``expert_load``; ``update_bias()`` moves ``gate.e_score_correction_bias`` by
``bias_update_rate * sign(mean load - load)`` and clears the load (call it after each
optimizer step, or let ``deepseek_c.torch.register_bias_update(optimizer, model)`` do it).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn

from deepseek_c.config import ModelConfig
from deepseek_c.moe import MoEConfig

from . import functional as F

__all__ = ["RMSNorm", "Linear", "MLP", "FP8Linear", "MoEGate", "MoEExperts", "MoE", "MoEOutput", "MLA",
           "update_bias", "register_bias_update", "as_config"]


def as_config(cfg: Any) -> ModelConfig:
    """A ModelConfig from a ModelConfig or a dict of Hugging Face keys."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return ModelConfig(**dict(cfg))
    raise TypeError(f"deepseek_c.torch: cfg: expected a deepseek_c.ModelConfig or a dict of config keys, "
                    f"got {type(cfg).__name__}")


def _f32(device: Any) -> dict:
    return dict(device=device, dtype=torch.float32)


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x**2) + eps) over the last dim (float32 weight; bf16 x is fine
    under autocast, which runs it in float32)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, device: Any = None) -> None:
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(int(hidden_size), **_f32(device)))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Linear(nn.Module):
    """y = x @ weight^T through the C GEMM (no bias; weight [out, in] float32,
    initialized N(0, std))."""

    def __init__(self, in_features: int, out_features: int, *, std: float = 0.02, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **_f32(device)))
        nn.init.normal_(self.weight, 0.0, std)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class MLP(nn.Module):
    """The SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)) (dense layers, shared experts)."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, std: float = 0.02, device: Any = None) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, std=std, device=device)
        self.up_proj = Linear(hidden_size, intermediate_size, std=std, device=device)
        self.down_proj = Linear(intermediate_size, hidden_size, std=std, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))


class FP8Linear(nn.Module):
    """DeepSeek-V3's FP8 linear layer: a float32 master weight [out, in]; forward and backward
    as block-scaled E4M3 GEMMs (x in 1x128 tiles, the weight in 128x128 blocks, FP32
    accumulation); the weight gradient is float32. Optional bias (added in PyTorch)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, std: Optional[float] = None,
                 device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **_f32(device)))
        nn.init.normal_(self.weight, 0.0, std if std is not None else self.in_features ** -0.5)
        self.bias = nn.Parameter(torch.zeros(self.out_features, **_f32(device))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.fp8_linear(x, self.weight)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MoEGate(nn.Module):
    """The router: weight [E, D] and, for V3 routing (sigmoid + noaux_tc), the correction bias
    buffer e_score_correction_bias [E] (selection only; trained by update_bias, not by
    gradients)."""

    def __init__(self, hidden_size: int, n_experts: int, uses_bias: bool, *, std: float = 0.02,
                 device: Any = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(int(n_experts), int(hidden_size), **_f32(device)))
        nn.init.normal_(self.weight, 0.0, std)
        if uses_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(int(n_experts), **_f32(device)))
        else:
            self.e_score_correction_bias = None


_PROJ = ("gate_proj", "up_proj", "down_proj")


class MoEExperts(nn.Module):
    """The routed experts, stacked: gate_proj, up_proj [E, F, D], down_proj [E, D, F]. Their
    state dict is per expert (``{e}.gate_proj.weight``, views), as in the checkpoints."""

    def __init__(self, n_experts: int, hidden_size: int, intermediate_size: int, *, std: float = 0.02,
                 device: Any = None) -> None:
        super().__init__()
        E, D, Fi = int(n_experts), int(hidden_size), int(intermediate_size)
        self.n_experts = E
        self.gate_proj = nn.Parameter(torch.empty(E, Fi, D, **_f32(device)))
        self.up_proj = nn.Parameter(torch.empty(E, Fi, D, **_f32(device)))
        self.down_proj = nn.Parameter(torch.empty(E, D, Fi, **_f32(device)))
        for p in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(p, 0.0, std)
        self.register_state_dict_post_hook(MoEExperts._per_expert)
        self.register_load_state_dict_pre_hook(MoEExperts._stack)

    @staticmethod
    def _per_expert(module: "MoEExperts", state_dict: dict, prefix: str, _meta: Any) -> None:
        for proj in _PROJ:
            stacked = state_dict.pop(prefix + proj)
            for e in range(stacked.shape[0]):
                state_dict[f"{prefix}{e}.{proj}.weight"] = stacked[e]

    @staticmethod
    def _stack(self: "MoEExperts", state_dict: dict, prefix: str, _meta: Any, _strict: bool, _missing: list,
               _unexpected: list, error_msgs: list) -> None:
        E = self.n_experts
        fused = prefix + "gate_up_proj"  # transformers 5: [E, 2F, D], gate rows first
        if fused in state_dict:
            gu = state_dict.pop(fused)
            Fi = self.gate_proj.shape[1]
            if tuple(gu.shape) != (E, 2 * Fi, self.gate_proj.shape[2]):
                error_msgs.append(f"{fused}: expected shape {(E, 2 * Fi, self.gate_proj.shape[2])}, got "
                                  f"{tuple(gu.shape)}")
                return
            state_dict[prefix + "gate_proj"] = gu[:, :Fi]
            state_dict[prefix + "up_proj"] = gu[:, Fi:]
        for proj in _PROJ:
            names = [f"{prefix}{e}.{proj}.weight" for e in range(E)]
            have = [n for n in names if n in state_dict]
            if not have:
                continue
            if len(have) != E:
                error_msgs.append(f"{prefix}{{e}}.{proj}.weight: expected all {E} experts, got {len(have)}")
                return
            if prefix + proj in state_dict:
                error_msgs.append(f"{prefix}{proj}: given both stacked and per expert")
                return
            state_dict[prefix + proj] = torch.stack([state_dict.pop(n) for n in names])


class MoEOutput(NamedTuple):
    """hidden_states like x; aux_loss 0-d float32 (alpha * L_bal; 0 when aux_alpha = 0);
    expert_load int32 [E] of this call."""

    hidden_states: Tensor
    aux_loss: Tensor
    expert_load: Tensor


class MoE(nn.Module):
    """DeepSeekMoE (transformers' DeepseekV3MoE names): ``gate`` (router + correction bias),
    ``experts`` (routed SwiGLU experts), ``shared_experts`` (an MLP of n_shared_experts *
    moe_intermediate_size, absent when n_shared_experts is 0), run by the C layer in one call
    forward and one backward (dsc_moe_layer_*).

    fp8: the expert GEMMs in E4M3 the V3 way (router in float32). aux_alpha > 0: the
    sequence-wise balance loss over sequences of seq_len tokens (default: T of x [B, T, D]),
    in ``forward(x, return_aux=True).aux_loss`` and in ``self.aux_loss`` after each call (for
    models that collect it from their layers; it holds the autograd graph -- and the layer's
    saved C activations -- until the next call).
    bias_update_rate: gamma of update_bias. x: [..., hidden] float32 (under autocast, cast)."""

    def __init__(self, cfg: Any, *, fp8: bool = False, aux_alpha: float = 0.0, seq_len: Optional[int] = None,
                 bias_update_rate: float = 1e-3, align: Optional[int] = None, device: Any = None) -> None:
        super().__init__()
        c = as_config(cfg)
        self.cfg = c
        m = MoEConfig.from_dict(c)
        self.moe_cfg = m
        self.fp8, self.aux_alpha, self.seq_len = bool(fp8), float(aux_alpha), seq_len
        self.bias_update_rate, self.align = float(bias_update_rate), align
        std = float(c.initializer_range)
        D, E, Fi = int(c.hidden_size), int(m.n_routed_experts), int(m.moe_intermediate_size)
        self.gate = MoEGate(D, E, m.uses_bias, std=std, device=device)
        self.experts = MoEExperts(E, D, Fi, std=std, device=device)
        self.shared_experts = MLP(D, Fi * int(m.n_shared_experts), std=std, device=device) \
            if m.n_shared_experts else None
        self.register_buffer("expert_load", torch.zeros(E, dtype=torch.int64, device=device), persistent=False)
        self.aux_loss: Optional[Tensor] = None

    def forward(self, x: Tensor, return_aux: bool = False):
        m, se = self.moe_cfg, self.shared_experts
        out = F.moe_layer(
            x, self.gate.weight, self.experts.gate_proj, self.experts.up_proj, self.experts.down_proj,
            bias=self.gate.e_score_correction_bias,
            shared_gate=se.gate_proj.weight if se is not None else None,
            shared_up=se.up_proj.weight if se is not None else None,
            shared_down=se.down_proj.weight if se is not None else None,
            top_k=m.num_experts_per_tok, n_group=m.n_group or 1, topk_group=m.topk_group or 1,
            scoring=m.scoring_func, topk_method=m.topk_method, norm_topk_prob=m.norm_topk_prob,
            route_scale=m.routed_scaling_factor, fp8=self.fp8, align=self.align, seq_len=self.seq_len,
            aux_alpha=self.aux_alpha)
        if self.training:
            self.expert_load.add_(out.expert_load)
        # kept only when there is one to add to the loss (it holds the graph until then)
        self.aux_loss = out.aux_loss if self.aux_alpha > 0 else None
        if return_aux:
            return MoEOutput(out.hidden_states, out.aux_loss, out.expert_load)
        return out.hidden_states

    @torch.no_grad()
    def update_bias(self, rate: Optional[float] = None) -> None:
        """The aux-loss-free balancing step from the load accumulated since the last call:
        bias += rate * sign(mean(load) - load) (rate: bias_update_rate by default); then the
        load is cleared. No-op without a correction bias or without load."""
        b = self.gate.e_score_correction_bias
        if b is not None and int(self.expert_load.sum()) > 0:
            F.moe_update_bias(b, self.expert_load, self.bias_update_rate if rate is None else float(rate))
        self.expert_load.zero_()

    def extra_repr(self) -> str:
        m = self.moe_cfg
        return (f"experts={m.n_routed_experts}, top_k={m.num_experts_per_tok}, groups={m.n_group}/{m.topk_group}, "
                f"shared={m.n_shared_experts}, fp8={self.fp8}, aux_alpha={self.aux_alpha}")


class MLA(nn.Module):
    """Multi-head Latent Attention (transformers' DeepseekV3Attention names: q_a_proj,
    q_a_layernorm, q_b_proj -- or q_proj without query compression --, kv_a_proj_with_mqa,
    kv_a_layernorm, kv_b_proj, o_proj), causal, RoPE/YaRN from cfg, computed by the C layer
    (dsc_mla_forward / _backward; fp8: E4M3 projections).

    forward(x [B, T, hidden], positions [B, T] = 0..T-1) -> [B, T, hidden] float32.
    prefill / decode: inference over a deepseek_c.MLACache (paged latent cache, weight
    absorption) -- no gradient; eager only (the cache is state outside the graph)."""

    def __init__(self, cfg: Any, *, fp8: bool = False, layer_idx: int = 0, device: Any = None) -> None:
        super().__init__()
        c = as_config(cfg)
        self.cfg, self.fp8, self.layer_idx = c, bool(fp8), int(layer_idx)
        std = float(c.initializer_range)
        D, H = int(c.hidden_size), int(c.num_attention_heads)
        dqk = int(c.qk_nope_head_dim) + int(c.qk_rope_head_dim)
        if c.q_lora_rank:
            self.q_a_proj = Linear(D, int(c.q_lora_rank), std=std, device=device)
            self.q_a_layernorm = RMSNorm(int(c.q_lora_rank), c.rms_norm_eps, device=device)
            self.q_b_proj = Linear(int(c.q_lora_rank), H * dqk, std=std, device=device)
        else:
            self.q_proj = Linear(D, H * dqk, std=std, device=device)
        self.kv_a_proj_with_mqa = Linear(D, int(c.kv_lora_rank) + int(c.qk_rope_head_dim), std=std, device=device)
        self.kv_a_layernorm = RMSNorm(int(c.kv_lora_rank), c.rms_norm_eps, device=device)
        self.kv_b_proj = Linear(int(c.kv_lora_rank), H * (int(c.qk_nope_head_dim) + int(c.v_head_dim)), std=std,
                                device=device)
        self.o_proj = Linear(H * int(c.v_head_dim), D, std=std, device=device)
        self._params = F.mla_params(c, self.fp8)  # computed once (the op's static arguments)

    def _weights(self) -> dict[str, Tensor]:
        names = (("q_a_proj", "q_a_layernorm", "q_b_proj") if self.cfg.q_lora_rank else ("q_proj",)) + (
            "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
        return {n: getattr(self, n).weight for n in names}

    def forward(self, x: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        return F.mla(x, self._weights(), self._params, positions)

    @torch.no_grad()
    def _infer(self, decode: bool, x: Tensor, cache: Any, seq_ids: Any, positions: Optional[Tensor]) -> Tensor:
        from deepseek_c import mla as _dmla

        w = {k: v.detach() for k, v in self._weights().items()}
        f = _dmla.mla_decode if decode else _dmla.mla_prefill
        pos = positions.to(torch.int32).contiguous() if positions is not None else None
        return f(x.detach().contiguous().float(), w, self.cfg, cache, seq_ids, pos, layer=self.layer_idx,
                 fp8=self.fp8)

    def prefill(self, x: Tensor, cache: Any, seq_ids: Any, positions: Optional[Tensor] = None) -> Tensor:
        """Attention of prompt tokens x [B, T, hidden] that also fills `cache` (a
        deepseek_c.MLACache) for sequences seq_ids (see deepseek_c.mla_prefill)."""
        return self._infer(False, x, cache, seq_ids, positions)

    def decode(self, x: Tensor, cache: Any, seq_ids: Any, positions: Optional[Tensor] = None) -> Tensor:
        """New tokens x [B, T, hidden] attending to the cached latents (weight absorption; see
        deepseek_c.mla_decode)."""
        return self._infer(True, x, cache, seq_ids, positions)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"hidden={c.hidden_size}, heads={c.num_attention_heads}, q_lora_rank={c.q_lora_rank}, "
                f"kv_lora_rank={c.kv_lora_rank}, fp8={self.fp8}")


def update_bias(model: nn.Module, rate: Optional[float] = None) -> None:
    """update_bias(rate) on every module of `model` that balances experts (MoE,
    DeepseekV3ForCausalLM): the aux-loss-free step from the load since the last update."""
    for mod in model.modules():
        if isinstance(mod, MoE) or getattr(mod, "_dsc_balances_experts", False):
            mod.update_bias(rate)


def register_bias_update(optimizer: torch.optim.Optimizer, model: nn.Module, rate: Optional[float] = None):
    """Run update_bias(model) after every optimizer.step() (a step post-hook); returns the
    hook's handle (``.remove()`` it to stop)."""
    return optimizer.register_step_post_hook(lambda _opt, _args, _kw: update_bias(model, rate))
