"""Multi-head Latent Attention (DeepSeek-V2/V3): training forward/backward, and inference
over a paged latent cache with weight absorption.

    out, ctx = dsc.mla_forward(x, params, cfg, positions)      # causal self-attention
    grads = dsc.mla_backward(dout, ctx)                          # {"x": dx, "<hf name>": dW, ...}
    cache = dsc.MLACache(cfg, max_batch=8, max_tokens=4096, block_size=64, dtype="bfloat16")
    cache.add_sequence(0)
    out = dsc.mla_prefill(x, params, cfg, cache, seq_ids, positions)
    out = dsc.mla_decode(x, params, cfg, cache, seq_ids, positions)

``params`` maps the Hugging Face names of one attention layer ("q_a_proj.weight",
"q_a_layernorm.weight", "q_b_proj.weight" -- or "q_proj.weight" when q_lora_rank is null --
"kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight";
the ".weight" suffix is optional) to float32 arrays laid out as in the checkpoints (RoPE
dims interleaved in pairs). ``cfg`` is a :class:`deepseek_c.ModelConfig`. ``x`` is
[B, T, hidden] float32, ``positions`` [B, T] int32.

Shapes: B batch, T tokens, H heads, R kv_lora_rank, dr qk_rope_head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import _C
from ._arrays import INT64, Array, as_int, device_of, empty_like_ns, finish, namespace, parse_device, parse_dtype
from .config import ModelConfig
from .ops import _rope_params

__all__ = ["mla_forward", "mla_backward", "MLACtx", "MLACache", "mla_prefill", "mla_decode",
           "mla_params_tuple", "MLA_WEIGHT_NAMES"]

MLA_WEIGHT_NAMES = ("q_a_proj", "q_a_layernorm", "q_b_proj", "q_proj", "kv_a_proj_with_mqa",
                    "kv_a_layernorm", "kv_b_proj", "o_proj")


def _cfg(cfg: Any, fn: str) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return ModelConfig(**cfg)
    raise TypeError(f"{fn}: cfg: expected a deepseek_c.ModelConfig, got {type(cfg).__name__}")


def mla_params_tuple(cfg: ModelConfig, fp8: bool = False) -> tuple:
    """The C parameter tuple of an MLA layer of `cfg` (fp8: FP8 projections)."""
    rope = _rope_params("dsc_mla", cfg.qk_rope_head_dim, "interleaved", cfg.rope_theta, cfg.rope_scaling_dict)
    return (int(cfg.hidden_size), int(cfg.num_attention_heads), int(cfg.q_lora_rank or 0),
            int(cfg.kv_lora_rank), int(cfg.qk_nope_head_dim), int(cfg.qk_rope_head_dim),
            int(cfg.v_head_dim), float(cfg.rms_norm_eps), rope, float(cfg.softmax_scale), int(bool(fp8)))


def _weights(params: Mapping[str, Array], cfg: ModelConfig, fn: str) -> tuple:
    if not isinstance(params, Mapping):
        raise TypeError(f"{fn}: params: expected a dict of Hugging Face names to arrays, got {type(params).__name__}")
    needed = (("q_a_proj", "q_a_layernorm", "q_b_proj") if cfg.q_lora else ("q_proj",)) + (
        "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj")
    out = []
    for n in MLA_WEIGHT_NAMES:
        if n not in needed:
            out.append(None)
            continue
        v = params.get(n + ".weight", params.get(n))
        if v is None:
            raise ValueError(f"{fn}: params: expected '{n}.weight' (q_lora_rank={cfg.q_lora_rank}), "
                             f"got keys {sorted(params)}")
        out.append(v)
    return tuple(out)


def _positions(x: Array, positions: Optional[Array], fn: str) -> Array:
    namespace(x, fn, "x")  # TypeError naming x when it is not an array
    if positions is not None:
        return positions
    shape = tuple(int(s) for s in x.shape)
    if len(shape) != 3:
        raise ValueError(f"{fn}: x: expected 3 dims (B, T, hidden), got shape {shape}")
    return np.ascontiguousarray(np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape[:2]))


@dataclass
class MLACtx:
    """What mla_backward needs: the saved activations (C-owned) and the forward's inputs."""

    saved: Any
    x: Array
    positions: Array
    weights: tuple
    params: tuple
    cfg: ModelConfig
    math_mode: int = 0  # the forward's dsc_math_mode (the backward runs in it too)


def mla_forward(x: Array, params: Mapping[str, Array], cfg: ModelConfig,
                positions: Optional[Array] = None, *, need_backward: bool = True,
                fp8: bool = False, bf16_operands: bool = False) -> tuple[Array, MLACtx]:
    """Causal MLA self-attention over each sequence of the batch (training form).

    x: [B, T, hidden] float32; positions: [B, T] int32 >= 0 (RoPE angles; default 0..T-1);
    the causal mask is by token index. Returns (out [B, T, hidden] float32, ctx).
    fp8: the five projections run as block-scaled FP8 GEMMs the V3 way (E4M3, activations
    in 1x128 tiles, weights in 128x128 blocks; mla_backward follows the forward).
    bf16_operands: the call (and its mla_backward) in the context math mode
    DSC_MATH_BF16_OPERANDS: on CUDA the float32 GEMMs and the attention core round their
    operands to BF16 for the tensor cores (FP32 accumulation, softmax and sums); the CPU
    computes exact float32 either way.
    """
    fn = "dsc_mla_forward"
    cfg = _cfg(cfg, fn)
    w = _weights(params, cfg, fn)
    pos = _positions(x, positions, fn)
    p = mla_params_tuple(cfg, fp8)
    out = empty_like_ns(x, tuple(int(s) for s in x.shape), "float32", fn, "out")
    mode = 1 if bf16_operands else 0
    saved = _C.mla_forward(x, pos, w, p, out, bool(need_backward), mode)
    return finish(x, out), MLACtx(saved, x, pos, w, p, cfg, mode)


def mla_backward(dout: Array, ctx: MLACtx) -> dict[str, Array]:
    """Gradients of the forward that made `ctx`: {"x": dx, "<hf name>.weight": dW (float32)}."""
    fn = "dsc_mla_backward"
    if not isinstance(ctx, MLACtx):
        raise TypeError(f"{fn}: ctx: expected the MLACtx from mla_forward, got {type(ctx).__name__}")
    dx, grads = _mla_backward_arrays(dout, ctx)
    res = {"x": dx}
    for n, g in zip(MLA_WEIGHT_NAMES, grads):
        if g is not None:
            res[n + ".weight"] = g
    return res


def _mla_backward_arrays(dout: Array, ctx: MLACtx, need_dx: bool = True,
                         need: Optional[Sequence[bool]] = None) -> tuple[Optional[Array], tuple]:
    """(dx or None, the 8 weight gradients in MLA_WEIGHT_NAMES order, None where the weight is
    absent or need[i] is False): the one backward call behind mla_backward and
    deepseek_c.torch."""
    fn = "dsc_mla_backward"
    if ctx.saved is None:
        raise ValueError(f"{fn}: ctx: the forward ran with need_backward=False")
    namespace(dout, fn, "dout")
    need = (True,) * 8 if need is None else tuple(bool(v) for v in need)
    dx = empty_like_ns(dout, tuple(int(s) for s in ctx.x.shape), "float32", fn, "dx") if need_dx else None
    grads = tuple(None if (w is None or not n) else
                  empty_like_ns(dout, tuple(int(s) for s in w.shape), "float32", fn, "grad")
                  for w, n in zip(ctx.weights, need))
    _C.mla_backward(ctx.saved, ctx.x, ctx.positions, dout, ctx.weights, ctx.params, dx, grads, ctx.math_mode)
    return (finish(dout, dx) if dx is not None else None), tuple(None if g is None else finish(dout, g)
                                                                 for g in grads)


class MLACache:
    """A paged latent KV cache: per token and layer kv_lora_rank + qk_rope_head_dim values
    (576 for V3), in blocks of `block_size` tokens with a block table per sequence.

    dtype: "bfloat16", "float32" or "float8_e4m3fn" (latent in E4M3 with one float32 scale
    per 128 values, rope part in bfloat16). max_tokens is per sequence; n_blocks (0: enough
    for max_batch full sequences) sizes the shared pool. Sequence ids are the caller's ints.
    Each cache has its own C context: calls on one cache run one at a time (another
    thread's call waits), different caches and models run in parallel.
    """

    def __init__(self, cfg: ModelConfig, max_batch: int = 8, max_tokens: int = 4096, block_size: int = 64,
                 dtype: str = "bfloat16", *, n_layers: int = 1, n_blocks: int = 0, device: str = "cpu") -> None:
        fn = "dsc_mla_cache_create"
        cfg = _cfg(cfg, fn)
        self.cfg = cfg
        self.device = device
        try:
            dev = parse_device(device)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{fn}: {e}") from None
        self.dtype = parse_dtype(dtype, "MLACache", "dtype", allowed=("float32", "bfloat16", "float8_e4m3fn"))
        self.max_batch, self.max_tokens, self.block_size = (
            as_int(max_batch, fn, "max_batch"), as_int(max_tokens, fn, "max_tokens"),
            as_int(block_size, fn, "block_size"))
        self.n_layers = as_int(n_layers, fn, "n_layers")
        self._cap = _C.mla_cache_new(dev[0], dev[1], self.n_layers, self.max_batch, self.max_tokens,
                                     self.block_size, as_int(n_blocks, fn, "n_blocks"), int(cfg.kv_lora_rank),
                                     int(cfg.qk_rope_head_dim), self.dtype)
        self._next_id = 0

    # sizes
    @property
    def bytes_per_token(self) -> int:
        """Bytes per token and layer (576 * 2 for V3 dims in bfloat16)."""
        return _C.mla_cache_op(self._cap, "bytes")[0]

    @property
    def total_bytes(self) -> int:
        return _C.mla_cache_op(self._cap, "bytes")[1]

    @property
    def free_blocks(self) -> int:
        return _C.mla_cache_op(self._cap, "counts")[0]

    @property
    def free_sequences(self) -> int:
        return _C.mla_cache_op(self._cap, "counts")[1]

    # sequences
    def add_sequence(self, seq_id: Optional[int] = None) -> int:
        """Register a sequence (a fresh id when None); returns its id."""
        fn = "dsc_mla_cache_add_sequence"
        seq_id = self._next_id if seq_id is None else as_int(seq_id, fn, "seq_id", *INT64)
        _C.mla_cache_op(self._cap, "add", seq_id)
        self._next_id = max(self._next_id, seq_id + 1)
        return seq_id

    def free_sequence(self, seq_id: int) -> None:
        _C.mla_cache_op(self._cap, "free", as_int(seq_id, "dsc_mla_cache_free_sequence", "seq_id", *INT64))

    def truncate(self, seq_id: int, length: int) -> None:
        """Drop the tokens at positions >= length (e.g. rejected draft tokens)."""
        fn = "dsc_mla_cache_truncate"
        _C.mla_cache_op(self._cap, "truncate", as_int(seq_id, fn, "seq_id", *INT64),
                        as_int(length, fn, "length", *INT64))

    def length(self, seq_id: int) -> int:
        return _C.mla_cache_op(self._cap, "length", as_int(seq_id, "dsc_mla_cache_sequence_length", "seq_id",
                                                          *INT64))

    def block_table(self, seq_id: int) -> list[int]:
        return _C.mla_cache_op(self._cap, "blocks", as_int(seq_id, "dsc_mla_cache_block_table", "seq_id", *INT64))

    def read(self, seq_id: int, layer: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The cached rows of a sequence as float32: (latent [len, R], rope [len, dr])."""
        n = self.length(seq_id)
        lat = np.empty((n, self.cfg.kv_lora_rank), np.float32)
        rope = np.empty((n, self.cfg.qk_rope_head_dim), np.float32)
        _C.mla_cache_read(self._cap, as_int(layer, "dsc_mla_cache_read", "layer"), int(seq_id), lat, rope)
        return lat, rope

    def __repr__(self) -> str:
        return (f"MLACache(dtype={self.dtype!r}, max_batch={self.max_batch}, max_tokens={self.max_tokens}, "
                f"block_size={self.block_size}, n_layers={self.n_layers}, bytes_per_token={self.bytes_per_token})")


def _infer(decode: bool, x: Array, params: Mapping[str, Array], cfg: ModelConfig, cache: MLACache,
           seq_ids: Any, positions: Optional[Array], layer: int, fp8: bool) -> Array:
    fn = "dsc_mla_decode" if decode else "dsc_mla_prefill"
    cfg = _cfg(cfg, fn)
    if not isinstance(cache, MLACache):
        raise TypeError(f"{fn}: cache: expected a deepseek_c.MLACache, got {type(cache).__name__}")
    w = _weights(params, cfg, fn)
    namespace(x, fn, "x")
    layer = as_int(layer, fn, "layer")
    ids = seq_ids
    if not hasattr(ids, "__dlpack__"):
        try:
            ids = np.asarray(seq_ids)
            if ids.dtype.kind not in "iu":
                raise TypeError(f"{fn}: seq_ids: expected ints, got {ids.dtype} values")
            ids = np.ascontiguousarray(np.asarray(seq_ids, dtype=np.int64).reshape(-1))
        except (OverflowError, ValueError) as e:
            raise ValueError(f"{fn}: seq_ids: expected int64 ids: {e}") from None
    if positions is None:  # continue each sequence where it stands
        shape = tuple(int(s) for s in x.shape)
        if len(shape) != 3:
            raise ValueError(f"{fn}: x: expected 3 dims (B, T, hidden), got shape {shape}")
        idl = np.asarray(ids).reshape(-1).tolist() if isinstance(ids, np.ndarray) else list(ids)
        if len(idl) != shape[0]:
            raise ValueError(f"{fn}: seq_ids: expected {shape[0]} ids (the batch of x), got {len(idl)}")
        starts = np.array([cache.length(int(i)) for i in idl], dtype=np.int32)
        positions = np.ascontiguousarray(starts[:, None] + np.arange(shape[1], dtype=np.int32)[None, :])
    scales = tuple(params.get(n + ".weight_scale_inv") for n in MLA_WEIGHT_NAMES)
    out = empty_like_ns(x, tuple(int(s) for s in x.shape), "float32", fn, "out")
    _C.mla_infer(decode, cache._cap, layer, x, ids, positions, w, mla_params_tuple(cfg, fp8), out,
                 scales if any(v is not None for v in scales) else None)
    return finish(x, out)


def mla_prefill(x: Array, params: Mapping[str, Array], cfg: ModelConfig, cache: MLACache, seq_ids: Any,
                positions: Optional[Array] = None, *, layer: int = 0, fp8: bool = False) -> Array:
    """Attention of prompt tokens that also fills the latent cache.

    x: [B, T, hidden] float32; seq_ids: B ids added to the cache; positions: [B, T] int32,
    row b = start_b, start_b + 1, ... then -1 padding (ragged prompts), start_b <= the
    sequence's cached length (default: continue from it). Returns out [B, T, hidden]
    (zero rows on padding). Errors leave the cache unchanged. fp8: FP8 projections (q, kv_a,
    o; the absorbed kv_b products in float32 on kv_b rounded through its E4M3 blocks). With
    fp8, weights may be held in FP8 as DeepSeek ships them: "<name>.weight" float8_e4m3fn
    with "<name>.weight_scale_inv" float32 (128x128 blocks) in `params`.
    """
    return _infer(False, x, params, cfg, cache, seq_ids, positions, layer, fp8)


def mla_decode(x: Array, params: Mapping[str, Array], cfg: ModelConfig, cache: MLACache, seq_ids: Any,
               positions: Optional[Array] = None, *, layer: int = 0, fp8: bool = False) -> Array:
    """Decode 1..T new tokens per sequence with weight absorption (W_UK folded into the
    query, attention over the cached kv_lora_rank + rope latents, W_UV applied after).
    Same arguments as mla_prefill."""
    return _infer(True, x, params, cfg, cache, seq_ids, positions, layer, fp8)
