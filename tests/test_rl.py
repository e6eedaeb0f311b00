"""GRPO trainer, verifiable rewards and distillation drivers (deepseek_c.rl, .rewards,
.distill) on tiny models: rewards against hand-computed values, the training batch against a
plain-Python reference, GRPO raising a verifiable reward and being reproducible from its seed,
the KL to the frozen reference, bad input -> clear errors, rejection sampling keeping only
verified samples, teacher top-k against NumPy, and logit distillation lowering the KL."""

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c import data as D
from deepseek_c import distill, rewards, train
from deepseek_c.rl import IGNORE_INDEX, build_batch

TOK = D.CharTokenizer()


def tiny_cfg(**kw):
    keys = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                num_hidden_layers=2, n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2,
                q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                num_attention_heads=2, initializer_range=0.1, num_nextn_predict_layers=1,
                max_position_embeddings=64, bos_token_id=TOK.bos_id, eos_token_id=TOK.eos_id)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def starts_with_7(prompts, completions):
    """A verifiable reward a random model rarely earns and RL learns quickly."""
    return [1.0 if c.startswith("7") else 0.0 for c in completions]


# ----------------------------------------------------------------------------- rewards


def test_exact_answer_and_format_rewards():
    task = D.Addition(digits=2)
    prompts = ["12+34=", "12+34=", "99+99=", "5+7=", "5+7="]
    comps = ["46", "47", "198", "12", "1x"]
    fin = [True, True, False, True, True]
    ex = rewards.exact_answer(task)(prompts, comps)
    fm = rewards.format(task)(prompts, comps, fin)
    assert ex.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert fm.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]          # 198 was cut (not finished); "1x" is no number
    r = rewards.exact_answer(task) + 0.1 * rewards.format(task) - 0.5
    total, terms = r.evaluate(prompts, comps, fin)
    np.testing.assert_allclose(total, ex + 0.1 * fm - 0.5, rtol=0, atol=1e-15)
    assert set(terms) == {"exact_answer", "format"}
    assert r.names == ["exact_answer", "format"]


def test_reward_algebra_with_callables():
    r = 2.0 * rewards.Reward(starts_with_7) + rewards.length_penalty(2) - 0.25
    out = r(["a", "b", "c"], ["7", "x", "7777"])
    np.testing.assert_allclose(out, [1.75, -0.25, 2.0 - (4 - 2) / 2 - 0.25])
    assert rewards.as_reward(starts_with_7).names == ["starts_with_7"]


def test_sorting_and_reverse_format():
    s = rewards.format(D.Sorting(length=4))
    assert s(["s:4213=", "s:4213="], ["1234", "123"], [True, True]).tolist() == [1.0, 0.0]
    rv = rewards.format(D.Reverse(length=3))
    assert rv(["r:abc=", "r:abc="], ["cba", "cb1"], [True, True]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bad, msg", [
    (lambda p, c: [1.0] * (len(c) - 1), "expected 3 values"),
    (lambda p, c: [float("nan")] * len(c), "expected finite values"),
    (lambda p, c: ["x"] * len(c), "expected a sequence of numbers"),
])
def test_bad_rewards_are_clear_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        rewards.Reward(bad, "bad")(["a"] * 3, ["b"] * 3)


def test_reward_argument_errors():
    with pytest.raises(TypeError, match="task: expected a deepseek_c.data.Task"):
        rewards.exact_answer("addition")
    with pytest.raises(TypeError, match="fn: expected a callable"):
        rewards.Reward(3)
    with pytest.raises(ValueError, match="prompts: expected 2 prompts"):
        rewards.Reward(starts_with_7)(["a"], ["b", "c"])
    with pytest.raises(ValueError, match="max_chars: expected an int >= 1"):
        rewards.length_penalty(0)


# ----------------------------------------------------------------------------- the batch


def test_build_batch_matches_reference(rng):
    P = [list(rng.integers(3, 30, int(rng.integers(1, 5)))) for _ in range(5)]
    C = [list(rng.integers(3, 30, int(rng.integers(1, 6)))) for _ in range(5)]
    tok, tgt = build_batch(P, C, pad_id=0)
    T = max(len(p) + len(c) for p, c in zip(P, C))
    assert tok.shape == tgt.shape == (5, T)
    for b in range(5):
        seq = P[b] + C[b]
        want_tok = seq + [0] * (T - len(seq))
        want_tgt = [IGNORE_INDEX] * T
        for i in range(len(P[b]), len(seq)):
            want_tgt[i - 1] = seq[i]                       # position i - 1 predicts completion token i
        assert tok[b].tolist() == want_tok
        assert tgt[b].tolist() == want_tgt
    with pytest.raises(ValueError, match=r"completion_ids\[1\]: expected at least one token"):
        build_batch([[1], [1]], [[5], []])


# ----------------------------------------------------------------------------- GRPO


def run_grpo(steps, seed=3, **kw):
    m = dsc.Model(tiny_cfg(), seed=0)
    args = dict(group_size=8, beta=0.0, lr=3e-3, max_new_tokens=4, loss_type="grpo", seed=seed)
    args.update(kw)
    tr = dsc.GRPO(m, reward=starts_with_7, **args)
    prompts = [f"{a}+{b}=" for a, b in [(1, 2), (34, 5), (7, 77), (60, 9)]]
    return tr, [tr.step(prompts) for _ in range(steps)]


def test_grpo_raises_a_verifiable_reward():
    """The policy starts near chance (1 / vocabulary) and learns to start with '7'."""
    _, hist = run_grpo(40)
    r = np.array([h["reward_mean"] for h in hist])
    assert r[:5].mean() < 0.2
    assert r[-5:].mean() > 0.8, r
    assert all(h["rollout_tokens"] > 0 and h["update_tokens_per_s"] > 0 for h in hist)


def test_grpo_is_reproducible_from_its_seed():
    _, h1 = run_grpo(6)
    tr2, h2 = run_grpo(6)
    _, h3 = run_grpo(6, seed=4)
    keys = ("reward_mean", "loss", "grad_norm", "completion_length", "entropy")
    assert [[h[k] for k in keys] for h in h1] == [[h[k] for k in keys] for h in h2]
    assert [h["reward_mean"] for h in h1] != [h["reward_mean"] for h in h3] or \
        [h["loss"] for h in h1] != [h["loss"] for h in h3]
    assert tr2.steps_done == 6 and len(tr2.history) == 6


def test_grpo_kl_to_the_frozen_reference():
    """beta > 0: the reference is a frozen copy, so the KL starts at 0 and grows as the
    policy moves; the reference's weights do not change."""
    tr, hist = run_grpo(8, beta=0.05, loss_type="dapo", epsilon_high=0.28)
    assert tr.ref_model is not None and tr.ref_model is not tr.model
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert max(h["kl"] for h in hist[1:]) > 1e-5
    w_ref = tr.ref_model.state_dict()
    w0 = dsc.Model(tiny_cfg(), seed=0).state_dict()
    for k in w0:
        np.testing.assert_array_equal(w_ref[k], w0[k])


def test_grpo_drop_groups_and_iterations():
    """All-equal reward: every group is dropped and nothing moves; num_iterations = 2 gives
    two updates per rollout, the second off-policy (ratio != 1 somewhere)."""
    m = dsc.Model(tiny_cfg(), seed=0)
    before = m.state_dict()
    tr = dsc.GRPO(m, reward=lambda p, c: [0.5] * len(c), group_size=4, beta=0.0, drop_zero_std_groups=True,
                  max_new_tokens=3)
    st = tr.step(["1+2=", "3+4="])
    assert st["groups_dropped"] == 2 and st["updates"] == 0 and m.step == 0
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    tr2 = dsc.GRPO(dsc.Model(tiny_cfg(), seed=0), reward=lambda p, c: [float(len(set(x))) for x in c], group_size=8, beta=0.0, num_iterations=2,
                   lr=1e-2, max_new_tokens=3, seed=1)
    st2 = tr2.step(["1+2=", "3+4=", "5+6=", "7+8="])
    assert st2["updates"] == 2 and tr2.model.step == 2
    assert st2["ratio_mean"] != 1.0


def test_grpo_bad_input_is_clear_errors():
    m = dsc.Model(tiny_cfg(), seed=0)
    with pytest.raises(ValueError, match="group_size"):
        dsc.GRPO(m, reward=starts_with_7, group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        dsc.GRPO(m, reward=starts_with_7, loss_type="ppo")
    with pytest.raises(TypeError, match="reward: expected"):
        dsc.GRPO(m, reward=5)
    with pytest.raises(TypeError, match="model: expected a deepseek_c.Model"):
        dsc.GRPO("model", reward=starts_with_7)
    with pytest.raises(ValueError, match="temperature"):
        dsc.GRPO(m, reward=starts_with_7, temperature=0.0)
    tr = dsc.GRPO(m, reward=lambda p, c: [float("nan")] * len(c), group_size=2, beta=0.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="expected finite values"):
        tr.step(["1+2="])
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        tr.step([])
    with pytest.raises(TypeError, match=r"prompts\[0\]: expected a str"):
        tr.step([3])
    with pytest.raises(ValueError, match=r"prompts\[1\]: the tokenizer cannot encode"):
        tr.step(["1+2=", "1+\u03a9="])
    assert m.step == 0


def test_grpo_rollouts_with_mtp_speculative_sampling_and_top_p():
    """speculative="mtp" samples from the same distribution (the law is tested in
    test_generate); here: it runs through the trainer and reports its acceptance rate."""
    tr = dsc.GRPO(dsc.Model(tiny_cfg(), seed=0), reward=starts_with_7, group_size=4, beta=0.01, max_new_tokens=5,
                  speculative="mtp", top_p=0.9, seed=2)
    st = tr.step(["1+2=", "30+4="])
    assert st["accept_rate"] is not None and 0.0 <= st["accept_rate"] <= 1.0
    assert 1.0 <= st["completion_length"] <= 5.0 and np.isfinite(st["loss"])


# ----------------------------------------------------------------------------- distillation


def test_teacher_topk_matches_numpy(rng):
    t = dsc.Model(tiny_cfg(), seed=1)
    tokens = rng.integers(3, TOK.vocab_size, (2, 7)).astype(np.int32)
    idx, val = distill.teacher_topk(t, tokens, 5)
    logits = np.asarray(t.forward(tokens), np.float64)
    want_idx = np.argsort(-logits, axis=-1, kind="stable")[..., :5]
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(val, np.take_along_axis(logits, want_idx, -1), rtol=1e-6, atol=1e-6)


def test_sample_verified_keeps_only_verified_and_skips_excluded():
    task = D.Addition(digits=1)
    teacher = dsc.Model(tiny_cfg(), seed=0)
    train.fit(teacher, D.batches(task, TOK, 32, 24, seed=0), 120, lr=1e-2, progress=False)
    held = {p for p, _ in D.heldout(task, 20)}
    samples, info = distill.sample_verified(teacher, task, 10, samples_per_prompt=4, batch_prompts=16,
                                            exclude=held, seed=2)
    assert len(samples) > 0 and info["accepted"] == len(samples) <= 10
    for p, c in samples:
        assert task.verify(p, c) and p not in held
    assert len({p for p, _ in samples}) == len(samples)       # at most one per prompt
    hist = distill.sft(dsc.Model(tiny_cfg(), seed=5), samples, 20, batch_size=8, seq_len=24)
    assert np.mean(hist["loss"][-5:]) < np.mean(hist["loss"][:5])


def test_logit_distillation_lowers_the_kl():
    """A smaller student (other config) is pulled toward a teacher: its KL to the teacher's
    top-k falls; alpha = 1 is pure KL, alpha = 0 pure cross-entropy (kl still reported)."""
    task = D.Addition(digits=2)
    teacher = dsc.Model(tiny_cfg(initializer_range=0.3), seed=1)
    student = dsc.Model(tiny_cfg(hidden_size=16, q_lora_rank=8, kv_lora_rank=8, num_hidden_layers=1,
                                 num_nextn_predict_layers=0), seed=2)
    hist = distill.logit_distill(student, teacher, D.batches(task, TOK, 8, 24, seed=0), 60, k=6, temperature=1.0,
                                 alpha=1.0, lr=1e-2)
    kl = np.array(hist["kl"])
    assert kl[-5:].mean() < 0.5 * kl[:5].mean(), kl
    np.testing.assert_allclose(hist["loss"], kl, rtol=1e-5)   # alpha = 1, tau = 1: loss = KL
    assert hist["tokens"] == 60 * 8 * 24
    h0 = distill.logit_distill(student, teacher, D.batches(task, TOK, 8, 24, seed=1), 2, k=6, alpha=0.0)
    np.testing.assert_allclose(h0["loss"], h0["ce"], rtol=1e-5)


def test_distill_argument_errors():
    t = dsc.Model(tiny_cfg(), seed=0)
    s = dsc.Model(tiny_cfg(vocab_size=TOK.vocab_size + 1), seed=0)
    b = D.batches(D.Addition(2), TOK, 2, 16)
    with pytest.raises(ValueError, match="student: expected the teacher's vocabulary"):
        distill.logit_distill(s, t, b, 1)
    with pytest.raises(ValueError, match="alpha: expected a number in"):
        distill.logit_distill(t.copy(), t, b, 1, alpha=2.0)
    with pytest.raises(ValueError, match="k: expected at most vocab_size"):
        distill.logit_distill(t.copy(), t, b, 1, k=10_000)
    with pytest.raises(ValueError, match="samples: expected at least one"):
        distill.sample_batches([])


def test_bench_rl_quick_runs_and_writes_only_when_asked(tmp_path):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = set(os.listdir(os.path.join(root, "benchmarks", "results")))
    out = tmp_path / "rl.json"
    r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_rl.py"), "--quick", "--steps", "1",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "rollout:" in r.stdout and "update :" in r.stdout
    import json
    res = json.loads(out.read_text())
    assert res["rollout_tokens_per_s"] > 0 and res["update_tokens_per_s"] > 0
    assert abs(res["rollout_share"] + res["update_share"] - 1) < 1e-9
    assert set(os.listdir(os.path.join(root, "benchmarks", "results"))) == before
