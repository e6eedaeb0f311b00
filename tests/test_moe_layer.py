"""The whole MoE layer as one C call (dsc_moe_layer_forward/backward): outputs against
the independent float64 dense reference, gradients against the tested Python
composition of the same ops (moe_forward/moe_backward) and against finite differences,
expert load, and bad inputs."""

import numpy as np
import pytest

import deepseek_c as dsc
from reference import moe as ref
from test_moe import make_layer


@pytest.mark.parametrize("variant,n_shared", [("v3", 1), ("v2", 2), ("v2lite", 0)])
def test_c_layer_matches_reference_and_python_layer(rng, variant, n_shared):
    x, params, cfg = make_layer(rng, D=16, E=8, F=12, T=24, variant=variant, n_shared=n_shared, min_gap=1e-4)
    y, ctx = dsc.moe_layer_forward(x, params, cfg)
    want, _, idx = ref.moe_layer(x, params, cfg)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(ctx.load, np.bincount(idx.reshape(-1), minlength=8))

    y2, pctx = dsc.moe_forward(x, params, cfg)
    np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g_c = dsc.moe_layer_backward(dy, ctx)
    g_py = dsc.moe_backward(dy, pctx)
    assert set(g_c) == set(g_py)
    for k in g_c:
        np.testing.assert_allclose(g_c[k], g_py[k], rtol=1e-4, atol=1e-5 * (np.abs(g_py[k]).max() + 1e-30), err_msg=k)


def test_c_layer_gradient_matches_finite_differences(rng):
    x, params, cfg = make_layer(rng, D=8, E=4, F=6, T=5, variant="v3", n_shared=1, min_gap=1e-3)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, ctx = dsc.moe_layer_forward(x, params, cfg)
    g = dsc.moe_layer_backward(dy, ctx)

    def loss(xx):
        out, _, _ = ref.moe_layer(xx, params, cfg)
        return float((out * dy.astype(np.float64)).sum())

    eps = 1e-3
    xd = x.astype(np.float64)
    for (t, d) in [(0, 0), (2, 5), (4, 7)]:
        xp, xm = xd.copy(), xd.copy()
        xp[t, d] += eps
        xm[t, d] -= eps
        fd = (loss(xp) - loss(xm)) / (2 * eps)
        assert abs(g["x"][t, d] - fd) <= 2e-3 * (abs(fd) + 1e-2), (t, d, g["x"][t, d], fd)


def test_inference_mode_keeps_nothing_and_bad_inputs(rng):
    x, params, cfg = make_layer(rng, D=8, E=4, F=6, T=5, variant="v3", n_shared=1)
    y, ctx = dsc.moe_layer_forward(x, params, cfg, training=False)
    y2, _ = dsc.moe_layer_forward(x, params, cfg)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(TypeError, match="ctx"):
        dsc.moe_layer_backward(y, ctx)
    bad = dict(params)
    bad["mlp.gate.weight"] = params["mlp.gate.weight"][:, :4].copy()
    with pytest.raises(ValueError, match="w->gate"):
        dsc.moe_layer_forward(x, bad, cfg)
    with pytest.raises(TypeError, match="x"):
        dsc.moe_layer_forward(x.astype(np.float64), params, cfg)
    _, ctx = dsc.moe_layer_forward(x, params, cfg)
    with pytest.raises(ValueError, match="dy"):
        dsc.moe_layer_backward(np.ones((3, 8), np.float32), ctx)


def test_grouped_linear_backward_with_no_output_features_zeroes_dx(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = np.zeros((3, 0, 5), np.float32)
    offsets = np.array([0, 2, 2, 6], np.int32)
    dx, dw = dsc.grouped_linear_backward(np.zeros((6, 0), np.float32), x, w, offsets)
    np.testing.assert_array_equal(dx, np.zeros((6, 5), np.float32))
    assert dw.shape == (3, 0, 5)
