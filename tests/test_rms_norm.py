"""RMSNorm (rms_norm, rms_norm_forward, rms_norm_backward) against the float64 reference:
forward in float32 and bfloat16 over odd shapes, backward against the analytic reference
and central finite differences, out= (NaN-poisoned) and out=x aliasing, NaN propagation,
bad inputs, torch tensors in / torch tensors out, CUDA against CPU.

Tolerances: float32 forward rtol 1e-5; float32 backward rtol 1e-4 (row reductions);
bfloat16 outputs rtol 1e-2 (one bf16 rounding = 2^-9 relative); dw stays float32."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, check_bad_array, host, poisoned, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "bfloat16": dict(rtol=1e-2, atol=1e-2)}
TOL_BWD = {"float32": dict(rtol=1e-4, atol=1e-5), "bfloat16": dict(rtol=2e-2, atol=2e-2)}
SHAPES = [(1, 1), (4, 3), (1, 64), (5, 129), (2, 3, 17), (300, 257)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(rng, dtype, shape):
    x, w = randn(rng, shape, dtype), randn(rng, shape[-1], dtype)
    y = dsc.rms_norm(x, w, 1e-6)
    assert isinstance(y, np.ndarray) and y.dtype == x.dtype and y.shape == shape
    assert_close(y, ref.rms_norm(x, w, 1e-6), **TOL[dtype])


def test_forward_eps_matters(rng):
    x, w = randn(rng, (3, 8), scale=1e-2), randn(rng, 8)
    for eps in (1e-6, 1e-3, 0.5):
        assert_close(dsc.rms_norm(x, w, eps), ref.rms_norm(x, w, eps), **TOL["float32"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_ctx_and_backward_match_reference(rng, dtype, shape):
    x, w, dy = randn(rng, shape, dtype), randn(rng, shape[-1], dtype), randn(rng, shape, dtype)
    y, ctx = dsc.rms_norm_forward(x, w, 1e-6)
    assert_close(y, ref.rms_norm(x, w, 1e-6), **TOL[dtype])
    assert_close(ctx.rstd, ref.rms_norm_rstd(x, 1e-6), rtol=1e-5, atol=0)
    dx, dw = dsc.rms_norm_backward(dy, ctx)
    assert dx.dtype == x.dtype and dx.shape == shape
    assert dw.dtype == np.float32 and dw.shape == (shape[-1],)
    rdx, rdw = ref.rms_norm_backward(dy, x, w, 1e-6)
    assert_close(dx, rdx, **TOL_BWD[dtype])
    # dw is float32 whatever the activation dtype, from exactly widened bf16 inputs
    assert_close(dw, rdw, rtol=1e-4, atol=1e-4 * np.sqrt(np.prod(shape[:-1])))


@pytest.mark.parametrize("shape", [(3, 5), (2, 1, 4), (1, 2)])
def test_backward_matches_finite_differences(rng, shape):
    x, w, dy = randn(rng, shape), randn(rng, shape[-1]), randn(rng, shape)
    _, ctx = dsc.rms_norm_forward(x, w, 1e-5)
    dx, dw = dsc.rms_norm_backward(dy, ctx)
    assert_close(dx, ref.central_fd(ref.rms_norm, [x, w, 1e-5], 0, dy), rtol=1e-4, atol=1e-5)
    assert_close(dw, ref.central_fd(ref.rms_norm, [x, w, 1e-5], 1, dy), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_is_written_fully(rng, dtype):
    x, w = randn(rng, (7, 33), dtype), randn(rng, 33, dtype)
    out = poisoned((7, 33), dtype)
    y = dsc.rms_norm(x, w, out=out)
    assert y is out or np.shares_memory(y, out)
    assert not np.isnan(ref.f64(out)).any()
    assert_close(out, ref.rms_norm(x, w), **TOL[dtype])


def test_out_may_alias_x(rng):
    x, w = randn(rng, (6, 40)), randn(rng, 40)
    want = ref.rms_norm(x, w)
    dsc.rms_norm(x, w, out=x)
    assert_close(x, want, **TOL["float32"])


def test_nan_propagates_without_exception(rng):
    x, w = randn(rng, (4, 9)), randn(rng, 9)
    x[2, 5] = np.nan
    y = dsc.rms_norm(x, w)
    assert np.isnan(y[2]).all()
    assert not np.isnan(np.delete(y, 2, axis=0)).any()
    assert_close(y, ref.rms_norm(x, w), **TOL["float32"])


FORWARDS = {"rms_norm": dsc.rms_norm, "rms_norm_forward": lambda a, b, eps=1e-6: dsc.rms_norm_forward(a, b, eps)}


@pytest.mark.parametrize("fn", FORWARDS)
@pytest.mark.parametrize("arg", [0, 1])
def test_bad_arrays_forward(rng, fn, arg):
    x, w = randn(rng, (4, 8)), randn(rng, 8)
    check_bad_array(FORWARDS[fn], [x, w], arg, "xw"[arg])


@pytest.mark.parametrize("fn", FORWARDS)
def test_bad_shapes_and_dtypes_forward(rng, fn):
    f = FORWARDS[fn]
    x, w = randn(rng, (4, 8)), randn(rng, 8)
    with pytest.raises(ValueError, match="w"):
        f(x, randn(rng, 7))
    with pytest.raises(ValueError, match="w"):
        f(x, randn(rng, (1, 8)))
    with pytest.raises(TypeError, match="w"):
        f(x, ref.cast(w, "bfloat16"))  # mixed dtypes
    with pytest.raises(TypeError, match="x"):
        f(x.astype(np.int32), w.astype(np.int32))
    with pytest.raises(ValueError, match="x"):
        f(np.ones((), np.float32), randn(rng, 1))  # 0-d x has no feature dim
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps"):
            f(x, w, eps)


def test_bad_out(rng):
    x, w = randn(rng, (4, 8)), randn(rng, 8)
    with pytest.raises(ValueError, match="y"):
        dsc.rms_norm(x, w, out=poisoned((4, 7)))
    with pytest.raises(TypeError, match="y"):
        dsc.rms_norm(x, w, out=poisoned((4, 8), "bfloat16"))


def test_bad_backward(rng):
    x, w, dy = randn(rng, (4, 8)), randn(rng, 8), randn(rng, (4, 8))
    _, ctx = dsc.rms_norm_forward(x, w)
    with pytest.raises(ValueError, match="dy"):
        dsc.rms_norm_backward(randn(rng, (3, 8)), ctx)
    with pytest.raises(TypeError, match="ctx"):
        dsc.rms_norm_backward(dy, (x, w))
    check_bad_array(dsc.rms_norm_backward, [dy, ctx], 0, "dy")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    x, w, dy = randn(rng, (3, 16), dtype), randn(rng, 16, dtype), randn(rng, (3, 16), dtype)
    y, ctx = dsc.rms_norm_forward(to_torch(x), to_torch(w))
    assert isinstance(y, torch.Tensor) and str(y.dtype) == f"torch.{dtype}"
    assert_close(y, ref.rms_norm(x, w), **TOL[dtype])
    dx, dw = dsc.rms_norm_backward(to_torch(dy), ctx)
    assert isinstance(dx, torch.Tensor) and dw.dtype == torch.float32
    assert_close(dx, ref.rms_norm_backward(dy, x, w)[0], **TOL_BWD[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 129), (64, 7168)])
def test_cuda_matches_cpu(rng, dtype, shape):
    x, w, dy = randn(rng, shape, dtype), randn(rng, shape[-1], dtype), randn(rng, shape, dtype)
    y, ctx = dsc.rms_norm_forward(x, w)
    dx, dw = dsc.rms_norm_backward(dy, ctx)
    yc, ctxc = dsc.rms_norm_forward(to_cuda(x), to_cuda(w))
    dxc, dwc = dsc.rms_norm_backward(to_cuda(dy), ctxc)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
    assert_close(host(yc), ref.f64(y), **tol)
    assert_close(host(dxc), ref.f64(dx), **tol)
    assert_close(host(dwc), ref.f64(dw), rtol=1e-4, atol=1e-4 * np.sqrt(np.prod(shape[:-1])))


def test_dsc_tensor_in_tensor_out(rng):
    x, w, dy = randn(rng, (3, 16)), randn(rng, 16), randn(rng, (3, 16))
    y, ctx = dsc.rms_norm_forward(dsc.tensor(x), dsc.tensor(w))
    assert isinstance(y, dsc.Tensor) and y.dtype == "float32" and y.device == "cpu" and y.shape == (3, 16)
    assert_close(y.numpy(), ref.rms_norm(x, w), **TOL["float32"])
    dx, dw = dsc.rms_norm_backward(dsc.tensor(dy), ctx)
    assert isinstance(dx, dsc.Tensor) and isinstance(dw, dsc.Tensor) and dw.dtype == "float32"
    assert_close(dx.numpy(), ref.rms_norm_backward(dy, x, w)[0], **TOL_BWD["float32"])
