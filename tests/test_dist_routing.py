"""Expert parallel with FP8 dispatch and node-limited routing, on CPU processes (MPI).

* FP8 dispatch: with ``fp8=True`` each token row travels to its experts' rank as E4M3 with
  its 1x128 scales (D + 4 ceil(D/128) bytes, not 4 D). The rows are quantized on the sender
  with the rule the expert GEMM applies to its input (tiles along D lie within a row), and
  the experts' gate/up weight gradients use those FP8 rows in one process too -- so at 2
  ranks the logits and the experts' gradients are bitwise the one-process ones (at 4, to
  the rounding the float32 model has there, re-rounded by FP8), and the bytes sent are
  exactly the analytic count.
* Node-limited routing: group-limited top-k with groups aligned to the expert-parallel
  ranks keeps every token's experts on at most ``Model.max_ranks_per_token`` ranks; groups
  that straddle ranks are refused on every rank.

Launched like tests/test_dist.py (mpirun --oversubscribe -n W tests/_dist_worker.py)."""

import json
import os
import sys

import numpy as np
import pytest

import deepseek_c as dsc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _dist_worker as W  # noqa: E402
from test_dist import held, mpirun  # noqa: E402

# hidden 160: two 1x128 tiles per row, the second partial
FP8_CFG = dict(hidden_size=160)


def _ref_model(cfg, fp8):
    m = dsc.Model(cfg, seed=3, fp8=fp8)
    W.perturb(m.parameters())
    return m


def _ranks_per_token(indices, E, n):
    """[tokens] number of distinct ranks (experts e*n//E... rank = e // (E/n)) per token."""
    idx = np.asarray(indices).reshape(-1, np.asarray(indices).shape[-1]) // (E // n)
    return np.array([len(set(r)) for r in idx])


def _fwd_bytes(routes, n, E, D, row_bytes):
    """What each rank sends in one expert-parallel forward: per MoE layer the El counts to
    each peer, its rows for the peers' experts (row_bytes each), the peers' rows back (4 D)."""
    El = E // n
    out = []
    for r in range(n):
        b = 0
        for layer in routes[r]:
            b += (n - 1) * El * 8
            dest = routes[r][layer].reshape(-1) // El
            b += int(np.sum(dest != r)) * row_bytes
            back = sum(int(np.sum(routes[q][layer].reshape(-1) // El == r)) for q in range(n) if q != r)
            b += back * 4 * D
        out.append(b)
    return out


def _same(got, want, n, msg):
    """Bitwise at 2 ranks. At 4 the replicated layers' float32 GEMMs on a rank's 30 rows round
    differently from one process's 120 (the float32 model too, by ~2e-6), and FP8 re-rounds
    some of those differences to a neighbouring E4M3 value."""
    if n == 2:
        np.testing.assert_array_equal(got, want, err_msg=msg)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5, err_msg=msg)


def _routes(got, prefix):
    return {int(k[len(prefix):]): v for k, v in got.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ FP8 dispatch


@pytest.mark.parametrize("n", [2, 4])
def test_fp8_dispatch_matches_one_process(tmp_path, n):
    cfg = W.small_cfg(**FP8_CFG)
    res, _, _ = mpirun(tmp_path, n, "routing_grads", json.dumps({"cfg": FP8_CFG, "model": {"fp8": True}}))
    E, D, per = cfg.n_routed_experts, cfg.hidden_size, W.B // n
    El = E // n
    tok, y = W.batches(cfg, W.B, W.T, 1)[0]
    m = _ref_model(cfg, True)
    logits = np.array(m.forward(tok))
    _, g_all = m.loss_and_grads(tok, y)  # the experts see every rank's rows, in rank order
    routes = [_routes(got, "route0/") for got in res]
    for r, got in enumerate(res):
        rows = slice(r * per, (r + 1) * per)
        _same(got["logits"], logits[rows], n, f"rank {r}: logits")
        for k, v in held(got, "grad/").items():
            if ".mlp.experts." in k:
                # the sum over ranks of each rank's mean-loss gradient: n times the global mean's
                want = g_all[k][r * El:(r + 1) * El]
                if n == 2:
                    np.testing.assert_array_equal(v / n, want, err_msg=f"rank {r}: {k}")
                else:
                    assert np.linalg.norm(v / n - want) < 1e-2 * np.linalg.norm(want), (r, k)
    # FP8 rows on the wire: D values + ceil(D/128) float32 scales
    want = _fwd_bytes(routes, n, E, D, D + 4 * -(-D // 128))
    assert [int(g["fwd_bytes"][0]) for g in res] == want
    assert want != _fwd_bytes(routes, n, E, D, 4 * D)


def test_float32_dispatch_bytes(tmp_path):
    """The float32 model sends 4 D bytes a row (the count FP8 reduces)."""
    cfg = W.small_cfg(**FP8_CFG)
    res, _, _ = mpirun(tmp_path, 2, "routing_grads", json.dumps({"cfg": FP8_CFG}))
    routes = [_routes(got, "route0/") for got in res]
    want = _fwd_bytes(routes, 2, cfg.n_routed_experts, cfg.hidden_size, 4 * cfg.hidden_size)
    assert [int(g["fwd_bytes"][0]) for g in res] == want


# ------------------------------------------------------------------ node-limited routing

# (world, config): groups of whole ranks (n_group % ep == 0) or groups of ranks (ep % n_group == 0)
NODE_LIMITED = [
    (2, dict(n_routed_experts=8, n_group=4, topk_group=1, num_experts_per_tok=2)),  # 1 rank a token
    (4, dict(n_routed_experts=16, n_group=8, topk_group=2, num_experts_per_tok=4)),  # <= 2 of 4 ranks
    (4, dict(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=3)),  # a group = 2 ranks
]


def _check_bound(res, cfg, n, bound):
    E = cfg["n_routed_experts"]
    for r, got in enumerate(res):
        assert int(got["max_ranks"][0]) == bound
        for prefix in ("route0/", "route1/"):  # before and after training moved the biases
            for layer, idx in _routes(got, prefix).items():
                assert idx.shape[-1] == cfg["num_experts_per_tok"]
                assert _ranks_per_token(idx, E, n).max() <= bound, (r, prefix, layer)


@pytest.mark.parametrize("n,cfg", NODE_LIMITED)
def test_node_limited_routing_bounds_ranks_and_matches_one_process(tmp_path, n, cfg):
    res, _, _ = mpirun(tmp_path, n, "routing_train", json.dumps({"cfg": cfg}))
    ep_over_g = max(1, n // cfg["n_group"])
    bound = min(n, cfg["num_experts_per_tok"], cfg["topk_group"] * ep_over_g)
    assert bound < min(n, cfg["num_experts_per_tok"])  # the limit binds
    _check_bound(res, cfg, n, bound)
    # without the group limit the same tokens do spread further (the bound check can fail)
    free = W.small_cfg(**dict(cfg, topk_group=cfg["n_group"]))
    tok = W.batches(free, W.B, W.T, 1)[0][0]
    spread = max(_ranks_per_token(rt["indices"], cfg["n_routed_experts"], n).max()
                 for rt in _ref_model(free, False).routing(tok).values())
    assert spread > bound
    # the same training as one process (float32: as tests/test_dist.py)
    c = W.small_cfg(**cfg)
    m = _ref_model(c, False)
    stats = []
    for tok, y in W.batches(c, W.B, W.T, W.STEPS):
        st = m.train_step(tok, y, grad_accum=n, **W.TRAIN)
        stats.append([st["loss"], st["mtp_loss"], st["aux_loss"], st["grad_norm"]])
    want = {k: np.array(v) for k, v in m.parameters().items()}
    for r, got in enumerate(res):
        np.testing.assert_allclose(got["stats"], stats, rtol=1e-5, atol=1e-6)
        for k, v in held(got, "final/").items():
            np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=2e-6, err_msg=f"rank {r}: {k}")


@pytest.mark.parametrize("n", [2, 4])
def test_fp8_node_limited_training(tmp_path, n):
    """FP8 and node-limited together over STEPS steps. The first step's forward is the
    one-process one (bitwise at 2 ranks); later steps are not comparable bitwise with any one-process run:
    FP8 weight gradients tile the tokens in 128s, and expert parallel the experts see every
    rank's rows in one GEMM (as one process with grad_accum=1) while the replicated layers
    see each rank's own (grad_accum=n) -- test_fp8_dispatch_matches_one_process
    checks each of those against its one-process counterpart."""
    cfg = dict(NODE_LIMITED[1 if n == 4 else 0][1], **FP8_CFG)
    res, _, _ = mpirun(tmp_path, n, "routing_train", json.dumps({"cfg": cfg, "model": {"fp8": True}}))
    bound = min(n, cfg["num_experts_per_tok"], cfg["topk_group"] * max(1, n // cfg["n_group"]))
    _check_bound(res, cfg, n, bound)
    c = W.small_cfg(**cfg)
    m = _ref_model(c, True)
    tok, y = W.batches(c, W.B, W.T, 1)[0]
    logits = np.array(m.forward(tok))
    st = m.train_step(tok, y, grad_accum=n, **W.TRAIN)
    per = W.B // n
    for r, got in enumerate(res):
        _same(got["logits"], logits[r * per:(r + 1) * per], n, f"rank {r}: logits")
        _same(got["stats"][0][0], st["loss"], n, f"rank {r}: first loss")
        assert np.all(np.isfinite(got["stats"]))
        assert got["stats"][-1][0] < got["stats"][0][0]  # it trains
        for k, v in held(got, "final/").items():
            assert not np.array_equal(v, held(got, "init/")[k]) or k.endswith("bias"), k
    # the replicas agree bitwise (the model compares their hash every step, too)
    for got in res[1:]:
        for k, v in held(got, "final/").items():
            if ".mlp.experts." not in k:
                np.testing.assert_array_equal(v, held(res[0], "final/")[k], err_msg=k)


# ------------------------------------------------------------------ groups that straddle ranks


@pytest.mark.parametrize("n,cfg", [
    (2, dict(n_routed_experts=6, n_group=3, topk_group=1, num_experts_per_tok=2)),
    (4, dict(n_routed_experts=12, n_group=6, topk_group=2, num_experts_per_tok=2)),
])
def test_groups_misaligned_with_ranks_fail_on_every_rank(tmp_path, n, cfg):
    _, errs, p = mpirun(tmp_path, n, "routing_train", json.dumps({"cfg": cfg}), expect_fail=True, timeout=120)
    assert p.returncode != 0
    for r, e in enumerate(errs):
        assert e is not None, f"rank {r} did not fail: {p.stderr[-2000:]}"
        assert "cfg->n_group: expected a multiple or a divisor of opt->expert_parallel" in e, e
        assert f"= {n}" in e and f"got {cfg['n_group']}" in e, e
