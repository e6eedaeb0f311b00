"""ModelConfig: a DeepSeek-V2/V3 configuration built from Hugging Face ``config.json`` keys.

    cfg = dsc.ModelConfig.from_json("config.json")     # a DeepseekV3/V2 checkpoint's config
    cfg = dsc.ModelConfig(**keys)                        # the same keys as keyword arguments
    cfg = dsc.ModelConfig.tiny()                         # small, every code path live (CPU tests)

Defaults are DeepSeek-V3's (671B) where Hugging Face has them. Both spellings of the RoPE
settings are accepted: ``rope_theta`` + ``rope_scaling`` ({"type": "yarn", ...}) and the
newer ``rope_parameters`` ({"rope_type": "yarn", "rope_theta": ..., ...}). ``q_lora_rank``
null or 0 means no query compression (``q_proj``, as in DeepSeek-V2-Lite). Keys this class
does not know are kept in ``extra`` (and written back by ``to_dict``), never rejected.
Invalid values raise ValueError naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["ModelConfig"]

_V3_ROPE_SCALING = {
    "type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
}


@dataclass
class ModelConfig:
    """DeepSeek-V3-style model configuration (Hugging Face key names)."""

    # architecture and MLA
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_nextn_predict_layers: int = 1
    num_attention_heads: int = 128
    num_key_value_heads: int = 128
    q_lora_rank: Optional[int] = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # MoE
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    ep_size: int = 1
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    # position, norm, tokens, other
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = field(default_factory=lambda: dict(_V3_ROPE_SCALING))
    rope_interleave: bool = True
    max_position_embeddings: int = 163840
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[Any] = 1
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    pretraining_tp: int = 1
    use_cache: bool = True
    torch_dtype: Optional[str] = "bfloat16"
    model_type: str = "deepseek_v3"
    architectures: Optional[list] = field(default_factory=lambda: ["DeepseekV3ForCausalLM"])
    quantization_config: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction

    def __init__(self, **keys: Any) -> None:
        keys = dict(keys)
        extra = dict(keys.pop("extra", None) or {})
        rope_parameters = keys.pop("rope_parameters", None)
        names = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}
        for f in dataclasses.fields(ModelConfig):
            if f.name == "extra":
                continue
            if f.name in keys:
                setattr(self, f.name, keys.pop(f.name))
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(self, f.name, f.default_factory())  # type: ignore[misc]
            else:
                setattr(self, f.name, f.default)
        extra.update({k: v for k, v in keys.items() if k not in names})
        self.extra = extra
        if rope_parameters is not None:
            self._take_rope_parameters(rope_parameters, explicit_scaling="rope_scaling" in keys)
        self._normalize()
        self.validate()

    def _take_rope_parameters(self, rp: Any, explicit_scaling: bool) -> None:
        if not isinstance(rp, Mapping):
            raise ValueError(f"rope_parameters: expected a dict, got {type(rp).__name__}")
        rp = dict(rp)
        if "rope_theta" in rp:
            self.rope_theta = rp.pop("rope_theta")
        kind = rp.pop("rope_type", rp.pop("type", "default"))
        if kind in ("default", None):
            self.rope_scaling = None
        else:
            self.rope_scaling = {"type": kind, **rp}

    def _normalize(self) -> None:
        if self.q_lora_rank in (None, 0):
            self.q_lora_rank = None
        # MLA has no grouped KV heads: DeepSeek's configs carry num_key_value_heads equal to
        # num_attention_heads, and Hugging Face's DeepseekV3 needs them equal.
        self.num_key_value_heads = self.num_attention_heads
        if isinstance(self.rope_scaling, Mapping):
            rs = dict(self.rope_scaling)
            if "rope_type" in rs and "type" not in rs:
                rs["type"] = rs.pop("rope_type")
            rs.pop("rope_type", None)
            if "rope_theta" in rs:
                self.rope_theta = rs.pop("rope_theta")
            if rs.get("type") == "default":
                rs = None
            self.rope_scaling = rs

    def validate(self) -> None:
        """Raise ValueError naming the first invalid key."""
        def pos_int(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ModelConfig: {name}: expected a positive integer, got {v!r}")

        for n in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                  "num_hidden_layers", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "n_group", "topk_group",
                  "num_experts_per_tok", "moe_layer_freq"):
            pos_int(n)
        pos_int("q_lora_rank", allow_none=True)
        for n in ("n_routed_experts", "n_shared_experts", "first_k_dense_replace",
                  "num_nextn_predict_layers"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ModelConfig: {n}: expected an integer >= 0, got {v!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"ModelConfig: qk_rope_head_dim: expected an even number, got {self.qk_rope_head_dim}")
        for n in ("rms_norm_eps", "rope_theta", "routed_scaling_factor"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"ModelConfig: {n}: expected a finite number >= 0, got {v!r}")
        if self.rope_theta <= 1:
            raise ValueError(f"ModelConfig: rope_theta: expected a base > 1, got {self.rope_theta!r}")
        if self.n_routed_experts and self.n_routed_experts % self.n_group:
            raise ValueError(f"ModelConfig: n_group: expected a divisor of n_routed_experts "
                             f"{self.n_routed_experts}, got {self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"ModelConfig: topk_group: expected <= n_group {self.n_group}, got {self.topk_group}")
        if self.n_routed_experts and self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"ModelConfig: num_experts_per_tok: expected <= n_routed_experts "
                             f"{self.n_routed_experts}, got {self.num_experts_per_tok}")
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ValueError(f"ModelConfig: scoring_func: expected 'sigmoid' or 'softmax', got {self.scoring_func!r}")
        if self.topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
            raise ValueError(f"ModelConfig: topk_method: expected 'noaux_tc', 'greedy' or "
                             f"'group_limited_greedy', got {self.topk_method!r}")
        rs = self.rope_scaling
        if rs is not None:
            if not isinstance(rs, Mapping):
                raise ValueError(f"ModelConfig: rope_scaling: expected a dict or None, got {type(rs).__name__}")
            if rs.get("type") != "yarn":
                raise ValueError(f"ModelConfig: rope_scaling: expected type 'yarn' (DeepSeek-V2/V3), "
                                 f"got {rs.get('type')!r}")
            f = rs.get("factor")
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
                raise ValueError(f"ModelConfig: rope_scaling.factor: expected a finite number > 0, got {f!r}")

    # ------------------------------------------------------------------ I/O

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"ModelConfig: expected a dict of config keys, got {type(d).__name__}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read a Hugging Face config.json (or a directory holding one)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "config.json")
        with open(p, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face keys (rope_scaling spelling); unknown keys from `extra` included."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["num_key_value_heads"] = d["num_attention_heads"]  # see _normalize
        if d["quantization_config"] is None:
            del d["quantization_config"]
        d.update(self.extra)
        return json.loads(json.dumps(d))  # deep copy, JSON types

    def to_json(self, path: Optional[str | os.PathLike] = None, indent: int = 2) -> str:
        s = json.dumps(self.to_dict(), indent=indent, sort_keys=True)
        if path is not None:
            p = os.fspath(path)
            if os.path.isdir(p):
                p = os.path.join(p, "config.json")
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(s + "\n")
        return s

    def replace(self, **changes: Any) -> "ModelConfig":
        d = self.to_dict()
        d.update(changes)
        return ModelConfig(**d)

    # ------------------------------------------------------------------ presets

    @classmethod
    def v3(cls) -> "ModelConfig":
        """DeepSeek-V3 (671B) as in its config.json."""
        return cls(quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                                        "quant_method": "fp8", "weight_block_size": [128, 128]})

    @classmethod
    def v2_lite(cls) -> "ModelConfig":
        """DeepSeek-V2-Lite (15.7B): no query compression, softmax greedy routing."""
        return cls(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                   num_hidden_layers=27, num_nextn_predict_layers=0, num_attention_heads=16, num_key_value_heads=16,
                   q_lora_rank=None, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                   first_k_dense_replace=1, n_group=1, topk_group=1, topk_method="greedy",
                   scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
                   rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
                   bos_token_id=100000, eos_token_id=100001, model_type="deepseek_v2",
                   architectures=["DeepseekV2ForCausalLM"])

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A small config that keeps every code path live and runs fast on a CPU
        (DEEPSEEK_V3.md 6.4's suggestion, scaled down): query compression, YaRN factor 4
        over an original 64 positions, 16 experts in 4 groups, sigmoid + noaux_tc."""
        keys = dict(
            vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
            num_hidden_layers=2, num_nextn_predict_layers=1, num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
            n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
            first_k_dense_replace=1, max_position_embeddings=256,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                          "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
            torch_dtype="float32", architectures=["DeepseekV3ForCausalLM"],
        )
        keys.update(overrides)
        return cls(**keys)

    # ------------------------------------------------------------------ derived

    @property
    def qk_head_dim(self) -> int:
        return int(self.qk_nope_head_dim + self.qk_rope_head_dim)

    @property
    def q_lora(self) -> bool:
        """True when queries are compressed (q_a_proj / q_b_proj), False for q_proj."""
        return bool(self.q_lora_rank)

    @property
    def rope_scaling_dict(self) -> Optional[dict]:
        """The YaRN dict with every key filled in (defaults of the HF implementation),
        or None without scaling."""
        if self.rope_scaling is None:
            return None
        rs = dict(self.rope_scaling)
        return {
            "type": "yarn", "factor": float(rs["factor"]),
            "original_max_position_embeddings": int(rs.get("original_max_position_embeddings", 4096)),
            "beta_fast": float(rs.get("beta_fast", 32.0)), "beta_slow": float(rs.get("beta_slow", 1.0)),
            "mscale": float(rs.get("mscale", 1.0)), "mscale_all_dim": float(rs.get("mscale_all_dim", 0.0)),
        }

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-1/2 * m(factor, mscale_all_dim)^2 (DeepSeek's YaRN correction)."""
        from .ops import rope_softmax_scale

        return rope_softmax_scale(self.qk_head_dim, scaling=self.rope_scaling_dict)

    @property
    def mla_cache_elements_per_token(self) -> int:
        """Values cached per token and layer by MLA: kv_lora_rank + qk_rope_head_dim."""
        return int(self.kv_lora_rank + self.qk_rope_head_dim)

    def mla_weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of one attention layer's weights, keyed by Hugging Face names."""
        H, d = self.num_attention_heads, self.hidden_size
        s: dict[str, tuple[int, ...]] = {}
        if self.q_lora:
            s["q_a_proj.weight"] = (self.q_lora_rank, d)
            s["q_a_layernorm.weight"] = (self.q_lora_rank,)
            s["q_b_proj.weight"] = (H * self.qk_head_dim, self.q_lora_rank)
        else:
            s["q_proj.weight"] = (H * self.qk_head_dim, d)
        s["kv_a_proj_with_mqa.weight"] = (self.kv_lora_rank + self.qk_rope_head_dim, d)
        s["kv_a_layernorm.weight"] = (self.kv_lora_rank,)
        s["kv_b_proj.weight"] = (H * (self.qk_nope_head_dim + self.v_head_dim), self.kv_lora_rank)
        s["o_proj.weight"] = (d, H * self.v_head_dim)
        return s
