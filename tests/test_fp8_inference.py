"""Inference-only FP8 ("frozen") models: block matrices held only as E4M3 codes with
128x128 block scales, as DeepSeek ships V3 (dsc_model_freeze_fp8, Model.freeze_fp8,
Model.from_pretrained(..., fp8=True, inference_only=True), `generate --fp8`).

Checked against independent references: the codes and scales against the NumPy block
quantizer of tests/reference/fp8.py, generation against the same model's non-frozen fp8
generation (which quantizes the same masters per call), checkpoints against their own
dequantization, memory against a count of the tensors."""
import json

import numpy as np
import pytest

import deepseek_c as dsc
from _util import perturb_norms
from reference import fp8 as R

ml_dtypes = pytest.importorskip("ml_dtypes")

PROMPTS = [[5, 17, 3, 9, 42], [7, 7, 1, 25, 31, 6, 2, 11, 40], [30], [12, 13, 14, 15, 16, 17, 18]]

# a block linear of a decoder block (held in E4M3) vs everything V3 keeps in high precision
HELD = ("q_a_proj.weight", "q_b_proj.weight", "q_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
        "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def held(name: str) -> bool:
    return name.endswith(HELD)


def cfg_(**kw):
    # hidden 160, intermediate 200: matrices of 2 x 2 blocks with partial ones (N, K not multiples of 128)
    keys = dict(vocab_size=64, hidden_size=160, intermediate_size=200, moe_intermediate_size=48,
                num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=6, n_group=3, topk_group=2,
                num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=136, kv_lora_rank=64, qk_nope_head_dim=16,
                qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2, initializer_range=0.1, eos_token_id=None,
                num_nextn_predict_layers=1)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def fp8_model(cfg, seed):
    """An fp8 model with norms and correction biases moved off their init values."""
    m = dsc.Model(cfg, seed=seed, fp8=True)
    perturb_norms(m, np.random.default_rng(seed + 1000))
    return m


@pytest.fixture(scope="module")
def pair():
    seed = int(np.random.default_rng().integers(1 << 20))
    print("seed", seed)
    m = fp8_model(cfg_(), seed)
    return m, m.freeze_fp8()


def f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def test_held_tensors_are_the_reference_block_quantization(pair):
    m, f = pair
    src, fp, fs = m.parameters(), f.parameters(), f.fp8_scales()
    assert set(fp) == set(src)
    n_held = 0
    for k, v in fp.items():
        if held(k):
            n_held += 1
            assert str(v.dtype) == "float8_e4m3fn", k
            q, s = R.quantize(src[k], (128, 128))
            assert np.array_equal(f64(v), q), k
            assert fs[k].dtype == np.float32 and np.array_equal(fs[k], s), k
        else:  # embedding, head, norms, router, correction bias, eh_proj: float32 as they were
            assert v.dtype == np.float32 and np.array_equal(v, src[k]), k
            assert k not in fs
    assert n_held == len(fs) > 0
    # both kinds of stacks are covered: routed experts one by one, and partial 128-blocks
    assert any(".experts.5.down_proj" in k for k in fs)
    assert fs["model.layers.0.mlp.gate_proj.weight"].shape == (2, 2)


def test_frozen_generates_bitwise_like_the_fp8_model(pair):
    m, f = pair
    cases = [dict(), dict(speculative="mtp", num_draft=1), dict(speculative="mtp", num_draft=3),
             dict(temperature=0.9, top_p=0.9, seed=7), dict(temperature=1.0, speculative="mtp", seed=3),
             dict(cache_dtype="float8_e4m3fn", speculative="mtp", num_draft=2)]
    for kw in cases:
        a = m.generate(PROMPTS, max_new_tokens=14, **kw)
        b = f.generate(PROMPTS, max_new_tokens=14, **kw)
        assert list(a) == list(b), kw
        assert a.accept_rate == b.accept_rate, kw
    # greedy speculative == greedy plain holds for the frozen model too
    assert list(f.generate(PROMPTS, max_new_tokens=14, speculative="mtp")) == list(f.generate(PROMPTS, 14))
    # and the streamed tokens are the same
    assert list(f.stream(PROMPTS[1], max_new_tokens=9)) == list(m.generate([PROMPTS[1]], 9))[0]


def test_source_model_is_unchanged_and_still_trains():
    m = fp8_model(cfg_(num_hidden_layers=2), int(np.random.default_rng().integers(1 << 20)))
    before = m.state_dict()
    f = m.freeze_fp8()
    assert not m.frozen and all(np.array_equal(v, before[k]) for k, v in m.state_dict().items())
    codes = f.state_dict()
    tok = np.random.default_rng().integers(0, m.cfg.vocab_size, size=(2, 12))
    st = m.train_step(tok[:, :-1], tok[:, 1:], lr=1e-2)
    assert np.isfinite(st["loss"]) and m.step == 1
    # the frozen copy is its own: training the source does not reach it
    assert all(np.array_equal(f64(v), f64(codes[k])) for k, v in f.state_dict().items())


def test_frozen_memory_is_the_counted_tensors(pair):
    m, f = pair
    n32 = sum(v.size for k, v in m.parameters().items() if not held(k))
    n8 = sum(v.size for k, v in m.parameters().items() if held(k))
    ns = sum(s.size for s in f.fp8_scales().values())
    # the float32 arena holds the MTP modules' own tensors too; count the model's parameters
    assert m.weight_bytes() == 4 * m.num_parameters()
    assert f.weight_bytes() == 4 * (m.num_parameters() - n8) + n8 + 4 * ns
    assert n32 + n8 == m.num_parameters() == f.num_parameters()
    assert f.weight_bytes() < 0.45 * m.weight_bytes()


def test_frozen_checkpoint_round_trip(pair, tmp_path):
    m, f = pair
    f.save(tmp_path)  # optimizer=True by default: a frozen model writes none
    assert not (tmp_path / "optimizer.safetensors").exists()
    cfgj = json.loads((tmp_path / "config.json").read_text())
    assert cfgj["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                           "weight_block_size": [128, 128]}
    sd = dsc.load_safetensors(tmp_path / "model.safetensors")
    fp, fs = f.parameters(), f.fp8_scales()
    for k in fp:
        if k in fs:
            assert str(sd[k].dtype) == "float8_e4m3fn" and np.array_equal(f64(sd[k]), f64(fp[k])), k
            assert np.array_equal(sd[k + "_scale_inv"], fs[k]), k
        else:
            assert sd[k].dtype == np.float32 and np.array_equal(sd[k], fp[k]), k
    assert len(sd) == len(fp) + len(fs)
    # loaded for training: float32 masters = codes * scale, exactly
    g = dsc.Model.from_pretrained(tmp_path)
    assert not g.frozen
    for k in fs:
        assert np.array_equal(g.parameters()[k], R.dequantize(f64(fp[k]), fs[k], (128, 128)).astype(np.float32)), k
    # and saving that one drops the quantization_config (its weights are float32 now)
    g.save(tmp_path / "f32", optimizer=False)
    assert "quantization_config" not in json.loads((tmp_path / "f32" / "config.json").read_text())
    # loaded frozen: the same codes and scales bit for bit, the same tokens
    h = dsc.Model.from_pretrained(tmp_path, fp8=True, inference_only=True)
    assert h.frozen and h.weight_bytes() == f.weight_bytes()
    for k, v in fp.items():
        assert np.array_equal(np.asarray(h.parameters()[k]).view(np.uint8), np.asarray(v).view(np.uint8)), k
    for k, s in fs.items():
        assert np.array_equal(h.fp8_scales()[k].view(np.uint32), s.view(np.uint32)), k
    kw = dict(max_new_tokens=10, speculative="mtp", num_draft=2)
    assert list(h.generate(PROMPTS, **kw)) == list(f.generate(PROMPTS, **kw))
    # state_dict is what the file holds
    st = f.state_dict()
    assert set(st) == set(sd) and all(np.array_equal(f64(st[k]), f64(sd[k])) for k in sd)


def test_frozen_forward_is_the_inference_prefill(pair):
    """A frozen model's logits come from generation's prefill: greedy generation continues
    with their argmax, every step; and they stay within FP8 noise of the fp8 model's
    training forward (which quantizes its activations differently)."""
    m, f = pair
    rng = np.random.default_rng()
    tok = rng.integers(0, f.cfg.vocab_size, size=(3, 9))
    lf = f.forward(tok)
    assert lf.shape == (3, 9, f.cfg.vocab_size) and np.all(np.isfinite(lf))
    out = f.generate(tok.tolist(), max_new_tokens=6)
    exact = 0
    for b in range(3):
        seq = np.concatenate([tok[b], out[b]])
        l_all = f.forward(seq[None, :-1])[0]
        # decode == full forward at every step, up to FP8 rounding flips between the two paths:
        # each generated token's logit within 0.5 std of the row's max, most of them the argmax
        for i, t in enumerate(out[b]):
            row = l_all[8 + i]
            assert row.max() - row[t] <= 0.5 * row.std(), (b, i)
            exact += int(np.argmax(row) == t)
        # alone and longer vs in the batch: the same up to FP8 rounding flips (an expert's rows
        # go through another GEMM kernel when their count changes, moving last bits that an
        # E4M3 rounding can turn into a code step)
        d = np.abs(l_all[:9] - lf[b])
        assert np.median(d) < 0.02 * np.abs(lf[b]).max() and np.corrcoef(l_all[:9].ravel(), lf[b].ravel())[0, 1] > 0.95
    assert exact >= 14, exact  # of 18
    # as close to the float32 model as the fp8 model's training forward is (this random
    # model, init 0.1, amplifies FP8 noise: both sit ~4% of max|logit| away in the median)
    m32 = dsc.Model(m.cfg)
    m32.load_state_dict(m.state_dict())
    l32, lm = m32.forward(tok), m.forward(tok)
    ef, et = np.median(np.abs(lf - l32)), np.median(np.abs(lm - l32))
    assert ef < 1.5 * et + 1e-3 * np.abs(l32).max(), (ef, et)
    assert np.corrcoef(lf.ravel(), l32.ravel())[0, 1] > 0.85


def test_frozen_model_refuses_training(pair):
    _, f = pair
    tok = np.random.default_rng().integers(0, f.cfg.vocab_size, size=(2, 8))
    name = "model.layers.1.self_attn.o_proj.weight"
    for call in (lambda: f.forward_mtp(tok), lambda: f.routing(tok),
                 lambda: f.loss_and_grads(tok, tok), lambda: f.train_step(tok, tok, lr=1e-3),
                 lambda: f.grad(name), lambda: f.optimizer_state(name),
                 lambda: f.load_state_dict(f.state_dict())):
        with pytest.raises(ValueError, match="frozen"):
            call()
    assert f.freeze_fp8() is f  # freezing again: the same model
    assert "fp8=frozen" in repr(f)


def test_inference_only_needs_fp8(pair, tmp_path):
    m, _ = pair
    m.save(tmp_path, optimizer=False)
    with pytest.raises(ValueError, match="inference_only: expected fp8=True"):
        dsc.Model.from_pretrained(tmp_path, inference_only=True)
    with pytest.raises(TypeError, match="inference_only"):
        dsc.Model.from_pretrained(tmp_path, fp8=True, inference_only="yes")


def test_a_float32_trained_model_freezes(tmp_path):
    """Freezing a model trained in float32: the copy runs FP8 GEMMs (fp8 is implied) and
    generates like the same weights in an fp8 model."""
    cfg = cfg_(num_hidden_layers=2)
    m = dsc.Model(cfg, seed=int(np.random.default_rng().integers(1 << 20)))
    f = m.freeze_fp8()
    assert f.frozen and f.fp8 and not m.fp8
    m8 = dsc.Model(cfg, fp8=True)
    m8.load_state_dict(m.state_dict())
    assert list(f.generate(PROMPTS, 12)) == list(m8.generate(PROMPTS, 12))


@pytest.mark.cuda
def test_cuda_frozen_matches_cpu(pair):
    if not dsc.has_cuda():
        pytest.skip("no CUDA device")
    m, f = pair
    g = dsc.Model(m.cfg, device="cuda", fp8=True)
    g.load_state_dict(m.state_dict())
    gf = g.freeze_fp8()
    for k, v in f.parameters().items():
        assert np.array_equal(f64(dsc.to_numpy(gf.parameters()[k])), f64(v)), k
    assert gf.weight_bytes() == f.weight_bytes()
    kw = dict(max_new_tokens=10, speculative="mtp", num_draft=2)
    a, b = f.generate(PROMPTS, **kw), gf.generate(PROMPTS, **kw)
    # FP8 GEMMs on the GPU sum in another order: the tokens agree where the logits are not near-tied
    agree = np.mean([x == y for p, q in zip(a, b) for x, y in zip(p, q)])
    assert agree > 0.8, (list(a), list(b))
