"""deepseek_c: DeepSeek-V3's efficiency techniques as a C library with CUDA kernels.

Functional ops take any DLPack array (NumPy, PyTorch, CuPy, JAX) and return outputs of
the same kind on the same device, written zero-copy by the C core. Memory the C core
owns is exported as :class:`Tensor`. ``python -m deepseek_c info`` shows the build.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

# OpenMP threads that spin between parallel regions starve the interpreter and
# OpenBLAS's own threads on small machines (a 20x slowdown of training measured on 2
# cores); sleeping waiters cost little. Must be set before libgomp loads with _C.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS's pool: after a threaded GEMM its workers busy-wait 2^28 cycles by default
# (~0.1 s), taking the cores from our OpenMP threads and from other processes. 2^4 cycles
# lets them sleep at once (measured on 2 cores: training +18%, two concurrent generations
# 6.2k -> 14.8k-19.4k tokens/s each, a lone generation unchanged). Read when OpenBLAS loads.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")



def _preload_wheel_nccl() -> None:
    """A CUDA build links libnccl.so.2 from the CUDA toolkit. Whichever copy of that soname
    a process loads first serves every later user of it: if ours (often older) comes first,
    PyTorch's libtorch_cuda, imported afterwards, finds symbols missing (`undefined symbol:
    ncclCommResume`). Where the NCCL wheel PyTorch depends on (nvidia-nccl) is installed,
    load its copy first (NCCL 2 keeps its ABI backward compatible), so both use the newer one.
    Loading a library does not import torch."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        return
    for d in (spec.submodule_search_locations or []) if spec else []:
        lib = os.path.join(d, "lib", "libnccl.so.2")
        if os.path.exists(lib):
            import ctypes
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass  # unusable copy: ours is used, as without the wheel
            return


_preload_wheel_nccl()

try:
    from . import _C  # noqa: E402
except ImportError as _e:  # pragma: no cover - depends on how the package was reached
    _here = os.path.dirname(os.path.abspath(__file__))
    if not any(f.startswith("_C.") for f in os.listdir(_here)):
        raise ImportError(
            f"deepseek_c: {_here} is the source tree and has no built extension (_C); run "
            f"`pip install .` in {os.path.dirname(_here)} (it builds and also places the built files "
            f"there), or start Python outside the source tree to use an installed deepseek_c") from None
    raise
from ._C import CommError, Error, FormatError, Tensor
from ._arrays import as_int, numpy_dtype, parse_device, parse_dtype
from .ops import *  # noqa: F401,F403
from .checkpoint import load_safetensors, save_safetensors, safetensors_metadata
from . import data  # noqa: E402  (built-in tasks, tokenizers, batches)
from .ops import __all__ as _ops_all
from .fp8 import *  # noqa: F401,F403
from .fp8 import __all__ as _fp8_all
from .moe import *  # noqa: F401,F403
from .moe import __all__ as _moe_all
from .config import ModelConfig  # noqa: E402
from .mla import *  # noqa: F401,F403
from .mla import __all__ as _mla_all
from .model import Model, lr_schedule  # noqa: E402
from .streams import cuda_stream  # noqa: E402
from .generation import GenerateOutput, generate, stream  # noqa: E402
from .calc import ModelCalc, calc  # noqa: E402
from .rl_ops import *  # noqa: F401,F403,E402
from .rl_ops import __all__ as _rl_ops_all  # noqa: E402
from . import rewards, distill  # noqa: E402  (verifiable rewards; distillation)
from .rl import GRPO  # noqa: E402
from .dist import Comm  # noqa: E402

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_include() -> str:
    """Directory holding deepseek_c.h and dlpack/dlpack.h (for C/C++ consumers)."""
    return os.path.join(_HERE, "include")


def get_library() -> str:
    """Path of libdeepseek_c.so (link with -L<dir> -ldeepseek_c -Wl,-rpath,<dir>)."""
    return os.path.join(_HERE, "lib", "libdeepseek_c.so")


def cuda_device_count() -> int:
    """CUDA devices visible to this build (0 without CUDA or without a GPU)."""
    return _C.cuda_device_count()[0]


def has_cuda() -> bool:
    """True when the CUDA backend is compiled in and at least one device is visible."""
    return cuda_device_count() > 0


def info() -> dict[str, Any]:
    """Version, build (CUDA, archs, cuBLASLt, NCCL, MPI, BLAS, OpenMP) and devices seen."""
    d = dict(_C.build_info())
    n, reason = _C.cuda_device_count()
    devices = []
    for i in range(n):
        name, major, minor = _C.cuda_device_name(i)
        devices.append({"index": i, "name": name, "compute_capability": f"{major}.{minor}"})
    d["devices"] = devices
    d["cuda_unavailable_reason"] = reason if n == 0 else None
    return d


def empty(shape: Sequence[int], dtype: Any = "float32", device: str = "cpu") -> Tensor:
    """Uninitialized C-owned memory as a Tensor (zero-copy to NumPy/PyTorch via DLPack).
    dtype: a name ('float32', 'bf16', 'e4m3', ...) or a NumPy / ml_dtypes / PyTorch / JAX dtype."""
    try:
        dev = parse_device(device)
    except (TypeError, ValueError) as e:
        raise type(e)(f"empty: {e}") from None
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"empty: shape: expected a sequence of ints, got {type(shape).__name__}")
    dims = tuple(as_int(s, "empty", "shape", 0, (1 << 63) - 1) for s in shape)
    return _C.empty(dims, parse_dtype(dtype, "empty", "dtype"), dev[0], dev[1])


def tensor(data: Any, device: str = "cpu", dtype: Any = None) -> Tensor:
    """A C-owned copy of `data` (anything numpy.asarray accepts) on `device`; dtype as in empty()."""
    want = None if dtype is None else numpy_dtype(parse_dtype(dtype, "tensor", "dtype"))
    try:
        arr = np.asarray(data, dtype=want)
    except (TypeError, ValueError, OverflowError) as e:  # NumPy's message names neither the call nor data
        raise (TypeError if isinstance(e, TypeError) else ValueError)(
            f"tensor: data: cannot make an array{'' if want is None else f' of {want}'} of it: {e}") from None
    try:
        parse_dtype(arr.dtype, "tensor", "data")
    except TypeError:
        raise TypeError(f"tensor: data: expected numbers or booleans (a dtype of deepseek_c), got {type(data).__name__} "
                        f"of dtype {arr.dtype}") from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not (arr.flags.c_contiguous and arr.flags.aligned):  # (not np.ascontiguousarray: it makes 0-d 1-d)
        arr = arr.copy(order="C")
    t = empty(arr.shape, arr.dtype.name, device)
    _C.copy(t, arr)
    return t


from_numpy = tensor


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array with the values of x (a copy for device memory, a view for host Tensors)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Tensor):
        if x.device == "cpu":
            return x.numpy()
        host = empty(x.shape, x.dtype, "cpu")
        _C.copy(host, x)
        return host.numpy()
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        return x.detach().cpu().numpy() if str(x.dtype) != "torch.bfloat16" else \
            x.detach().cpu().view(__import__("torch").int16).numpy().view(numpy_dtype("bfloat16"))
    if root == "cupy":
        return x.get()
    return np.asarray(x)


def op_counters(device: str = "cpu", reset: bool = False) -> dict[str, int]:
    """Host waits (syncs), host<->device copies and allocations of the functional ops on
    `device` (their pooled contexts, summed) since the start or the last reset; reset=True
    zeroes them after reading. Model.counters() gives a model's own."""
    dev = parse_device(device)
    return dict(_C.op_counters(dev[0], dev[1], bool(reset)))


_CHECK_MODES = {"immediate": 0, "deferred": 1}


def set_check_mode(mode: str, device: str = "cpu") -> None:
    """When the functional ops on `device` report bad index values (embedding ids, targets,
    RoPE positions, teacher indices): "immediate" (the default) raises at the call (on a GPU
    one host wait per check); "deferred" checks on the device and only records the first
    failure (no wait): the op computes on with the bad index treated as documented, and
    check(device) raises it later. On a GPU a pending failure also surfaces at the next host
    wait of the ops' contexts (dsc.synchronize, a copy of a device array to the host), as
    asynchronous CUDA errors do: call check() before reading results. DSC_DEBUG_CHECKS=1
    forces immediate checks."""
    if mode not in _CHECK_MODES:
        raise ValueError(f"set_check_mode: mode: expected 'immediate' or 'deferred', got {mode!r}")
    dev = parse_device(device)
    _C.op_set_check_mode(dev[0], dev[1], _CHECK_MODES[mode])


def get_check_mode(device: str = "cpu") -> str:
    """The check mode set for the functional ops on `device` ("immediate" or "deferred")."""
    dev = parse_device(device)
    return "deferred" if _C.op_get_check_mode(dev[0], dev[1]) == 1 else "immediate"


def check(device: str = "cpu") -> None:
    """Raise the first failure the deferred checks of the ops on `device` recorded since the
    last check (ValueError, with the message the immediate check gives), and clear it. On a
    GPU one small copy and one host wait (none when no deferred check ran)."""
    dev = parse_device(device)
    _C.op_check(dev[0], dev[1])


__all__ = [
    "__version__", "op_counters", "set_check_mode", "get_check_mode", "check", "Error", "FormatError", "CommError", "Tensor", "get_include", "get_library", "cuda_device_count", "has_cuda",
    "info", "empty", "tensor", "from_numpy", "to_numpy", "load_safetensors", "save_safetensors",
    "safetensors_metadata", *_ops_all, *_fp8_all, *_moe_all, "ModelConfig", *_mla_all, "Model", "lr_schedule",
    "GenerateOutput", "generate", "stream", "cuda_stream", "ModelCalc", "calc", *_rl_ops_all,
    "GRPO", "rewards", "distill", "Comm",
]
