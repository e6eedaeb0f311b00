"""The training step without the host (dsc_model_train_step on a GPU; DSC_DEVICE_STEP=1 runs
the same flow on the CPU): every pass leaves its losses and expert counts in its own
read-back slot, the global norm, the clip coefficient and the bias update's counts are made
on the device, and the host reads once, only for the statistics (train_step(sync=False):
not at all; train_stats() reads). On the CPU it must give bitwise what the host-driven step
gives: losses, statistics, weights, moments and router biases. A bad token id makes the step
(and any later one before the read) change nothing; the read raises the immediate check's
message and sets the step count back."""

import numpy as np
import pytest

import deepseek_c as dsc
from test_context_counters import batch, small_cfg

STAT_KEYS = ("loss", "mtp_loss", "aux_loss", "grad_norm", "step", "load_imbalance", "tokens")


def _state(m):
    out = {k: np.array(dsc.to_numpy(v), copy=True) for k, v in m.state_dict().items()}
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.experts.gate_proj.weight"):
        if name in out:
            mo, v = m.optimizer_state(name)
            out[name + "#m"] = np.array(dsc.to_numpy(mo), copy=True)
            out[name + "#v"] = np.array(dsc.to_numpy(v), copy=True)
    return out


def _run(monkeypatch, flow, cfg, steps, model_kw=None, sync_pattern=None):
    """Steps of (grad_accum, aux_alpha, max_grad_norm) on fresh batches; returns stats, state."""
    monkeypatch.setenv("DSC_DEVICE_STEP", flow)
    m = dsc.Model(cfg, seed=3, **(model_kw or {}))
    stats = []
    for i, (ga, alpha, clip) in enumerate(steps):
        tok, y = batch(cfg, B=4, T=10, seed=10 + i)
        sync = True if sync_pattern is None else sync_pattern[i]
        st = m.train_step(tok, y, lr=2e-3, grad_accum=ga, aux_alpha=alpha, max_grad_norm=clip, sync=sync)
        if not sync:
            assert st is None
            st = m.train_stats()
        stats.append({k: st[k] for k in STAT_KEYS} | {"load": {i: c.tolist() for i, c in st["expert_load"].items()}})
    return stats, _state(m), m


STEPS = [(1, 0.0, 1.0), (2, 1e-3, 1.0), (1, 1e-3, 0.0), (4, 0.0, 0.5), (1, 0.0, 1.0)]


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "fp8"])
def test_device_step_is_bitwise_the_host_step(monkeypatch, kind):
    cfg = small_cfg(num_nextn_predict_layers=1)
    kw = {"dtype": "bfloat16"} if kind == "bfloat16" else {"fp8": True} if kind == "fp8" else {}
    host, hs, _ = _run(monkeypatch, "0", cfg, STEPS, kw)
    dev, ds, _ = _run(monkeypatch, "1", cfg, STEPS, kw, sync_pattern=[True, False, True, False, False])
    assert host == dev
    assert hs.keys() == ds.keys()
    for k in hs:
        np.testing.assert_array_equal(ds[k], hs[k], err_msg=k)
    # five updates ran, clipping was active at least once, the weights moved
    assert [s["step"] for s in host] == [1, 2, 3, 4, 5] and max(s["grad_norm"] for s in host) > 1.0
    init = _state(dsc.Model(cfg, seed=3, **kw))["model.embed_tokens.weight"]
    assert not np.array_equal(hs["model.embed_tokens.weight"], init)


def test_train_stats_before_any_step_raises(monkeypatch):
    monkeypatch.setenv("DSC_DEVICE_STEP", "1")
    m = dsc.Model(small_cfg(), seed=0)
    with pytest.raises(ValueError, match="dsc_model_train_stats: model: expected a dsc_model_train_step before"):
        m.train_stats()


def test_unread_steps_keep_the_last_statistics(monkeypatch):
    """Steps run with sync=False and never read: train_stats gives the last one's, the same
    as a synced run's last step; expert_load and save read it too."""
    cfg = small_cfg()
    ref, _, _ = _run(monkeypatch, "0", cfg, STEPS[:3])
    monkeypatch.setenv("DSC_DEVICE_STEP", "1")
    m = dsc.Model(cfg, seed=3)
    for i, (ga, alpha, clip) in enumerate(STEPS[:3]):
        tok, y = batch(cfg, B=4, T=10, seed=10 + i)
        assert m.train_step(tok, y, lr=2e-3, grad_accum=ga, aux_alpha=alpha, max_grad_norm=clip, sync=False) is None
    loads = m._loads()  # dsc_model_expert_load settles the pending step first
    assert {i: c.tolist() for i, c in loads.items()} == ref[-1]["load"]
    st = m.train_stats()
    assert {k: st[k] for k in STAT_KEYS} == {k: ref[-1][k] for k in STAT_KEYS}
    assert m.step == 3


@pytest.mark.parametrize("sync", [True, False])
def test_bad_token_skips_every_update_until_read(monkeypatch, sync):
    monkeypatch.setenv("DSC_DEVICE_STEP", "1")
    cfg = small_cfg(vocab_size=64)
    m = dsc.Model(cfg, seed=0)
    tok, y = batch(cfg, B=2, T=8, seed=1)
    m.train_step(tok, y, lr=1e-2)
    before = _state(m)
    bad = tok.copy()
    bad[1, 5] = cfg.vocab_size + 3
    msg = r"dsc_model_train_step: tokens: expected ids in \[0, 64\) \(vocab_size\), got 67 at position 13"
    if sync:
        with pytest.raises(ValueError, match=msg):
            m.train_step(bad, y, lr=1e-2)
    else:
        assert m.train_step(bad, y, lr=1e-2, sync=False) is None
        # a good step queued after the bad one, before any read: skipped as well
        assert m.train_step(tok, y, lr=1e-2, sync=False) is None
        with pytest.raises(ValueError, match=msg):
            m.train_stats()
    assert m.step == 1  # the updates applied
    after = _state(m)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    st = m.train_step(tok, y, lr=1e-2)  # the record was read: training goes on
    assert st["step"] == 2 and np.isfinite(st["loss"])
    assert not np.array_equal(dsc.to_numpy(m.state_dict()["model.embed_tokens.weight"]),
                              before["model.embed_tokens.weight"])


def test_device_step_allocates_and_waits_for_nothing_on_the_cpu(monkeypatch):
    monkeypatch.setenv("DSC_DEVICE_STEP", "1")
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0)
    tok, y = batch(cfg)
    for _ in range(2):
        m.train_step(tok, y, lr=1e-3, grad_accum=2)
    m.counters(reset=True)
    seen = []
    for _ in range(3):
        m.train_step(tok, y, lr=1e-3, grad_accum=2, sync=False)
        seen.append(m.counters(reset=True))
    for c in seen:
        assert c["allocs"] == 0 and c["frees"] == 0 and c["workspace_grows"] == 0, seen
        assert c["syncs"] == 0 and c["copies_to_host"] == 0 and c["copies_to_device"] == 0, seen
    assert seen[0] == seen[1] == seen[2], seen


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "fp8"])
def test_cuda_step_waits_once_with_stats_and_never_without(kind):
    """Steady state on a GPU: a step with statistics makes exactly one host wait (their
    read), a step with sync=False none, neither allocates; the losses match the CPU's."""
    cfg = small_cfg(num_nextn_predict_layers=1)
    kw = {"dtype": "bfloat16"} if kind == "bfloat16" else {"fp8": True} if kind == "fp8" else {}
    m = dsc.Model(cfg, seed=0, device="cuda", **kw)
    c = dsc.Model(cfg, seed=0, **kw)
    tok, y = batch(cfg)
    for _ in range(2):
        a, b = m.train_step(tok, y, lr=1e-3, grad_accum=2), c.train_step(tok, y, lr=1e-3, grad_accum=2)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-3 if kind == "float32" else 2e-2)
    m.counters(reset=True)
    m.train_step(tok, y, lr=1e-3, grad_accum=2)
    with_stats = m.counters(reset=True)
    m.train_step(tok, y, lr=1e-3, grad_accum=2, sync=False)
    without = m.counters(reset=True)
    print(kind, "with stats:", with_stats, "without:", without)
    assert with_stats["syncs"] == 1 and with_stats["copies_to_host"] >= 1, with_stats
    assert without["syncs"] == 0 and without["copies_to_host"] == 0 and without["copies_to_device"] == 0, without
    for cnt in (with_stats, without):
        assert cnt["allocs"] == 0 and cnt["frees"] == 0 and cnt["workspace_grows"] == 0, cnt
    st = m.train_stats()
    assert st["step"] == 4 and np.isfinite(st["loss"])
