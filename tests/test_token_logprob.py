"""Per-token log-probabilities (dsc_token_logprob) and their backward against the float64
reference (tests/reference/rl.py): float32 and bfloat16 logits, int32/int64 targets with
ignore_index, [N, V] and [..., V] shapes, the entropy output, large logit offsets, the
backward against the reference and central differences, in place over the logits, every
output written (NaN-poisoned buffers), bad inputs naming the argument, CUDA against CPU.

Tolerances: log-probabilities and entropy float32 compute: atol 2e-5 (they are O(10));
dlogits float32 rtol 1e-5 / atol 1e-6; bf16 dlogits 1e-2 of the largest."""

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c import _C
from _util import assert_close, check_bad_array, host, poisoned, randn, to_cuda
from reference import dense as dref
from reference import rl as ref


def targets_for(rng, shape, V, frac_ignored=0.3, dtype=np.int64, ignore=-100):
    t = rng.integers(0, V, shape)
    t[rng.random(shape) < frac_ignored] = ignore
    t.reshape(-1)[0] = rng.integers(0, V)
    return t.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tdtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape,V", [((1,), 1), ((5,), 3), ((4, 6), 48), ((2, 3, 5), 129), ((17,), 5000)])
def test_forward_matches_reference(rng, dtype, tdtype, shape, V):
    logits = randn(rng, shape + (V,), dtype, 3.0)
    t = targets_for(rng, shape, V, dtype=tdtype)
    lp, ent = dsc.token_logprob(logits, t, return_entropy=True)
    rlp, rent = ref.token_logprob(dref.f64(logits), t)
    assert lp.shape == shape and lp.dtype == np.float32 and ent.shape == shape
    assert_close(lp, rlp, rtol=1e-5, atol=2e-5)
    assert_close(ent, rent, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(lp[t == -100], 0.0)
    assert (lp <= 0).all() and (ent >= -1e-6).all()


@pytest.mark.parametrize("ignore_index", [-100, 0, 7])
def test_custom_ignore_index_and_all_ignored(rng, ignore_index):
    logits = randn(rng, (6, 9))
    t = targets_for(rng, (6,), 9, ignore=ignore_index)
    lp = dsc.token_logprob(logits, t, ignore_index=ignore_index)
    assert_close(lp, ref.token_logprob(logits, t, ignore_index)[0], rtol=1e-5, atol=2e-5)
    t[:] = ignore_index
    lp, ent = dsc.token_logprob(logits, t, ignore_index=ignore_index, return_entropy=True)
    np.testing.assert_array_equal(lp, 0.0)
    np.testing.assert_array_equal(ent, 0.0)


@pytest.mark.parametrize("offset", [80.0, 1e4, -1e4])
def test_large_offsets_are_stable(rng, offset):
    base = rng.standard_normal((5, 40)) * 3
    t = rng.integers(0, 40, 5)
    lp = dsc.token_logprob((base + offset).astype(np.float32), t)
    assert np.isfinite(lp).all()
    assert_close(lp, ref.token_logprob((base + offset).astype(np.float32), t)[0], rtol=1e-5, atol=2e-3)


def test_every_output_is_written(rng):
    logits = randn(rng, (7, 11))
    t = targets_for(rng, (7,), 11)
    lp, ent, dl = poisoned((7,)), poisoned((7,)), poisoned((7, 11))
    _C.token_logprob(logits, t, -100, lp, ent)
    _C.token_logprob_backward(logits, t, -100, randn(rng, (7,)), dl)
    assert np.isfinite(lp).all() and np.isfinite(ent).all() and np.isfinite(dl).all()
    np.testing.assert_array_equal(dl[t == -100], 0.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,V", [((6,), 5), ((3, 4), 48), ((2, 2, 3), 1000)])
def test_backward_matches_reference(rng, dtype, shape, V):
    logits = randn(rng, shape + (V,), dtype, 2.0)
    t = targets_for(rng, shape, V)
    g = randn(rng, shape)
    dl = dsc.token_logprob_backward(logits, t, g)
    want = ref.token_logprob_backward(dref.f64(logits), t, g)
    assert dl.dtype == logits.dtype and dl.shape == logits.shape
    if dtype == "float32":
        assert_close(dl, want, rtol=1e-5, atol=1e-6)
    else:
        assert_close(dl, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


def test_reference_backward_is_the_derivative(rng):
    logits = rng.standard_normal((4, 6)) * 2
    t = np.array([1, -100, 5, 0])
    g = rng.standard_normal(4)
    fd = dref.central_fd(lambda z: ref.token_logprob(z, t)[0], [logits], 0, g)
    np.testing.assert_allclose(ref.token_logprob_backward(logits, t, g), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("V", [2, 5])
def test_backward_matches_finite_differences(rng, V):
    logits = randn(rng, (5, V), scale=2.0)
    t = targets_for(rng, (5,), V)
    g = randn(rng, (5,))
    dl = dsc.token_logprob_backward(logits, t, g)
    fd = dref.central_fd(lambda z: ref.token_logprob(z, t)[0], [logits], 0, g)
    assert_close(dl, fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backward_in_place(rng, dtype):
    logits = randn(rng, (4, 3, 30), dtype)
    t = targets_for(rng, (4, 3), 30)
    g = randn(rng, (4, 3))
    want = dsc.token_logprob_backward(logits, t, g)
    x = logits.copy()
    out = dsc.token_logprob_backward(x, t, g, out=x)
    assert out is x
    np.testing.assert_array_equal(dref.f64(x), dref.f64(want))


def test_nan_logit_propagates_to_its_row(rng):
    logits = randn(rng, (3, 8))
    logits[1, 2] = np.nan
    t = np.array([0, 5, 7])
    lp = dsc.token_logprob(logits, t)
    assert np.isnan(lp[1]) and np.isfinite(lp[[0, 2]]).all()


@pytest.mark.parametrize("bad", [8, -1, 2 ** 40])
def test_out_of_range_target_names_targets(rng, bad):
    logits = randn(rng, (3, 8))
    t = np.array([0, bad, 1], np.int64)
    with pytest.raises(ValueError, match=r"dsc_token_logprob: targets: expected values in \[0, 8\)"):
        dsc.token_logprob(logits, t)
    with pytest.raises(ValueError, match="dsc_token_logprob_backward: targets"):
        dsc.token_logprob_backward(logits, t, randn(rng, (3,)))


def test_bad_inputs(rng):
    logits, t, g = randn(rng, (4, 7)), np.array([0, 2, 5, 6], np.int64), randn(rng, (4,))
    check_bad_array(lambda a, b: dsc.token_logprob(a, b), [logits, t], 0, "logits")
    check_bad_array(lambda a, b, c: dsc.token_logprob_backward(a, b, c), [logits, t, g], 2, "dlogprobs")
    with pytest.raises(ValueError, match=r"targets: expected shape \(4\)"):
        dsc.token_logprob(logits, t[:3])
    with pytest.raises(ValueError, match=r"dlogprobs: expected shape \(4\)"):
        dsc.token_logprob_backward(logits, t, g[:2])
    dl = np.zeros((4, 7), np.float32)
    with pytest.raises(ValueError, match="dlogits: expected memory that does not overlap dlogprobs"):
        _C.token_logprob_backward(logits, t, -100, dl.reshape(-1)[:4], dl)
    with pytest.raises(ValueError, match="logprobs: expected memory that does not overlap logits"):
        _C.token_logprob(logits, t, -100, logits.reshape(-1)[:4], None)



@pytest.mark.parametrize("bad,exc", [(None, TypeError), ("2", TypeError), (2.5, TypeError), ([2], TypeError),
                                     (True, TypeError), (2 ** 70, ValueError), (-(2 ** 70), ValueError)])
def test_bad_ignore_index_names_function_and_argument(rng, bad, exc):
    """ignore_index of every R1 op: not an int or beyond int64 is an error naming the function
    and ignore_index (was int(ignore_index): None gave a bare TypeError, 2 ** 70 an
    OverflowError, "2" and 2.5 were taken as 2; found by tests/_properties.py)."""
    logits, t, g = randn(rng, (4, 7)), np.array([0, 2, 5, 6], np.int64), randn(rng, (4,))
    calls = {"dsc_token_logprob": lambda: dsc.token_logprob(logits, t, ignore_index=bad),
             "dsc_token_logprob_backward": lambda: dsc.token_logprob_backward(logits, t, g, ignore_index=bad),
             "dsc_topk_kl": lambda: dsc.topk_kl(logits, t[:, None], g[:, None], t, ignore_index=bad),
             "dsc_grpo_loss": lambda: dsc.grpo_loss(g[None], g[:1], targets=t[None], ignore_index=bad)}
    for fn, call in calls.items():
        with pytest.raises(exc, match=rf"^{fn}: ignore_index: expected an int"):
            call()

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_matches_cpu(rng, dtype):
    logits = randn(rng, (6, 5, 700), dtype, 2.0)
    t = targets_for(rng, (6, 5), 700, dtype=np.int32)
    g = randn(rng, (6, 5))
    lp, ent = dsc.token_logprob(logits, t, return_entropy=True)
    lpc, entc = dsc.token_logprob(to_cuda(logits), to_cuda(t), return_entropy=True)
    assert_close(host(lpc), lp, rtol=1e-5, atol=2e-5)
    assert_close(host(entc), ent, rtol=1e-5, atol=2e-5)
    dl = dsc.token_logprob_backward(logits, t, g)
    dlc = dsc.token_logprob_backward(to_cuda(logits), to_cuda(t), to_cuda(g))
    tol = 1e-5 if dtype == "float32" else 1e-2
    assert_close(host(dlc), dref.f64(dl), rtol=tol, atol=tol * np.abs(dref.f64(dl)).max())


def test_model_token_logprobs_bad_ignore_index_names_the_argument():
    m = dsc.Model(dsc.ModelConfig.tiny(vocab_size=20), seed=0)
    t = np.random.default_rng(1).integers(0, 20, (2, 5)).astype(np.int32)
    for bad, exc in ((None, TypeError), (2.5, TypeError), ("3", TypeError), (2 ** 40, ValueError)):
        with pytest.raises(exc, match="Model.token_logprobs: ignore_index"):
            m.token_logprobs(t, t, ignore_index=bad)
