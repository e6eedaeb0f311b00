"""The whole MoE layer as one C call (dsc_moe_layer_forward/backward): outputs against
the independent float64 dense reference, gradients against the tested Python
composition of the same ops (written in this file) and against finite differences,
expert load, and bad inputs."""

import numpy as np
import pytest

import deepseek_c as dsc
from reference import fp8 as fp8ref
from reference import moe as ref
from test_moe import make_layer


def _composed_layer(x, params, cfg, dy):
    """The layer composed in Python from the public ops, each tested against its own
    reference (routing, dispatch, grouped GEMMs, SwiGLU, combine, linear): (y, grads like
    moe_layer_backward's). An independent check of the C layer's orchestration."""
    c = dsc.MoEConfig.from_dict(cfg)
    E = c.n_routed_experts
    stack = lambda proj: np.stack([params[f"mlp.experts.{e}.{proj}.weight"] for e in range(E)])  # noqa: E731
    wg, wu, wd = stack("gate_proj"), stack("up_proj"), stack("down_proj")
    logits = dsc.linear(x, params["mlp.gate.weight"])
    bias = params.get("mlp.gate.e_score_correction_bias") if c.uses_bias else None
    r = dsc.moe_route(logits, bias, top_k=c.num_experts_per_tok, n_group=c.n_group, topk_group=c.topk_group,
                      scoring=c.scoring_func, topk_method=c.topk_method, norm_topk_prob=c.norm_topk_prob,
                      route_scale=c.routed_scaling_factor)
    p = dsc.moe_permute(x, r.indices, E, 1)
    hg, hu = dsc.grouped_linear(p.x, wg, p.group_offsets), dsc.grouped_linear(p.x, wu, p.group_offsets)
    act, sctx = dsc.swiglu_forward(hg, hu)
    eo = dsc.grouped_linear(act, wd, p.group_offsets)
    y = dsc.moe_unpermute(eo, p, r.weights)
    deo, dweights = dsc.moe_unpermute_backward(dy, eo, p, r.weights)
    dact, dwd = dsc.grouped_linear_backward(deo, act, wd, p.group_offsets)
    dhg, dhu = dsc.swiglu_backward(dact, sctx)
    dpg, dwg = dsc.grouped_linear_backward(dhg, p.x, wg, p.group_offsets)
    dpu, dwu = dsc.grouped_linear_backward(dhu, p.x, wu, p.group_offsets)
    dx = dsc.moe_permute_backward(dpg + dpu, p)
    dlogits = dsc.moe_route_backward(dweights, r)
    dxr, dgate = dsc.linear_backward(dlogits, dsc.LinearCtx(x, params["mlp.gate.weight"]))
    grads = {"mlp.gate.weight": dgate}
    for e in range(E):
        grads[f"mlp.experts.{e}.gate_proj.weight"] = dwg[e]
        grads[f"mlp.experts.{e}.up_proj.weight"] = dwu[e]
        grads[f"mlp.experts.{e}.down_proj.weight"] = dwd[e]
    dx = dx + dxr
    if c.n_shared_experts:
        S = "mlp.shared_experts."
        sg, sgc = dsc.linear_forward(x, params[S + "gate_proj.weight"])
        su, suc = dsc.linear_forward(x, params[S + "up_proj.weight"])
        sa, sac = dsc.swiglu_forward(sg, su)
        so, soc = dsc.linear_forward(sa, params[S + "down_proj.weight"])
        y = y + so
        dsa, grads[S + "down_proj.weight"] = dsc.linear_backward(dy, soc)
        dsg, dsu = dsc.swiglu_backward(dsa, sac)
        dxg, grads[S + "gate_proj.weight"] = dsc.linear_backward(dsg, sgc)
        dxu, grads[S + "up_proj.weight"] = dsc.linear_backward(dsu, suc)
        dx = dx + dxg + dxu
    grads["x"] = dx
    return y, grads


@pytest.mark.parametrize("variant,n_shared", [("v3", 1), ("v2", 2), ("v2lite", 0)])
def test_c_layer_matches_reference_and_composed_ops(rng, variant, n_shared):
    x, params, cfg = make_layer(rng, D=16, E=8, F=12, T=24, variant=variant, n_shared=n_shared, min_gap=1e-4)
    y, ctx = dsc.moe_layer_forward(x, params, cfg)
    want, _, idx = ref.moe_layer(x, params, cfg)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(ctx.load, np.bincount(idx.reshape(-1), minlength=8))
    np.testing.assert_array_equal(ctx.route.indices, idx)

    dy = rng.standard_normal(y.shape).astype(np.float32)
    y2, g_py = _composed_layer(x, params, cfg, dy)
    np.testing.assert_allclose(y, y2, rtol=1e-5, atol=1e-6)
    g_c = dsc.moe_layer_backward(dy, ctx)
    assert set(g_c) == set(g_py)
    for k in g_c:
        np.testing.assert_allclose(g_c[k], g_py[k], rtol=1e-4, atol=1e-5 * (np.abs(g_py[k]).max() + 1e-30), err_msg=k)
    # moe_forward / moe_backward are this same C layer
    y3, ctx3 = dsc.moe_forward(x, params, cfg)
    np.testing.assert_array_equal(y3, y)
    for k, v in dsc.moe_backward(dy, ctx3).items():
        np.testing.assert_array_equal(v, g_c[k], err_msg=k)


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


# --------------------------------------------------------------------------- FP8 experts


def _lin8(x, w):
    """The V3 FP8 projection x @ w^T: x in 1x128 tiles, w in 128x128 blocks (float64 sums)."""
    y, _ = fp8ref.linear_forward(np.asarray(x, np.float32), np.asarray(w, np.float32))
    return y


def _dgrad8(dy, w):
    dyq, dys = fp8ref.quantize(np.asarray(dy, np.float32), (1, 128), amax_floor=fp8ref.GRAD_AMAX_FLOOR)
    wq, ws = fp8ref.quantize(np.asarray(w, np.float32), (128, 128))
    return fp8ref.gemm(dyq, dys, wq.T, ws.T)


def _wgrad8(dy, x):
    """dy^T x with both operands quantized 1x128 along the tokens (from float32 x)."""
    a = fp8ref.quantize(np.asarray(dy, np.float32), (1, 128), transpose=True, amax_floor=fp8ref.GRAD_AMAX_FLOOR)
    b = fp8ref.quantize(np.asarray(x, np.float32), (1, 128), transpose=True)
    return fp8ref.gemm(*a, *b)


def _fp8_cached(x):
    """x as the routed experts keep it for their backward: E4M3 in 1x128 tiles along the
    features (the rows an expert-parallel dispatch sends), dequantized to float32."""
    return fp8ref.dequantize(*fp8ref.quantize(np.asarray(x, np.float32), (1, 128)), (1, 128)).astype(np.float32)


def _mlp8_grads(dy, x, wg, wu, wd, x_cached=False):
    """FP8 SwiGLU MLP backward reference: (dWg, dWu, dWd); forward values in float32 as
    the layer keeps them; x_cached: the gate/up weight gradients from x's FP8 tiles (the
    routed experts) instead of float32 x (the shared experts)."""
    hg, hu = _lin8(x, wg).astype(np.float32), _lin8(x, wu).astype(np.float32)
    sg = 1.0 / (1.0 + np.exp(-hg.astype(np.float64)))
    act = (hg * sg * hu).astype(np.float32)
    dact = _dgrad8(dy, wd)
    dhg = dact * hu * sg * (1.0 + hg * (1.0 - sg))
    dhu = dact * hg * sg
    xw = _fp8_cached(x) if x_cached else x
    return _wgrad8(dhg, xw), _wgrad8(dhu, xw), _wgrad8(dy, act)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("align", [1, 128])
@pytest.mark.parametrize("variant,n_shared", [("v3", 1), ("v2", 2), ("v2lite", 0)])
def test_fp8_layer_matches_fp8_reference(rng, variant, n_shared, align):
    """w->fp8: forward == the float64 layer with every expert projection quantized the V3 way
    (K = 200 and F = 136: partial 128-blocks); expert weight gradients == the FP8 backward
    reference (dgrad with transposed weight blocks, wgrad along the tokens, the routed
    experts' gate/up from their input's cached FP8 tiles); and all of it
    a few percent from float32, as E4M3 is. align 128 (the GPU's layout): rows bounded by
    R_max, the weight gradients from the device offsets in one K-grouped GEMM; align 1: the
    per-expert loop."""
    E, D, F = 8, 200, 136
    x, params, cfg = make_layer(rng, D=D, E=E, F=F, T=40, variant=variant, n_shared=n_shared, min_gap=1e-4)
    y8, ctx8 = dsc.moe_layer_forward(x, params, cfg, fp8=True, align=align)
    y32, ctx32 = dsc.moe_layer_forward(x, params, cfg)
    want8, _, idx = ref.moe_layer(x, params, cfg, lin=_lin8)
    want, _, _ = ref.moe_layer(x, params, cfg)
    assert _rel(y8, want8) < 3e-4  # float32 vs float64 inputs may round a few values apart
    assert 5e-3 < _rel(y8, want) < 0.15  # it really ran in FP8, and FP8 is close
    np.testing.assert_array_equal(ctx8.load, ctx32.load)

    dy = rng.standard_normal(y8.shape).astype(np.float32)
    g8 = dsc.moe_layer_backward(dy, ctx8)
    g32 = dsc.moe_layer_backward(dy, ctx32)
    assert set(g8) == set(g32)
    for k in g8:
        assert _rel(g8[k], g32[k]) < 0.2, k
    # routing weights of the reference (float64; the layer's float32 ones differ by ~1e-7)
    logits = x.astype(np.float64) @ params["mlp.gate.weight"].astype(np.float64).T
    w = ref.route_weights_from_logits(logits, idx, scoring=cfg["scoring_func"],
                                      norm_topk_prob=cfg["norm_topk_prob"], route_scale=cfg["routed_scaling_factor"])
    P = "mlp.experts."
    for e in range(E):
        tok, slot = np.nonzero(idx == e)
        if tok.size == 0:
            continue
        deo = (w[tok, slot][:, None] * dy[tok]).astype(np.float32)
        want_g = _mlp8_grads(deo, x[tok], params[f"{P}{e}.gate_proj.weight"], params[f"{P}{e}.up_proj.weight"],
                             params[f"{P}{e}.down_proj.weight"], x_cached=True)
        for name, wg in zip(("gate_proj", "up_proj", "down_proj"), want_g):
            assert _rel(g8[f"{P}{e}.{name}.weight"], wg) < 5e-3, (e, name)
    if n_shared:
        S = "mlp.shared_experts."
        want_g = _mlp8_grads(dy, x, params[S + "gate_proj.weight"], params[S + "up_proj.weight"],
                             params[S + "down_proj.weight"])
        for name, wg in zip(("gate_proj", "up_proj", "down_proj"), want_g):
            assert _rel(g8[f"{S}{name}.weight"], wg) < 5e-3, name


def test_fp8_layer_backward_must_match_forward(rng):
    x, params, cfg = make_layer(rng, D=8, E=4, F=6, T=5, variant="v3", n_shared=1)
    _, ctx = dsc.moe_layer_forward(x, params, cfg, fp8=True)
    ctx.fp8 = False
    with pytest.raises(ValueError, match="fp8"):
        dsc.moe_layer_backward(np.ones_like(x), ctx)


def test_fp8_held_expert_weights_as_deepseek_ships_them(rng):
    """Inference with every expert weight given as E4M3 + weight_scale_inv (the checkpoint
    form, built by the independent reference quantizer) == quantizing the float32 weights
    per call, bitwise; errors name what is wrong."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x, params, cfg = make_layer(rng, D=200, E=4, F=136, T=30, variant="v3", n_shared=1, min_gap=1e-4)
    held = dict(params)
    for k, v in params.items():
        if "experts" in k:
            q, s = fp8ref.quantize(v, (128, 128))
            held[k] = q.astype(ml_dtypes.float8_e4m3fn)
            held[k + "_scale_inv"] = s
    want, _ = dsc.moe_layer_forward(x, params, cfg, fp8=True, training=False)
    got, _ = dsc.moe_layer_forward(x, held, cfg, fp8=True, training=False)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="inference"):
        dsc.moe_layer_forward(x, held, cfg, fp8=True, training=True)
    with pytest.raises(ValueError, match="fp8"):
        dsc.moe_layer_forward(x, held, cfg, fp8=False, training=False)
    bad = dict(held)
    del bad["mlp.experts.2.up_proj.weight_scale_inv"]
    with pytest.raises(ValueError, match="up_proj"):
        dsc.moe_layer_forward(x, bad, cfg, fp8=True, training=False)
    bad = {**held, "mlp.shared_experts.down_proj.weight_scale_inv": np.ones((1, 1), np.float32)}
    with pytest.raises(ValueError, match="shared_down_scale_inv"):
        dsc.moe_layer_forward(x, bad, cfg, fp8=True, training=False)


# --------------------------------------------------------------------------- row bound layout


def _rel_max(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("fp8,align", [(False, 8), (False, 128), (True, 128)])
def test_row_bound_layout_matches_align_1(rng, fp8, align):
    """The layer sizes its permuted rows by the bound R_max = T*k + min(E, T*k)*(align-1)
    (rounded up to align), never by the count R it would have to copy back from a GPU: rows past R are zero
    padding that no output or gradient sees. align > 1 on the CPU (R_max > R, zero rows
    inside and past the experts) gives align 1's results up to float32 summation order (BLAS
    blocks a padded expert differently); with fp8 and align 128 the weight gradients take the
    device-offset path (both operands quantized along all rows at once, one K-grouped GEMM)."""
    x, params, cfg = make_layer(rng, D=136, E=8, F=40, T=37, variant="v3", n_shared=1, min_gap=1e-4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y1, c1 = dsc.moe_layer_forward(x, params, cfg, align=1, fp8=fp8)
    ya, ca = dsc.moe_layer_forward(x, params, cfg, align=align, fp8=fp8)
    assert _rel_max(ya, y1) < 1e-5
    np.testing.assert_array_equal(ca.load, c1.load)
    g1, ga = dsc.moe_layer_backward(dy, c1), dsc.moe_layer_backward(dy, ca)
    assert set(ga) == set(g1)
    for k in g1:
        assert np.all(np.isfinite(ga[k])), k
        assert _rel_max(ga[k], g1[k]) < 2e-5, k
    assert any(np.any(g1[k] != 0) for k in g1 if ".experts." in k)


def test_row_bound_covers_every_routing(rng):
    """R = sum_e roundup(count_e, align) (dsc_moe_permute_rows, the count the layer no longer
    copies back) never exceeds R_max = n + min(E, n) * (align - 1) rounded up to align, and
    reaches it when every pair has an expert of its own."""
    def bound(n, E, align):
        r = n + min(E, n) * (align - 1)
        return -(-r // align) * align
    for E, align in ((8, 128), (64, 128), (3, 4), (16, 1)):
        for T, k in ((1, 2), (4, 2), (37, 3), (300, 2)):
            k = min(k, E)
            n = T * k
            ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
            assert dsc.moe_permute_rows(ids, E, align) <= bound(n, E, align)
            if n <= E:  # distinct experts for every pair: the bound is tight
                tight = rng.permutation(E)[:n].reshape(T, k).astype(np.int32)
                assert dsc.moe_permute_rows(tight, E, align) == bound(n, E, align)


def test_row_bound_with_experts_left_without_tokens(rng):
    """Experts without tokens (weight gradients exactly 0) and a bound far above the rows used
    (4 * 127 padding rows for 2 tokens' 4 pairs): FP8 with align 128 (the device-offset weight
    gradient) matches align 1 (the per-expert loop)."""
    x, params, cfg = make_layer(rng, D=128, E=8, F=16, T=2, variant="v3", n_shared=0, min_gap=1e-4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y1, c1 = dsc.moe_layer_forward(x, params, cfg, align=1, fp8=True)
    ya, ca = dsc.moe_layer_forward(x, params, cfg, align=128, fp8=True)
    assert _rel_max(ya, y1) < 1e-5
    g1, ga = dsc.moe_layer_backward(dy, c1), dsc.moe_layer_backward(dy, ca)
    idle = [e for e in range(8) if c1.load[e] == 0]
    assert idle
    for k in g1:
        assert _rel_max(ga[k], g1[k]) < 2e-5, k
    for e in idle:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert not np.any(ga[f"mlp.experts.{e}.{proj}.weight"]), (e, proj)


def test_fp8_device_offset_wgrad_under_debug_checks():
    """DSC_DEBUG_CHECKS=1 also checks the K-grouped weight gradient's invariant (the experts'
    rows start at multiples of 128): the layer with align 128 passes it, with the same bits."""
    import json
    import os
    import subprocess
    import sys

    code = r"""
import json, sys
import numpy as np, deepseek_c as dsc
sys.path.insert(0, "tests")
from test_moe import make_layer
rng = np.random.default_rng(5)
x, params, cfg = make_layer(rng, D=128, E=8, F=24, T=90, variant="v3", n_shared=1, min_gap=1e-4)
y, ctx = dsc.moe_layer_forward(x, params, cfg, align=128, fp8=True)
g = dsc.moe_layer_backward(np.ones_like(x), ctx)
print(json.dumps({k: np.asarray(v).tobytes().hex() for k, v in {**g, "y": y}.items()}))
"""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {}
    for debug in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DSC_DEBUG_CHECKS=debug), cwd=here,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs[debug] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"] == runs["1"]


# --------------------------------------------------------------------------- CUDA


def _on_cuda(params):
    """params on the GPU with the experts pre-stacked ("mlp.experts.{proj}.weight" [E, ., .]):
    no stacking copy inside the measured calls."""
    out, E = {}, 1 + max(int(k.split(".")[2]) for k in params if k.startswith("mlp.experts."))
    for k, v in params.items():
        if not k.startswith("mlp.experts."):
            out[k] = dsc.tensor(v, device="cuda")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        w = np.stack([params[f"mlp.experts.{e}.{proj}.weight"] for e in range(E)])
        out[f"mlp.experts.{proj}.weight"] = dsc.tensor(w, device="cuda")
    return out


def _stacked_grads(g, E):
    """moe_layer_backward's dict as the one C call returns it: dx, then [dgate, experts'
    gate/up/down stacked [E, ., .], shared gate/up/down]."""
    P = "mlp.experts."
    out = [g["mlp.gate.weight"]] + [np.stack([g[f"{P}{e}.{proj}.weight"] for e in range(E)])
                                    for proj in ("gate_proj", "up_proj", "down_proj")]
    out += [g.get(f"mlp.shared_experts.{proj}.weight") for proj in ("gate_proj", "up_proj", "down_proj")]
    return g["x"], out


def _cuda_layer(x, params, cfg, dy, fp8, align=128):
    """The layer on the GPU twice (the second call measured: forward, then the one backward C
    call, without Python-side views of the outputs); returns (y, load, dx, grads, counters of
    the forward, counters of the backward)."""
    from deepseek_c.moe import _moe_layer_backward_arrays

    pd, xd, dyd = _on_cuda(params), dsc.tensor(x, device="cuda"), dsc.tensor(dy, device="cuda")
    for it in range(2):
        dsc.op_counters("cuda", reset=True)
        yd, cd = dsc.moe_layer_forward(xd, pd, cfg, align=align, fp8=fp8)
        cf = dsc.op_counters("cuda", reset=True)
        dxd, gd = _moe_layer_backward_arrays(dyd, cd)
        cb = dsc.op_counters("cuda", reset=True)
    host = lambda t: None if t is None else dsc.to_numpy(t)  # noqa: E731
    return host(yd), host(cd.load), host(dxd), [host(t) for t in gd], cf, cb


@pytest.mark.cuda
def test_cuda_fp8_layer_matches_cpu_and_never_waits(rng):
    """The FP8 layer on CUDA (align 128: rows bounded by R_max, offsets read on the device by
    the grouped fprop/dgrad and the K-grouped weight gradient) against the CPU's same layout
    (the CPU twin of every kernel): y, dx and every weight gradient within FP8 GEMM noise
    (FP32 accumulation in another order; E4M3 codes are exact), and a training forward and
    backward with no host wait at all and (second call of the shape) no allocation."""
    x, params, cfg = make_layer(rng, D=256, E=8, F=136, T=200, variant="v3", n_shared=1, min_gap=1e-4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yc, cc = dsc.moe_layer_forward(x, params, cfg, align=128, fp8=True)
    dxc, gc = _stacked_grads(dsc.moe_layer_backward(dy, cc), 8)
    yd, load, dxd, gd, cf, cb = _cuda_layer(x, params, cfg, dy, fp8=True)
    for c in (cf, cb):
        assert c["syncs"] == 0 and c["copies_to_host"] == 0 and c["workspace_grows"] == 0, (cf, cb)
    assert _rel(yd, yc) < 1e-3
    np.testing.assert_array_equal(load, cc.load)
    assert _rel(dxd, dxc) < 2e-3
    for i, (a, b) in enumerate(zip(gd, gc)):
        assert np.all(np.isfinite(a)), i
        assert _rel(a, b) < 2e-3, i


@pytest.mark.cuda
@pytest.mark.parametrize("align", [1, 128])
def test_cuda_float32_layer_matches_cpu_and_never_waits(rng, align):
    """The float32 layer (the reference model's; its experts on the exact float32 grouped
    kernel, kernels/f32_grouped.cu, reading the offsets on the device) with align 128 (rows
    bounded by R_max, so padding rows past offsets[E] up to R_max) and align 1: a training
    forward and backward with no host wait and no copy back at all, and results within
    float32 accumulation-order noise of the CPU's."""
    x, params, cfg = make_layer(rng, D=64, E=8, F=48, T=100, variant="v3", n_shared=1, min_gap=1e-4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yc, cc = dsc.moe_layer_forward(x, params, cfg, align=align)
    dxc, gc = _stacked_grads(dsc.moe_layer_backward(dy, cc), 8)
    yd, load, dxd, gd, cf, cb = _cuda_layer(x, params, cfg, dy, fp8=False, align=align)
    for c in (cf, cb):
        assert c["syncs"] == 0 and c["copies_to_host"] == 0 and c["workspace_grows"] == 0, (cf, cb)
    np.testing.assert_array_equal(load, cc.load)
    assert _rel(yd, yc) < 1e-5 and _rel(dxd, dxc) < 1e-5
    for i, (a, b) in enumerate(zip(gd, gc)):
        assert np.all(np.isfinite(a)), i
        assert _rel(a, b) < 1e-4, i
