"""DeepSeekMoE ops against the independent NumPy float64 reference in tests/reference/moe.py:
routing (V3 and V2 variants, ties, empty experts, one expert taking every token, top_k =
n_experts, n_group = 1), load and bias update, the sequence-wise balance loss, permute /
unpermute, grouped linear, the whole layer against a dense loop over experts, gradients
against finite differences, and bad inputs."""

import importlib.util
import os

import numpy as np
import pytest

import deepseek_c as dsc

_spec = importlib.util.spec_from_file_location(
    "dsc_reference_moe", os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "moe.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

V3 = dict(scoring="sigmoid", topk_method="noaux_tc", norm_topk_prob=True, route_scale=2.5)
V2 = dict(scoring="softmax", topk_method="group_limited_greedy", norm_topk_prob=False, route_scale=16.0)
V2_LITE = dict(scoring="softmax", topk_method="greedy", norm_topk_prob=False, route_scale=1.0)


def separated_logits(rng, T, E, step=0.05):
    """Logits whose values in a row are distinct by >= step (no near-ties between float32
    and float64 rankings)."""
    vals = np.arange(-E, E) * step
    return np.stack([rng.choice(vals, E, replace=False) for _ in range(T)]).astype(np.float32)


def check_route(logits, bias, **kw):
    r = dsc.moe_route(logits, bias, **kw)
    idx, w, s = ref.route(logits, bias, **kw)
    np.testing.assert_array_equal(r.indices, idx)
    np.testing.assert_allclose(r.weights, w, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r.scores, s, rtol=2e-6, atol=1e-7)
    assert r.indices.dtype == np.int32 and r.weights.dtype == np.float32
    return r


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("E,k,G,TG", [(64, 8, 8, 4), (32, 4, 4, 2), (16, 6, 1, 1), (8, 8, 2, 2), (12, 3, 3, 1)])
def test_route_v3_matches_reference(rng, E, k, G, TG):
    logits = separated_logits(rng, 50, E)
    bias = (rng.integers(-3, 4, E) * 0.01).astype(np.float32)
    check_route(logits, bias, top_k=k, n_group=G, topk_group=TG, **V3)
    check_route(logits, None, top_k=k, n_group=G, topk_group=TG, **V3)


@pytest.mark.parametrize("kw", [V2, V2_LITE, dict(V2, norm_topk_prob=True),
                                dict(V3, topk_method="greedy"), dict(V3, norm_topk_prob=False)])
def test_route_other_variants_match_reference(rng, kw):
    logits = separated_logits(rng, 40, 32)
    check_route(logits, None, top_k=6, n_group=4, topk_group=3, **kw)


def test_route_large_batch_runs_parallel_and_matches_reference(rng):
    logits = separated_logits(rng, 400, 64, step=0.03)  # 400 x 64 is above the OpenMP threshold
    bias = (rng.integers(-3, 4, 64) * 0.01).astype(np.float32)
    check_route(logits, bias, top_k=8, n_group=8, topk_group=4, **V3)


def test_route_bfloat16_logits(rng):
    ml = pytest.importorskip("ml_dtypes")
    logits = separated_logits(rng, 20, 16, step=0.25).astype(ml.bfloat16)
    check_route(logits, None, top_k=4, n_group=4, topk_group=2, **V3)


def test_route_ties_go_to_the_lower_index():
    # every logit equal: groups 0..TG-1 win, then experts 0..k-1
    logits = np.zeros((3, 16), np.float32)
    r = check_route(logits, None, top_k=4, n_group=4, topk_group=2, **V3)
    np.testing.assert_array_equal(r.indices, np.tile(np.arange(4), (3, 1)))
    np.testing.assert_allclose(r.weights, 2.5 / 4)
    # duplicates inside a row: experts 3 and 9 tie for the best, 3 first
    logits = np.full((1, 16), -1.0, np.float32)
    logits[0, [9, 3]] = 2.0
    logits[0, [12, 5]] = 1.0
    r = check_route(logits, None, top_k=4, n_group=1, topk_group=1, **V3)
    np.testing.assert_array_equal(r.indices[0], [3, 9, 5, 12])
    # tied group scores (top-2 sums): the lower group is kept
    logits = np.full((1, 8), -5.0, np.float32)
    logits[0, [1, 2, 4, 7]] = 1.0  # group 0 = {0..3} and group 1 = {4..7}: same top-2 sum? no:
    logits[0, [0]] = -5.0          # group 0 top-2 = 1+1, group 1 top-2 = 1+1 -> tie -> group 0
    r = check_route(logits, None, top_k=2, n_group=2, topk_group=1, **V3)
    np.testing.assert_array_equal(r.indices[0], [1, 2])
    # V2 group max ties
    logits = np.zeros((2, 12), np.float32)
    check_route(logits, None, top_k=3, n_group=3, topk_group=2, **V2)


def test_route_uses_minus_inf_masking_not_zero_fill():
    # Negative biased scores in the kept group must still beat every excluded expert (a
    # 0-fill of the excluded would let them in).
    E = 8
    logits = np.zeros((1, E), np.float32)
    bias = np.array([-2, -2, -2, -2, -3, -3, -0.5, -3], np.float32)
    bias[0] = -0.1
    # group 0 = {0..3}: top-2 of (s+b) = (0.5-0.1) + (0.5-2) = -1.1; group 1: (0.5-.5)+(0.5-3) = -2.5
    r = check_route(logits, bias, top_k=4, n_group=2, topk_group=1, **V3)
    assert set(r.indices[0]) == {0, 1, 2, 3}


def test_route_one_expert_gets_every_token_and_others_none(rng):
    E = 16
    logits = separated_logits(rng, 64, E)
    bias = np.zeros(E, np.float32)
    bias[5] = 100.0
    r = check_route(logits, bias, top_k=1, n_group=4, topk_group=1, **V3)
    assert (r.indices == 5).all()
    # the bias picks but does not weigh: weight = s/s * scale
    np.testing.assert_allclose(r.weights, 2.5, rtol=1e-6)
    load = dsc.moe_expert_load(r.indices, E)
    assert load[5] == 64 and load.sum() == 64 and (np.delete(load, 5) == 0).all()
    # unnormalized weights are the unbiased affinities
    r = check_route(logits, bias, top_k=2, n_group=4, topk_group=2, **dict(V3, norm_topk_prob=False))
    s = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(r.weights[:, 0], 2.5 * s[:, 5], rtol=1e-6)


def test_route_top_k_equals_n_experts(rng):
    logits = separated_logits(rng, 10, 8)
    r = check_route(logits, None, top_k=8, n_group=1, topk_group=1, **V3)
    assert (np.sort(r.indices, 1) == np.arange(8)).all()
    np.testing.assert_allclose(r.weights.sum(1), 2.5, rtol=1e-6)
    check_route(logits, None, top_k=8, n_group=2, topk_group=2, **V2_LITE)


def test_route_zero_tokens():
    r = dsc.moe_route(np.zeros((0, 16), np.float32), None, top_k=2, n_group=2, topk_group=1)
    assert r.indices.shape == (0, 2) and r.weights.shape == (0, 2)


def test_route_is_deterministic(rng):
    logits = rng.standard_normal((300, 64)).astype(np.float32)
    a = dsc.moe_route(logits, None, top_k=8, n_group=8, topk_group=4)
    b = dsc.moe_route(logits, None, top_k=8, n_group=8, topk_group=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.weights.tobytes() == b.weights.tobytes()


@pytest.mark.parametrize("kw", [V3, dict(V3, norm_topk_prob=False), V2, dict(V2, norm_topk_prob=True)])
def test_route_backward_vs_finite_differences(rng, kw):
    T, E, k = 6, 12, 3
    logits = separated_logits(rng, T, E, step=0.2)
    r = dsc.moe_route(logits, None, top_k=k, n_group=3, topk_group=2, **kw)
    g = rng.standard_normal((T, k))
    dl = dsc.moe_route_backward(g.astype(np.float32), r)
    assert dl.dtype == np.float32 and dl.shape == (T, E)
    idx = r.indices.astype(np.int64)
    f = lambda z: (ref.route_weights_from_logits(z, idx, scoring=kw["scoring"],
                                                  norm_topk_prob=kw["norm_topk_prob"],
                                                  route_scale=kw["route_scale"]) * g).sum()
    z0 = logits.astype(np.float64)
    fd = np.zeros_like(z0)
    h = 1e-6
    for i in np.ndindex(z0.shape):
        zp, zm = z0.copy(), z0.copy()
        zp[i] += h
        zm[i] -= h
        fd[i] = (f(zp) - f(zm)) / (2 * h)
    np.testing.assert_allclose(dl, fd, rtol=1e-3, atol=1e-4 * np.abs(fd).max())


def test_route_backward_adds_dscores(rng):
    logits = separated_logits(rng, 5, 8)
    r = dsc.moe_route(logits, None, top_k=2, n_group=1, topk_group=1)
    dw = np.zeros((5, 2), np.float32)
    ds = rng.standard_normal((5, 8)).astype(np.float32)
    dl = dsc.moe_route_backward(dw, r, ds)
    s = r.scores.astype(np.float64)
    np.testing.assert_allclose(dl, ds * s * (1 - s), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- balancing


def test_expert_load_and_bias_update(rng):
    E = 16
    idx = rng.integers(0, E - 3, (100, 4)).astype(np.int32)  # experts 13..15 get nothing
    load = dsc.moe_expert_load(idx, E)
    np.testing.assert_array_equal(load, ref.expert_load(idx, E))
    np.testing.assert_array_equal(dsc.moe_expert_load(idx.astype(np.int64), E), load)
    bias = (rng.standard_normal(E) * 0.01).astype(np.float32)
    want = ref.update_bias(bias, load, 1e-3)
    out = dsc.moe_update_bias(bias, load, rate=1e-3)
    assert out is bias  # in place
    np.testing.assert_allclose(bias, want, rtol=0, atol=1e-7)
    # experts exactly at the mean do not move
    b = np.zeros(4, np.float32)
    dsc.moe_update_bias(b, np.array([2, 2, 1, 3]), rate=0.5)
    np.testing.assert_array_equal(b, [0, 0, 0.5, -0.5])
    # a read-only array is copied, not modified
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    nb = dsc.moe_update_bias(ro, np.array([0, 0, 0, 4]), rate=1.0)
    assert (ro == 0).all() and list(nb) == [1, 1, 1, -1]


def test_load_stats():
    st = dsc.moe_load_stats(np.array([2, 2, 2, 2]))
    assert st["max_over_mean"] == 1.0 and st["cv"] == 0.0 and st["min"] == 2 and st["max"] == 2
    st = dsc.moe_load_stats(np.array([0, 0, 0, 8]))
    assert st["max_over_mean"] == 4.0 and st["min"] == 0


def test_bias_update_balances_a_skewed_router(rng):
    E, T = 16, 512
    skew = np.linspace(-2, 2, E).astype(np.float32)
    bias = np.zeros(E, np.float32)
    first = None
    for step in range(300):
        logits = (rng.standard_normal((T, E)) * 0.5 + skew).astype(np.float32)
        r = dsc.moe_route(logits, bias, top_k=2, n_group=4, topk_group=2)
        load = dsc.moe_expert_load(r.indices, E)
        first = first if first is not None else dsc.moe_load_stats(load)["max_over_mean"]
        dsc.moe_update_bias(bias, load, rate=1e-2)
    last = dsc.moe_load_stats(load)["max_over_mean"]
    assert first > 3.0 and last < 1.5, (first, last)


@pytest.mark.parametrize("L", [1, 5, 20])
def test_seq_aux_loss_forward_and_backward(rng, L):
    T, E, k = 20, 12, 3
    logits = separated_logits(rng, T, E)
    r = dsc.moe_route(logits, None, top_k=k, n_group=3, topk_group=2)
    alpha = 1e-2
    aux, actx = dsc.moe_seq_aux_loss(r.scores, r.indices, L, alpha=alpha)
    s = r.scores.astype(np.float64)
    idx = r.indices.astype(np.int64)
    want = ref.seq_aux_loss(s, idx, L, alpha)
    assert aux.shape == () and aux.dtype == np.float32
    np.testing.assert_allclose(float(aux), want, rtol=1e-5)
    ds = dsc.moe_seq_aux_loss_backward(actx, grad=2.0)
    fd = np.zeros_like(s)
    h = 1e-7
    for i in np.ndindex(s.shape):
        sp, sm = s.copy(), s.copy()
        sp[i] += h
        sm[i] -= h
        fd[i] = 2.0 * (ref.seq_aux_loss(sp, idx, L, alpha) - ref.seq_aux_loss(sm, idx, L, alpha)) / (2 * h)
    np.testing.assert_allclose(ds, fd, rtol=1e-4, atol=1e-5 * np.abs(fd).max())


def test_seq_aux_loss_is_alpha_when_balanced():
    # every expert equally often and equal scores: f_i = 1, P_i = 1/E -> alpha
    E, k, L = 8, 2, 4
    idx = np.array([[0, 1], [2, 3], [4, 5], [6, 7]], np.int32)
    aux, _ = dsc.moe_seq_aux_loss(np.full((L, E), 0.3, np.float32), idx, L, alpha=1e-4)
    np.testing.assert_allclose(float(aux), 1e-4, rtol=1e-6)


# ----------------------------------------------------------------------------- permute / unpermute


@pytest.mark.parametrize("align", [1, 4, 128])
def test_permute_unpermute_match_reference(rng, align):
    T, D, E, k = 37, 24, 10, 3
    x = rng.standard_normal((T, D)).astype(np.float32)
    idx = np.stack([rng.choice(E - 2, k, replace=False) for _ in range(T)]).astype(np.int32)  # 8, 9 empty
    p = dsc.moe_permute(x, idx, E, align=align)
    out, offs, rm = ref.permute(x, idx, E, align)
    assert p.x.shape == out.shape == (dsc.moe_permute_rows(idx, E, align), D)
    np.testing.assert_array_equal(p.x, out)
    np.testing.assert_array_equal(p.group_offsets, offs)
    np.testing.assert_array_equal(p.row_map, rm)
    np.testing.assert_array_equal(p.counts, ref.expert_load(idx, E))
    assert p.counts[8] == 0 and p.counts[9] == 0
    assert (np.asarray(p.group_offsets) % align == 0).all()
    w = rng.random((T, k)).astype(np.float32)
    eo = rng.standard_normal(p.x.shape).astype(np.float32)
    y = dsc.moe_unpermute(eo, p, w)
    np.testing.assert_allclose(y, ref.unpermute(eo, rm, w), rtol=1e-5, atol=1e-6)
    # backward: permute^T is a gather-add; unpermute^T scatters w * dy and dots for dw
    dout = rng.standard_normal(p.x.shape).astype(np.float32)
    dx = dsc.moe_permute_backward(dout, p)
    np.testing.assert_allclose(dx, dout.astype(np.float64)[rm].sum(1), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal((T, D)).astype(np.float32)
    de, dw = dsc.moe_unpermute_backward(dy, eo, p, w)
    want_de = np.zeros(eo.shape)
    for t in range(T):
        for j in range(k):
            want_de[rm[t, j]] += w[t, j] * dy[t]
    np.testing.assert_allclose(de, want_de, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, np.einsum("td,tkd->tk", dy.astype(np.float64), eo[rm]), rtol=1e-4, atol=1e-5)


def test_unpermute_backward_rows_named_twice(rng):
    """A row_map naming one row for two (token, slot) pairs (not a permute's, but allowed):
    dexpert_out accumulates both, rows nobody names are 0 (the CPU's general path; a
    permute's distinct rows take a direct-write path, checked above)."""
    T, k, D, R = 6, 2, 40, 15
    rm = rng.choice(R - 3, size=(T, k), replace=True).astype(np.int32)
    rm[3, 1] = rm[0, 0]  # certainly one row twice
    p = dsc.MoEPermute(x=np.zeros((R, D), np.float32), group_offsets=np.array([0, R], np.int32), row_map=rm,
                       counts=np.array([T * k], np.int64), n_tokens=T, n_experts=1, align=1)
    w = rng.random((T, k)).astype(np.float32)
    eo = rng.standard_normal((R, D)).astype(np.float32)
    dy = rng.standard_normal((T, D)).astype(np.float32)
    de, dw = dsc.moe_unpermute_backward(dy, eo, p, w)
    want = np.zeros((R, D))
    for t in range(T):
        for j in range(k):
            want[rm[t, j]] += w[t, j] * dy[t].astype(np.float64)
    np.testing.assert_allclose(de, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, np.einsum("td,tkd->tk", dy.astype(np.float64), eo[rm]), rtol=1e-4, atol=1e-5)


def test_permute_bfloat16_is_exact(rng):
    ml = pytest.importorskip("ml_dtypes")
    x = rng.standard_normal((9, 16)).astype(ml.bfloat16)
    idx = np.stack([rng.choice(6, 2, replace=False) for _ in range(9)]).astype(np.int32)
    p = dsc.moe_permute(x, idx, 6, align=8)
    out, _, _ = ref.permute(x.astype(np.float64), idx, 6, 8)
    assert p.x.dtype == x.dtype
    np.testing.assert_array_equal(p.x.astype(np.float64), out)


def test_grouped_linear_matches_per_expert_matmul(rng):
    E, K, N = 5, 12, 7
    counts = [3, 0, 8, 1, 0]
    offs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    R = int(offs[-1])
    x = rng.standard_normal((R, K)).astype(np.float32)
    w = rng.standard_normal((E, N, K)).astype(np.float32)
    y = dsc.grouped_linear(x, w, offs)
    want = np.zeros((R, N))
    for e in range(E):
        want[offs[e]:offs[e + 1]] = x[offs[e]:offs[e + 1]].astype(np.float64) @ w[e].T
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal((R, N)).astype(np.float32)
    dx, dw = dsc.grouped_linear_backward(dy, x, w, offs)
    for e in range(E):
        sl = slice(offs[e], offs[e + 1])
        np.testing.assert_allclose(dx[sl], dy[sl].astype(np.float64) @ w[e], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw[e], dy[sl].astype(np.float64).T @ x[sl], rtol=1e-5, atol=1e-5)
    assert (dw[1] == 0).all() and (dw[4] == 0).all()


# ----------------------------------------------------------------------------- the whole layer


def make_layer(rng, *, D=8, E=4, F=6, n_shared=1, T=6, variant="v3", min_gap=0.02):
    cfg = dict(n_routed_experts=E, num_experts_per_tok=2, n_group=2, topk_group=1,
               scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
               routed_scaling_factor=2.5, n_shared_experts=n_shared, moe_intermediate_size=F)
    if variant == "v2":
        cfg.update(scoring_func="softmax", topk_method="group_limited_greedy", norm_topk_prob=False,
                   routed_scaling_factor=16.0, topk_group=2)
    if variant == "v2lite":
        cfg.update(scoring_func="softmax", topk_method="greedy", norm_topk_prob=False,
                   routed_scaling_factor=1.0, n_group=1, topk_group=1)
    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    for _ in range(100):  # draw until routing is far from every decision boundary
        params = {"mlp.gate.weight": f32(E, D, scale=0.8)}
        if variant == "v3":
            params["mlp.gate.e_score_correction_bias"] = f32(E, scale=0.05)
        x = f32(T, D)
        if route_margin(x, params, cfg) > min_gap:
            break
    for e in range(E):
        params[f"mlp.experts.{e}.gate_proj.weight"] = f32(F, D, scale=0.5)
        params[f"mlp.experts.{e}.up_proj.weight"] = f32(F, D, scale=0.5)
        params[f"mlp.experts.{e}.down_proj.weight"] = f32(D, F, scale=0.5)
    if n_shared:
        Fs = n_shared * F
        params["mlp.shared_experts.gate_proj.weight"] = f32(Fs, D, scale=0.5)
        params["mlp.shared_experts.up_proj.weight"] = f32(Fs, D, scale=0.5)
        params["mlp.shared_experts.down_proj.weight"] = f32(D, Fs, scale=0.5)
    return x, params, cfg


def route_margin(x, params, cfg):
    """Smallest gap between the k-th and (k+1)-th selection score and between group scores."""
    z = x.astype(np.float64) @ params["mlp.gate.weight"].T.astype(np.float64)
    s = ref.affinities(z, cfg["scoring_func"])
    if "mlp.gate.e_score_correction_bias" in params:
        s = s + params["mlp.gate.e_score_correction_bias"]
    srt = -np.sort(-s, 1)
    gaps = np.abs(np.diff(srt, axis=1)).min()
    return gaps


@pytest.mark.parametrize("variant", ["v3", "v2", "v2lite"])
def test_moe_layer_matches_dense_reference(rng, variant):
    x, params, cfg = make_layer(rng, D=16, E=8, F=12, T=24, variant=variant, min_gap=1e-4)
    out, ctx = dsc.moe_forward(x, params, cfg)
    want, _, idx = ref.moe_layer(x, params, cfg)
    np.testing.assert_array_equal(ctx.route.indices, idx)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(ctx.load, ref.expert_load(idx, 8))
    # the same with padding to 128 rows per expert and with a 3-D x
    out2, _ = dsc.moe_forward(x.reshape(4, 6, 16), params, cfg, align=128)
    np.testing.assert_allclose(out2.reshape(24, 16), out, rtol=1e-5, atol=1e-6 * np.abs(out).max())  # GEMM blocking differs


def test_moe_layer_without_shared_experts_and_with_unused_experts(rng):
    x, params, cfg = make_layer(rng, n_shared=0, E=8, T=3, min_gap=1e-4)
    out, ctx = dsc.moe_forward(x, params, cfg)
    want, _, _ = ref.moe_layer(x, params, cfg)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert (np.asarray(ctx.load) == 0).any()
    grads = dsc.moe_backward(np.ones_like(out), ctx)
    for e in np.nonzero(np.asarray(ctx.load) == 0)[0]:
        assert (grads[f"mlp.experts.{e}.gate_proj.weight"] == 0).all()


def _fd_check(fn_ref, arr, lib_grad, h=1e-6, max_entries=60, rng=None):
    """Central differences of fn_ref (float64) at a float64 copy of arr, on up to
    max_entries entries, against lib_grad."""
    a0 = arr.astype(np.float64)
    flat = list(np.ndindex(a0.shape))
    if len(flat) > max_entries:
        flat = [flat[i] for i in rng.choice(len(flat), max_entries, replace=False)]
    fd, got = [], []
    for i in flat:
        ap, am = a0.copy(), a0.copy()
        ap[i] += h
        am[i] -= h
        fd.append((fn_ref(ap) - fn_ref(am)) / (2 * h))
        got.append(float(lib_grad[i]))
    fd, got = np.array(fd), np.array(got)
    np.testing.assert_allclose(got, fd, rtol=1e-3, atol=1e-3 * max(np.abs(fd).max(), 1e-6))


@pytest.mark.parametrize("variant,aux", [("v3", 0.0), ("v3", 0.05), ("v2", 0.0), ("v2lite", 0.0)])
def test_moe_layer_gradients_vs_finite_differences(rng, variant, aux):
    x, params, cfg = make_layer(rng, variant=variant)
    seq_len = 3
    out, ctx = dsc.moe_forward(x, params, cfg, seq_len=seq_len, aux_alpha=aux)
    G = rng.standard_normal(out.shape)
    grads = dsc.moe_backward(G.astype(np.float32), ctx)
    _, _, idx = ref.moe_layer(x, params, cfg)
    np.testing.assert_array_equal(ctx.route.indices, idx)
    P64 = {k: v.astype(np.float64) for k, v in params.items()}

    def loss(name):
        def f(a):
            p = dict(P64)
            xx = x.astype(np.float64)
            if name == "x":
                xx = a
            else:
                p[name] = a
            y, aux_l, _ = ref.moe_layer(xx, p, cfg, fixed_indices=idx, seq_len=seq_len, aux_alpha=aux)
            return float((y * G).sum()) + aux_l
        return f

    if aux:
        assert float(ctx.aux_loss) > 0
    names = ["x", "mlp.gate.weight", "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
             "mlp.shared_experts.down_proj.weight"]
    names += [n for n in params if n.startswith("mlp.experts.")]
    for name in names:
        arr = x if name == "x" else params[name]
        g = grads[name]
        assert g.shape == arr.shape
        if name != "x":
            assert g.dtype == np.float32
        _fd_check(loss(name), arr, g, rng=rng, max_entries=24)
    assert "mlp.gate.e_score_correction_bias" not in grads


def test_moe_config_from_hf_dict(rng):
    x, params, cfg = make_layer(rng, min_gap=1e-4)
    hf = dict(cfg, hidden_size=8, vocab_size=100, model_type="deepseek_v3")
    out1, _ = dsc.moe_forward(x, params, hf)
    out2, _ = dsc.moe_forward(x, params, dsc.MoEConfig.from_dict(cfg))
    np.testing.assert_array_equal(out1, out2)


# ----------------------------------------------------------------------------- bad inputs


def _logits(T=4, E=16):
    return np.zeros((T, E), np.float32)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(top_k=17), ValueError, "top_k"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(n_group=5), ValueError, "n_group"),
    (dict(n_group=4, topk_group=5), ValueError, "topk_group"),
    (dict(top_k=8, n_group=8, topk_group=2), ValueError, "top_k"),  # 2 groups of 2 < 8
    (dict(scoring="relu"), ValueError, "scoring"),
    (dict(topk_method="best"), ValueError, "topk_method"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(route_scale=float("nan")), ValueError, "route_scale"),
])
def test_route_bad_parameters(kw, exc, word):
    args = dict(top_k=2, n_group=4, topk_group=2)
    args.update(kw)
    with pytest.raises(exc, match=word):
        dsc.moe_route(_logits(), None, **args)


def test_route_bad_tensors():
    with pytest.raises(ValueError, match="logits"):
        dsc.moe_route(np.zeros((2, 3, 16), np.float32), None, top_k=2, n_group=4)
    with pytest.raises(TypeError, match="logits"):
        dsc.moe_route(np.zeros((2, 16), np.int32), None, top_k=2, n_group=4)
    with pytest.raises(TypeError, match="logits"):
        dsc.moe_route([[0.0] * 16], None, top_k=2, n_group=4)
    with pytest.raises(ValueError, match="bias"):
        dsc.moe_route(_logits(), np.zeros(15, np.float32), top_k=2, n_group=4)
    with pytest.raises(TypeError, match="bias"):
        dsc.moe_route(_logits(), np.zeros(16, np.float64), top_k=2, n_group=4)
    with pytest.raises(ValueError, match="bias"):
        dsc.moe_route(_logits(), np.zeros(16, np.float32), top_k=2, n_group=4, scoring="softmax")
    with pytest.raises(ValueError, match="bias"):
        dsc.moe_route(_logits(), np.zeros(16, np.float32), top_k=2, n_group=4, topk_method="greedy")
    with pytest.raises(ValueError, match="strides|contiguous"):
        dsc.moe_route(np.zeros((16, 4), np.float32).T, None, top_k=2, n_group=4)


def test_route_backward_bad_inputs():
    r = dsc.moe_route(_logits(), None, top_k=2, n_group=4)
    with pytest.raises(TypeError, match="r"):
        dsc.moe_route_backward(np.zeros((4, 2), np.float32), "route")
    with pytest.raises(ValueError, match="dweights"):
        dsc.moe_route_backward(np.zeros((4, 3), np.float32), r)
    with pytest.raises(ValueError, match="dscores"):
        dsc.moe_route_backward(np.zeros((4, 2), np.float32), r, np.zeros((4, 15), np.float32))
    bad = dsc.MoERoute(np.full((4, 2), 16, np.int32), r.weights, r.scores, r.params, "float32", 16)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_route_backward(np.zeros((4, 2), np.float32), bad)


def test_balancing_bad_inputs():
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_expert_load(np.array([[0, 16]], np.int32), 16)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_expert_load(np.array([[0, -1]], np.int32), 16)
    with pytest.raises(TypeError, match="indices"):
        dsc.moe_expert_load(np.array([[0.0]], np.float32), 16)
    with pytest.raises(ValueError, match="n_experts"):
        dsc.moe_expert_load(np.array([[0]], np.int32), 0)
    with pytest.raises(ValueError, match="counts"):
        dsc.moe_update_bias(np.zeros(4, np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="counts"):
        dsc.moe_update_bias(np.zeros(4, np.float32), np.array([1, -1, 0, 0]))
    with pytest.raises(ValueError, match="rate"):
        dsc.moe_update_bias(np.zeros(4, np.float32), np.zeros(4, np.int64), rate=-1.0)
    with pytest.raises(TypeError, match="bias"):
        dsc.moe_update_bias(np.zeros(4, np.float64), np.zeros(4, np.int64))
    s = np.full((6, 4), 0.5, np.float32)
    idx = np.zeros((6, 2), np.int32)
    with pytest.raises(ValueError, match="seq_len"):
        dsc.moe_seq_aux_loss(s, idx, 4)
    with pytest.raises(ValueError, match="seq_len"):
        dsc.moe_seq_aux_loss(s, idx, 0)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_seq_aux_loss(s, np.full((6, 2), 4, np.int32), 3)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_seq_aux_loss(s, np.zeros((5, 2), np.int32), 3)


def test_dispatch_bad_inputs():
    x = np.zeros((4, 8), np.float32)
    idx = np.zeros((4, 2), np.int32)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_permute(x, np.zeros((3, 2), np.int32), 4, align=1)
    with pytest.raises(ValueError, match="indices"):
        dsc.moe_permute(x, np.full((4, 2), 4, np.int32), 4, align=1)
    with pytest.raises(ValueError, match="align"):
        dsc.moe_permute(x, idx, 4, align=0)
    with pytest.raises(ValueError, match="n_experts"):
        dsc.moe_permute(x, idx, 0, align=1)
    with pytest.raises(ValueError, match="x"):
        dsc.moe_permute(np.zeros(8, np.float32), idx, 4)
    p = dsc.moe_permute(x, idx, 4, align=1)
    with pytest.raises(ValueError, match="weights"):
        dsc.moe_unpermute(p.x, p, np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="weights"):
        dsc.moe_unpermute(p.x, p, np.zeros((4, 2), np.float64))
    with pytest.raises(TypeError, match="p"):
        dsc.moe_unpermute(p.x, "perm", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="row_map"):
        dsc.moe_unpermute(p.x[:3], p, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="dy"):
        dsc.moe_unpermute_backward(np.zeros((4, 7), np.float32), p.x, p, np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="out|x"):
        ml = pytest.importorskip("ml_dtypes")
        dsc._C.moe_permute(x, idx, 4, 1, np.zeros((8, 8), ml.bfloat16), np.zeros(5, np.int32),
                           np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match="out"):
        dsc._C.moe_permute(x, idx, 4, 1, np.zeros((7, 8), np.float32), np.zeros(5, np.int32),
                           np.zeros((4, 2), np.int32))


def test_grouped_linear_bad_inputs():
    x = np.zeros((6, 4), np.float32)
    w = np.zeros((3, 5, 4), np.float32)
    with pytest.raises(ValueError, match="group_offsets"):
        dsc.grouped_linear(x, w, np.array([0, 2, 4, 5], np.int32))  # last != R
    with pytest.raises(ValueError, match="group_offsets"):
        dsc.grouped_linear(x, w, np.array([0, 4, 2, 6], np.int32))  # decreasing
    with pytest.raises(ValueError, match="group_offsets"):
        dsc.grouped_linear(x, w, np.array([1, 2, 4, 6], np.int32))
    with pytest.raises(ValueError, match="group_offsets"):
        dsc.grouped_linear(x, w, np.array([0, 2, 6], np.int32))
    with pytest.raises(TypeError, match="group_offsets"):
        dsc.grouped_linear(x, w, np.array([0, 2, 4, 6], np.int64))
    with pytest.raises(ValueError, match="w"):
        dsc.grouped_linear(x, np.zeros((3, 5, 3), np.float32), np.array([0, 2, 4, 6], np.int32))
    with pytest.raises(TypeError, match="w"):
        dsc.grouped_linear(x, w.astype(np.float64), np.array([0, 2, 4, 6], np.int32))


def test_layer_bad_inputs(rng):
    x, params, cfg = make_layer(rng)
    with pytest.raises(ValueError, match="mlp.experts.3.up_proj.weight|experts"):
        p = dict(params)
        del p["mlp.experts.3.up_proj.weight"]
        dsc.moe_forward(x, p, cfg)
    with pytest.raises(ValueError, match="n_routed_experts"):
        dsc.moe_forward(x, params, {"num_experts_per_tok": 2})
    with pytest.raises(TypeError, match="cfg"):
        dsc.moe_forward(x, params, 3)
    out, ctx = dsc.moe_forward(x, params, cfg)
    with pytest.raises(ValueError, match="dout"):
        dsc.moe_backward(out[:2], ctx)
    with pytest.raises(TypeError, match="ctx"):
        dsc.moe_backward(out, None)


def test_bfloat16_grouped_linear_unpermute_and_layer(rng):
    ml = pytest.importorskip("ml_dtypes")
    bf = ml.bfloat16
    offs = np.array([0, 4, 4, 9], np.int32)
    x = rng.standard_normal((9, 16)).astype(bf)
    w = rng.standard_normal((3, 8, 16)).astype(bf)
    y = dsc.grouped_linear(x, w, offs)
    assert y.dtype == bf
    want = np.concatenate([x[:4].astype(np.float64) @ w[0].astype(np.float64).T,
                           x[4:].astype(np.float64) @ w[2].astype(np.float64).T])
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=2e-2, atol=2e-2)
    dx, dw = dsc.grouped_linear_backward(y, x, w, offs)
    assert dx.dtype == bf and dw.dtype == np.float32
    x32, params, cfg = make_layer(rng, D=16, E=8, F=12, T=24, min_gap=1e-3)
    pb = {k: (v if k == "mlp.gate.e_score_correction_bias" else v.astype(bf)) for k, v in params.items()}
    out, ctx = dsc.moe_forward(x32.astype(bf), pb, cfg)
    assert out.dtype == bf
    want, _, _ = ref.moe_layer(x32.astype(bf).astype(np.float64),
                               {k: v.astype(np.float64) for k, v in pb.items()}, cfg)
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=5e-2, atol=5e-2 * np.abs(want).max())
    grads = dsc.moe_backward(out, ctx)
    assert grads["x"].dtype == bf and grads["mlp.experts.0.up_proj.weight"].dtype == np.float32
