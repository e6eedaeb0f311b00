"""CUDA streams: which stream deepseek_c's functional ops run on.

An op runs on one stream, chosen at its first CUDA array:

1. the stream the calling thread chose with :func:`cuda_stream`, else
2. for a PyTorch tensor, ``torch.cuda.current_stream()`` of its device (ops follow the
   caller's stream as PyTorch's own ops do, so no synchronization is needed around them), else
3. the legacy default stream.

CUDA producers (PyTorch, CuPy, JAX) are asked through the DLPack stream handshake to have
their data ready on that stream. A model keeps its own stream (:meth:`Model.set_stream`);
calls on it are ordered after the call's stream and the call's stream after them, by
events (no host wait). CPU arrays ignore all of this.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from . import _C

__all__ = ["cuda_stream", "stream_handle"]


def stream_handle(stream: Any) -> int:
    """A cudaStream_t as an int from None (0, the legacy default stream), an int, a
    torch.cuda.Stream (.cuda_stream) or a CuPy stream (.ptr)."""
    if stream is None:
        return 0
    if isinstance(stream, bool):
        raise TypeError("stream: expected None, an int handle or a CUDA stream object, got bool")
    if isinstance(stream, (int, np.integer)):
        h = int(stream)
    elif hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        h = int(stream.cuda_stream)
    elif hasattr(stream, "ptr"):  # cupy.cuda.Stream
        h = int(stream.ptr)
    else:
        raise TypeError(f"stream: expected None, an int handle, a torch.cuda.Stream or a CuPy stream, "
                        f"got {type(stream).__name__}")
    if not 0 <= h < 2**64:
        raise ValueError(f"stream: expected a handle in [0, 2^64), got {h}")
    return h


@contextlib.contextmanager
def cuda_stream(stream: Any) -> Iterator[int]:
    """Run this thread's deepseek_c ops on `stream` inside the block (an int handle, a
    torch.cuda.Stream, a CuPy stream, or None for the legacy default stream); yields the
    handle. Blocks nest; the previous choice comes back on exit, also on an exception.
    Other threads are unaffected. The results are ready on `stream`: work on another stream
    that reads them must wait for it (e.g. ``torch.cuda.current_stream().wait_stream(s)``)."""
    h = stream_handle(stream)
    prev = _C.thread_stream_set(h)
    try:
        yield h
    finally:
        _C.thread_stream_set(prev)
