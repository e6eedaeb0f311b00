"""FP8 (DeepSeek-V3 fine-grained recipe) against ml_dtypes and the independent NumPy
reference in tests/reference/fp8.py.

Conversions: our float32/bfloat16 -> FP8 cast SATURATES finite values to the largest finite
(+-448 E4M3, +-57344 E5M2; the DeepSeek / TransformerEngine convention and the C ABI's
contract), where ml_dtypes would round large finite values to NaN (E4M3) or inf (E5M2).
Every other case (rounding, subnormals, NaN, +-inf, signed zero) must be bit-identical to
ml_dtypes, so the expected bytes are ``ml_dtypes(clip(x, -max, max))`` for finite x and
``ml_dtypes(x)`` for NaN / inf. bfloat16 inputs are widened exactly to float32 first.

Then: quantization (both block shapes, transpose, pow2 scales, ragged edges, zero blocks)
bit-exact against the reference; dequantization; the three GEMM layouts of a linear layer
against the float64 block formula and against the unquantized product; grouped and masked
GEMMs; the FP8 linear layer against the FP32 one; a small MLP trained in FP8 and FP32; the
checkpoint format; statistics; bad inputs for every function. The CUDA GEMM pieces that
run without a GPU: the tensor-core kernel's index math simulated warp by warp
(tests/c/test_fp8_mma_tile.cpp) and the cuBLASLt plan cache and FP8 rules
(tests/c/test_blaslt_host.cpp), both built with the C++ compiler here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import ml_dtypes
import numpy as np
import pytest

import deepseek_c as dsc
from reference import fp8 as ref

E4 = np.dtype(ml_dtypes.float8_e4m3fn)
E5 = np.dtype(ml_dtypes.float8_e5m2)
BF16 = np.dtype(ml_dtypes.bfloat16)
FMT = {"e4m3": (E4, 448.0, "float8_e4m3fn"), "e5m2": (E5, 57344.0, "float8_e5m2")}


def ml_expected(f32: np.ndarray, fmt: str) -> np.ndarray:
    """ml_dtypes' bytes after clipping finite inputs to [-max, max] (our saturation)."""
    dt, mx, _ = FMT[fmt]
    fin = np.isfinite(f32)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore")
        return np.where(fin, np.clip(f32, -mx, mx), f32).astype(np.float32).astype(dt).view(np.uint8)


def bits_of(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint8)


def randn(rng, shape, scale=1.0, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def qvals(q) -> np.ndarray:
    """float64 values of an fp8 array (ml_dtypes decodes exactly)."""
    return np.asarray(q).astype(np.float64)


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_cast_every_bfloat16_pattern(fmt):
    bf = np.arange(1 << 16, dtype=np.uint16).view(BF16)
    got = bits_of(dsc.fp8_cast(bf, fmt))
    exp = ml_expected(bf.astype(np.float32), fmt)
    bad = np.nonzero(got != exp)[0]
    print(f"bf16 -> {fmt}: {bad.size} mismatches of 65536")
    assert bad.size == 0, [hex(int(b)) for b in bf.view(np.uint16)[bad[:10]]]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_cast_random_float32_patterns(rng, fmt):
    u = rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    # and every pattern within +-64 ulps of each binade edge / rounding threshold of interest
    marks = [448, 464, 480, 57344, 61440, 65536] + [2.0 ** e for e in range(-20, 17)]
    near = np.concatenate([np.float32(m).view(np.uint32) + np.arange(-64, 65, dtype=np.int64) for m in marks])
    near = near.astype(np.uint32)
    u = np.concatenate([u, near, near | np.uint32(0x80000000)])
    f = u.view(np.float32)
    got = bits_of(dsc.fp8_cast(f, fmt))
    exp = ml_expected(f, fmt)
    bad = np.nonzero(got != exp)[0]
    print(f"float32 -> {fmt}: {bad.size} mismatches of {f.size}")
    assert bad.size == 0, [hex(int(b)) for b in u[bad[:10]]]


def test_cast_special_values():
    sp = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 448, -448, 449, 464, 465, 1e30, -1e30,
                   3.4e38, 57344, 61439, 61440, -1e9, 2.0 ** -9, 2.0 ** -10, 2.0 ** -10 * 1.0001,
                   2.0 ** -16, 2.0 ** -17, 1e-45, -1e-45, 2.0 ** -6, 0.5, 1.0 + 2 ** -4, 1.0 + 3 * 2 ** -4],
                  dtype=np.float32)
    for fmt in ("e4m3", "e5m2"):
        got = bits_of(dsc.fp8_cast(sp, fmt))
        np.testing.assert_array_equal(got, ml_expected(sp, fmt))
    e4 = bits_of(dsc.fp8_cast(sp, "e4m3"))
    e5 = bits_of(dsc.fp8_cast(sp, "e5m2"))
    # the contract, spelled out
    assert list(e4[:6]) == [0x00, 0x80, 0x7F, 0xFF, 0x7F, 0xFF]  # inf -> NaN, sign kept
    assert list(e5[:6]) == [0x00, 0x80, 0x7C, 0xFC, 0x7E, 0xFE]  # inf stays inf
    assert list(e4[8:13]) == [0x7E, 0x7E, 0x7E, 0x7E, 0xFE]  # saturation to +-448
    assert list(e5[15:18]) == [0x7B, 0x7B, 0xFB]  # saturation to +-57344
    # the same through the reference's arithmetic rounding
    for fmt, dt in (("e4m3", E4), ("e5m2", E5)):
        got = dsc.fp8_cast(sp, fmt).astype(np.float64)
        np.testing.assert_array_equal(got, ref.fp8_round(sp, fmt))


def test_cast_matches_arithmetic_reference(rng):
    x = np.concatenate([randn(rng, 20000, 10.0), randn(rng, 20000, 1e-3), randn(rng, 2000, 1e5)])
    for fmt in ("e4m3", "e5m2"):
        np.testing.assert_array_equal(dsc.fp8_cast(x, fmt).astype(np.float64), ref.fp8_round(x, fmt))


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_decode_every_code(fmt):
    dt, _, name = FMT[fmt]
    codes = np.arange(256, dtype=np.uint8).view(dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = codes.astype(np.float32)
    got = dsc.fp8_cast(codes, "float32")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), exp.view(np.uint32))  # exact, NaN bits too
    got16 = dsc.fp8_cast(codes, "bfloat16")
    np.testing.assert_array_equal(got16.astype(np.float32).view(np.uint32), exp.view(np.uint32))
    # round trip of every non-NaN code
    ok = ~np.isnan(exp)
    np.testing.assert_array_equal(bits_of(dsc.fp8_cast(got[ok], fmt)), np.arange(256, dtype=np.uint8)[ok])


def test_cast_shapes_and_empty():
    x = np.linspace(-500, 500, 24, dtype=np.float32).reshape(2, 3, 4)
    q = dsc.fp8_cast(x, "float8_e4m3fn")
    assert q.shape == (2, 3, 4) and q.dtype == E4
    assert dsc.fp8_cast(np.zeros((0, 5), np.float32), "e5m2").shape == (0, 5)


# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("block", [(1, 128), (128, 128), (2, 64)])
@pytest.mark.parametrize("shape", [(300, 200), (4, 256), (1, 1), (129, 257)])
@pytest.mark.parametrize("transpose", [False, True])
def test_quantize_matches_reference(rng, block, shape, transpose):
    x = randn(rng, shape, 3.0)
    x[0, 0] = 40.0  # one large value
    q, s = dsc.fp8_quantize(x, block=block, transpose=transpose)
    rq, rs = ref.quantize(x, block, transpose=transpose)
    R, C = rq.shape
    assert q.shape == (R, C) and q.dtype == E4 and s.dtype == np.float32
    assert s.shape == (-(-R // block[0]), -(-C // block[1]))
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(qvals(q), rq)
    # reconstruction: relative error of E4M3 is <= 2^-4 per element of the block's range
    xt = x.T if transpose else x
    deq = ref.dequantize(qvals(q), s, block)
    assert np.all(np.abs(deq - xt) <= ref.expand(s, R, C, *block) * 448 * 2.0 ** -4 + 1e-30)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_formats_dtypes_pow2(rng, fmt, dtype, pow2):
    x = randn(rng, (5, 3, 300), 0.5).astype(BF16 if dtype == "bfloat16" else np.float32)
    q, s = dsc.fp8_quantize(x, fmt=fmt, pow2_scale=pow2)
    assert q.shape == x.shape and q.dtype == FMT[fmt][0]
    rq, rs = ref.quantize(x, (1, 128), fmt=fmt, pow2_scale=pow2)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(qvals(q).reshape(rq.shape), rq)
    if pow2:
        m, _ = np.frexp(s)
        assert np.all(m == 0.5)


def test_quantize_zero_blocks_nan_inf_and_floor(rng):
    x = randn(rng, (3, 256))
    x[1] = 0.0  # all-zero tiles: scale = floor / 448, codes 0
    x[2, :128] = 1e-6  # tiny tile below the floor
    x[0, 5] = np.nan
    x[0, 200] = np.inf
    q, s = dsc.fp8_quantize(x)
    assert s[1, 0] == np.float32(np.float32(1e-4) / np.float32(448))
    assert s[1, 1] == s[1, 0] and np.all(bits_of(q[1]) == 0)
    assert s[2, 0] == s[1, 0]
    assert np.all(np.isfinite(s)) and np.all(s > 0)  # NaN / inf never poison a scale
    qv = qvals(q)
    assert np.isnan(qv[0, 5]) and np.isnan(qv[0, 200])  # E4M3 has no inf
    assert np.isfinite(np.delete(qv[0], [5, 200])).all()
    rq, rs = ref.quantize(x, (1, 128))
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(qv, rq)
    # a custom floor
    q2, s2 = dsc.fp8_quantize(np.zeros((2, 4), np.float32), amax_floor=1.0)
    np.testing.assert_array_equal(s2, np.float32(1.0) / np.float32(448.0))


def test_dequantize(rng):
    x = randn(rng, (300, 200), 2.0)
    for block in [(1, 128), (128, 128)]:
        q, s = dsc.fp8_quantize(x, block=block)
        d = dsc.fp8_dequantize(q, s, block=block)
        assert d.dtype == np.float32
        exp = ref.dequantize(qvals(q), s, block).astype(np.float32)  # one float32 product: exact
        np.testing.assert_array_equal(d, exp)
        db = dsc.fp8_dequantize(q, s, block=block, dtype="bfloat16")
        np.testing.assert_array_equal(db.astype(np.float32), exp.astype(BF16).astype(np.float32))
        assert rel_err(d, x) < 0.05


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_dequantize_and_gemm_decode_every_code(fmt, rng):
    """The dequantize and GEMM paths (their own decode loops, not the cast's): every code,
    NaN and inf included, times a block scale, bit for bit."""
    dt = FMT[fmt][0]
    codes = np.arange(256, dtype=np.uint8)
    q = np.tile(codes[:, None], (1, 200)).view(dt)             # row n: code n, K = 200 (2 blocks)
    s = rng.uniform(0.5, 2.0, (2, 2)).astype(np.float32)         # 128x128 blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = codes.view(dt).astype(np.float32)
        exp = val[:, None] * np.repeat(np.repeat(s, 128, 0), 128, 1)[:256, :200]
    got = dsc.fp8_dequantize(q, s, block=(128, 128), dtype="float32")
    nan = np.isnan(exp)
    assert np.array_equal(np.isnan(got), nan) and nan.any() and np.isinf(exp).any() == (fmt == "e5m2")
    np.testing.assert_array_equal(got[~nan].view(np.uint32), exp[~nan].view(np.uint32))
    gb = dsc.fp8_dequantize(q, s, block=(128, 128), dtype="bfloat16").astype(np.float32)
    np.testing.assert_array_equal(gb[~nan], exp[~nan].astype(BF16).astype(np.float32))
    # GEMM with a one-hot A row picks column k of every B row: C[0, n] = fa * (B[n, k] sb), one rounding
    k = int(rng.integers(128, 200))                              # in the second (partial) K block
    a = np.zeros((1, 200), np.float32)
    a[0, k] = rng.uniform(0.5, 2.0)
    aq, as_ = dsc.fp8_quantize(a, (1, 128))
    fa = dsc.fp8_dequantize(aq, as_, block=(1, 128), dtype="float32")[0, k]
    c = dsc.fp8_gemm(aq, as_, q, s, out_dtype="float32")[0]
    ok = np.isfinite(val)                                        # 0 * inf and NaN rows aside
    np.testing.assert_array_equal(c[ok], exp[ok, k] * fa)


def test_checkpoint_weight_dequant(rng):
    """DeepSeek checkpoint layout: E4M3 weight [576, 300] + float32 scale_inv [5, 3]."""
    w8 = rng.integers(0, 256, (576, 300), dtype=np.uint8)
    w8[(w8 & 0x7F) == 0x7F] = 0x3C  # no NaN codes in a checkpoint
    w8 = w8.view(E4)
    sinv = rng.uniform(1e-4, 1e-2, (5, 3)).astype(np.float32)
    out = dsc.fp8_weight_dequant(w8, sinv, dtype="float32")
    exp = w8.astype(np.float64) * np.repeat(np.repeat(sinv.astype(np.float64), 128, 0), 128, 1)[:576, :300]
    np.testing.assert_array_equal(out, exp.astype(np.float32))
    outb = dsc.fp8_weight_dequant(w8, sinv)  # bfloat16 by default, like weight_dequant
    assert outb.dtype == BF16
    np.testing.assert_array_equal(outb, exp.astype(np.float32).astype(BF16))


def test_fp8_checkpoint_codes_survive_float32_masters(rng):
    """A model loads an FP8 checkpoint into float32 masters and an fp8 model re-quantizes them
    (128x128 blocks) for inference: the shipped E4M3 codes come back bitwise and the scales to
    the last bit of float32 (each block of a DeepSeek-quantized weight has a code at +-448, so
    the new scale is (448 s) / 448 in float32)."""
    w = (rng.standard_normal((1100, 700)) * rng.uniform(1e-3, 1.0, (1100, 1))).astype(np.float32)
    q, s = dsc.fp8_quantize(w, (128, 128))
    master = dsc.fp8_weight_dequant(q, s, dtype="float32")
    q2, s2 = dsc.fp8_quantize(master, (128, 128))
    np.testing.assert_array_equal(np.asarray(q2).view(np.uint8), np.asarray(q).view(np.uint8))
    np.testing.assert_allclose(s2, s, rtol=2.0 ** -23, atol=0)


# ----------------------------------------------------------------------------- GEMMs


def _quant(x, block):
    return dsc.fp8_quantize(x, block=block)


@pytest.mark.parametrize("M,N,K", [(64, 96, 256), (300, 130, 200), (1, 1, 1), (17, 257, 129)])
def test_gemm_layouts_vs_block_formula(rng, M, N, K):
    x = randn(rng, (M, K))
    w = randn(rng, (N, K), K ** -0.5)
    dy = randn(rng, (M, N))
    cases = {
        # fprop: x 1x128, w 128x128 -> y [M, N]
        "fprop": (_quant(x, (1, 128)), _quant(w, (128, 128)), x @ w.T),
        # dgrad: dy 1x128, w^T [K, N] in 128x128 blocks -> dx [M, K]
        "dgrad": (_quant(dy, (1, 128)), _quant(np.ascontiguousarray(w.T), (128, 128)), dy @ w),
        # wgrad: dy^T [N, M] and x^T [K, M], both 1x128 along the tokens -> dw [N, K]
        "wgrad": (dsc.fp8_quantize(dy, transpose=True), dsc.fp8_quantize(x, transpose=True), dy.T @ x),
    }
    for name, ((aq, as_), (bq, bs), exact) in cases.items():
        c = dsc.fp8_gemm(aq, as_, bq, bs, out_dtype="float32")
        r = ref.gemm(qvals(aq), as_, qvals(bq), bs)
        e_formula = rel_err(c, r)
        e_exact = rel_err(c, exact)
        print(f"{name} {M}x{N}x{K}: vs block formula {e_formula:.2e}, vs unquantized float64 {e_exact:.2e}")
        assert e_formula < 2e-6, name
        assert np.abs(c - r).max() <= 1e-5 * np.abs(r).max() + 1e-30
        assert e_exact < 0.08, name
        cb = dsc.fp8_gemm(aq, as_, bq, bs)  # bfloat16 output by default
        assert cb.dtype == BF16
        np.testing.assert_allclose(cb.astype(np.float64), r, rtol=2 ** -8, atol=1e-6 * np.abs(r).max())


def test_gemm_nan_passes_through(rng):
    a = randn(rng, (8, 256))
    b = randn(rng, (16, 256))
    aq, as_ = _quant(a, (1, 128))
    bq, bs = _quant(b, (128, 128))
    clean = dsc.fp8_gemm(aq, as_, bq, bs, out_dtype="float32")
    aq2 = aq.copy()
    aq2[3, 7] = np.nan
    c = dsc.fp8_gemm(aq2, as_, bq, bs, out_dtype="float32")
    assert np.isnan(c[3]).all()
    mask = np.arange(8) != 3
    np.testing.assert_array_equal(c[mask], clean[mask])
    bq2 = bq.copy()
    bq2[5, 200] = np.nan
    c = dsc.fp8_gemm(aq, as_, bq2, bs, out_dtype="float32")
    assert np.isnan(c[:, 5]).all() and np.isfinite(np.delete(c, 5, 1)).all()


def test_gemm_mixed_formats_and_zero_k(rng):
    a = randn(rng, (4, 130))
    b = randn(rng, (6, 130))
    aq, as_ = dsc.fp8_quantize(a, fmt="e5m2")
    bq, bs = dsc.fp8_quantize(b, fmt="e4m3")
    c = dsc.fp8_gemm(aq, as_, bq, bs, out_dtype="float32")
    assert rel_err(c, ref.gemm(qvals(aq), as_, qvals(bq), bs)) < 2e-6
    z = dsc.fp8_gemm(np.zeros((3, 0), E4), np.zeros((3, 0), np.float32), np.zeros((2, 0), E4),
                     np.zeros((2, 0), np.float32), out_dtype="float32")
    np.testing.assert_array_equal(z, np.zeros((3, 2), np.float32))


def _experts(rng, G, N, K):
    w = randn(rng, (G, N, K), K ** -0.5)
    qs = [dsc.fp8_quantize(w[g], block=(128, 128)) for g in range(G)]
    return np.stack([q for q, _ in qs]), np.stack([s for _, s in qs])


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_grouped_gemm_with_empty_groups(rng, out_dtype):
    G, N, K = 5, 72, 200
    offsets = np.array([0, 32, 32, 96, 96, 160], np.int32)  # groups 1 and 3 empty
    M = int(offsets[-1])
    x = randn(rng, (M, K))
    aq, as_ = _quant(x, (1, 128))
    bq, bs = _experts(rng, G, N, K)
    c = dsc.fp8_grouped_gemm(aq, as_, bq, bs, offsets, alignment=32, out_dtype=out_dtype)
    r = ref.grouped_gemm(qvals(aq), as_, qvals(bq), bs, offsets)
    assert c.shape == (M, N)
    tol = 2e-6 if out_dtype == "float32" else 4e-3
    assert rel_err(c.astype(np.float64), r) < tol
    # all rows to one expert, and G = 1
    offs = np.array([0, 0, M, M, M, M], np.int32)
    c = dsc.fp8_grouped_gemm(aq, as_, bq, bs, offs, out_dtype="float32")
    assert rel_err(c, ref.gemm(qvals(aq), as_, qvals(bq[1]), bs[1])) < 2e-6


def test_grouped_gemm_masked(rng):
    G, Mmax, N, K = 4, 24, 40, 160
    masked = np.array([24, 0, 7, 1], np.int32)
    a = randn(rng, (G, Mmax, K))
    qs = [_quant(a[g], (1, 128)) for g in range(G)]
    aq, as_ = np.stack([q for q, _ in qs]), np.stack([s for _, s in qs])
    as_[1] = np.nan  # unused rows may hold anything, their scales included
    as_[2, 7:] = -1.0
    bq, bs = _experts(rng, G, N, K)
    for od in ("float32", "bfloat16"):
        c = dsc.fp8_grouped_gemm_masked(aq, as_, bq, bs, masked, out_dtype=od)
        r = ref.grouped_gemm_masked(qvals(aq), as_, qvals(bq), bs, masked)
        assert c.shape == (G, Mmax, N)
        assert rel_err(c.astype(np.float64), r) < (2e-6 if od == "float32" else 4e-3)
        for g in range(G):
            assert np.all(c[g, masked[g]:].astype(np.float32) == 0)


# ----------------------------------------------------------------------------- linear layer


@pytest.mark.parametrize("M,N,K", [(256, 192, 384), (300, 130, 200)])
def test_fp8_linear_vs_reference_and_fp32(rng, M, N, K):
    x = randn(rng, (M, K))
    w = randn(rng, (N, K), K ** -0.5)
    dy = randn(rng, (M, N))
    y, ctx = dsc.fp8_linear_forward(x, w)
    dx, dw = dsc.fp8_linear_backward(dy, ctx)
    assert y.dtype == np.float32 and dx.dtype == np.float32 and dw.dtype == np.float32
    ry, saved = ref.linear_forward(x, w)
    rdx, rdw = ref.linear_backward(dy, saved)
    np.testing.assert_array_equal(qvals(ctx.xq), saved[0])
    np.testing.assert_array_equal(ctx.xs, saved[1])
    np.testing.assert_array_equal(ctx.ws, saved[3])
    for name, got, r in (("y", y, ry), ("dx", dx, rdx), ("dw", dw, rdw)):
        assert rel_err(got, r) < 2e-6, name
    # against the FP32 layer
    y32 = dsc.linear(x, w)
    dx32, dw32 = dsc.linear_backward(dy, dsc.linear_forward(x, w)[1])
    errs = {n: rel_err(a, b) for n, a, b in (("y", y, y32), ("dx", dx, dx32), ("dw", dw, dw32))}
    print(f"fp8 vs fp32 linear {M}x{N}x{K}: " + ", ".join(f"{k} {v:.3%}" for k, v in errs.items()))
    # E4M3 keeps 3 mantissa bits: ~2.5% rms relative error per quantized element, ~3.6%
    # on a product of two; wgrad quantizes x twice (1x128 along K, then along M).
    assert errs["y"] < 0.05 and errs["dx"] < 0.05 and errs["dw"] < 0.065, errs


def test_fp8_linear_bf16_batched_and_partial_grads(rng):
    x = randn(rng, (2, 3, 256)).astype(BF16)
    w = randn(rng, (128, 256), 1 / 16)
    y, ctx = dsc.fp8_linear_forward(x, w)
    assert y.shape == (2, 3, 128) and y.dtype == BF16
    y32 = dsc.fp8_linear(x, w, out_dtype="float32")
    assert y32.dtype == np.float32
    assert rel_err(y.astype(np.float32), y32) < 5e-3
    dy = randn(rng, (2, 3, 128)).astype(BF16)
    dx, dw = dsc.fp8_linear_backward(dy, ctx, need_dw=False)
    assert dw is None and dx.shape == (2, 3, 256) and dx.dtype == BF16
    dx2, dw2 = dsc.fp8_linear_backward(dy, ctx, need_dx=False)
    assert dx2 is None and dw2.shape == (128, 256) and dw2.dtype == np.float32
    exact = dy.astype(np.float64).reshape(6, 128).T @ x.astype(np.float64).reshape(6, 256)
    assert rel_err(dw2, exact) < 0.05


def test_fp8_linear_backward_scales_with_tiny_gradients(rng):
    """Gradients late in training sit far below 1e-4: dgrad and wgrad must scale exactly
    with dy (no 1e-4 amax floor on the gradient tiles, which would round them onto a
    coarse absolute grid)."""
    x = rng.standard_normal((64, 256)).astype(np.float32)
    w = (rng.standard_normal((160, 256)) * 0.05).astype(np.float32)
    _, saved = dsc.fp8_linear_forward(x, w)
    dy = rng.standard_normal((64, 160)).astype(np.float32)
    dx1, dw1 = dsc.fp8_linear_backward(dy, saved)
    c = np.float32(2.0 ** -26)  # ~1.5e-8: every tile's amax far below 1e-4
    dx2, dw2 = dsc.fp8_linear_backward(dy * c, saved)
    np.testing.assert_allclose(dx2 / c, dx1, rtol=1e-6, atol=1e-6 * np.abs(dx1).max())
    np.testing.assert_allclose(dw2 / c, dw1, rtol=1e-6, atol=1e-6 * np.abs(dw1).max())


def test_mlp_training_fp8_vs_fp32():
    """2-layer ReLU MLP, d=128, 100 SGD steps on a fixed teacher regression task: the FP8
    layer's final loss must be within 10% of the FP32 layer's (same seed and data)."""
    d, h, B, steps, lr = 128, 256, 256, 100, 4.0
    rng = np.random.default_rng(1234)
    teacher1 = randn(rng, (h, d), d ** -0.5)
    teacher2 = randn(rng, (d, h), h ** -0.5)
    w1_0 = randn(rng, (h, d), d ** -0.5)
    w2_0 = randn(rng, (d, h), h ** -0.5) * 0.5
    xs = [randn(rng, (B, d)) for _ in range(steps)]

    def run(fp8: bool):
        w1, w2 = w1_0.copy(), w2_0.copy()
        losses = []
        for x in xs:
            t = np.maximum(x @ teacher1.T, 0) @ teacher2.T
            if fp8:
                a1, c1 = dsc.fp8_linear_forward(x, w1)
                r = np.maximum(a1, 0)
                out, c2 = dsc.fp8_linear_forward(r, w2)
            else:
                a1, c1 = dsc.linear_forward(x, w1)
                r = np.maximum(a1, 0)
                out, c2 = dsc.linear_forward(r, w2)
            diff = out - t
            losses.append(float(np.mean(diff * diff)))
            g = (2.0 / diff.size) * diff
            bw = dsc.fp8_linear_backward if fp8 else dsc.linear_backward
            dr, dw2 = bw(g, c2)
            da = dr * (a1 > 0)
            _, dw1 = bw(da, c1)
            w1 -= lr * dw1
            w2 -= lr * dw2
        return losses

    l8, l32 = run(True), run(False)
    print(f"MLP loss: start {l32[0]:.4f}; final fp32 {l32[-1]:.5f}, fp8 {l8[-1]:.5f} "
          f"(relative difference {abs(l8[-1] - l32[-1]) / l32[-1]:.2%})")
    assert l32[-1] < 0.5 * l32[0] and l8[-1] < 0.5 * l8[0]
    assert abs(l8[-1] - l32[-1]) <= 0.10 * l32[-1]


# ----------------------------------------------------------------------------- statistics


def test_stats(rng):
    x = randn(rng, (4, 256))
    st = dsc.fp8_stats(x)
    assert st["count"] == x.size and st["saturated_fraction"] == 0 and st["nan_fraction"] == 0
    assert st["amax"] == np.float32(np.abs(x).max())
    # a per-tensor scale: 3 of 1024 elements clipped, 5 underflow, 1 NaN
    x = np.full((4, 256), 1.0, np.float32)
    x[0, :3] = 1000.0  # / 1.0 > 464: clipped
    x[0, 3] = 450.0  # rounds to 448 without saturation: not clipped
    x[1, :5] = 1e-4  # below half the smallest subnormal 2^-10: becomes 0
    x[1, 5] = 0.0  # zero is not an underflow
    x[2, 0] = np.nan
    st = dsc.fp8_stats(x, tensor_scale=1.0)
    n = x.size
    assert st["saturated_fraction"] == 3 / n and st["underflow_fraction"] == 5 / n
    assert st["nan_fraction"] == 1 / n and np.isnan(st["amax"])
    # dynamic 1x128 tiles: nothing clips; the NaN does not change the other tiles
    st = dsc.fp8_stats(x)
    assert st["saturated_fraction"] == 0
    # e5m2 with a small per-tensor scale
    st = dsc.fp8_stats(np.array([[1e5, 1.0]], np.float32), fmt="e5m2", tensor_scale=1.0)
    assert st["saturated_fraction"] == 0.5


# ----------------------------------------------------------------------------- bad inputs


def _raises(exc, match, f, *a, **k):
    with pytest.raises(exc, match=match):
        f(*a, **k)


def test_bad_inputs_cast_quantize_dequantize(rng):
    x = randn(rng, (4, 256))
    _raises(TypeError, "dst", dsc.fp8_cast, x, "float32")  # float -> float
    q, s = dsc.fp8_quantize(x)
    _raises(TypeError, "dst", dsc._C.fp8_cast, q, np.empty((4, 256), E5))  # fp8 -> fp8
    _raises(TypeError, "src", dsc.fp8_cast, x.astype(np.int32), "e4m3")
    _raises(TypeError, "dtype", dsc.fp8_cast, x, "int8")
    _raises(ValueError, "dst", dsc._C.fp8_cast, x, np.empty((4, 255), E4))
    _raises(ValueError, "strides|contiguous", dsc.fp8_cast, x[:, ::2], "e4m3")
    _raises(TypeError, "x", dsc.fp8_quantize, x.astype(np.float64))
    _raises(TypeError, "x", dsc.fp8_quantize, [1.0, 2.0])
    _raises(TypeError, "fmt", dsc.fp8_quantize, x, fmt="e3m4")
    _raises(ValueError, "block_rows", dsc.fp8_quantize, x, block=(0, 128))
    _raises(ValueError, "block_cols", dsc.fp8_quantize, x, block=(1, -5))
    _raises(ValueError, "amax_floor", dsc.fp8_quantize, x, amax_floor=0.0)
    _raises(ValueError, "amax_floor", dsc.fp8_quantize, x, amax_floor=float("nan"))
    _raises(ValueError, "block", dsc.fp8_quantize, x, block=128)
    _raises(TypeError, "q", dsc._C.fp8_quantize, x, np.empty((4, 256), np.uint8), s, (1, 128, 0, 0, 1e-4))
    _raises(ValueError, "scale", dsc._C.fp8_quantize, x, q, np.empty((4, 3), np.float32), (1, 128, 0, 0, 1e-4))
    _raises(ValueError, "q", dsc._C.fp8_quantize, x, q, s, (1, 128, 1, 0, 1e-4))  # transpose: q (K, M)
    _raises(ValueError, "transpose", dsc._C.fp8_quantize, x, q, s, (1, 128, 2, 0, 1e-4))
    _raises(TypeError, "q", dsc.fp8_dequantize, x, s)
    _raises(TypeError, "scale", dsc.fp8_dequantize, q, s.astype(np.float64))
    _raises(ValueError, "scale: expected shape", dsc.fp8_dequantize, q, s, block=(128, 128))
    _raises(ValueError, "block_rows", dsc.fp8_dequantize, q, s, block=(0, 128))
    _raises(TypeError, "dtype", dsc.fp8_dequantize, q, s, dtype="float16")
    for bad in (np.nan, np.inf, 0.0, -1.0):
        s2 = s.copy()
        s2[1, 1] = bad
        _raises(ValueError, r"scale: expected finite scales > 0, got .* at \[1, 1\]", dsc.fp8_dequantize, q, s2)
    _raises(ValueError, "tensor_scale", dsc.fp8_stats, x, tensor_scale=-1.0)
    _raises(TypeError, "fmt", dsc.fp8_stats, x, fmt="int8")
    _raises(TypeError, "x", dsc.fp8_stats, x.astype(np.float16))


def test_bad_inputs_gemm(rng):
    a = randn(rng, (8, 256))
    b = randn(rng, (16, 256))
    aq, as_ = _quant(a, (1, 128))
    bq, bs = _quant(b, (128, 128))
    g = dsc.fp8_gemm
    _raises(TypeError, "a:", g, a, as_, bq, bs)
    _raises(TypeError, "b:", g, aq, as_, b, bs)
    _raises(TypeError, "a_scale", g, aq, as_.astype(np.float64), bq, bs)
    _raises(TypeError, "b_scale", g, aq, as_, bq, bs.astype(BF16))
    _raises(ValueError, r"a_scale: expected shape \(M, Kb\) = \(8, 2\) for 1x128 tiles or "
                        r"\(ceil\(M/128\), Kb\) = \(1, 2\) for 128x128 blocks, got \(8, 3\)",
            g, aq, np.ones((8, 3), np.float32), bq, bs)
    _raises(ValueError, "b_scale: expected shape", g, aq, as_, bq, np.ones((2, 2), np.float32))
    _raises(ValueError, "b: expected shape .N, K. with K = 256", g, aq, as_, np.ascontiguousarray(bq[:, :128]), bs[:, :1])
    _raises(ValueError, "a:", g, aq.reshape(2, 4, 256), as_, bq, bs)
    _raises(TypeError, "out_dtype", g, aq, as_, bq, bs, out_dtype="float16")
    for bad in (np.nan, -np.inf, 0.0, -2.0):
        s2 = as_.copy()
        s2[3, 1] = bad
        _raises(ValueError, r"a_scale: expected finite scales > 0, got .* at \[3, 1\]", g, aq, s2, bq, bs)
        s3 = bs.copy()
        s3[0, 0] = bad
        _raises(ValueError, "b_scale: expected finite scales > 0", g, aq, as_, bq, s3)
    _raises(ValueError, "c", dsc._C.fp8_gemm, aq, as_, bq, bs, np.empty((8, 15), np.float32))
    _raises(TypeError, "c", dsc._C.fp8_gemm, aq, as_, bq, bs, np.empty((8, 16), np.float64))


def test_bad_inputs_grouped(rng):
    G, N, K, M = 3, 16, 256, 12
    aq, as_ = _quant(randn(rng, (M, K)), (1, 128))
    bq, bs = _experts(rng, G, N, K)
    gg = dsc.fp8_grouped_gemm
    good = np.array([0, 4, 8, 12], np.int32)
    gg(aq, as_, bq, bs, good, alignment=4)
    _raises(ValueError, "non-decreasing", gg, aq, as_, bq, bs, np.array([0, 8, 4, 12], np.int32))
    _raises(ValueError, r"\[0\] = 0", gg, aq, as_, bq, bs, np.array([1, 4, 8, 12], np.int32))
    _raises(ValueError, "rows of a", gg, aq, as_, bq, bs, np.array([0, 4, 8, 11], np.int32))
    _raises(ValueError, "multiples of alignment 8", gg, aq, as_, bq, bs, good, alignment=8)
    _raises(ValueError, "alignment", gg, aq, as_, bq, bs, good, alignment=-1)
    _raises(ValueError, "group_offsets", gg, aq, as_, bq, bs, np.array([0, 4, 12], np.int32))
    _raises(TypeError, "group_offsets", gg, aq, as_, bq, bs, good.astype(np.int64))
    _raises(ValueError, r"a_scale: expected shape \(M, Kb\)", gg, aq, as_[:1], bq, bs, good)
    _raises(ValueError, r"b_scale: expected shape \(G, ceil\(N/128\), Kb\) = \(3, 1, 2\)", gg, aq, as_, bq,
            np.ascontiguousarray(bs[:, :, :1]), good)
    _raises(ValueError, "b: expected shape .G, N, K. with K = 256", gg, aq, as_, np.ascontiguousarray(bq[:, :, :128]), bs, good)
    s2 = bs.copy()
    s2[2, 0, 1] = np.nan
    _raises(ValueError, r"b_scale: expected finite scales > 0, got nan at \[2, 0, 1\]", gg, aq, as_, bq, s2, good)
    mm = dsc.fp8_grouped_gemm_masked
    a3 = np.stack([aq] * G)
    s3 = np.stack([as_] * G)
    mm(a3, s3, bq, bs, np.array([12, 0, 3], np.int32))
    _raises(ValueError, r"masked_m: expected values in \[0, 12\]", mm, a3, s3, bq, bs, np.array([13, 0, 3], np.int32))
    _raises(ValueError, "masked_m", mm, a3, s3, bq, bs, np.array([-1, 0, 3], np.int32))
    _raises(ValueError, "masked_m", mm, a3, s3, bq, bs, np.array([1, 2], np.int32))
    _raises(ValueError, "b: expected 3 groups", mm, a3, s3, bq[:2], bs[:2], np.array([1, 2, 3], np.int32))
    _raises(ValueError, r"a_scale: expected shape \(G, Mmax, Kb\)", mm, a3, np.ascontiguousarray(s3[:, :, :1]), bq, bs,
            np.array([1, 2, 3], np.int32))
    s4 = s3.copy()
    s4[2, 1, 0] = 0.0
    _raises(ValueError, r"a_scale: expected finite scales > 0, got 0 at \[2, 1, 0\]", mm, a3, s4, bq, bs,
            np.array([1, 2, 3], np.int32))


def test_bad_inputs_linear(rng):
    x = randn(rng, (8, 256))
    w = randn(rng, (16, 256))
    _raises(TypeError, "w", dsc.fp8_linear_forward, x, w.astype(BF16))
    _raises(TypeError, "x", dsc.fp8_linear_forward, x.astype(np.int32), w)
    _raises(ValueError, "w: expected shape .N, K. with K = 256", dsc.fp8_linear_forward, x, w[:, :200].copy())
    _raises(TypeError, "out_dtype", dsc.fp8_linear_forward, x, w, out_dtype="float64")
    y, ctx = dsc.fp8_linear_forward(x, w)
    _raises(TypeError, "ctx", dsc.fp8_linear_backward, np.ones((8, 16), np.float32), (1, 2))
    _raises(ValueError, "xq: expected 7 rows", dsc.fp8_linear_backward, np.ones((7, 16), np.float32), ctx)
    _raises(ValueError, "wq", dsc.fp8_linear_backward, np.ones((8, 15), np.float32), ctx)
    _raises(ValueError, "dx, dw", dsc.fp8_linear_backward, np.ones((8, 16), np.float32), ctx, False, False)
    ctx.xs[0, 0] = np.nan
    _raises(ValueError, "xs: expected finite scales > 0", dsc.fp8_linear_backward, np.ones((8, 16), np.float32), ctx)


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    """CUDA vs CPU: casts and quantization bit-exact, GEMMs within float32 rounding (every
    CUDA build has the FP8 kernels)."""
    x = randn(rng, (300, 200), 3.0)
    x[0, 0] = np.nan
    cu = lambda a: dsc.tensor(a, device="cuda")  # noqa: E731
    q, s = dsc.fp8_quantize(cu(x))
    qh, sh = dsc.fp8_quantize(x)
    np.testing.assert_array_equal(dsc.to_numpy(s), sh)
    np.testing.assert_array_equal(bits_of(dsc.to_numpy(q)), bits_of(qh))
    for kw in (dict(block=(128, 128)), dict(transpose=True), dict(fmt="e5m2", pow2_scale=True)):
        q, s = dsc.fp8_quantize(cu(x), **kw)
        qh, sh = dsc.fp8_quantize(x, **kw)
        np.testing.assert_array_equal(dsc.to_numpy(s), sh)
        np.testing.assert_array_equal(bits_of(dsc.to_numpy(q)), bits_of(qh))
    u = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for fmt in ("e4m3", "e5m2"):
        np.testing.assert_array_equal(bits_of(dsc.to_numpy(dsc.fp8_cast(cu(u), fmt))), bits_of(dsc.fp8_cast(u, fmt)))
    a, w = randn(rng, (96, 384)), randn(rng, (136, 384), 384 ** -0.5)
    aq, as_ = dsc.fp8_quantize(a)
    wq, ws = dsc.fp8_quantize(w, block=(128, 128))
    c = dsc.to_numpy(dsc.fp8_gemm(cu(aq), cu(as_), cu(wq), cu(ws), out_dtype="float32"))
    assert rel_err(c, dsc.fp8_gemm(aq, as_, wq, ws, out_dtype="float32")) < 1e-5
    y, _ = dsc.fp8_linear_forward(cu(a), cu(w), out_dtype="float32")
    assert rel_err(dsc.to_numpy(y), dsc.fp8_linear(a, w, out_dtype="float32")) < 1e-5


# ----------------------------------------------------------------------------- GPU GEMM pieces on the CPU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
@pytest.mark.parametrize("name", ["test_fp8_mma_tile", "test_blaslt_host"])
def test_gpu_gemm_host_pieces(name, tmp_path):
    """The tensor-core FP8 kernel's fragment/tile/group/scale index math, simulated per warp
    against a reference GEMM (plain, grouped with empty and unaligned groups, masked; odd M,
    N; K % 128 != 0), and the cuBLASLt plan cache (LRU) and block-scaling rules: C++
    programs compiled without CUDA whose last line is 'N passed, 0 failed'."""
    exe = str(tmp_path / name)
    subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", f"-I{ROOT}/csrc/core",
                    f"-I{ROOT}/kernels", f"-I{ROOT}/csrc/include", f"-I{ROOT}/tests/c", os.path.join(ROOT, "tests", "c", name + ".cpp"), "-o", exe],
                   check=True, capture_output=True, text=True, timeout=300)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed"), r.stdout


def _poisoned(device, shape, out_dtype):
    """An output tensor filled with NaN (a value the GEMM never writes stays NaN)."""
    dt = np.float32 if out_dtype == "float32" else BF16
    return dsc.tensor(np.full(shape, np.nan, np.float32).astype(dt), device=device)


def _grouped_into(device, aq, as_, bq, bs, offsets, alignment, out_dtype):
    t = lambda a: dsc.tensor(a, device=device)  # noqa: E731
    c = _poisoned(device, (aq.shape[0], bq.shape[1]), out_dtype)
    dsc._C.fp8_grouped_gemm(t(aq), t(as_), t(bq), t(bs), t(np.asarray(offsets, np.int32)), alignment, c)
    return dsc.to_numpy(c).astype(np.float64)


def _masked_into(device, aq, as_, bq, bs, masked, out_dtype):
    t = lambda a: dsc.tensor(a, device=device)  # noqa: E731
    c = _poisoned(device, (aq.shape[0], aq.shape[1], bq.shape[1]), out_dtype)
    dsc._C.fp8_grouped_gemm_masked(t(aq), t(as_), t(bq), t(bs), t(np.asarray(masked, np.int32)), c)
    return dsc.to_numpy(c).astype(np.float64)


def _grouped_case(rng, G, N, K, offsets):
    M = int(offsets[-1])
    aq, as_ = _quant(randn(rng, (M, K)), (1, 128))
    bq, bs = _experts(rng, G, N, K)
    return aq, as_, bq, bs


def _masked_case(rng, G, Mmax, N, K, masked):
    a = randn(rng, (G, Mmax, K))
    qs = [_quant(a[g], (1, 128)) for g in range(G)]
    aq, as_ = np.stack([q for q, _ in qs]), np.stack([s for _, s in qs])
    for g in range(G):
        as_[g, masked[g]:] = np.nan  # unused rows' scales may hold anything
    bq, bs = _experts(rng, G, N, K)
    return aq, as_, bq, bs


# offsets: unaligned rows with an empty first, middle and last group; and DeepGEMM's
# 128-row alignment (what the MoE layer uses on CUDA); K = 384 (3 scale blocks) and
# K = 272 (a partial last block, still a multiple of 16: the tensor-core path)
GROUPED_CASES = [
    (6, 200, 384, [0, 0, 77, 77, 301, 333, 333]),
    (4, 136, 272, [0, 128, 128, 384, 512]),
    (3, 72, 256, [0, 1, 2, 130]),
]


def test_grouped_and_masked_poisoned_outputs_cpu(rng):
    """The calls the CUDA parity tests make, on the CPU: every element written (no NaN left
    from the poison), equal to the block formula."""
    G, N, K, offs = GROUPED_CASES[0]
    aq, as_, bq, bs = _grouped_case(rng, G, N, K, offs)
    c = _grouped_into("cpu", aq, as_, bq, bs, offs, 1, "float32")
    assert not np.isnan(c).any()
    assert rel_err(c, ref.grouped_gemm(qvals(aq), as_, qvals(bq), bs, np.array(offs, np.int32))) < 2e-6
    masked = [200, 0, 77, 129]
    aq, as_, bq, bs = _masked_case(rng, 4, 200, 136, 256, masked)
    c = _masked_into("cpu", aq, as_, bq, bs, masked, "float32")
    assert not np.isnan(c).any()
    for g in range(4):
        assert np.all(c[g, masked[g]:] == 0)


@pytest.mark.cuda
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("G,N,K,offsets", GROUPED_CASES)
def test_cuda_grouped_gemm_matches_cpu(rng, G, N, K, offsets, out_dtype):
    """Grouped FP8 GEMM on the GPU (tensor-core kernel on sm_89+: K % 16 == 0, E4M3) vs the
    CPU: float32 within 1e-5 relative (FP32 accumulation in another order), bfloat16 within
    one bf16 rounding; no element left unwritten."""
    aq, as_, bq, bs = _grouped_case(rng, G, N, K, offsets)
    al = 128 if all(o % 128 == 0 for o in offsets) else 1
    got = _grouped_into("cuda", aq, as_, bq, bs, offsets, al, out_dtype)
    want = _grouped_into("cpu", aq, as_, bq, bs, offsets, al, "float32")
    assert not np.isnan(got).any()
    if out_dtype == "float32":
        assert rel_err(got, want) < 1e-5
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    else:
        np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=1e-5 * np.abs(want).max())


@pytest.mark.cuda
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_cuda_masked_gemm_matches_cpu(rng, out_dtype):
    """Masked FP8 GEMM on the GPU vs the CPU: used rows equal within FP32 rounding, rows past
    masked_m exactly 0 (unused rows carry NaN scales), nothing left unwritten."""
    masked = [200, 0, 77, 129]
    aq, as_, bq, bs = _masked_case(rng, 4, 200, 136, 384, masked)
    got = _masked_into("cuda", aq, as_, bq, bs, masked, out_dtype)
    want = _masked_into("cpu", aq, as_, bq, bs, masked, "float32")
    assert not np.isnan(got).any()
    for g in range(4):
        assert np.all(got[g, masked[g]:] == 0)
    if out_dtype == "float32":
        assert rel_err(got, want) < 1e-5
    else:
        np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=1e-5 * np.abs(want).max())


@pytest.mark.cuda
@pytest.mark.parametrize("M,N,K,a_block", [(130, 72, 384, (1, 128)), (96, 136, 272, (1, 128)),
                                           (256, 256, 512, (1, 128)), (200, 64, 256, (128, 128))])
def test_cuda_plain_gemm_paths_match_cpu(rng, M, N, K, a_block):
    """Plain FP8 GEMM on the GPU vs the CPU on shapes that take each path: cuBLASLt block
    scaling (M % 4 == 0, N % 16 == 0, K % 128 == 0 on sm_90), the tensor-core kernel
    (M % 4 != 0 or K % 128 != 0), and 128x128 scales on A."""
    a, w = randn(rng, (M, K)), randn(rng, (N, K), K ** -0.5)
    aq, as_ = dsc.fp8_quantize(a, block=a_block)
    wq, ws = dsc.fp8_quantize(w, block=(1, 128) if a_block == (128, 128) else (128, 128))
    cu = lambda x: dsc.tensor(x, device="cuda")  # noqa: E731
    for od in ("float32", "bfloat16"):
        got = dsc.to_numpy(dsc.fp8_gemm(cu(aq), cu(as_), cu(wq), cu(ws), out_dtype=od)).astype(np.float64)
        want = dsc.fp8_gemm(aq, as_, wq, ws, out_dtype="float32").astype(np.float64)
        assert not np.isnan(got).any()
        if od == "float32":
            assert rel_err(got, want) < 1e-5
        else:
            np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_scales_validated_where_they_are(rng, device):
    """A bad scale is found by the backend's check (CUDA: on the device, one small copy
    back), named with its index; a masked GEMM checks only the used rows."""
    aq, as_ = _quant(randn(rng, (64, 256)), (1, 128))
    bq, bs = _quant(randn(rng, (32, 256)), (128, 128))
    cu = lambda x: dsc.tensor(x, device=device)  # noqa: E731
    bad = as_.copy()
    bad[37, 1] = 0.0
    _raises(ValueError, r"a_scale: expected finite scales > 0, got 0 at \[37, 1\]", dsc.fp8_gemm, cu(aq),
            cu(bad), cu(bq), cu(bs))
    masked = cu(np.array([5, 0], np.int32))
    a3 = np.stack([aq[:8], aq[8:16]])
    s3 = np.stack([as_[:8], as_[8:16]])
    s3[0, 5:] = np.nan  # unused rows: allowed
    s3[1] = -1.0
    b3, bs3 = np.stack([bq, bq]), np.stack([bs, bs])
    c = dsc.fp8_grouped_gemm_masked(cu(a3), cu(s3), cu(b3), cu(bs3), masked, out_dtype="float32")
    assert not np.isnan(dsc.to_numpy(c)).any()
    s3[0, 4, 1] = np.inf
    _raises(ValueError, r"a_scale: expected finite scales > 0, got inf at \[0, 4, 1\]",
            dsc.fp8_grouped_gemm_masked, cu(a3), cu(s3), cu(b3), cu(bs3), masked)
