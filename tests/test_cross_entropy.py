"""Fused softmax cross-entropy against the float64 reference: loss (a 0-d float32 array
of the caller's type) and dlogits for float32 and bfloat16 logits, int32/int64 targets,
[N, V] and [..., V] shapes with odd V (1, 3, 129, 1000), ignore_index (custom values,
all tokens ignored -> loss 0 and zero gradient), grad_scale, return_dlogits=False,
numerically large logits, dlogits against central finite differences, NaN propagation,
out-of-range targets naming "targets", bad inputs, torch and CUDA against CPU.

Tolerances: loss rtol 1e-5 (float32 compute, also from bf16 logits: they widen exactly);
dlogits float32 rtol 1e-5 with atol 1e-7 / n; bf16 dlogits rtol and atol 1e-2 of the
largest |dlogit|."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, check_bad_array, host, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref


def targets_for(rng, shape, V, ignore=-100, frac_ignored=0.25, dtype=np.int64):
    t = rng.integers(0, V, shape)
    t[rng.random(shape) < frac_ignored] = ignore
    return t.astype(dtype)


def check(logits, targets, loss, dl, dtype, ignore_index=-100, grad_scale=1.0):
    rloss, rdl = ref.cross_entropy(logits, targets, ignore_index, grad_scale)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float32
    assert abs(float(loss) - rloss) <= 1e-5 * abs(rloss) + 1e-6, (float(loss), rloss)
    assert dl.shape == logits.shape and dl.dtype == logits.dtype
    if dtype == "float32":
        assert_close(dl, rdl, rtol=1e-5, atol=1e-7)
    else:
        assert_close(dl, rdl, rtol=1e-2, atol=1e-2 * np.abs(rdl).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape,V", [((1,), 1), ((4,), 3), ((7,), 129), ((2, 3), 1000), ((2, 2, 5), 17), ((33,), 32000)])
def test_matches_reference(rng, dtype, tdtype, shape, V):
    logits = randn(rng, shape + (V,), dtype, 3.0)
    t = targets_for(rng, shape, V, dtype=tdtype)
    t.reshape(-1)[0] = rng.integers(0, V)  # at least one valid token
    loss, dl = dsc.cross_entropy(logits, t)
    check(logits, t, loss, dl, dtype)


@pytest.mark.parametrize("grad_scale", [1.0, 0.125, 4096.0])
@pytest.mark.parametrize("ignore_index", [-100, 0, 7])
def test_ignore_index_and_grad_scale(rng, grad_scale, ignore_index):
    logits = randn(rng, (9, 11), scale=2.0)
    t = targets_for(rng, (9,), 11, ignore=ignore_index, frac_ignored=0.4)
    t[0] = 5
    loss, dl = dsc.cross_entropy(logits, t, ignore_index=ignore_index, grad_scale=grad_scale)
    check(logits, t, loss, dl, "float32", ignore_index, grad_scale)
    np.testing.assert_array_equal(dl[t == ignore_index], 0.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_tokens_ignored_gives_zero(rng, dtype):
    logits = randn(rng, (3, 4, 6), dtype)
    t = np.full((3, 4), -100, np.int64)
    loss, dl = dsc.cross_entropy(logits, t)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(ref.f64(dl), 0.0)


def test_return_dlogits_false(rng):
    logits = randn(rng, (5, 8))
    t = targets_for(rng, (5,), 8)
    t[0] = 1
    loss, dl = dsc.cross_entropy(logits, t, return_dlogits=False)
    assert dl is None
    assert abs(float(loss) - ref.cross_entropy(logits, t)[0]) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offset", [80.0, 1e4, -1e4])
def test_large_logits_are_stable(rng, dtype, offset):
    """A common offset must not change the loss (log-sum-exp with the max subtracted)."""
    base = rng.standard_normal((6, 50)) * 3
    logits = ref.cast(base + offset, dtype)
    t = rng.integers(0, 50, 6)
    loss, dl = dsc.cross_entropy(logits, t)
    assert np.isfinite(loss) and np.isfinite(ref.f64(dl)).all()
    check(logits, t, loss, dl, dtype)


@pytest.mark.parametrize("V", [1, 2, 5])
def test_dlogits_match_finite_differences(rng, V):
    logits = randn(rng, (4, V), scale=2.0)
    t = rng.integers(0, V, 4)
    t[2] = -100
    _, dl = dsc.cross_entropy(logits, t, grad_scale=0.5)
    assert_close(dl, ref.central_fd(ref.cross_entropy_loss, [logits, t, -100, 0.5], 0), rtol=1e-4, atol=1e-6)


def test_nan_propagates_without_exception(rng):
    logits = randn(rng, (4, 7))
    logits[1, 3] = np.nan
    t = np.array([0, 2, 5, 6], np.int64)
    loss, dl = dsc.cross_entropy(logits, t)
    assert np.isnan(loss)
    assert np.isnan(dl[1]).all()
    assert_close(np.delete(dl, 1, axis=0), np.delete(ref.cross_entropy(logits, t)[1], 1, axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [7, -1, -101, 2 ** 40])
def test_out_of_range_target_names_targets(rng, bad):
    logits = randn(rng, (4, 7))
    t = np.array([0, 2, bad, 6], np.int64)
    with pytest.raises(ValueError, match="targets"):
        dsc.cross_entropy(logits, t)


def test_bad_logits(rng):
    logits, t = randn(rng, (4, 7)), np.array([0, 2, 5, 6], np.int64)
    check_bad_array(lambda a, b: dsc.cross_entropy(a, b), [logits, t], 0, "logits")


def test_bad_targets(rng):
    logits, t = randn(rng, (4, 7)), np.array([0, 2, 5, 6], np.int64)
    check_bad_array(lambda a, b: dsc.cross_entropy(a, b), [logits, t], 1, "targets", bad_dtype=np.float32)
    with pytest.raises(ValueError, match="targets"):
        dsc.cross_entropy(logits, t[:3].copy())
    with pytest.raises(ValueError, match="targets"):
        dsc.cross_entropy(logits, t.reshape(2, 2))
    with pytest.raises(ValueError):
        dsc.cross_entropy(np.array(1.5, np.float32), np.array(0, np.int64))  # 0-d logits: no vocabulary dim
    with pytest.raises(TypeError, match="logits"):
        dsc.cross_entropy(logits.astype(np.int32), t)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    logits = randn(rng, (2, 3, 10), dtype)
    t = targets_for(rng, (2, 3), 10)
    t[0, 0] = 3
    loss, dl = dsc.cross_entropy(to_torch(logits), to_torch(t))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.dtype == torch.float32
    assert isinstance(dl, torch.Tensor) and str(dl.dtype) == f"torch.{dtype}"
    check(logits, t, np.asarray(host(loss)), host(dl), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,V", [((1,), 1), ((7,), 129), ((64,), 32000), ((3, 5), 1000)])
def test_cuda_matches_cpu(rng, dtype, shape, V):
    logits = randn(rng, shape + (V,), dtype, 3.0)
    t = targets_for(rng, shape, V)
    t.reshape(-1)[0] = 0
    loss, dl = dsc.cross_entropy(logits, t, grad_scale=2.0)
    lossc, dlc = dsc.cross_entropy(to_cuda(logits), to_cuda(t), grad_scale=2.0)
    assert abs(float(host(lossc)) - float(loss)) <= 1e-5 * abs(float(loss)) + 1e-6
    d = ref.f64(dl)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2 * np.abs(d).max())
    assert_close(host(dlc), d, **tol)


def test_dsc_tensor_in_tensor_out(rng):
    logits, t = randn(rng, (4, 7)), np.array([0, 2, 5, 6], np.int32)
    loss, dl = dsc.cross_entropy(dsc.tensor(logits), dsc.tensor(t))
    assert isinstance(loss, dsc.Tensor) and loss.shape == () and loss.dtype == "float32"
    assert isinstance(dl, dsc.Tensor) and dl.shape == (4, 7)
    check(logits, t, np.asarray(loss.numpy()), dl.numpy(), "float32")
