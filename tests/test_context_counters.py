"""Context counters (dsc_context_get_counters, Model.counters, dsc.op_counters): the host waits,
host<->device copies and allocations the backend's own wrappers make. The C ABI and the
steady-state counts are checked on the CPU (allocations only there); the CUDA tests assert
that a steady-state training step and a decode step allocate nothing, and that the global
norm and an index check wait for the GPU once each."""

import ctypes
import os

import numpy as np
import pytest

import deepseek_c as dsc

KEYS = ("syncs", "copies_to_device", "copies_to_host", "allocs", "frees", "workspace_grows", "index_checks",
        "deferred_checks", "check_reads")


class Counters(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t)] + [(k, ctypes.c_uint64) for k in KEYS]


def lib():
    L = ctypes.CDLL(dsc.get_library())
    L.dsc_context_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    L.dsc_context_create.restype = ctypes.c_int
    L.dsc_context_destroy.argtypes = [ctypes.c_void_p]
    L.dsc_context_get_counters.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    L.dsc_context_get_counters.restype = ctypes.c_int
    L.dsc_malloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    L.dsc_malloc.restype = ctypes.c_int
    L.dsc_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    L.dsc_last_error.restype = ctypes.c_char_p
    return L


def small_cfg(**kw):
    keys = dict(vocab_size=64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, q_lora_rank=32,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2,
                initializer_range=0.1)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def batch(cfg, B=2, T=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


# ----------------------------------------------------------------------------- C ABI (CPU)


def test_c_abi_counts_allocations_and_resets():
    L = lib()
    ctx = ctypes.c_void_p()
    assert L.dsc_context_create(None, ctypes.byref(ctx)) == 0
    try:
        c = Counters(size=ctypes.sizeof(Counters))
        assert L.dsc_context_get_counters(ctx, ctypes.byref(c), 0) == 0
        assert c.size == ctypes.sizeof(Counters) and all(getattr(c, k) == 0 for k in KEYS)
        p, q = ctypes.c_void_p(), ctypes.c_void_p()
        assert L.dsc_malloc(ctx, 100, ctypes.byref(p)) == 0 and L.dsc_malloc(ctx, 0, ctypes.byref(q)) == 0
        L.dsc_free(ctx, p)
        assert L.dsc_context_get_counters(ctx, ctypes.byref(c), 1) == 0  # read, then reset
        assert (c.allocs, c.frees, c.syncs, c.copies_to_host, c.copies_to_device) == (2, 1, 0, 0, 0)
        L.dsc_free(ctx, q)
        assert L.dsc_context_get_counters(ctx, ctypes.byref(c), 0) == 0
        assert (c.allocs, c.frees) == (0, 1)  # counted since the reset only
    finally:
        L.dsc_context_destroy(ctx)


def test_c_abi_size_prefix_and_errors():
    L = lib()
    ctx = ctypes.c_void_p()
    assert L.dsc_context_create(None, ctypes.byref(ctx)) == 0
    try:
        p = ctypes.c_void_p()
        assert L.dsc_malloc(ctx, 8, ctypes.byref(p)) == 0
        # an older, shorter struct (size + syncs + ...): only its prefix is written
        c = Counters(size=ctypes.sizeof(ctypes.c_size_t) + 4 * 8)
        c.allocs = 12345
        c.frees = 777
        assert L.dsc_context_get_counters(ctx, ctypes.byref(c), 0) == 0
        assert c.allocs == 1 and c.frees == 777
        for bad in (0, ctypes.sizeof(ctypes.c_size_t), ctypes.sizeof(Counters) + 8):
            c = Counters(size=bad)
            assert L.dsc_context_get_counters(ctx, ctypes.byref(c), 0) == 1  # DSC_ERR_INVALID_ARGUMENT
            msg = L.dsc_last_error().decode()
            assert "dsc_context_get_counters" in msg and "out->size" in msg and str(bad) in msg
        assert L.dsc_context_get_counters(None, ctypes.byref(Counters(size=ctypes.sizeof(Counters))), 0) == 1
        assert L.dsc_context_get_counters(ctx, None, 0) == 1
        L.dsc_free(ctx, p)
    finally:
        L.dsc_context_destroy(ctx)


# ----------------------------------------------------------------------------- Python (CPU)


def test_model_counters_dict_and_reset():
    m = dsc.Model(small_cfg(), seed=0)
    c = m.counters()
    assert set(c) == set(KEYS) and all(isinstance(v, int) and v >= 0 for v in c.values())
    assert c["allocs"] > 0  # the parameters, gradients, ... of the model's own context
    m.counters(reset=True)
    assert all(v == 0 for v in m.counters().values())
    with pytest.raises(TypeError, match="context_counters: obj"):
        dsc._C.context_counters(object())


@pytest.mark.parametrize("fp8", [False, True])
def test_cpu_train_step_steady_state_allocates_nothing(fp8):
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0, fp8=fp8)
    tok, y = batch(cfg)
    for _ in range(2):
        m.train_step(tok, y, lr=1e-3)
    m.counters(reset=True)
    seen = []
    for _ in range(3):  # steps 3..5
        m.train_step(tok, y, lr=1e-3)
        seen.append(m.counters(reset=True))
    for c in seen:
        assert c["workspace_grows"] == 0 and c["syncs"] == 0, seen
        assert c["copies_to_host"] == 0 and c["copies_to_device"] == 0, seen
        assert c["allocs"] == 0 and c["frees"] == 0, seen  # MLA's scratch: the context's slots
    assert seen[0] == seen[1] == seen[2], seen


def test_cpu_train_step_checks_its_inputs_once():
    """A training step range-checks tokens and targets at its entry points; the ops inside
    (embeddings, cross-entropies, the MoE layers' routing) do not check them again, which on a
    GPU would be one host wait each. DSC_DEBUG_CHECKS=1 checks everything: the same losses,
    more checks."""
    import json
    import subprocess
    import sys

    code = r"""
import json, sys
sys.path.insert(0, "tests")
from test_context_counters import small_cfg, batch, dsc
cfg = small_cfg()
m = dsc.Model(cfg, seed=0)
tok, y = batch(cfg)
losses = [m.train_step(tok, y, lr=1e-3)["loss"] for _ in range(3)]
m.counters(reset=True)
losses.append(m.train_step(tok, y, lr=1e-3)["loss"])
print(json.dumps({"losses": losses, "c": m.counters()}))
"""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {}
    for debug in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, DSC_DEBUG_CHECKS=debug), cwd=here,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        runs[debug] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"]["losses"] == runs["1"]["losses"]
    n, d = runs["0"]["c"]["index_checks"], runs["1"]["c"]["index_checks"]
    # tokens and targets in train_step and in loss_and_grad (4); everything else (the bias
    # update's expert counts included) is the library's own and trusted
    assert n == 4 and d > 3 * n, (n, d)


def decode_allocs(m, n_new):
    m.counters(reset=True)
    m.generate([[1, 5, 6, 7]], max_new_tokens=n_new)
    return m.counters(reset=True)


def test_cpu_decode_steps_allocate_nothing():
    """A longer generation of the same prompt allocates exactly as much as a shorter one: the
    per-token steps (dense FFN scratch, MoE intermediates) reuse the context's buffers."""
    m = dsc.Model(small_cfg(), seed=0)
    decode_allocs(m, 8)  # warm-up: the buffers reach their sizes
    a, b = decode_allocs(m, 4), decode_allocs(m, 12)
    assert b["allocs"] == a["allocs"] and b["workspace_grows"] == a["workspace_grows"], (a, b)


def test_moe_layer_without_saved_reuses_context_buffers():
    """dsc_moe_layer_forward without a saved handle keeps its intermediates in the context
    (one op context here): the second call of a shape allocates nothing in the op pool."""
    rng = np.random.default_rng(0)
    T, D, E, F = 16, 32, 8, 24
    cfg = dsc.MoEConfig(n_routed_experts=E, num_experts_per_tok=2, n_group=4, topk_group=2,
                        moe_intermediate_size=F, n_shared_experts=1)
    params = {"mlp.gate.weight": (0.1 * rng.standard_normal((E, D))).astype(np.float32),
              "mlp.gate.e_score_correction_bias": np.zeros(E, np.float32)}
    for proj, shape in (("gate_proj", (E, F, D)), ("up_proj", (E, F, D)), ("down_proj", (E, D, F))):
        params[f"mlp.experts.{proj}.weight"] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
        params[f"mlp.shared_experts.{proj}.weight"] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    x = rng.standard_normal((T, D)).astype(np.float32)
    y0 = dsc.to_numpy(dsc.moe_layer_forward(x, params, cfg, training=False)[0])
    dsc.op_counters(reset=True)
    y1 = dsc.to_numpy(dsc.moe_layer_forward(x, params, cfg, training=False)[0])
    c = dsc.op_counters(reset=True)
    assert np.array_equal(y0, y1)  # the kept buffers give the same bits
    assert c["allocs"] == 0 and c["workspace_grows"] == 0, c


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
def test_cuda_train_step_steady_state():
    """Steps 3..5 of a CUDA training step allocate nothing (activation plan, stream-ordered
    workspace, MoE buffers); the host waits per step are the same every step (none grows with
    the step count)."""
    cfg = small_cfg()
    m = dsc.Model(cfg, seed=0, device="cuda")
    tok, y = batch(cfg)
    for _ in range(2):
        m.train_step(tok, y, lr=1e-3)
    m.counters(reset=True)
    seen = []
    for _ in range(3):
        m.train_step(tok, y, lr=1e-3)
        seen.append(m.counters(reset=True))
    for c in seen:
        assert c["workspace_grows"] == 0 and c["allocs"] == 0 and c["frees"] == 0, seen
    assert seen[0] == seen[1] == seen[2], seen
    print("per steady-state CUDA training step:", seen[-1])


@pytest.mark.cuda
def test_cuda_decode_steps_allocate_nothing():
    m = dsc.Model(small_cfg(), seed=0, device="cuda")
    decode_allocs(m, 8)
    a, b = decode_allocs(m, 4), decode_allocs(m, 12)
    assert b["allocs"] == a["allocs"] and b["workspace_grows"] == a["workspace_grows"], (a, b)
    print("decode: 4 tokens", a, "12 tokens", b)


@pytest.mark.cuda
def test_cuda_global_norm_waits_once():
    rng = np.random.default_rng(1)
    hs = [rng.standard_normal(n).astype(np.float32) for n in (7, 1000, 0, 4099, 3)]
    ds = [dsc.tensor(h, device="cuda") for h in hs]
    want = dsc.global_norm(hs)
    dsc.op_counters("cuda", reset=True)
    got = dsc.global_norm(ds)
    c = dsc.op_counters("cuda", reset=True)
    assert c["syncs"] == 1 and c["copies_to_host"] == 1, c
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(float(np.sqrt(sum(np.sum(h.astype(np.float64) ** 2) for h in hs))), rel=1e-6)


@pytest.mark.cuda
def test_cuda_index_check_waits_once_and_names_the_argument():
    table = dsc.tensor(np.ones((10, 4), np.float32), device="cuda")
    ids = dsc.tensor(np.array([1, 2, 3], np.int32), device="cuda")
    dsc.embedding(ids, table)
    dsc.op_counters("cuda", reset=True)
    dsc.embedding(ids, table)
    c = dsc.op_counters("cuda", reset=True)
    assert c["syncs"] == 1 and c["allocs"] == 0, c
    bad = dsc.tensor(np.array([1, 12, 3], np.int32), device="cuda")
    with pytest.raises(ValueError, match="ids"):
        dsc.embedding(bad, table)


# ----------------------------------------------------------------------------- streams


def test_model_stream_arguments_cpu():
    m = dsc.Model(small_cfg(), seed=0)
    assert m.cuda_stream == 0
    m.set_stream(None)
    m.set_stream(0)
    with pytest.raises(ValueError, match="stream: expected NULL for a CPU context"):
        m.set_stream(5)
    with pytest.raises(TypeError, match="stream: expected None, an int handle"):
        m.set_stream("cuda")
    with pytest.raises(TypeError, match="got bool"):
        m.set_stream(True)
    with pytest.raises(ValueError, match=r"stream: expected a handle in \[0, 2\^64\)"):
        m.set_stream(-1)
    assert m.cuda_stream == 0


def cudart():
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12",
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "lib64", "libcudart.so")):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    pytest.skip("libcudart not loadable (needed to create a CUDA stream)")


@pytest.mark.cuda
def test_cuda_model_on_a_user_stream_matches_the_default_stream():
    """Training on a non-blocking stream of our own gives the same bits as the legacy default
    stream, and switching streams mid-run (the workspace handed over by an event) too."""
    rt = cudart()
    s = ctypes.c_void_p()
    assert rt.cudaStreamCreateWithFlags(ctypes.byref(s), 1) == 0  # cudaStreamNonBlocking
    try:
        cfg = small_cfg()
        tok, y = batch(cfg)
        a, b = dsc.Model(cfg, seed=0, device="cuda"), dsc.Model(cfg, seed=0, device="cuda")
        b.set_stream(s.value)
        assert b.cuda_stream == s.value
        for step in range(4):
            if step == 2:
                b.set_stream(0)  # back to the default stream: the old one's work is waited for
            la, lb = a.train_step(tok, y, lr=1e-3)["loss"], b.train_step(tok, y, lr=1e-3)["loss"]
            assert la == lb, (step, la, lb)
        b.set_stream(s.value)
        assert a.generate([[1, 2, 3]], max_new_tokens=6).tokens == b.generate([[1, 2, 3]], max_new_tokens=6).tokens
        b.set_stream(None)
    finally:
        rt.cudaStreamDestroy(s)


@pytest.mark.cuda
def test_cuda_moe_layer_skips_checks_of_its_own_indices():
    """Inside the MoE layer the inner ops do not copy the routing's indices back to check
    them (fewer host waits than with DSC_DEBUG_CHECKS=1, which checks everything), and the
    results are the same bits either way."""
    import subprocess
    import sys

    code = r'''
import json, numpy as np, deepseek_c as dsc
rng = np.random.default_rng(0)
T, D, E, F = 64, 32, 8, 24
cfg = dsc.MoEConfig(n_routed_experts=E, num_experts_per_tok=2, n_group=4, topk_group=2,
                    moe_intermediate_size=F, n_shared_experts=1)
p = {"mlp.gate.weight": dsc.tensor(0.1 * rng.standard_normal((E, D)), "cuda", "float32"),
     "mlp.gate.e_score_correction_bias": dsc.tensor(np.zeros(E), "cuda", "float32")}
for proj, shape in (("gate_proj", (E, F, D)), ("up_proj", (E, F, D)), ("down_proj", (E, D, F))):
    p[f"mlp.experts.{proj}.weight"] = dsc.tensor(0.1 * rng.standard_normal(shape), "cuda", "float32")
for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
    p[f"mlp.shared_experts.{proj}.weight"] = dsc.tensor(0.1 * rng.standard_normal(shape), "cuda", "float32")
x = dsc.tensor(rng.standard_normal((T, D)), "cuda", "float32")
dsc.moe_layer_forward(x, p, cfg, align=1, training=False)
dsc.op_counters("cuda", reset=True)
y = dsc.moe_layer_forward(x, p, cfg, align=1, training=False)[0]
c = dsc.op_counters("cuda", reset=True)
print(json.dumps({"syncs": c["syncs"], "allocs": c["allocs"], "y": dsc.to_numpy(y).tobytes().hex()}))
'''
    runs = {}
    for debug in ("0", "1"):
        env = dict(os.environ, DSC_DEBUG_CHECKS=debug)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        import json
        runs[debug] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"]["y"] == runs["1"]["y"]
    assert runs["0"]["syncs"] < runs["1"]["syncs"], runs
    # no wait left: the grouped GEMMs read the permutation's offsets on the device
    assert runs["0"]["syncs"] == 0, runs
    assert runs["0"]["allocs"] == 0, runs
