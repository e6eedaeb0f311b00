"""ModelConfig: a DeepSeek-V2/V3 configuration built from Hugging Face ``config.json`` keys.

    cfg = dsc.ModelConfig.from_json("config.json")     # a DeepseekV3/V2 checkpoint's config
    cfg = dsc.ModelConfig(**keys)                        # the same keys as keyword arguments
    cfg = dsc.ModelConfig.tiny()                         # small, every code path live (CPU tests)

The keys are read by the C core's config parser (``dsc_model_config_normalize_json``), the
same one ``Model.from_pretrained`` and C programs use, so a config means the same thing on
every path. Keys a config leaves out take the defaults of its ``model_type``
(``"deepseek_v3"`` when absent: DeepSeek-V3's values; ``"deepseek_v2"``: softmax routing,
greedy top-k, no MTP, ... as transformers' DeepseekV2). Both spellings of the RoPE settings
are accepted -- ``rope_theta`` + ``rope_scaling`` and the newer ``rope_parameters`` -- and
must agree where both are given. ``q_lora_rank`` null or 0 means no query compression
(``q_proj``). Keys deepseek_c does not interpret are kept in ``extra`` (and written back).
Invalid values, and settings deepseek_c does not implement (a non-SiLU activation, biases, a
RoPE scaling other than YaRN), raise ValueError naming the key.
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
# Written by the C core from the other keys (HF's derived values): not kept in `extra`.
_DERIVED = ("head_dim", "qk_head_dim")


def _plain(key: str, v: Any) -> Any:
    """v as JSON types (NumPy scalars and arrays become Python numbers and lists)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"ModelConfig: {key}: expected a finite number, got {v!r}")
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(f"{key}.{k}", x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(key, x) for x in v]
    item = getattr(v, "item", None)  # NumPy scalars
    if callable(item) and getattr(v, "ndim", 1) == 0:
        return _plain(key, item())
    tolist = getattr(v, "tolist", None)
    if callable(tolist):
        return _plain(key, tolist())
    raise ValueError(f"ModelConfig: {key}: expected a JSON value (number, string, bool, None, list or dict), "
                     f"got {type(v).__name__}")


def _normalize(text: bytes, what: str) -> dict[str, Any]:
    """The C parser's canonical config.json for `text`, as a dict."""
    from . import _C

    try:
        return json.loads(_C.config_normalize(text))
    except (ValueError, _C.Error) as e:
        msg = str(e)
        raise ValueError(f"{what}: {msg}" if what else msg) from None


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
        extra.update(keys)
        text = json.dumps({str(k): _plain(str(k), v) for k, v in extra.items()}, allow_nan=False)
        self._take(_normalize(text.encode(), ""))

    def _take(self, canon: Mapping[str, Any]) -> None:
        """Set every field from a canonical dict (the C parser's output)."""
        canon = dict(canon)
        for f in dataclasses.fields(ModelConfig):
            if f.name == "extra":
                continue
            if f.name in canon:
                setattr(self, f.name, canon.pop(f.name))
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(self, f.name, f.default_factory())  # type: ignore[misc]
            else:
                setattr(self, f.name, f.default)
        for k in _DERIVED:
            canon.pop(k, None)
        self.extra = canon

    def validate(self) -> None:
        """Raise ValueError naming the first invalid key (the fields as they are now, read
        by the C parser)."""
        _normalize(self.to_json(indent=None).encode(), "")

    # ------------------------------------------------------------------ I/O

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"ModelConfig: expected a dict of config keys, got {type(d).__name__}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read a Hugging Face config.json (or a directory holding one). A malformed file
        raises ValueError naming the file and the place (line, column or key)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "config.json")
        with open(p, "rb") as fh:
            data = fh.read()
        return cls._from_canonical(_normalize(data, p))

    @classmethod
    def _from_canonical(cls, canon: Mapping[str, Any]) -> "ModelConfig":
        cfg = cls.__new__(cls)
        cfg._take(canon)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face keys (rope_theta + rope_scaling spelling); unknown keys from `extra` included."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["num_key_value_heads"] = d["num_attention_heads"]  # MLA: no grouped KV heads
        if d["quantization_config"] is None:
            del d["quantization_config"]
        d.update(self.extra)
        return json.loads(json.dumps(_plain("config", d)))  # deep copy, JSON types

    def to_json(self, path: Optional[str | os.PathLike] = None, indent: Optional[int] = 2) -> str:
        s = json.dumps(self.to_dict(), indent=indent, sort_keys=True)
        if path is not None:
            p = os.fspath(path)
            if os.path.isdir(p):
                p = os.path.join(p, "config.json")
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(s + "\n")
        return s

    def replace(self, **changes: Any) -> "ModelConfig":
        """A new config with `changes` applied (validated). Changing the RoPE settings in
        one spelling replaces them in the other."""
        d = self.to_dict()
        if "rope_parameters" in changes:
            for k in ("rope_scaling", "rope_theta"):
                if k not in changes:
                    d.pop(k, None)
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

    # ------------------------------------------------------------------ calculator (deepseek_c.calc)

    @classmethod
    def v2(cls) -> "ModelConfig":
        """DeepSeek-V2 (236B total, 21B activated): DeepSeek's inference/configs/config_236B.json
        in Hugging Face keys (group-limited softmax routing, 160 experts, no MTP); mscale 0.707
        as the V2 report's YaRN setting (the released configs differ on it; it does not change
        any count)."""
        return cls.v2_lite().replace(
            hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=60,
            num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, n_routed_experts=160,
            num_experts_per_tok=6, n_group=8, topk_group=3, topk_method="group_limited_greedy",
            routed_scaling_factor=16.0)

    # ModelConfig.calc(**options) is defined by deepseek_c.calc (above this module), which the
    # package always imports: calc.py uses ModelConfig, never the other way round.
