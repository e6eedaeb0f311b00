"""dsc.Model: logits against the independent NumPy float64 reference (tests/reference/model.py),
gradients against finite differences of that reference, training lowers the loss, checkpoints
(save -> load -> identical logits, bitwise resume, FP8 checkpoints, clear errors), generation,
and a CI-sized demo run that reaches an accuracy bar."""

import json
import os

import numpy as np
import pytest

import deepseek_c as dsc
from reference import model as ref


def small_cfg(**kw):
    keys = dict(vocab_size=64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, q_lora_rank=32,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2,
                initializer_range=0.1)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def perturbed_model(cfg, seed=1, **model_kw):
    """A model whose norms and correction biases are not at their init values (all paths matter);
    model_kw go to dsc.Model (dtype, num_threads, ...)."""
    m = dsc.Model(cfg, seed=seed, **model_kw)
    rng = np.random.default_rng(seed + 100)
    for k, v in m.parameters().items():
        if v.ndim == 1:
            v[...] = 0.05 * rng.standard_normal(v.shape) if k.endswith("bias") else 1 + 0.2 * rng.standard_normal(v.shape)
    return m


def data(cfg, B=2, T=12, seed=0):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, cfg.vocab_size, (B, T))
    y = rng.integers(0, cfg.vocab_size, (B, T))
    y[:, :3] = -100
    return tok, y


# ----------------------------------------------------------------------------- structure


def test_parameter_names_and_init():
    cfg = dsc.ModelConfig.tiny()
    m = dsc.Model(cfg, seed=0)
    p = m.parameters()
    L = cfg.num_hidden_layers
    assert "model.embed_tokens.weight" in p and "model.norm.weight" in p and "lm_head.weight" in p
    assert "model.layers.0.mlp.gate_proj.weight" in p                       # dense first layer
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in p             # MoE layer
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in p
    assert "model.layers.1.self_attn.q_a_proj.weight" in p
    for n in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "self_attn.kv_b_proj", "mlp.gate"):
        assert f"model.layers.{L}.{n}.weight" in p
    assert p[f"model.layers.{L}.eh_proj.weight"].shape == (cfg.hidden_size, 2 * cfg.hidden_size)
    assert np.all(p["model.layers.1.mlp.gate.e_score_correction_bias"] == 0)
    assert np.all(p["model.layers.1.input_layernorm.weight"] == 1)
    w = p["model.layers.1.self_attn.o_proj.weight"]
    assert abs(float(w.std()) - cfg.initializer_range) < 0.1 * cfg.initializer_range
    assert all(v.dtype == np.float32 for v in p.values())


# ----------------------------------------------------------------------------- numerics


def test_logits_match_float64_reference():
    cfg = small_cfg()
    m = perturbed_model(cfg)
    tok, _ = data(cfg)
    P = {k: np.array(v) for k, v in m.parameters().items()}
    want, want_mtp = ref.forward(P, cfg, tok, with_mtp=True)
    got = m.forward(tok)
    assert got.shape == (2, 12, cfg.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    got_mtp = m.forward_mtp(tok)
    assert got_mtp[0].shape == (2, 11, cfg.vocab_size)
    np.testing.assert_allclose(got_mtp[0], want_mtp[0], rtol=0, atol=2e-5 * np.abs(want_mtp[0]).max())


def test_no_query_compression_and_two_mtp_depths_match_reference():
    cfg = small_cfg(q_lora_rank=None, num_nextn_predict_layers=2, num_hidden_layers=1, first_k_dense_replace=0)
    m = perturbed_model(cfg, seed=3)
    tok, y = data(cfg, seed=3)
    P = {k: np.array(v) for k, v in m.parameters().items()}
    want, want_mtp = ref.forward(P, cfg, tok, with_mtp=True)
    np.testing.assert_allclose(m.forward(tok), want, rtol=0, atol=2e-5 * np.abs(want).max())
    for g, w in zip(m.forward_mtp(tok), want_mtp):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * np.abs(w).max())
    st, _ = m.loss_and_grads(tok, y, mtp_lambda=0.3)
    assert abs(st["loss"] + 0.3 * st["mtp_loss"] - ref.loss(P, cfg, tok, y, 0.3)) < 1e-4


GRAD_NAMES = [
    "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
    "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_b_proj.weight",
    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.down_proj.weight",
    "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
    "model.layers.1.mlp.shared_experts.down_proj.weight", "model.layers.2.eh_proj.weight",
    "model.layers.2.enorm.weight", "model.layers.2.hnorm.weight", "model.layers.2.shared_head.norm.weight",
    "model.layers.2.self_attn.o_proj.weight", "model.layers.2.mlp.experts.1.down_proj.weight",
]


def test_gradients_match_finite_differences_of_reference():
    cfg = small_cfg()
    m = perturbed_model(cfg)
    tok, y = data(cfg)
    P = {k: np.array(v, np.float64) for k, v in m.parameters().items()}
    _, g = m.loss_and_grads(tok, y, mtp_lambda=0.3)
    eps = 1e-4
    for n in GRAD_NAMES:
        if ".mlp.experts." in n:
            pre, rest = n.split(".mlp.experts.")
            e, proj = rest.split(".", 1)
            G = g[f"{pre}.mlp.experts.{proj}"][int(e)]
        else:
            G = g[n]
        assert G.shape == P[n].shape, n
        flat = np.argsort(-np.abs(G).ravel())[:2]  # the two largest entries
        for f in flat:
            idx = np.unravel_index(f, G.shape)
            vals = []
            for s in (1, -1):
                Q = dict(P)
                a = P[n].copy()
                a[idx] += s * eps
                Q[n] = a
                vals.append(ref.loss(Q, cfg, tok, y, 0.3))
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert abs(G[idx] - fd) <= 2e-3 * abs(fd) + 1e-5, (n, idx, float(G[idx]), fd)


def test_grad_accumulation_matches_full_batch():
    cfg = small_cfg()
    tok, y = data(cfg, B=4)  # the same number of valid targets in every row
    m = perturbed_model(cfg)
    _, full = m.loss_and_grads(tok, y)
    acc = {}
    for k in range(2):
        _, acc = m.loss_and_grads(tok[2 * k:2 * k + 2], y[2 * k:2 * k + 2], scale=0.5, grads=acc)
    assert set(acc) == set(full)
    for k, g in full.items():
        np.testing.assert_allclose(acc[k], g, rtol=1e-4, atol=1e-6 * np.abs(g).max(), err_msg=k)
    a, b = perturbed_model(cfg), perturbed_model(cfg)
    sa = a.train_step(tok, y, lr=1e-3)
    sb = b.train_step(tok, y, lr=1e-3, grad_accum=2)
    assert abs(sa["grad_norm"] - sb["grad_norm"]) < 1e-4 * sa["grad_norm"]
    assert abs(sa["loss"] - sb["loss"]) < 1e-5


def test_loss_falls_and_bias_moves():
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0)
    tok, y = data(cfg, B=4, T=16)
    y = np.roll(tok, -1, axis=1)
    y[:, -1] = -100
    first = m.train_step(tok, y, lr=3e-3, aux_alpha=1e-4)
    assert set(first) >= {"loss", "mtp_loss", "grad_norm", "expert_load", "load_imbalance", "tokens_per_s"}
    assert sorted(first["expert_load"]) == [1, 2]  # the MoE layer and the MTP block
    assert int(first["expert_load"][1].sum()) == 4 * 16 * cfg.num_experts_per_tok
    for _ in range(29):
        last = m.train_step(tok, y, lr=3e-3, aux_alpha=1e-4)
    assert last["loss"] < 0.5 * first["loss"], (first["loss"], last["loss"])
    assert last["mtp_loss"] < first["mtp_loss"]
    assert np.any(m.parameters()["model.layers.1.mlp.gate.e_score_correction_bias"] != 0)
    assert m.step == 30


def test_fp8_trains_close_to_fp32():
    cfg = small_cfg(hidden_size=128, intermediate_size=256, moe_intermediate_size=128, initializer_range=0.02)
    tok, y = data(cfg, B=4, T=16)
    y = np.roll(tok, -1, axis=1)
    losses = {}
    for fp8 in (False, True):
        m = dsc.Model(cfg, seed=0, fp8=fp8)
        for _ in range(15):
            s = m.train_step(tok, y, lr=3e-3)
        losses[fp8] = s["loss"]
    assert losses[True] < 0.7 * np.log(cfg.vocab_size)
    assert abs(losses[True] - losses[False]) < 0.1 * losses[False] + 0.05, losses


# ----------------------------------------------------------------------------- checkpoints


def test_save_load_identical_logits(tmp_path):
    cfg = small_cfg()
    m = perturbed_model(cfg)
    tok, y = data(cfg)
    m.train_step(tok, y, lr=1e-3)
    m.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "optimizer.safetensors"]
    names = set(dsc.load_safetensors(tmp_path / "model.safetensors"))
    assert names == set(m.parameters())
    m2 = dsc.Model.from_pretrained(tmp_path)
    assert np.array_equal(m.forward(tok), m2.forward(tok))
    assert m2.step == 1


def test_resume_is_bitwise_identical(tmp_path):
    cfg = small_cfg()
    rng = np.random.default_rng(5)
    batches = [(rng.integers(0, 64, (2, 12)), rng.integers(0, 64, (2, 12))) for _ in range(6)]
    a = dsc.Model(cfg, seed=0)
    la = [a.train_step(t, y, lr=2e-3, aux_alpha=1e-4)["loss"] for t, y in batches]
    b = dsc.Model(cfg, seed=0)
    lb = [b.train_step(t, y, lr=2e-3, aux_alpha=1e-4)["loss"] for t, y in batches[:3]]
    b.save(tmp_path)
    c = dsc.Model.from_pretrained(tmp_path)
    lb += [c.train_step(t, y, lr=2e-3, aux_alpha=1e-4)["loss"] for t, y in batches[3:]]
    assert la == lb
    for k, v in a.parameters().items():
        assert np.array_equal(v, c.parameters()[k]), k


def test_fp8_checkpoint_is_dequantized(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = small_cfg()
    m = perturbed_model(cfg)
    m.save(tmp_path, optimizer=False)
    sd = dsc.load_safetensors(tmp_path / "model.safetensors")
    out = {}
    for k, v in sd.items():
        if k.endswith("proj.weight") and v.ndim == 2:
            q, s = dsc.fp8_quantize(np.ascontiguousarray(v), (128, 128))
            out[k] = q
            out[k + "_scale_inv"] = s
        else:
            out[k] = v.astype(ml_dtypes.bfloat16) if v.ndim == 1 and "bias" not in k else v
    d = tmp_path / "fp8"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "config.json").read_text())
    dsc.save_safetensors(d / "model.safetensors", out)
    m2 = dsc.Model.from_pretrained(d)
    w = "model.layers.0.self_attn.q_b_proj.weight"
    assert np.array_equal(m2.parameters()[w], dsc.fp8_weight_dequant(out[w], out[w + "_scale_inv"], "float32"))
    # the loader is exact: a model given the dequantized tensors directly computes the same logits
    want = {k: (dsc.fp8_weight_dequant(out[k], out[k + "_scale_inv"], "float32") if k + "_scale_inv" in out
                else np.asarray(out[k], np.float32)) for k in sd}
    m3 = dsc.Model(cfg, seed=0)
    m3.load_state_dict(want)
    tok, _ = data(cfg)
    a, b = m.forward(tok), m2.forward(tok)
    assert np.array_equal(b, m3.forward(tok))
    # and FP8 weights stay close to the float32 model (the median; a routing flip moves a few logits more)
    assert np.median(np.abs(a - b)) < 0.05 * np.abs(a).max()


def test_checkpoint_errors(tmp_path):
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0)
    m.save(tmp_path)
    # config mismatch: shapes differ -> the tensor is named
    bad = json.loads((tmp_path / "config.json").read_text())
    bad["hidden_size"] = 80
    d1 = tmp_path / "wrongcfg"
    d1.mkdir()
    (d1 / "config.json").write_text(json.dumps(bad))
    os.link(tmp_path / "model.safetensors", d1 / "model.safetensors")
    with pytest.raises(ValueError, match="expected shape"):
        dsc.Model.from_pretrained(d1)
    # more layers in the config than in the file: the file's MTP module would become main
    # layer 2 -> refused, the MTP tensor named
    bad = json.loads((tmp_path / "config.json").read_text())
    bad["num_hidden_layers"] = 3
    (d1 / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="layers.2.eh_proj.*does not match the checkpoint"):
        dsc.Model.from_pretrained(d1)
    # fewer: the file's layer 1 is beyond the model -> refused, not skipped
    bad["num_hidden_layers"], bad["num_nextn_predict_layers"] = 1, 0
    (d1 / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="decoder layer 1.*does not match"):
        dsc.Model.from_pretrained(d1)
    # a missing tensor is named
    sd = dict(dsc.load_safetensors(tmp_path / "model.safetensors"))
    del sd["model.layers.1.self_attn.kv_a_layernorm.weight"]
    dm = tmp_path / "missing"
    dm.mkdir()
    (dm / "config.json").write_text((tmp_path / "config.json").read_text())
    dsc.save_safetensors(dm / "model.safetensors", sd)
    with pytest.raises(ValueError, match="kv_a_layernorm.weight: missing"):
        dsc.Model.from_pretrained(dm)
    # an extra tensor
    sd = dict(dsc.load_safetensors(tmp_path / "model.safetensors"))
    sd["model.layers.0.mystery.weight"] = np.zeros(3, np.float32)
    d2 = tmp_path / "extra"
    d2.mkdir()
    (d2 / "config.json").write_text((tmp_path / "config.json").read_text())
    dsc.save_safetensors(d2 / "model.safetensors", sd)
    with pytest.raises(ValueError, match="mystery"):  # strict: an error naming it
        dsc.Model.from_pretrained(d2, strict=True)
    with pytest.warns(UserWarning, match="skipped 1 tensor.*mystery"):  # as transformers: skipped, said
        m2 = dsc.Model.from_pretrained(d2)
    tok = np.array([[1, 2, 3, 4]])
    assert np.array_equal(m2.forward(tok), m.forward(tok))
    # a truncated file -> an error naming the file, never a crash
    d3 = tmp_path / "trunc"
    d3.mkdir()
    (d3 / "config.json").write_text((tmp_path / "config.json").read_text())
    raw = (tmp_path / "model.safetensors").read_bytes()
    (d3 / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises((dsc.Error, ValueError), match="model.safetensors"):
        dsc.Model.from_pretrained(d3)
    with pytest.raises(ValueError, match="config.json"):
        dsc.Model.from_pretrained(tmp_path / "extra" / "nothing")


def test_input_errors():
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0)
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 64\)"):
        m.forward(np.array([[1, 2, 64]]))
    with pytest.raises(ValueError, match="tokens"):
        m.forward(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        m.forward(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="targets: expected shape"):
        m.train_step(np.zeros((2, 4), np.int32), np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match="targets"):
        m.train_step(np.zeros((2, 4), np.int32), np.full((2, 4), 99, np.int32))
    with pytest.raises(ValueError, match="grad_accum"):
        m.train_step(np.zeros((3, 4), np.int32), np.zeros((3, 4), np.int32), grad_accum=2)
    with pytest.raises(ValueError, match="device"):
        dsc.Model(cfg, device="cuda")
    with pytest.raises(ValueError, match="prompts"):
        m.generate([[]], max_new_tokens=2)


# ----------------------------------------------------------------------------- generation and the demo


def test_generate_greedy_matches_forward_and_sampling_is_seeded():
    cfg = small_cfg()
    m = perturbed_model(cfg)
    prompts = [[1, 5, 7], [2, 3], [9, 9, 9]]
    out = m.generate(prompts, max_new_tokens=4, eos_token_id=-1)
    assert [len(o) for o in out] == [4, 4, 4]
    seq = prompts[0] + out[0][:3]
    assert out[0][3] == int(np.argmax(m.forward(np.array([seq]))[0, -1]))
    s1 = m.generate(prompts, 5, temperature=1.0, top_k=10, top_p=0.9, seed=3, eos_token_id=-1)
    s2 = m.generate(prompts, 5, temperature=1.0, top_k=10, top_p=0.9, seed=3, eos_token_id=-1)
    assert s1 == s2


def test_ci_demo_reaches_accuracy_bar(tmp_path):
    """A CI-sized run of the demo pipeline on an easy task (copy of up to 3 letters)."""
    from deepseek_c import data as D, train as TR

    tok = D.CharTokenizer()
    task = D.Copy(length=3)
    cfg = TR.demo_config(tok.vocab_size, hidden_size=64, q_lora_rank=32, kv_lora_rank=32, intermediate_size=128,
                         moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                         topk_group=2, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    m = dsc.Model(cfg, seed=0)
    hist = TR.fit(m, D.batches(task, tok, 16, 32, seed=0), steps=600, lr=3e-3, progress=False,
                  bias_update_rate=1e-2)
    assert hist["loss"][-1] < 0.3 * hist["loss"][0]
    r = TR.evaluate(m, task, tok, n=50)
    assert r["accuracy"] >= 0.8, r
    # the trained MTP module drafts well: most drafts are accepted, and the answers are the same
    s = TR.evaluate(m, task, tok, n=50, speculative="mtp")
    assert s["outputs"] == r["outputs"]
    assert s["accept_rate"] is not None and s["accept_rate"] >= 0.6, s["accept_rate"]


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
def test_cuda_model_matches_cpu():
    """The same weights on CPU and CUDA: logits, MTP logits, gradients and three training steps agree."""
    cfg = small_cfg()
    a = perturbed_model(cfg)
    b = dsc.Model(cfg, device="cuda", seed=0)
    b.load_state_dict(a.state_dict())
    tok, y = data(cfg, B=2, T=16)
    la, lb = a.forward(tok), dsc.to_numpy(b.forward(tok))
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-4 * np.abs(la).max())
    np.testing.assert_allclose(dsc.to_numpy(b.forward_mtp(tok)[0]), a.forward_mtp(tok)[0], rtol=0,
                               atol=1e-4 * np.abs(la).max())
    sa, ga = a.loss_and_grads(tok, y)
    sb, gb = b.loss_and_grads(tok, y)
    assert abs(sa["loss"] - sb["loss"]) < 1e-4 * sa["loss"]
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=0, atol=2e-3 * np.abs(ga[k]).max() + 1e-7, err_msg=k)
    for _ in range(3):
        ra, rb = a.train_step(tok, y, lr=1e-3), b.train_step(tok, y, lr=1e-3)
        assert abs(ra["loss"] - rb["loss"]) < 1e-3 * ra["loss"], (ra["loss"], rb["loss"])
    for k, v in a.parameters().items():
        np.testing.assert_allclose(dsc.to_numpy(b.parameters()[k]), v, rtol=0, atol=1e-4, err_msg=k)


@pytest.mark.cuda
def test_cuda_fp8_model_matches_cpu():
    """fp8=True on CUDA (cuBLASLt / own FP8 GEMMs for MLA, experts, MLP) against the CPU
    emulation: logits, gradients and a training step agree to FP32-accumulation noise, and
    FP8 generation gives the same greedy tokens."""
    cfg = small_cfg()
    a = perturbed_model(cfg)
    a8 = dsc.Model(cfg, seed=0, fp8=True)
    a8.load_state_dict(a.state_dict())
    b8 = dsc.Model(cfg, device="cuda", seed=0, fp8=True)
    b8.load_state_dict(a.state_dict())
    tok, y = data(cfg, B=2, T=16)
    la, lb = a8.forward(tok), dsc.to_numpy(b8.forward(tok))
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-3 * np.abs(la).max())
    sa, ga = a8.loss_and_grads(tok, y)
    sb, gb = b8.loss_and_grads(tok, y)
    assert abs(sa["loss"] - sb["loss"]) < 1e-3 * sa["loss"]
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=0, atol=1e-2 * np.abs(ga[k]).max() + 1e-7, err_msg=k)
    ra, rb = a8.train_step(tok, y, lr=1e-3), b8.train_step(tok, y, lr=1e-3)
    assert abs(ra["loss"] - rb["loss"]) < 1e-3 * ra["loss"]
    prompts = [[1, 2, 3, 4], [5, 6, 7], [9, 8], [3, 3, 3, 3, 3]]
    ga = a8.generate(prompts, max_new_tokens=6, eos_token_id=-1).tokens
    gb = b8.generate(prompts, max_new_tokens=6, eos_token_id=-1).tokens
    assert sum(x == z for x, z in zip(ga, gb)) >= 3, (ga, gb)  # identical up to near-ties


@pytest.mark.cuda
def test_cuda_checkpoint_round_trip(tmp_path):
    cfg = small_cfg()
    m = dsc.Model(cfg, device="cuda", seed=0)
    tok, y = data(cfg)
    m.train_step(tok, y, lr=1e-3)
    m.save(tmp_path)
    c = dsc.Model.from_pretrained(tmp_path)  # onto the CPU
    np.testing.assert_allclose(c.forward(tok), dsc.to_numpy(m.forward(tok)), rtol=0, atol=1e-4)
    assert c.step == 1


def test_bfloat16_moments_train_save_and_resume(tmp_path):
    """AdamW moments in bfloat16: half the optimizer memory, training close to float32 moments,
    checkpoints keep them in bfloat16 and a resumed run continues bitwise."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = small_cfg()
    rng = np.random.default_rng(9)
    batches = [(rng.integers(0, 64, (2, 12)), rng.integers(0, 64, (2, 12))) for _ in range(6)]
    f32 = dsc.Model(cfg, seed=0)
    a = dsc.Model(cfg, seed=0, moments="bfloat16")
    la = [a.train_step(t, y, lr=2e-3)["loss"] for t, y in batches]
    lf = [f32.train_step(t, y, lr=2e-3)["loss"] for t, y in batches]
    assert abs(la[-1] - lf[-1]) < 0.02 * lf[-1], (la, lf)
    m, v = a.optimizer_state("model.layers.0.self_attn.o_proj.weight")
    assert m.dtype == ml_dtypes.bfloat16 and v.dtype == ml_dtypes.bfloat16 and np.any(m.astype(np.float32) != 0)
    b = dsc.Model(cfg, seed=0, moments="bfloat16")
    lb = [b.train_step(t, y, lr=2e-3)["loss"] for t, y in batches[:3]]
    b.save(tmp_path)
    opt = dsc.load_safetensors(tmp_path / "optimizer.safetensors")
    assert str(opt["exp_avg.lm_head.weight"].dtype) == "bfloat16"
    c = dsc.Model.from_pretrained(tmp_path, moments="bfloat16")
    lb += [c.train_step(t, y, lr=2e-3)["loss"] for t, y in batches[3:]]
    assert la == lb
    for k, w in a.parameters().items():
        assert np.array_equal(w, c.parameters()[k]), k
    with pytest.raises(TypeError, match="moments"):
        dsc.Model(cfg, moments="float16")
