"""GRPO (dsc_grpo_advantages, dsc_grpo_loss, dsc_model_policy_step) against the independent
NumPy float64 reference of tests/reference/rl.py:

* the reference's gradient against central differences of its loss, every variant;
* advantages (group / batch / none scaling, sample std), equal-reward groups (advantage
  exactly 0; dropped with drop_zero_std_groups);
* the loss, its gradient and the statistics for each loss_type ("grpo", "dr_grpo",
  "dapo") with random log-probabilities, ragged masks, group sizes, epsilon_low/high,
  with and without old and reference log-probabilities, kept rows;
* the k3 KL term's value and gradient; clipping zeroes the gradient on the clipped side
  only; a masked-out or dropped row is the same as an absent one;
* the whole policy step on a tiny model: the gradient against central differences of the
  float64 reference model + reference loss, the step equal to its pieces (forward_train ->
  token_logprob -> grpo_loss -> token_logprob_backward -> backward -> optimizer_step) bit for
  bit, reproducible with seeds, dropped groups equal to removed ones;
* bad input (group size 1, empty completions, rewards of the wrong length, NaN rewards,
  beta without reference log-probabilities, ...) -> errors naming the argument.

Tolerances: float32 compute of O(1) quantities: loss rtol 1e-5, gradients rtol 1e-4 with
an atol of 1e-6 x the largest; the model FD check 2e-3 relative (as the composable test)."""

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c import _C
from _util import assert_close, host, poisoned, to_cuda
from reference import dense as dref
from reference import model as mref
from reference import rl as ref

VARIANTS = ["grpo", "dr_grpo", "dapo"]


def ragged_mask(rng, B, T, empty_rows=()):
    """Completion tokens: a prompt prefix of random length, then a completion of random length."""
    m = np.zeros((B, T), bool)
    for b in range(B):
        if b in empty_rows:
            continue
        s = int(rng.integers(0, T - 1))
        e = int(rng.integers(s + 1, T + 1))
        m[b, s:e] = True
    return m


def data(rng, B, T, spread=0.3):
    lp = (-np.abs(rng.standard_normal((B, T))) - 0.05).astype(np.float32)
    old = (lp + spread * rng.standard_normal((B, T))).astype(np.float32)
    rf = (lp + spread * rng.standard_normal((B, T))).astype(np.float32)
    adv = rng.standard_normal(B).astype(np.float32)
    return lp, old, rf, adv


# ----------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("loss_type", VARIANTS)
@pytest.mark.parametrize("with_old", [False, True])
def test_reference_gradient_is_the_derivative(rng, loss_type, with_old):
    B, T = 6, 7
    lp, old, rf, adv = (ref.f64(x) for x in data(rng, B, T, 0.2))
    mask = ragged_mask(rng, B, T)
    kw = dict(old=old if with_old else None, ref=rf, loss_type=loss_type, eps_low=0.2, eps_high=0.28, beta=0.04,
              Lmax=9)
    g = ref.grpo_loss_grad(lp, adv, mask, **kw)
    # without old log-probabilities rho = exp(lp - stop_gradient(lp)): at the point itself,
    # the derivative of the loss with old fixed to lp
    kw_fd = dict(kw, old=kw["old"] if with_old else lp.copy())
    fd = dref.central_fd(lambda x: np.array(ref.grpo_loss(x, adv, mask, **kw_fd)), [lp], 0)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [2, 3, 8])
def test_advantages_match_reference(rng, scale, G):
    r = rng.standard_normal(4 * G).astype(np.float32)
    r[:G] = r[0]  # one equal-reward group
    adv, keep = dsc.grpo_advantages(r, G, scale_rewards=scale)
    want, wkeep = ref.grpo_advantages(r, G, scale)
    assert adv.dtype == np.float32 and keep.dtype == np.int32
    assert_close(adv, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(keep, 1)
    adv2, keep2 = dsc.grpo_advantages(r, G, scale_rewards=scale, drop_zero_std_groups=True)
    np.testing.assert_array_equal(adv2, adv)
    np.testing.assert_array_equal(keep2, ref.grpo_advantages(r, G, scale, drop=True)[1])
    np.testing.assert_array_equal(keep2[:G], 0)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, -3.7, 1e6])
def test_equal_reward_groups_have_zero_advantage(value):
    r = np.full(16, value, np.float32)
    r[8:] = np.linspace(0, 1, 8)
    for scale in ("group", "batch", "none"):
        adv, keep = dsc.grpo_advantages(r, 8, scale_rewards=scale, drop_zero_std_groups=True)
        np.testing.assert_array_equal(adv[:8], 0.0)  # exactly: the mean of equal floats is that float
        np.testing.assert_array_equal(keep, [0] * 8 + [1] * 8)


def test_advantages_poisoned_outputs_written(rng):
    r = rng.standard_normal(6).astype(np.float32)
    a, k = poisoned((6,)), np.full(6, -7, np.int32)
    _C.grpo_advantages((2, .2, .2, 0., 0, 3, 0, 1e-4, 1), r, a, k)
    assert np.isfinite(a).all() and set(k.tolist()) <= {0, 1}


def test_advantage_errors(rng):
    r = rng.standard_normal(8).astype(np.float32)
    with pytest.raises(ValueError, match="group_size: expected an int >= 2"):
        dsc.grpo_advantages(r, 1)
    with pytest.raises(ValueError, match=r"rewards: expected a positive multiple of p->group_size = 3"):
        dsc.grpo_advantages(r, 3)
    r[5] = np.nan
    with pytest.raises(ValueError, match="rewards: expected finite values, got a NaN or infinity at index 5"):
        dsc.grpo_advantages(r, 4)
    r[5] = np.inf
    with pytest.raises(ValueError, match="index 5"):
        dsc.grpo_advantages(r, 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        dsc.grpo_advantages(r, 4, scale_rewards="max")


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("loss_type", VARIANTS)
@pytest.mark.parametrize("with_old", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("B,T", [(4, 5), (16, 9), (3, 33)])
def test_loss_and_gradient_match_reference(rng, loss_type, with_old, beta, B, T):
    lp, old, rf, adv = data(rng, B, T)
    mask = ragged_mask(rng, B, T)
    eps_low, eps_high, Lmax = 0.2, 0.28, T + 3
    old_ = old if with_old else None
    loss, dlp, st = dsc.grpo_loss(lp, adv, mask, old_logprobs=old_, ref_logprobs=rf, loss_type=loss_type,
                                  epsilon=eps_low, epsilon_high=eps_high, beta=beta, max_completion_length=Lmax)
    kw = dict(old=old_, ref=rf, loss_type=loss_type, eps_low=eps_low, eps_high=eps_high, beta=beta, Lmax=Lmax)
    want = ref.grpo_loss(lp, adv, mask, **kw)
    wg = ref.grpo_loss_grad(lp, adv, mask, **kw)
    assert loss.shape == () and loss.dtype == np.float32
    assert abs(float(loss) - want) <= 1e-5 * abs(want) + 1e-6, (float(loss), want)
    assert_close(dlp, wg, rtol=1e-4, atol=1e-6 * np.abs(wg).max())
    np.testing.assert_array_equal(dlp[~mask], 0.0)
    ws = ref.grpo_stats(lp, adv, mask, old_, rf, eps_low, eps_high)
    assert st["loss"] == float(loss)
    for k, v in ws.items():
        assert abs(st[k] - v) <= 1e-5 * abs(v) + 1e-6, (k, st[k], v)


@pytest.mark.parametrize("loss_type", VARIANTS)
def test_targets_form_equals_mask_form(rng, loss_type):
    lp, old, _, adv = data(rng, 5, 6)
    mask = ragged_mask(rng, 5, 6)
    targets = np.where(mask, rng.integers(0, 50, mask.shape), -100).astype(np.int64)
    a = dsc.grpo_loss(lp, adv, mask, old_logprobs=old, loss_type=loss_type)
    b = dsc.grpo_loss(lp, adv, targets=targets, old_logprobs=old, loss_type=loss_type)
    assert float(a[0]) == float(b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_loss_types_differ_as_documented(rng):
    """Same tokens, three normalizations: grpo = mean of row means, dr_grpo = sum / (S *
    Lmax), dapo = sum / N_tok; with equal row lengths and Lmax = that length all agree."""
    lp, old, _, adv = data(rng, 4, 6)
    full = np.ones((4, 6), bool)
    vals = [float(dsc.grpo_loss(lp, adv, full, old_logprobs=old, loss_type=t, max_completion_length=6)[0])
            for t in VARIANTS]
    assert max(vals) - min(vals) <= 1e-6 * max(1.0, abs(vals[0]))
    ragged = ragged_mask(rng, 4, 6)
    vals = [float(dsc.grpo_loss(lp, adv, ragged, old_logprobs=old, loss_type=t)[0]) for t in VARIANTS]
    assert len({round(v, 6) for v in vals}) == 3


def test_kl_term_value_and_gradient(rng):
    """With zero advantages the loss is beta x the k3 KL alone: its value is >= 0 per token,
    0 where ref == logp, and its gradient is beta (1 - exp(ref - logp)) w."""
    B, T = 5, 8
    lp, _, rf, _ = data(rng, B, T, 0.5)
    rf[0] = lp[0]  # one row identical to the reference: KL 0 and zero gradient there
    mask = np.ones((B, T), bool)
    zero = np.zeros(B, np.float32)
    beta = 0.3
    loss, dlp, st = dsc.grpo_loss(lp, zero, mask, ref_logprobs=rf, beta=beta, loss_type="dapo")
    x = ref.f64(rf) - ref.f64(lp)
    k3 = np.exp(x) - x - 1
    assert (k3 >= 0).all()
    assert abs(float(loss) - beta * k3.mean()) <= 1e-6 * beta * k3.mean()
    assert abs(st["kl"] - k3.mean()) <= 1e-6 * k3.mean()
    assert_close(dlp, beta * (1 - np.exp(x)) / (B * T), rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(dlp[0], 0.0)
    # beta = 0: the KL is still reported, but neither in the loss nor in the gradient
    loss0, dlp0, st0 = dsc.grpo_loss(lp, zero, mask, ref_logprobs=rf, beta=0.0)
    assert float(loss0) == 0.0 and abs(st0["kl"] - st["kl"]) <= 1e-7
    np.testing.assert_array_equal(dlp0, 0.0)


def test_clipping_zeroes_the_gradient_on_the_clipped_side(rng):
    """A > 0: tokens with rho > 1 + eps_high have no gradient, rho < 1 - eps_low keep theirs;
    A < 0 the other way round (the min keeps the pessimistic branch)."""
    T = 6
    lp = np.full((2, T), -1.0, np.float32)
    log_rho = np.log(np.array([0.5, 0.79, 0.95, 1.05, 1.27, 1.6]))
    old = (lp - log_rho).astype(np.float32)
    mask = np.ones((2, T), bool)
    adv = np.array([1.0, -1.0], np.float32)
    _, dlp, st = dsc.grpo_loss(lp, adv, mask, old_logprobs=old, epsilon=0.2, epsilon_high=0.28)
    rho = np.exp(log_rho)
    assert (dlp[0, rho > 1.28] == 0).all() and (dlp[0, rho <= 1.28] != 0).all()
    assert (dlp[1, rho < 0.8] == 0).all() and (dlp[1, rho >= 0.8] != 0).all()
    assert st["clip_high"] == pytest.approx(1 / 12) and st["clip_low"] == pytest.approx(2 / 12)


@pytest.mark.parametrize("loss_type", VARIANTS)
def test_masked_out_and_dropped_rows_are_absent(rng, loss_type):
    B, T = 6, 7
    lp, old, rf, adv = data(rng, B, T)
    mask = ragged_mask(rng, B, T, empty_rows=(2,))
    keep = np.array([1, 1, 1, 0, 1, 1], np.int32)
    kw = dict(old_logprobs=None, loss_type=loss_type, beta=0.04, max_completion_length=T)
    loss, dlp, st = dsc.grpo_loss(lp, adv, mask, ref_logprobs=rf, keep=keep, **kw)
    rows = [0, 1, 4, 5]
    loss2, dlp2, st2 = dsc.grpo_loss(np.ascontiguousarray(lp[rows]), np.ascontiguousarray(adv[rows]),
                                     mask[rows], ref_logprobs=np.ascontiguousarray(rf[rows]), **kw)
    assert float(loss) == pytest.approx(float(loss2), rel=1e-6, abs=1e-7)
    assert_close(dlp[rows], dlp2, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(dlp[[2, 3]], 0.0)
    assert st["sequences"] == 4 and st["tokens"] == mask[rows].sum()


def test_nothing_counted_gives_zero(rng):
    lp, _, _, adv = data(rng, 3, 4)
    loss, dlp, st = dsc.grpo_loss(lp, adv, np.zeros((3, 4), bool))
    assert float(loss) == 0.0 and st["tokens"] == 0 and st["sequences"] == 0
    np.testing.assert_array_equal(dlp, 0.0)


def test_loss_poisoned_outputs_are_written(rng):
    lp, old, rf, adv = data(rng, 4, 5)
    mask = ragged_mask(rng, 4, 5).astype(np.int32)
    loss, dl, st = poisoned(()), poisoned((4, 5)), poisoned((9,))
    _C.grpo_loss((0, .2, .2, .04, 0, 2, 0, 1e-4, 0), lp, old, rf, adv, mask, 0, None, loss, dl, st)
    assert np.isfinite(loss) and np.isfinite(dl).all() and np.isfinite(st).all()


def test_nan_logprob_propagates(rng):
    lp, old, _, adv = data(rng, 3, 4)
    lp[1, 2] = np.nan
    mask = np.ones((3, 4), bool)
    loss, dlp, _ = dsc.grpo_loss(lp, adv, mask, old_logprobs=old)
    assert np.isnan(loss) and np.isnan(dlp[1, 2])


def test_loss_errors(rng):
    lp, old, rf, adv = data(rng, 4, 5)
    mask = np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="ref_logprobs: expected the reference model's log-probabilities"):
        dsc.grpo_loss(lp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match=r"advantages: expected shape \(4\)"):
        dsc.grpo_loss(lp, adv[:3], mask)
    with pytest.raises(ValueError, match=r"old_logprobs: expected the shape of logprobs \(4, 5\), got \(4, 4\)"):
        dsc.grpo_loss(lp, adv, mask, old_logprobs=old[:, :4].copy())
    with pytest.raises(ValueError, match=r"targets: expected the shape of logprobs \(4, 5\)"):
        dsc.grpo_loss(lp, adv, mask[:, :3])
    with pytest.raises(ValueError, match="loss_type: expected one of"):
        dsc.grpo_loss(lp, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match=r"epsilon: expected a number in \(0, 1\)"):
        dsc.grpo_loss(lp, adv, mask, epsilon=1.5)
    with pytest.raises(ValueError, match="mask, targets: expected exactly one"):
        dsc.grpo_loss(lp, adv)
    with pytest.raises(TypeError, match="logprobs: expected"):
        dsc.grpo_loss(lp.astype(np.float64), adv, mask)
    with pytest.raises(ValueError, match="p->group_size: expected >= 2"):
        _C.grpo_loss((0, .2, .2, 0., 0, 1, 0, 1e-4, 0), lp, None, None, adv, mask.astype(np.int32), 0, None,
                     np.zeros((), np.float32), None, None)


@pytest.mark.cuda
@pytest.mark.parametrize("loss_type", VARIANTS)
def test_cuda_matches_cpu(rng, loss_type):
    lp, old, rf, adv = data(rng, 24, 40)
    mask = ragged_mask(rng, 24, 40).astype(np.int32)
    keep = (rng.random(24) > 0.2).astype(np.int32)
    kw = dict(old_logprobs=old, ref_logprobs=rf, beta=0.04, loss_type=loss_type, epsilon_high=0.28)
    l0, d0, s0 = dsc.grpo_loss(lp, adv, mask, keep=keep, **kw)
    l1, d1, s1 = dsc.grpo_loss(to_cuda(lp), to_cuda(adv), to_cuda(mask), keep=to_cuda(keep),
                               **{k: to_cuda(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    assert abs(float(host(l1)) - float(l0)) <= 1e-5 * abs(float(l0)) + 1e-7
    assert_close(host(d1), d0, rtol=1e-5, atol=1e-9)
    for k in s0:
        assert s1[k] == pytest.approx(s0[k], rel=1e-5, abs=1e-7), k
    r = rng.standard_normal(32).astype(np.float32)
    for scale in ("group", "batch", "none"):
        a0, k0 = dsc.grpo_advantages(r, 8, scale_rewards=scale)
        a1, k1 = dsc.grpo_advantages(to_cuda(r), 8, scale_rewards=scale)
        np.testing.assert_array_equal(host(a1), a0)


# ----------------------------------------------------------------------------- the model's policy step


def tiny_cfg(**kw):
    keys = dict(vocab_size=24, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2, q_lora_rank=16,
                kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_attention_heads=2,
                initializer_range=0.2, num_nextn_predict_layers=1, max_position_embeddings=64)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def rollout_batch(rng, V, groups=2, G=4, T=10):
    """Completions of random lengths after prompts of random lengths: tokens, targets (the
    next token at completion positions, -100 elsewhere) and rewards."""
    B = groups * G
    tok = rng.integers(3, V, (B, T)).astype(np.int32)
    tgt = np.full((B, T), -100, np.int32)
    for b in range(B):
        p = int(rng.integers(2, 5))
        c = int(rng.integers(1, T - p + 1))
        tgt[b, p - 1:p - 1 + c] = tok[b, p:p + c]
    rew = rng.random(B).astype(np.float32)
    return tok, tgt, rew


def test_policy_step_gradient_matches_finite_differences(rng):
    """lr = 0: the step leaves the weights, and model.grad() is dL/dtheta of the GRPO loss
    of the batch (old and reference log-probabilities given, so the ratio and the KL are
    not trivial), compared with central differences of the float64 reference model."""
    cfg = tiny_cfg()
    m = dsc.Model(cfg, seed=3)
    for k, v in m.parameters().items():
        if v.ndim == 1:
            v[...] = 0.05 * rng.standard_normal(v.shape) if k.endswith("bias") else 1 + 0.2 * rng.standard_normal(v.shape)
    tok, tgt, rew = rollout_batch(rng, cfg.vocab_size)
    lp0 = m.token_logprobs(tok, tgt)
    old = (lp0 + 0.1 * rng.standard_normal(lp0.shape) * (tgt != -100)).astype(np.float32)
    rf = (lp0 + 0.2 * rng.standard_normal(lp0.shape) * (tgt != -100)).astype(np.float32)
    kw = dict(group_size=4, loss_type="grpo", epsilon=0.2, epsilon_high=0.28, beta=0.05)
    st = m.policy_step(tok, tgt, rew, old_logprobs=old, ref_logprobs=rf, lr=0.0, bias_update_rate=0.0, **kw)
    P = {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}
    adv, _ = ref.grpo_advantages(rew, 4)
    mask = tgt != -100

    def loss_of(P):
        lg = mref.forward(P, cfg, tok)
        lp, _ = ref.token_logprob(lg, tgt)
        return ref.grpo_loss(lp, adv, mask, old=old, ref=rf, loss_type="grpo", eps_low=0.2, eps_high=0.28,
                             beta=0.05)

    assert abs(st["loss"] - loss_of(P)) <= 1e-4 * max(1.0, abs(st["loss"]))
    for name in ("lm_head.weight", "model.layers.0.self_attn.q_b_proj.weight", "model.layers.1.mlp.experts.1.up_proj.weight",
                 "model.norm.weight", "model.embed_tokens.weight"):
        g = np.asarray(m.grad(name), np.float64).ravel()
        for i in list(np.argsort(-np.abs(g))[:2]) + list(rng.choice(g.size, 2, replace=False)):
            h = 1e-5 * max(1.0, abs(P[name].ravel()[i]))
            Pp, Pm = dict(P), dict(P)
            Pp[name] = P[name].copy().ravel()
            Pp[name][i] += h
            Pp[name] = Pp[name].reshape(P[name].shape)
            Pm[name] = P[name].copy().ravel()
            Pm[name][i] -= h
            Pm[name] = Pm[name].reshape(P[name].shape)
            fd = (loss_of(Pp) - loss_of(Pm)) / (2 * h)
            assert abs(g[i] - fd) <= 2e-3 * max(abs(fd), 1e-3 * np.abs(g).max()), (name, i, g[i], fd)


@pytest.mark.parametrize("loss_type", VARIANTS)
def test_policy_step_equals_its_pieces(rng, loss_type):
    """dsc_model_policy_step == forward_train, token_logprob, grpo_advantages, grpo_loss,
    token_logprob_backward, backward, optimizer_step: the same weights bit for bit."""
    cfg = tiny_cfg()
    a, b = dsc.Model(cfg, seed=5), dsc.Model(cfg, seed=5)
    ref_model = a.copy()
    kw = dict(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.02)
    for _ in range(3):
        tok, tgt, rew = rollout_batch(rng, cfg.vocab_size)
        rl = ref_model.token_logprobs(tok, tgt)
        sa = a.policy_step(tok, tgt, rew, group_size=4, ref_logprobs=rl, lr=3e-3, **kw)
        lg, _ = b.forward_train(tok)
        lp, ent = dsc.token_logprob(lg, tgt, return_entropy=True)
        adv, _ = dsc.grpo_advantages(rew, 4)
        loss, dlp, st = dsc.grpo_loss(lp, adv, targets=tgt, ref_logprobs=rl, **kw)
        b.backward(dsc.token_logprob_backward(lg, tgt, dlp))
        sb = b.optimizer_step(lr=3e-3, weight_decay=0.0)
        assert sa["loss"] == float(loss) and sa["kl"] == st["kl"] and sa["grad_norm"] == sb["grad_norm"]
        assert sa["entropy"] == pytest.approx(float(ent[tgt != -100].mean()), rel=1e-6)
        assert sa["tokens"] == int((tgt != -100).sum()) and sa["sequences"] == 8
        assert sa["reward_mean"] == pytest.approx(rew.mean(), rel=1e-6)
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k], err_msg=k)


def test_policy_step_is_reproducible(rng):
    cfg = tiny_cfg()
    batches = [rollout_batch(rng, cfg.vocab_size) for _ in range(3)]
    runs = []
    for _ in range(2):
        m = dsc.Model(cfg, seed=11)
        stats = [m.policy_step(*b, group_size=4, lr=1e-2, beta=0.0) for b in batches]
        runs.append((m.state_dict(), [s["loss"] for s in stats]))
    assert runs[0][1] == runs[1][1]
    for k in runs[0][0]:
        np.testing.assert_array_equal(runs[0][0][k], runs[1][0][k], err_msg=k)


def test_dropped_groups_equal_removed_groups(rng):
    cfg = tiny_cfg()
    tok, tgt, rew = rollout_batch(rng, cfg.vocab_size, groups=3)
    rew[4:8] = 1.0  # group 1: all equal
    a, b = dsc.Model(cfg, seed=2), dsc.Model(cfg, seed=2)
    sa = a.policy_step(tok, tgt, rew, group_size=4, drop_zero_std_groups=True, lr=1e-2)
    keep = np.r_[0:4, 8:12]
    sb = b.policy_step(tok[keep], tgt[keep], rew[keep], group_size=4, lr=1e-2)
    assert sa["groups_dropped"] == 1 and sa["sequences"] == 8 and sb["groups_dropped"] == 0
    assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-5, abs=1e-7)
    assert sa["grad_norm"] == pytest.approx(sb["grad_norm"], rel=1e-4)
    for k, v in a.parameters().items():
        np.testing.assert_allclose(v, b.parameters()[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_all_groups_dropped_is_no_update(rng):
    cfg = tiny_cfg()
    m = dsc.Model(cfg, seed=2)
    before = m.state_dict()
    tok, tgt, _ = rollout_batch(rng, cfg.vocab_size)
    st = m.policy_step(tok, tgt, np.ones(8, np.float32), group_size=4, drop_zero_std_groups=True)
    assert st["sequences"] == 0 and st["groups_dropped"] == 2 and st["step"] == 0 and m.step == 0
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_policy_step_bad_inputs_are_clear_errors(rng):
    cfg = tiny_cfg()
    m = dsc.Model(cfg, seed=2)
    tok, tgt, rew = rollout_batch(rng, cfg.vocab_size)
    before = m.state_dict()
    with pytest.raises(ValueError, match="group_size: expected an int >= 2"):
        m.policy_step(tok, tgt, rew, group_size=1)
    with pytest.raises(ValueError, match=r"rewards: expected shape \(8,\) \(one per completion\)"):
        m.policy_step(tok, tgt, rew[:7], group_size=4)
    bad = rew.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="dsc_model_policy_step: rewards: expected finite values, got nan at index 3"):
        m.policy_step(tok, tgt, bad, group_size=4)
    empty = tgt.copy()
    empty[5] = -100
    with pytest.raises(ValueError, match="targets: expected at least one completion token .* in row 5"):
        m.policy_step(tok, empty, rew, group_size=4)
    with pytest.raises(ValueError, match=r"tokens: expected a batch of whole groups \(a multiple of p->group_size = 3"):
        m.policy_step(tok, tgt, rew, group_size=3)
    with pytest.raises(ValueError, match="ref_logprobs: expected the reference model's log-probabilities"):
        m.policy_step(tok, tgt, rew, group_size=4, beta=0.01)
    with pytest.raises(ValueError, match=r"old_logprobs: expected shape \(8, 10\)"):
        m.policy_step(tok, tgt, rew, group_size=4, old_logprobs=np.zeros((8, 9), np.float32))
    with pytest.raises(ValueError, match=r"targets: expected ids in \[0, 24\) \(vocab_size\) or ignore_index"):
        m.policy_step(tok, np.where(tgt == -100, -100, 99), rew, group_size=4)
    with pytest.raises(ValueError, match="opt->lr"):
        m.policy_step(tok, tgt, rew, group_size=4, lr=float("nan"))
    with pytest.raises(ValueError, match="frozen"):
        m.freeze_fp8().policy_step(tok, tgt, rew, group_size=4)
    assert m.step == 0
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_token_logprobs_of_the_model(rng):
    cfg = tiny_cfg()
    m = dsc.Model(cfg, seed=4)
    tok, tgt, _ = rollout_batch(rng, cfg.vocab_size)
    lp = m.token_logprobs(tok, tgt)
    want, _ = ref.token_logprob(mref.forward(m.state_dict(), cfg, tok), tgt)
    assert_close(lp, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(lp, dsc.token_logprob(m.forward(tok), tgt))
    frozen = m.freeze_fp8()  # a frozen model (an FP8 teacher or reference) gives them too
    assert np.isfinite(frozen.token_logprobs(tok, tgt)).all()
