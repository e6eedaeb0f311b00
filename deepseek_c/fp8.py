"""DeepSeek-V3's fine-grained FP8: casts, block quantization, block-scaled GEMMs, an FP8
linear layer and the checkpoint's weight dequantization.

Recipe (DeepSeek-V3 report, sec. 3.3): E4M3 for every GEMM operand; activations are
quantized in 1x128 tiles (one float32 scale per row and 128 columns), weights in 128x128
blocks; the scale of a tile is ``max(amax, amax_floor) / fp8_max`` and ``q = cast(x /
scale)``; GEMMs accumulate in FP32 with the per-128-K block scales applied. Scales are
multipliers: ``x ~= float(q) * scale`` (as the checkpoints' ``weight_scale_inv``).

The FP8 cast rounds to nearest even and saturates finite values to the largest finite
(+-448 for E4M3, +-57344 for E5M2); NaN stays NaN; +-inf becomes NaN for E4M3 (it has no
inf) and +-inf for E5M2. Otherwise it is bit-identical to ``ml_dtypes``. The amax of a
tile is over its finite elements, so NaN and inf never poison a tile's scale: they come
through the cast as NaN / inf codes, and a NaN in an operand row gives a NaN row of a GEMM.

NumPy FP8 arrays use ``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2``; any DLPack array
works (PyTorch ``torch.float8_e4m3fn`` ...). Outputs are allocated in the namespace and on
the device of the first array argument. Errors: TypeError (dtype), ValueError (shape,
value), deepseek_c.Error (runtime failures). Legend: M rows, K inner dim, N output
features, Kb = ceil(K/128), G groups (experts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import _C
from ._arrays import Array, as_float, as_int, dtype_name, empty_like_ns, finish, namespace, parse_dtype

__all__ = [
    "fp8_cast", "fp8_quantize", "fp8_dequantize", "fp8_gemm", "fp8_grouped_gemm",
    "fp8_grouped_gemm_masked", "fp8_linear", "fp8_linear_forward", "fp8_linear_backward",
    "FP8LinearCtx", "fp8_stats", "fp8_weight_dequant", "FP8_E4M3_MAX", "FP8_E5M2_MAX",
]

FP8_E4M3_MAX = 448.0
FP8_E5M2_MAX = 57344.0

_FMT = {
    "e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn",
    "e5m2": "float8_e5m2", "float8_e5m2": "float8_e5m2",
}
_FMT_CODE = {"float8_e4m3fn": 4, "float8_e5m2": 5}  # dsc_dtype values
_FLOAT = ("float32", "bfloat16")


def _shape(x: Array) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_array(x: Any, fn: str, arg: str) -> None:
    if not hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        raise TypeError(
            f"{fn}: {arg}: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), "
            f"got {type(x).__name__}"
        )


def _dim(x: Array, i: int) -> int:
    """x.shape[i], or 0 when x has no such dim (the C layer then reports the rank)."""
    s = _shape(x)
    return s[i] if -len(s) <= i < len(s) else 0


def _fmt(fn: str, fmt: Any) -> str:
    return parse_dtype(fmt, fn, "fmt", allowed=("float8_e4m3fn", "float8_e5m2"))


def _float_dtype(fn: str, arg: str, dtype: Any) -> str:
    return parse_dtype(dtype, fn, arg, allowed=_FLOAT)


def _block(fn: str, block: Sequence[int]) -> tuple[int, int]:
    if isinstance(block, (str, bytes)) or not hasattr(block, "__len__") or len(block) != 2:
        raise ValueError(f"{fn}: block: expected (block_rows, block_cols), got {block!r}")
    br, bc = (as_int(b, fn, n, 1) for b, n in zip(block, ("block_rows", "block_cols")))
    return br, bc


def _cdiv(a: int, b: int) -> int:
    return -(-a // b) if b > 0 else 0


def _int32_array(ref: Array, v: Any, fn: str, arg: str) -> Array:
    """Lists/tuples of ints become int32 arrays (NumPy callers); arrays pass through."""
    if isinstance(v, (list, tuple)) and namespace(ref, "", "") == "numpy":
        try:
            a = np.asarray(v)
            if a.dtype.kind not in "iu":
                raise TypeError(f"{fn}: {arg}: expected a list of ints, got {a.dtype} values")
            return np.asarray(v, dtype=np.int32)
        except OverflowError:
            raise ValueError(f"{fn}: {arg}: expected int32 values, got {v!r}") from None
        except ValueError as e:  # a ragged list
            raise ValueError(f"{fn}: {arg}: expected a flat list of ints: {e}") from None
    return v


def _qparams(fn: str, block: tuple[int, int], transpose: bool, pow2_scale: bool, amax_floor: float) -> tuple:
    return (block[0], block[1], int(bool(transpose)), int(bool(pow2_scale)), as_float(amax_floor, fn, "amax_floor"))


# ----------------------------------------------------------------------------- cast / quantize


def fp8_cast(x: Array, dtype: str) -> Array:
    """Elementwise cast between float32|bfloat16 and float8_e4m3fn|float8_e5m2 (either way).

    dtype: 'float8_e4m3fn' ('e4m3'), 'float8_e5m2' ('e5m2'), 'float32' or 'bfloat16'.
    To FP8: round to nearest even, saturating; from FP8: exact.
    """
    fn = "dsc_fp8_cast"
    _check_array(x, fn, "src")
    name = parse_dtype(dtype, fn, "dtype", allowed=("float8_e4m3fn", "float8_e5m2", "float32", "bfloat16"))
    y = empty_like_ns(x, _shape(x), name, fn, "dst")
    _C.fp8_cast(x, y)
    return finish(x, y)


def fp8_quantize(x: Array, block: Sequence[int] = (1, 128), fmt: str = "e4m3", transpose: bool = False,
                 pow2_scale: bool = False, amax_floor: float = 1e-4) -> tuple[Array, Array]:
    """Block quantization: returns (q, scale) with x ~= float(q) * scale[block].

    x: [..., K] float32 | bfloat16 (leading dims flattened into M rows).
    block: (rows, cols) of a tile: (1, 128) for activations, (128, 128) for weights.
    transpose: quantize x^T, i.e. q is [K, M] with tiles running along M (the 128x1
    re-tiling of activations that wgrad needs).
    Returns q (x's shape, or [K, M] with transpose; the fmt dtype) and scale
    [ceil(R/block_rows), ceil(C/block_cols)] float32 for q of shape [R, C].
    pow2_scale rounds every scale up to a power of two (UE8M0).
    """
    fn = "dsc_fp8_quantize"
    _check_array(x, fn, "x")
    qt = _fmt(fn, fmt)
    br, bc = _block(fn, block)
    shp = _shape(x)
    if not shp:
        raise ValueError(f"{fn}: x: expected (..., K) with at least 1 dim, got ()")
    K = shp[-1]
    M = math.prod(shp[:-1])
    if transpose:
        qshape, R, C = (K, M), K, M
    else:
        qshape, R, C = shp, M, K
    q = empty_like_ns(x, qshape, qt, fn, "q")
    s = empty_like_ns(x, (_cdiv(R, br), _cdiv(C, bc)), "float32", fn, "scale")
    _C.fp8_quantize(x, q, s, _qparams(fn, (br, bc), transpose, pow2_scale, amax_floor))
    return finish(x, q), finish(x, s)


def fp8_dequantize(q: Array, scale: Array, block: Sequence[int] = (1, 128), dtype: str = "float32") -> Array:
    """out[r, c] = float(q[r, c]) * scale[r // block_rows, c // block_cols].

    q: [..., C] fp8 (leading dims flattened into R rows); scale [ceil(R/br), ceil(C/bc)]
    float32, finite and > 0; out: q's shape, dtype 'float32' or 'bfloat16'.
    """
    fn = "dsc_fp8_dequantize"
    _check_array(q, fn, "q")
    br, bc = _block(fn, block)
    out = empty_like_ns(q, _shape(q), _float_dtype(fn, "dtype", dtype), fn, "out")
    _C.fp8_dequantize(q, scale, br, bc, out)
    return finish(q, out)


def fp8_weight_dequant(weight: Array, weight_scale_inv: Array, dtype: str = "bfloat16") -> Array:
    """A DeepSeek-V3 checkpoint weight back to float: W = float(W_fp8) * S[r//128, c//128].

    weight: [out, in] float8_e4m3fn; weight_scale_inv: [ceil(out/128), ceil(in/128)] float32
    (a multiplier despite its name); returns [out, in] in `dtype` (bfloat16 like the
    reference ``weight_dequant``, or float32).
    """
    return fp8_dequantize(weight, weight_scale_inv, (128, 128), dtype)


# ----------------------------------------------------------------------------- GEMMs


def fp8_gemm(a: Array, a_scale: Array, b: Array, b_scale: Array, out_dtype: str = "bfloat16") -> Array:
    """C = A @ B^T with block scales, FP32 accumulation:
    C[m, n] = sum_kb (sum_{k in kb} A[m, k] B[n, k]) * sa(m, kb) * sb(n, kb).

    a [M, K] fp8 with a_scale [M, Kb] (1x128 tiles) or [ceil(M/128), Kb] (128x128 blocks);
    b [N, K] fp8 with b_scale [N, Kb] or [ceil(N/128), Kb]; returns [M, N] out_dtype.
    fprop: (x 1x128, w 128x128); dgrad: (dy 1x128, w^T 128x128); wgrad: (dy^T, x^T) both
    1x128 along the tokens.
    """
    fn = "dsc_fp8_gemm"
    _check_array(a, fn, "a")
    _check_array(b, fn, "b")
    c = empty_like_ns(a, (_dim(a, 0), _dim(b, 0)), _float_dtype(fn, "out_dtype", out_dtype), fn, "c")
    _C.fp8_gemm(a, a_scale, b, b_scale, c)
    return finish(a, c)


def fp8_grouped_gemm(a: Array, a_scale: Array, b: Array, b_scale: Array, group_offsets: Any,
                     alignment: int = 1, out_dtype: str = "bfloat16") -> Array:
    """MoE experts over the contiguous layout: rows o[g] .. o[g+1]-1 of A use expert g.

    a [M, K] fp8, a_scale [M, Kb]; b [G, N, K] fp8, b_scale [G, ceil(N/128), Kb];
    group_offsets [G + 1] int32: 0 = o_0 <= ... <= o_G = M, each a multiple of
    `alignment`; returns [M, N] out_dtype.
    """
    fn = "dsc_fp8_grouped_gemm"
    _check_array(a, fn, "a")
    _check_array(b, fn, "b")
    c = empty_like_ns(a, (_dim(a, 0), _dim(b, 1)), _float_dtype(fn, "out_dtype", out_dtype), fn, "c")
    _C.fp8_grouped_gemm(a, a_scale, b, b_scale, _int32_array(a, group_offsets, fn, "group_offsets"), as_int(alignment, fn, "alignment"), c)
    return finish(a, c)


def fp8_grouped_gemm_masked(a: Array, a_scale: Array, b: Array, b_scale: Array, masked_m: Any,
                            out_dtype: str = "bfloat16") -> Array:
    """MoE experts, masked layout (decode): group g uses rows [0, masked_m[g]) of its Mmax.

    a [G, Mmax, K] fp8, a_scale [G, Mmax, Kb]; b [G, N, K], b_scale [G, ceil(N/128), Kb];
    masked_m [G] int32 in [0, Mmax]; returns [G, Mmax, N] out_dtype, zero past masked_m.
    """
    fn = "dsc_fp8_grouped_gemm_masked"
    _check_array(a, fn, "a")
    _check_array(b, fn, "b")
    c = empty_like_ns(a, (_dim(a, 0), _dim(a, 1), _dim(b, 1)), _float_dtype(fn, "out_dtype", out_dtype),
                      fn, "c")
    _C.fp8_grouped_gemm_masked(a, a_scale, b, b_scale, _int32_array(a, masked_m, fn, "masked_m"), c)
    return finish(a, c)


# ----------------------------------------------------------------------------- linear layer


@dataclass
class FP8LinearCtx:
    """What fp8_linear_backward needs: x in E4M3 1x128 tiles (xq, xs), the weight in
    E4M3 128x128 blocks (wq, ws), and x's shape and dtype."""

    xq: Array
    xs: Array
    wq: Array
    ws: Array
    x_shape: tuple
    x_dtype: str


def fp8_linear_forward(x: Array, w_master: Array, out_dtype: Optional[str] = None) -> tuple[Array, FP8LinearCtx]:
    """y = x @ w^T the DeepSeek-V3 way: x quantized online in 1x128 tiles, the float32
    master weight in 128x128 blocks, FP32 accumulation.

    x: [..., K] float32 | bfloat16; w_master: [N, K] float32; y: [..., N] in out_dtype
    (default: x's dtype). Returns (y, ctx) for fp8_linear_backward.
    """
    fn = "dsc_fp8_linear_forward"
    _check_array(x, fn, "x")
    shp = _shape(x)
    if not shp:
        raise ValueError(f"{fn}: x: expected (..., K) with at least 1 dim, got ()")
    _check_array(w_master, fn, "w")
    K, M, N = shp[-1], math.prod(shp[:-1]), _dim(w_master, 0)
    Kb = _cdiv(K, 128)
    odt = dtype_name(x) if out_dtype is None else _float_dtype(fn, "out_dtype", out_dtype)
    y = empty_like_ns(x, shp[:-1] + (N,), odt, fn, "y")
    xq = empty_like_ns(x, (M, K), "float8_e4m3fn", fn, "xq")
    xs = empty_like_ns(x, (M, Kb), "float32", fn, "xs")
    wq = empty_like_ns(x, (N, K), "float8_e4m3fn", fn, "wq")
    ws = empty_like_ns(x, (_cdiv(N, 128), Kb), "float32", fn, "ws")
    _C.fp8_linear_forward(x, w_master, y, xq, xs, wq, ws)
    return finish(x, y), FP8LinearCtx(xq, xs, wq, ws, shp, dtype_name(x))


def fp8_linear_backward(dy: Array, ctx: FP8LinearCtx, need_dx: bool = True,
                        need_dw: bool = True) -> tuple[Optional[Array], Optional[Array]]:
    """(dx, dw) of fp8_linear_forward from dy [..., N].

    dgrad dx = dy @ w with dy in 1x128 tiles and w^T in 128x128 blocks (dx: x's shape,
    dy's dtype); wgrad dw = dy^T @ x with both re-tiled 1x128 along the tokens (dw: [N, K]
    float32). FP32 accumulation; E4M3 everywhere.
    """
    fn = "dsc_fp8_linear_backward"
    if not isinstance(ctx, FP8LinearCtx):
        raise TypeError(f"{fn}: ctx: expected the FP8LinearCtx from fp8_linear_forward, got {type(ctx).__name__}")
    _check_array(dy, fn, "dy")
    _check_array(ctx.wq, fn, "ctx.wq")
    dx = empty_like_ns(dy, ctx.x_shape[:-1] + (ctx.x_shape[-1],), dtype_name(dy), fn, "dx") if need_dx else None
    dw = empty_like_ns(dy, _shape(ctx.wq), "float32", fn, "dw") if need_dw else None
    _C.fp8_linear_backward(dy, ctx.xq, ctx.xs, ctx.wq, ctx.ws, dx, dw)
    return (finish(dy, dx) if dx is not None else None), (finish(dy, dw) if dw is not None else None)


def fp8_linear(x: Array, w_master: Array, out_dtype: Optional[str] = None) -> Array:
    """Inference form of fp8_linear_forward: y = x @ w^T in FP8 (1x128 x, 128x128 w)."""
    return fp8_linear_forward(x, w_master, out_dtype)[0]


# ----------------------------------------------------------------------------- statistics


def fp8_stats(x: Array, block: Sequence[int] = (1, 128), fmt: str = "e4m3", tensor_scale: Optional[float] = None,
              pow2_scale: bool = False, amax_floor: float = 1e-4) -> dict:
    """How well x [..., K] survives FP8 quantization: with dynamic block scales of `block`,
    or with one per-tensor scale (a multiplier) when tensor_scale is given.

    Returns dict(amax (max |x|, NaN if any NaN), saturated_fraction (finite elements the
    saturation clips), underflow_fraction (non-zero finite elements that become 0),
    nan_fraction, count).
    """
    fn = "dsc_fp8_compute_stats"
    _check_array(x, fn, "x")
    ft = _fmt(fn, fmt)
    br, bc = _block(fn, block)
    if tensor_scale is None:
        ts = 0.0
    else:
        ts = as_float(tensor_scale, fn, "tensor_scale")
        if not (math.isfinite(ts) and np.float32(ts) > 0):
            raise ValueError(f"{fn}: tensor_scale: expected None or a finite scale > 0, got {tensor_scale!r}")
    amax, sat, under, nan, count = _C.fp8_stats(x, _qparams(fn, (br, bc), False, pow2_scale, amax_floor),
                                                _FMT_CODE[ft], ts)
    return dict(amax=amax, saturated_fraction=sat, underflow_fraction=under, nan_fraction=nan, count=count)
