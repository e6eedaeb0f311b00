"""Mutation harness for the safetensors reader: damaged copies of a small valid file,
each judged against the reference reader (the `safetensors` package's Rust parser).

Every mutated file must end one of these ways:
  same     -- both readers load it, with identical names, dtypes, shapes and bytes;
  reject   -- both reject it (ours with deepseek_c.Error naming the file);
  stricter -- only ours rejects it, for a documented reason (a key given twice, a NUL
              in a name, a dtype this library does not support);
and never these:
  silent   -- ours loads a file the reference rejects (changed weights, aliased bytes, ...);
  mismatch -- both load it, but ours sees different tensors;
  overstrict -- ours rejects a file the reference loads, for no documented reason;
  crash    -- ours raises anything but deepseek_c.Error (UnicodeDecodeError, SystemError, ...).

Used by tests/test_safetensors.py; run directly (python tests/_st_mutate.py [N]) it prints
the counts, which is how the numbers before and after the strict reader were measured.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from collections import Counter

import ml_dtypes
import numpy as np

import deepseek_c as dsc

# deepseek_c dtype names (safetensors_entries) -> safetensors dtype names
ST_NAME = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
           "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int32": "I32", "int64": "I64",
           "int8": "I8", "uint8": "U8", "bool": "BOOL"}

# Why ours may reject what the reference loads (see csrc/model/safetensors.c).
DOCUMENTED_STRICTER = ("twice", "NUL", "this library")


def sample(rng) -> dict:
    """A small checkpoint: several dtypes, two tensors of the same byte size (so that one
    can alias the other), odd sizes (unaligned offsets), an empty tensor."""
    return {
        "a": rng.standard_normal((2, 3)).astype(np.float32),
        "b": rng.standard_normal((3, 2)).astype(np.float32),
        "c": rng.standard_normal(4).astype(ml_dtypes.bfloat16),
        "d": rng.integers(-9, 9, 3).astype(np.int64),
        "e": rng.integers(0, 255, 5).astype(np.uint8),
        "f": rng.uniform(-4, 4, (2, 2)).astype(ml_dtypes.float8_e4m3fn),
        "g": np.zeros((0, 3), np.float32),
    }


def build(header: dict | str | bytes, data: bytes, pad: bool = True) -> bytes:
    h = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def split(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[8:8 + n], raw[8 + n:]


def reference(raw: bytes):
    """{name: (dtype, shape, bytes)} as the reference reads it, or None if it rejects."""
    from safetensors import deserialize
    try:
        return {n: (v["dtype"], tuple(v["shape"]), bytes(v["data"])) for n, v in deserialize(raw)}
    except Exception:
        return None


def ours(path: str):
    """{name: (dtype, shape, bytes)}, or the exception."""
    from deepseek_c import _C
    try:
        f = _C.safetensors_open(path)
        entries, _meta = _C.safetensors_entries(f)
        out = {}
        for i, (name, dt, shape) in enumerate(entries):
            arr = _C.safetensors_tensor(f, i).numpy()
            out[name] = (ST_NAME[dt], tuple(shape), np.ascontiguousarray(arr).reshape(-1).view(np.uint8).tobytes())
        if len(out) != len(entries):
            raise AssertionError(f"{len(entries)} entries but {len(out)} distinct names")
        return out
    except dsc.Error as e:
        return e
    except Exception as e:  # noqa: BLE001 -- anything else is a crash to count
        return ("crash", e)


# ---------------------------------------------------------------- mutations

def _edit(raw: bytes, rng) -> bytes:
    """A structured edit of the header JSON (offsets, keys, numbers, names, padding)."""
    text, data = split(raw)
    h = json.loads(text)
    names = [k for k in h if k != "__metadata__"]
    k = int(rng.integers(0, 22))
    n = names[int(rng.integers(0, len(names)))]
    n2 = names[int(rng.integers(0, len(names)))]
    e = h[n]
    if k == 0:    # alias: b reads a's bytes (same size)
        h["b"]["data_offsets"] = list(h["a"]["data_offsets"])
    elif k == 1:  # overlap: shift one tensor's range
        d = int(rng.integers(-3, 4)) or 1
        e["data_offsets"] = [max(0, e["data_offsets"][0] + d), max(0, e["data_offsets"][1] + d)]
    elif k == 2:  # gap: the data block grows by 4 bytes before a tensor
        start = e["data_offsets"][0]
        for m in names:
            o = h[m]["data_offsets"]
            if o[0] >= start and not (o[0] == start and m != n and o[1] == start):
                h[m]["data_offsets"] = [o[0] + 4, o[1] + 4]
        data = data[:start] + b"\x11" * 4 + data[start:]
    elif k == 3:  # trailing bytes after the data block
        data = data + bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
    elif k == 4:  # data block cut short
        data = data[:-int(rng.integers(1, 5))]
    elif k == 5:  # duplicate tensor name (textual)
        s = json.dumps(h).replace(json.dumps(n2) + ":", json.dumps(n) + ":", 1)
        return build(s, data)
    elif k == 6:  # duplicate shape key, the shape split in two (old readers concatenated them)
        sh = e["shape"]
        s = json.dumps(h).replace(json.dumps(n) + ': {"dtype"',
                                  json.dumps(n) + ': {"shape": %s, "dtype"' % json.dumps(sh[:1]), 1)
        s = s.replace('"shape": %s, "data' % json.dumps(sh), '"shape": %s, "data' % json.dumps(sh[1:]), 1)
        return build(s, data)
    elif k == 7:  # trailing garbage after the JSON, inside the header
        s = json.dumps(h) + ["x", "}", "\x00", ",", " 1", "{}"][int(rng.integers(0, 6))]
        return build(s, data)
    elif k == 8:  # malformed value under an unknown key
        bad = ["01", "tru", "[1,]", "1e999", '"\\ud800"', "-", "[", "nul", '"\\x"', "1.", ".5", "+1"]
        s = json.dumps(h).replace(json.dumps(n) + ': {', json.dumps(n) + ': {"zz": %s, ' % bad[int(rng.integers(0, len(bad)))], 1)
        return build(s, data)
    elif k == 9:  # leading zero in an offset or a dim
        s = json.dumps(h)
        key = '"data_offsets": [' if rng.integers(0, 2) else '"shape": ['
        i = s.find(key, s.find(json.dumps(n) + ":"))
        j = i + len(key)
        s = s[:j] + "0" + s[j:]
        return build(s, data)
    elif k == 10:  # NUL inside a name (C strings would truncate it: "a\0b" -> "a")
        h[n + "\x00x"] = h.pop(n)
    elif k == 11:  # lone surrogate escape in a name
        s = json.dumps(h).replace(json.dumps(n) + ":", '"%s\\ud800":' % n, 1)
        return build(s, data)
    elif k == 12:  # invalid UTF-8 in a name: encoded surrogate, overlong, truncated sequence
        bad = [b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\xff", b"\xf8\x88\x80\x80\x80"][int(rng.integers(0, 5))]
        s = json.dumps(h).encode().replace(json.dumps(n).encode() + b":", b'"' + n.encode() + bad + b'":', 1)
        return build(s, data)
    elif k == 13:  # numbers that are not plain integers
        s = json.dumps(h)
        form = ["%d.0", "%de0", "-%d", "%d.", "0x%d", "%d "][int(rng.integers(0, 6))]
        off = e["data_offsets"][1]
        s = s.replace("%d]" % off, (form % off) + "]", 1)
        return build(s, data)
    elif k == 14:  # swap the order of two entries (valid: offsets are sorted by the reader)
        items = list(h.items())
        i, j = int(rng.integers(0, len(items))), int(rng.integers(0, len(items)))
        items[i], items[j] = items[j], items[i]
        h = dict(items)
    elif k == 15:  # metadata value that is not a string / metadata not a map / twice
        c = int(rng.integers(0, 4))
        if c == 0:
            h["__metadata__"] = {"format": 1}
        elif c == 1:
            h["__metadata__"] = ["format"]
        elif c == 2:
            h["__metadata__"] = None  # valid: the reference reads null as no metadata
        else:
            s = json.dumps(h).replace('"__metadata__":', '"__metadata__": {"x": "y"}, "__metadata__":', 1)
            return build(s, data)
    elif k == 16:  # deep nesting under an unknown key
        depth = int(rng.integers(100, 300))
        s = json.dumps(h).replace(json.dumps(n) + ': {', json.dumps(n) + ': {"zz": %s, ' % ("[" * depth + "]" * depth), 1)
        return build(s, data)
    elif k == 17:  # dtype changed to one of the same or another size
        e["dtype"] = ["F32", "I32", "F16", "BF16", "U8", "I8", "BOOL", "F64", "I64", "I16", "F8_E5M2", "f32", ""][int(rng.integers(0, 13))]
    elif k == 18:  # shape changed (same numel or not)
        e["shape"] = list(reversed(e["shape"])) if rng.integers(0, 2) else e["shape"] + [1]
    elif k == 19:  # the data_offsets pair malformed
        e["data_offsets"] = [[], [0], e["data_offsets"] + [0], None, "0,4"][int(rng.integers(0, 5))]
    elif k == 20:  # a huge dim
        e["shape"] = [2 ** int(rng.integers(31, 66)), 0]
        e["data_offsets"] = [e["data_offsets"][0]] * 2
    else:         # padding: spaces changed to other whitespace (valid) or removed (valid, unaligned)
        s = json.dumps(h) + ["\t", "\n", "\r\n", ""][int(rng.integers(0, 4))]
        return build(s, data, pad=bool(rng.integers(0, 2)))
    return build(h, data)


def mutate(raw: bytes, rng) -> tuple[str, bytes]:
    n_header = struct.unpack("<Q", raw[:8])[0]
    kind = ["byte", "bit", "edit", "edit", "length", "cut"][int(rng.integers(0, 6))]
    b = bytearray(raw)
    if kind == "byte":
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(8, 8 + n_header))] = int(rng.integers(0, 256))
    elif kind == "bit":
        i = int(rng.integers(8, 8 + n_header))
        b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "edit":
        return kind, _edit(raw, rng)
    elif kind == "length":
        v = n_header + int(rng.integers(-9, 10)) if rng.integers(0, 2) else int(rng.integers(0, 2 ** 63))
        b[:8] = struct.pack("<Q", max(0, v))
    else:
        cut = int(rng.integers(0, len(b)))
        b = b[:cut]
    return kind, bytes(b)


def judge(raw: bytes, path: str, original: dict) -> tuple[str, str]:
    with open(path, "wb") as fh:
        fh.write(raw)
    got = ours(path)
    ref = reference(raw)
    if isinstance(got, tuple):
        return "crash", f"{type(got[1]).__name__}: {got[1]}"
    if isinstance(got, dsc.Error):
        msg = str(got)
        if os.path.basename(path) not in msg:
            return "crash", f"message does not name the file: {msg}"
        if ref is None:
            return "reject", msg
        if any(w in msg for w in DOCUMENTED_STRICTER):
            return "stricter", msg
        return "overstrict", msg
    if ref is None:
        changed = got != original
        return "silent", "changed weights" if changed else "same tensors"
    if got != ref:
        return "mismatch", f"{sorted(got)} vs {sorted(ref)}"
    return "same", ""


def run(n: int, seed: int = 1234, path: str | None = None) -> tuple[Counter, list]:
    rng = np.random.default_rng(seed)
    tmp = tempfile.mkdtemp() if path is None else None
    path = path or os.path.join(tmp, "mut.safetensors")
    src = os.path.join(os.path.dirname(path), "orig.safetensors")
    dsc.save_safetensors(src, sample(rng), metadata={"format": "pt"})
    raw = open(src, "rb").read()
    original = reference(raw)
    assert original is not None
    counts, bad = Counter(), []
    for i in range(n):
        kind, m = mutate(raw, rng)
        verdict, why = judge(m, path, original)
        counts[verdict] += 1
        if verdict in ("silent", "mismatch", "overstrict", "crash"):
            bad.append((i, kind, verdict, why, m[:200]))
    return counts, bad


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    counts, bad = run(n)
    print(f"{n} mutations:", dict(counts))
    silent_changed = sum(1 for b in bad if b[2] == "silent" and b[3] == "changed weights")
    print("silent accepts with changed weights:", silent_changed)
    for b in bad[:int(os.environ.get("SHOW", "10"))]:
        print(b[:4], b[4])
