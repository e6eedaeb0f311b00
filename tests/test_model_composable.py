"""The composable training step: forward_train / backward / optimizer_step (C:
dsc_model_forward_train, dsc_model_backward, dsc_model_optimizer_step) are the pieces of
train_step: with the cross-entropy gradients as dL/dlogits they give train_step's
gradients and update bit for bit; backward is the exact derivative of a linear functional
of the logits (finite differences of the float64 reference model); misuse is a clear error."""

import numpy as np
import pytest

import deepseek_c as dsc
from reference import model as ref


def small_cfg(**kw):
    keys = dict(vocab_size=64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, q_lora_rank=32,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2,
                initializer_range=0.1, num_nextn_predict_layers=2)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def ce_grad(logits, targets, scale):
    """dsc.cross_entropy's gradient of the mean loss over non-ignored rows, times scale."""
    V = logits.shape[-1]
    loss, g = dsc.cross_entropy(np.ascontiguousarray(logits.reshape(-1, V)),
                                np.ascontiguousarray(targets.reshape(-1).astype(np.int32)), ignore_index=-100,
                                grad_scale=scale)
    return float(loss), g.reshape(logits.shape)


def batch(cfg, rng, B=3, T=12):
    tok = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))
    y[:, :2] = -100
    return tok, y


@pytest.mark.parametrize("fp8", [False, True])
def test_pieces_equal_train_step(rng, fp8):
    cfg = small_cfg()
    a, b = dsc.Model(cfg, seed=1, fp8=fp8), dsc.Model(cfg, seed=1, fp8=fp8)
    lam = 0.3
    for _ in range(3):
        tok, y = batch(cfg, rng)
        sa = a.train_step(tok, y, lr=2e-3, mtp_lambda=lam)
        lg, mtp = b.forward_train(tok, n_mtp=2)
        loss, dl = ce_grad(lg, y, 1.0)
        dm = []
        for d, lgd in enumerate(mtp):
            _, g = ce_grad(lgd, y[:, d + 1:], lam / 2)
            dm.append(g)
        b.backward(dl, dm)
        sb = b.optimizer_step(lr=2e-3)
        assert loss == sa["loss"]
        assert sb["grad_norm"] == sa["grad_norm"] and sb["step"] == sa["step"]
        assert sb["load_imbalance"] == sa["load_imbalance"]
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k], err_msg=k)
        if "e_score_correction_bias" not in k:
            for x, z in zip(a.optimizer_state(k), b.optimizer_state(k)):
                np.testing.assert_array_equal(x, z, err_msg=k)


def test_forward_train_logits_equal_forward(rng):
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=2)
    tok, _ = batch(cfg, rng)
    lg, mtp = m.forward_train(tok, n_mtp=2)
    np.testing.assert_array_equal(lg, m.forward(tok))
    want = m.forward_mtp(tok)
    for d in range(2):
        np.testing.assert_array_equal(mtp[d], want[d])


def test_backward_is_the_derivative_of_a_logit_functional(rng):
    """L = <W, logits> + <W1, mtp_logits[0]> for random W: the gradient of a few parameters
    against central differences of the float64 reference."""
    cfg = small_cfg(num_nextn_predict_layers=1)
    m = dsc.Model(cfg, seed=3)
    p = m.parameters()
    for k, v in p.items():
        if v.ndim == 1:
            v[...] = 1 + 0.2 * rng.standard_normal(v.shape) if not k.endswith("bias") else 0.05 * rng.standard_normal(v.shape)
    tok, _ = batch(cfg, rng, B=2, T=8)
    lg, mtp = m.forward_train(tok, n_mtp=1)
    W = rng.standard_normal(lg.shape).astype(np.float32)
    W1 = rng.standard_normal(mtp[0].shape).astype(np.float32)
    m.backward(W, [W1])
    P = {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}

    def functional(P):
        l0, l1 = ref.forward(P, cfg, tok, with_mtp=True)
        return float((W * l0).sum() + (W1 * l1[0]).sum())

    for name in ("lm_head.weight", "model.layers.0.self_attn.kv_b_proj.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
                 "model.layers.2.eh_proj.weight", "model.norm.weight", "model.layers.1.post_attention_layernorm.weight"):
        g = np.asarray(m.grad(name), np.float64).ravel()
        idx = rng.choice(g.size, 4, replace=False)
        for i in idx:
            h = 1e-5 * max(1.0, abs(P[name].ravel()[i]))
            Pp = dict(P)
            Pp[name] = P[name].copy().ravel()
            Pp[name][i] += h
            Pp[name] = Pp[name].reshape(P[name].shape)
            Pm = dict(P)
            Pm[name] = P[name].copy().ravel()
            Pm[name][i] -= h
            Pm[name] = Pm[name].reshape(P[name].shape)
            fd = (functional(Pp) - functional(Pm)) / (2 * h)
            assert abs(g[i] - fd) <= 2e-3 * max(1.0, abs(fd)), (name, i, g[i], fd)


def test_accumulate_and_routing_statistics(rng):
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=4)
    t1, _ = batch(cfg, rng)
    t2, _ = batch(cfg, rng)
    lg1, _ = m.forward_train(t1)
    W = rng.standard_normal(lg1.shape).astype(np.float32)
    m.backward(W)
    names = [k for k in m.parameters() if "e_score_correction_bias" not in k]
    g1 = {k: np.array(m.grad(k)) for k in names}
    lg2, _ = m.forward_train(t2)
    m.backward(W, accumulate=True)
    g12 = {k: np.array(m.grad(k)) for k in names}
    m.forward_train(t2)
    m.backward(W)
    for k in g1:
        np.testing.assert_allclose(g12[k], g1[k] + np.array(m.grad(k)), rtol=1e-5, atol=1e-6, err_msg=k)


def test_misuse_is_a_clear_error(rng):
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=5)
    tok, _ = batch(cfg, rng)
    W = np.ones((3, 12, 64), np.float32)
    with pytest.raises(ValueError, match="dsc_model_backward.*forward_train"):
        m.backward(W)
    with pytest.raises(ValueError, match="dsc_model_optimizer_step.*gradients"):
        m.optimizer_step()
    m.forward_train(tok)
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(3, 12, 64\)"):
        m.backward(np.ones((3, 12, 63), np.float32))
    with pytest.raises(ValueError, match="n_mtp: expected 0..0"):
        m.backward(W, [np.ones((3, 11, 64), np.float32)])
    m.backward(W)
    with pytest.raises(ValueError, match="one backward per forward"):
        m.backward(W)
    m.forward_train(tok, n_mtp=1)
    m.forward(tok)  # another forward discards what forward_train kept
    with pytest.raises(ValueError, match="forward_train"):
        m.backward(W)
    with pytest.raises(ValueError, match="n_mtp"):
        m.forward_train(tok, n_mtp=3)
    frozen = m.freeze_fp8()
    with pytest.raises(ValueError, match="frozen"):
        frozen.forward_train(tok)
