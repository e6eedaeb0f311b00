"""The device-resident speculative (MTP) decode loop of dsc_model_generate (issue #15: the
main model over a fixed [B, 1 + num_draft] batch, verification, the MTP catch-up and the
chain of drafts all on the device, the host reading once per chunk of steps) against the
step-by-step host loop (DSC_DEVICE_DECODE=0): the tokens and statistics (new tokens,
drafted, accepted, main forwards) are bitwise the same for greedy and seeded sampling
(temperature, top_k, top_p: the same per-sequence random draws in the same order), with
num_draft 1-3, ragged prompts, EOS inside a chunk, max_new_tokens reached in the middle of
a step's drafts, callbacks that stop one sequence or all, float32 / bfloat16 / FP8 caches,
FP8 (also frozen) and BF16-compute models, and bad logits. A steady step adds no allocation
and no index check; on CUDA also no copy and one wait per chunk, and the CUDA-graph replay
gives the tokens of plain launches."""

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c.generation import generate

from test_generate import PROMPTS, small_cfg
from test_generate_device_loop import perturbed_model, SAMPLING


@pytest.fixture(scope="module")
def model():
    return perturbed_model(small_cfg())


@pytest.fixture(scope="module")
def accepting():
    """A vocabulary of 8: the MTP drafts are often right, so steps accept drafts (greedy and
    sampled) and sequences reach max_new_tokens in the middle of a step's drafts."""
    return perturbed_model(small_cfg(vocab_size=8, initializer_range=0.3), seed=3)


SMALL_PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 0, 1], [2, 2]]


def both(monkeypatch, m, prompts, **kw):
    """(device loop, host loop) outputs of the same call."""
    monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
    dev = generate(m, prompts, speculative="mtp", **kw)
    monkeypatch.setenv("DSC_DEVICE_DECODE", "0")
    host = generate(m, prompts, speculative="mtp", **kw)
    monkeypatch.delenv("DSC_DEVICE_DECODE")
    return dev, host


def stats(r):
    return (r.new_tokens, r.drafted, r.accepted, r.main_forwards)


def same(dev, host):
    assert dev.tokens == host.tokens
    assert stats(dev) == stats(host)


@pytest.mark.parametrize("kw", SAMPLING)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("max_new", [1, 2, 5, 17, 40])
def test_tokens_and_stats_equal_the_host_loop(monkeypatch, model, kw, k, max_new):
    dev, host = both(monkeypatch, model, PROMPTS, max_new_tokens=max_new, eos_token_id=-1, num_draft=k, **kw)
    same(dev, host)
    assert all(len(t) == max_new for t in dev.tokens)


@pytest.mark.parametrize("kw", SAMPLING)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_accepted_drafts_and_max_new_mid_draft(monkeypatch, accepting, kw, k):
    """Drafts accepted (the counts show it) and lengths that end inside a step's drafts:
    max_new_tokens 6, 7, 9, 20, 33 with up to 1 + k tokens a step."""
    total = 0
    for max_new in (6, 7, 9, 20, 33):
        dev, host = both(monkeypatch, accepting, SMALL_PROMPTS, max_new_tokens=max_new, eos_token_id=-1,
                         num_draft=k, **kw)
        same(dev, host)
        assert all(len(t) == max_new for t in dev.tokens)
        total += dev.accepted
    assert total > 0, "no draft accepted: the acceptance path went untested"


@pytest.mark.parametrize("kw", SAMPLING[:3])
@pytest.mark.parametrize("k", [1, 3])
def test_eos_inside_chunks(monkeypatch, accepting, kw, k):
    ref = generate(accepting, SMALL_PROMPTS, max_new_tokens=40, eos_token_id=-1, speculative="mtp", num_draft=k, **kw)
    for eos in {ref.tokens[0][3], ref.tokens[1][19], ref.tokens[3][0]}:
        dev, host = both(monkeypatch, accepting, SMALL_PROMPTS, max_new_tokens=40, eos_token_id=eos, num_draft=k, **kw)
        same(dev, host)
        for t in dev.tokens:
            assert eos not in t[:-1]
        assert any(len(t) < 40 for t in dev.tokens)


def test_batch_one_and_many_ragged(monkeypatch, model):
    rng = np.random.default_rng(0)
    many = [rng.integers(0, 64, int(n)).tolist() for n in rng.integers(1, 30, 11)]
    for prompts in ([PROMPTS[1]], [[3]], many):
        for kw in SAMPLING[:2]:
            dev, host = both(monkeypatch, model, prompts, max_new_tokens=24, eos_token_id=-1, num_draft=2, **kw)
            same(dev, host)


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("block_size", [1, 4, 64])
def test_cache_dtypes_and_block_sizes(monkeypatch, accepting, cache_dtype, block_size):
    for kw in (dict(), dict(temperature=0.8, top_p=0.9, seed=7)):
        dev, host = both(monkeypatch, accepting, SMALL_PROMPTS, max_new_tokens=20, eos_token_id=-1, num_draft=3,
                         cache_dtype=cache_dtype, block_size=block_size, **kw)
        same(dev, host)


@pytest.mark.parametrize("frozen", [False, True])
def test_fp8_models(monkeypatch, frozen):
    cfg = dsc.ModelConfig.tiny(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                               num_hidden_layers=2, n_routed_experts=8, n_group=4, topk_group=2,
                               num_experts_per_tok=2, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
                               qk_rope_head_dim=16, v_head_dim=32, num_attention_heads=4, initializer_range=0.05,
                               eos_token_id=None, num_nextn_predict_layers=1)
    m = dsc.Model(cfg, seed=5, fp8=True)
    if frozen:
        m = m.freeze_fp8()
    P = np.random.default_rng(5).integers(0, cfg.vocab_size, (5, 11)).tolist()
    P[2] = P[2][:3]
    for kw in (dict(), dict(temperature=0.8, top_k=20, seed=1)):
        for cache in ("float32", "float8_e4m3fn"):
            dev, host = both(monkeypatch, m, P, max_new_tokens=18, eos_token_id=-1, cache_dtype=cache, num_draft=2,
                             **kw)
            same(dev, host)


def test_bf16_compute_model(monkeypatch):
    m = perturbed_model(small_cfg(vocab_size=8, initializer_range=0.3), seed=3, dtype="bfloat16")
    for kw in SAMPLING[:2]:
        dev, host = both(monkeypatch, m, SMALL_PROMPTS, max_new_tokens=20, eos_token_id=-1, num_draft=2, **kw)
        same(dev, host)


def test_callbacks_served_per_chunk_in_step_order(monkeypatch, accepting):
    """The callbacks see the same (seq, token) sequence as the host loop's (step, then
    sequence, then the step's tokens), also when one stops a sequence in the middle of a
    step's tokens or inside a later chunk, or stops everything; the stats count what the
    host loop would have run."""
    def run(stop):
        seen = []

        def cb(seq, tok):
            seen.append((seq, tok))
            return stop(seq, seen)

        return seen, cb

    stops = [lambda s, seen: 0,
             lambda s, seen: s == 1 and sum(1 for q, _ in seen if q == 1) == 5,   # one sequence, 1st chunk
             lambda s, seen: s == 3 and sum(1 for q, _ in seen if q == 3) == 31,  # one sequence, later
             lambda s, seen: -1 if len(seen) == 30 else 0,                        # everything, mid-step
             lambda s, seen: True]                                                # all after their first
    for stop in stops:
        for kw in SAMPLING[:2]:
            for k in (1, 3):
                seen_d, cb_d = run(stop)
                seen_h, cb_h = run(stop)
                dev, host = None, None
                monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
                dev = generate(accepting, SMALL_PROMPTS, max_new_tokens=40, eos_token_id=-1, on_token=cb_d,
                               speculative="mtp", num_draft=k, **kw)
                monkeypatch.setenv("DSC_DEVICE_DECODE", "0")
                host = generate(accepting, SMALL_PROMPTS, max_new_tokens=40, eos_token_id=-1, on_token=cb_h,
                                speculative="mtp", num_draft=k, **kw)
                monkeypatch.delenv("DSC_DEVICE_DECODE")
                assert seen_d == seen_h
                same(dev, host)
                assert sorted(seen_d) == sorted((s, t) for s, o in enumerate(dev.tokens) for t in o)


@pytest.mark.parametrize("kw", SAMPLING[:3])
def test_steady_steps_add_no_allocation_or_index_check(monkeypatch, model, kw):
    """More tokens add steps only: with the device loop they add no allocation and no index
    range check (each a host wait on a GPU); the host loop checks every step's ids."""
    def delta(env):
        if env:
            monkeypatch.setenv("DSC_DEVICE_DECODE", env)
        else:
            monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
        out = {}
        for n in (24, 56):
            args = dict(max_new_tokens=n, eos_token_id=-1, speculative="mtp", num_draft=2, **kw)
            generate(model, PROMPTS, **args)  # warm: slots, workspace
            model.counters(reset=True)
            generate(model, PROMPTS, **args)
            out[n] = model.counters()
        monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)
        return {k: out[56][k] - out[24][k] for k in out[56]}

    d = delta(None)
    assert d["allocs"] == 0 and d["workspace_grows"] == 0 and d["index_checks"] == 0, d
    h = delta("0")
    assert h["index_checks"] > 0, h


@pytest.mark.parametrize("kw", SAMPLING[:2])
def test_bad_logits_inside_a_chunk_reported(monkeypatch, kw):
    """A NaN embedding row for a token generated at the first step: the main model's and the
    MTP module's logits of that sequence turn NaN. Both loops fail with generate's message."""
    m = perturbed_model(small_cfg(), seed=4)
    ref = generate(m, PROMPTS, max_new_tokens=4, eos_token_id=-1, **kw)
    seq = next(i for i, t in enumerate(ref.tokens) if all(t[0] not in p for p in PROMPTS))
    tok = ref.tokens[seq][0]
    m.parameters()["model.embed_tokens.weight"][tok] = np.nan
    for env in (None, "0"):
        if env:
            monkeypatch.setenv("DSC_DEVICE_DECODE", env)
        with pytest.raises(dsc.Error, match=r"the logits of sequence \d+ are all NaN or -inf"):
            generate(m, PROMPTS, max_new_tokens=8, eos_token_id=-1, speculative="mtp", num_draft=2, **kw)
        monkeypatch.delenv("DSC_DEVICE_DECODE", raising=False)


# ----------------------------------------------------------------------------- CUDA


DENSE = dict(n_routed_experts=0, first_k_dense_replace=2)


@pytest.mark.cuda
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("kw", SAMPLING[:3])
def test_cuda_spec_graph_replay_equals_plain_launches(monkeypatch, kw, dense):
    """The spec step replayed from a CUDA graph (dense) or launched plainly (MoE: the capture
    is declined, logged) gives the tokens and stats of plain launches."""
    cfg = small_cfg(vocab_size=8, initializer_range=0.3, **(DENSE if dense else {}))
    cpu = perturbed_model(cfg, seed=3)
    gpu = dsc.Model(cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    args = dict(max_new_tokens=48, eos_token_id=-1, speculative="mtp", num_draft=3, **kw)
    monkeypatch.setenv("DSC_CUDA_GRAPHS", "0")
    plain = generate(gpu, SMALL_PROMPTS, **args)
    monkeypatch.delenv("DSC_CUDA_GRAPHS")
    graph = generate(gpu, SMALL_PROMPTS, **args)
    assert graph.tokens == plain.tokens and stats(graph) == stats(plain)


@pytest.mark.cuda
@pytest.mark.parametrize("kw", SAMPLING[:3])
@pytest.mark.parametrize("k", [1, 3])
def test_cuda_spec_ops_match_the_cpu(kw, k):
    """CUDA vs CPU parity of the spec ops (spec_inputs, spec_verify, spec_draft) through the
    loop: the same weights on both devices. The logits differ in their last bits between the
    devices (other GEMM kernels) and the GPU adds its float64 sums in another order
    (kernels/sample.cu), so an argmax near a tie or a draw within rounding of a boundary may
    differ: most sequences must still match exactly."""
    cfg = small_cfg(vocab_size=8, initializer_range=0.3, **DENSE)
    cpu = perturbed_model(cfg, seed=3)
    gpu = dsc.Model(cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    args = dict(max_new_tokens=24, eos_token_id=-1, speculative="mtp", num_draft=k, **kw)
    c = generate(cpu, SMALL_PROMPTS, **args)
    g = generate(gpu, SMALL_PROMPTS, **args)
    assert all(len(t) == 24 for t in g.tokens)
    assert all(0 <= t < cfg.vocab_size for o in g.tokens for t in o)
    assert sum(a == b for a, b in zip(g.tokens, c.tokens)) >= 3, (g.tokens, c.tokens)
    assert g.new_tokens == c.new_tokens == 24 * len(SMALL_PROMPTS)


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", ["1", "0"])
def test_cuda_spec_steady_steps_wait_once_per_chunk(monkeypatch, graphs):
    """A dense model: more tokens add steps, and the steps add no allocation, no upload, no
    index check, and one wait (the copy back) per chunk of up to 16 steps."""
    cfg = small_cfg(**DENSE)
    gpu = dsc.Model(cfg, device="cuda", seed=1)
    monkeypatch.setenv("DSC_CUDA_GRAPHS", graphs)
    out, res = {}, {}
    for n in (33, 65):
        args = dict(max_new_tokens=n, eos_token_id=-1, speculative="mtp", num_draft=2)
        generate(gpu, PROMPTS, **args)
        gpu.counters(reset=True)
        res[n] = generate(gpu, PROMPTS, **args)
        out[n] = gpu.counters()
    d = {k: out[65][k] - out[33][k] for k in out[65]}
    assert d["allocs"] == 0 and d["index_checks"] == 0 and d["copies_to_device"] == 0, d
    # chunks: ceil(steps / 16) at most per call (the last chunk's length is the longest row's
    # remaining tokens), steps = main_forwards - 1
    chunks = {n: -(-(res[n].main_forwards - 1) // 16) for n in res}
    assert d["syncs"] == d["copies_to_host"] == chunks[65] - chunks[33], (d, chunks)
