"""AdamW (adamw_step) and global_norm against the float64 reference: one step over several
tensors of odd shapes at step 1 and at a later step with non-zero moments, float32 and
bfloat16 moments, a few steps on a small quadratic (tracking the reference and lowering
the loss), clipping by the global norm (returned norm is the unclipped one, grads are
untouched), NaN gradients propagating, bad inputs, torch tensors updated in place, CUDA
against CPU.

Tolerances: float32 params rtol 1e-6 + atol 1e-4 * lr, moments rtol 1e-5 (atol 1e-7: b1 m + (1-b1) g cancels); with
bfloat16 moments the moments are within 2^-7 relative (one bf16 rounding, either order of
rounding and use) and params within 1e-2 * lr per step; norms rtol 1e-6."""

import numpy as np
import pytest

import deepseek_c as dsc
from _util import assert_close, host, randn, to_cuda, to_torch, torch_or_skip
from reference import dense as ref

SHAPES = [(1,), (3,), (4, 129), (2, 3, 5)]
HP = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def state(rng, shapes=SHAPES, moment_dtype="float32", fresh=False):
    params = [randn(rng, s) for s in shapes]
    grads = [randn(rng, s) for s in shapes]
    if fresh:
        m = [ref.cast(np.zeros(s), moment_dtype) for s in shapes]
        v = [ref.cast(np.zeros(s), moment_dtype) for s in shapes]
    else:
        m = [randn(rng, s, moment_dtype, 0.1) for s in shapes]
        v = [ref.cast(rng.uniform(0.01, 0.5, s), moment_dtype) for s in shapes]
    return params, grads, m, v


def copies(xs):
    return [x.copy() for x in xs]


def check_against_reference(params, grads, m, v, *, step, max_grad_norm=0.0, moments_bf16=False, hp=HP):
    P0, G0, M0, V0 = copies(params), copies(grads), copies(m), copies(v)
    norm = dsc.adamw_step(params, grads, m, v, step=step, max_grad_norm=max_grad_norm, **hp)
    rP, rM, rV, rnorm = ref.adamw_step(P0, G0, M0, V0, step=step, max_grad_norm=max_grad_norm,
                                       moments_bf16=moments_bf16, **hp)
    assert isinstance(norm, float)
    assert abs(norm - rnorm) <= 1e-6 * rnorm
    for g, g0 in zip(grads, G0):
        np.testing.assert_array_equal(g, g0)  # gradients are not modified
    for i in range(len(params)):
        assert params[i].dtype == np.float32
        if moments_bf16:
            assert_close(params[i], rP[i], rtol=1e-6, atol=1e-2 * hp["lr"], msg=f"param {i}")
            assert_close(m[i], rM[i], rtol=2 ** -7, atol=1e-30, msg=f"exp_avg {i}")
            assert_close(v[i], rV[i], rtol=2 ** -7, atol=1e-30, msg=f"exp_avg_sq {i}")
        else:
            assert_close(params[i], rP[i], rtol=1e-6, atol=1e-4 * hp["lr"], msg=f"param {i}")
            assert_close(m[i], rM[i], rtol=1e-5, atol=1e-7, msg=f"exp_avg {i}")  # b1 m + (1-b1) g cancels
            assert_close(v[i], rV[i], rtol=1e-5, atol=1e-9, msg=f"exp_avg_sq {i}")
    return norm


@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
@pytest.mark.parametrize("step,fresh", [(1, True), (1, False), (7, False), (1000, False)])
def test_one_step_matches_reference(rng, moments, step, fresh):
    p, g, m, v = state(rng, moment_dtype=moments, fresh=fresh)
    check_against_reference(p, g, m, v, step=step, moments_bf16=moments == "bfloat16")


@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
def test_large_tensors(rng, moments):
    """Sizes that split across threads and vector lanes with ragged tails."""
    p, g, m, v = state(rng, shapes=[(70001,), (257, 129)], moment_dtype=moments)
    check_against_reference(p, g, m, v, step=5, max_grad_norm=50.0, moments_bf16=moments == "bfloat16")


def test_hyperparameters_are_used(rng):
    hp = dict(lr=3e-3, beta1=0.8, beta2=0.999, eps=1e-3, weight_decay=0.0)
    p, g, m, v = state(rng)
    check_against_reference(p, g, m, v, step=3, hp=hp)
    hp = dict(lr=0.5, beta1=0.5, beta2=0.5, eps=1e-8, weight_decay=1.0)
    p, g, m, v = state(rng)
    check_against_reference(p, g, m, v, step=2, hp=hp)


@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
def test_quadratic_tracks_reference_and_descends(rng, moments):
    """Minimize 0.5 * sum(a * (p - c)^2) for a few steps; grads from the current params."""
    shapes = [(5,), (3, 4)]
    a = [rng.uniform(0.5, 2.0, s) for s in shapes]
    c = [rng.standard_normal(s) for s in shapes]
    p = [randn(rng, s) for s in shapes]
    m = [ref.cast(np.zeros(s), moments) for s in shapes]
    v = [ref.cast(np.zeros(s), moments) for s in shapes]
    rp, rm, rv = [ref.f64(x) for x in p], [np.zeros(s) for s in shapes], [np.zeros(s) for s in shapes]
    hp = dict(lr=0.1, weight_decay=0.01)
    loss = lambda ps: sum(0.5 * float((ai * (ref.f64(pi) - ci) ** 2).sum()) for ai, pi, ci in zip(a, ps, c))  # noqa: E731
    start = loss(p)
    for step in range(1, 16):
        g = [ref.cast(ai * (ref.f64(pi) - ci), "float32") for ai, pi, ci in zip(a, p, c)]
        rg = [ai * (pi - ci) for ai, pi, ci in zip(a, rp, c)]
        dsc.adamw_step(p, g, m, v, step=step, **hp)
        rp, rm, rv, _ = ref.adamw_step(rp, rg, rm, rv, step=step, moments_bf16=moments == "bfloat16", **hp)
        tol = dict(rtol=1e-5, atol=1e-5) if moments == "float32" else dict(rtol=1e-3, atol=1e-2 * hp["lr"] * step)
        for i in range(len(p)):
            assert_close(p[i], rp[i], msg=f"step {step} param {i}", **tol)
    assert loss(p) < 0.5 * start


@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
def test_clipping_by_global_norm(rng, moments):
    p, g, m, v = state(rng, moment_dtype=moments)
    g = [x * np.float32(10) for x in g]
    norm = check_against_reference(p, g, m, v, step=4, max_grad_norm=1.0, moments_bf16=moments == "bfloat16")
    assert abs(norm - ref.global_norm(g)) <= 1e-6 * norm and norm > 1.0


def test_no_clipping_below_the_threshold(rng):
    p, g, m, v = state(rng)
    p2, g2, m2, v2 = copies(p), copies(g), copies(m), copies(v)
    n1 = dsc.adamw_step(p, g, m, v, step=2, max_grad_norm=1e6, **HP)
    n2 = dsc.adamw_step(p2, g2, m2, v2, step=2, max_grad_norm=0.0, **HP)
    assert n1 == n2
    for a, b in zip(p + m + v, p2 + m2 + v2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shapes", [[(1,)], [(3,), (4, 129), (2, 3, 5)], [(100000,)]])
def test_global_norm_matches_reference(rng, shapes):
    ts = [randn(rng, s) for s in shapes]
    n = dsc.global_norm(ts)
    assert isinstance(n, float)
    assert abs(n - ref.global_norm(ts)) <= 1e-6 * ref.global_norm(ts)


def test_global_norm_large_values_do_not_overflow(rng):
    ts = [ref.cast(rng.standard_normal(10) * 1e30, "float32")]  # squares overflow float32
    assert abs(dsc.global_norm(ts) - ref.global_norm(ts)) <= 1e-6 * ref.global_norm(ts)


def test_nan_gradient_propagates_without_exception(rng):
    p, g, m, v = state(rng, shapes=[(4,), (3,)])
    g[0][2] = np.nan
    p_before = p[1].copy()
    norm = dsc.adamw_step(p, g, m, v, step=3, **HP)
    assert np.isnan(norm)
    assert np.isnan(p[0][2]) and np.isnan(m[0][2]) and np.isnan(v[0][2])
    assert not np.isnan(np.delete(p[0], 2)).any() and not np.isnan(p[1]).any()
    assert not np.array_equal(p[1], p_before)
    assert np.isnan(dsc.global_norm(g))


def test_bad_inputs(rng):
    def fresh():
        return state(rng, shapes=[(4,), (2, 3)])

    def call(p, g, m, v, **kw):
        return dsc.adamw_step(p, g, m, v, **dict(dict(lr=1e-3, step=1), **kw))

    p, g, m, v = fresh()
    with pytest.raises(TypeError, match="param"):
        call([ref.cast(p[0], "bfloat16"), p[1]], g, m, v)  # params must be float32
    with pytest.raises(TypeError, match="grad"):
        call(p, [g[0].astype(np.float64), g[1]], m, v)
    with pytest.raises(TypeError, match="exp_avg"):
        call(p, g, [m[0].astype(np.float64), m[1]], v)
    with pytest.raises(TypeError):
        call(p, g, m, [v[0].tolist(), v[1]])
    with pytest.raises(ValueError, match="grad"):
        call(p, [g[0], randn(rng, (3, 2))], m, v)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        call(p, g, m, [v[0], randn(rng, 6)])
    with pytest.raises(ValueError):
        call(p, g[:1], m, v)  # list lengths differ
    with pytest.raises(ValueError, match="param"):
        call([randn(rng, 8)[::2], p[1]], g, m, v)  # non-contiguous
    with pytest.raises(ValueError, match="grad"):
        call(p, [np.ascontiguousarray(g[0][::-1])[::-1], g[1]], m, v)  # negative strides
    with pytest.raises(TypeError):
        call(p[0], g, m, v)  # not a list of arrays
    with pytest.raises(TypeError, match="step"):
        call(p, g, m, v, step=1.0)
    with pytest.raises(ValueError, match="step"):
        call(p, g, m, v, step=0)
    with pytest.raises(ValueError, match="lr"):
        call(p, g, m, v, lr=float("nan"))
    with pytest.raises(TypeError, match="lr"):
        call(p, g, m, v, lr="0.1")
    with pytest.raises(TypeError):
        dsc.global_norm([g[0].astype(np.float64)])
    with pytest.raises(TypeError):
        dsc.global_norm([[1.0, 2.0]])
    with pytest.raises(ValueError):
        dsc.global_norm([randn(rng, 8)[::2]])
    with pytest.raises(TypeError):
        dsc.global_norm(g[0])  # an array instead of a list of arrays? must not silently iterate rows


def test_torch_tensors_are_updated_in_place(rng):
    torch = torch_or_skip()
    p, g, m, v = state(rng)
    rP, rM, rV, _ = ref.adamw_step(p, g, m, v, step=5, **HP)
    tp, tg, tm, tv = ([to_torch(x) for x in xs] for xs in (p, g, m, v))
    norm = dsc.adamw_step(tp, tg, tm, tv, step=5, **HP)
    assert isinstance(norm, float) and isinstance(tp[0], torch.Tensor)
    for i in range(len(p)):
        assert_close(tp[i], rP[i], rtol=1e-6, atol=1e-6)
    assert abs(dsc.global_norm(tg) - ref.global_norm(g)) <= 1e-6 * norm


@pytest.mark.cuda
@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_cuda_matches_cpu(rng, moments, clip):
    shapes = SHAPES + [(1024, 1000)]
    p, g, m, v = state(rng, shapes=shapes, moment_dtype=moments)
    cp, cg, cm, cv = ([to_cuda(x) for x in xs] for xs in (p, g, m, v))
    n = dsc.adamw_step(p, g, m, v, step=3, max_grad_norm=clip, **HP)
    nc = dsc.adamw_step(cp, cg, cm, cv, step=3, max_grad_norm=clip, **HP)
    assert abs(nc - n) <= 1e-6 * n
    assert abs(dsc.global_norm(cg) - dsc.global_norm(g)) <= 1e-6 * n
    mt = dict(rtol=1e-6, atol=1e-9) if moments == "float32" else dict(rtol=2 ** -7, atol=1e-30)
    for i in range(len(shapes)):
        assert_close(host(cp[i]), ref.f64(p[i]), rtol=1e-6, atol=1e-6 * HP["lr"] if moments == "float32" else 1e-2 * HP["lr"])
        assert_close(host(cm[i]), ref.f64(m[i]), **mt)
        assert_close(host(cv[i]), ref.f64(v[i]), **mt)
