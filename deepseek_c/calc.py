"""The model calculator: what a config costs, from the config alone (no model is built).

    r = dsc.calc("config.json", context=4096)             # a Hugging Face config.json (path)
    r = dsc.ModelConfig.v3().calc(recipe="fp8", pp=16, dp=128, ep=64, zero1=True)
    print(r.report())

A thin wrapper of the C function ``dsc_model_calc`` (see ``deepseek_c.h`` for every
definition): the config is read by the C config parser, the one every path uses.

* parameters: the total (exactly the tensors ``dsc.Model`` builds, each once: the MTP
  modules share the embedding and the head), the embedding and the head on their own, the
  MTP modules' own, the routed experts, and those activated per token (DeepSeek's
  convention: embedding and head included);
* FLOPs per token (2 per multiply-add; matrix products and attention): forward by weights,
  attention (causal over ``context`` tokens), the MTP modules, training (3x forward), one
  decoded token over ``context`` cached tokens;
* KV-cache bytes per token: MLA in BF16 and FP8 (E4M3 latent + a float32 scale per 128 +
  BF16 rope key) vs the keys and values the same heads need as MHA, or as GQA with
  ``compare_kv_heads`` KV heads;
* memory per GPU for a precision recipe (``"fp32"``, ``"bf16"``, ``"fp8"`` = DeepSeek-V3's)
  and a parallel layout (``tp`` x ``pp`` x ``dp`` GPUs, ``ep`` expert-parallel ranks inside
  the data-parallel group, ``zero1`` sharding of masters and moments): weights, FP32 masters,
  FP32 gradients, AdamW moments and an estimate of one micro-batch's activations.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Union

from .config import ModelConfig

__all__ = ["ModelCalc", "calc", "RECIPES"]

RECIPES = {"fp32": 0, "bf16": 1, "fp8": 2}  # dsc_calc_recipe
_MOMENTS = {"float32": 1, "bfloat16": 2}      # dsc_dtype codes
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


@dataclass(frozen=True)
class ModelCalc:
    """dsc_calc_result with the options it was computed for (units: parameters, FLOPs per
    token, bytes)."""

    # options
    context: int
    recipe: str
    moments: str
    tp: int
    pp: int
    dp: int
    ep: int
    zero1: bool
    micro_batch_tokens: int
    compare_kv_heads: int
    # parameters
    params_total: int
    params_embedding: int
    params_head: int
    params_main: int
    params_mtp: int
    params_routed_experts: int
    params_active: int
    params_active_mtp: int
    n_tensors: int
    # FLOPs per token
    flops_fwd_weights: float
    flops_fwd_attention: float
    flops_fwd_mtp: float
    flops_train: float
    flops_decode: float
    decode_macs_main: int
    decode_macs_mtp: int
    # KV cache per token (all main layers)
    kv_values_per_layer: int
    kv_bytes_mla_bf16: int
    kv_bytes_mla_fp8: int
    kv_bytes_mha_bf16: int
    kv_bytes_gqa_bf16: int
    # weights of the whole model in the recipe's dtypes
    weight_bytes: int
    fp8_params: int
    fp8_scales: int
    checkpoint_bytes: int
    checkpoint_tensors: int
    # memory per GPU
    gpus: int
    mem_weights: float
    mem_master: float
    mem_grads: float
    mem_optimizer: float
    mem_activations: float
    mem_total: float

    @property
    def params_active_no_embedding(self) -> int:
        """Activated per token without the embedding (a lookup, not a product)."""
        return self.params_active - self.params_embedding

    @property
    def flops_fwd(self) -> float:
        """Main model forward FLOPs per token: weights + attention."""
        return self.flops_fwd_weights + self.flops_fwd_attention

    @property
    def mtp_cost_ratio(self) -> float:
        """Multiply-adds of one MTP draft over one main decode step (benchmarks/bench_decode.py's
        step_macs ratio; 0 without MTP). With acceptance a, MTP speculative decoding gains at
        most (1 + a) / (1 + ratio) per step."""
        return self.decode_macs_mtp / self.decode_macs_main if self.decode_macs_main else 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def report(self) -> str:
        """The text ``python -m deepseek_c info --config`` prints."""
        B, G = 1e9, 2.0**30

        def p(n: float) -> str:
            return f"{n / B:,.3f}B" if n >= 1e8 else f"{n / 1e6:,.3f}M" if n >= 1e5 else f"{int(n):,}"

        def by(n: float) -> str:
            return f"{n / G:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.2f} MiB" if n >= 2**20 else \
                f"{n / 1024:,.2f} KiB" if n >= 1024 else f"{n:,.0f} B"

        def fl(n: float) -> str:
            return f"{n / 1e9:,.2f} GFLOP" if n >= 1e8 else f"{n / 1e6:,.3f} MFLOP"

        ratio = self.kv_bytes_mha_bf16 / self.kv_bytes_mla_bf16
        lines = [
            "parameters",
            f"  total                 {p(self.params_total):>14}  ({self.params_total:,}; {self.n_tensors:,} tensors)",
            f"  main model            {p(self.params_main):>14}",
            f"  MTP modules (own)     {p(self.params_mtp):>14}  " + ("(embedding and head shared with the main model)"
                                                                 if self.params_mtp else "(no MTP)"),
            f"  routed experts        {p(self.params_routed_experts):>14}",
            f"  embedding             {p(self.params_embedding):>14}",
            f"  LM head               {p(self.params_head):>14}" + ("  (tied: the embedding)" if not
                                                                   self.params_head else ""),
            f"  activated per token   {p(self.params_active):>14}  (embedding and head included; "
            f"{p(self.params_active_no_embedding)} without the embedding)",
            f"  activated, MTP module {p(self.params_active_mtp):>14}  (its own tensors)",
            f"FLOPs per token (2 per multiply-add; context {self.context:,})",
            f"  forward, weights      {fl(self.flops_fwd_weights):>14}",
            f"  forward, attention    {fl(self.flops_fwd_attention):>14}  (causal over {self.context:,} tokens)",
            f"  forward, MTP modules  {fl(self.flops_fwd_mtp):>14}",
            f"  training (3x forward) {fl(self.flops_train):>14}",
            f"  decode one token      {fl(self.flops_decode):>14}  ({self.context:,} cached tokens, absorbed MLA)",
            f"  MTP draft / main step {self.mtp_cost_ratio:>14.4f}  (multiply-adds with weights)",
            "KV cache per token (all main layers)",
            f"  MLA bf16              {by(self.kv_bytes_mla_bf16):>14}  ({self.kv_values_per_layer} values per layer)",
            f"  MLA fp8               {by(self.kv_bytes_mla_fp8):>14}",
            f"  MHA, same heads, bf16 {by(self.kv_bytes_mha_bf16):>14}  ({ratio:.1f}x MLA bf16)",
        ]
        if self.compare_kv_heads:
            lines.append(f"  {f'GQA {self.compare_kv_heads} KV heads, bf16':<21} {by(self.kv_bytes_gqa_bf16):>14}  "
                         f"({self.kv_bytes_gqa_bf16 / self.kv_bytes_mla_bf16:.1f}x MLA bf16)")
        lines += [
            f"weights ({self.recipe})",
            f"  inference weights     {by(self.weight_bytes):>14}  ({self.weight_bytes:,} B)",
            f"  checkpoint            {by(self.checkpoint_bytes):>14}  ({self.checkpoint_tensors:,} tensors, "
            "with the MTP copies of embedding and head)",
            f"memory per GPU ({self.recipe}, moments {self.moments}; tp {self.tp} x pp {self.pp} x dp {self.dp} = "
            f"{self.gpus} GPUs, ep {self.ep}{', ZeRO-1' if self.zero1 else ''}; "
            f"micro-batch {self.micro_batch_tokens:,} tokens)",
            f"  weights               {by(self.mem_weights):>14}",
            f"  master weights        {by(self.mem_master):>14}",
            f"  gradients             {by(self.mem_grads):>14}",
            f"  optimizer moments     {by(self.mem_optimizer):>14}",
            f"  activations (est.)    {by(self.mem_activations):>14}",
            f"  total                 {by(self.mem_total):>14}",
        ]
        return "\n".join(lines)


def _int(fn: str, name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import numpy as np

            if isinstance(v, np.integer):
                v = int(v)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{fn}: {name}: expected an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{fn}: {name}: expected {lo} <= {name} <= {hi}, got {v}")
    return v


def calc(cfg: Union["ModelConfig", str, os.PathLike, dict], *, context: int = 4096, recipe: str = "fp8",
         moments: str = "bfloat16", tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1, zero1: bool = False,
         micro_batch_tokens: int = 4096, compare_kv_heads: int = 0) -> ModelCalc:
    """Parameters, FLOPs per token, KV-cache bytes and memory per GPU of `cfg` (a ModelConfig,
    a dict of config.json keys, or the path of a config.json / a directory holding one).

    context: training sequence length and tokens in the cache at decode. recipe: "fp32",
    "bf16" or "fp8" (DeepSeek-V3's: E4M3 block linears, BF16 rest, FP32 masters and
    gradients). moments: AdamW moments dtype ("bfloat16" as V3, or "float32"). tp, pp, dp:
    tensor, pipeline, data parallel sizes (tp * pp * dp GPUs); ep: expert parallel ranks
    (divides dp and n_routed_experts); zero1: shard masters and moments over replicas.
    micro_batch_tokens: tokens of a micro-batch per GPU (activations). compare_kv_heads:
    KV heads of the GQA comparison (0: MHA)."""
    from . import _C

    fn = "calc"
    if isinstance(cfg, ModelConfig):
        text = cfg.to_json(indent=None).encode()
    elif isinstance(cfg, dict):
        text = ModelConfig(**cfg).to_json(indent=None).encode()
    elif isinstance(cfg, (str, os.PathLike)):
        path = os.fspath(cfg)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, "rb") as fh:
                text = fh.read()
        except OSError as e:
            raise ValueError(f"{fn}: cfg: cannot read {path!r} ({e.strerror})") from None
    else:
        raise TypeError(f"{fn}: cfg: expected a ModelConfig, a dict of config keys or a config.json path, "
                        f"got {type(cfg).__name__}")
    if recipe not in RECIPES:
        raise ValueError(f"{fn}: recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}")
    if moments not in _MOMENTS:
        raise ValueError(f"{fn}: moments: expected 'float32' or 'bfloat16', got {moments!r}")
    if not isinstance(zero1, bool):
        raise TypeError(f"{fn}: zero1: expected a bool, got {type(zero1).__name__}")
    ctx = _int(fn, "context", context, 1, _INT64)
    ints = {k: _int(fn, k, v, 1, _INT32) for k, v in (("tp", tp), ("pp", pp), ("dp", dp), ("ep", ep))}
    mbt = _int(fn, "micro_batch_tokens", micro_batch_tokens, 1, _INT64)
    kvh = _int(fn, "compare_kv_heads", compare_kv_heads, 0, _INT32)
    try:
        r = _C.model_calc(text, ctx, RECIPES[recipe], _MOMENTS[moments], ints["tp"], ints["pp"], ints["dp"],
                          ints["ep"], int(zero1), mbt, kvh)
    except _C.Error as e:  # a config.json the parser refuses (DSC_ERR_FORMAT)
        raise ValueError(str(e)) from None
    return ModelCalc(context=ctx, recipe=recipe, moments=moments, zero1=zero1, micro_batch_tokens=mbt,
                     compare_kv_heads=kvh, **ints, **r)


def _config_calc(self: ModelConfig, **options: Any) -> ModelCalc:
    """Parameters, FLOPs per token, KV-cache bytes and memory per GPU of this config
    (``deepseek_c.calc.calc``: options context, recipe, moments, tp, pp, dp, ep, zero1,
    micro_batch_tokens, compare_kv_heads); a ModelCalc."""
    return calc(self, **options)


ModelConfig.calc = _config_calc  # the method lives here: config.py does not import calc.py
