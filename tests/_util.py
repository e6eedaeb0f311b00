"""Helpers shared by the dense-op tests: random inputs, NaN-poisoned outputs, host copies,
CUDA copies (torch, else cupy, else deepseek_c.Tensor), tolerant comparisons and the
standard bad-array checks (wrong dtype, Python list, non-contiguous, negative strides)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import deepseek_c as dsc
from reference import dense as ref

BF16 = ref.BF16
DTYPES = ["float32", "bfloat16"]


def randn(rng, shape, dtype="float32", scale=1.0):
    """Standard normal values times scale, stored in dtype (never all zeros)."""
    return ref.cast(rng.standard_normal(shape) * scale, dtype)


def perturb_norms(model, rng) -> None:
    """Move a model's norms (1 + 0.2 N(0,1)) and correction biases (0.05 N(0,1)) off their init
    values, so that every one of them matters in a comparison."""
    for k, v in model.parameters().items():
        if v.ndim == 1:
            v[...] = 0.05 * rng.standard_normal(v.shape) if k.endswith("bias") else 1 + 0.2 * rng.standard_normal(v.shape)


def poisoned(shape, dtype="float32"):
    """An output buffer filled with NaN: a kernel that skips an element shows it."""
    return ref.cast(np.full(shape, np.nan), dtype)


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def host(x) -> np.ndarray:
    """A NumPy copy/view of any result (NumPy, torch, cupy, deepseek_c.Tensor)."""
    if isinstance(x, np.ndarray):
        return x
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(BF16)
        return t.numpy()
    if root == "cupy":
        return x.get()
    return np.asarray(dsc.to_numpy(x))


def assert_close(got, want, rtol, atol, msg=""):
    """|got - want| <= atol + rtol * |want| elementwise (NaN must match NaN)."""
    g = ref.f64(host(got))
    w = ref.f64(want)
    assert g.shape == w.shape, f"{msg}: shape {g.shape} != {w.shape}"
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=msg)


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed")


def to_torch(a, device="cpu"):
    torch = torch_or_skip()
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).to(device)
    return torch.from_numpy(a.copy()).to(device)


def to_cuda(a):
    """A CUDA copy of a NumPy array: torch if it sees CUDA, else cupy (not for bf16),
    else a deepseek_c.Tensor on cuda:0."""
    try:
        import torch

        if torch.cuda.is_available():
            return to_torch(a, "cuda")
    except ImportError:
        pass
    if a.dtype != BF16:
        try:
            import cupy

            return cupy.asarray(a)
        except ImportError:
            pass
    return dsc.tensor(a, device="cuda")


def noncontiguous(a):
    """Same values as a, but with a stride-2 last dim (a[..., ::2] of a wider buffer)."""
    assert a.shape[-1] > 1, "needs a last dim > 1 to be non-contiguous"
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    v = big[..., ::2]
    v[...] = a
    return v


def negative_strides(a):
    """Same values as a, with a negative stride on the first axis (a[::-1] of a copy)."""
    assert a.shape[0] > 1, "needs a first dim > 1"
    return np.ascontiguousarray(a[::-1])[::-1]


def _expect(failures, exc, pat, what, thunk):
    try:
        thunk()
    except exc as e:
        if not re.search(pat, str(e)):
            failures.append(f"{what}: {exc.__name__} message does not name the argument: {e}")
    except Exception as e:  # noqa: BLE001
        failures.append(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}")
    else:
        failures.append(f"{what}: expected {exc.__name__}, nothing was raised")


def check_bad_array(call, args, i, name, *, bad_dtype=np.float64, layout_checks=True):
    """call(*args) must raise, with args[i] replaced, and the message naming `name`:
    TypeError for bad_dtype and for a Python list; ValueError for a non-contiguous
    view and a negative-stride view. All four are tried; failures are reported together."""
    pat = rf"\b(?:{name})\b"  # name may be an alternation such as "c|out"
    a = args[i]
    failures = []

    def run(v):
        b = list(args)
        b[i] = v
        return lambda: call(*b)

    _expect(failures, TypeError, pat, f"{name} as {np.dtype(bad_dtype).name}", run(a.astype(bad_dtype)))
    _expect(failures, TypeError, pat, f"{name} as a list", run(a.tolist()))
    if layout_checks and a.ndim >= 1 and a.shape[-1] > 1:
        _expect(failures, ValueError, pat, f"{name} non-contiguous", run(noncontiguous(a)))
    if layout_checks and a.ndim >= 1 and a.shape[0] > 1:
        _expect(failures, ValueError, pat, f"{name} negative strides", run(negative_strides(a)))
    assert not failures, "\n".join(failures)
