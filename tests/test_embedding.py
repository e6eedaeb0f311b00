"""Embedding (embedding, embedding_forward, embedding_backward): table[ids] for int32 and
int64 ids of any shape (scalar, 1-D, 2-D, 3-D) and float32/bfloat16 tables (a gather, so
bit-exact), the backward as a float32 scatter-add where repeated ids accumulate (against
the reference and central finite differences), out= with NaN poison, NaN rows copied,
out-of-range ids rejected naming the value, bad inputs, torch and CUDA against CPU.

Tolerances: forward exact; backward float32 rtol 1e-5 (sums of a few rows)."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, check_bad_array, host, poisoned, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

TOL_BWD = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,D", [((), 5, 3), ((1,), 1, 1), ((7,), 10, 129), ((2, 3), 4, 8), ((2, 2, 3), 50, 16)])
def test_forward_and_backward_match_reference(rng, dtype, id_dtype, ids_shape, V, D):
    ids = rng.integers(0, V, ids_shape).astype(id_dtype)
    table = randn(rng, (V, D), dtype)
    dout = randn(rng, ids_shape + (D,), dtype)
    out, ctx = dsc.embedding_forward(ids, table)
    assert isinstance(out, np.ndarray) and out.dtype == table.dtype and out.shape == ids_shape + (D,)
    np.testing.assert_array_equal(ref.f64(out), ref.embedding(ids, table))
    np.testing.assert_array_equal(ref.f64(dsc.embedding(ids, table)), ref.embedding(ids, table))
    dt = dsc.embedding_backward(dout, ctx)
    assert dt.dtype == np.float32 and dt.shape == (V, D)
    assert_close(dt, ref.embedding_backward(dout, ids, V), **TOL_BWD)


def test_repeated_ids_accumulate_and_unused_rows_are_zero(rng):
    ids = np.array([[3, 1, 3], [3, 0, 1]], np.int32)
    dout = randn(rng, (2, 3, 4))
    _, ctx = dsc.embedding_forward(ids, randn(rng, (6, 4)))
    dt = dsc.embedding_backward(dout, ctx)
    assert_close(dt[3], ref.f64(dout[0, 0]) + ref.f64(dout[0, 2]) + ref.f64(dout[1, 0]), **TOL_BWD)
    np.testing.assert_array_equal(dt[[2, 4, 5]], 0.0)


def test_backward_overwrites_and_is_deterministic(rng):
    ids = rng.integers(0, 8, 200).astype(np.int32)
    dout = randn(rng, (200, 5))
    _, ctx = dsc.embedding_forward(ids, randn(rng, (8, 5)))
    a = dsc.embedding_backward(dout, ctx)
    b = dsc.embedding_backward(dout, ctx)
    np.testing.assert_array_equal(a, b)
    assert_close(a, ref.embedding_backward(dout, ids, 8), rtol=1e-5, atol=1e-5)


def test_backward_matches_finite_differences(rng):
    ids = np.array([[0, 2, 2], [1, 2, 0]], np.int64)
    table, dout = randn(rng, (4, 3)), randn(rng, (2, 3, 3))
    _, ctx = dsc.embedding_forward(ids, table)
    assert_close(dsc.embedding_backward(dout, ctx), ref.central_fd(ref.embedding, [ids, table], 1, dout),
                 rtol=1e-5, atol=1e-6)


def test_bf16_dout_gives_float32_dtable(rng):
    ids = rng.integers(0, 5, (3, 4)).astype(np.int32)
    table, dout = randn(rng, (5, 6), "bfloat16"), randn(rng, (3, 4, 6), "bfloat16")
    _, ctx = dsc.embedding_forward(ids, table)
    dt = dsc.embedding_backward(dout, ctx)
    assert dt.dtype == np.float32
    assert_close(dt, ref.embedding_backward(dout, ids, 5), **TOL_BWD)  # bf16 widens exactly


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_out_is_written_fully(rng, dtype):
    ids = rng.integers(0, 9, (4, 5)).astype(np.int32)
    table = randn(rng, (9, 7), dtype)
    out = poisoned((4, 5, 7), dtype)
    dsc.embedding(ids, table, out=out)
    np.testing.assert_array_equal(ref.f64(out), ref.embedding(ids, table))


def test_nan_rows_are_copied_without_exception(rng):
    table = randn(rng, (4, 3))
    table[2, 1] = np.nan
    ids = np.array([2, 0, 2], np.int32)
    out = dsc.embedding(ids, table)
    np.testing.assert_array_equal(out, table[ids])
    dout = randn(rng, (3, 3))
    dout[1, 0] = np.nan
    _, ctx = dsc.embedding_forward(ids, table)
    dt = dsc.embedding_backward(dout, ctx)
    assert np.isnan(dt[0, 0]) and np.isnan(dt).sum() == 1


@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [10, -1, 2 ** 31 - 1])
def test_out_of_range_id_names_ids_and_value(rng, id_dtype, bad):
    ids = rng.integers(0, 10, (2, 4)).astype(id_dtype)
    ids[1, 2] = bad
    for f in (dsc.embedding, dsc.embedding_forward):
        with pytest.raises(ValueError, match=rf"ids.*{bad}"):
            f(ids, randn(rng, (10, 3)))


def test_int64_id_beyond_int32_range_is_rejected(rng):
    ids = np.array([0, 2 ** 32 + 1], np.int64)  # would alias id 1 if truncated to 32 bits
    with pytest.raises(ValueError, match="ids"):
        dsc.embedding(ids, randn(rng, (4, 3)))


FWD = {"embedding": lambda i, t: dsc.embedding(i, t), "embedding_forward": lambda i, t: dsc.embedding_forward(i, t)}


@pytest.mark.parametrize("fn", FWD)
def test_bad_ids(rng, fn):
    ids, table = rng.integers(0, 5, (3, 4)).astype(np.int32), randn(rng, (5, 6))
    check_bad_array(FWD[fn], [ids, table], 0, "ids", bad_dtype=np.float32)


@pytest.mark.parametrize("fn", FWD)
def test_bad_table(rng, fn):
    f = FWD[fn]
    ids, table = rng.integers(0, 5, (3, 4)).astype(np.int32), randn(rng, (5, 6))
    check_bad_array(f, [ids, table], 1, "table")
    with pytest.raises(ValueError, match="table"):
        f(ids, randn(rng, 30))
    with pytest.raises(ValueError, match="table"):
        f(ids, randn(rng, (5, 6, 1)))
    with pytest.raises(TypeError, match="table"):
        f(ids, table.astype(np.int32))


def test_bad_out_and_backward(rng):
    ids, table = rng.integers(0, 5, (3, 4)).astype(np.int32), randn(rng, (5, 6))
    with pytest.raises(ValueError, match="out"):
        dsc.embedding(ids, table, out=poisoned((3, 4, 5)))
    with pytest.raises(TypeError, match="out"):
        dsc.embedding(ids, table, out=poisoned((3, 4, 6), "bfloat16"))
    _, ctx = dsc.embedding_forward(ids, table)
    dout = randn(rng, (3, 4, 6))
    check_bad_array(dsc.embedding_backward, [dout, ctx], 0, "dout")
    with pytest.raises(ValueError, match="dout"):
        dsc.embedding_backward(randn(rng, (3, 4, 5)), ctx)
    with pytest.raises(ValueError, match="dout"):
        dsc.embedding_backward(randn(rng, (4, 3, 6)), ctx)
    with pytest.raises(TypeError, match="ctx"):
        dsc.embedding_backward(dout, ids)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    ids, table = rng.integers(0, 5, (3, 4)).astype(np.int64), randn(rng, (5, 6), dtype)
    out, ctx = dsc.embedding_forward(to_torch(ids), to_torch(table))
    assert isinstance(out, torch.Tensor) and str(out.dtype) == f"torch.{dtype}"
    np.testing.assert_array_equal(ref.f64(host(out)), ref.embedding(ids, table))
    dt = dsc.embedding_backward(to_torch(randn(rng, (3, 4, 6), dtype)), ctx)
    assert isinstance(dt, torch.Tensor) and dt.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_cuda_matches_cpu(rng, dtype, id_dtype):
    V, D = 1000, 129
    ids = rng.integers(0, 50, (4, 300)).astype(id_dtype)  # many repeats: atomics in the scatter-add
    table, dout = randn(rng, (V, D), dtype), randn(rng, (4, 300, D), dtype)
    out, ctx = dsc.embedding_forward(ids, table)
    dt = dsc.embedding_backward(dout, ctx)
    outc, ctxc = dsc.embedding_forward(to_cuda(ids), to_cuda(table))
    dtc = dsc.embedding_backward(to_cuda(dout), ctxc)
    np.testing.assert_array_equal(ref.f64(host(outc)), ref.f64(out))
    assert_close(host(dtc), ref.f64(dt), rtol=1e-5, atol=1e-4)
    bad = ids.copy()
    bad[0, 0] = V
    with pytest.raises(ValueError, match="ids"):
        dsc.embedding(to_cuda(bad), to_cuda(table))
