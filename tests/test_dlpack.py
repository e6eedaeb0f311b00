"""DLPack plumbing: zero-copy import and export, ownership, reference counts, leaks.

Checks that outputs are written in place into the caller's arrays (np.shares_memory,
data pointers), that deepseek_c.Tensor is consumed by np.from_dlpack / torch.from_dlpack
without a copy and keeps its memory alive, that capsules follow the DLPack protocol,
and that 10,000 round trips leave reference counts and memory where they were.
"""

import gc
import resource
import sys

import ml_dtypes
import numpy as np
import pytest

import deepseek_c as dsc


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def test_out_is_written_in_place(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    out = np.full_like(x, np.nan)
    y = dsc.rms_norm(x, w, out=out)
    assert y is out
    assert not np.isnan(out).any()


def test_output_namespace_and_fresh_memory(rng):
    x = rng.standard_normal((2, 5)).astype(np.float32)
    w = np.ones(5, np.float32)
    y = dsc.rms_norm(x, w)
    assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == x.shape
    assert not np.shares_memory(x, y)


def test_inputs_are_read_zero_copy(rng):
    # In-place RMSNorm (out=x) proves the C core reads and writes the caller's buffer.
    x = rng.standard_normal((4, 16)).astype(np.float32)
    ptr = x.__array_interface__["data"][0]
    ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    dsc.rms_norm(x, np.ones(16, np.float32), out=x)
    assert x.__array_interface__["data"][0] == ptr
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)


def test_tensor_export_to_numpy_is_zero_copy():
    t = dsc.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert t.shape == (3, 4) and t.dtype == "float32" and t.device == "cpu" and t.nbytes == 48
    a = np.from_dlpack(t)
    b = t.numpy()
    assert a.__array_interface__["data"][0] == t.data_ptr
    assert b.__array_interface__["data"][0] == t.data_ptr
    assert np.shares_memory(a, b)
    a[1, 2] = -7.0
    assert b[1, 2] == -7.0
    np.testing.assert_array_equal(np.asarray(t), b)


def test_tensor_outlives_its_python_name():
    t = dsc.tensor(np.arange(6, dtype=np.float32))
    a = np.from_dlpack(t)
    del t
    gc.collect()
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32))


def test_bfloat16_tensor_round_trip():
    x = np.linspace(-3, 3, 10).astype(ml_dtypes.bfloat16)
    t = dsc.tensor(x)
    assert t.dtype == "bfloat16"
    np.testing.assert_array_equal(t.numpy().view(np.uint16), x.view(np.uint16))


def test_dlpack_protocol_details():
    t = dsc.tensor(np.ones((2, 3), np.float32))
    assert t.__dlpack_device__() == (1, 0)
    cap_v = t.__dlpack__(max_version=(1, 1))
    assert "dltensor_versioned" in repr(cap_v)
    cap_l = t.__dlpack__()
    assert "dltensor" in repr(cap_l) and "versioned" not in repr(cap_l)
    del cap_v, cap_l  # unconsumed capsules release their reference
    with pytest.raises(BufferError):
        t.__dlpack__(stream=1)  # CPU tensors take no stream
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(2, 0))  # no CUDA copy from a CPU tensor
    c = np.from_dlpack(t, copy=True)
    assert not np.shares_memory(c, t.numpy())
    np.testing.assert_array_equal(c, np.ones((2, 3)))


def test_tensor_as_op_input_and_output(rng):
    x = dsc.tensor(rng.standard_normal((3, 8)).astype(np.float32))
    w = dsc.tensor(np.ones(8, np.float32))
    y = dsc.rms_norm(x, w)
    assert isinstance(y, dsc.Tensor)
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(y.numpy(), xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6), rtol=1e-5)


def test_empty_validates_arguments():
    with pytest.raises(TypeError, match="dtype"):
        dsc.empty((2,), "complex64")
    with pytest.raises(ValueError, match="shape"):
        dsc.empty((-1, 2))
    with pytest.raises(ValueError, match="device"):
        dsc.empty((2,), device="tpu")


@pytest.mark.skipif(dsc.has_cuda(), reason="checks the error of a build or machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises((dsc.Error, ValueError), match="CUDA|cuda"):
        dsc.empty((2,), device="cuda")


def test_refcounts_and_memory_stay_flat_over_10000_round_trips(rng):
    x = rng.standard_normal((4, 32)).astype(np.float32)
    w = np.ones(32, np.float32)
    t = dsc.tensor(x)
    out = np.empty_like(x)

    def round_trips(n: int) -> None:
        for _ in range(n):
            dsc.rms_norm(x, w, out=out)  # NumPy import path
            a = np.from_dlpack(t)  # export path
            del a
            dsc.rms_norm(t, w)  # dsc.Tensor import + owned output allocation

    round_trips(500)  # warm up allocator pools
    gc.collect()
    counts = (sys.getrefcount(x), sys.getrefcount(w), sys.getrefcount(t), sys.getrefcount(out))
    rss0 = _rss_kib()
    round_trips(10_000)
    gc.collect()
    assert (sys.getrefcount(x), sys.getrefcount(w), sys.getrefcount(t), sys.getrefcount(out)) == counts
    growth = _rss_kib() - rss0
    assert growth < 2048, f"resident memory grew by {growth} KiB over 10,000 round trips"


def test_torch_interop():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 16)
    w = torch.ones(16)
    y = dsc.rms_norm(x, w)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    ref = x.double() / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    out = torch.full_like(x, float("nan"))
    dsc.rms_norm(x, w, out=out)
    assert not torch.isnan(out).any()
    t = dsc.tensor(np.arange(4, dtype=np.float32))
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == t.data_ptr
    xb = x.to(torch.bfloat16)
    yb = dsc.rms_norm(xb, w.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16


def test_jax_interop():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32))
    y = dsc.rms_norm(x, jnp.ones(8, jnp.float32))
    assert isinstance(y, jax.Array) and y.dtype == jnp.float32 and y.shape == (3, 8)
    xn = np.asarray(x).astype(np.float64)
    np.testing.assert_allclose(np.asarray(y), xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6),
                               rtol=1e-5, atol=1e-6)
    yb = dsc.rms_norm(x.astype(jnp.bfloat16), jnp.ones(8, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    t = dsc.tensor(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(jax.dlpack.from_dlpack(t)), np.arange(4))
