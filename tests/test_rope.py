"""RoPE (rope, rope_backward, rope_inv_freq, rope_softmax_scale, rope_cos_sin_scale)
against the float64 reference: both layouts, [B,T,H,D] and [B,T,D], float32 and
bfloat16, YaRN (the pinned DeepSeek-V3 numbers and a cos/sin multiplier != 1), the
interleaved/half permutation identity, backward = R^T against the reference and finite
differences, out= (NaN-poisoned) and out=x aliasing, NaN propagation, bad inputs, torch
and CUDA against CPU.

Tolerances: angles p * inv_freq are float32 in the library (inv_freq itself is returned
as float32), so the angle error is up to ~1.2e-7 * p * inv_freq: float32 outputs get
atol = 1e-6 + 2.5e-7 * max(p) * max|x| plus rtol 1e-5; bfloat16 outputs rtol/atol 1e-2
(+ the same angle term)."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, check_bad_array, host, poisoned, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

V3 = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
V2_LITE = dict(V3, mscale=0.707, mscale_all_dim=0.707)
SCALED = dict(V3, factor=8, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.5)  # cos/sin x1.09
LAYOUTS = ["interleaved", "half"]
SHAPES = [(1, 1, 2), (2, 3, 6), (1, 5, 3, 64), (2, 2, 1, 130), (1, 3, 4, 10), (2, 64, 8, 64)]


def tol(dtype, x, pos):
    angle = 2.5e-7 * float(np.max(pos)) * float(np.nanmax(np.abs(ref.f64(x))))
    if dtype == "float32":
        return dict(rtol=1e-5, atol=1e-6 + angle)
    return dict(rtol=1e-2, atol=1e-2 + angle)


def positions(rng, x_shape, hi=4096):
    return rng.integers(0, hi, x_shape[:2]).astype(np.int32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(rng, dtype, layout, shape):
    x = randn(rng, shape, dtype)
    pos = positions(rng, shape)
    y = dsc.rope(x, pos, layout=layout)
    assert isinstance(y, np.ndarray) and y.dtype == x.dtype and y.shape == shape
    assert_close(y, ref.rope(x, pos, layout), **tol(dtype, x, pos))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(rng, dtype, layout, shape):
    dy = randn(rng, shape, dtype)
    pos = positions(rng, shape)
    dx = dsc.rope_backward(dy, pos, layout=layout)
    assert dx.dtype == dy.dtype and dx.shape == shape
    assert_close(dx, ref.rope_backward(dy, pos, layout), **tol(dtype, dy, pos))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scaling", [None, SCALED], ids=["plain", "yarn-scaled"])
@pytest.mark.parametrize("shape", [(1, 3, 2, 4), (2, 2, 6)])
def test_backward_matches_finite_differences(rng, layout, scaling, shape):
    x, dy = randn(rng, shape), randn(rng, shape)
    pos = positions(rng, shape, hi=200)
    dx = dsc.rope_backward(dy, pos, layout=layout, scaling=scaling)
    f = lambda a: ref.rope(a, pos, layout, 10000.0, scaling)  # noqa: E731
    assert_close(dx, ref.central_fd(f, [x], 0, dy), rtol=1e-4, atol=1e-5)
    assert_close(dx, ref.rope_backward(dy, pos, layout, 10000.0, scaling), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_undoes_forward(rng, layout):
    x = randn(rng, (2, 4, 3, 16))
    pos = positions(rng, x.shape)
    assert_close(dsc.rope_backward(dsc.rope(x, pos, layout=layout), pos, layout=layout), x, rtol=1e-5, atol=1e-5)


def test_position_zero_is_identity(rng):
    x = randn(rng, (2, 3, 2, 8))
    np.testing.assert_array_equal(dsc.rope(x, np.zeros((2, 3), np.int32)), x)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 3, 64), (1, 4, 3, 10)])
def test_interleaved_equals_half_on_permuted_vectors(rng, dtype, shape):
    """HF's layout: permute each vector to [x0, x2, ..., x1, x3, ...], rotate_half; the
    result is the interleaved result under the same permutation (DEEPSEEK_V3.md §2.4)."""
    x = randn(rng, shape, dtype)
    pos = positions(rng, shape)
    p = ref.interleaved_to_half_perm(shape[-1])
    y_half = dsc.rope(np.ascontiguousarray(x[..., p]), pos, layout="half")
    y_int = dsc.rope(x, pos, layout="interleaved")
    t = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
    assert_close(y_half, ref.f64(y_int)[..., p], **t)


def test_theta_is_used(rng):
    x = randn(rng, (1, 4, 12))
    pos = positions(rng, x.shape, hi=300)
    y = dsc.rope(x, pos, theta=50000.0)
    assert_close(y, ref.rope(x, pos, "interleaved", 50000.0), **tol("float32", x, pos))
    assert_close(dsc.rope_inv_freq(12, theta=50000.0), ref.rope_inv_freq(12, 50000.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dim", [2, 10, 64, 128])
def test_inv_freq_without_scaling(dim):
    f = dsc.rope_inv_freq(dim)
    assert f.dtype == np.float32 and f.shape == (dim // 2,)
    assert_close(f, 10000.0 ** (-np.arange(dim // 2) * 2.0 / dim), rtol=1e-6, atol=0)


def test_yarn_pins_deepseek_v3_numbers():
    """DEEPSEEK_V3.md §3: low = 10, high = 23; pairs i <= 10 unchanged, i >= 23 divided
    by 40, i = 16 times 0.55; softmax scale 0.1352338 for qk_head_dim 192 (V2-Lite
    0.1147214); the cos/sin multiplier is 1."""
    base = 10000.0 ** (-np.arange(32) * 2.0 / 64)
    f = ref.f64(dsc.rope_inv_freq(64, scaling=V3))
    assert f.shape == (32,)
    np.testing.assert_allclose(f[:11], base[:11], rtol=1e-6)
    np.testing.assert_allclose(f[23:], base[23:] / 40, rtol=1e-6)
    np.testing.assert_allclose(f[16], base[16] * 0.55, rtol=1e-6)
    np.testing.assert_allclose(f, ref.rope_inv_freq(64, 10000.0, V3), rtol=1e-6)
    assert not np.allclose(f[11:23], base[11:23]) and not np.allclose(f[11:23], base[11:23] / 40)
    assert abs(dsc.rope_softmax_scale(192, scaling=V3) - 0.1352338) < 1e-7
    assert abs(dsc.rope_softmax_scale(192, scaling=V2_LITE) - 0.1147214) < 1e-7
    assert abs(dsc.rope_softmax_scale(192) - 192 ** -0.5) < 1e-8
    assert abs(dsc.rope_cos_sin_scale(scaling=V3) - 1.0) < 1e-7


@pytest.mark.parametrize("scaling", [V3, V2_LITE, SCALED], ids=["v3", "v2lite", "scaled"])
def test_yarn_scales_match_reference(scaling):
    for d in (64, 16):
        assert_close(dsc.rope_inv_freq(d, scaling=scaling), ref.rope_inv_freq(d, 10000.0, scaling), rtol=1e-6, atol=0)
    assert abs(dsc.rope_cos_sin_scale(scaling=scaling) - ref.rope_cos_sin_scale(scaling)) < 1e-6
    for hd in (192, 64):
        assert abs(dsc.rope_softmax_scale(hd, scaling=scaling) - ref.rope_softmax_scale(hd, scaling)) < 1e-7


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scaling", [V3, SCALED], ids=["v3", "scaled"])
def test_yarn_forward_and_backward_match_reference(rng, layout, scaling):
    x, dy = randn(rng, (2, 5, 2, 64)), randn(rng, (2, 5, 2, 64))
    pos = positions(rng, x.shape, hi=163840)
    assert_close(dsc.rope(x, pos, layout=layout, scaling=scaling), ref.rope(x, pos, layout, 10000.0, scaling),
                 **tol("float32", x, pos))
    assert_close(dsc.rope_backward(dy, pos, layout=layout, scaling=scaling),
                 ref.rope_backward(dy, pos, layout, 10000.0, scaling), **tol("float32", dy, pos))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_is_written_fully(rng, dtype):
    x = randn(rng, (2, 3, 5, 18), dtype)
    pos = positions(rng, x.shape)
    out = poisoned(x.shape, dtype)
    dsc.rope(x, pos, layout="half", out=out)
    assert not np.isnan(ref.f64(out)).any()
    assert_close(out, ref.rope(x, pos, "half"), **tol(dtype, x, pos))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_may_alias_x(rng, layout):
    x = randn(rng, (2, 3, 2, 16))
    pos = positions(rng, x.shape)
    want = ref.rope(x, pos, layout)
    dsc.rope(x, pos, layout=layout, out=x)
    assert_close(x, want, **tol("float32", x, pos))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_propagates_without_exception(rng, layout):
    x = randn(rng, (1, 3, 8))
    x[0, 1, 2] = np.nan
    pos = positions(rng, x.shape, hi=100) + 1
    y = dsc.rope(x, pos, layout=layout)
    want = ref.rope(x, pos, layout)
    assert np.isnan(y).sum() == 2 and np.isnan(want).sum() == 2
    assert_close(y, want, **tol("float32", x, pos))
    assert np.isnan(dsc.rope_backward(x, pos, layout=layout)).sum() == 2


FNS = {"rope": lambda x, p: dsc.rope(x, p), "rope_backward": lambda x, p: dsc.rope_backward(x, p)}


@pytest.mark.parametrize("fn", FNS)
def test_bad_x(rng, fn):
    x, pos = randn(rng, (2, 3, 8)), positions(rng, (2, 3))
    check_bad_array(FNS[fn], [x, pos], 0, "dy" if fn == "rope_backward" else "x")


@pytest.mark.parametrize("fn", FNS)
def test_bad_positions(rng, fn):
    x, pos = randn(rng, (2, 3, 8)), positions(rng, (2, 3))
    check_bad_array(FNS[fn], [x, pos], 1, "positions", bad_dtype=np.float32)


@pytest.mark.parametrize("fn", FNS)
def test_bad_shapes_and_values(rng, fn):
    f = FNS[fn]
    x, pos = randn(rng, (2, 3, 8)), positions(rng, (2, 3))
    with pytest.raises(ValueError, match="positions"):
        f(x, positions(rng, (2, 4)))
    with pytest.raises(ValueError, match="positions"):
        f(x, pos.reshape(-1))
    with pytest.raises(ValueError):
        f(randn(rng, (2, 3, 7)), pos)  # odd rotary dim
    with pytest.raises(ValueError):
        f(randn(rng, (6, 8)), pos)  # rank 2
    with pytest.raises(ValueError):
        f(randn(rng, (2, 3, 1, 1, 8)), pos)  # rank 5
    with pytest.raises(TypeError):
        f(x.astype(np.int32), pos)
    bad = pos.copy()
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="positions"):
        f(x, bad)


def test_bad_arguments(rng):
    x, pos = randn(rng, (2, 3, 8)), positions(rng, (2, 3))
    with pytest.raises(ValueError, match="layout"):
        dsc.rope(x, pos, layout="neox")
    with pytest.raises(ValueError, match="layout"):
        dsc.rope_backward(x, pos, layout="gptj")
    with pytest.raises(ValueError, match="scaling"):
        dsc.rope(x, pos, scaling={"type": "linear", "factor": 4})
    with pytest.raises(TypeError, match="scaling"):
        dsc.rope(x, pos, scaling=40)
    with pytest.raises(ValueError, match="y"):
        dsc.rope(x, pos, out=poisoned((2, 3, 6)))
    with pytest.raises(ValueError):
        dsc.rope_inv_freq(7)
    with pytest.raises(ValueError):
        dsc.rope_inv_freq(0)
    with pytest.raises(ValueError):
        dsc.rope_softmax_scale(0)
    with pytest.raises(ValueError, match="scaling"):
        dsc.rope_softmax_scale(192, scaling={"type": "dynamic", "factor": 2})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    x = randn(rng, (2, 3, 2, 8), dtype)
    pos = positions(rng, x.shape)
    y = dsc.rope(to_torch(x), to_torch(pos), scaling=V3)
    assert isinstance(y, torch.Tensor) and str(y.dtype) == f"torch.{dtype}"
    assert_close(y, ref.rope(x, pos, "interleaved", 10000.0, V3), **tol(dtype, x, pos))
    dx = dsc.rope_backward(to_torch(x), to_torch(pos), layout="half")
    assert isinstance(dx, torch.Tensor)
    assert_close(dx, ref.rope_backward(x, pos, "half"), **tol(dtype, x, pos))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 7, 3, 64), (2, 64, 128, 64)])
@pytest.mark.parametrize("scaling", [None, V3, SCALED], ids=["plain", "v3", "scaled"])
def test_cuda_matches_cpu(rng, dtype, layout, shape, scaling):
    x = randn(rng, shape, dtype)
    pos = positions(rng, shape, hi=163840 if scaling else 4096)
    y = dsc.rope(x, pos, layout=layout, scaling=scaling)
    dx = dsc.rope_backward(x, pos, layout=layout, scaling=scaling)
    yc = dsc.rope(to_cuda(x), to_cuda(pos), layout=layout, scaling=scaling)
    dxc = dsc.rope_backward(to_cuda(x), to_cuda(pos), layout=layout, scaling=scaling)
    t = tol(dtype, x, pos)
    assert_close(host(yc), ref.f64(y), **t)
    assert_close(host(dxc), ref.f64(dx), **t)
