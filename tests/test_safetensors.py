"""safetensors reader/writer in C: round trips for every dtype, agreement with the
reference `safetensors` package where installed, corrupt and truncated files as clear
errors (never a crash, checked on thousands of mutated files), and atomic writes."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

import deepseek_c as dsc


def _sample(rng):
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "model.layers.0.self_attn.kv_b_proj.weight": rng.standard_normal((4, 3)).astype(ml_dtypes.bfloat16),
        "model.layers.0.mlp.experts.0.up_proj.weight": rng.uniform(-400, 400, (3, 130)).astype(ml_dtypes.float8_e4m3fn),
        "model.layers.0.mlp.experts.0.up_proj.weight_scale_inv": rng.uniform(0.1, 1, (1, 2)).astype(np.float32),
        "e5m2": rng.uniform(-10, 10, (2, 2)).astype(ml_dtypes.float8_e5m2),
        "ids": rng.integers(-5, 5, (6,)).astype(np.int64),
        "i32": rng.integers(-5, 5, (2, 3)).astype(np.int32),
        "scalar": np.array(3.5, np.float64),
        "empty": np.zeros((0, 4), np.float32),
        "mask": rng.integers(0, 2, (5,)).astype(np.bool_),
        "u8": rng.integers(0, 255, (9,)).astype(np.uint8),
        "f16": rng.standard_normal(3).astype(np.float16),
    }


def test_round_trip_every_dtype(tmp_path, rng):
    data = _sample(rng)
    p = tmp_path / "m.safetensors"
    dsc.save_safetensors(p, data, metadata={"format": "pt", "note": 'quote " and \\ backslash'})
    back = dsc.load_safetensors(p)
    assert list(back) == list(data)
    for k, v in data.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k].reshape(-1).view(np.uint8), np.ascontiguousarray(v).reshape(-1).view(np.uint8))
    assert dsc.safetensors_metadata(p) == {"format": "pt", "note": 'quote " and \\ backslash'}
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]


def test_agrees_with_reference_package(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy")
    # the reference's NumPy API knows only NumPy's own dtypes
    standard = (np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_)
    data = {k: v for k, v in _sample(rng).items() if v.dtype in standard}
    p1, p2 = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    dsc.save_safetensors(p1, data)
    theirs = data
    st.save_file(theirs, str(p2))
    read_by_them = st.load_file(str(p1))
    for k, v in read_by_them.items():
        np.testing.assert_array_equal(np.asarray(v).reshape(-1).view(np.uint8), np.ascontiguousarray(data[k]).reshape(-1).view(np.uint8))
    read_by_us = dsc.load_safetensors(p2)
    for k, v in theirs.items():
        np.testing.assert_array_equal(read_by_us[k].reshape(-1).view(np.uint8), np.ascontiguousarray(v).reshape(-1).view(np.uint8))


def _write_raw(path, header: dict, data: bytes, pad: bool = True):
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.mark.parametrize("header, data, match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, b"\0" * 12, "need 8"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
    ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "outside"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "integer"),
])
def test_corrupt_headers_are_clear_errors(tmp_path, header, data, match):
    p = tmp_path / "bad.safetensors"
    _write_raw(p, header, data)
    with pytest.raises(dsc.Error, match=match):
        dsc.load_safetensors(p)


def test_truncated_and_garbage_files(tmp_path, rng):
    p = tmp_path / "m.safetensors"
    dsc.save_safetensors(p, _sample(rng))
    raw = p.read_bytes()
    q = tmp_path / "cut.safetensors"
    for cut in (0, 3, 8, 20, len(raw) // 2, len(raw) - 1):
        q.write_bytes(raw[:cut])
        with pytest.raises(dsc.Error, match="cut.safetensors"):
            dsc.load_safetensors(q)
    q.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(dsc.Error, match="header length"):
        dsc.load_safetensors(q)
    with pytest.raises(dsc.Error, match="cannot open"):
        dsc.load_safetensors(tmp_path / "missing.safetensors")


def test_mutated_files_never_crash(tmp_path, rng):
    p = tmp_path / "m.safetensors"
    dsc.save_safetensors(p, _sample(rng), metadata={"k": "v"})
    raw = bytearray(p.read_bytes())
    hlen = struct.unpack("<Q", raw[:8])[0]
    q = tmp_path / "mut.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(2000):
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, 8 + hlen))
            b[pos] = int(rng.integers(0, 256))
        q.write_bytes(bytes(b))
        try:
            dsc.load_safetensors(q)
            outcomes["ok"] += 1
        except dsc.Error:
            outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_write_is_atomic(tmp_path, rng):
    p = tmp_path / "m.safetensors"
    dsc.save_safetensors(p, {"a": np.ones(3, np.float32)})
    before = p.read_bytes()
    with pytest.raises(TypeError):
        dsc.save_safetensors(p, {"a": np.ones(3, np.complex64)})  # rejected before writing
    assert p.read_bytes() == before
    d = tmp_path / "a_directory"
    d.mkdir()
    with pytest.raises(dsc.Error, match="previous file"):
        dsc.save_safetensors(d, {"a": np.ones(3, np.float32)})  # rename over a directory fails
    assert d.is_dir() and not os.listdir(d)
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="tensors"):
        dsc.save_safetensors(tmp_path / "x.safetensors", [np.ones(2)])
    with pytest.raises(ValueError, match="C-contiguous|contiguous"):
        from deepseek_c import _C
        _C.safetensors_save(str(tmp_path / "x.safetensors"), ["a"], [np.ones((4, 4), np.float32)[:, ::2]], [])
