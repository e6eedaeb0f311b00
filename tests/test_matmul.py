"""matmul and linear (linear_forward / linear_backward) against the float64 reference:
2-D and batched (3-D b or a 2-D b shared by the batch), every transpose combination,
alpha/beta accumulation into out=, beta = 0 never reading a NaN-poisoned out, float32
and bfloat16, odd sizes, backward against the analytic reference and finite differences,
NaN propagation, bad inputs, torch and CUDA against CPU.

Tolerance: a GEMM's error scales with sum_k |a||b|, so results are checked as
|got - want| <= rel * (|alpha| |op(a)| @ |op(b)| + |beta| |c|) + 1e-30 with rel = 1e-5
for float32 and 1e-2 for bfloat16 (one bf16 rounding of the output is 2^-9)."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import check_bad_array, host, poisoned, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

REL = {"float32": 1e-5, "bfloat16": 1e-2}
SIZES = [(1, 1, 1), (3, 5, 7), (17, 129, 33), (64, 64, 64), (2, 1, 3)]


def assert_gemm_close(got, want, bound, rel, msg=""):
    g = ref.f64(host(got))
    assert g.shape == want.shape, f"{msg}: shape {g.shape} != {want.shape}"
    err = np.abs(g - want)
    lim = rel * bound + 1e-30
    both_nan = np.isnan(g) & np.isnan(want)
    bad = ~(both_nan | (err <= lim))
    assert not bad.any(), (f"{msg}: {bad.sum()} of {bad.size} elements off, worst "
                           f"|err|/bound = {np.nanmax(np.where(bad, err / np.maximum(bound, 1e-30), 0))}")


def operands(rng, M, K, N, ta, tb, dtype, batch=None, b2d=False):
    ash = (K, M) if ta else (M, K)
    bsh = (N, K) if tb else (K, N)
    if batch:
        ash = (batch,) + ash
        if not b2d:
            bsh = (batch,) + bsh
    return randn(rng, ash, dtype), randn(rng, bsh, dtype)


def bound(a, b, ta, tb, alpha=1.0, beta=0.0, c=None):
    out = ref.matmul(np.abs(ref.f64(a)), np.abs(ref.f64(b)), ta, tb, abs(alpha))
    return out if not beta else out + abs(beta) * np.abs(ref.f64(c))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M,K,N", SIZES)
def test_matmul_matches_reference(rng, dtype, ta, tb, M, K, N):
    a, b = operands(rng, M, K, N, ta, tb, dtype)
    c = dsc.matmul(a, b, trans_a=ta, trans_b=tb)
    assert isinstance(c, np.ndarray) and c.dtype == a.dtype and c.shape == (M, N)
    assert_gemm_close(c, ref.matmul(a, b, ta, tb), bound(a, b, ta, tb), REL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("b2d", [False, True], ids=["b3d", "b2d"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True), (False, True)])
def test_batched_matmul(rng, dtype, b2d, ta, tb):
    a, b = operands(rng, 5, 9, 3, ta, tb, dtype, batch=4, b2d=b2d)
    c = dsc.matmul(a, b, trans_a=ta, trans_b=tb)
    assert c.shape == (4, 5, 3)
    assert_gemm_close(c, ref.matmul(a, b, ta, tb), bound(a, b, ta, tb), REL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (-2.0, 0.5), (0.25, -1.0), (0.0, 2.0)])
def test_alpha_beta_accumulate_into_out(rng, dtype, alpha, beta):
    a, b = operands(rng, 6, 11, 5, False, True, dtype)
    c0 = randn(rng, (6, 5), dtype)
    out = c0.copy()
    r = dsc.matmul(a, b, trans_b=True, alpha=alpha, beta=beta, out=out)
    assert np.shares_memory(r, out)
    assert_gemm_close(out, ref.matmul(a, b, False, True, alpha, beta, c0),
                      bound(a, b, False, True, alpha, beta, c0), REL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [None, 3])
def test_beta_zero_never_reads_poisoned_out(rng, dtype, batch):
    a, b = operands(rng, 7, 13, 9, False, False, dtype, batch=batch)
    out = poisoned(((batch,) if batch else ()) + (7, 9), dtype)
    dsc.matmul(a, b, alpha=1.5, out=out)
    assert not np.isnan(ref.f64(out)).any()
    assert_gemm_close(out, ref.matmul(a, b, alpha=1.5), bound(a, b, False, False, 1.5), REL[dtype])


def test_nan_propagates_without_exception(rng):
    a, b = randn(rng, (4, 6)), randn(rng, (6, 3))
    a[2, 1] = np.nan
    c = dsc.matmul(a, b)
    assert np.isnan(c[2]).all() and not np.isnan(np.delete(c, 2, axis=0)).any()
    b[4, 2] = np.nan
    y = dsc.linear(randn(rng, (2, 6)), b.T.copy())
    assert np.isnan(y[:, 2]).all() and not np.isnan(y[:, :2]).any()


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("xshape,N", [((1, 1), 1), ((3, 5), 7), ((2, 3, 129), 17), ((1, 64), 1), ((2, 2, 2, 8), 3)])
def test_linear_forward_backward_match_reference(rng, dtype, xshape, N):
    K = xshape[-1]
    x, w = randn(rng, xshape, dtype), randn(rng, (N, K), dtype)
    dy = randn(rng, xshape[:-1] + (N,), dtype)
    y, ctx = dsc.linear_forward(x, w)
    assert y.dtype == x.dtype and y.shape == xshape[:-1] + (N,)
    assert_gemm_close(y, ref.linear(x, w), np.abs(ref.f64(x)) @ np.abs(ref.f64(w)).T, REL[dtype])
    assert_gemm_close(dsc.linear(x, w), ref.linear(x, w), np.abs(ref.f64(x)) @ np.abs(ref.f64(w)).T, REL[dtype])
    dx, dw = dsc.linear_backward(dy, ctx)
    assert dx.dtype == x.dtype and dx.shape == xshape and dw.dtype == w.dtype and dw.shape == (N, K)
    rdx, rdw = ref.linear_backward(dy, x, w)
    adx, adw = ref.linear_backward(np.abs(ref.f64(dy)), np.abs(ref.f64(x)), np.abs(ref.f64(w)))
    assert_gemm_close(dx, rdx, adx, REL[dtype], "dx")
    assert_gemm_close(dw, rdw, adw, REL[dtype], "dw")


@pytest.mark.parametrize("xshape,N", [((3, 4), 5), ((2, 1, 3), 2)])
def test_linear_backward_matches_finite_differences(rng, xshape, N):
    x, w = randn(rng, xshape), randn(rng, (N, xshape[-1]))
    dy = randn(rng, xshape[:-1] + (N,))
    _, ctx = dsc.linear_forward(x, w)
    dx, dw = dsc.linear_backward(dy, ctx)
    np.testing.assert_allclose(ref.f64(dx), ref.central_fd(ref.linear, [x, w], 0, dy), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref.f64(dw), ref.central_fd(ref.linear, [x, w], 1, dy), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_out_is_written_fully(rng, dtype):
    x, w = randn(rng, (2, 5, 24), dtype), randn(rng, (9, 24), dtype)
    out = poisoned((2, 5, 9), dtype)
    dsc.linear(x, w, out=out)
    assert not np.isnan(ref.f64(out)).any()
    assert_gemm_close(out, ref.linear(x, w), np.abs(ref.f64(x)) @ np.abs(ref.f64(w)).T, REL[dtype])


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("arg", [0, 1])
def test_matmul_bad_arrays(rng, arg):
    a, b = randn(rng, (4, 6)), randn(rng, (6, 3))
    check_bad_array(lambda p, q: dsc.matmul(p, q), [a, b], arg, "ab"[arg])


def test_matmul_bad_out(rng):
    a, b = randn(rng, (4, 6)), randn(rng, (6, 3))
    check_bad_array(lambda p, q, o: dsc.matmul(p, q, out=o), [a, b, poisoned((4, 3))], 2, "c|out")


def test_matmul_bad_shapes_and_dtypes(rng):
    a, b = randn(rng, (4, 6)), randn(rng, (6, 3))
    with pytest.raises(ValueError):
        dsc.matmul(a, randn(rng, (5, 3)))  # K mismatch
    with pytest.raises(ValueError):
        dsc.matmul(a, b, trans_b=True)
    with pytest.raises(ValueError):
        dsc.matmul(randn(rng, 6), b)  # rank 1
    with pytest.raises(ValueError):
        dsc.matmul(randn(rng, (2, 2, 4, 6)), b)  # rank 4
    with pytest.raises(ValueError):
        dsc.matmul(randn(rng, (2, 4, 6)), randn(rng, (3, 6, 3)))  # batch mismatch
    with pytest.raises(ValueError):
        dsc.matmul(a, b, out=poisoned((4, 4)))
    with pytest.raises(ValueError, match="out"):
        dsc.matmul(a, b, beta=1.0)  # beta != 0 needs out=
    with pytest.raises(TypeError):
        dsc.matmul(a, ref.cast(b, "bfloat16"))  # mixed dtypes
    with pytest.raises(TypeError):
        dsc.matmul(a.astype(np.int32), b.astype(np.int32))
    with pytest.raises(TypeError):
        dsc.matmul(a, b, out=poisoned((4, 3), "bfloat16"))


LINEARS = {"linear": lambda x, w: dsc.linear(x, w), "linear_forward": lambda x, w: dsc.linear_forward(x, w)}


@pytest.mark.parametrize("fn", LINEARS)
@pytest.mark.parametrize("arg", [0, 1])
def test_linear_bad_arrays(rng, fn, arg):
    x, w = randn(rng, (4, 6)), randn(rng, (3, 6))
    check_bad_array(LINEARS[fn], [x, w], arg, "xw"[arg])


@pytest.mark.parametrize("fn", LINEARS)
def test_linear_bad_shapes(rng, fn):
    f = LINEARS[fn]
    x = randn(rng, (4, 6))
    with pytest.raises(ValueError):
        f(x, randn(rng, (3, 5)))  # K mismatch
    with pytest.raises(ValueError):
        f(x, randn(rng, 6))  # w rank 1
    with pytest.raises(ValueError):
        f(x, randn(rng, (1, 3, 6)))  # w rank 3
    with pytest.raises(TypeError):
        f(x, ref.cast(randn(rng, (3, 6)), "bfloat16"))


def test_linear_backward_bad_inputs(rng):
    x, w = randn(rng, (4, 6)), randn(rng, (3, 6))
    _, ctx = dsc.linear_forward(x, w)
    dy = randn(rng, (4, 3))
    check_bad_array(dsc.linear_backward, [dy, ctx], 0, "dy")
    with pytest.raises(ValueError, match="dy"):
        dsc.linear_backward(randn(rng, (4, 2)), ctx)
    with pytest.raises(ValueError, match="dy"):
        dsc.linear_backward(randn(rng, (5, 3)), ctx)
    with pytest.raises(TypeError, match="ctx"):
        dsc.linear_backward(dy, None)
    with pytest.raises(ValueError, match="y"):
        dsc.linear(x, w, out=poisoned((4, 4)))


# ----------------------------------------------------------------------------- torch / CUDA


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_in_torch_out(rng, dtype):
    torch = torch_or_skip()
    a, b = randn(rng, (5, 7), dtype), randn(rng, (3, 7), dtype)
    c = dsc.matmul(to_torch(a), to_torch(b), trans_b=True)
    assert isinstance(c, torch.Tensor) and str(c.dtype) == f"torch.{dtype}"
    assert_gemm_close(c, ref.matmul(a, b, False, True), bound(a, b, False, True), REL[dtype])
    y, ctx = dsc.linear_forward(to_torch(a), to_torch(b))
    assert isinstance(y, torch.Tensor)
    dx, dw = dsc.linear_backward(to_torch(randn(rng, (5, 3), dtype)), ctx)
    assert isinstance(dx, torch.Tensor) and isinstance(dw, torch.Tensor)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (17, 129, 33), (256, 512, 384)])
def test_cuda_matmul_matches_cpu(rng, dtype, ta, tb, M, K, N):
    a, b = operands(rng, M, K, N, ta, tb, dtype)
    c0 = randn(rng, (M, N), dtype)
    want = dsc.matmul(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=0.5, out=c0.copy())
    out = to_cuda(c0)
    dsc.matmul(to_cuda(a), to_cuda(b), trans_a=ta, trans_b=tb, alpha=0.5, beta=0.5, out=out)
    assert_gemm_close(out, ref.f64(want), 2 * bound(a, b, ta, tb, 0.5, 0.5, c0), REL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_batched_and_linear_match_cpu(rng, dtype):
    a, b = operands(rng, 33, 65, 17, False, True, dtype, batch=3, b2d=True)
    assert_gemm_close(dsc.matmul(to_cuda(a), to_cuda(b), trans_b=True),
                      ref.f64(dsc.matmul(a, b, trans_b=True)), 2 * bound(a, b, False, True), REL[dtype])
    x, w, dy = randn(rng, (2, 9, 65), dtype), randn(rng, (17, 65), dtype), randn(rng, (2, 9, 17), dtype)
    y, ctx = dsc.linear_forward(x, w)
    dx, dw = dsc.linear_backward(dy, ctx)
    yc, ctxc = dsc.linear_forward(to_cuda(x), to_cuda(w))
    dxc, dwc = dsc.linear_backward(to_cuda(dy), ctxc)
    ax = np.abs(ref.f64(x))
    aw = np.abs(ref.f64(w))
    ady = np.abs(ref.f64(dy))
    assert_gemm_close(yc, ref.f64(y), 2 * ax @ aw.T, REL[dtype], "y")
    assert_gemm_close(dxc, ref.f64(dx), 2 * ady @ aw, REL[dtype], "dx")
    assert_gemm_close(dwc, ref.f64(dw), 2 * ady.reshape(-1, 17).T @ ax.reshape(-1, 65), REL[dtype], "dw")


def test_dsc_tensor_in_tensor_out(rng):
    a, b = randn(rng, (4, 6), "bfloat16"), randn(rng, (6, 3), "bfloat16")
    c = dsc.matmul(dsc.tensor(a), dsc.tensor(b))
    assert isinstance(c, dsc.Tensor) and c.dtype == "bfloat16" and c.shape == (4, 3)
    assert_gemm_close(c.numpy(), ref.matmul(a, b), bound(a, b, False, False), REL["bfloat16"])


# ----------------------------------------------------------------------------- small M
# csrc/cpu/gemm.c computes GEMMs with M <= 3 untransposed rows of A (decode) itself instead
# of calling sgemm; M = 7 is past that fast path. K values are not multiples of the 8 lanes.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M", [1, 2, 3, 7])
@pytest.mark.parametrize("K,N", [(1, 5), (13, 37), (67, 300), (515, 9)])
def test_small_m_matches_reference(rng, dtype, ta, tb, M, K, N):
    a, b = operands(rng, M, K, N, ta, tb, dtype)
    c = dsc.matmul(a, b, trans_a=ta, trans_b=tb)
    assert c.shape == (M, N)
    assert_gemm_close(c, ref.matmul(a, b, ta, tb), bound(a, b, ta, tb), REL[dtype])
    if not ta:
        x, w = (a, b) if tb else (a, np.ascontiguousarray(b.T))
        assert_gemm_close(dsc.linear(x, w), ref.matmul(a, b, ta, tb), bound(a, b, ta, tb),
                          REL[dtype], "linear")


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-2.0, 0.5), (0.5, 1.0), (0.0, 2.0)])
def test_small_m_alpha_beta(rng, tb, M, alpha, beta):
    a, b = operands(rng, M, 21, 19, False, tb, "float32")
    c0 = randn(rng, (M, 19))
    out = poisoned((M, 19)) if beta == 0.0 else c0.copy()  # beta == 0: out is never read
    if alpha == 0.0:
        a[0, 0] = np.nan  # alpha == 0: A and B are not read (BLAS)
    dsc.matmul(a, b, trans_b=tb, alpha=alpha, beta=beta, out=out)
    assert not np.isnan(out).any()
    a64 = np.nan_to_num(ref.f64(a))
    assert_gemm_close(out, ref.matmul(a64, b, False, tb, alpha, beta, c0),
                      bound(a64, b, False, tb, alpha, beta, c0), REL["float32"])


@pytest.mark.parametrize("batch", [2, None])
def test_small_m_batched(rng, batch):
    for tb in (False, True):
        a, b = operands(rng, 2, 29, 11, False, tb, "float32", batch=batch or 3, b2d=batch is None)
        c = dsc.matmul(a, b, trans_b=tb)
        assert_gemm_close(c, ref.matmul(a, b, False, tb), bound(a, b, False, tb), REL["float32"])


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("K,N", [(515, 300), (64, 1024)])
def test_small_m_rows_bitwise_independent_of_m(rng, tb, K, N):
    """A row of the result is bitwise the same computed alone (decoding one token) or with
    other rows (verifying drafts, a batch): the fast path's per-element sum order depends
    on neither M, the register tile, nor the thread split (K, N = 64, 1024: M = 1 runs on
    one thread, M = 3 on all of them)."""
    x = randn(rng, (3, K))
    w = randn(rng, (N, K) if tb else (K, N))
    full = dsc.matmul(x, w, trans_b=tb)
    for M in (1, 2):
        assert np.array_equal(dsc.matmul(x[:M], w, trans_b=tb).view(np.uint32),
                              full[:M].view(np.uint32)), M
    for m in range(3):
        assert np.array_equal(dsc.matmul(x[m:m + 1], w, trans_b=tb).view(np.uint32),
                              full[m:m + 1].view(np.uint32)), m
    if tb:
        assert np.array_equal(dsc.linear(x[:1], w).view(np.uint32), full[:1].view(np.uint32))
    assert_gemm_close(full, ref.matmul(x, w, False, tb), bound(x, w, False, tb), REL["float32"])


# --------------------------------------------------------------------------- BF16-operand math mode


def bf16_exact(rng, shape):
    """float32 values that BF16 holds exactly (standard normals rounded to BF16)."""
    return ref.cast(ref.f64(ref.to_bf16(rng.standard_normal(shape))), "float32")


@pytest.mark.parametrize("ta,tb", [(False, True), (True, False)])
def test_bf16_operands_on_cpu_is_exact_float32(rng, ta, tb):
    """The CPU ignores the BF16-operand math mode: the same bits as a default call."""
    a, b = operands(rng, 17, 129, 33, ta, tb, "float32")
    np.testing.assert_array_equal(dsc.matmul(a, b, trans_a=ta, trans_b=tb, bf16_operands=True),
                                  dsc.matmul(a, b, trans_a=ta, trans_b=tb))
    a3, b3 = operands(rng, 5, 9, 7, ta, tb, "float32", batch=3)
    np.testing.assert_array_equal(dsc.matmul(a3, b3, trans_a=ta, trans_b=tb, bf16_operands=True),
                                  dsc.matmul(a3, b3, trans_a=ta, trans_b=tb))


@pytest.mark.cuda
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (17, 129, 33), (256, 512, 384)])
def test_cuda_bf16_operands_on_bf16_exact_inputs_is_a_float32_accumulated_gemm(rng, ta, tb, M, K, N):
    """bf16_operands=True (cuBLASLt CUBLAS_COMPUTE_32F_FAST_16BF) on float32 operands that
    BF16 holds exactly loses nothing in the down-conversion: the result is the float64
    GEMM of those inputs to FP32 accumulation's tolerance (REL float32 = 1e-5 of
    sum_k |a||b|, the bound the exact SGEMM meets). out starts as NaN (beta = 0 never reads
    it); with beta the accumulated out is BF16-exact too."""
    a = bf16_exact(rng, (K, M) if ta else (M, K))
    b = bf16_exact(rng, (N, K) if tb else (K, N))
    out = to_cuda(poisoned((M, N)))
    dsc.matmul(to_cuda(a), to_cuda(b), trans_a=ta, trans_b=tb, out=out, bf16_operands=True)
    assert_gemm_close(out, ref.matmul(ref.f64(a), ref.f64(b), ta, tb), bound(a, b, ta, tb), REL["float32"])
    c0 = bf16_exact(rng, (M, N))
    out = to_cuda(c0)
    dsc.matmul(to_cuda(a), to_cuda(b), trans_a=ta, trans_b=tb, alpha=0.5, beta=0.5, out=out, bf16_operands=True)
    want = 0.5 * ref.matmul(ref.f64(a), ref.f64(b), ta, tb) + 0.5 * ref.f64(c0)
    assert_gemm_close(out, want, bound(a, b, ta, tb, 0.5, 0.5, c0), REL["float32"])


@pytest.mark.cuda
def test_cuda_bf16_operands_rounds_float32_operands_and_is_per_call(rng):
    """On operands BF16 cannot hold, the mode shows: each product sees two BF16 roundings
    (2^-9 each), so the result is within 2^-7 of sum_k |a||b| of the float64 GEMM but not
    the exact SGEMM's; the calls before and after it (default mode, same pool context) are
    exact float32 again, and a batched GEMM in the mode stays within the same bound."""
    M, K, N = 256, 512, 384
    a, b = operands(rng, M, K, N, False, True, "float32")
    want = ref.matmul(ref.f64(a), ref.f64(b), False, True)
    bnd = bound(a, b, False, True)
    exact0 = host(dsc.matmul(to_cuda(a), to_cuda(b), trans_b=True))
    fast = host(dsc.matmul(to_cuda(a), to_cuda(b), trans_b=True, bf16_operands=True))
    exact1 = host(dsc.matmul(to_cuda(a), to_cuda(b), trans_b=True))
    assert_gemm_close(exact0, want, bnd, REL["float32"], "default before")
    assert_gemm_close(exact1, want, bnd, REL["float32"], "default after")
    assert_gemm_close(fast, want, bnd, 2.0 ** -7, "bf16 operands")
    assert np.abs(ref.f64(fast) - want).max() > 10 * np.abs(ref.f64(exact0) - want).max(), \
        "bf16_operands=True gave float32 accuracy: the operands were not rounded"
    a3, b3 = operands(rng, 33, 65, 17, False, True, "float32", batch=3)
    got3 = dsc.matmul(to_cuda(a3), to_cuda(b3), trans_b=True, bf16_operands=True)
    assert_gemm_close(got3, ref.matmul(ref.f64(a3), ref.f64(b3), False, True), bound(a3, b3, False, True), 2.0 ** -7)
