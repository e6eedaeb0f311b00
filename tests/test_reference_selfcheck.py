"""Self-checks of the NumPy float64 references in tests/reference/dense.py (no library
calls): every analytic reference backward against central finite differences, the
pinned DeepSeek-V3 YaRN numbers, the interleaved/half RoPE permutation identity and
AdamW's first step (bias-corrected update = sign(g) without decay)."""

import numpy as np
import pytest

from reference import dense as ref

FD_TOL = dict(rtol=1e-6, atol=1e-8)


def test_central_fd_on_a_known_function(rng):
    x = rng.standard_normal((3, 4))
    g = ref.central_fd(lambda a: np.sin(a), [x], 0, dy=np.ones_like(x))
    np.testing.assert_allclose(g, np.cos(x), **FD_TOL)


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 1), (1, 7)])
def test_rms_norm_backward(rng, shape):
    x, w, dy = rng.standard_normal(shape), rng.standard_normal(shape[-1]), rng.standard_normal(shape)
    dx, dw = ref.rms_norm_backward(dy, x, w, 1e-6)
    np.testing.assert_allclose(dx, ref.central_fd(ref.rms_norm, [x, w, 1e-6], 0, dy), **FD_TOL)
    np.testing.assert_allclose(dw, ref.central_fd(ref.rms_norm, [x, w, 1e-6], 1, dy), **FD_TOL)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("xshape", [(2, 3, 2, 6), (1, 2, 4)])
@pytest.mark.parametrize("scaling", [None, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.5}])
def test_rope_backward(rng, layout, xshape, scaling):
    x, dy = rng.standard_normal(xshape), rng.standard_normal(xshape)
    pos = rng.integers(0, 50, xshape[:2]).astype(np.int32)
    f = lambda a: ref.rope(a, pos, layout, 10000.0, scaling)  # noqa: E731
    np.testing.assert_allclose(ref.rope_backward(dy, pos, layout, 10000.0, scaling),
                               ref.central_fd(f, [x], 0, dy), **FD_TOL)


def test_rope_layouts_are_permutations_of_each_other(rng):
    x = rng.standard_normal((2, 3, 8))
    pos = rng.integers(0, 100, (2, 3))
    p = ref.interleaved_to_half_perm(8)
    np.testing.assert_allclose(ref.rope(x[..., p], pos, "half"), ref.rope(x, pos, "interleaved")[..., p], rtol=1e-14, atol=1e-14)


def test_rope_position_zero_is_identity_and_rotation_keeps_norm(rng):
    x = rng.standard_normal((1, 4, 3, 10))
    np.testing.assert_allclose(ref.rope(x, np.zeros((1, 4)), "half"), x, rtol=0, atol=0)
    y = ref.rope(x, rng.integers(0, 1000, (1, 4)))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_yarn_v3_numbers():
    sc = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
          "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    base = 10000.0 ** (-np.arange(32) * 2 / 64)
    f = ref.rope_inv_freq(64, 10000.0, sc)
    np.testing.assert_array_equal(f[:11], base[:11])
    np.testing.assert_allclose(f[23:], base[23:] / 40, rtol=1e-15)
    np.testing.assert_allclose(f[16], base[16] * 0.55, rtol=1e-12)  # ramp r = 6/13: 1 - r + r/40 = 0.55
    assert abs(ref.rope_softmax_scale(192, sc) - 0.1352338) < 5e-8
    assert ref.rope_cos_sin_scale(sc) == 1.0
    v2 = dict(sc, mscale=0.707, mscale_all_dim=0.707)
    assert abs(ref.rope_softmax_scale(192, v2) - 0.1147214) < 5e-8


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_transposes(rng, ta, tb):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    c = rng.standard_normal((3, 5))
    got = ref.matmul(a.T.copy() if ta else a, b.T.copy() if tb else b, ta, tb, 0.5, 2.0, c)
    np.testing.assert_allclose(got, 0.5 * a @ b + 2.0 * c, rtol=1e-14)


def test_linear_backward(rng):
    x, w, dy = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((2, 3, 5))
    dx, dw = ref.linear_backward(dy, x, w)
    np.testing.assert_allclose(dx, ref.central_fd(ref.linear, [x, w], 0, dy), **FD_TOL)
    np.testing.assert_allclose(dw, ref.central_fd(ref.linear, [x, w], 1, dy), **FD_TOL)


def test_swiglu_backward(rng):
    g, u, d = rng.standard_normal((3, 7)) * 3, rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    dg, du = ref.swiglu_backward(d, g, u)
    np.testing.assert_allclose(dg, ref.central_fd(ref.swiglu, [g, u], 0, d), **FD_TOL)
    np.testing.assert_allclose(du, ref.central_fd(ref.swiglu, [g, u], 1, d), **FD_TOL)


def test_embedding_backward(rng):
    ids = np.array([[1, 3, 1], [0, 1, 4]])
    table, d = rng.standard_normal((6, 3)), rng.standard_normal((2, 3, 3))
    np.testing.assert_allclose(ref.embedding_backward(d, ids, 6),
                               ref.central_fd(ref.embedding, [ids, table], 1, d), **FD_TOL)


@pytest.mark.parametrize("V", [1, 2, 9])
def test_cross_entropy_backward(rng, V):
    z = rng.standard_normal((4, V)) * 2
    t = rng.integers(0, V, 4)
    t[1] = -100
    _, d = ref.cross_entropy(z, t, -100, 0.5)
    np.testing.assert_allclose(d, ref.central_fd(ref.cross_entropy_loss, [z, t, -100, 0.5], 0), **FD_TOL)
    assert np.all(d[1] == 0)


def test_cross_entropy_known_value():
    z = np.log(np.array([[1.0, 2.0, 1.0]]))
    loss, _ = ref.cross_entropy(z, np.array([1]))
    assert abs(loss - np.log(2.0)) < 1e-15
    assert ref.cross_entropy(z, np.array([-100]))[0] == 0.0


def test_adamw_first_step_is_sign(rng):
    p, g = rng.standard_normal(5), rng.standard_normal(5)
    P, M, V, n = ref.adamw_step([p], [g], [np.zeros(5)], [np.zeros(5)], lr=0.1, step=1, weight_decay=0.0, eps=0.0)
    np.testing.assert_allclose(P[0], p - 0.1 * np.sign(g), rtol=1e-14)
    np.testing.assert_allclose(M[0], 0.1 * g)
    assert abs(n - np.linalg.norm(g)) < 1e-12


def test_bf16_helpers():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -3.0])
    np.testing.assert_array_equal(ref.round_bf16(x), [1.0, 1.0, 1.0 + 4 * 2 ** -8, -3.0])  # ties to even
    assert ref.to_bf16(x).dtype == ref.BF16
