"""Outputs that share memory with inputs: computed correctly where the op documents an
in-place use ("may alias"), an error otherwise -- never a silent wrong answer.

Before the overlap checks, dsc.matmul(a, b, out=b) and dsc.linear(x, w, out=x) returned
values off by several units (the GEMM overwrote its own input). References are NumPy
float64; outputs of the in-place cases start as the input itself (no NaN poisoning
possible there), the others are NaN-poisoned.
"""

from __future__ import annotations

import numpy as np
import pytest

import deepseek_c as dsc
from reference import dense as ref

OVERLAP = "expected memory that does not overlap"
PARTIAL = "partially overlapping range"


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def rms_ref(x, w, eps=1e-6):
    x = x.astype(np.float64)
    return w.astype(np.float64) * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def silu(g):
    g = g.astype(np.float64)
    return g / (1.0 + np.exp(-g))


# ----------------------------------------------------------------------------- refused


def test_matmul_out_is_b_raises(rng):
    a, b = randn(rng, 8, 8), randn(rng, 8, 8)
    b0 = b.copy()
    with pytest.raises(ValueError, match=f"dsc_matmul: c: {OVERLAP} b"):
        dsc.matmul(a, b, out=b)
    np.testing.assert_array_equal(b, b0)  # refused before anything was written


def test_matmul_out_is_a_raises(rng):
    a, b = randn(rng, 8, 8), randn(rng, 8, 8)
    with pytest.raises(ValueError, match=f"c: {OVERLAP} a"):
        dsc.matmul(a, b, out=a)


def test_matmul_out_partially_overlapping_a_raises(rng):
    buf = randn(rng, 96)
    a = buf[:64].reshape(8, 8)
    out = buf[32:96].reshape(8, 8)
    with pytest.raises(ValueError, match=f"c: {OVERLAP} a"):
        dsc.matmul(a, randn(rng, 8, 8), out=out)


def test_matmul_disjoint_halves_of_one_buffer_work(rng):
    # no false positive: adjacent, non-overlapping ranges of one allocation
    buf = randn(rng, 192)
    a, b = buf[:64].reshape(8, 8), buf[64:128].reshape(8, 8)
    out = buf[128:].reshape(8, 8)
    out[...] = np.nan
    want = a.astype(np.float64) @ b.astype(np.float64)
    dsc.matmul(a, b, out=out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_linear_out_is_x_raises(rng):
    x, w = randn(rng, 8, 8), randn(rng, 8, 8)
    x0 = x.copy()
    with pytest.raises(ValueError, match=f"dsc_linear_forward: y: {OVERLAP} x"):
        dsc.linear(x, w, out=x)
    np.testing.assert_array_equal(x, x0)


def test_linear_out_is_w_raises(rng):
    x, w = randn(rng, 8, 8), randn(rng, 8, 8)
    with pytest.raises(ValueError, match=f"y: {OVERLAP} w"):
        dsc.linear(x, w, out=w)


def test_rms_norm_out_shifted_by_a_row_raises(rng):
    buf = randn(rng, 5, 16)
    x, out = buf[:4], buf[1:]
    with pytest.raises(ValueError, match=f"dsc_rms_norm_forward: y: .*{PARTIAL}"):
        dsc.rms_norm(x, np.ones(16, np.float32), out=out)


def test_rms_norm_out_is_w_raises(rng):
    x, w = randn(rng, 1, 16), randn(rng, 16)
    with pytest.raises(ValueError, match=f"y: {OVERLAP} w"):
        dsc.rms_norm(x, w, out=w.reshape(1, 16))


def test_swiglu_out_partially_overlapping_raises(rng):
    buf = randn(rng, 40)
    g, u = buf[:32], randn(rng, 32)
    with pytest.raises(ValueError, match=f"dsc_swiglu_forward: out: .*{PARTIAL}"):
        dsc.swiglu(g, u, out=buf[8:40])


def test_embedding_out_overlapping_table_raises(rng):
    table = randn(rng, 16, 8)
    ids = np.array([1, 2], np.int32)
    with pytest.raises(ValueError, match=f"dsc_embedding_forward: out: {OVERLAP} table"):
        dsc.embedding(ids, table, out=table[4:6])


def test_adamw_param_overlapping_a_grad_raises(rng):
    p, g, m, v = (randn(rng, 32) for _ in range(4))
    m[:] = 0.0
    v[:] = 0.0
    with pytest.raises(ValueError, match=f"dsc_adamw_step: params\\[0\\]: {OVERLAP} grads\\[0\\]"):
        dsc.adamw_step([g], [g], [m], [v], lr=1e-3, step=1)
    with pytest.raises(ValueError, match=f"exp_avg\\[1\\]: {OVERLAP} params\\[0\\]"):
        dsc.adamw_step([p, randn(rng, 8)], [g, randn(rng, 8)], [m, p[8:16]], [v, np.zeros(8, np.float32)],
                       lr=1e-3, step=1)


def test_adamw_shared_grads_are_allowed(rng):
    # grads are only read: two parameters may take the same gradient array
    g = randn(rng, 16)
    ps = [randn(rng, 16), randn(rng, 16)]
    want = [p.copy() for p in ps]
    ms = [np.zeros(16, np.float32) for _ in ps]
    vs = [np.zeros(16, np.float32) for _ in ps]
    dsc.adamw_step(ps, [g, g], ms, vs, lr=1e-2, step=1, weight_decay=0.0)
    for p, w in zip(ps, want):
        # first step of Adam: p - lr * sign(g) (up to eps)
        np.testing.assert_allclose(p, w - 1e-2 * np.sign(g), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- in place, correct


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rms_norm_in_place_matches_reference(rng, dtype):
    x = ref.cast(rng.standard_normal((6, 64)), dtype)
    w = ref.cast(1.0 + 0.2 * rng.standard_normal(64), dtype)
    want = rms_ref(ref.f64(x), ref.f64(w))
    got = dsc.rms_norm(x, w, out=x)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(ref.f64(x), want, rtol=tol, atol=tol)
    assert np.shares_memory(np.asarray(got), x)


def test_swiglu_in_place_on_gate_and_on_up(rng):
    for target in ("gate", "up"):
        g, u = randn(rng, 4, 32), randn(rng, 4, 32)
        want = silu(g) * u.astype(np.float64)
        out = g if target == "gate" else u
        dsc.swiglu(g, u, out=out)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_rope_in_place_matches_out_of_place(rng):
    x = randn(rng, 2, 5, 3, 16)
    pos = np.tile(np.arange(5, dtype=np.int32), (2, 1))
    y = np.full_like(x, np.nan)
    dsc.rope(x, pos, out=y)
    dsc.rope(x, pos, out=x)
    np.testing.assert_array_equal(x, y)


def test_rope_partial_overlap_raises(rng):
    buf = randn(rng, 2 * 6 * 16)
    x = buf[: 2 * 5 * 16].reshape(2, 5, 16)
    out = buf[16 : 16 + 2 * 5 * 16].reshape(2, 5, 16)
    pos = np.tile(np.arange(5, dtype=np.int32), (2, 1))
    with pytest.raises(ValueError, match=f"y: .*{PARTIAL}"):
        dsc.rope(x, pos, out=out)
