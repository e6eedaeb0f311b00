"""safetensors reader/writer in C: round trips for every dtype, agreement with the
reference `safetensors` package (interop both ways, and the same verdict on a table of
malformed headers), corrupt and truncated files as clear errors, a mutation harness
(tests/_st_mutate.py) that never sees changed weights accepted, names with NUL refused on
write and read, a 160k-tensor header, and atomic writes."""

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
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "end is before the begin"),
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


def test_mutated_files_agree_with_reference(tmp_path, rng):
    """Byte flips, length and size changes and targeted header edits (aliased, overlapping
    and gapped offsets, trailing bytes, duplicate keys, trailing garbage, malformed values
    under unknown keys, leading zeros, NUL and surrogate names, deep nesting, ...): every
    mutated file loads exactly as the reference reads it or is refused with
    deepseek_c.Error naming the file; never accepted with other tensors (see _st_mutate)."""
    pytest.importorskip("safetensors")
    import _st_mutate

    counts, bad = _st_mutate.run(600, seed=int(rng.integers(0, 2**31)), path=str(tmp_path / "mut.safetensors"))
    assert not bad, f"{counts}: first bad outcomes {[b[:4] for b in bad[:5]]}"
    assert counts["reject"] > 300 and counts["same"] > 10, counts


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


# ---------------------------------------------------------------- strictness, rule by rule

_T = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
_T2 = '{"dtype":"F32","shape":[1],"data_offsets":[4,8]}'
_Z = "\\u0000"


def _nest(depth):
    """A header whose unknown key holds arrays nested so that the header has `depth` levels."""
    k = depth - 2  # the root object and the entry are two levels
    return '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":%s}}' % ("[" * k + "]" * k)


# (id, header (str or bytes), data block, pad with spaces?, expected: "ok" or a regex of our
#  message, deviation: True where the reference decides otherwise on purpose)
_RULES = [
    ("valid", '{"a":%s}' % _T, b"\0" * 4, True, "ok", False),
    ("order-free", '{"b":%s,"a":%s}' % (_T2, _T), b"\0" * 8, True, "ok", False),
    ("empty", "{}", b"", True, "ok", False),
    ("metadata-null", '{"__metadata__":null,"a":%s}' % _T, b"\0" * 4, True, "ok", False),
    ("empty-name", '{"":%s}' % _T, b"\0" * 4, True, "ok", False),
    ("zero-size-at-end", '{"a":%s,"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}' % _T, b"\0" * 4, True, "ok", False),
    ("unknown-key", '{"a":{"dtype":"F32","zz":[1,{"q":null},"x"],"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, True, "ok", False),
    ("whitespace-padding", '{"a":%s} \t\r\n' % _T, b"\0" * 4, False, "ok", False),
    ("unpadded", '{"a":%s}' % _T, b"\0" * 4, False, "ok", False),
    ("surrogate-pair", '{"a\\ud83d\\ude00":%s}' % _T, b"\0" * 4, True, "ok", False),
    ("nesting-127", _nest(127), b"\0" * 4, True, "ok", False),
    # offsets: contiguous from 0, in order, covering the data block exactly
    ("alias", '{"a":%s,"b":%s}' % (_T, _T), b"\0" * 4, True, r'"b".*overlap the previous tensor "a"', False),
    ("overlap", '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, True, "overlap", False),
    ("gap", '{"a":%s,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' % _T, b"\0" * 12, True, r'"b".*leave a gap', False),
    ("not-from-0", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8, True, "must begin at 0", False),
    ("zero-size-inside", '{"a":%s,"b":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}' % _T, b"\0" * 4, True, "overlap", False),
    ("trailing-bytes", '{"a":%s}' % _T, b"\0" * 5, True, "1 bytes after them belong to no tensor", False),
    ("data-without-tensors", "{}", b"\0" * 8, True, "after a header that declares no tensor", False),
    ("reversed", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', b"\0" * 4, True, "end is before the begin", False),
    ("three-offsets", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', b"\0" * 4, True, "exactly two offsets", False),
    ("numel-overflow", '{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}', b"", True, "overflows", False),
    ("bits-overflow", '{"a":{"dtype":"U8","shape":[2305843009213693952],"data_offsets":[0,4]}}', b"\0" * 4, True, "overflows", False),
    # JSON strictness
    ("trailing-garbage", '{"a":%s}x' % _T, b"\0" * 4, True, "unexpected data after the JSON value", False),
    ("nul-padding", ('{"a":%s}' % _T).encode() + b"\0\0\0\0", b"\0" * 4, False, "unexpected data after", False),
    ("two-values", '{"a":%s}{}' % _T, b"\0" * 4, True, "unexpected data after", False),
    ("leading-zero-shape", '{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', b"\0" * 4, True, "leading zeros", False),
    ("leading-zero-offset", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[00,4]}}', b"\0" * 4, True, "leading zeros", False),
    ("float-dim", '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', b"\0" * 4, True, "without sign, fraction or exponent", False),
    ("exp-dim", '{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}', b"\0" * 4, True, "without sign, fraction or exponent", False),
    ("minus-zero", '{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', b"", True, "without sign", False),
    ("u64-overflow", '{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,4]}}', b"\0" * 4, True, "at most 18446744073709551615", False),
    ("bad-unknown-number", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":01}}', b"\0" * 4, True, "leading zeros", False),
    ("bad-unknown-literal", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":tru}}', b"\0" * 4, True, "expected a value", False),
    ("bad-unknown-comma", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":[1,]}}', b"\0" * 4, True, "expected a value", False),
    ("unknown-out-of-range", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":1e999}}', b"\0" * 4, True, "double range", False),
    ("nesting-128", _nest(128), b"\0" * 4, True, "nesting deeper than 127", False),
    ("nesting-10000", _nest(10000), b"\0" * 4, True, "nesting deeper than 127", False),
    ("lone-high-surrogate", '{"a\\ud800":%s}' % _T, b"\0" * 4, True, "lone high surrogate", False),
    ("lone-low-surrogate", '{"a\\udc00":%s}' % _T, b"\0" * 4, True, "lone low surrogate", False),
    ("utf8-surrogate", b'{"a\xed\xa0\x80":' + _T.encode() + b"}", b"\0" * 4, True, "invalid UTF-8", False),
    ("utf8-overlong", b'{"a\xc0\xaf":' + _T.encode() + b"}", b"\0" * 4, True, "invalid UTF-8", False),
    ("utf8-truncated", b'{"a\xe2\x82":' + _T.encode() + b"}", b"\0" * 4, True, "invalid UTF-8", False),
    ("utf8-in-padding", ('{"a":%s}' % _T).encode() + b" \xff", b"\0" * 4, False, "unexpected data after", False),
    ("bom", b"\xef\xbb\xbf{}", b"", True, "expected the header's JSON object", False),
    ("array-root", "[]", b"", True, "must be a JSON object", False),
    ("empty-header", b"", b"", False, "header is empty", False),
    ("control-char", '{"a\tb":%s}' % _T, b"\0" * 4, True, "control character", False),
    # schema
    ("dup-shape", '{"a":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, True, '"shape" appears twice', False),
    ("split-shape", '{"a":{"shape":[2],"dtype":"F32","shape":[3],"data_offsets":[0,24]}}', b"\0" * 24, True, '"shape" appears twice', False),
    ("dup-metadata", '{"__metadata__":{},"__metadata__":{},"a":%s}' % _T, b"\0" * 4, True, "appears twice", False),
    ("missing-shape", '{"a":{"dtype":"F32","data_offsets":[0,4]}}', b"\0" * 4, True, 'missing "shape"', False),
    ("tensor-not-object", '{"a":1}', b"", True, "expected an object", False),
    ("dtype-not-string", '{"a":{"dtype":3,"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, True, "dtype: expected a string", False),
    ("dtype-lowercase", '{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, True, "unsupported dtype", False),
    ("metadata-number", '{"__metadata__":{"k":1},"a":%s}' % _T, b"\0" * 4, True, "expected a string value", False),
    ("metadata-array", '{"__metadata__":[],"a":%s}' % _T, b"\0" * 4, True, "expected null or an object", False),
    # stricter than the reference, on purpose
    ("dup-tensor", '{"a":%s,"a":%s}' % (_T, _T), b"\0" * 4, True, '"a" appears twice', True),
    ("dup-metadata-key", '{"__metadata__":{"k":"1","k":"2"},"a":%s}' % _T, b"\0" * 4, True, '"k" appears twice', True),
    ("dup-unknown-key", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"z":1,"z":2}}', b"\0" * 4, True, "appears twice", True),
    ("nul-name", '{"a%sb":%s}' % (_Z, _T), b"\0" * 4, True, r'tensor name "a\\x00b".*NUL', True),
    ("nul-metadata", '{"__metadata__":{"k":"v%s"},"a":%s}' % (_Z, _T), b"\0" * 4, True, "NUL", True),
    ("dtype-I16", '{"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4, True, "unsupported dtype", True),
    ("entry-as-array", '{"a":["F32",[1],[0,4]]}', b"\0" * 4, True, "expected an object", True),
    ("dtype-as-map", '{"a":{"dtype":{"F32":null},"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, True, "dtype: expected a string", True),
    ("huge-empty", '{"a":{"dtype":"F32","shape":[4611686018427387904,0],"data_offsets":[0,0]}}', b"", True, "too large for this library", True),
]


@pytest.mark.parametrize("header, data, pad, expected, deviation", [r[1:] for r in _RULES], ids=[r[0] for r in _RULES])
def test_strict_rules_match_reference(tmp_path, header, data, pad, expected, deviation):
    """Each format rule on its own: our verdict and message, and the reference's verdict
    (the same, except the documented deviations)."""
    p = tmp_path / "rule.safetensors"
    h = header.encode() if isinstance(header, str) else header
    raw = struct.pack("<Q", len(h) + (-len(h) % 8 if pad else 0)) + h + (b" " * (-len(h) % 8) if pad else b"") + data
    p.write_bytes(raw)
    if expected == "ok":
        got = dsc.load_safetensors(p)
        assert all(isinstance(k, str) for k in got)
    else:
        with pytest.raises(dsc.Error, match=expected) as e:
            dsc.load_safetensors(p)
        assert "rule.safetensors" in str(e.value) and "at byte" in str(e.value) or "belong to no tensor" in str(e.value) \
            or "declares no tensor" in str(e.value), str(e.value)
    try:
        from safetensors import deserialize
    except ImportError:
        return
    try:
        deserialize(raw)
        ref_ok = True
    except Exception:
        ref_ok = False
    assert ref_ok == ((expected == "ok") != deviation), f"reference {'accepts' if ref_ok else 'rejects'} it"


def test_nul_in_names_refused_on_write_and_read(tmp_path):
    """A C string cannot carry "a\\x00b": writing it is a ValueError, reading it a
    deepseek_c.Error -- never the silent "a" the old reader and writer made of it."""
    p = tmp_path / "n.safetensors"
    with pytest.raises(ValueError, match=r"names\[0\].*NUL"):
        dsc.save_safetensors(p, {"a\x00b": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match=r"metadata\[0\] key.*NUL"):
        dsc.save_safetensors(p, {"a": np.ones(2, np.float32)}, metadata={"k\x00": "v"})
    with pytest.raises(ValueError, match=r"metadata\[0\] value.*NUL"):
        dsc.save_safetensors(p, {"a": np.ones(2, np.float32)}, metadata={"k": "v\x00"})
    with pytest.raises(ValueError, match=r"names\[0\].*surrogate"):
        dsc.save_safetensors(p, {"a\ud800": np.ones(2, np.float32)})
    assert not p.exists()
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"a\x00b": np.ones(2, np.float32), "c": np.zeros(1, np.float32)}, str(p))  # the reference writes it
    with pytest.raises(dsc.Error, match=r'n.safetensors: tensor name "a\\x00b" .*NUL'):
        dsc.load_safetensors(p)


def test_interop_every_dtype_both_ways(tmp_path, rng):
    """bfloat16 and float8 included, through the reference's raw serialize/deserialize."""
    safetensors = pytest.importorskip("safetensors")
    data = _sample(rng)
    data["unicode name é 😀"] = rng.standard_normal(3).astype(np.float32)
    ours = tmp_path / "ours.safetensors"
    dsc.save_safetensors(ours, data, metadata={"format": "pt", "é": "😀"})
    theirs = safetensors.deserialize(ours.read_bytes())
    assert sorted(n for n, _ in theirs) == sorted(data)
    names = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
             "float8_e5m2": "F8_E5M2", "int32": "I32", "int64": "I64", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
    for n, v in theirs:
        a = np.require(data[n], requirements="C")
        assert v["dtype"] == names[a.dtype.name] and tuple(v["shape"]) == a.shape, n
        assert bytes(v["data"]) == a.tobytes(), n
    # the reference's writer sorts by dtype then name, which our reader takes in any order
    arrays = {n: np.require(a, requirements="C") for n, a in data.items()}
    if hasattr(safetensors._safetensors_rust, "TensorSpec"):
        spec = safetensors._safetensors_rust.TensorSpec  # newer releases: raw pointers
        specs = {n: spec(dtype=a.dtype.name, shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
                 for n, a in arrays.items()}
    else:
        specs = {n: {"dtype": names[a.dtype.name], "shape": list(a.shape), "data": a.tobytes()} for n, a in arrays.items()}
    raw = safetensors.serialize(specs, metadata={"format": "pt"})
    p = tmp_path / "theirs.safetensors"
    p.write_bytes(raw)
    back = dsc.load_safetensors(p)
    assert sorted(back) == sorted(data)
    for n, a in data.items():
        a = np.require(a, requirements="C")
        assert back[n].dtype == a.dtype and back[n].shape == a.shape and back[n].tobytes() == a.tobytes(), n
    assert dsc.safetensors_metadata(p) == {"format": "pt"}


def test_data_block_is_aligned(tmp_path):
    """Whatever the header's length, the data block lands 64-byte aligned in memory."""
    for pad in range(8):
        h = ('{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}' + " " * pad).encode()
        p = tmp_path / f"a{pad}.safetensors"
        p.write_bytes(struct.pack("<Q", len(h)) + h + np.array([1.5, -2.0]).tobytes())
        a = dsc.load_safetensors(p)["a"]
        assert a.ctypes.data % 64 == 0 and a.tolist() == [1.5, -2.0]


def test_many_tensors_header(tmp_path):
    """160k tensors (the duplicate check and the lookups are n log n, not n^2); a repeat
    among them is found. No timing is asserted: the C test prints the measurement."""
    n = 160_000
    entries = ",".join('"t%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1) for i in range(n))
    data = (np.arange(n) % 251).astype(np.uint8).tobytes()
    p = tmp_path / "many.safetensors"
    p.write_bytes(_st_raw("{" + entries + "}", data))
    got = dsc.load_safetensors(p)
    assert len(got) == n and int(got["t12345"][0]) == 12345 % 251 and int(got[f"t{n - 1}"][0]) == (n - 1) % 251
    p.write_bytes(_st_raw("{" + entries + ',"t77":{"dtype":"U8","shape":[0],"data_offsets":[%d,%d]}}' % (n, n), data))
    with pytest.raises(dsc.Error, match='"t77" appears twice'):
        dsc.load_safetensors(p)


def _st_raw(header: str, data: bytes) -> bytes:
    h = header.encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
