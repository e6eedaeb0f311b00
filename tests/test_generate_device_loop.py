"""The device-resident decode loop of dsc_model_generate (plain decoding: the step's ids,
positions, sampling, EOS and token output stay on the device; the host looks once per chunk
of 16 steps) against the step-by-step host loop (DSC_DEVICE_DECODE=0, today's path): the
tokens and statistics are bitwise the same for greedy and seeded sampling (temperature,
top_k, top_p), with EOS, ragged prompts, batch 1 and > 1, max_new_tokens across chunk
boundaries, float32 / bfloat16 / FP8 caches, FP8 and frozen FP8 models, a BF16-compute
model, and callbacks that stop one sequence or all of them inside a chunk. The counters show
that a steady decode step adds no allocation and no index check (each a host wait on a GPU);
on CUDA also no copy and exactly one wait per chunk, and the CUDA-graph replay
(DSC_CUDA_GRAPHS) gives the same tokens as plain launches."""

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c.generation import generate
from _util import perturb_norms

from test_generate import PROMPTS, small_cfg  # the same prompts and tiny MoE config


def perturbed_model(cfg, seed=1, **kw):
    m = dsc.Model(cfg, seed=seed, **kw)
    perturb_norms(m, np.random.default_rng(seed + 100))
    return m


@pytest.fixture(scope="module")
def model():
    return perturbed_model(small_cfg())


def both(monkeypatch, m, prompts, **kw):
    """(device loop, host loop) outputs of the same call."""
    monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
    dev = generate(m, prompts, **kw)
    monkeypatch.setenv("DSC_DEVICE_DECODE", "0")
    host = generate(m, prompts, **kw)
    monkeypatch.delenv("DSC_DEVICE_DECODE")
    return dev, host


def same(dev, host):
    assert dev.tokens == host.tokens
    assert dev.new_tokens == host.new_tokens
    assert dev.main_forwards == host.main_forwards


SAMPLING = [dict(), dict(temperature=1.0, seed=3), dict(temperature=0.7, top_k=5, seed=1),
            dict(temperature=1.2, top_p=0.8, seed=2), dict(temperature=0.9, top_k=9, top_p=0.6, seed=4)]


@pytest.mark.parametrize("kw", SAMPLING)
@pytest.mark.parametrize("max_new", [1, 2, 16, 17, 40])
def test_tokens_equal_the_host_loop(monkeypatch, model, kw, max_new):
    dev, host = both(monkeypatch, model, PROMPTS, max_new_tokens=max_new, eos_token_id=-1, **kw)
    same(dev, host)
    assert all(len(t) == max_new for t in dev.tokens)


@pytest.mark.parametrize("kw", SAMPLING[:3])
def test_eos_inside_chunks(monkeypatch, model, kw):
    """EOS ids taken from the run without EOS: sequences end at different steps, some in the
    first chunk, some later; the EOS is kept."""
    ref = generate(model, PROMPTS, max_new_tokens=40, eos_token_id=-1, **kw)
    for eos in {ref.tokens[0][2], ref.tokens[1][20], ref.tokens[3][0]}:
        dev, host = both(monkeypatch, model, PROMPTS, max_new_tokens=40, eos_token_id=eos, **kw)
        same(dev, host)
        for t in dev.tokens:
            assert eos not in t[:-1]
        assert any(len(t) < 40 for t in dev.tokens)


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("block_size", [1, 4, 64])
def test_cache_dtypes_and_block_sizes(monkeypatch, model, cache_dtype, block_size):
    for kw in (dict(), dict(temperature=0.8, top_p=0.9, seed=7)):
        dev, host = both(monkeypatch, model, PROMPTS, max_new_tokens=20, eos_token_id=-1,
                         cache_dtype=cache_dtype, block_size=block_size, **kw)
        same(dev, host)


def test_batch_one_and_many_ragged(monkeypatch, model):
    rng = np.random.default_rng(0)
    many = [rng.integers(0, 64, int(n)).tolist() for n in rng.integers(1, 30, 13)]
    for prompts in ([PROMPTS[1]], [[3]], many):
        for kw in SAMPLING[:2]:
            dev, host = both(monkeypatch, model, prompts, max_new_tokens=24, eos_token_id=-1, **kw)
            same(dev, host)


@pytest.mark.parametrize("frozen", [False, True])
def test_fp8_models(monkeypatch, frozen):
    cfg = dsc.ModelConfig.tiny(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                               num_hidden_layers=2, n_routed_experts=8, n_group=4, topk_group=2,
                               num_experts_per_tok=2, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
                               qk_rope_head_dim=16, v_head_dim=32, num_attention_heads=4, initializer_range=0.05,
                               eos_token_id=None)
    m = dsc.Model(cfg, seed=5, fp8=True)
    if frozen:
        m = m.freeze_fp8()
    P = np.random.default_rng(5).integers(0, cfg.vocab_size, (6, 11)).tolist()
    P[2] = P[2][:3]
    for kw in (dict(), dict(temperature=0.8, top_k=20, seed=1)):
        for cache in ("float32", "float8_e4m3fn"):
            dev, host = both(monkeypatch, m, P, max_new_tokens=18, eos_token_id=-1, cache_dtype=cache, **kw)
            same(dev, host)


def test_bf16_compute_model(monkeypatch):
    m = perturbed_model(small_cfg(), seed=2, dtype="bfloat16")
    for kw in SAMPLING[:2]:
        dev, host = both(monkeypatch, m, PROMPTS, max_new_tokens=20, eos_token_id=-1, **kw)
        same(dev, host)


def test_callbacks_served_per_chunk_in_step_order(monkeypatch, model):
    """The callbacks see the same (seq, token) sequence as the host loop's, also when one
    stops a sequence inside a chunk, or stops everything."""
    def run(stop):
        seen = []

        def cb(seq, tok):
            seen.append((seq, tok))
            return stop(seq, seen)

        return seen, cb

    stops = [lambda s, seen: 0,
             lambda s, seen: s == 1 and sum(1 for q, _ in seen if q == 1) == 5,   # one sequence, 1st chunk
             lambda s, seen: s == 3 and sum(1 for q, _ in seen if q == 3) == 21,  # one sequence, 2nd chunk
             lambda s, seen: -1 if len(seen) == 30 else 0,                        # everything, mid-step
             lambda s, seen: True]                                                # all after their first
    for stop in stops:
        for kw in SAMPLING[:2]:
            seen_d, cb_d = run(stop)
            seen_h, cb_h = run(stop)
            monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
            dev = generate(model, PROMPTS, max_new_tokens=40, eos_token_id=-1, on_token=cb_d, **kw)
            monkeypatch.setenv("DSC_DEVICE_DECODE", "0")
            host = generate(model, PROMPTS, max_new_tokens=40, eos_token_id=-1, on_token=cb_h, **kw)
            monkeypatch.delenv("DSC_DEVICE_DECODE")
            assert seen_d == seen_h
            same(dev, host)
            assert sorted(seen_d) == sorted((s, t) for s, o in enumerate(dev.tokens) for t in o)


@pytest.mark.parametrize("kw", SAMPLING[:3])
def test_steady_steps_add_no_allocation_or_index_check(monkeypatch, model, kw):
    """A longer generation adds decode steps only: with the device loop they add no
    allocation and no index range check (each a host wait on a GPU); the host loop checks
    the ids and positions of every step."""
    def delta(env):
        if env:
            monkeypatch.setenv("DSC_DEVICE_DECODE", env)
        else:
            monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
        out = {}
        for n in (24, 56):
            generate(model, PROMPTS, max_new_tokens=n, eos_token_id=-1, **kw)  # warm: slots, workspace
            model.counters(reset=True)
            generate(model, PROMPTS, max_new_tokens=n, eos_token_id=-1, **kw)
            out[n] = model.counters()
        monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
        return {k: out[56][k] - out[24][k] for k in out[56]}

    d = delta(None)
    assert d["allocs"] == 0 and d["workspace_grows"] == 0 and d["index_checks"] == 0, d
    h = delta("0")
    assert h["index_checks"] > 0, h  # the host loop's per-step checks: what the device loop avoids


@pytest.mark.parametrize("kw", SAMPLING[:2])
def test_bad_logits_inside_a_chunk_reported(monkeypatch, kw):
    """A NaN embedding row for a token generated at the first step: the next step's logits of
    that sequence are all NaN. Both loops fail with generate's message naming the sequence."""
    m = perturbed_model(small_cfg(), seed=4)
    ref = generate(m, PROMPTS, max_new_tokens=4, eos_token_id=-1, **kw)
    seq = next(i for i, t in enumerate(ref.tokens) if all(t[0] not in p for p in PROMPTS))
    tok = ref.tokens[seq][0]
    m.parameters()["model.embed_tokens.weight"][tok] = np.nan
    for env in (None, "0"):
        if env:
            monkeypatch.setenv("DSC_DEVICE_DECODE", env)
        with pytest.raises(dsc.Error, match=r"the logits of sequence \d+ are all NaN or -inf"):
            generate(m, PROMPTS, max_new_tokens=8, eos_token_id=-1, **kw)
        monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)


# ----------------------------------------------------------------------------- CUDA


DENSE = dict(n_routed_experts=0, first_k_dense_replace=2)


@pytest.mark.cuda
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("kw", SAMPLING[:3])
def test_cuda_graph_replay_equals_plain_launches(monkeypatch, kw, dense):
    """Dense and MoE (float32 experts read their offsets on the device): every op of the
    step is capture-safe, the step is replayed from a graph: the same tokens as plain
    launches."""
    cfg = small_cfg(**(DENSE if dense else {}))
    cpu = perturbed_model(cfg)
    gpu = dsc.Model(cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    args = dict(max_new_tokens=48, eos_token_id=-1, **kw)
    monkeypatch.setenv("DSC_CUDA_GRAPHS", "0")
    plain = generate(gpu, PROMPTS, **args)
    monkeypatch.delenv("DSC_CUDA_GRAPHS")
    graph = generate(gpu, PROMPTS, **args)
    assert graph.tokens == plain.tokens and graph.main_forwards == plain.main_forwards
    if not kw:  # greedy: the device loop against the host loop on the same GPU (near-ties aside)
        monkeypatch.setenv("DSC_DEVICE_DECODE", "0")
        host = generate(gpu, PROMPTS, **args)
        monkeypatch.delenv("DSC_DEVICE_DECODE")
        assert sum(a == b for a, b in zip(graph.tokens, host.tokens)) >= 3, (graph.tokens, host.tokens)


@pytest.mark.cuda
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("graphs", ["1", "0"])
def test_cuda_steady_steps_wait_once_per_chunk(monkeypatch, graphs, dense):
    """32 more tokens = 32 more steps = 2 more chunks: no allocation, no upload, no index
    check, exactly 2 more waits (one copy back per chunk), dense or MoE (the MoE layer keeps
    its expert offsets on the device)."""
    cfg = small_cfg(**(DENSE if dense else {}))
    gpu = dsc.Model(cfg, device="cuda", seed=1)
    monkeypatch.setenv("DSC_CUDA_GRAPHS", graphs)
    out = {}
    for n in (33, 65):
        generate(gpu, PROMPTS, max_new_tokens=n, eos_token_id=-1)
        gpu.counters(reset=True)
        generate(gpu, PROMPTS, max_new_tokens=n, eos_token_id=-1)
        out[n] = gpu.counters()
    d = {k: out[65][k] - out[33][k] for k in out[65]}
    assert d["allocs"] == 0 and d["index_checks"] == 0 and d["copies_to_device"] == 0, d
    assert d["syncs"] == 2 and d["copies_to_host"] == 2, d
