"""Which CUDA stream the functional ops run on (deepseek_c.streams): the thread's choice
(deepseek_c.cuda_stream), else PyTorch's current stream for torch inputs, else the legacy
default stream. The bookkeeping is tested on the CPU; the ordering itself on a GPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c import _C


def test_cuda_stream_nests_and_restores():
    assert _C.thread_stream_set(None) is None  # nothing chosen
    with dsc.cuda_stream(7) as a:
        assert a == 7
        with dsc.cuda_stream(None) as b:
            assert b == 0
            assert _C.thread_stream_set(0) == 0  # set again to the same: the previous is 0
        prev = _C.thread_stream_set(7)
        assert prev == 7
    assert _C.thread_stream_set(None) is None


def test_cuda_stream_restores_on_an_exception():
    with pytest.raises(KeyError):
        with dsc.cuda_stream(11):
            raise KeyError("x")
    assert _C.thread_stream_set(None) is None


def test_cuda_stream_is_per_thread():
    seen = []

    def other():
        seen.append(_C.thread_stream_set(None))

    with dsc.cuda_stream(123):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        mine = _C.thread_stream_set(123)
    assert seen == [None] and mine == 123


class _FakeTorchStream:
    cuda_stream = 4242


class _FakeCupyStream:
    ptr = 99


def test_cuda_stream_accepts_handles_and_stream_objects():
    for s, h in ((None, 0), (5, 5), (np.int64(6), 6), (_FakeTorchStream(), 4242), (_FakeCupyStream(), 99)):
        with dsc.cuda_stream(s) as got:
            assert got == h


@pytest.mark.parametrize("bad,exc,msg", [
    (True, TypeError, "got bool"),
    ("cuda", TypeError, "stream: expected None, an int handle"),
    (-1, ValueError, r"stream: expected a handle in \[0, 2\^64\)"),
    (2**64, ValueError, r"stream: expected a handle in \[0, 2\^64\)"),
])
def test_cuda_stream_rejects_bad_streams(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        with dsc.cuda_stream(bad):
            pass
    assert _C.thread_stream_set(None) is None


def test_cpu_ops_ignore_the_thread_stream(rng):
    x = rng.standard_normal((5, 16)).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    want = dsc.rms_norm(x, w)
    with dsc.cuda_stream(12345):  # a handle no CPU op may touch
        got = dsc.rms_norm(x, w)
        m = dsc.Model(dsc.ModelConfig.tiny(vocab_size=32), seed=0)
        m.forward(np.array([[1, 2, 3]], dtype=np.int32))
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- CUDA


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


@pytest.mark.cuda
def test_cuda_ops_follow_torch_current_stream():
    """An op on torch tensors inside `with torch.cuda.stream(s)` runs on s: a long torch
    kernel queued on s before it is finished first, and a torch op queued on s after it reads
    its finished output -- with no synchronization anywhere but the final one."""
    torch = _torch_cuda()
    s = torch.cuda.Stream()
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4096, 4096, device="cuda", generator=g)
    w = torch.randn(4096, device="cuda", generator=g)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        x = a
        for _ in range(8):  # keep s busy so a wrong stream would read x early
            x = torch.tanh(x @ a) * 0.5
        y = torch.full_like(x, float("nan"))
        dsc.rms_norm(x, w, out=y)
        z = y * 2.0
    s.synchronize()
    ref = x.double()
    ref = ref / torch.sqrt((ref * ref).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.testing.assert_close(z.double(), 2.0 * ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_stream_block_runs_ops_on_a_chosen_stream():
    torch = _torch_cuda()
    s = torch.cuda.Stream()
    x = dsc.tensor(np.random.default_rng(1).standard_normal((64, 32)), "cuda", "float32")
    w = dsc.tensor(np.random.default_rng(2).standard_normal(32), "cuda", "float32")
    want = dsc.to_numpy(dsc.rms_norm(x, w))
    with dsc.cuda_stream(s):
        y = dsc.rms_norm(x, w)
    s.synchronize()
    np.testing.assert_array_equal(dsc.to_numpy(y), want)


@pytest.mark.cuda
def test_cuda_model_on_its_stream_joins_torch_current_stream():
    """A model on its own stream, fed torch tensors produced on another: the result is the
    same bits as everything on the default stream."""
    torch = _torch_cuda()
    cfg = dsc.ModelConfig.tiny(vocab_size=32)
    a, b = dsc.Model(cfg, seed=0, device="cuda"), dsc.Model(cfg, seed=0, device="cuda")
    own = torch.cuda.Stream()
    b.set_stream(own)
    tok = torch.randint(0, cfg.vocab_size, (2, 8), dtype=torch.int32, device="cuda")
    la = a.forward(tok)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        t2 = tok.clone()
        lb = b.forward(t2)
        lb2 = lb * 1.0
    s.synchronize()
    torch.testing.assert_close(torch.as_tensor(lb2), torch.as_tensor(la), rtol=0, atol=0)
