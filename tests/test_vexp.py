"""The vectorized exp / sigmoid of the CPU backend (csrc/cpu/vmath.h), used by softmax
(attention, cross-entropy), routing and SwiGLU:
  1. a C harness (tests/c/vmath_sweep.c) sweeps every 97th float32 bit pattern (44M values,
     both signs, subnormals, the overflow and underflow edges, inf, NaN) against float64
     libm: exp within 1.25 ulp where exp(x) is a normal float (measured: 1.18 ulp, relative
     9.9e-8, over all 2^32 inputs), under 1 unit of 2^-149 where it is subnormal, inf above
     ln(FLT_MAX), 0 below, NaN kept; sigmoid within 2.5 ulp (measured 2.40);
  2. the AVX2 version gives the portable version's bits on every swept input;
  3. a sample of the sweep against NumPy float64 (an independent reference);
  4. through the ops: SwiGLU's SiLU and cross-entropy's softmax at the extremes."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import deepseek_c as dsc
from _util import poisoned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler on PATH")
    d = tmp_path_factory.mktemp("vexp")
    exe, sample = str(d / "vmath_sweep"), str(d / "sample.bin")
    subprocess.run([CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                    os.path.join(ROOT, "tests", "c", "vmath_sweep.c"), "-lm", "-o", exe],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([exe, "97", sample, "64"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = dict(kv.split("=") for kv in r.stdout.split())
    return {k: float(v) for k, v in figures.items()}, np.fromfile(sample, dtype=np.float32).reshape(-1, 3)


def test_exp_accuracy(sweep):
    f, _ = sweep
    assert f["n"] > 4e7
    assert f["exp_max_ulp"] <= 1.25, f
    assert f["exp_max_sub"] < 1.0, f
    assert f["exp_bad_special"] == 0, f


def test_sigmoid_accuracy(sweep):
    f, _ = sweep
    assert f["sig_max_ulp"] <= 2.5, f
    assert f["sig_max_sub"] < 1.0, f
    assert f["sig_bad_special"] == 0, f


def test_avx2_bits_equal_portable(sweep):
    f, _ = sweep
    if not f["avx2"]:
        pytest.skip("this CPU has no AVX2")
    assert f["avx2_diff"] == 0, f


def test_sample_against_numpy(sweep):
    _, s = sweep
    x, y, sg = (s[:, i].astype(np.float64) for i in range(3))
    assert len(x) > 500_000
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x)
        e = np.exp(-np.abs(x))
        sref = np.where(x >= 0, 1.0, e) / (1.0 + e)
    tiny = np.finfo(np.float32).tiny
    fmax = float(np.finfo(np.float32).max)
    normal = (ref >= tiny) & (ref <= fmax)
    sub, sn = ref < tiny, sref >= tiny
    assert np.all(np.abs(y[normal] - ref[normal]) <= 1e-7 * ref[normal])
    assert np.all(np.abs(y[sub] - ref[sub]) < 2.0 ** -149)
    assert np.all(np.isinf(y[ref > fmax]))
    assert np.all(np.abs(sg[sn] - sref[sn]) <= 2e-7 * sref[sn])
    assert np.all(np.abs(sg[~sn] - sref[~sn]) < 2.0 ** -149)


def test_silu_through_swiglu_extremes(rng):
    """SwiGLU with up = 1 is SiLU: large, tiny and saturating gates, every lane position."""
    g = np.concatenate([rng.standard_normal(61) * 30, [-1e4, -120.0, -88.0, -20.0, -1e-30, 0.0, 1e-30,
                                                       20.0, 88.0, 120.0, 1e4]]).astype(np.float32)
    u = np.ones_like(g)
    out = dsc.swiglu(g, u, out=poisoned(g.shape))
    gd = g.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = gd / (1.0 + np.exp(-gd))
    np.testing.assert_allclose(out, ref, rtol=4e-7, atol=1e-37)


def test_cross_entropy_softmax_extremes(rng):
    """Logits spanning +-100 (exp underflows for most classes): loss vs float64 log-softmax."""
    x = (rng.standard_normal((7, 37)) * 40).astype(np.float32)
    x[0, :] = 0.0
    x[1, 5] = 100.0
    t = rng.integers(0, 37, 7).astype(np.int32)
    loss, dx = dsc.cross_entropy(x, t)
    xd = x.astype(np.float64)
    m = xd.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(xd - m).sum(1))
    ref = float(np.mean(lse - xd[np.arange(7), t]))
    assert abs(float(loss) - ref) <= 1e-5 * max(1.0, abs(ref))
    p = np.exp(xd - lse[:, None])
    p[np.arange(7), t] -= 1.0
    np.testing.assert_allclose(dx, p / 7, rtol=1e-5, atol=1e-8)
