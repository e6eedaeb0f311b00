"""Deferred range checks of user index tensors (issue #15 item 4): in "deferred" mode a bad
index is only recorded on the device (first failure wins, no host wait), the op computes on
with the bad index treated as documented (never read or written out of bounds), and
dsc.check() raises the failure later with the immediate check's message."""
from __future__ import annotations

import re

import numpy as np
import pytest

import deepseek_c as dsc


def _devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=_devices())
def device(request):
    dev = request.param
    dsc.check(dev)  # start from an empty record
    dsc.set_check_mode("deferred", dev)
    yield dev
    dsc.set_check_mode("immediate", dev)
    try:
        dsc.check(dev)
    except ValueError:
        pass


def _on(dev, a):
    """a on dev (a NumPy array for the CPU, a dsc.Tensor copy on CUDA)."""
    a = np.ascontiguousarray(a)
    if dev == "cpu":
        return a
    t = dsc.empty(a.shape, str(a.dtype), dev)
    dsc._C.copy(t, a)
    return t


def _np(x):
    return dsc.to_numpy(x)


def _immediate_message(dev, fn):
    """The message the immediate check gives for fn() on dev."""
    dsc.set_check_mode("immediate", dev)
    try:
        with pytest.raises(ValueError) as e:
            fn()
    finally:
        dsc.set_check_mode("deferred", dev)
    return str(e.value)


def _deferred_message(dev, fn):
    """fn() in deferred mode returns; check() raises: (fn's outputs as NumPy, that message).
    The outputs are read only after the check: on CUDA every host wait of the op contexts
    (a copy to the host included) reports a pending failure, like dsc_context_synchronize."""
    out = fn()
    with pytest.raises(ValueError) as e:
        dsc.check(dev)
    dsc.check(dev)  # cleared: nothing more
    out = tuple(_np(x) for x in out) if isinstance(out, tuple) else _np(out)
    return out, str(e.value)


def test_modes_and_default():
    assert dsc.get_check_mode("cpu") == "immediate"
    with pytest.raises(ValueError, match="expected 'immediate' or 'deferred'"):
        dsc.set_check_mode("later", "cpu")
    dsc.set_check_mode("deferred", "cpu")
    try:
        assert dsc.get_check_mode("cpu") == "deferred"
    finally:
        dsc.set_check_mode("immediate", "cpu")
    with pytest.raises(ValueError, match="mode: expected DSC_CHECK_IMMEDIATE"):
        dsc._C.op_set_check_mode(1, 0, 7)


def test_immediate_mode_unchanged(rng):
    table = rng.standard_normal((5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"dsc_embedding_forward: ids: expected values in \[0, 5\), got 7 at position 1"):
        dsc.embedding(np.array([0, 7, 9], np.int32), table)
    dsc.check("cpu")  # immediate failures record nothing


def test_embedding_forward_backward(device, rng):
    V, D = 6, 4
    table = rng.standard_normal((V, D)).astype(np.float32)
    ids = np.array([[1, -3, 5], [9, 0, 2]], np.int64)
    t_d, i_d = _on(device, table), _on(device, ids)
    msg = _immediate_message(device, lambda: dsc.embedding(i_d, t_d))
    assert msg == "dsc_embedding_forward: ids: expected values in [0, 6), got -3 at position 1"
    out, got = _deferred_message(device, lambda: dsc.embedding(i_d, t_d))
    assert got == msg
    # bad ids: zero rows; good ids: exact copies
    ref = np.zeros((2, 3, D), np.float32)
    for (b, t), v in np.ndenumerate(ids):
        if 0 <= v < V:
            ref[b, t] = table[v]
    np.testing.assert_array_equal(out, ref)

    dout = rng.standard_normal((2, 3, D)).astype(np.float32)
    dout_d = _on(device, dout)
    _, ctx = dsc.embedding_forward(i_d, t_d)
    with pytest.raises(ValueError):
        dsc.check(device)
    dtable, got = _deferred_message(device, lambda: dsc.embedding_backward(dout_d, ctx))
    assert got == "dsc_embedding_backward: ids: expected values in [0, 6), got -3 at position 1"
    ref = np.zeros((V, D), np.float32)
    for (b, t), v in np.ndenumerate(ids):
        if 0 <= v < V:
            ref[v] += dout[b, t]
    np.testing.assert_allclose(dtable, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dt", [np.int32, np.int64])
def test_cross_entropy(device, rng, dt):
    N, V = 5, 7
    logits = rng.standard_normal((N, V)).astype(np.float32)
    targets = np.array([3, -100, 12, 0, 6], dt)  # 12 is bad
    lg, tg = _on(device, logits), _on(device, targets)
    msg = _immediate_message(device, lambda: dsc.cross_entropy(lg, tg))
    assert msg == ("dsc_cross_entropy: targets: expected values in [0, 7) or ignore_index (-100), "
                   "got 12 at position 2")
    (loss, dl), got = _deferred_message(device, lambda: tuple(dsc.cross_entropy(lg, tg)))
    assert got == msg
    # the bad row counts as ignored
    ok = targets.copy()
    ok[2] = -100
    loss_ref, dl_ref = dsc.cross_entropy(logits, ok)
    dsc.check(device)
    assert np.isfinite(loss).all() and np.isfinite(dl).all()
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dl, dl_ref, rtol=1e-5, atol=1e-7)
    assert (dl[2] == 0).all()


def test_token_logprob(device, rng):
    N, V = 4, 5
    logits = rng.standard_normal((N, V)).astype(np.float32)
    targets = np.array([1, 5, -1, 4], np.int64)  # ignore_index -1; 5 is bad
    lg, tg = _on(device, logits), _on(device, targets)
    msg = _immediate_message(device, lambda: dsc.token_logprob(lg, tg, ignore_index=-1))
    assert msg == ("dsc_token_logprob: targets: expected values in [0, 5) or ignore_index (-1), "
                   "got 5 at position 1")
    (lp, ent), got = _deferred_message(
        device, lambda: tuple(dsc.token_logprob(lg, tg, ignore_index=-1, return_entropy=True)))
    assert got == msg
    assert lp[1] == 0 and ent[1] == 0 and np.isfinite(lp).all()
    dlp = _on(device, rng.standard_normal(N).astype(np.float32))
    dl, got = _deferred_message(
        device, lambda: dsc.token_logprob_backward(lg, tg, dlp, ignore_index=-1))
    assert got == msg.replace("dsc_token_logprob:", "dsc_token_logprob_backward:")
    assert (dl[1] == 0).all() and np.isfinite(dl).all()


def test_rope_negative_position(device, rng):
    B, T, H, D = 1, 3, 2, 8
    x = rng.standard_normal((B, T, H, D)).astype(np.float32)
    pos = np.array([[0, -2, 4]], np.int32)
    xd, pd = _on(device, x), _on(device, pos)
    msg = _immediate_message(device, lambda: dsc.rope(xd, pd))
    assert msg == "dsc_rope_forward: positions: expected values in [0, 2147483647), got -2 at position 1"
    y, got = _deferred_message(device, lambda: dsc.rope(xd, pd))
    assert got == msg
    assert np.isfinite(y).all()  # rotated by the negative angle: no memory is indexed by positions
    ref = _np(dsc.rope(x, np.array([[0, 1, 4]], np.int32)))
    np.testing.assert_allclose(y[:, [0, 2]], ref[:, [0, 2]], rtol=1e-6, atol=1e-6)


def test_topk_kl(device, rng):
    N, V, K = 3, 9, 3
    logits = rng.standard_normal((N, V)).astype(np.float32)
    tidx = np.array([[0, 4, 8], [2, 20, 1], [7, 5, 3]], np.int64)  # 20 is bad (flat position 4)
    tlog = rng.standard_normal((N, K)).astype(np.float32)
    targets = np.array([1, 2, 3], np.int64)
    args = [_on(device, a) for a in (logits, tidx, tlog, targets)]
    msg = _immediate_message(device, lambda: dsc.topk_kl(*args))
    assert msg == "dsc_topk_kl: teacher_indices: expected values in [0, 9), got 20 at position 4"
    (loss, dl), got = _deferred_message(device, lambda: tuple(dsc.topk_kl(*args)))
    assert got == msg
    assert np.isfinite(loss).all() and np.isfinite(dl).all()
    # rows without a bad index are unchanged: compare with a run where row 1 is ignored
    ign = targets.copy()
    ign[1] = -100
    ok = tidx.copy()
    ok[1, 1] = 0
    l0, d0 = dsc.topk_kl(logits, ok, tlog, ign)
    dsc.check(device)
    np.testing.assert_allclose(dl[[0, 2]] * 3 / 2, d0[[0, 2]], rtol=1e-5, atol=1e-7)


def test_good_run_records_nothing(device, rng):
    table = _on(device, rng.standard_normal((4, 2)).astype(np.float32))
    ids = _on(device, np.array([0, 3, 1], np.int32))
    logits = _on(device, rng.standard_normal((2, 4)).astype(np.float32))
    targets = _on(device, np.array([1, 3], np.int32))
    dsc.op_counters(device, reset=True)
    dsc.embedding(ids, table)
    dsc.cross_entropy(logits, targets)
    c = dsc.op_counters(device)
    assert c["deferred_checks"] == 2 and c["index_checks"] == 0 and c["syncs"] == 0
    dsc.check(device)
    c = dsc.op_counters(device)
    assert c["check_reads"] == 1
    assert c["syncs"] == (1 if device == "cuda" else 0)
    dsc.check(device)  # nothing issued since: no read at all
    assert dsc.op_counters(device)["check_reads"] == 1


def test_first_failure_wins(device, rng):
    table = _on(device, rng.standard_normal((4, 2)).astype(np.float32))
    logits = _on(device, rng.standard_normal((3, 4)).astype(np.float32))
    ids1, t1 = _on(device, np.array([0, 1, 2, 8, 5], np.int32)), _on(device, np.array([9, 1, 1], np.int32))
    ids2, t2 = _on(device, np.array([-1, 0], np.int32)), _on(device, np.array([1, 1, 4], np.int32))
    dsc.embedding(ids1, table)  # first bad: position 3
    dsc.cross_entropy(logits, t1)  # bad at 0, later
    dsc.embedding(ids2, table)
    with pytest.raises(ValueError, match=re.escape(
            "dsc_embedding_forward: ids: expected values in [0, 4), got 8 at position 3")):
        dsc.check(device)
    # cleared: a later failure is the next one reported
    dsc.check(device)
    dsc.cross_entropy(logits, t2)
    with pytest.raises(ValueError, match="got 4 at position 2"):
        dsc.check(device)


def test_lowest_position_within_a_check(device, rng):
    n = 100_000
    ids = np.zeros(n, np.int32)
    ids[[70_000, 31_337, 99_999]] = [-5, 11, 12]
    table = _on(device, rng.standard_normal((8, 1)).astype(np.float32))
    ids_d = _on(device, ids)
    out = dsc.embedding(ids_d, table)
    with pytest.raises(ValueError, match="got 11 at position 31337"):
        dsc.check(device)
    out = _np(out)
    assert (out[[31_337, 70_000, 99_999]] == 0).all()


def test_synchronize_reports(device, rng):
    table = _on(device, rng.standard_normal((4, 2)).astype(np.float32))
    ids = _on(device, np.array([6], np.int32))
    dsc.embedding(ids, table)
    dev = dsc._arrays.parse_device(device)
    with pytest.raises(ValueError, match="got 6 at position 0"):
        dsc._C.synchronize(dev[0], dev[1])
    dsc.check(device)  # read by synchronize already


def test_model_capsule_check_mode():
    m = dsc.Model(dsc.ModelConfig.tiny(), device="cpu", seed=0)
    assert dsc._C.context_get_check_mode(m._cap) == 0
    dsc._C.context_set_check_mode(m._cap, 1)
    assert dsc._C.context_get_check_mode(m._cap) == 1
    dsc._C.context_check(m._cap)
    dsc._C.context_set_check_mode(m._cap, 0)
    with pytest.raises(ValueError):
        dsc._C.context_set_check_mode(m._cap, 2)


def test_debug_checks_force_immediate():
    """DSC_DEBUG_CHECKS=1: deferred mode is requested, the checks still raise at the call."""
    import subprocess
    import sys
    code = ("import numpy as np, deepseek_c as dsc\n"
            "dsc.set_check_mode('deferred')\n"
            "try:\n"
            "    dsc.embedding(np.array([3], np.int32), np.zeros((2, 2), np.float32))\n"
            "    print('no error')\n"
            "except ValueError as e:\n"
            "    print('raised:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "DSC_DEBUG_CHECKS": "1"})
    assert r.returncode == 0, r.stderr
    assert "raised: dsc_embedding_forward: ids: expected values in [0, 2), got 3 at position 0" in r.stdout


def test_grpo_rewards(device, rng):
    r = rng.standard_normal(8).astype(np.float32)
    r[5], r[6] = np.inf, np.nan
    rd = _on(device, r)
    msg = _immediate_message(device, lambda: dsc.grpo_advantages(rd, group_size=4))
    assert msg == "dsc_grpo_advantages: rewards: expected finite values, got a NaN or infinity at index 5"
    (adv, keep), got = _deferred_message(device, lambda: tuple(dsc.grpo_advantages(rd, group_size=4)))
    assert got == msg
    # the first group is finite and exact; the bad group's advantages are NaN (documented)
    ref, _ = dsc.grpo_advantages(r[:4], group_size=4)
    np.testing.assert_array_equal(adv[:4], ref)
    assert np.isnan(adv[4:]).all()


@pytest.mark.parametrize("dev", _devices())
def test_model_train_step_bad_token(dev, rng):
    """A bad token id fails the training step with the immediate check's message on every
    device (on a GPU the check is deferred to the step's loss copy) and leaves the weights as
    they were; the next good step trains."""
    cfg = dsc.ModelConfig.tiny(vocab_size=32)
    m = dsc.Model(cfg, seed=0, device=dev)
    tok = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
    tgt = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
    bad = tok.copy()
    bad[1, 5] = cfg.vocab_size + 3
    w0 = np.array(dsc.to_numpy(m.state_dict()["model.embed_tokens.weight"]), copy=True)
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 32\) \(vocab_size\), got 35 at position 13"):
        m.train_step(bad, tgt, lr=1e-2)
    np.testing.assert_array_equal(dsc.to_numpy(m.state_dict()["model.embed_tokens.weight"]), w0)
    loss = m.train_step(tok, tgt, lr=1e-2)["loss"]
    assert np.isfinite(loss)
