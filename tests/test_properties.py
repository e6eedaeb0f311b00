"""Property tests (Hypothesis) over shapes and dtypes of every public op that takes
arrays: never a crash, either a correct result (against the NumPy float64 references of
tests/reference/) or a documented exception (ValueError, TypeError, MemoryError,
deepseek_c.Error) whose message names the function and an argument.

The properties, their strategies and the oracle live in tests/_properties.py. Each op's
property runs in a fresh interpreter (`python tests/_properties.py OP N`), so a segfault or
an abort fails that op's test instead of ending the session. Examples are derandomized:
the same examples on every run. More, locally:

    DSC_PROPERTY_EXAMPLES=2000 pytest tests/test_properties.py          # per op
    DSC_PROPERTY_EXAMPLES=2000 DSC_PROPERTY_SEED=7 pytest tests/test_properties.py   # another stream
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis (pip install '.[test]')")

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_properties.py")

import _properties  # noqa: E402  (tests/ is on sys.path, see conftest.py)

OPS = dict(_properties.OPS)


def run_property(name: str, examples: int, seed: str | None = None, env: dict | None = None,
                 timeout: float | None = None) -> tuple[int, str]:
    """Run one op's property in its own interpreter: (return code, output)."""
    cmd = [sys.executable, DRIVER, name, str(examples)] + (["--seed", str(seed)] if seed else [])
    e = dict(os.environ, **(env or {}))
    e.setdefault("OMP_NUM_THREADS", "2")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout or 120 + 3 * examples)
    except subprocess.TimeoutExpired as t:
        return -999, f"timed out after {t.timeout:.0f} s (a hang?)\n{(t.stdout or '')[-4000:]}"
    return r.returncode, (r.stderr + r.stdout)  # (the statistics line last)


def verdict(name: str, rc: int, out: str) -> str | None:
    """None when the property passed, else what went wrong."""
    if rc == 0:
        return None
    if rc == -999:
        return f"{name}: {out}"
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return f"{name}: the interpreter crashed ({sig}) -- rerun `python tests/_properties.py {name} N` " \
               f"to see the last example\n{out[-6000:]}"
    return f"{name}: a property failed\n{out[-8000:]}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_property(name):
    n = int(os.environ.get("DSC_PROPERTY_EXAMPLES", OPS[name].examples))
    rc, out = run_property(name, n, os.environ.get("DSC_PROPERTY_SEED"))
    problem = verdict(name, rc, out)
    assert problem is None, problem
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["examples"] >= 1, stats


# ----------------------------------------------------------------------------- the oracle can fail


@pytest.mark.parametrize("kind,expect", [
    ("wrong", "elements differ"),
    ("exception", "undocumented exception builtins.IndexError"),
    ("unclear", "does not name the function"),
    ("modifies", "input x was modified"),
    ("crash", "crashed (SIGSEGV)"),
])
def test_oracle_catches(kind, expect):
    """Stand-ins for rms_norm that answer wrong, raise an undocumented exception, raise
    without naming the function, write into an input or segfault: each fails its property
    with a message that says so (and a crash does not take this process down)."""
    rc, out = run_property(f"selftest_{kind}", 30, env={"DSC_PROPERTY_SELFTEST": "1", "DSC_PROPERTY_SHRINK": "0"})
    problem = verdict(f"selftest_{kind}", rc, out)
    assert problem is not None, f"the broken op passed:\n{out[-2000:]}"
    assert expect in problem, problem[-3000:]


def test_every_public_array_op_has_a_property():
    """The ops of deepseek_c.__all__ that take arrays all have a property (or are
    covered by one: the forward of a backward, the layer pieces)."""
    import deepseek_c as dsc

    covered = set(OPS) | {"fp8_linear",  # fp8_linear_forward(...)[0]
                          "MLACache", "mla_prefill", "mla_decode",  # the MLACache and mla_cache properties
                          "from_numpy", "to_numpy",  # = tensor; checked by the tensor and empty properties
                          }
    not_ops = {"Error", "FormatError", "Tensor", "get_include", "get_library", "cuda_device_count", "has_cuda",
               "info", "load_safetensors", "save_safetensors", "safetensors_metadata", "ModelConfig", "Model",
               "lr_schedule", "GenerateOutput", "generate", "stream", "ModelCalc", "calc", "__version__", "op_counters",
               "set_check_mode", "get_check_mode", "check",  # no arrays: tests/test_deferred_checks.py
               "cuda_stream",  # no arrays: tests/test_streams.py
               "rope_inv_freq", "rope_softmax_scale", "rope_cos_sin_scale", "moe_load_stats", "moe_forward",
               "moe_backward", "mla_params_tuple", "MLA_WEIGHT_NAMES", "FP8_E4M3_MAX", "FP8_E5M2_MAX",
               "RMSNormCtx", "LinearCtx", "SwiGLUCtx", "EmbeddingCtx", "FP8LinearCtx", "MoERoute", "SeqAuxCtx",
               "MoEPermute", "MoEConfig", "MoECtx", "MoELayerCtx", "MLACtx",
               "Comm", "CommError", "GRPO", "GRPO_STATS", "distill", "rewards"}  # classes, a tuple, modules
    missing = sorted(n for n in dsc.__all__ if n not in covered and n not in not_ops)
    assert not missing, f"public ops without a property: {missing}"
