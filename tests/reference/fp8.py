"""Independent NumPy reference of DeepSeek-V3's fine-grained FP8, written from the formulas
of DEEPSEEK_V3.md section 5 and the C ABI's comments (not from the library's code).

Values are float64 arrays. The FP8 rounding is computed arithmetically (quantum of the
binade, round half to even with np.rint), not with bit tricks and not with ml_dtypes, so
it is an independent check of both. Where the recipe itself computes in float32 (the
scale amax / fp8_max and x / scale, as DeepSeek's kernels do) the reference does the same
float32 operation, so quantized codes and scales can be compared exactly; everything
after (dequantization products, GEMM sums) is float64.

Legend: M rows, K inner dim, N output features, Kb = ceil(K/128), G groups.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# (mantissa bits, exponent bias, largest finite, has inf)
FORMATS = {
    "e4m3": (3, 7, 448.0, False),
    "e5m2": (2, 15, 57344.0, True),
}


def fp8_max(fmt: str) -> float:
    return FORMATS[fmt][2]


def fp8_round(v, fmt: str = "e4m3") -> np.ndarray:
    """float64 values of the nearest fp8 numbers (ties to even), saturating finite values
    to +-max; NaN -> NaN; +-inf -> NaN (e4m3) or +-inf (e5m2); the sign of zero is kept."""
    mbits, bias, vmax, has_inf = FORMATS[fmt]
    v = np.asarray(v, dtype=np.float64)
    out = np.empty_like(v)
    a = np.abs(v)
    fin = np.isfinite(v)
    emin = 1 - bias  # exponent of the smallest normal
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.where(fin, e, 0.0)
    # guard log2 rounding at binade edges
    e = np.where(np.ldexp(1.0, e.astype(np.int64)) > a, e - 1, e)
    e = np.where(np.ldexp(1.0, (e + 1).astype(np.int64)) <= a, e + 1, e)
    e = np.maximum(e, emin)
    quantum = np.ldexp(1.0, (e - mbits).astype(np.int64))
    r = np.rint(np.where(fin, a, 0.0) / quantum) * quantum  # np.rint: half to even
    r = np.minimum(r, vmax)
    out[...] = np.copysign(r, v)
    out[np.isnan(v)] = np.nan
    inf = np.isinf(v)
    out[inf] = np.copysign(np.inf, v[inf]) if has_inf else np.nan
    return out


def _blocks(R: int, C: int, br: int, bc: int):
    for rb in range(-(-R // br)):
        for cb in range(-(-C // bc)):
            yield rb, cb, slice(rb * br, min(R, (rb + 1) * br)), slice(cb * bc, min(C, (cb + 1) * bc))


def quantize(x, block: Sequence[int] = (1, 128), fmt: str = "e4m3", transpose: bool = False,
             pow2_scale: bool = False, amax_floor: float = 1e-4):
    """(q values float64 [R, C], scale float32 [ceil(R/br), ceil(C/bc)]) of x [..., K]
    (x^T [K, M] with transpose): per block s = max(amax over finite |x|, floor) / fp8_max
    (float32), 2^ceil(log2 s) with pow2_scale, q = fp8_round(float32(x / s))."""
    x = np.asarray(x)
    x32 = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    if transpose:
        x32 = x32.T
    R, C = x32.shape
    br, bc = block
    vmax = np.float32(fp8_max(fmt))
    q = np.zeros((R, C))
    s = np.zeros((-(-R // br), -(-C // bc)), dtype=np.float32)
    for rb, cb, rs, cs in _blocks(R, C, br, bc):
        blk = x32[rs, cs]
        fin = np.abs(blk[np.isfinite(blk)])
        amax = np.float32(fin.max()) if fin.size else np.float32(0)
        sc = np.float32(max(amax, np.float32(amax_floor))) / vmax
        if pow2_scale:
            m, e = math.frexp(float(sc))
            sc = np.float32(sc if m == 0.5 else math.ldexp(1.0, e))
        s[rb, cb] = sc
        with np.errstate(invalid="ignore", over="ignore"):
            q[rs, cs] = fp8_round((blk / sc).astype(np.float32), fmt)
    return q, s


def expand(scale, R: int, C: int, br: int, bc: int) -> np.ndarray:
    """The per-element scale [R, C] of a block-scale grid."""
    s = np.asarray(scale, dtype=np.float64)
    return np.repeat(np.repeat(s, br, 0), bc, 1)[:R, :C]


def dequantize(q, scale, block: Sequence[int] = (1, 128)) -> np.ndarray:
    """out[r, c] = q[r, c] * scale[r // br, c // bc] (float64)."""
    q = np.asarray(q, dtype=np.float64)
    q2 = q.reshape(-1, q.shape[-1])
    return (q2 * expand(scale, *q2.shape, *block)).reshape(q.shape)


def gemm(a, a_scale, b, b_scale) -> np.ndarray:
    """C[m, n] = sum_kb (sum_{k in kb} A[m, k] B[n, k]) * sa(m, kb) * sb(n, kb) in float64;
    each scale grid is per row ([rows, Kb]) or per 128 rows ([ceil(rows/128), Kb])."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    M, K = a.shape
    N = b.shape[0]
    Kb = -(-K // 128)
    sa = np.asarray(a_scale, dtype=np.float64)
    sb = np.asarray(b_scale, dtype=np.float64)
    sa = sa if sa.shape[0] == M else np.repeat(sa, 128, 0)[:M]
    sb = sb if sb.shape[0] == N else np.repeat(sb, 128, 0)[:N]
    c = np.zeros((M, N))
    for kb in range(Kb):
        ks = slice(kb * 128, min(K, (kb + 1) * 128))
        c += (a[:, ks] @ b[:, ks].T) * sa[:, kb:kb + 1] * sb[:, kb][None, :]
    return c


def grouped_gemm(a, a_scale, b, b_scale, offsets) -> np.ndarray:
    """Rows offsets[g] .. offsets[g+1]-1 of A times expert g: C [M, N]."""
    M, N = np.shape(a)[0], np.shape(b)[1]
    c = np.zeros((M, N))
    for g in range(len(offsets) - 1):
        r0, r1 = int(offsets[g]), int(offsets[g + 1])
        if r1 > r0:
            c[r0:r1] = gemm(np.asarray(a)[r0:r1], np.asarray(a_scale)[r0:r1], b[g], b_scale[g])
    return c


def grouped_gemm_masked(a, a_scale, b, b_scale, masked_m) -> np.ndarray:
    """Group g: rows [0, masked_m[g]) of a[g] times b[g]; the other rows 0. C [G, Mmax, N]."""
    G, Mmax = np.shape(a)[:2]
    N = np.shape(b)[1]
    c = np.zeros((G, Mmax, N))
    for g in range(G):
        m = int(masked_m[g])
        if m:
            c[g, :m] = gemm(np.asarray(a)[g, :m], np.asarray(a_scale)[g, :m], b[g], b_scale[g])
    return c


def linear_forward(x, w):
    """The V3 FP8 linear: x [M, K] in 1x128 tiles, w [N, K] in 128x128 blocks, E4M3.
    Returns (y [M, N] float64, saved = (xq, xs, wq, ws))."""
    xq, xs = quantize(x, (1, 128))
    wq, ws = quantize(w, (128, 128))
    return gemm(xq, xs, wq, ws), (xq, xs, wq, ws)


GRAD_AMAX_FLOOR = 1e-30  # output gradients: only keep an all-zero tile's scale normal


def linear_backward(dy, saved):
    """dgrad dx = dy @ w (dy 1x128, w^T with the transposed 128x128 scales); wgrad
    dw = dy^T @ x with x (dequantized from the saved tiles, in float32) and dy both
    re-quantized 1x128 along the tokens. The gradient tiles' amax floor is GRAD_AMAX_FLOOR
    (not the activations' 1e-4)."""
    xq, xs, wq, ws = saved
    dy = np.asarray(dy)
    dyq, dys = quantize(dy, (1, 128), amax_floor=GRAD_AMAX_FLOOR)
    dx = gemm(dyq, dys, wq.T, ws.T)
    xf = dequantize(xq, xs, (1, 128)).astype(np.float32)
    xtq, xts = quantize(xf, (1, 128), transpose=True)
    dytq, dyts = quantize(dy, (1, 128), transpose=True, amax_floor=GRAD_AMAX_FLOOR)
    dw = gemm(dytq, dyts, xtq, xts)
    return dx, dw
