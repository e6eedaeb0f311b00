"""Multi-head Latent Attention: ModelConfig, the training forward/backward against an
independent NumPy float64 reference and finite differences, and the paged latent cache
(absorbed decode == naive attention, prefill + decode == one causal forward, paged ==
contiguous, bad arguments leave the cache usable)."""

import json

import numpy as np
import pytest

import deepseek_c as dsc
from reference import fp8 as fp8ref
from reference import mla as ref


def small_cfg(q_lora=True, **kw):
    """V3-like proportions at CPU-test size (every code path of the real model)."""
    keys = dict(hidden_size=96, num_attention_heads=4, q_lora_rank=48 if q_lora else None, kv_lora_rank=32,
                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def make(cfg, rng, B=2, T=7, scale=1.0):
    w = ref.init_weights(cfg, rng, scale)
    x = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
    return w, x


# --------------------------------------------------------------------------- config


def test_config_v3_defaults_and_softmax_scale():
    cfg = dsc.ModelConfig()
    assert cfg.hidden_size == 7168 and cfg.kv_lora_rank == 512 and cfg.qk_head_dim == 192
    assert cfg.q_lora and cfg.mla_cache_elements_per_token == 576
    assert abs(cfg.softmax_scale - 0.1352338) < 1e-6
    assert abs(dsc.ModelConfig.v2_lite().softmax_scale - 0.1147214) < 1e-6


def test_config_rope_parameters_spelling_and_extra(tmp_path):
    a = dsc.ModelConfig(rope_theta=10000, rope_scaling={"type": "yarn", "factor": 40, "mscale": 1.0,
                                                         "mscale_all_dim": 1.0,
                                                         "original_max_position_embeddings": 4096})
    b = dsc.ModelConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 10000, "factor": 40, "mscale": 1.0,
                                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
                        some_future_key=3)
    assert a.rope_scaling_dict == b.rope_scaling_dict and a.softmax_scale == b.softmax_scale
    assert b.extra == {"some_future_key": 3}
    p = tmp_path / "config.json"
    b.to_json(p)
    c = dsc.ModelConfig.from_json(tmp_path)
    assert c.to_dict() == b.to_dict() and json.loads(p.read_text())["some_future_key"] == 3
    none = dsc.ModelConfig(rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    assert none.rope_scaling is None and none.rope_theta == 5e5
    assert abs(none.softmax_scale - 192 ** -0.5) < 1e-7


def test_config_kv_heads_follow_attention_heads(tmp_path):
    """MLA has no grouped KV heads: num_key_value_heads always equals num_attention_heads
    (Hugging Face's DeepseekV3 needs it), also after a change and in a saved config."""
    c = dsc.ModelConfig(num_attention_heads=8, num_key_value_heads=2)
    assert c.num_key_value_heads == 8
    c.num_attention_heads = 4
    assert c.to_dict()["num_key_value_heads"] == 4
    c.to_json(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["num_key_value_heads"] == 4


def test_config_q_lora_null_and_zero():
    assert dsc.ModelConfig(q_lora_rank=None).q_lora_rank is None
    assert dsc.ModelConfig(q_lora_rank=0).q_lora_rank is None
    assert "q_proj.weight" in dsc.ModelConfig(q_lora_rank=0).mla_weight_shapes()


@pytest.mark.parametrize("key,value", [("hidden_size", 0), ("kv_lora_rank", -1), ("qk_rope_head_dim", 7),
                                       ("rms_norm_eps", float("nan")), ("n_group", 3), ("scoring_func", "relu"),
                                       ("rope_scaling", {"type": "linear", "factor": 2})])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key.split("_scaling")[0]):
        dsc.ModelConfig(**{key: value})


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("q_lora", [True, False])
def test_forward_matches_reference(rng, q_lora):
    cfg = small_cfg(q_lora)
    w, x = make(cfg, rng, B=3, T=11)
    pos = (np.arange(11)[None, :] + np.array([[0], [5], [200]])).astype(np.int32)  # past YaRN's L0
    out, _ = dsc.mla_forward(x, w, cfg, pos)
    want = ref.mla_forward(x, w, cfg, pos)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_forward_v3_head_dims(rng):
    """The real per-head dims (nope 128, rope 64, v 128, kv_lora 512), few heads."""
    cfg = dsc.ModelConfig(hidden_size=128, num_attention_heads=2, q_lora_rank=64)
    w, x = make(cfg, rng, B=1, T=5)
    out, _ = dsc.mla_forward(x, w, cfg)
    want = ref.mla_forward(x, w, cfg)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("q_lora", [True, False])
def test_backward_finite_differences(rng, q_lora):
    """Directional derivatives of L = sum(out * dout): float64 reference FD vs float32 grads."""
    cfg = small_cfg(q_lora, hidden_size=24, num_attention_heads=2, q_lora_rank=12 if q_lora else None,
                    kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5)
    w, x = make(cfg, rng, B=2, T=5, scale=1.5)
    pos = np.array([[0, 1, 2, 3, 4], [60, 61, 62, 63, 64]], np.int32)
    out, ctx = dsc.mla_forward(x, w, cfg, pos)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g = dsc.mla_backward(dout, ctx)
    assert set(g) == {"x", *w}

    def loss(xx, ww):
        return float(np.sum(ref.mla_forward(xx, ww, cfg, pos) * dout))

    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    x64 = x.astype(np.float64)
    eps = 1e-5
    for name in ["x", *w]:
        for _ in range(2):
            base = x64 if name == "x" else w64[name]
            d = rng.standard_normal(base.shape)
            if name == "x":
                fd = (loss(x64 + eps * d, w64) - loss(x64 - eps * d, w64)) / (2 * eps)
            else:
                fd = (loss(x64, {**w64, name: base + eps * d}) - loss(x64, {**w64, name: base - eps * d})) / (2 * eps)
            got = float(np.sum(g[name].astype(np.float64) * d))
            assert abs(got - fd) <= 2e-3 * max(1.0, abs(fd)), (name, got, fd)


def test_long_sequence_across_query_blocks(rng):
    """T = 150 spans the CPU attention's 64-row query blocks (64, 64, 22; the causal mask
    inside each block, keys up to the block's end): forward against the float64 reference,
    backward against its directional derivatives (x and every weight)."""
    cfg = small_cfg(True, hidden_size=32, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
                    qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
    w, x = make(cfg, rng, B=2, T=150, scale=1.5)
    out, ctx = dsc.mla_forward(x, w, cfg)
    want = ref.mla_forward(x, w, cfg)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g = dsc.mla_backward(dout, ctx)
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    x64 = x.astype(np.float64)

    def loss(xx, ww):
        return float(np.sum(ref.mla_forward(xx, ww, cfg) * dout))

    eps = 1e-5
    for name in ["x", *w]:
        base = x64 if name == "x" else w64[name]
        d = rng.standard_normal(base.shape)
        if name == "x":
            fd = (loss(x64 + eps * d, w64) - loss(x64 - eps * d, w64)) / (2 * eps)
        else:
            fd = (loss(x64, {**w64, name: base + eps * d}) - loss(x64, {**w64, name: base - eps * d})) / (2 * eps)
        got = float(np.sum(g[name].astype(np.float64) * d))
        assert abs(got - fd) <= 2e-3 * max(1.0, abs(fd)), (name, got, fd)


def test_backward_positions_and_grads_dtype(rng):
    cfg = small_cfg()
    w, x = make(cfg, rng, B=1, T=4)
    out, ctx = dsc.mla_forward(x, w, cfg)
    g = dsc.mla_backward(np.ones_like(out), ctx)
    assert all(v.dtype == np.float32 for v in g.values())
    assert g["q_a_layernorm.weight"].shape == (cfg.q_lora_rank,)
    assert np.all(np.isfinite(g["kv_a_layernorm.weight"]))


def test_forward_bad_inputs(rng):
    cfg = small_cfg()
    w, x = make(cfg, rng, B=1, T=4)
    bad = dict(w)
    bad["kv_b_proj.weight"] = np.zeros((5, cfg.kv_lora_rank), np.float32)
    with pytest.raises(ValueError, match="kv_b_proj"):
        dsc.mla_forward(x, bad, cfg)
    bad = dict(w)
    bad["q_a_layernorm.weight"] = np.ones(cfg.q_lora_rank + 1, np.float32)
    with pytest.raises(ValueError, match="q_a_layernorm"):
        dsc.mla_forward(x, bad, cfg)
    missing = {k: v for k, v in w.items() if k != "o_proj.weight"}
    with pytest.raises(ValueError, match="o_proj"):
        dsc.mla_forward(x, missing, cfg)
    with pytest.raises(ValueError, match="x: expected a last dim equal to hidden"):
        dsc.mla_forward(x[..., :-1].copy(), w, cfg)
    with pytest.raises(ValueError, match="positions"):
        dsc.mla_forward(x, w, cfg, np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="positions: expected values >= 0, got -2 at index 2"):
        dsc.mla_forward(x, w, cfg, np.array([[0, 1, -2, 3]], np.int32))
    with pytest.raises(TypeError):
        dsc.mla_forward(x.astype(np.float64), w, cfg)
    with pytest.raises(TypeError, match="ctx"):
        dsc.mla_backward(x, object())


# --------------------------------------------------------------------------- cache


def prompt(cfg, rng, B, T):
    return rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)


def test_cache_bytes_per_token():
    v3 = dsc.ModelConfig()
    assert dsc.MLACache(v3, max_batch=1, max_tokens=64, dtype="bfloat16").bytes_per_token == 576 * 2
    assert dsc.MLACache(v3, max_batch=1, max_tokens=64, dtype="float32").bytes_per_token == 576 * 4
    assert dsc.MLACache(v3, max_batch=1, max_tokens=64, dtype="float8_e4m3fn").bytes_per_token == 656


@pytest.mark.parametrize("q_lora", [True, False])
def test_absorbed_decode_equals_naive(rng, q_lora):
    """Decode of the whole prompt (absorbed) == the reference's naive causal attention."""
    cfg = small_cfg(q_lora)
    w, x = make(cfg, rng, B=2, T=9)
    cache = dsc.MLACache(cfg, max_batch=2, max_tokens=32, block_size=4, dtype="float32")
    cache.add_sequence(10), cache.add_sequence(11)
    out = dsc.mla_decode(x, w, cfg, cache, [10, 11])
    want = ref.mla_forward(x, w, cfg)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the cached latents are the normalized ckv and the rotated k_pe
    q, ckv, kpe = ref.mla_parts(x, w, cfg, np.broadcast_to(np.arange(9), (2, 9)))
    lat, rope = cache.read(11)
    np.testing.assert_allclose(lat, ckv[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rope, kpe[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 3e-2), ("float8_e4m3fn", 8e-2)])
def test_prefill_then_decode_equals_full_forward(rng, dtype, tol):
    cfg = small_cfg()
    w, x = make(cfg, rng, B=2, T=12)
    full, _ = dsc.mla_forward(x, w, cfg)
    cache = dsc.MLACache(cfg, max_batch=4, max_tokens=16, block_size=4, dtype=dtype)
    for s in (0, 1):
        cache.add_sequence(s)
    P = 5
    outs = [dsc.mla_prefill(x[:, :P].copy(), w, cfg, cache, [0, 1])]
    for t in range(P, 12):
        outs.append(dsc.mla_decode(x[:, t:t + 1].copy(), w, cfg, cache, [0, 1]))
    got = np.concatenate(outs, axis=1)
    assert cache.length(0) == 12 and len(cache.block_table(0)) == 3
    err = np.abs(got - full).max() / np.abs(full).max()
    assert err < tol, err


def test_long_prefill_in_chunks_and_continued(rng):
    """Prompts long enough that the CPU's BLAS prefill splits them into query chunks (4 heads
    x 500 keys x 500 rows > 2^19 scores: chunks of 262 rows), one of them continued by a
    second multi-row call from position 500, the other ragged (470 tokens, then padding):
    against the float64 reference."""
    cfg = small_cfg(True, hidden_size=32, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16,
                    qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_position_embeddings=1024)
    w, x = make(cfg, rng, B=2, T=600)
    want = ref.mla_forward(x, w, cfg)
    cache = dsc.MLACache(cfg, max_batch=2, max_tokens=600, block_size=16, dtype="float32")
    for s in (0, 1):
        cache.add_sequence(s)
    pos = np.tile(np.arange(500, dtype=np.int32), (2, 1))
    pos[1, 470:] = -1
    first = dsc.mla_prefill(x[:, :500].copy(), w, cfg, cache, [0, 1], positions=pos)
    pos2 = np.arange(500, 600, dtype=np.int32)[None, :]
    second = dsc.mla_prefill(x[:1, 500:].copy(), w, cfg, cache, [0], positions=pos2)
    got0 = np.concatenate([first[0], second[0]], axis=0)
    scale = np.abs(want).max()
    assert np.abs(got0 - want[0]).max() / scale < 1e-4
    assert np.abs(first[1, :470] - want[1, :470]).max() / scale < 1e-4
    assert not np.any(first[1, 470:])


def test_multi_token_decode_and_truncate(rng):
    """n > 1 query tokens per sequence (MTP verification), then rejecting drafts."""
    cfg = small_cfg()
    w, x = make(cfg, rng, B=1, T=10)
    full, _ = dsc.mla_forward(x, w, cfg)
    cache = dsc.MLACache(cfg, max_batch=1, max_tokens=16, block_size=4, dtype="float32")
    cache.add_sequence(7)
    dsc.mla_prefill(x[:, :6].copy(), w, cfg, cache, [7])
    junk = rng.standard_normal((1, 3, cfg.hidden_size)).astype(np.float32)
    dsc.mla_decode(junk, w, cfg, cache, [7])  # 3 draft tokens, all rejected
    assert cache.length(7) == 9
    cache.truncate(7, 6)
    assert cache.length(7) == 6 and len(cache.block_table(7)) == 2
    got = dsc.mla_decode(x[:, 6:10].copy(), w, cfg, cache, [7])
    np.testing.assert_allclose(got, full[:, 6:10], rtol=1e-4, atol=1e-4 * np.abs(full).max())
    # overwriting from an earlier position is the same as truncating first
    got2 = dsc.mla_decode(x[:, 8:10].copy(), w, cfg, cache, [7], np.array([[8, 9]], np.int32))
    np.testing.assert_allclose(got2, full[:, 8:10], rtol=1e-4, atol=1e-4 * np.abs(full).max())


@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
def test_paged_equals_contiguous_ragged(rng, block_size):
    """Ragged prompt lengths in one batch (-1 padding), interleaved sequences, any block size."""
    cfg = small_cfg()
    w = ref.init_weights(cfg, rng)
    lens = [7, 2, 5]
    xs = [prompt(cfg, rng, 1, n + 3) for n in lens]  # prompt + 3 decode steps each
    cache = dsc.MLACache(cfg, max_batch=4, max_tokens=20, block_size=block_size, dtype="float32")
    for s in (5, 3, 9):
        cache.add_sequence(s)
    T = max(lens)
    x = np.zeros((3, T, cfg.hidden_size), np.float32)
    pos = -np.ones((3, T), np.int32)
    for b, n in enumerate(lens):
        x[b, :n] = xs[b][0, :n]
        pos[b, :n] = np.arange(n)
    out = dsc.mla_prefill(x, w, cfg, cache, [5, 3, 9], pos)
    for b, n in enumerate(lens):
        want = ref.mla_forward(xs[b][:, :n], w, cfg)
        np.testing.assert_allclose(out[b:b + 1, :n], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.all(out[b, n:] == 0)
    for step in range(3):
        xd = np.stack([xs[b][0, n + step] for b, n in enumerate(lens)])[:, None, :].copy()
        got = dsc.mla_decode(xd, w, cfg, cache, [5, 3, 9])
        for b, n in enumerate(lens):
            want = ref.mla_forward(xs[b][:, :n + step + 1], w, cfg)[:, -1]
            np.testing.assert_allclose(got[b, 0], want[0], rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if block_size <= 3:  # blocks of different sequences interleave in the pool
        assert len(set(cache.block_table(5)) & set(cache.block_table(3))) == 0


def test_cache_errors_leave_cache_usable(rng):
    cfg = small_cfg()
    w, x = make(cfg, rng, B=1, T=4)
    cache = dsc.MLACache(cfg, max_batch=2, max_tokens=8, block_size=4, dtype="bfloat16", n_blocks=2)
    cache.add_sequence(0)
    with pytest.raises(ValueError, match="unknown"):
        dsc.mla_prefill(x, w, cfg, cache, [42])
    with pytest.raises(ValueError, match="already"):
        cache.add_sequence(0)
    with pytest.raises(ValueError, match="unknown"):
        cache.length(3)
    dsc.mla_prefill(x, w, cfg, cache, [0])
    state = (cache.length(0), cache.block_table(0), cache.free_blocks)
    lat0 = cache.read(0)[0].copy()
    with pytest.raises(ValueError, match="max_tokens"):  # 4 + 8 > 8 tokens per sequence
        dsc.mla_decode(prompt(cfg, rng, 1, 8), w, cfg, cache, [0])
    with pytest.raises(ValueError, match="start"):  # a gap after the cached tokens
        dsc.mla_decode(x[:, :1].copy(), w, cfg, cache, [0], np.array([[6]], np.int32))
    with pytest.raises(ValueError, match="consecutive"):
        dsc.mla_decode(x[:, :2].copy(), w, cfg, cache, [0], np.array([[4, 6]], np.int32))
    with pytest.raises(ValueError, match="padding"):
        dsc.mla_decode(x[:, :2].copy(), w, cfg, cache, [0], np.array([[-1, 4]], np.int32))
    cache.add_sequence(1)
    with pytest.raises(ValueError, match="cache full"):  # 1 free block, 2 needed
        dsc.mla_prefill(prompt(cfg, rng, 1, 8), w, cfg, cache, [1])
    with pytest.raises(ValueError, match="distinct"):
        dsc.mla_decode(prompt(cfg, rng, 2, 1), w, cfg, cache, [0, 0])
    with pytest.raises(ValueError, match="full"):
        cache.add_sequence(2)
    assert (cache.length(0), cache.block_table(0), cache.free_blocks) == state
    assert cache.length(1) == 0
    np.testing.assert_array_equal(cache.read(0)[0], lat0)
    # still usable: the next token decodes like the reference
    x5 = prompt(cfg, rng, 1, 1)
    got = dsc.mla_decode(x5, w, cfg, cache, [0])
    want = ref.mla_forward(np.concatenate([x, x5], 1), w, cfg)[:, -1:]
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2 * np.abs(want).max())
    cache.free_sequence(0)
    assert cache.free_blocks == 2
    with pytest.raises(ValueError, match="unknown"):
        cache.free_sequence(0)


def test_cache_bad_arguments(rng):
    cfg = small_cfg()
    w, x = make(cfg, rng, B=1, T=2)
    with pytest.raises(TypeError, match="dtype"):
        dsc.MLACache(cfg, dtype="int8")
    with pytest.raises(ValueError, match="block_size"):
        dsc.MLACache(cfg, block_size=0)
    cache = dsc.MLACache(cfg, max_batch=1, max_tokens=8)
    cache.add_sequence(0)
    with pytest.raises(ValueError, match="layer"):
        dsc.mla_prefill(x, w, cfg, cache, [0], layer=1)
    other = small_cfg(kv_lora_rank=16)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        dsc.mla_prefill(x, ref.init_weights(other, rng), other, cache, [0])
    with pytest.raises(ValueError, match="seq_ids"):
        dsc.mla_prefill(x, w, cfg, cache, np.array([0, 0], np.int64), np.zeros((1, 2), np.int32))
    assert cache.length(0) == 0


@pytest.mark.cuda
def test_cuda_training_path_matches_cpu(rng):
    """MLA forward and backward on the GPU (dsc.Tensor inputs on cuda:0) against the CPU."""
    cfg = small_cfg()
    w, x = make(cfg, rng, B=2, T=37)
    out_c, ctx_c = dsc.mla_forward(x, w, cfg)
    dout = rng.standard_normal(out_c.shape).astype(np.float32)
    g_c = dsc.mla_backward(dout, ctx_c)
    wd = {k: dsc.tensor(v, device="cuda") for k, v in w.items()}
    out_g, ctx_g = dsc.mla_forward(dsc.tensor(x, device="cuda"), wd, cfg)
    g_g = dsc.mla_backward(dsc.tensor(dout, device="cuda"), ctx_g)
    np.testing.assert_allclose(dsc.to_numpy(out_g), out_c, rtol=1e-4, atol=1e-5)
    for k in g_c:
        np.testing.assert_allclose(dsc.to_numpy(g_g[k]), g_c[k], rtol=1e-3,
                                   atol=1e-4 * (np.abs(g_c[k]).max() + 1e-30), err_msg=k)


@pytest.mark.cuda
def test_cuda_cache_prefill_decode_matches_cpu(rng):
    cfg = small_cfg()
    w, _ = make(cfg, rng)
    x = rng.standard_normal((2, 9, cfg.hidden_size)).astype(np.float32)
    pos = np.tile(np.arange(9, dtype=np.int32), (2, 1))
    outs = []
    for device in ("cpu", "cuda"):
        cache = dsc.MLACache(cfg, max_batch=2, max_tokens=16, block_size=4, dtype="float32", device=device)
        for sid in (0, 1):
            cache.add_sequence(sid)
        wd = w if device == "cpu" else {k: dsc.tensor(v, device="cuda") for k, v in w.items()}
        xd = x if device == "cpu" else dsc.tensor(x, device="cuda")
        outs.append(dsc.to_numpy(dsc.mla_prefill(xd, wd, cfg, cache, [0, 1], pos)))
        step = rng.standard_normal((2, 1, cfg.hidden_size)).astype(np.float32) if device == "cpu" else step
        sd = step if device == "cpu" else dsc.tensor(step, device="cuda")
        outs.append(dsc.to_numpy(dsc.mla_decode(sd, wd, cfg, cache, [0, 1])))
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-4, atol=1e-5)  # prefill
    np.testing.assert_allclose(outs[3], outs[1], rtol=1e-4, atol=1e-5)  # decode after it


def test_mla_tile_header_on_cpu(tmp_path):
    """kernels/mla_tile.cuh (the tensor-core decode's fragment ownership, paged addressing,
    FP8 row layout, KV splits, online softmax and split merge) through tests/c/test_mla_tile.c:
    a CPU simulation of the kernel's loops against a direct softmax attention."""
    import os
    import shutil
    import subprocess
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = str(tmp_path / "test_mla_tile")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-O1", os.path.join(root, "tests", "c", "test_mla_tile.c"),
                    f"-I{dsc.get_include()}", "-lm", "-o", exe], check=True, capture_output=True, text=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed"), r.stdout


def _decode_both(cfg, w, dtype, prompts, steps, rng, block_size=16, max_tokens=None, truncate=None):
    """Prefill ragged prompts (B rows, -1 padding), optionally truncate sequence 0, then
    decode `steps` tokens, on the CPU and on the GPU with the same cache dtype; returns the
    (cpu, cuda) outputs of every call."""
    B, T = len(prompts), max(prompts)
    x = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
    pos = np.full((B, T), -1, np.int32)
    for b, n in enumerate(prompts):
        pos[b, :n] = np.arange(n)
    xs = [rng.standard_normal((B, 1, cfg.hidden_size)).astype(np.float32) for _ in range(steps)]
    res = {}
    for device in ("cpu", "cuda"):
        cache = dsc.MLACache(cfg, max_batch=B + 1, max_tokens=max_tokens or T + steps + 8, block_size=block_size,
                             dtype=dtype, device=device)
        ids = [cache.add_sequence(b + 3) for b in range(B)]
        on = (lambda a: a) if device == "cpu" else (lambda a: dsc.tensor(a, device="cuda"))
        wd = w if device == "cpu" else {k: on(v) for k, v in w.items()}
        outs = [dsc.to_numpy(dsc.mla_prefill(on(x), wd, cfg, cache, ids, on(pos)))]
        if truncate is not None:  # blocks go back to the free list and are taken again
            cache.truncate(ids[0], truncate)
        for xd in xs:
            outs.append(dsc.to_numpy(dsc.mla_decode(on(xd), wd, cfg, cache, ids)))
        res[device] = outs
    return res["cpu"], res["cuda"]


def _close_bf16(got, want, what):
    """The tensor-core decode rounds q, the FP8 latents and P to BF16 (8 significant bits):
    relative error ~2^-8 per product, summed; 2% of the output's scale covers it."""
    tol = 2e-2 * (np.abs(want).max() + 1e-30)
    assert np.all(np.isfinite(got)), what
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=tol, err_msg=what)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("heads,R,dr", [(4, 32, 8), (40, 64, 16), (16, 512, 64)])
def test_cuda_tensor_core_decode_matches_cpu(rng, dtype, heads, R, dr):
    """Absorbed decode on tensor cores (BF16 and the FP8 row) against the CPU's float32 walk
    over the same cache: ragged prompts (a zero-length row), a head count that leaves a
    partial 32-head block (40), V3's R 512 / dr 64."""
    cfg = small_cfg(num_attention_heads=heads, kv_lora_rank=R, qk_rope_head_dim=dr)
    w, _ = make(cfg, rng, B=1, T=1)
    cpu, gpu = _decode_both(cfg, w, dtype, [13, 1, 0], 3, rng)
    assert np.all(gpu[0][2] == 0)  # the prefill's padding row
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        _close_bf16(g, c, f"call {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
def test_cuda_decode_long_context_splits_and_device_tables(rng, dtype):
    """One long sequence (split over keys: few rows cannot fill the GPU), a second one; a
    truncate hands blocks back and the decode takes them again, so the device copy of the
    block tables must follow the host's."""
    cfg = small_cfg(num_attention_heads=8, kv_lora_rank=64, qk_rope_head_dim=16)
    w, _ = make(cfg, rng, B=1, T=1)
    cpu, gpu = _decode_both(cfg, w, dtype, [700, 45], 4, rng, block_size=32, truncate=333)
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        _close_bf16(g, c, f"call {i}")


@pytest.mark.cuda
def test_cuda_float32_cache_decode_exact_path(rng):
    """A float32 cache keeps the float32 SIMT decode (device tables too): CPU parity at
    float32 tolerance, long rows included (its own splits)."""
    cfg = small_cfg()
    w, _ = make(cfg, rng, B=1, T=1)
    cpu, gpu = _decode_both(cfg, w, "float32", [600, 3, 0], 2, rng, block_size=8, truncate=100)
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5 * (np.abs(c).max() + 1e-30), err_msg=f"call {i}")


def _bf16_pairs(cfg, rng, B, T, device):
    """(name, got, want) of out and every gradient: the training forward and backward with
    bf16_operands=True on `device` against the CPU's exact float32."""
    w, x = make(cfg, rng, B=B, T=T)
    out_c, ctx_c = dsc.mla_forward(x, w, cfg)
    dout = rng.standard_normal(out_c.shape).astype(np.float32)
    g_c = dsc.mla_backward(dout, ctx_c)
    wd = {k: dsc.tensor(v, device=device) for k, v in w.items()}
    out_g, ctx_g = dsc.mla_forward(dsc.tensor(x, device=device), wd, cfg, bf16_operands=True)
    assert ctx_g.math_mode == 1
    g_g = dsc.mla_backward(dsc.tensor(dout, device=device), ctx_g)
    return [("out", dsc.to_numpy(out_g), out_c)] + [(k, dsc.to_numpy(g_g[k]), g_c[k]) for k in g_c]


def test_bf16_operands_on_cpu_is_exact_float32(rng):
    """The CPU ignores the BF16-operand math mode: the same bits as a default call."""
    for name, got, want in _bf16_pairs(small_cfg(), rng, 2, 9, "cpu"):
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.cuda
def test_cuda_bf16_tensor_core_training_attention_matches_cpu(rng):
    """bf16_operands=True (the context math mode DSC_MATH_BF16_OPERANDS for the call and its
    backward): the training forward and backward with the attention core on tensor cores
    (BF16 q, k, v, dO, P, dS; FP32 softmax and sums) and the projections as FAST_16BF
    cuBLASLt GEMMs, against the CPU's float32, at the small config and at V3's head dims
    (dqk 192, dv 128) with T = 130 (no multiple of the 64-row tile). BF16 keeps 8 significant
    bits: outputs and gradients within 3% of their largest magnitude."""
    for kw, B, T in (({}, 2, 37), (dict(num_attention_heads=3, qk_nope_head_dim=128, qk_rope_head_dim=64,
                                        v_head_dim=128), 1, 130)):
        for name, got, want in _bf16_pairs(small_cfg(**kw), rng, B, T, "cuda"):
            err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
            assert np.all(np.isfinite(got)) and err < 3e-2, (kw, name, err)


@pytest.mark.cuda
def test_cuda_bf16_operands_leaves_the_pool_context_exact(rng):
    """A bf16_operands call gives its pool context its mode back: default calls before and
    after it agree bit for bit (float32 SIMT attention, exact SGEMM), and differ from it."""
    cfg = small_cfg()
    w, x = make(cfg, rng, B=2, T=37)
    wd = {k: dsc.tensor(v, device="cuda") for k, v in w.items()}
    xd = dsc.tensor(x, device="cuda")
    before = dsc.to_numpy(dsc.mla_forward(xd, wd, cfg, need_backward=False)[0])
    fast = dsc.to_numpy(dsc.mla_forward(xd, wd, cfg, need_backward=False, bf16_operands=True)[0])
    after = dsc.to_numpy(dsc.mla_forward(xd, wd, cfg, need_backward=False)[0])
    np.testing.assert_array_equal(before, after)
    assert np.abs(fast - before).max() > 0


# --------------------------------------------------------------------------- FP8 projections


def _lin8(x, w):
    """The V3 FP8 projection x @ w^T (x 1x128 tiles from float32, w 128x128 blocks)."""
    sh = np.shape(x)
    y, _ = fp8ref.linear_forward(np.asarray(x, np.float32).reshape(-1, sh[-1]), np.asarray(w, np.float32))
    return y.reshape(*sh[:-1], np.shape(w)[0])


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def fp8_cfg(q_lora):
    """Dims past one 128-block with ragged edges: hidden 200, Rq 136, R + dr 168, H*dv 160."""
    return dsc.ModelConfig.tiny(hidden_size=200, num_attention_heads=4, q_lora_rank=136 if q_lora else None,
                                kv_lora_rank=160, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=40)


@pytest.mark.parametrize("q_lora", [True, False])
def test_fp8_forward_matches_fp8_reference_and_backward_close(rng, q_lora):
    cfg = fp8_cfg(q_lora)
    w, x = make(cfg, rng, B=2, T=9)
    pos = (np.arange(9)[None, :] + np.array([[0], [70]])).astype(np.int32)
    out8, ctx8 = dsc.mla_forward(x, w, cfg, pos, fp8=True)
    out, ctx = dsc.mla_forward(x, w, cfg, pos)
    want8 = ref.mla_forward(x, w, cfg, pos, lin=_lin8)
    want = ref.mla_forward(x, w, cfg, pos)
    assert _rel(out8, want8) < 3e-4
    assert 5e-3 < _rel(out8, want) < 0.2  # FP8 ran, and stays close to float32
    dout = rng.standard_normal(out.shape).astype(np.float32)
    g8, g = dsc.mla_backward(dout, ctx8), dsc.mla_backward(dout, ctx)
    assert set(g8) == set(g)
    for k in g:
        assert 1e-3 < _rel(g8[k], g[k]) < 0.25, k
    ctx8.params = ctx.params  # a backward must use the forward's precision
    with pytest.raises(ValueError, match="parameters of the forward"):
        dsc.mla_backward(dout, ctx8)


def test_fp8_prefill_decode_match_reference(rng):
    """Inference in FP8: q, kv_a and o projections in FP8; the absorbed kv_b products in
    float32 on kv_b rounded through its E4M3 blocks."""
    cfg = fp8_cfg(True)
    w, x = make(cfg, rng, B=2, T=10)
    cache = dsc.MLACache(cfg, max_batch=2, max_tokens=16, block_size=4, dtype="float32")
    for s in (0, 1):
        cache.add_sequence(s)
    outs = [dsc.mla_prefill(x[:, :6].copy(), w, cfg, cache, [0, 1], fp8=True)]
    for t in range(6, 10):
        outs.append(dsc.mla_decode(x[:, t:t + 1].copy(), w, cfg, cache, [0, 1], fp8=True))
    got = np.concatenate(outs, axis=1)
    kvb = w["kv_b_proj.weight"]
    kvb8 = fp8ref.dequantize(*fp8ref.quantize(kvb, (128, 128)), (128, 128))
    lin = lambda a, m: a @ kvb8.T if m.shape == kvb.shape else _lin8(a, m)  # noqa: E731
    want = ref.mla_forward(x, w, cfg, lin=lin)
    assert _rel(got, want) < 3e-4
    assert _rel(got, ref.mla_forward(x, w, cfg)) > 5e-3


def test_fp8_held_weights_as_deepseek_ships_them(rng):
    """Prefill/decode with the projections given as E4M3 + weight_scale_inv (the checkpoint
    form) == quantizing the float32 weights per call, bitwise; the E4M3 codes built by the
    independent reference quantizer (ml_dtypes) give the same result."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = fp8_cfg(True)
    w, x = make(cfg, rng, B=2, T=7)
    held = {k: v for k, v in w.items() if "layernorm" in k}
    for k, v in w.items():
        if "layernorm" not in k:
            q, s = fp8ref.quantize(v, (128, 128))
            held[k] = q.astype(ml_dtypes.float8_e4m3fn)
            held[k + "_scale_inv"] = s

    def run(params, fp8=True):
        cache = dsc.MLACache(cfg, max_batch=2, max_tokens=8, block_size=4, dtype="float32")
        for sid in (0, 1):
            cache.add_sequence(sid)
        outs = [dsc.mla_prefill(x[:, :4].copy(), params, cfg, cache, [0, 1], fp8=fp8)]
        outs += [dsc.mla_decode(x[:, t:t + 1].copy(), params, cfg, cache, [0, 1], fp8=fp8) for t in (4, 5, 6)]
        return np.concatenate(outs, axis=1)

    want = run(w)
    np.testing.assert_array_equal(run(held), want)
    only_o = {**w, "o_proj.weight": held["o_proj.weight"], "o_proj.weight_scale_inv": held["o_proj.weight_scale_inv"]}
    np.testing.assert_array_equal(run(only_o), want)
    with pytest.raises(ValueError, match="fp8"):
        run(held, fp8=False)
    bad = {**held, "kv_b_proj.weight_scale_inv": held["kv_b_proj.weight_scale_inv"][:, :1].copy()}
    with pytest.raises(ValueError, match="kv_b_proj_scale_inv"):
        run(bad)
    bad = {**held, "q_b_proj.weight": w["q_b_proj.weight"]}
    with pytest.raises(TypeError, match="q_b_proj"):
        run(bad)
