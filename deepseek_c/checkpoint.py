"""safetensors checkpoints, read and written by the C core (bounds-checked, atomic writes).

    tensors = dsc.load_safetensors("model.safetensors")          # {name: ndarray}, zero-copy
    meta = dsc.safetensors_metadata("model.safetensors")         # {"format": "pt", ...}
    dsc.save_safetensors("out.safetensors", tensors, metadata={"format": "pt"})

bfloat16 and float8 tensors come back as ml_dtypes arrays. The reader is as strict as the
reference `safetensors` package: the header is strict JSON (valid UTF-8, no trailing
garbage, no leading zeros, bounded nesting), every tensor's data_offsets match its dtype
and shape, and the tensors tile the data block exactly (no gap, overlap or trailing
bytes). It also refuses, on purpose: a name given twice in any JSON object, a NUL
character in a tensor name or metadata string (the C API's names are C strings), a dtype
or shape this library cannot hold, and two odd spellings no writer produces (an entry as
an array, a dtype as {"F32": null}). A corrupt, truncated or refused
file raises deepseek_c.Error naming the file, the tensor and the byte offset; a missing
file raises deepseek_c.Error too (status DSC_ERR_IO). Saving a name or metadata string
with a NUL character, or one that is not valid UTF-8, raises ValueError.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from . import _C

__all__ = ["load_safetensors", "save_safetensors", "safetensors_metadata"]


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as read-only-by-convention NumPy views of one buffer."""
    f = _C.safetensors_open(os.fspath(path))
    entries, _ = _C.safetensors_entries(f)
    return {name: _C.safetensors_tensor(f, i).numpy() for i, (name, _dt, _shape) in enumerate(entries)}


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's __metadata__ string map."""
    f = _C.safetensors_open(os.fspath(path))
    return dict(_C.safetensors_entries(f)[1])


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write host arrays (NumPy, dsc.Tensor, or anything to_numpy accepts) atomically."""
    from . import to_numpy

    if not isinstance(tensors, Mapping):
        raise TypeError(f"dsc_safetensors_save: tensors: expected a mapping name -> array, got {type(tensors).__name__}")
    names = list(tensors)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"dsc_safetensors_save: tensors: expected str names, got {type(n).__name__}")
    arrays = [np.require(to_numpy(tensors[n]), requirements="C") for n in names]  # keeps 0-d as 0-d
    meta = [(str(k), str(v)) for k, v in (metadata or {}).items()]
    _C.safetensors_save(os.fspath(path), names, arrays, meta)
