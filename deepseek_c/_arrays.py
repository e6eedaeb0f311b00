"""Array plumbing: which library an array comes from, and allocating outputs there.

Outputs of an op are allocated in the namespace (NumPy, PyTorch, CuPy, JAX or
deepseek_c.Tensor) and on the device of the op's first array argument, then written
zero-copy by the C core. JAX arrays are immutable, so JAX outputs are computed into
C-owned memory and handed to JAX through DLPack without a copy.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import numpy as np

from . import _C

Array = Any  # anything with __dlpack__ (numpy.ndarray, torch.Tensor, cupy.ndarray, jax.Array, Tensor)

_KDL_CPU = 1
_KDL_CUDA = 2


def namespace(x: Any, fn: str, arg: str) -> str:
    """'numpy' | 'torch' | 'cupy' | 'jax' | 'dsc' for an array; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, _C.Tensor):
        return "dsc"
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        return "torch"
    if root == "cupy":
        return "cupy"
    if root in ("jax", "jaxlib"):
        return "jax"
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        return "dsc"
    raise TypeError(
        f"{fn}: {arg}: expected an array (NumPy, PyTorch, CuPy, JAX or deepseek_c.Tensor), "
        f"got {type(x).__name__}"
    )


def dtype_name(x: Any) -> str:
    """The dtype of an array as a string such as 'float32' or 'bfloat16'."""
    if isinstance(x, _C.Tensor):
        return x.dtype
    dt = x.dtype
    name = getattr(dt, "name", None)
    if isinstance(name, str):
        return name
    return str(dt).split(".")[-1]  # torch.float32 -> float32


def device_of(x: Any) -> tuple[int, int]:
    if isinstance(x, np.ndarray):
        return (_KDL_CPU, 0)
    t, i = x.__dlpack_device__()
    return (int(t), int(i))


# Every spelling of a dtype that functions taking a dtype accept, -> the canonical name.
_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32", "single": "float32",
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "float8_e4m3fn": "float8_e4m3fn", "e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn", "fp8": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn", "float8": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2", "e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2",
    "int32": "int32", "int64": "int64", "int8": "int8", "uint8": "uint8", "bool": "bool",
}


def parse_dtype(dtype: Any, fn: str, arg: str, allowed: Sequence[str] | None = None) -> str:
    """The canonical name ('float32', 'bfloat16', 'float8_e4m3fn', ...) of a dtype given as
    a string ('float32', 'bf16', 'e4m3', 'torch.bfloat16', ...), a NumPy dtype or scalar
    type (np.float32, np.dtype('float32')), an ml_dtypes type (ml_dtypes.bfloat16), or a
    PyTorch / JAX dtype. `allowed` limits the result; the error lists what is accepted."""
    key = None
    if isinstance(dtype, str):
        key = dtype
    elif dtype is not None and not isinstance(dtype, (bool, int, float)):
        mod = type(dtype).__module__.split(".")[0]
        if mod == "torch":  # torch.dtype: str() is "torch.bfloat16"
            key = str(dtype)
        else:
            try:
                key = np.dtype(dtype).name  # NumPy, ml_dtypes, JAX scalar types
            except TypeError:
                key = None
    name = None
    if key is not None:
        k = key.strip().lower()
        for prefix in ("torch.", "numpy.", "np.", "jnp.", "jax.numpy.", "ml_dtypes."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        name = _DTYPE_ALIASES.get(k)
    if name is None or (allowed is not None and name not in allowed):
        names = list(allowed) if allowed is not None else sorted(set(_DTYPE_ALIASES.values()))
        short = sorted(a for a, n in _DTYPE_ALIASES.items() if n in names and a != n)
        raise TypeError(f"{fn}: {arg}: expected one of {', '.join(repr(n) for n in names)} (also spelled "
                         f"{', '.join(repr(a) for a in short)}, or given as a NumPy, ml_dtypes, PyTorch or "
                         f"JAX dtype), got {dtype!r}")
    return name


_FLT_MAX = float(np.finfo(np.float32).max)


def as_float(v: Any, fn: str, arg: str, *, finite: bool = False, f32: bool = True) -> float:
    """A scalar parameter as a Python float: TypeError naming fn and arg for what is not a
    number (None, str, bool, a list), ValueError for a value beyond float32 (the C layer takes
    float32; f32=False skips this) or, with finite=True, for NaN and +-inf."""
    if isinstance(v, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{fn}: {arg}: expected a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError(f"{fn}: {arg}: expected a number within float range, got {v!r}") from None
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {arg}: expected a number, got {type(v).__name__}") from None
    if finite and not math.isfinite(f):
        raise ValueError(f"{fn}: {arg}: expected a finite number, got {f}")
    if f32 and math.isfinite(f) and abs(f) > _FLT_MAX:
        raise ValueError(f"{fn}: {arg}: expected a number within float32 range (|v| <= {_FLT_MAX:.6g}), got {f}")
    return f


def as_int(v: Any, fn: str, arg: str, lo: int = -(1 << 31), hi: int = (1 << 31) - 1) -> int:
    """An integer parameter as a Python int in [lo, hi] (default: int32): TypeError naming fn
    and arg for what is not an integer (None, float, str, bool), ValueError outside [lo, hi]."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: {arg}: expected an int, got {type(v).__name__}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{fn}: {arg}: expected an int, got {type(v).__name__}") from None
    if not lo <= i <= hi:
        raise ValueError(f"{fn}: {arg}: expected an int in [{lo}, {hi}], got {i}")
    return i


INT64 = (-(1 << 63), (1 << 63) - 1)


def numpy_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def empty_like_ns(ref: Any, shape: Sequence[int], dtype: str, fn: str, arg: str) -> Array:
    """An uninitialized array of `shape`/`dtype` in ref's namespace and on ref's device."""
    ns = namespace(ref, fn, arg)
    shape = tuple(int(s) for s in shape)
    if ns == "numpy":
        try:
            return np.empty(shape, dtype=numpy_dtype(dtype))
        except MemoryError as e:  # NumPy's messages name neither the call nor the output
            raise MemoryError(f"{fn}: {arg}: cannot allocate the output of shape {shape} and dtype {dtype}: "
                              f"{e}") from None
        except ValueError as e:  # e.g. "array is too big"
            raise ValueError(f"{fn}: {arg}: cannot allocate the output of shape {shape} and dtype {dtype}: "
                             f"{e}") from None
    if ns == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=ref.device)
    if ns == "cupy":
        import cupy

        with cupy.cuda.Device(ref.device.id):
            return cupy.empty(shape, dtype=numpy_dtype(dtype))
    dev_type, dev_id = device_of(ref)
    return _C.empty(shape, dtype, dev_type, dev_id)


def finish(ref: Any, out: Array) -> Array:
    """Hand a freshly computed output to the caller's namespace (only JAX needs work)."""
    if isinstance(out, _C.Tensor) and namespace(ref, "", "") == "jax":
        import jax.dlpack

        return jax.dlpack.from_dlpack(out)
    return out


def parse_device(device: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(device, tuple):  # (DLPack device type, index)
        if len(device) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in device):
            raise TypeError(f"device: expected 'cpu', 'cuda', 'cuda:N' or (device_type, index) ints, got {device!r}")
        return (int(device[0]), int(device[1]))
    if not isinstance(device, str):
        raise TypeError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {type(device).__name__}")
    if device == "cpu":
        return (_KDL_CPU, 0)
    if device == "cuda":
        return (_KDL_CUDA, 0)
    if device.startswith("cuda:") and device[5:].isdigit():
        return (_KDL_CUDA, int(device[5:]))
    raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
