"""Independent hand counts for the model calculator (dsc_model_calc): every tensor of a
DeepSeek-V3-architecture model listed by its Hugging Face name and shape, straight from the
architecture (DeepSeek-V3 report / the checkpoints' layout), then summed. Nothing here
calls deepseek_c."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Tensor:
    name: str
    shape: tuple
    kind: str          # "linear" (E4M3 in the FP8 recipe), "hp" (high precision), "bias" (float32)
    expert: bool       # a routed expert's
    active: bool       # used by every token of the module it is in (routed experts: K of E)
    module: str        # "main" or "mtp<d>"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def scales(self) -> int:  # 128x128 block scales of a linear
        n, k = self.shape
        return -(-n // 128) * -(-k // 128)


@dataclass
class Counts:
    tensors: list = field(default_factory=list)
    macs_main: int = 0          # multiply-adds with weights per token, main model (head included)
    macs_mtp: list = field(default_factory=list)  # per MTP depth: eh_proj + block + head
    act_values: float = 0.0     # saved activation values per token (the header's estimate)
    act_fp8: float = 0.0        # of which routed-expert inputs
    logits: int = 0             # logits values per token (main + MTP depths)


def count(c) -> Counts:
    """c: a ModelConfig (its fields are read, nothing else)."""
    V, D, L = c.vocab_size, c.hidden_size, c.num_hidden_layers
    Dm = c.num_nextn_predict_layers or 0
    H, dn, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    Rq, Rkv = (c.q_lora_rank or 0), c.kv_lora_rank
    E, K, F, Ns, I = c.n_routed_experts, c.num_experts_per_tok, c.moe_intermediate_size, c.n_shared_experts, \
        c.intermediate_size
    out = Counts()
    T = out.tensors

    def moe(i):
        return E > 0 and i >= c.first_k_dense_replace and i % c.moe_layer_freq == 0

    def block(i, mod):
        p = f"model.layers.{i}."
        macs = 0

        def lin(name, n, k, expert=False, active=True):
            T.append(Tensor(p + name, (n, k), "linear", expert, active, mod))
            return n * k

        T.append(Tensor(p + "input_layernorm.weight", (D,), "hp", False, True, mod))
        if Rq:
            macs += lin("self_attn.q_a_proj.weight", Rq, D)
            T.append(Tensor(p + "self_attn.q_a_layernorm.weight", (Rq,), "hp", False, True, mod))
            macs += lin("self_attn.q_b_proj.weight", H * (dn + dr), Rq)
        else:
            macs += lin("self_attn.q_proj.weight", H * (dn + dr), D)
        macs += lin("self_attn.kv_a_proj_with_mqa.weight", Rkv + dr, D)
        T.append(Tensor(p + "self_attn.kv_a_layernorm.weight", (Rkv,), "hp", False, True, mod))
        macs += lin("self_attn.kv_b_proj.weight", H * (dn + dv), Rkv)
        macs += lin("self_attn.o_proj.weight", D, H * dv)
        T.append(Tensor(p + "post_attention_layernorm.weight", (D,), "hp", False, True, mod))
        act = 2 * D + (2 * Rq if Rq else 0) + (Rkv + dr) + Rkv + 2 * H * (dn + dr) + 2 * H * dv + H
        act8 = 0
        if moe(i):
            T.append(Tensor(p + "mlp.gate.weight", (E, D), "hp", False, True, mod))
            macs += E * D
            if c.topk_method == "noaux_tc":
                T.append(Tensor(p + "mlp.gate.e_score_correction_bias", (E,), "bias", False, True, mod))
            for e in range(E):
                for proj, (n, k) in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
                    lin(f"mlp.experts.{e}.{proj}.weight", n, k, expert=True, active=False)
            macs += K * 3 * D * F
            if Ns:
                for proj, (n, k) in (("gate_proj", (F * Ns, D)), ("up_proj", (F * Ns, D)), ("down_proj", (D, F * Ns))):
                    macs += lin(f"mlp.shared_experts.{proj}.weight", n, k)
            act += 2 * D + E + K * (D + 3 * F) + 3 * F * Ns
            act8 = K * D
        else:
            for proj, (n, k) in (("gate_proj", (I, D)), ("up_proj", (I, D)), ("down_proj", (D, I))):
                macs += lin(f"mlp.{proj}.weight", n, k)
            act += 2 * D + 3 * I
        return macs, act, act8

    T.append(Tensor("model.embed_tokens.weight", (V, D), "hp", False, True, "main"))
    for i in range(L):
        m, a, a8 = block(i, "main")
        out.macs_main += m
        out.act_values += a
        out.act_fp8 += a8
    T.append(Tensor("model.norm.weight", (D,), "hp", False, True, "main"))
    if not c.tie_word_embeddings:
        T.append(Tensor("lm_head.weight", (V, D), "hp", False, True, "main"))
    out.macs_main += V * D
    out.act_values += 2 * D
    out.logits = V
    for d in range(Dm):
        i, mod = L + d, f"mtp{d}"
        T.append(Tensor(f"model.layers.{i}.enorm.weight", (D,), "hp", False, True, mod))
        T.append(Tensor(f"model.layers.{i}.hnorm.weight", (D,), "hp", False, True, mod))
        T.append(Tensor(f"model.layers.{i}.eh_proj.weight", (D, 2 * D), "hp", False, True, mod))
        m, a, a8 = block(i, mod)
        T.append(Tensor(f"model.layers.{i}.shared_head.norm.weight", (D,), "hp", False, True, mod))
        out.macs_mtp.append(2 * D * D + m + V * D)
        out.act_values += 6 * D + a + 2 * D
        out.act_fp8 += a8
        out.logits += V
    return out

