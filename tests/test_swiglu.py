"""SwiGLU (swiglu, swiglu_forward, swiglu_backward): silu(gate) * up against the float64
reference in float32 and bfloat16 over odd shapes and large |gate| (no overflow), the
backward against the analytic reference and central finite differences, out= with NaN
poison, NaN propagation, bad inputs, torch and CUDA against CPU.

Tolerances: float32 rtol 1e-5 (forward) / 1e-4 (backward), atol 1e-6; bfloat16 rtol and
atol 1e-2 (one rounding of the output)."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, check_bad_array, host, poisoned, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "bfloat16": dict(rtol=1e-2, atol=1e-2)}
TOL_BWD = {"float32": dict(rtol=1e-4, atol=1e-6), "bfloat16": dict(rtol=1e-2, atol=1e-2)}
SHAPES = [(1,), (3,), (1, 1), (4, 129), (2, 3, 17), (8, 256), (3, 4099)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_reference(rng, dtype, shape):
    g, u, d = randn(rng, shape, dtype, 3.0), randn(rng, shape, dtype), randn(rng, shape, dtype)
    out, ctx = dsc.swiglu_forward(g, u)
    assert isinstance(out, np.ndarray) and out.dtype == g.dtype and out.shape == shape
    assert_close(out, ref.swiglu(g, u), **TOL[dtype])
    assert_close(dsc.swiglu(g, u), ref.swiglu(g, u), **TOL[dtype])
    dg, du = dsc.swiglu_backward(d, ctx)
    assert dg.dtype == g.dtype and du.dtype == g.dtype and dg.shape == shape and du.shape == shape
    rdg, rdu = ref.swiglu_backward(d, g, u)
    assert_close(dg, rdg, **TOL_BWD[dtype])
    assert_close(du, rdu, **TOL_BWD[dtype])


def test_large_gate_does_not_overflow(rng):
    g = np.array([[-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0, 3e38]], np.float32)
    u = randn(rng, g.shape)
    d = randn(rng, g.shape)
    out, ctx = dsc.swiglu_forward(g, u)
    assert np.isfinite(out[:, :-1]).all()
    assert_close(out[:, :-1], ref.swiglu(g, u)[:, :-1], **TOL["float32"])
    dg, du = dsc.swiglu_backward(d, ctx)
    assert np.isfinite(dg[:, :-1]).all() and np.isfinite(du[:, :-1]).all()
    rdg, rdu = ref.swiglu_backward(d, g, u)
    assert_close(dg[:, :-1], rdg[:, :-1], **TOL_BWD["float32"])
    assert_close(du[:, :-1], rdu[:, :-1], **TOL_BWD["float32"])


@pytest.mark.parametrize("shape", [(3, 5), (2, 1, 4)])
def test_backward_matches_finite_differences(rng, shape):
    g, u, d = randn(rng, shape, scale=2.0), randn(rng, shape), randn(rng, shape)
    _, ctx = dsc.swiglu_forward(g, u)
    dg, du = dsc.swiglu_backward(d, ctx)
    assert_close(dg, ref.central_fd(ref.swiglu, [g, u], 0, d), rtol=1e-4, atol=1e-5)
    assert_close(du, ref.central_fd(ref.swiglu, [g, u], 1, d), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_is_written_fully(rng, dtype):
    g, u = randn(rng, (5, 37), dtype), randn(rng, (5, 37), dtype)
    out = poisoned((5, 37), dtype)
    dsc.swiglu(g, u, out=out)
    assert not np.isnan(ref.f64(out)).any()
    assert_close(out, ref.swiglu(g, u), **TOL[dtype])


def test_out_may_alias_an_input(rng):
    """Elementwise: writing over gate (or up) in place gives the same values."""
    g, u = randn(rng, (3, 20)), randn(rng, (3, 20))
    want = ref.swiglu(g, u)
    dsc.swiglu(g, u, out=g)
    assert_close(g, want, **TOL["float32"])


def test_nan_propagates_without_exception(rng):
    g, u, d = randn(rng, (2, 6)), randn(rng, (2, 6)), randn(rng, (2, 6))
    g[0, 1] = np.nan
    u[1, 4] = np.nan
    out, ctx = dsc.swiglu_forward(g, u)
    assert np.isnan(out).sum() == 2 and np.isnan(out[0, 1]) and np.isnan(out[1, 4])
    assert_close(out, ref.swiglu(g, u), **TOL["float32"])
    dg, du = dsc.swiglu_backward(d, ctx)
    assert np.isnan(dg[0, 1]) and np.isnan(du[0, 1]) and np.isnan(dg[1, 4])
    assert_close(dg, ref.swiglu_backward(d, g, u)[0], **TOL_BWD["float32"])


FWD = {"swiglu": lambda g, u: dsc.swiglu(g, u), "swiglu_forward": lambda g, u: dsc.swiglu_forward(g, u)}


@pytest.mark.parametrize("fn", FWD)
@pytest.mark.parametrize("arg", [0, 1])
def test_bad_arrays(rng, fn, arg):
    g, u = randn(rng, (4, 6)), randn(rng, (4, 6))
    check_bad_array(FWD[fn], [g, u], arg, ["gate", "up"][arg])


@pytest.mark.parametrize("fn", FWD)
def test_bad_shapes_and_dtypes(rng, fn):
    f = FWD[fn]
    g = randn(rng, (4, 6))
    with pytest.raises(ValueError, match="up"):
        f(g, randn(rng, (4, 5)))
    with pytest.raises(ValueError, match="up"):
        f(g, randn(rng, (24,)))
    with pytest.raises(TypeError, match="up"):
        f(g, ref.cast(randn(rng, (4, 6)), "bfloat16"))
    with pytest.raises(TypeError, match="gate"):
        f(g.astype(np.int32), g.astype(np.int32))


def test_bad_out_and_backward(rng):
    g, u, d = randn(rng, (4, 6)), randn(rng, (4, 6)), randn(rng, (4, 6))
    with pytest.raises(ValueError, match="out"):
        dsc.swiglu(g, u, out=poisoned((4, 5)))
    with pytest.raises(TypeError, match="out"):
        dsc.swiglu(g, u, out=poisoned((4, 6), "bfloat16"))
    _, ctx = dsc.swiglu_forward(g, u)
    check_bad_array(dsc.swiglu_backward, [d, ctx], 0, "dout")
    with pytest.raises(ValueError, match="dout"):
        dsc.swiglu_backward(randn(rng, (4, 5)), ctx)
    with pytest.raises(TypeError, match="ctx"):
        dsc.swiglu_backward(d, (g, u))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    g, u, d = randn(rng, (3, 10), dtype), randn(rng, (3, 10), dtype), randn(rng, (3, 10), dtype)
    out, ctx = dsc.swiglu_forward(to_torch(g), to_torch(u))
    assert isinstance(out, torch.Tensor) and str(out.dtype) == f"torch.{dtype}"
    assert_close(out, ref.swiglu(g, u), **TOL[dtype])
    dg, du = dsc.swiglu_backward(to_torch(d), ctx)
    assert isinstance(dg, torch.Tensor) and isinstance(du, torch.Tensor)
    assert_close(dg, ref.swiglu_backward(d, g, u)[0], **TOL_BWD[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1,), (5, 129), (64, 18432)])
def test_cuda_matches_cpu(rng, dtype, shape):
    g, u, d = randn(rng, shape, dtype, 3.0), randn(rng, shape, dtype), randn(rng, shape, dtype)
    out, ctx = dsc.swiglu_forward(g, u)
    dg, du = dsc.swiglu_backward(d, ctx)
    outc, ctxc = dsc.swiglu_forward(to_cuda(g), to_cuda(u))
    dgc, duc = dsc.swiglu_backward(to_cuda(d), ctxc)
    for got, want in ((outc, out), (dgc, dg), (duc, du)):
        assert_close(host(got), ref.f64(want), **TOL_BWD[dtype])
