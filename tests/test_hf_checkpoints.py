"""Checkpoints the way Hugging Face transformers 5.x saves them, and the one config parser.

The checkpoints are built here, in exactly the layouts transformers writes (config.json
keys of DeepseekV2Config / DeepseekV3Config.to_dict(), tensor names of save_pretrained with
the original per-expert layout), so the test needs no transformers. Their logits are checked
against the independent float64 NumPy reference (tests/reference/model.py), given the
semantics transformers runs: DeepseekV2 routes with softmax and greedy top-k and never
normalizes the top-k weights; DeepseekV3 routes with sigmoid + correction bias, group-limited
(noaux_tc), normalized. The reference gets those settings spelled out, the library only the
file -- so a parser that fills a missing key wrongly fails here.

Also: a V3 config naming an MTP layer the file lacks, spare tensors, tied heads, the RoPE
spellings, and that Python and C read a config the same way (ModelConfig calls the C parser).
"""

import json
import os
import warnings

import numpy as np
import pytest

import deepseek_c as dsc
from reference import model as ref


# ----------------------------------------------------------------------------- builders


def _sizes(**kw):
    d = dict(vocab_size=48, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
             num_attention_heads=2, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
             max_position_embeddings=128, initializer_range=0.1)
    d.update(kw)
    return d


def hf_v2_config(**kw):
    """config.json as transformers 5.x's DeepseekV2Config.to_dict() writes it (no
    scoring_func, no topk methods' V3 keys, no MTP depth; rope_parameters)."""
    s = _sizes(**kw)
    H = s["num_attention_heads"]
    return {
        "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": 1, "dtype": "float32", "eos_token_id": 2,
        "first_k_dense_replace": s["first_k_dense_replace"], "head_dim": s["qk_rope_head_dim"],
        "hidden_act": "silu", "hidden_size": s["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": s["intermediate_size"], "kv_lora_rank": s["kv_lora_rank"],
        "max_position_embeddings": s["max_position_embeddings"], "mlp_bias": False, "model_type": "deepseek_v2",
        "moe_intermediate_size": s["moe_intermediate_size"], "n_group": None, "n_routed_experts": s["n_routed_experts"],
        "n_shared_experts": s["n_shared_experts"], "norm_topk_prob": False, "num_attention_heads": H,
        "num_experts_per_tok": s["num_experts_per_tok"], "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": H, "output_router_logits": False, "pad_token_id": None, "pretraining_tp": 1,
        "q_lora_rank": None, "qk_head_dim": s["qk_nope_head_dim"] + s["qk_rope_head_dim"],
        "qk_nope_head_dim": s["qk_nope_head_dim"], "qk_rope_head_dim": s["qk_rope_head_dim"],
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707,
                            "original_max_position_embeddings": 32},
        "routed_scaling_factor": 1.5, "seq_aux": True, "tie_word_embeddings": False, "topk_group": None,
        "topk_method": "greedy", "transformers_version": "5.24.0", "use_cache": True,
        "v_head_dim": s["v_head_dim"], "vocab_size": s["vocab_size"],
    }


def hf_v3_config(**kw):
    """config.json as transformers 5.x's DeepseekV3Config.to_dict() writes it: no
    topk_method, scoring_func or moe_layer_freq (that class has none), MTP depth 1."""
    s = _sizes(**kw)
    H = s["num_attention_heads"]
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "dtype": "float32", "eos_token_id": 1, "first_k_dense_replace": s["first_k_dense_replace"],
        "head_dim": s["qk_rope_head_dim"], "hidden_act": "silu", "hidden_size": s["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": s["intermediate_size"], "kv_lora_rank": s["kv_lora_rank"],
        "max_position_embeddings": s["max_position_embeddings"], "model_type": "deepseek_v3",
        "moe_intermediate_size": s["moe_intermediate_size"], "n_group": 4, "n_routed_experts": s["n_routed_experts"],
        "n_shared_experts": s["n_shared_experts"], "norm_topk_prob": True, "num_attention_heads": H,
        "num_experts_per_tok": s["num_experts_per_tok"], "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": H, "num_nextn_predict_layers": 1, "output_router_logits": False,
        "pad_token_id": None, "pretraining_tp": 1, "q_lora_rank": 24,
        "qk_head_dim": s["qk_nope_head_dim"] + s["qk_rope_head_dim"], "qk_nope_head_dim": s["qk_nope_head_dim"],
        "qk_rope_head_dim": s["qk_rope_head_dim"], "rms_norm_eps": 1e-06, "rope_interleave": True,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                            "original_max_position_embeddings": 32},
        "routed_scaling_factor": 2.5, "tie_word_embeddings": False, "topk_group": 2,
        "transformers_version": "5.24.0", "use_cache": True, "v_head_dim": s["v_head_dim"],
        "vocab_size": s["vocab_size"],
    }


def ref_cfg(hf: dict, **semantics) -> dsc.ModelConfig:
    """The reference's config: the file's sizes with the routing semantics spelled out."""
    keys = {k: v for k, v in hf.items() if k not in ("model_type", "rope_parameters")}
    rp = dict(hf["rope_parameters"])
    keys["rope_theta"] = rp.pop("rope_theta")
    rp["type"] = rp.pop("rope_type")
    keys["rope_scaling"] = rp
    keys.update(semantics)
    return dsc.ModelConfig(**keys)


def random_weights(cfg: dsc.ModelConfig, rng, drop_mtp: bool) -> dict:
    """Random tensors under every HF name of a model of cfg (correction biases and norms
    away from their init so that every term matters); the MTP layer dropped when asked."""
    m = dsc.Model(cfg, seed=int(rng.integers(1 << 30)))
    out = {}
    L = cfg.num_hidden_layers
    for k, v in m.state_dict().items():
        if drop_mtp and k.startswith(f"model.layers.{L}."):
            continue
        if v.ndim == 1:
            v = (rng.standard_normal(v.shape) * 0.05 if k.endswith("bias") else
                 1 + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
        else:
            v = (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
        out[k] = v
    return out


def write_ckpt(d, config: dict, tensors: dict) -> None:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    dsc.save_safetensors(os.path.join(d, "model.safetensors"), tensors, metadata={"format": "pt"})


def tokens(cfg, rng, B=2, T=40):  # T > original_max_position_embeddings: YaRN positions matter
    return rng.integers(0, cfg.vocab_size, (B, T))


def assert_logits_match(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


# ----------------------------------------------------------------------------- DeepseekV2


def test_v2_checkpoint_routes_with_softmax(tmp_path, rng):
    """transformers' DeepseekV2 config has no scoring_func: the missing key must mean softmax
    (it meant sigmoid before, with 4-38% wrong logits), greedy top-k, no normalization."""
    hf = hf_v2_config()
    want_cfg = ref_cfg(hf, scoring_func="softmax", topk_method="greedy", norm_topk_prob=False,
                       num_nextn_predict_layers=0, n_group=1, topk_group=1, model_type="deepseek_v2")
    w = random_weights(want_cfg, rng, drop_mtp=False)
    assert not any("e_score_correction_bias" in k for k in w)  # V2 has no correction bias
    write_ckpt(tmp_path, hf, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean V2 checkpoint loads without a warning
        m = dsc.Model.from_pretrained(tmp_path)
    assert m.cfg.scoring_func == "softmax" and m.cfg.topk_method == "greedy" and m.n_mtp == 0
    tok = tokens(m.cfg, rng)
    want = ref.forward(w, want_cfg, tok)
    assert_logits_match(m.forward(tok), want)
    # the sigmoid reading of the same file is far off: the test can tell the two apart
    wrong = ref.forward(w, ref_cfg(hf, scoring_func="sigmoid", topk_method="greedy", norm_topk_prob=False,
                                    n_group=1, topk_group=1, num_nextn_predict_layers=0), tok)
    assert np.abs(wrong - want).max() > 100 * 2e-4 * np.abs(want).max()


def test_v2_group_limited_greedy(tmp_path, rng):
    hf = hf_v2_config(n_routed_experts=8)
    hf.update(topk_method="group_limited_greedy", n_group=4, topk_group=2)
    want_cfg = ref_cfg(hf, scoring_func="softmax", norm_topk_prob=False, num_nextn_predict_layers=0,
                       model_type="deepseek_v2")
    w = random_weights(want_cfg, rng, drop_mtp=False)
    write_ckpt(tmp_path, hf, w)
    m = dsc.Model.from_pretrained(tmp_path)
    tok = tokens(m.cfg, rng)
    assert_logits_match(m.forward(tok), ref.forward(w, want_cfg, tok))


def test_v2_without_mtp_key_trains_saves_and_reloads(tmp_path, rng):
    """Python and C used to disagree on a deepseek_v2 config without num_nextn_predict_layers
    (1 vs 0): train_step raised after the step was applied and save() wrote a config that did
    not load. One parser: the same answer everywhere."""
    hf = hf_v2_config()
    cfg = dsc.ModelConfig(**hf)
    assert cfg.num_nextn_predict_layers == 0 and cfg.scoring_func == "softmax"
    m = dsc.Model(cfg, seed=3)
    tok = tokens(cfg, rng, T=16)
    st = m.train_step(tok, tok, lr=1e-3)
    assert m.step == 1 and np.isfinite(st["loss"]) and st["mtp_loss"] == 0.0
    m.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_nextn_predict_layers"] == 0 and saved["model_type"] == "deepseek_v2"
    assert saved["scoring_func"] == "softmax" and saved["transformers_version"] == "5.24.0"
    m2 = dsc.Model.from_pretrained(tmp_path)
    assert m2.step == 1
    np.testing.assert_array_equal(m2.forward(tok), m.forward(tok))


# ----------------------------------------------------------------------------- DeepseekV3


def _v3(tmp_path, rng, **kw):
    hf = hf_v3_config(**kw)
    want_cfg = ref_cfg(hf, topk_method="noaux_tc", scoring_func="sigmoid", num_nextn_predict_layers=0)
    w = random_weights(ref_cfg(hf), rng, drop_mtp=True)  # save_pretrained keeps no MTP layer
    write_ckpt(tmp_path, hf, w)
    return hf, want_cfg, w


def test_v3_checkpoint_without_mtp_layers_loads_with_one_warning(tmp_path, rng):
    hf, want_cfg, w = _v3(tmp_path, rng)
    with pytest.warns(UserWarning) as rec:
        m = dsc.Model.from_pretrained(tmp_path)
    msgs = [str(r.message) for r in rec]
    assert len(msgs) == 1 and "MTP" in msgs[0] and "init_missing_mtp" in msgs[0], msgs
    assert m.n_mtp == 0 and m.cfg.num_nextn_predict_layers == 0
    tok = tokens(m.cfg, rng)
    assert_logits_match(m.forward(tok), ref.forward(w, want_cfg, tok))
    # generation without speculation works; MTP speculation is a clear error
    out = m.generate([[1, 2, 3]], max_new_tokens=4)
    assert len(out.tokens[0]) == 4
    with pytest.raises(ValueError, match="MTP"):
        m.generate([[1, 2, 3]], max_new_tokens=4, speculative="mtp")
    # training without the MTP loss
    st = m.train_step(tok, tok, lr=1e-3)
    assert np.isfinite(st["loss"]) and st["mtp_loss"] == 0.0


def test_v3_checkpoint_init_missing_mtp(tmp_path, rng):
    hf, want_cfg, w = _v3(tmp_path, rng)
    with pytest.warns(UserWarning, match="initialized"):
        m = dsc.Model.from_pretrained(tmp_path, init_missing_mtp=True, seed=5)
    assert m.n_mtp == 1
    tok = tokens(m.cfg, rng)
    assert_logits_match(m.forward(tok), ref.forward(w, want_cfg, tok))  # main model as loaded
    p = m.parameters()
    assert np.all(p["model.layers.2.enorm.weight"] == 1)  # V3 init: norms 1
    assert np.std(p["model.layers.2.eh_proj.weight"]) > 0
    st = m.train_step(tok, tok, lr=1e-3)
    assert st["mtp_loss"] > 0  # the fresh MTP module trains
    # seeded: the same seed gives the same fresh module
    with pytest.warns(UserWarning):
        a = dsc.Model.from_pretrained(tmp_path, init_missing_mtp=True, seed=5)
        b = dsc.Model.from_pretrained(tmp_path, init_missing_mtp=True, seed=5)
        c = dsc.Model.from_pretrained(tmp_path, init_missing_mtp=True, seed=6)
    e = "model.layers.2.eh_proj.weight"
    np.testing.assert_array_equal(a.parameters()[e], b.parameters()[e])
    assert not np.array_equal(a.parameters()[e], c.parameters()[e])


def test_v3_config_keys_transformers_leaves_out_take_v3_meaning(tmp_path, rng):
    """No topk_method / scoring_func / moe_layer_freq in the file: noaux_tc, sigmoid, 1."""
    hf, _, _ = _v3(tmp_path, rng)
    cfg = dsc.ModelConfig.from_json(tmp_path)
    assert (cfg.topk_method, cfg.scoring_func, cfg.moe_layer_freq) == ("noaux_tc", "sigmoid", 1)
    assert cfg.rope_theta == 10000.0 and cfg.rope_scaling["factor"] == 4.0 and cfg.rope_scaling["mscale"] == 1.0


# ----------------------------------------------------------------------------- spare tensors


def test_spare_tensors(tmp_path, rng):
    hf, want_cfg, w = _v3(tmp_path / "base", rng)
    hf["num_nextn_predict_layers"] = 0
    tok = tokens(want_cfg, rng)
    want = ref.forward(w, want_cfg, tok)
    # rotary buffers of older fine-tunes: skipped silently
    w1 = dict(w)
    for i in range(2):
        w1[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = rng.random(4).astype(np.float32)
    write_ckpt(tmp_path / "rot", hf, w1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = dsc.Model.from_pretrained(tmp_path / "rot")
        m = dsc.Model.from_pretrained(tmp_path / "rot", strict=True)
    assert_logits_match(m.forward(tok), want)
    # an unknown tensor: skipped with a warning naming it; strict: an error naming it
    w2 = dict(w, **{"model.layers.1.mlp.adapter.weight": np.ones((3, 3), np.float32)})
    write_ckpt(tmp_path / "spare", hf, w2)
    with pytest.warns(UserWarning, match="model.layers.1.mlp.adapter.weight"):
        m = dsc.Model.from_pretrained(tmp_path / "spare")
    assert_logits_match(m.forward(tok), want)
    with pytest.raises(ValueError, match="model.layers.1.mlp.adapter.weight"):
        dsc.Model.from_pretrained(tmp_path / "spare", strict=True)
    # the file's MTP layer when the config says none: skipped with a warning
    w3 = dict(w, **{"model.layers.2.eh_proj.weight": np.ones((64, 128), np.float32)})
    write_ckpt(tmp_path / "mtp", hf, w3)
    with pytest.warns(UserWarning, match="eh_proj"):
        dsc.Model.from_pretrained(tmp_path / "mtp")


def test_tied_embeddings(tmp_path, rng):
    hf, want_cfg, w = _v3(tmp_path / "base", rng)
    hf.update(num_nextn_predict_layers=0, tie_word_embeddings=True)
    cfg = ref_cfg(hf, topk_method="noaux_tc", scoring_func="sigmoid")
    tok = tokens(cfg, rng)
    # transformers drops lm_head.weight of a tied model
    wt = {k: v for k, v in w.items() if k != "lm_head.weight"}
    write_ckpt(tmp_path / "tied", hf, wt)
    m = dsc.Model.from_pretrained(tmp_path / "tied")
    assert_logits_match(m.forward(tok), ref.forward(wt, cfg, tok))
    # a copy equal to the embedding: loads silently
    write_ckpt(tmp_path / "tied2", hf, dict(wt, **{"lm_head.weight": wt["model.embed_tokens.weight"].copy()}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dsc.Model.from_pretrained(tmp_path / "tied2", strict=True)
    # a different one: the config and the file disagree -> an error naming both
    write_ckpt(tmp_path / "tied3", hf, dict(wt, **{"lm_head.weight": w["lm_head.weight"]}))
    with pytest.raises(ValueError, match="lm_head.weight.*tie_word_embeddings"):
        dsc.Model.from_pretrained(tmp_path / "tied3")


# ----------------------------------------------------------------------------- one parser


def c_reads(tmp_path, keys: dict) -> dict:
    """What the C loader makes of a config.json (via a checkpoint it loads)."""
    d = tmp_path / f"c{len(os.listdir(tmp_path))}"
    cfg = dsc.ModelConfig(**keys)
    dsc.Model(cfg, seed=0).save(d)
    return json.loads((d / "config.json").read_text())


@pytest.mark.parametrize("bad,part", [
    ({"rope_scaling": {"type": "yarn", "rope_type": "default", "factor": 4.0}}, "disagree"),
    ({"rope_theta": 500.0, "rope_scaling": {"type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "disagree"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}, "rope_parameters": {"rope_type": "yarn", "factor": 8.0}},
     "different RoPE scalings"),
    ({"rope_scaling": {"type": "yarn", "factor": 0.0}}, "factor"),
    ({"rope_scaling": {"type": "yarn", "factor": -2.0}}, "factor"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "mscale": -1.0}}, "mscale"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}}, "beta"),
    ({"rope_scaling": {"type": "dynamic", "factor": 4.0}}, "yarn"),
    ({"bos_token_id": 10 ** 6}, "bos_token_id"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "attention_bias"),
    ({"model_type": "llama"}, "model_type"),
    ({"model_type": "deepseek_v2", "scoring_func": "sigmoid"}, "softmax"),
])
def test_bad_values_refused_on_every_path(tmp_path, bad, part):
    base = dict(_sizes(), model_type="deepseek_v3")
    keys = dict(base, **bad)
    with pytest.raises(ValueError, match=part):  # Python
        dsc.ModelConfig(**keys)
    d = tmp_path / "ck"
    dsc.Model(dsc.ModelConfig(**base), seed=0).save(d)
    cj = json.loads((d / "config.json").read_text())
    for k in ("rope_scaling", "rope_theta"):
        if k in bad or "rope_parameters" in bad:
            cj.pop(k, None)
    cj.update(bad)
    (d / "config.json").write_text(json.dumps(cj))
    with pytest.raises(ValueError, match=part):  # the C loader
        dsc.Model.from_pretrained(d)
    with pytest.raises(ValueError, match=part):  # from_json
        dsc.ModelConfig.from_json(d)


@pytest.mark.parametrize("rope", [
    {"rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
    {"rope_scaling": {"type": "yarn", "factor": 4.0, "rope_theta": 20000.0, "original_max_position_embeddings": 32}},
    {"rope_theta": 20000.0, "rope_parameters": {"rope_type": "yarn", "rope_theta": 20000.0, "factor": 4.0,
                                                "original_max_position_embeddings": 32}},
    {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
    {"rope_scaling": None, "rope_theta": 7e4},
])
def test_rope_spellings_survive_save_and_load(tmp_path, rng, rope):
    """Every accepted RoPE spelling means the same to ModelConfig, the model, and the model
    loaded back from its own save (logits bitwise equal)."""
    cfg = dsc.ModelConfig(**dict(_sizes(), **rope))
    m = dsc.Model(cfg, seed=1)
    tok = tokens(cfg, rng)
    m.save(tmp_path)
    m2 = dsc.Model.from_pretrained(tmp_path)
    np.testing.assert_array_equal(m2.forward(tok), m.forward(tok))
    assert m2.cfg.rope_theta == cfg.rope_theta and m2.cfg.rope_scaling == cfg.rope_scaling
    assert dsc.ModelConfig.from_json(tmp_path).to_dict() == m2.cfg.to_dict()


def test_unknown_keys_round_trip(tmp_path):
    keys = dict(_sizes(), architectures=["DeepseekV3ForCausalLM"], transformers_version="5.24.0",
                my_note={"b": [1, 2.0, "x\u00e9"], "a": None}, attention_dropout=0.0, eos_token_id=[1, 5])
    cfg = dsc.ModelConfig(**keys)
    assert cfg.extra["my_note"] == {"a": None, "b": [1, 2.0, "x\u00e9"]}
    dsc.Model(cfg, seed=0).save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["my_note"] == keys["my_note"] and saved["transformers_version"] == "5.24.0"
    assert isinstance(saved["my_note"]["b"][1], float) and isinstance(saved["attention_dropout"], float)
    assert saved["eos_token_id"] == [1, 5] and saved["torch_dtype"] == "float32"
    back = dsc.Model.from_pretrained(tmp_path)
    assert back.cfg.extra["my_note"] == keys["my_note"] and back.cfg.eos_token_id == [1, 5]


@pytest.mark.parametrize("name,data", [
    ("deep", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("utf8", b'{"hidden_size": 64, "note": "\xff\xfe"}'),
    ("surrogate", b'{"n\\ud800": 1}'),
    ("encoded-surrogate", b'{"note": "\xed\xa0\x80"}'),
    ("truncated", b'{"hidden_size": 6'),
])
def test_bad_config_files_give_value_errors(tmp_path, name, data):
    """Never RecursionError or UnicodeDecodeError: ValueError naming the file and the place."""
    d = tmp_path / name
    dsc.Model(dsc.ModelConfig(**_sizes()), seed=0).save(d)
    (d / "config.json").write_bytes(data)
    for call in (lambda: dsc.Model.from_pretrained(d), lambda: dsc.ModelConfig.from_json(d)):
        with pytest.raises(ValueError, match="config.json") as e:
            call()
        assert "line" in str(e.value) or "column" in str(e.value)


def test_failed_step_leaves_the_model_unchanged(rng):
    cfg = dsc.ModelConfig(**_sizes())
    m = dsc.Model(cfg, seed=0)
    tok = tokens(cfg, rng, T=16)
    m.train_step(tok, tok, lr=1e-3)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    bad = tok.copy()
    bad[1, 5] = cfg.vocab_size  # out of range: found in C before anything moves
    with pytest.raises(ValueError, match="targets"):
        m.train_step(tok, bad, lr=1e-3)
    assert m.step == 1
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
