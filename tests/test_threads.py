"""Threads: every Model and MLACache has its own C context and the functional ops take one
from a per-device pool, so independent work runs in parallel threads; calls on one model
wait for each other; a model's on_token callback may call ops and other models, and a call
on the same model from it (or a cycle of callbacks) raises instead of deadlocking.

The scenarios that used to deadlock run in a subprocess with a timeout, so a regression
fails instead of hanging the suite. The parallel speed is measured and printed, never
asserted (run with -s to see it)."""

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import deepseek_c as dsc
from _util import perturb_norms
from reference import dense as ref
from reference import mla as mla_ref
from test_moe import make_layer

TESTS = os.path.dirname(os.path.abspath(__file__))
PROMPTS = [[5, 17, 3, 9, 42], [7, 7, 1, 25, 31, 6, 2], [30]]
JOIN_S = 60  # generous: the machine may be loaded; a deadlock never ends



def small_cfg(**kw):
    keys = dict(vocab_size=64, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, q_lora_rank=32,
                kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_attention_heads=2,
                initializer_range=0.1, eos_token_id=None)
    keys.update(kw)
    return dsc.ModelConfig.tiny(**keys)


def model(seed, **kw):
    """A small model whose norms and correction biases are off their init values."""
    m = dsc.Model(small_cfg(), seed=seed, **kw)
    perturb_norms(m, np.random.default_rng(seed + 100))
    return m


# What the subprocesses of run_isolated start with.
PRELUDE = """
import threading, time
import numpy as np
import deepseek_c as dsc
from test_threads import PROMPTS, small_cfg, model
"""


def run_isolated(code: str, timeout: float = 180) -> str:
    """Run `code` (after PRELUDE) in a fresh interpreter that imports this deepseek_c; a
    deadlock there fails this test after `timeout` seconds instead of hanging the suite."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_parent, TESTS, os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=TESTS)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"no answer after {timeout} s (a deadlock?); output so far:\n{e.stdout}\n{e.stderr}")
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def run_threads(*fns, timeout: float = JOIN_S) -> list:
    """Run each fn in its own thread, started together; their results (re-raising the first
    exception). A thread still running after `timeout` fails the test."""
    out: list = [None] * len(fns)
    errs: list = []
    go = threading.Barrier(len(fns))

    def body(i, fn):
        try:
            go.wait(timeout)
            out[i] = fn()
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    ts = [threading.Thread(target=body, args=(i, f), daemon=True) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    assert not any(t.is_alive() for t in ts), f"a thread is still running after {timeout} s (a deadlock?)"
    if errs:
        raise errs[0]
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------- callbacks


def test_callback_may_call_ops_and_other_models():
    """An on_token callback computes ops (checked against NumPy float64) and generates with
    another model (the same tokens as outside any callback); the outer generation is not
    disturbed. This deadlocked when one lock per device guarded every call."""
    run_isolated('''
    a, b = model(1), model(2)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    w = (1 + 0.2 * rng.standard_normal(40)).astype(np.float32)
    k = rng.standard_normal((40, 24)).astype(np.float32)
    want_norm = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w
    want_mm = x.astype(np.float64) @ k
    want_a = a.generate(PROMPTS, max_new_tokens=5).tokens
    want_b = b.generate(PROMPTS[:2], max_new_tokens=3).tokens
    calls = []

    def cb(seq, tok):
        np.testing.assert_allclose(dsc.rms_norm(x, w), want_norm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dsc.matmul(x, k), want_mm, rtol=1e-4, atol=1e-4)
        assert b.generate(PROMPTS[:2], max_new_tokens=3).tokens == want_b
        calls.append((seq, tok))

    got = a.generate(PROMPTS, max_new_tokens=5, on_token=cb)
    assert got.tokens == want_a, (got.tokens, want_a)
    assert sorted(calls) == sorted((s, t) for s, toks in enumerate(want_a) for t in toks)
    # stream: the loop body may do the same
    seen = []
    for tok in a.stream(PROMPTS[0], max_new_tokens=5):
        assert b.generate(PROMPTS[:2], max_new_tokens=3).tokens == want_b
        seen.append(tok)
    assert seen == want_a[0]
    print("ok")
    ''')


def test_reentrant_call_on_the_same_model_raises_a_clear_error(tmp_path):
    """From a model's own on_token callback: generate, forward, train_step, loss_and_grads,
    save and freeze of that model raise deepseek_c.Error (a RuntimeError) naming the model
    and the reason; reads (step, repr, parameters, grads) work; uncaught, the error ends
    generate; the model works normally afterwards."""
    out = run_isolated(f'''
    a = model(1)
    tok = np.array([[1, 2, 3, 4]], np.int32)
    a.train_step(tok, tok)  # so that there are gradients to read
    want = a.generate(PROMPTS, max_new_tokens=4).tokens
    calls = {{
        "generate": lambda: a.generate([[1, 2]], max_new_tokens=1),
        "forward": lambda: a.forward(tok),
        "routing": lambda: a.routing(tok),
        "train_step": lambda: a.train_step(tok, tok),
        "loss_and_grads": lambda: a.loss_and_grads(tok, tok),
        "save": lambda: a.save({str(tmp_path)!r}),
        "stream": lambda: list(a.stream([1, 2], max_new_tokens=1)),
    }}
    errors, reads = {{}}, []

    def cb(seq, tok_):
        if errors:
            return
        for name, f in calls.items():
            try:
                f()
                errors[name] = None
            except dsc.Error as e:
                assert isinstance(e, RuntimeError)
                errors[name] = str(e)
        reads.append((a.step, repr(a), len(a.parameters()), a.grad("model.norm.weight").shape))

    assert a.generate(PROMPTS, max_new_tokens=4, on_token=cb).tokens == want
    assert reads, "the callback did not run"
    for name, msg in errors.items():
        assert msg is not None, name + " did not raise"
        assert "model (2 layers, hidden 64, vocab 64, cpu)" in msg, msg
        assert "busy with dsc_model_generate in this same thread" in msg, msg
        assert "on_token callback" in msg and "wait for itself" in msg, msg
    print(errors["forward"])
    try:
        a.generate(PROMPTS, max_new_tokens=4, on_token=lambda s, t: a.forward(tok))
        raise AssertionError("no error")
    except dsc.Error as e:
        assert "dsc_model_forward: the model" in str(e), e
    assert a.generate(PROMPTS, max_new_tokens=4).tokens == want
    a.train_step(tok, tok)
    ''')
    assert "dsc_model_forward: the model (2 layers" in out


def test_callbacks_calling_each_others_model_raise_instead_of_deadlocking():
    """Two threads generate with models a and b; each callback, both at once, generates with
    the other model. One of them would wait for the other forever: that one raises (the
    cycle of waits is detected), the other call goes through, both generations finish."""
    out = run_isolated('''
    a, b = model(1), model(2)
    want = {"a": a.generate(PROMPTS, max_new_tokens=3).tokens, "b": b.generate(PROMPTS, max_new_tokens=3).tokens}
    both_in = threading.Barrier(2)
    got, inner = {}, {}

    def job(name, me, other):
        first = [True]

        def cb(seq, tok):
            if first[0]:
                first[0] = False
                both_in.wait(60)
                try:
                    inner[name] = other.generate(PROMPTS, max_new_tokens=3).tokens
                except dsc.Error as e:
                    inner[name] = str(e)

        def run():
            got[name] = me.generate(PROMPTS, max_new_tokens=3, on_token=cb).tokens
        return run

    ts = [threading.Thread(target=job("a", a, b)), threading.Thread(target=job("b", b, a))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == want, (got, want)
    errs = [k for k, v in inner.items() if isinstance(v, str)]
    assert len(errs) == 1, inner
    ok = "b" if errs[0] == "a" else "a"
    assert inner[ok] == want[errs[0]], inner
    msg = inner[errs[0]]
    assert "dsc_model_generate: waiting for the model (2 layers" in msg and "would never end" in msg, msg
    print(msg)
    ''')
    assert "would never end" in out


def test_other_threads_wait_for_a_busy_model_but_not_for_other_work():
    """While model a is paused in its callback (waiting for the main thread), another model,
    the ops and a cache on the same device run in the main thread: nothing global is
    locked. A call on a itself from the main thread waits until a's generate is over and
    then gives the sequential result (also from a stream's loop body); Ctrl-C interrupts
    such a wait."""
    run_isolated('''
    a, b = model(1), model(2)
    tok = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.int32)
    want_b, want_a = b.forward(tok).copy(), a.forward(tok).copy()
    want_gen = a.generate(PROMPTS, max_new_tokens=4).tokens
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    paused, resume = threading.Event(), threading.Event()
    last_cb, res = [0.0], {}

    def cb(seq, t):
        if not paused.is_set():
            paused.set()
            assert resume.wait(60), "the main thread never got through"
        last_cb[0] = time.perf_counter()

    def gen():
        res["gen"] = a.generate(PROMPTS, max_new_tokens=4, on_token=cb).tokens

    th = threading.Thread(target=gen)
    th.start()
    assert paused.wait(60)
    # a is busy (paused in its callback): other work goes on in this thread
    assert np.array_equal(b.forward(tok), want_b)
    dsc.rms_norm(x, np.ones(64, np.float32))
    t = dsc.tensor(x)  # C-owned memory made and freed (freeing took a busy lock with the GIL held)
    del t
    cache = dsc.MLACache(small_cfg(), max_batch=1, max_tokens=8, dtype="float32")
    cache.add_sequence(0)
    resume.set()
    # a itself: waits for the generation to end
    got_a = a.forward(tok)
    done = time.perf_counter()
    th.join(60)
    assert not th.is_alive()
    assert done > last_cb[0] > 0
    assert np.array_equal(got_a, want_a)
    assert res["gen"] == want_gen
    # stream: the loop body runs beside the generation; a call on the model waits for its end
    seen = []
    for t in a.stream(PROMPTS[0], max_new_tokens=4):
        assert np.array_equal(a.forward(tok), want_a)
        seen.append(t)
    assert seen == want_gen[0]
    # Ctrl-C interrupts a wait for a busy model
    import os, signal
    hold, release, held_out = threading.Event(), threading.Event(), threading.Event()

    def cb2(seq, t):
        hold.set()
        release.wait(60)
        held_out.set()

    th = threading.Thread(target=lambda: a.generate([[1, 2]], max_new_tokens=2, on_token=cb2))
    th.start()
    assert hold.wait(60)
    main = threading.main_thread().ident
    threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
    try:
        a.forward(tok)
        raise AssertionError("the wait was not interrupted")
    except KeyboardInterrupt:
        assert not held_out.is_set(), "interrupted only once the model was free"
    release.set()
    th.join(60)
    assert np.array_equal(a.forward(tok), want_a)
    print("ok")
    ''')


# ------------------------------------------------------------------------- results


@pytest.mark.parametrize("fp8", [False, True])
def test_two_models_in_two_threads_match_sequential_runs(rng, fp8):
    """Training steps and generation of two models in two threads at once give the bits of
    the same runs one after the other (losses, every parameter and moment, tokens)."""
    cfg = small_cfg()
    toks = rng.integers(0, cfg.vocab_size, (2, 4, 12)).astype(np.int32)
    tgts = rng.integers(0, cfg.vocab_size, (2, 4, 12)).astype(np.int32)

    def job(i):
        def run():
            m = model(10 + i, fp8=fp8)
            losses = [m.train_step(toks[i], tgts[i], lr=2e-3, aux_alpha=1e-4)["loss"] for _ in range(3)]
            out = m.generate(PROMPTS, max_new_tokens=5, temperature=0.8, top_p=0.9, seed=i).tokens
            params = {k: np.array(v) for k, v in m.parameters().items()}
            moments = np.array(m.optimizer_state("model.norm.weight")[0])
            return losses, out, params, moments
        return run

    seq = [job(0)(), job(1)()]
    par = run_threads(job(0), job(1))
    for s, p in zip(seq, par):
        assert s[0] == p[0] and s[1] == p[1]
        assert np.array_equal(s[3], p[3])
        for k in s[2]:
            assert np.array_equal(s[2][k], p[2][k]), k


def test_ops_from_several_threads_match_one_thread(rng):
    """Four threads run the ops (BLAS GEMMs, OpenMP-parallel element-wise, MLA forward and
    backward through saved activations, an MoE layer, a paged cache each) at once, many
    times: every result has the bits of the single-threaded one, which matches NumPy."""
    mcfg = dsc.ModelConfig.tiny(hidden_size=96, num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32,
                                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    mla_w = mla_ref.init_weights(mcfg, rng)
    xl, lparams, lcfg = make_layer(rng, D=16, E=8, F=12, T=24, variant="v3", n_shared=1, min_gap=1e-4)
    inputs = []
    for _ in range(4):
        inputs.append(dict(a=rng.standard_normal((96, 80)).astype(np.float32),
                           b=rng.standard_normal((80, 72)).astype(np.float32),
                           g=rng.standard_normal((64, 300)).astype(np.float32),
                           w=(1 + 0.2 * rng.standard_normal(300)).astype(np.float32),
                           x=rng.standard_normal((2, 6, 96)).astype(np.float32),
                           dy=rng.standard_normal((2, 6, 96)).astype(np.float32)))

    def compute(d):
        mm = dsc.matmul(d["a"], d["b"])
        norm = dsc.rms_norm(d["g"], d["w"])
        sw = dsc.swiglu(d["g"], norm)
        y, ctx = dsc.mla_forward(d["x"], mla_w, mcfg)
        grads = dsc.mla_backward(d["dy"], ctx)
        ly, lctx = dsc.moe_layer_forward(xl, lparams, lcfg)
        lg = dsc.moe_layer_backward(ly, lctx)
        cache = dsc.MLACache(mcfg, max_batch=2, max_tokens=8, block_size=4, dtype="float32")
        cache.add_sequence(0), cache.add_sequence(1)
        dec = dsc.mla_decode(d["x"], mla_w, mcfg, cache, [0, 1])
        return [np.array(v) for v in (mm, norm, sw, y, grads["x"], grads["kv_b_proj.weight"], ly, lg["x"], dec)]

    want = [compute(d) for d in inputs]
    np.testing.assert_allclose(want[0][0], ref.matmul(inputs[0]["a"], inputs[0]["b"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(want[0][1], ref.rms_norm(inputs[0]["g"], inputs[0]["w"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want[0][3], mla_ref.mla_forward(inputs[0]["x"], mla_w, mcfg), rtol=1e-4, atol=1e-4)

    def worker(i):
        def run():
            return [compute(inputs[i]) for _ in range(5)]
        return run

    for i, runs in enumerate(run_threads(*(worker(i) for i in range(4)))):
        for got in runs:
            for j, (g, w) in enumerate(zip(got, want[i])):
                assert np.array_equal(g, w), (i, j)
    # the pool holds as many contexts as ops ran at once, not one per call or thread
    assert 1 <= dsc._C.context_pool_size(1, 0) <= 8


def test_saved_activations_may_cross_threads(rng):
    """The forward in one thread, the backward in another (the saved activations keep the
    context they were made on), and dropping them while other threads run ops."""
    mcfg = dsc.ModelConfig.tiny(hidden_size=96, num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32,
                                qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    w = mla_ref.init_weights(mcfg, rng)
    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 96)).astype(np.float32)
    _, ctx0 = dsc.mla_forward(x, w, mcfg)
    want = dsc.mla_backward(dy, ctx0)
    ctxs = run_threads(*[lambda: dsc.mla_forward(x, w, mcfg)[1]] * 3)
    stop = threading.Event()

    def busy():
        a = rng.standard_normal((128, 128)).astype(np.float32)
        while not stop.is_set():
            dsc.matmul(a, a)

    th = [threading.Thread(target=busy, daemon=True) for _ in range(2)]
    for t in th:
        t.start()
    try:
        for c in ctxs:
            got = dsc.mla_backward(dy, c)
            for k in want:
                assert np.array_equal(got[k], want[k]), k
        del c, ctxs, ctx0
        gc.collect()
    finally:
        stop.set()
        for t in th:
            t.join(JOIN_S)


def test_model_views_outlive_the_model_and_its_context():
    """Parameter views (NumPy on CPU, via dsc.Tensor) keep the model, and so its context,
    alive after the Model object is gone."""
    m = model(3)
    tok = np.array([[1, 2, 3, 4]], np.int32)
    m.train_step(tok, tok)
    p = m.parameters()["model.norm.weight"]
    g = m.grad("model.norm.weight")
    want = p.copy()
    del m
    gc.collect()
    np.testing.assert_array_equal(p, want)
    g[...] = 1.0  # still writable memory of the model
    assert float(g.sum()) == g.size


def test_num_threads_argument(tmp_path, rng):
    cfg = small_cfg()
    tok = rng.integers(0, cfg.vocab_size, (2, 8)).astype(np.int32)
    a, b = dsc.Model(cfg, seed=4, num_threads=1), dsc.Model(cfg, seed=4)
    assert a.num_threads == 1 and b.num_threads is None
    assert a.train_step(tok, tok)["loss"] == b.train_step(tok, tok)["loss"]
    a.save(tmp_path)
    c = dsc.Model.from_pretrained(tmp_path, num_threads=2)
    assert c.num_threads == 2 and c.freeze_fp8().num_threads == 2
    np.testing.assert_array_equal(c.forward(tok), a.forward(tok))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads: expected None .* or an int >= 1"):
            dsc.Model(cfg, num_threads=bad)
    with pytest.raises(ValueError, match="Model.from_pretrained: num_threads"):
        dsc.Model.from_pretrained(tmp_path, num_threads=0)


@pytest.mark.cuda
def test_cuda_models_in_threads_and_callbacks(rng):
    """On a GPU (every context of the glue on the device's legacy default stream): two
    models trained and run in two threads agree with the sequential runs, and a callback of
    one model runs ops on the device and generates with the other (under a timeout)."""
    cfg = small_cfg()
    toks = rng.integers(0, cfg.vocab_size, (2, 4, 12)).astype(np.int32)

    def job(i):
        def run():
            m = dsc.Model(cfg, device="cuda", seed=20 + i)
            losses = [m.train_step(toks[i], toks[i], lr=2e-3)["loss"] for _ in range(3)]
            return losses, dsc.to_numpy(m.forward(toks[i])), m.generate(PROMPTS, max_new_tokens=4).tokens
        return run

    seq = [job(0)(), job(1)()]
    for s, p in zip(seq, run_threads(job(0), job(1))):
        np.testing.assert_allclose(p[0], s[0], rtol=1e-5)
        np.testing.assert_allclose(p[1], s[1], rtol=0, atol=1e-4 * np.abs(s[1]).max())
        assert p[2] == s[2]
    a, b = dsc.Model(cfg, device="cuda", seed=1), dsc.Model(cfg, device="cuda", seed=2)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    w = (1 + 0.2 * rng.standard_normal(40)).astype(np.float32)
    xd, wd = dsc.tensor(x, device="cuda"), dsc.tensor(w, device="cuda")
    want_a = a.generate(PROMPTS, max_new_tokens=4).tokens
    want_b = b.generate(PROMPTS, max_new_tokens=3).tokens

    def cb(seq_, tok):
        np.testing.assert_allclose(dsc.to_numpy(dsc.rms_norm(xd, wd)), ref.rms_norm(x, w), rtol=1e-5, atol=1e-5)
        assert b.generate(PROMPTS, max_new_tokens=3).tokens == want_b

    got, = run_threads(lambda: a.generate(PROMPTS, max_new_tokens=4, on_token=cb).tokens)
    assert got == want_a


# ------------------------------------------------------------------------- memory


def test_rss_flat_over_model_cycles_threads_and_dlpack_round_trips():
    """Models made, used and dropped (their contexts with them), ops from short-lived threads
    (the pool is reused, not grown per thread) and DLPack round trips leave RSS flat."""
    cfg = small_cfg()
    tok = np.arange(16, dtype=np.int32).reshape(2, 8) % cfg.vocab_size

    def model_cycle():
        m = dsc.Model(cfg, seed=5)
        m.train_step(tok, tok)
        m.generate([[1, 2, 3]], max_new_tokens=2)

    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)

    def round_trips(n):
        for _ in range(n):
            t = dsc.tensor(x)
            a = np.from_dlpack(t)
            dsc.rms_norm(a, np.ones(64, np.float32), out=dsc.empty((256, 64)))

    def thread_cycle():
        t = threading.Thread(target=lambda: dsc.matmul(x, x, trans_b=True))
        t.start()
        t.join(JOIN_S)

    for _ in range(10):  # warm up: allocator pools, workspaces
        model_cycle(), thread_cycle()
    round_trips(2000)
    gc.collect()
    pool0, before = dsc._C.context_pool_size(1, 0), rss_bytes()
    for _ in range(60):
        model_cycle(), thread_cycle()
    round_trips(20000)
    gc.collect()
    grown = rss_bytes() - before
    # one leaked model of this size (weights, grads, moments) is ~1 MB, a context's workspace more
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert dsc._C.context_pool_size(1, 0) <= max(pool0, 2)


# ------------------------------------------------------------------------- measurement


def test_measure_two_models_in_two_threads():
    """Not asserted: the time of two models training in two threads against one after the
    other, one OpenMP/BLAS thread per model (so 2 free cores give at most 2x), with the CPU
    seconds the process got (cores busy = CPU s / wall s: on a loaded machine the speedup is
    bounded by what the scheduler grants, not by the library)."""
    cfg = small_cfg(hidden_size=128, intermediate_size=256, moe_intermediate_size=64)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (8, 32)).astype(np.int32)
    ms = [dsc.Model(cfg, seed=i, num_threads=1) for i in range(2)]

    def work(m):
        for _ in range(6):
            m.train_step(tok, tok)

    def timed(f):
        c0, t0 = time.process_time(), time.perf_counter()
        f()
        return time.perf_counter() - t0, time.process_time() - c0

    for m in ms:
        work(m)
    seq, seq_cpu = timed(lambda: [work(m) for m in ms])
    par, par_cpu = timed(lambda: run_threads(*(lambda m=m: work(m) for m in ms)))
    print(f"\ntwo models x 6 train steps, num_threads=1 each: sequential {seq:.2f} s ({seq_cpu / seq:.2f} cores "
          f"busy), two threads {par:.2f} s ({par_cpu / par:.2f} cores busy) -> {seq / par:.2f}x; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
