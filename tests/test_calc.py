"""The model calculator (dsc_model_calc, dsc.calc, ModelConfig.calc, `info --config`):
parameter counts against independent hand counts (tests/reference/calc.py lists every tensor)
and against the models dsc.Model builds (every tensor once), DeepSeek-V3's published and
checkpoint-derived numbers, KV-cache bytes (MLA bf16/fp8 vs MHA/GQA, and the library's own
latent cache), FLOPs per token formulas, memory per GPU for a layout and recipe, the library's
measured weight/optimizer bytes, bad options, the CLI, and the README's claims table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import deepseek_c as dsc
from reference import calc as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**kw):
    return dsc.ModelConfig.tiny(**kw)


# small configs that exercise every counting rule (dims not multiples of 128 for the scales)
VARIANTS = {
    "tiny": {},
    "dense_first_2": dict(num_hidden_layers=4, first_k_dense_replace=2),
    "moe_layer_freq_2": dict(num_hidden_layers=4, first_k_dense_replace=0, moe_layer_freq=2),
    "no_q_lora": dict(q_lora_rank=None),
    "tied_embeddings": dict(tie_word_embeddings=True),
    "mtp_0": dict(num_nextn_predict_layers=0),
    "mtp_2": dict(num_nextn_predict_layers=2),
    "two_shared_odd_dims": dict(hidden_size=200, n_shared_experts=2, moe_intermediate_size=72,
                                intermediate_size=300, vocab_size=333),
    "v2_style_no_bias": dict(model_type="deepseek_v2", scoring_func="softmax", topk_method="greedy", n_group=1,
                             topk_group=1, num_nextn_predict_layers=0, norm_topk_prob=False),
}


def hand_totals(cfg):
    """Totals from the hand count: total, main, mtp, routed, active (main), active (mtp 0)."""
    h = ref.count(cfg)
    total = sum(t.numel for t in h.tensors)
    mtp = sum(t.numel for t in h.tensors if t.module != "main")
    routed = sum(t.numel for t in h.tensors if t.expert)
    K, F, D = cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.hidden_size

    def active(mod):
        ts = [t for t in h.tensors if t.module == mod]
        moe_blocks = {t.name.split(".mlp.")[0] for t in ts if t.expert}
        return sum(t.numel for t in ts if not t.expert) + len(moe_blocks) * K * 3 * D * F

    return dict(total=total, main=total - mtp, mtp=mtp, routed=routed, active=active("main"),
                active_mtp=active("mtp0") if cfg.num_nextn_predict_layers else 0, tensors=len(h.tensors))


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_match_hand_counts(name):
    cfg = tiny(**VARIANTS[name])
    r = cfg.calc()
    want = hand_totals(cfg)
    assert r.params_total == want["total"]
    assert r.params_main == want["main"] and r.params_mtp == want["mtp"]
    assert r.params_routed_experts == want["routed"]
    assert r.params_active == want["active"]
    assert r.params_active_mtp == want["active_mtp"]
    assert r.n_tensors == want["tensors"]
    V, D = cfg.vocab_size, cfg.hidden_size
    assert r.params_embedding == V * D
    assert r.params_head == (0 if cfg.tie_word_embeddings else V * D)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_match_the_built_model(name):
    """Every tensor dsc.Model builds, counted once (the MTP modules share embedding and head)."""
    cfg = tiny(**VARIANTS[name])
    r = dsc.calc(cfg)
    m = dsc.Model(cfg, seed=0)
    params = m.parameters()
    assert r.params_total == m.num_parameters() == sum(v.size for v in params.values())
    assert r.n_tensors == len(params)
    # the hand count names exactly the model's tensors
    assert sorted(t.name for t in ref.count(cfg).tensors) == sorted(params)
    # FP32 weights are the model's float32 arena
    assert dsc.calc(cfg, recipe="fp32").weight_bytes == m.weight_bytes() == 4 * m.num_parameters()


def test_fp8_counts_match_a_frozen_model():
    """fp8_params / fp8_scales are what freeze_fp8 holds in E4M3 and its block scales."""
    for name in ("tiny", "two_shared_odd_dims", "no_q_lora"):
        cfg = tiny(**VARIANTS[name])
        r = cfg.calc(recipe="fp8")
        f = dsc.Model(cfg, seed=0).freeze_fp8()
        held = [v for v in f.parameters().values() if str(v.dtype) == "float8_e4m3fn"]
        assert r.fp8_params == sum(v.size for v in held)
        assert r.fp8_scales == sum(s.size for s in f.fp8_scales().values())
        # the frozen model keeps the rest in float32 (the FP8 recipe's BF16 tensors are 2 bytes)
        rest = r.params_total - r.fp8_params
        frozen = r.fp8_params + 4 * r.fp8_scales + 4 * rest
        assert 0 <= f.weight_bytes() - frozen < 256  # alignment padding of the scale block only
        h = ref.count(cfg)
        bias = sum(t.numel for t in h.tensors if t.kind == "bias")
        hp = sum(t.numel for t in h.tensors if t.kind == "hp")
        assert r.weight_bytes == r.fp8_params + 4 * r.fp8_scales + 2 * hp + 4 * bias


def test_deepseek_v3_counts():
    """DeepSeek-V3 (671B) from its config.json: the counts of the checkpoint (91,991 tensors,
    688,574,839,360 bytes: E4M3 block linears + float32 weight_scale_inv, BF16 rest, float32
    correction bias, the MTP layer's copies of embedding and head) and the report's totals."""
    cfg = dsc.ModelConfig.v3()
    r = cfg.calc(recipe="fp8")
    assert r.checkpoint_tensors == 91_991
    assert r.checkpoint_bytes == 688_574_839_360
    assert round(r.params_main / 1e9, 2) == 671.03        # "671B total"
    assert round(r.params_active / 1e9, 2) == 37.55       # "37B activated" (embedding and head included)
    assert round(r.params_active_no_embedding / 1e9, 2) == 36.63
    assert round(r.params_mtp / 1e9, 2) == 11.61          # "11.5B unique" MTP parameters
    assert r.params_embedding == r.params_head == 129280 * 7168
    h = hand_totals(cfg)
    assert (r.params_total, r.params_active, r.n_tensors) == (h["total"], h["active"], h["tensors"])


def test_deepseek_v2_counts():
    r = dsc.ModelConfig.v2().calc()
    assert round(r.params_total / 1e9) == 236 and round(r.params_active / 1e9) == 21  # "236B total, 21B activated"
    assert r.params_mtp == 0 and r.decode_macs_mtp == 0 and r.mtp_cost_ratio == 0.0


def test_config_json_path_and_dict(tmp_path):
    cfg = tiny(num_hidden_layers=3)
    cfg.to_json(tmp_path / "config.json")
    a, b, c = dsc.calc(str(tmp_path / "config.json")), dsc.calc(tmp_path), dsc.calc(cfg.to_dict())
    assert a == b == c == cfg.calc()


# ----------------------------------------------------------------------------- KV cache


def test_kv_cache_bytes():
    cfg = dsc.ModelConfig.v3()
    r = cfg.calc(compare_kv_heads=8)
    L = 61
    assert r.kv_values_per_layer == 576
    assert r.kv_bytes_mla_bf16 == 1152 * L                # 576 values x 2 bytes per layer
    assert r.kv_bytes_mla_fp8 == 656 * L                  # 512 E4M3 + 4 float32 scales + 64 bf16 (FlashMLA)
    assert r.kv_bytes_mha_bf16 == 2 * L * 128 * (192 + 128)
    assert r.kv_bytes_gqa_bf16 == 2 * L * 8 * (192 + 128)
    assert dsc.ModelConfig.v3().calc().kv_bytes_gqa_bf16 == r.kv_bytes_mha_bf16  # 0 = MHA


@pytest.mark.parametrize("dtype,field", [("bfloat16", "kv_bytes_mla_bf16"), ("float8_e4m3fn", "kv_bytes_mla_fp8")])
def test_kv_cache_bytes_match_the_library_cache(dtype, field):
    for cfg in (dsc.ModelConfig.v3(), tiny(kv_lora_rank=200)):
        r = cfg.calc()
        cache = dsc.MLACache(cfg, max_batch=1, max_tokens=8, dtype=dtype)
        assert getattr(r, field) == cache.bytes_per_token * cfg.num_hidden_layers


# ----------------------------------------------------------------------------- FLOPs


def _flops_by_hand(cfg, S):
    h = ref.count(cfg)
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    dqk, dv, Rkv, dr = cfg.qk_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    attn_tok = 2 * H * (dqk + dv) * (S + 1) / 2             # causal: (S+1)/2 keys on average
    fwd_w = 2 * h.macs_main
    fwd_a = L * attn_tok
    mtp = sum(2 * m + attn_tok for m in h.macs_mtp)
    decode = fwd_w + L * 2 * H * ((Rkv + dr) + Rkv) * S     # absorbed: scores over Rkv+dr, values over Rkv
    return dict(fwd_w=fwd_w, fwd_a=fwd_a, mtp=mtp, train=3 * (fwd_w + fwd_a + mtp), decode=decode)


@pytest.mark.parametrize("name,S", [("tiny", 64), ("mtp_2", 100), ("no_q_lora", 1), ("moe_layer_freq_2", 33)])
def test_flops_per_token(name, S):
    cfg = tiny(**VARIANTS[name])
    r = cfg.calc(context=S)
    want = _flops_by_hand(cfg, S)
    assert r.flops_fwd_weights == pytest.approx(want["fwd_w"], rel=1e-12)
    assert r.flops_fwd_attention == pytest.approx(want["fwd_a"], rel=1e-12)
    assert r.flops_fwd_mtp == pytest.approx(want["mtp"], rel=1e-12)
    assert r.flops_train == pytest.approx(want["train"], rel=1e-12)
    assert r.flops_decode == pytest.approx(want["decode"], rel=1e-12)


def test_flops_v3_and_the_6N_rule():
    r = dsc.ModelConfig.v3().calc(context=4096)
    # products with weights = 2 x (activated parameters - embedding - norms/bias), about 2 x 36.6B
    assert r.flops_fwd_weights == pytest.approx(2 * r.params_active_no_embedding, rel=2e-3)
    assert r.flops_fwd_weights == 2 * r.decode_macs_main
    assert r.flops_fwd_attention == pytest.approx(61 * 2 * 128 * 320 * 4097 / 2, rel=1e-12)
    assert 250e9 < r.flops_train < 270e9


def test_decode_macs_match_bench_decode():
    """The MTP cost ratio is bench_decode's step_macs (and the committed results' numbers)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_decode
    finally:
        sys.path.pop(0)
    from deepseek_c import data as D, train as TR

    for cfg in (tiny(), tiny(**VARIANTS["moe_layer_freq_2"]), dsc.ModelConfig.v3(),
                TR.demo_config(D.CharTokenizer().vocab_size)):
        r = cfg.calc()
        sm = bench_decode.step_macs(cfg)
        assert (r.decode_macs_main, r.decode_macs_mtp) == (sm["main"], sm["mtp"])
        assert round(r.mtp_cost_ratio, 4) == sm["ratio"]
    res = os.path.join(ROOT, "benchmarks", "results", "decode_cpu_2026-11-23.json")
    if os.path.exists(res):
        with open(res) as fh:
            dm = json.load(fh)["demo_step_macs"]
        r = TR.demo_config(D.CharTokenizer().vocab_size).calc()
        assert (r.decode_macs_main, r.decode_macs_mtp) == (dm["main"], dm["mtp"])


# ----------------------------------------------------------------------------- memory


def _memory_by_hand(cfg, recipe, moments, tp, pp, dp, ep, zero1, mbt):
    h = ref.count(cfg)
    ex = [t for t in h.tensors if t.expert]
    ot = [t for t in h.tensors if not t.expert]

    def wbytes(ts):
        if recipe == "fp32":
            return sum(4 * t.numel for t in ts)
        if recipe == "bf16":
            return sum((4 if t.kind == "bias" else 2) * t.numel for t in ts)
        return sum(t.numel + 4 * t.scales if t.kind == "linear" else (4 if t.kind == "bias" else 2) * t.numel
                   for t in ts)

    def trained(ts):
        return sum(t.numel for t in ts if t.kind != "bias")

    shard_o, shard_e = (dp, dp / ep) if zero1 else (1, 1)
    mom = 2 if moments == "bfloat16" else 4
    w = (wbytes(ot) / tp + wbytes(ex) / ep) / pp
    master = 0 if recipe == "fp32" else 4 * (trained(ot) / tp / shard_o + trained(ex) / ep / shard_e) / pp
    grads = 4 * (trained(ot) / tp + trained(ex) / ep) / pp
    opt = 2 * mom * (trained(ot) / tp / shard_o + trained(ex) / ep / shard_e) / pp
    ab = 4 if recipe == "fp32" else 2
    if recipe == "fp8":
        per_tok = (h.act_values - h.act_fp8) * ab + h.act_fp8 * (1 + 4 / 128) + 4 * h.logits
    else:
        per_tok = h.act_values * ab + 4 * h.logits
    acts = mbt * per_tok / tp / pp
    return dict(mem_weights=w, mem_master=master, mem_grads=grads, mem_optimizer=opt, mem_activations=acts,
                mem_total=w + master + grads + opt + acts, weight_bytes=wbytes(h.tensors))


@pytest.mark.parametrize("cfg_name,recipe,moments,tp,pp,dp,ep,zero1,mbt", [
    ("v3", "fp8", "bfloat16", 1, 16, 128, 64, True, 4096),     # DeepSeek-V3's layout: PP16 x EP64, ZeRO-1
    ("v3", "bf16", "float32", 2, 8, 64, 8, False, 2048),
    ("v3", "fp32", "float32", 1, 1, 1, 1, False, 1),
    ("tiny", "fp8", "float32", 2, 2, 4, 4, True, 64),
    ("mtp_2", "bf16", "bfloat16", 4, 1, 2, 2, True, 100),
])
def test_memory_per_gpu(cfg_name, recipe, moments, tp, pp, dp, ep, zero1, mbt):
    cfg = dsc.ModelConfig.v3() if cfg_name == "v3" else tiny(**VARIANTS[cfg_name])
    r = cfg.calc(recipe=recipe, moments=moments, tp=tp, pp=pp, dp=dp, ep=ep, zero1=zero1, micro_batch_tokens=mbt)
    want = _memory_by_hand(cfg, recipe, moments, tp, pp, dp, ep, zero1, mbt)
    assert r.gpus == tp * pp * dp
    for k, v in want.items():
        assert getattr(r, k) == pytest.approx(v, rel=1e-12), k


def test_memory_v3_layout_sanity():
    """V3's own layout: fits an 80 GB H800 (weights + masters + grads + moments + activations)."""
    r = dsc.ModelConfig.v3().calc(recipe="fp8", pp=16, dp=128, ep=64, zero1=True, micro_batch_tokens=4096)
    assert r.gpus == 2048
    assert r.mem_total < 80e9
    f32 = dsc.ModelConfig.v3().calc(recipe="fp32", moments="float32")
    assert f32.mem_master == 0 and f32.mem_optimizer == 2 * f32.mem_grads == 8 * (f32.params_total - 58 * 256 - 256)


def test_optimizer_bytes_match_the_library():
    """The moments the library allocates (float32 or bfloat16) are mem_optimizer on one GPU."""
    cfg = tiny()
    for moments in ("float32", "bfloat16"):
        m = dsc.Model(cfg, seed=0, moments=moments)
        rng = np.random.default_rng(1)
        t = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
        m.train_step(t, t, lr=1e-3)
        got = 0
        for name in m.parameters():
            if name.endswith("e_score_correction_bias"):
                continue
            a, b = m.optimizer_state(name)
            got += a.nbytes + b.nbytes
        assert got == cfg.calc(recipe="fp32", moments=moments).mem_optimizer


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(context=0), ValueError, "context"),
    (dict(context=1.5), TypeError, "context"),
    (dict(recipe="fp16"), ValueError, "recipe"),
    (dict(moments="float16"), ValueError, "moments"),
    (dict(tp=3), ValueError, "opt->tensor_parallel: expected a divisor of num_attention_heads (4), got 3"),
    (dict(pp=5), ValueError, "opt->pipeline_parallel: expected 1..num_hidden_layers (2), got 5"),
    (dict(dp=0), ValueError, "dp"),
    (dict(dp=4, ep=3), ValueError, "opt->expert_parallel: expected a divisor of data_parallel (4)"),
    (dict(dp=32, ep=32), ValueError, "n_routed_experts (16)"),
    (dict(zero1=1), TypeError, "zero1"),
    (dict(micro_batch_tokens=0), ValueError, "micro_batch_tokens"),
    (dict(compare_kv_heads=3), ValueError, "opt->compare_kv_heads"),
    (dict(tp=True), TypeError, "tp"),
    (dict(tp=2**40), ValueError, "tp"),
])
def test_bad_options(kw, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        tiny().calc(**kw)


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="expert_parallel: expected 1 \\(the config has no routed experts\\)"):
        tiny(n_routed_experts=0).calc(ep=2, dp=2)
    with pytest.raises(TypeError, match="cfg: expected a ModelConfig"):
        dsc.calc(42)
    with pytest.raises(ValueError, match="cannot read"):
        dsc.calc(str(tmp_path / "missing.json"))
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": "big"}')
    with pytest.raises(ValueError, match="hidden_size"):
        dsc.calc(str(p))
    p.write_text('{"hidden_size": 64, ')
    with pytest.raises(ValueError):
        dsc.calc(str(p))
    with pytest.raises(ValueError, match="vocab_size: expected 1..16777216"):  # the config bounds come first
        dsc.calc(tiny(vocab_size=2**31 - 1, hidden_size=2**31 - 1, eos_token_id=1, bos_token_id=0))


def test_all_dense_config():
    cfg = tiny(n_routed_experts=0)
    r = cfg.calc()
    assert r.params_routed_experts == 0 and r.params_total == dsc.Model(cfg).num_parameters()
    assert r.params_active == r.params_total - r.params_mtp  # everything is used


# ----------------------------------------------------------------------------- CLI


def _cli(*args, cwd):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "deepseek_c", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_info_config(tmp_path):
    dsc.ModelConfig.v3().to_json(tmp_path / "config.json")
    r = _cli("info", "--config", "config.json", "--context", "4096", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = r.stdout
    assert "682.636B" in out and "37.552B" in out and "36.626B without the embedding" in out
    assert "91,991 tensors" in out and "688,574,839,360" not in out  # bytes shown in GiB for the checkpoint
    assert "68.62 KiB" in out and "4.77 MiB" in out
    r = _cli("info", "--config", str(tmp_path), "--ep", "3", cwd=tmp_path)
    assert r.returncode != 0 and "expert_parallel" in r.stderr and "Traceback" not in r.stderr
    r = _cli("info", "--config", "nope.json", cwd=tmp_path)
    assert r.returncode != 0 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("info", cwd=tmp_path)  # without --config: the build, as before
    assert r.returncode == 0 and r.stdout.startswith("deepseek_c ")


# ----------------------------------------------------------------------------- README claims table


def test_readme_claims_table_matches_the_committed_json():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import claims_table
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "benchmarks", "results", "claims.json")) as fh:
        claims = json.load(fh)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert claims_table.section(readme) == claims_table.render(claims)


def test_committed_claims_json_is_current():
    """The config-derived entries of claims.json are what the calculator gives now (the
    notebook computed them; a change of the counting rules must re-run the notebook)."""
    with open(os.path.join(ROOT, "benchmarks", "results", "claims.json")) as fh:
        claims = json.load(fh)
    computed = claims["computed"]
    r = dsc.ModelConfig.v3().calc(context=computed["context"])
    assert computed["v3_params_main"] == r.params_main
    assert computed["v3_params_active"] == r.params_active
    assert computed["v3_flops_train_per_token"] == pytest.approx(r.flops_train, rel=1e-12)
    assert computed["v3_kv_bytes_mla_bf16"] == r.kv_bytes_mla_bf16
    assert computed["v3_mtp_cost_ratio"] == pytest.approx(r.mtp_cost_ratio, rel=1e-12)
