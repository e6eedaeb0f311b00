"""What a new user meets in the first hour, each as a test so it cannot come back: the
package imports from the clone's root; throughput is total work over total wall time;
plots come with the install and can be redrawn from a finished run; dtype arguments take
what users pass; a tensor that requires grad gets our error, not PyTorch's; `info` says
plainly that there is no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import deepseek_c as dsc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


# ----------------------------------------------------------------------------- the clone's root


@pytest.mark.skipif(not any(f.startswith("_C.") for f in os.listdir(os.path.join(ROOT, "deepseek_c"))),
                    reason="the source tree holds no build (installed from elsewhere than this clone)")
def test_imports_from_the_clone_root():
    """`python -m deepseek_c ...` run from the clone's root imports ./deepseek_c, which the
    build fills with _C, lib/ and include/: no 'circular import'."""
    code = "import deepseek_c as d, os; print(d.__file__); print(os.path.isfile(d.get_library()))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    path, has_lib = r.stdout.split()
    assert path.startswith(ROOT) and has_lib == "True"
    r = subprocess.run([sys.executable, "-m", "deepseek_c", "info"], cwd=ROOT, env=_clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "deepseek_c" in r.stdout, r.stderr


def test_unbuilt_source_tree_says_so_in_one_line(tmp_path):
    """A copy of the Python sources without a build: the import error names the fix."""
    import shutil

    src = tmp_path / "clone"
    shutil.copytree(os.path.join(ROOT, "deepseek_c"), src / "deepseek_c",
                    ignore=shutil.ignore_patterns("_C.*", "lib", "include", "__pycache__"))
    r = subprocess.run([sys.executable, "-c", "import deepseek_c"], cwd=src, env=_clean_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: deepseek_c:") and "pip install ." in last and "circular" not in r.stderr


def test_info_without_a_gpu_says_so(tmp_path):
    d = dsc.info()
    if d["devices"]:
        pytest.skip("a GPU is visible")
    if d["cuda"]:  # a CUDA build on a machine without a driver
        reason = d["cuda_unavailable_reason"]
        assert "no NVIDIA driver or no GPU" in reason or "update the driver" in reason, reason
        assert "insufficient" not in reason.lower().split("(")[0]


# ----------------------------------------------------------------------------- throughput


def test_fit_reports_total_tokens_over_total_time():
    """tokens_per_s of a run is total tokens / total wall time, never a mean of per-step rates."""
    from deepseek_c import data as D, train as TR

    tok = D.CharTokenizer()
    model = dsc.Model(TR.demo_config(tok.vocab_size, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                     q_lora_rank=32, kv_lora_rank=32), seed=0)
    hist = TR.fit(model, D.batches(D.Addition(2), tok, 4, 16, seed=0), 6, progress=False)
    assert hist["total_tokens"] == 6 * 4 * 16 == sum(hist["tokens"])
    assert hist["tokens_per_s"] == pytest.approx(hist["total_tokens"] / hist["seconds"])
    assert hist["seconds"] >= sum(hist["step_seconds"])  # the wall time includes everything between steps
    st = model.train_step(np.ones((2, 8), np.int64), np.ones((2, 8), np.int64))
    assert st["tokens"] == 16 and st["tokens_per_s"] == pytest.approx(16 / st["seconds"])


# ----------------------------------------------------------------------------- plots


def test_plots_come_with_the_install_and_redraw_from_history(tmp_path):
    import matplotlib  # a dependency of the package now  # noqa: F401

    from deepseek_c import data as D, train as TR

    tok = D.CharTokenizer()
    cfg = TR.demo_config(tok.vocab_size, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         q_lora_rank=32, kv_lora_rank=32)
    model = dsc.Model(cfg, seed=0)
    hist = TR.fit(model, D.batches(D.Addition(2), tok, 4, 16, seed=0), 3, progress=False)
    TR.save_history(hist, str(tmp_path))
    env = dict(_clean_env(), PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(dsc.__file__))))
    r = subprocess.run([sys.executable, "-m", "deepseek_c", "plot", str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for f in ("loss_curve.png", "expert_load.png"):
        assert (tmp_path / f).stat().st_size > 1000
    back = TR.load_history(str(tmp_path))
    assert back["loss"] == hist["loss"] and back["expert_load"] == hist["expert_load"]
    r = subprocess.run([sys.executable, "-m", "deepseek_c", "plot", str(tmp_path / "none")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "history.json" in r.stderr and "Traceback" not in r.stderr


def test_expert_load_plot_names_the_mtp_module():
    """The MTP module's MoE block is 'MTP depth 1', not 'layer 2'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepseek_c import train as TR

    hist = {"loss": [1.0, 0.5], "mtp_loss": [1.0, 0.6], "num_hidden_layers": 2,
            "expert_load": [{1: [1, 2, 3, 4], 2: [2, 2, 2, 2]}, {1: [2, 2, 2, 2], 2: [1, 3, 1, 3]}]}
    seen = []
    orig = plt.Figure.savefig

    def capture(fig, *a, **k):
        for ax in fig.axes:
            seen.extend(t.get_text() for t in ax.get_yticklabels())
            leg = ax.get_legend()
            if leg:
                seen.extend(t.get_text() for t in leg.get_texts())
        return orig(fig, *a, **k)

    import tempfile

    plt.Figure.savefig = capture
    try:
        with tempfile.TemporaryDirectory() as d:
            TR.save_plots(hist, d)
    finally:
        plt.Figure.savefig = orig
    assert "MTP depth 1" in seen and "layer 2" not in seen and "layer 1" in seen


# ----------------------------------------------------------------------------- dtypes


def _dtype_spellings(name):
    import ml_dtypes

    out = [name, np.dtype(getattr(ml_dtypes, name, None) or name)]
    out.append(getattr(ml_dtypes, name) if hasattr(ml_dtypes, name) else getattr(np, name))
    short = {"float32": "fp32", "bfloat16": "bf16", "float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2"}
    out.append(short[name])
    try:
        import torch

        out.append(getattr(torch, name))
    except (ImportError, AttributeError):
        pass
    return out


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float8_e4m3fn"])
def test_every_dtype_argument_takes_what_users_pass(name, rng):
    for dt in _dtype_spellings(name):
        t = dsc.empty((2, 3), dtype=dt)
        assert t.dtype == name, (dt, t.dtype)
        if name != "float8_e4m3fn":
            x = rng.standard_normal((4, 128)).astype(np.float32)
            q = dsc.fp8_cast(dsc.fp8_cast(x, "e4m3"), dt)  # FP8 -> dt
            assert dsc.to_numpy(q).dtype.name == name
            qq, s = dsc.fp8_quantize(x)
            assert dsc.to_numpy(dsc.fp8_dequantize(qq, s, dtype=dt)).dtype.name == name
        else:
            x = rng.standard_normal((4, 128)).astype(np.float32)
            assert dsc.to_numpy(dsc.fp8_cast(x, dt)).dtype.name == name
            qq, s = dsc.fp8_quantize(x, fmt=dt)
            assert dsc.to_numpy(qq).dtype.name == name
        cache = dsc.MLACache(dsc.ModelConfig.tiny(), max_batch=1, max_tokens=8, block_size=8, dtype=dt)
        assert cache.dtype == name


def test_model_and_generate_dtype_arguments():
    import ml_dtypes

    cfg = dsc.ModelConfig.tiny()
    for dt in ("float32", np.float32, np.dtype("float32"), "fp32"):
        assert dsc.Model(cfg, dtype=dt).dtype == "float32"
    for mom in ("bfloat16", "bf16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16)):
        assert dsc.Model(cfg, moments=mom).moments == "bfloat16"
    m = dsc.Model(cfg, seed=0)
    want = m.generate([[1, 2, 3]], max_new_tokens=3, cache_dtype="float32")[0]
    for cd in (np.float32, "f32", np.dtype("float32")):
        assert m.generate([[1, 2, 3]], max_new_tokens=3, cache_dtype=cd)[0] == want
    for cd in ("e4m3", ml_dtypes.float8_e4m3fn, "bf16", ml_dtypes.bfloat16):
        m.generate([[1, 2, 3]], max_new_tokens=3, cache_dtype=cd)


@pytest.mark.parametrize("call", [
    lambda: dsc.empty((2,), dtype="float33"),
    lambda: dsc.empty((2,), dtype=object),
    lambda: dsc.fp8_cast(np.ones((2, 128), np.float32), "int8"),
    lambda: dsc.MLACache(dsc.ModelConfig.tiny(), dtype="e5m2"),
    lambda: dsc.Model(dsc.ModelConfig.tiny(), moments="float16"),
    lambda: dsc.Model(dsc.ModelConfig.tiny(), seed=0).generate([[1]], cache_dtype=np.int32),
])
def test_bad_dtype_lists_the_accepted_names(call):
    with pytest.raises(TypeError, match=r"expected one of '.*got"):
        call()


# ----------------------------------------------------------------------------- requires_grad


class _GradTensor:
    """A DLPack array that requires grad, like a PyTorch parameter."""

    requires_grad = True

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __dlpack__(self, **kw):
        raise BufferError("Can't export tensors that require gradient, use tensor.detach()")

    def __dlpack_device__(self):
        return (1, 0)


def test_requires_grad_gets_our_error():
    x = _GradTensor(np.ones((2, 8), np.float32))
    with pytest.raises(TypeError, match=r"dsc_rms_norm_forward: x: .*requires grad.*x\.detach\(\)"):
        dsc.rms_norm(x, np.ones(8, np.float32))


def test_requires_grad_torch():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 8, requires_grad=True)
    w = torch.ones(8)
    with pytest.raises(TypeError, match=r"dsc_rms_norm_forward: x: .*x\.detach\(\)"):
        dsc.rms_norm(x, w)
    y = dsc.rms_norm(x.detach(), w)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 8)
