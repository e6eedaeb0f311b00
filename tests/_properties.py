"""Property-based fuzzing of the public Python ops (run by tests/test_properties.py).

Every property draws a valid call of one public function (shapes with 0, 1, odd sizes,
127/128/129 around the FP8 block, large-but-cheap shapes; float32 and bfloat16; random
parameters), then applies zero or more mutations: another dtype, another shape or rank,
a non-contiguous, Fortran-ordered, negative-stride, offset, unaligned, byte-swapped or
read-only layout, a Python list, None, a scalar, a deepseek_c.Tensor, NaN/inf values,
out-of-range indices, an output aliasing an input, extreme or mistyped parameters.

The oracle of one example: the call either
  (a) returns, and every output matches an independent NumPy float64 computation (the
      references of tests/reference/) within the stated tolerance, inputs it must not
      write are unchanged, outputs given with out= were written (they are NaN-poisoned
      first); a call whose mutations are all harmless (a contiguous view at an offset, a
      read-only input, NaN values, a deepseek_c.Tensor, ...) must return; or
  (b) raises ValueError, TypeError, MemoryError, deepseek_c.Error or deepseek_c.FormatError
      (exactly these types; which ones a mutation may cause is stated with it), with a
      message that names the function and one of its arguments.
Anything else fails: another exception type, a wrong value, a modified input. Crashes are
caught by the caller, which runs each property in its own interpreter.

    python tests/_properties.py rms_norm 2000            # derandomized (CI) examples
    python tests/_properties.py rms_norm 2000 --seed 7    # another random stream
    python tests/_properties.py --list

It prints one JSON line of statistics (examples, outcomes) and exits 0 when every example
passed.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import ml_dtypes  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import deepseek_c as dsc  # noqa: E402
from reference import dense as rd  # noqa: E402
from reference import fp8 as rf  # noqa: E402
from reference import mla as rmla  # noqa: E402
from reference import moe as rm  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)
I64 = np.dtype(np.int64)

# every dtype a mutation may switch an array to
ALL_DTYPES = [F32, BF16, np.dtype(np.float16), np.dtype(np.float64), I32, I64, np.dtype(np.uint8),
              np.dtype(np.int8), np.dtype(bool), E4M3, E5M2, np.dtype(np.complex64)]
FLOATS = (F32, BF16)

# the exception types the public functions document (exact types: a subclass such as
# numpy's AxisError(ValueError, IndexError) is not one of them)
DOCUMENTED = {ValueError, TypeError, MemoryError, dsc.Error, dsc.FormatError}
VALUE = (ValueError,)
TYPE = (TypeError,)
ANY_DOC = (ValueError, TypeError)

# dims a shape draws from: 0, 1, odd sizes, around the FP8 block of 128
DIMS = [0, 1, 1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 64, 127, 128, 129]
BIG = 1 << 20  # one dim of a large-but-cheap shape


class Failure(AssertionError):
    pass


def fail(msg: str) -> None:
    raise Failure(msg)


# ----------------------------------------------------------------------------- a case


@dataclass
class Mut:
    """One mutation: what was done, the exception types it may cause, and whether the
    call must still succeed (benign)."""

    what: str
    exc: tuple = ()
    benign: bool = False


MUTATION_LABEL = re.compile(r"(mutate|bad|badval|replace|negative|huge|alias|as_list|out_of_range|same_kind|list|ids)\?$")


class Case:
    """The draws and mutations of one example."""

    def __init__(self, data: Any, op: "Op") -> None:
        self.data = data
        self.op = op
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
        self.muts: list[Mut] = []
        # about a third of the examples are valid calls: no mutation at all
        self.quiet = bool(self.rng.random() < 0.3)

    def draw(self, strategy: Any, label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def pick(self, options: list, label: str) -> Any:
        return self.draw(st.sampled_from(options), label)

    def flag(self, p: float, label: str) -> bool:
        """True with probability p; a mutation's question (see MUTATION_LABEL) is always False
        in a quiet example. (Yes/no questions come from the example's seeded generator, not
        from Hypothesis: its choices of a long run of small-probability questions follow
        the examples it has seen and are far rarer than asked for.)"""
        if self.quiet and MUTATION_LABEL.search(label):
            return False
        return bool(self.rng.random() < p)

    def mut(self, what: str, exc: tuple = (), benign: bool = False) -> None:
        self.muts.append(Mut(what, tuple(exc), benign))

    @property
    def clean(self) -> bool:
        return all(m.benign for m in self.muts)

    def describe(self) -> str:
        return "; ".join(m.what + (" (benign)" if m.benign else f" -> {'/'.join(e.__name__ for e in m.exc)}")
                         for m in self.muts) or "no mutation"

    # ---- shapes and values

    def dims(self, n: int, label: str, budget: int = 1 << 14, big: bool = True) -> list[int]:
        """n dims from DIMS with a product <= budget; sometimes one dim 2^20 and the others 1."""
        if n > 0 and big and self.flag(0.04, f"{label}.big"):
            i = self.draw(st.integers(0, n - 1), f"{label}.big_at")
            return [BIG if j == i else 1 for j in range(n)]
        out = []
        for j in range(n):
            d = self.pick(DIMS, f"{label}[{j}]")
            if math.prod(out) * max(d, 1) > budget:
                d = 1
            out.append(d)
        return out

    def dim(self, label: str, options: Optional[list] = None) -> int:
        return self.pick(options or DIMS, label)

    def randn(self, shape: tuple, dtype: Any = F32, scale: Optional[float] = None) -> np.ndarray:
        """Fresh normal values (never all zeros) stored in dtype."""
        if scale is None:
            scale = self.pick([1.0, 1.0, 1e-3, 30.0], "scale")
        v = self.rng.standard_normal(tuple(shape)) * scale
        return cast(v, dtype)

    def ints(self, shape: tuple, lo: int, hi: int, dtype: Any = I32) -> np.ndarray:
        """Integers in [lo, hi) (hi > lo) as dtype."""
        return self.rng.integers(lo, hi, size=tuple(shape)).astype(dtype)

    # ---- mutations of one array argument

    def mutate_array(self, name: str, a: Any, *, role: str = "in", fill: Optional[Callable] = None,
                     ok_dtypes: tuple = (), optional: bool = False, nonfinite: bool = True,
                     p: float = 0.25, kinds: Optional[list] = None) -> Any:
        """Maybe replace array argument `name` (value a) by a mutated one. role: 'in' (read)
        or 'out' (written). fill(shape) -> new values for a shape mutation (default: normal
        values of a's dtype). ok_dtypes: dtypes the argument accepts whatever the others are."""
        if not isinstance(a, np.ndarray) or not self.flag(p, f"{name}.mutate?"):
            return a
        menu = kinds or (["dtype", "shape", "layout", "layout", "py", "tensor"] +
                         (["nonfinite", "nonfinite"] if nonfinite and role == "in" and is_float(a.dtype) else []) +
                         (["readonly"] if role == "in" else []))
        kind = self.pick(menu, f"{name}.kind")
        if kind == "dtype":
            dt = self.pick([d for d in ALL_DTYPES if d != a.dtype], f"{name}.dtype")
            self.mut(f"{name}: dtype {dt.name}", TYPE, benign=dt in ok_dtypes)
            return convert(a, dt)
        if kind == "shape":
            shape = self.mutate_shape(name, a.shape)
            self.mut(f"{name}: shape {a.shape} -> {shape}", VALUE)
            return fill(shape) if fill is not None else self.randn(shape, a.dtype)
        if kind == "layout":
            return self.relayout(name, a, role)
        if kind == "readonly":
            v = a.copy()
            v.setflags(write=False)
            self.mut(f"{name}: read-only", VALUE, benign=role == "in")
            return v
        if kind == "py":
            what = self.pick(["list", "None", "float", "str", "0-d"], f"{name}.py")
            if what == "list":
                self.mut(f"{name}: a Python list", TYPE)
                return a.tolist()
            if what == "None":
                self.mut(f"{name}: None", TYPE, benign=optional)
                return None
            if what == "float":
                self.mut(f"{name}: a Python float", TYPE)
                return 1.5
            if what == "str":
                self.mut(f"{name}: a str", TYPE)
                return "x"
            self.mut(f"{name}: a 0-d array", VALUE)
            return np.asarray(a.reshape(-1)[0] if a.size else 1, dtype=a.dtype)
        if kind == "tensor":
            self.mut(f"{name}: a deepseek_c.Tensor", benign=True)
            return dsc.tensor(a)
        if kind == "nonfinite":
            v = a.copy()
            if v.size:
                k = self.draw(st.integers(1, 3), f"{name}.n_nonfinite")
                for _ in range(k):
                    i = int(self.rng.integers(0, v.size))
                    v.reshape(-1)[i] = self.pick([np.nan, np.inf, -np.inf], f"{name}.nonfinite")
            self.mut(f"{name}: NaN/inf values", benign=True)
            return v
        raise AssertionError(kind)

    def mutate_shape(self, name: str, shape: tuple) -> tuple:
        s = list(shape)
        how = self.pick(["add", "drop", "change", "0-d"], f"{name}.shape_how")
        if how == "add":
            s.insert(self.draw(st.integers(0, len(s)), f"{name}.at"), self.pick([1, 2, 3], f"{name}.new"))
        elif how == "drop" and s:
            s.pop(self.draw(st.integers(0, len(s) - 1), f"{name}.at"))
        elif how == "change" and s:
            i = self.draw(st.integers(0, len(s) - 1), f"{name}.at")
            s[i] = self.pick([d for d in (0, 1, 2, 3, 5, 127, 128, 129) if d != s[i]], f"{name}.new")
        else:
            s = []
        if math.prod(x for x in s if x) > 1 << 16:
            s = [1] * len(s)
        return tuple(s)

    def relayout(self, name: str, a: np.ndarray, role: str) -> np.ndarray:
        """The same values in another memory layout."""
        how = self.pick(["fortran", "strided", "negative", "offset", "unaligned", "byteswap", "broadcast"],
                        f"{name}.layout")
        if how == "fortran":
            v = np.array(a, order="F")  # (np.asfortranarray makes a 0-d array 1-d)
        elif how == "strided":
            if a.ndim == 0:
                return a
            ax = self.draw(st.integers(0, a.ndim - 1), f"{name}.axis")
            shape = list(a.shape)
            shape[ax] *= 2
            big = np.zeros(shape, a.dtype)
            sl = [slice(None)] * a.ndim
            sl[ax] = slice(None, None, 2)
            v = big[tuple(sl)]
            v[...] = a
        elif how == "negative":
            if a.ndim == 0:
                return a
            ax = self.draw(st.integers(0, a.ndim - 1), f"{name}.axis")
            v = np.flip(np.flip(a, ax).copy(), ax)
        elif how == "offset":  # C-contiguous, at an offset into a larger buffer
            k = self.draw(st.integers(1, 5), f"{name}.offset")
            buf = np.zeros(a.size + k, a.dtype)
            v = buf[k:].reshape(a.shape)
            v[...] = a
        elif how == "unaligned":
            if a.dtype.itemsize == 1:
                return a
            raw = np.zeros(a.nbytes + 1, np.uint8)
            v = raw[1:].view(a.dtype).reshape(a.shape)
            v[...] = a
        elif how == "byteswap":
            if a.dtype.kind not in "fiu" or a.dtype.itemsize == 1 or a.dtype in (BF16,):
                return a
            v = a.astype(a.dtype.newbyteorder())
        else:  # broadcast: zero strides
            if a.ndim == 0 or a.size == 0:
                return a
            ax = self.draw(st.integers(0, a.ndim - 1), f"{name}.axis")
            sl = [slice(None)] * a.ndim
            sl[ax] = slice(0, 1)
            v = np.broadcast_to(a[tuple(sl)], a.shape)
        ok = v.flags.c_contiguous and v.flags.aligned and v.dtype.isnative and (role == "in" or v.flags.writeable)
        exc = ANY_DOC if how == "byteswap" else VALUE
        self.mut(f"{name}: layout {how} (strides {v.strides})", exc, benign=ok)
        return v


# ----------------------------------------------------------------------------- dtypes and values


def is_float(dt: Any) -> bool:
    dt = np.dtype(dt)
    return dt.kind == "f" or dt in (BF16, E4M3, E5M2)


def cast(v: np.ndarray, dtype: Any) -> np.ndarray:
    """float64 values stored in dtype (FP8 saturating, ints rounded, bool v > 0), as an array
    (also 0-d: never a NumPy scalar)."""
    return np.asarray(_cast(v, dtype), dtype=np.dtype(dtype))


def _cast(v: np.ndarray, dtype: Any) -> np.ndarray:
    dt = np.dtype(dtype)
    v = np.asarray(v, dtype=np.float64)
    if dt == E4M3:
        return np.clip(v, -448, 448).astype(np.float32).astype(E4M3)
    if dt == E5M2:
        return np.clip(v, -57344, 57344).astype(np.float32).astype(E5M2)
    if dt == BF16:
        return v.astype(np.float32).astype(BF16)
    if dt == np.dtype(bool):
        return v > 0
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(v), info.min, info.max).astype(dt)
    return v.astype(dt)


def convert(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """a's values in another dtype (through float64, FP8 saturating)."""
    if a.dtype == np.dtype(np.complex64):
        a = a.real
    if dt == np.dtype(np.complex64):
        return f64(a).astype(np.complex64)
    return cast(np.nan_to_num(f64(a), nan=0.0, posinf=1.0, neginf=-1.0) if dt.kind in "iub" else f64(a), dt)


def f64(x: Any) -> np.ndarray:
    if isinstance(x, dsc.Tensor):
        x = dsc.to_numpy(x)
    a = np.asarray(x)
    if a.dtype == np.dtype(np.complex64):
        return a.real.astype(np.float64)
    return a.astype(np.float64)


def host(x: Any) -> np.ndarray:
    if isinstance(x, dsc.Tensor):
        return np.array(dsc.to_numpy(x))
    return np.asarray(x)


def snapshot(v: Any) -> Any:
    """A deep copy of an argument's values (arrays as NumPy arrays)."""
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, dsc.Tensor):
        return np.array(dsc.to_numpy(v))
    if isinstance(v, (list, tuple)):
        return type(v)(snapshot(x) for x in v)
    if isinstance(v, dict):
        return {k: snapshot(x) for k, x in v.items()}
    return v


def same_bytes(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return all(same_bytes(x, y) for x, y in zip(a, b))
    return True


def poison(a: Any) -> Any:
    """Fill an output buffer with NaN (floats) or a sentinel (ints) before the op writes it."""
    if isinstance(a, np.ndarray) and a.flags.writeable:
        if is_float(a.dtype):
            a[...] = np.nan
        elif a.dtype.kind in "iu":
            a[...] = -7 if a.dtype.kind == "i" else 7
    return a


def close(got: Any, want: Any, what: str, rtol: float, atol: float = 0.0, atol_rel: float = 0.0,
          nonfinite: str = "strict") -> None:
    """got ~= want elementwise: |got - want| <= atol + atol_rel * max|want| + rtol * |want| where
    want is finite; where want is NaN got is NaN, where want is +-inf got is the same inf
    (nonfinite='strict') or any non-finite value ('any')."""
    g = f64(host(got))
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        fail(f"{what}: shape {g.shape}, want {w.shape}")
    fin = np.isfinite(w)
    scale = float(np.abs(w[fin]).max()) if fin.any() else 0.0
    tol = np.asarray(atol, dtype=np.float64) + atol_rel * scale + rtol * np.abs(w)
    with np.errstate(invalid="ignore"):
        bad = fin & ~(np.abs(g - w) <= tol)
    if nonfinite == "strict":
        bad |= np.isnan(w) & ~np.isnan(g)
        bad |= np.isinf(w) & (g != w)
    else:
        bad |= ~fin & np.isfinite(g)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        rows = ", ".join(f"{tuple(int(i) for i in ix)}: got {g[tuple(ix)]!r} want {w[tuple(ix)]!r}" for ix in idx)
        fail(f"{what}: {int(bad.sum())} of {w.size} elements differ (rtol {rtol}, atol {atol}, "
             f"atol_rel {atol_rel}): {rows}")


def exact(got: Any, want: Any, what: str) -> None:
    g = host(got)
    w = np.asarray(want)
    if g.shape != w.shape:
        fail(f"{what}: shape {g.shape}, want {w.shape}")
    if is_float(g.dtype) or is_float(w.dtype):
        ok = (f64(g) == f64(w)) | (np.isnan(f64(g)) & np.isnan(f64(w)))
    else:
        ok = g.astype(np.int64) == w.astype(np.int64)
    if not np.all(ok):
        idx = np.argwhere(~ok)[:5]
        rows = ", ".join(f"{tuple(int(i) for i in ix)}: got {g[tuple(ix)]!r} want {w[tuple(ix)]!r}" for ix in idx)
        fail(f"{what}: {int((~ok).sum())} of {w.size} elements differ: {rows}")


def tol_for(dtype: Any) -> tuple[float, float]:
    """(rtol, atol_rel) of an output stored in dtype and computed in float32."""
    return (1e-2, 2e-3) if np.dtype(dtype) == BF16 else (1e-4, 1e-5)


def dtname(x: Any) -> str:
    if isinstance(x, dsc.Tensor):
        return x.dtype
    return getattr(getattr(x, "dtype", None), "name", type(x).__name__)


# ----------------------------------------------------------------------------- ops and the oracle


@dataclass
class Op:
    """One public function under test.

    gen(case) -> dict of arguments (mutated); call(args) -> result; check(case, args,
    result) compares with the reference (args: snapshots taken before the call).
    fns: how messages may name the function; args: argument names a message may name.
    writes: argument names the function may modify (in place, out=)."""

    name: str
    gen: Callable
    call: Callable
    check: Callable
    fns: tuple
    args: tuple
    writes: tuple = ()
    examples: int = 40  # CI default


OPS: dict[str, Op] = {}


def op(name: str, fns: tuple, args: tuple, writes: tuple = (), examples: int = 40):
    def deco(cls):
        inst = cls()
        OPS[name] = Op(name, inst.gen, inst.call, inst.check, fns, args, writes, examples)
        return cls
    return deco


def check_exception(o: Op, case: Case, e: BaseException) -> str:
    t = type(e)
    if t not in DOCUMENTED:
        fail(f"{o.name}: undocumented exception {t.__module__}.{t.__name__}: {e!s} [{case.describe()}]")
    if case.clean:
        fail(f"{o.name}: a valid call raised {t.__name__}: {e!s} [{case.describe()}]")
    allowed = {x for m in case.muts if not m.benign for x in m.exc}
    if not isinstance(e, tuple(allowed) or (Exception,)) and t is not MemoryError:
        fail(f"{o.name}: expected {'/'.join(sorted(x.__name__ for x in allowed))}, got {t.__name__}: {e!s} "
             f"[{case.describe()}]")
    msg = str(e)
    fn_hit = next((f for f in o.fns if re.search(rf"(^|\W){re.escape(f)}\b", msg)), None)
    if fn_hit is None:
        fail(f"{o.name}: the message does not name the function ({' or '.join(o.fns)}): {msg!r} "
             f"[{case.describe()}]")
    rest = msg.split(fn_hit, 1)[1]
    if not any(re.search(rf"(?<![\w.]){re.escape(a)}(?![\w])", rest) for a in o.args):
        fail(f"{o.name}: the message does not name an argument ({', '.join(o.args)}): {msg!r} "
             f"[{case.describe()}]")
    return f"raised {t.__name__}"


def run_case(o: Op, data: Any) -> str:
    case = Case(data, o)
    args = o.gen(case)
    case.args = args
    before = {k: snapshot(v) for k, v in args.items()}
    try:
        result = o.call(args)
    except Failure:
        raise
    except BaseException as e:  # noqa: BLE001 - the oracle judges every exception
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return check_exception(o, case, e)
    for k, v in args.items():
        if k not in o.writes and not same_bytes(v, before[k]) and not _aliases_written(k, args, o):
            fail(f"{o.name}: input {k} was modified [{case.describe()}]")
    try:
        o.check(case, before, result)
    except Failure as e:
        raise Failure(f"{o.name}: {e} [{case.describe()}]") from None
    except Exception as e:  # noqa: BLE001 - the reference could not make sense of what the op accepted
        raise Failure(f"{o.name}: the call returned, but the reference cannot interpret its arguments "
                      f"({type(e).__name__}: {e}) [{case.describe()}]") from e
    return "ok" if not case.muts else "ok (mutated)"


def _aliases_written(k: str, args: dict, o: Op) -> bool:
    """An input that is (or overlaps) an argument the op writes may change."""
    v = args[k]
    return isinstance(v, np.ndarray) and any(
        isinstance(args.get(w), np.ndarray) and np.shares_memory(v, args[w]) for w in o.writes)


# ----------------------------------------------------------------------------- shared draws


def float_dtype(case: Case, label: str = "dtype") -> np.dtype:
    return case.pick([F32, F32, BF16], label)


def bad_number(case: Case, name: str, bad_values: list, p: float = 0.15) -> Optional[Any]:
    """Maybe a bad value for a scalar parameter: returns the value (or None for none).
    bad_values: list of (value, exceptions)."""
    if not case.flag(p, f"{name}.bad?"):
        return None
    i = case.draw(st.integers(0, len(bad_values) - 1), f"{name}.bad")
    v, exc = bad_values[i]
    case.mut(f"{name} = {v!r}", exc)
    return v, exc


def maybe_param(case: Case, name: str, value: Any, bad_values: list, p: float = 0.15) -> Any:
    b = bad_number(case, name, bad_values, p)
    return value if b is None else b[0]


NOT_A_NUMBER = [(None, TYPE), ("1e-6", TYPE), ([1.0], TYPE)]
NOT_AN_INT = [(None, TYPE), ("2", TYPE), (2.5, TYPE), ([2], TYPE)]
HUGE_INTS = [(2 ** 31, ANY_DOC), (2 ** 63, ANY_DOC), (2 ** 70, ANY_DOC), (-(2 ** 63) - 1, ANY_DOC)]


def out_arg(case: Case, name: str, shape: tuple, dtype: Any, inputs: dict, may_alias: tuple = (),
            p_given: float = 0.4) -> Optional[Any]:
    """An out= argument: None (allocate), a fresh poisoned array, an input itself, or a
    bad one (dtype, shape, layout, read-only, list, partial overlap with an input)."""
    if not case.flag(p_given, f"{name}.given?"):
        return None
    kind = "fresh" if case.quiet else case.pick(["fresh", "fresh", "fresh", "alias", "overlap", "bad"], f"{name}.how")
    same = [k for k, v in inputs.items() if isinstance(v, np.ndarray) and v.shape == tuple(shape)
            and v.dtype == np.dtype(dtype)]
    if kind == "alias" and same:
        k = case.pick(same, f"{name}.alias_of")
        case.mut(f"{name} is {k}", VALUE, benign=k in may_alias and inputs[k].flags.writeable)
        return inputs[k]
    if kind == "overlap" and same and math.prod(shape) > 1:
        k = case.pick(same, f"{name}.overlap_of")
        a = inputs[k]
        off = case.draw(st.integers(1, a.size - 1), f"{name}.overlap_by")
        buf = np.empty(a.size + off, a.dtype)
        iv = buf[:a.size].reshape(a.shape)
        iv[...] = a
        ov = buf[off:].reshape(a.shape)
        inputs[k] = iv
        case.mut(f"{name} overlaps {k} (offset {off})", VALUE)
        return ov
    o = poison(np.empty(tuple(shape), np.dtype(dtype)))
    return _bad_out(case, name, o) if kind == "bad" else o


def _bad_out(case: Case, name: str, o: np.ndarray) -> Any:
    kind = case.pick(["dtype", "shape", "layout", "readonly", "list"], f"{name}.bad")
    if kind == "dtype":
        dt = case.pick([d for d in ALL_DTYPES if d != o.dtype], f"{name}.dtype")
        case.mut(f"{name}: dtype {dt.name}", TYPE)
        return poison(np.empty(o.shape, dt))
    if kind == "shape":
        s = case.mutate_shape(name, o.shape)
        case.mut(f"{name}: shape {o.shape} -> {s}", VALUE, benign=False)
        return poison(np.empty(s, o.dtype))
    if kind == "layout":
        v = case.relayout(name, o, "out")
        return poison(v) if v.flags.writeable else v
    if kind == "readonly":
        o.setflags(write=False)
        case.mut(f"{name}: read-only", VALUE)
        return o
    case.mut(f"{name}: a Python list", TYPE)
    return o.tolist()


def written_out(case: Case, given: Any, result: Any, what: str) -> None:
    """With out=, the function returns that very array."""
    if given is not None and result is not given:
        fail(f"{what}: out= was given but another object came back")


# ============================================================================= dense ops

BAD_EPS = [(-1e-6, VALUE), (-1.0, VALUE), (math.nan, VALUE), (math.inf, VALUE), (-math.inf, VALUE)] + NOT_A_NUMBER


def rms_ref(x: np.ndarray, w: np.ndarray, eps: float, rstd: Optional[np.ndarray] = None):
    """(y, rstd) in float64; rstd given: used as is."""
    x, w = f64(x), f64(w)
    if rstd is None:
        rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + np.float32(eps))
    return w * x * f64(rstd)[..., None], f64(rstd)


def draw_rms_inputs(c: Case):
    dt = float_dtype(c)
    shape = tuple(c.dims(c.draw(st.integers(1, 5), "rank"), "x"))
    D = shape[-1]
    x = c.randn(shape, dt)
    w = cast(1 + 0.3 * c.rng.standard_normal(D), dt)
    eps = c.pick([1e-6, 1e-5, 0.0, 1.0, 1e-30], "eps")
    if D == 0 and math.prod(shape[:-1]) > 0:
        c.mut("x: rows of D = 0 features", VALUE)
    return dt, shape, x, w, eps


@op("rms_norm", ("dsc_rms_norm_forward", "rms_norm"), ("x", "w", "y", "eps", "out"), writes=("out",))
class RMSNorm:
    def gen(self, c):
        dt, shape, x, w, eps = draw_rms_inputs(c)
        a = dict(x=c.mutate_array("x", x), w=c.mutate_array("w", w), eps=maybe_param(c, "eps", eps, BAD_EPS))
        a["out"] = out_arg(c, "out", shape, dt, a, may_alias=("x",))
        return a

    def call(self, a):
        return dsc.rms_norm(a["x"], a["w"], a["eps"], out=a["out"])

    def check(self, c, b, y):
        want, _ = rms_ref(b["x"], b["w"], b["eps"])
        close(y, want, "y", *tol_for(dtname(y)))
        written_out(c, c.args["out"], y, "y")


@op("rms_norm_forward", ("dsc_rms_norm_forward", "rms_norm_forward"), ("x", "w", "y", "eps", "rstd"))
class RMSNormForward:
    def gen(self, c):
        dt, shape, x, w, eps = draw_rms_inputs(c)
        return dict(x=c.mutate_array("x", x), w=c.mutate_array("w", w), eps=maybe_param(c, "eps", eps, BAD_EPS))

    def call(self, a):
        return dsc.rms_norm_forward(a["x"], a["w"], a["eps"])

    def check(self, c, b, res):
        y, ctx = res
        want, rstd = rms_ref(b["x"], b["w"], b["eps"])
        close(y, want, "y", *tol_for(dtname(y)))
        close(ctx.rstd, rstd, "rstd", 1e-5, atol_rel=1e-6)
        if ctx.eps != float(b["eps"]):
            fail(f"ctx.eps {ctx.eps} != {b['eps']}")


def mutate_ctx(c: Case, ctx: Any, fields: dict, cls_name: str) -> Any:
    """Maybe replace a backward's ctx by something else, or mutate its fields.
    fields: name -> dict(kwargs of mutate_array) or 'int'/'float' for scalars."""
    if c.flag(0.06, "ctx.replace?"):
        v = c.pick([None, {}, "ctx", 3], "ctx.other")
        c.mut(f"ctx = {v!r}", TYPE)
        return v
    changes = {}
    for f, how in fields.items():
        v = getattr(ctx, f)
        if how == "int":
            b = bad_number(c, f"ctx.{f}", [(-1, VALUE), (2 ** 40, ANY_DOC)] + NOT_AN_INT, p=0.05)
            if b is not None:
                changes[f] = b[0]
        elif how == "float":
            b = bad_number(c, f"ctx.{f}", BAD_EPS, p=0.05)
            if b is not None:
                changes[f] = b[0]
        else:
            nv = c.mutate_array(f"ctx.{f}", v, p=0.08, **how)
            if nv is not v:
                changes[f] = nv
    if not changes:
        return ctx
    d = {k: getattr(ctx, k) for k in ctx.__dataclass_fields__}
    d.update(changes)
    return type(ctx)(**d)


@op("rms_norm_backward", ("dsc_rms_norm_backward", "rms_norm_backward"),
    ("dy", "x", "w", "rstd", "dx", "dw", "eps", "ctx"))
class RMSNormBackward:
    def gen(self, c):
        dt, shape, x, w, eps = draw_rms_inputs(c)
        if not c.clean:
            x, w = np.ones((2, 3), dt), np.ones(3, dt)
            shape = x.shape
            c.muts.clear()
        _, ctx = dsc.rms_norm_forward(x, w, eps)
        dy = c.randn(shape, dt)
        ctx = mutate_ctx(c, ctx, dict(x={}, w={}, rstd=dict(optional=True), eps="float"), "RMSNormCtx")
        return dict(dy=c.mutate_array("dy", dy), ctx=ctx)

    def call(self, a):
        return dsc.rms_norm_backward(a["dy"], a["ctx"])

    def check(self, c, b, res):
        dx, dw = res
        ctx = b["ctx"]
        dy, x, w = f64(b["dy"]), f64(ctx.x), f64(ctx.w)
        _, r = rms_ref(x, w, ctx.eps, None if ctx.rstd is None else ctx.rstd)
        r = r[..., None]
        g = w * dy
        want_dx = r * g - x * r ** 3 * np.mean(g * x, axis=-1, keepdims=True)
        want_dw = (dy * x * r).reshape(math.prod(x.shape[:-1]), x.shape[-1]).sum(axis=0)
        rt, ar = tol_for(dtname(dx))
        terms = np.abs(r * g) + np.abs(x) * r ** 3 * np.mean(np.abs(g * x), axis=-1, keepdims=True)
        close(dx, want_dx, "dx", rt, atol=np.nan_to_num(terms * (1e-5 if rt < 1e-3 else 1e-2)), atol_rel=ar,
              nonfinite="any")  # inf - inf or inf * (a - b): the order of the algebra decides
        close(dw, want_dw, "dw", 1e-4, atol_rel=1e-4 if dtname(dx) == "float32" else 1e-2)


# ----------------------------------------------------------------------------- RoPE

BAD_THETA = [(0.0, VALUE), (-1.0, VALUE), (math.nan, VALUE), (math.inf, VALUE), (1.0, VALUE)] + NOT_A_NUMBER
BAD_SCALING = [
    ("yarn", TYPE), ([("factor", 4.0)], TYPE), ({"type": "linear", "factor": 2.0}, VALUE), ({"type": "yarn"}, VALUE),
    ({"factor": 0.0}, VALUE), ({"factor": -4.0}, VALUE), ({"factor": math.nan}, VALUE), ({"factor": math.inf}, VALUE),
    ({"factor": None}, TYPE), ({"factor": "4"}, TYPE), ({"factor": 4.0, "original_max_position_embeddings": 0}, VALUE),
    ({"factor": 4.0, "original_max_position_embeddings": -5}, VALUE),
    ({"factor": 4.0, "original_max_position_embeddings": 2 ** 40}, ANY_DOC),
    ({"factor": 4.0, "beta_fast": math.nan}, VALUE), ({"factor": 4.0, "beta_slow": 0.0}, VALUE),
    ({"factor": 4.0, "mscale": math.inf}, VALUE), ({"factor": 4.0, "mscale_all_dim": math.nan}, VALUE),
    ({"factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}, VALUE),
]


def draw_rope(c: Case):
    dt = float_dtype(c)
    rank = c.pick([3, 4], "rank")
    B, T = c.dims(2, "BT", budget=256, big=False)
    H = c.pick([1, 2, 3], "H") if rank == 4 else None
    D = c.pick([0, 2, 4, 8, 16, 64, 128], "D")
    if c.flag(0.03, "big_D"):
        B = T = 1
        D = 1 << 16
    shape = (B, T, H, D) if rank == 4 else (B, T, D)
    if not 2 <= D <= 512:
        c.mut(f"x: rotary dim {D} outside [2, 512]", VALUE)
    maxpos = c.pick([1, 64, 4096, 65536], "maxpos")
    pos = c.ints((B, T), 0, maxpos, I32)
    layout = c.pick(["interleaved", "half"], "layout")
    theta = c.pick([10000.0, 500000.0, 1.5], "theta")
    scaling = None
    if c.flag(0.4, "yarn?"):
        scaling = {"type": c.pick(["yarn", "yarn", None], "type"), "factor": c.pick([1.0, 4.0, 40.0], "factor"),
                   "original_max_position_embeddings": c.pick([64, 4096], "L0"),
                   "beta_fast": 32.0, "beta_slow": 1.0, "mscale": c.pick([1.0, 0.707], "mscale"),
                   "mscale_all_dim": c.pick([0.0, 1.0, 0.707], "mscale_all_dim")}
        if scaling["type"] is None:
            del scaling["type"]
    layout = maybe_param(c, "layout", layout, [("neox", VALUE), (None, VALUE), (1, VALUE)], p=0.05)
    theta = maybe_param(c, "theta", theta, BAD_THETA, p=0.08)
    scaling = maybe_param(c, "scaling", scaling, BAD_SCALING, p=0.12)
    return dt, shape, maxpos, dict(positions=pos, layout=layout, theta=theta, scaling=scaling)


def mutate_positions(c: Case, pos: np.ndarray, maxpos: int) -> np.ndarray:
    if pos.size and c.flag(0.08, "positions.negative?"):
        pos = pos.copy()
        pos.reshape(-1)[int(c.rng.integers(0, pos.size))] = c.pick([-1, -(2 ** 31)], "positions.neg")
        c.mut("positions: a negative value", VALUE)
    if pos.size and c.flag(0.04, "positions.huge?"):
        pos = pos.copy()
        pos.reshape(-1)[int(c.rng.integers(0, pos.size))] = 2 ** 31 - 1
        c.mut("positions: 2^31 - 1", VALUE, benign=False)
    return c.mutate_array("positions", pos, ok_dtypes=(I32,), fill=lambda s: c.ints(s, 0, maxpos, I32))


def rope_tol(b: dict, y: Any) -> tuple:
    pos = f64(b["positions"])
    maxpos = float(np.abs(pos[np.isfinite(pos)]).max()) if pos.size else 0.0
    rt, ar = tol_for(dtname(y))
    # the angle p * theta_i is a float32 product: its error grows with p
    return rt, ar + 4e-7 * maxpos


def rope_want(b: dict, backward: bool) -> np.ndarray:
    x = f64(b["dy" if backward else "x"])
    pos = np.asarray(b["positions"])
    if pos.dtype.kind not in "iu" or x.ndim not in (3, 4) or pos.shape != x.shape[:2]:
        raise ValueError(f"positions {pos.dtype} {pos.shape} do not fit x {x.shape}")
    f = rd.rope_backward if backward else rd.rope
    return f(x, pos, b["layout"], float(b["theta"]), b["scaling"])


ROPE_FIELDS = ("factor", "original_max_position", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


@op("rope", ("dsc_rope_forward", "rope"), ("x", "positions", "y", "layout", "theta", "scaling", "out", "dim")
    + ROPE_FIELDS,
    writes=("out",))
class Rope:
    def gen(self, c):
        dt, shape, maxpos, a = draw_rope(c)
        x = c.mutate_array("x", c.randn(shape, dt))
        a = dict(x=x, **a)
        a["positions"] = mutate_positions(c, a["positions"], maxpos)
        a["out"] = out_arg(c, "out", shape, dt, a, may_alias=("x",))
        return a

    def call(self, a):
        return dsc.rope(a["x"], a["positions"], layout=a["layout"], theta=a["theta"], scaling=a["scaling"],
                        out=a["out"])

    def check(self, c, b, y):
        rt, ar = rope_tol(b, y)
        close(y, rope_want(b, False), "y", rt, atol_rel=ar)
        written_out(c, c.args["out"], y, "y")


@op("rope_backward", ("dsc_rope_backward", "rope_backward"),
    ("dy", "positions", "dx", "layout", "theta", "scaling", "dim") + ROPE_FIELDS)
class RopeBackward:
    def gen(self, c):
        dt, shape, maxpos, a = draw_rope(c)
        a = dict(dy=c.mutate_array("dy", c.randn(shape, dt)), **a)
        a["positions"] = mutate_positions(c, a["positions"], maxpos)
        return a

    def call(self, a):
        return dsc.rope_backward(a["dy"], a["positions"], layout=a["layout"], theta=a["theta"],
                                 scaling=a["scaling"])

    def check(self, c, b, dx):
        rt, ar = rope_tol(b, dx)
        close(dx, rope_want(b, True), "dx", rt, atol_rel=ar)


# ----------------------------------------------------------------------------- matmul / linear

BAD_SCALAR = [(math.nan, VALUE), (math.inf, VALUE), (-math.inf, VALUE), (1e39, VALUE)] + NOT_A_NUMBER


def gemm_atol(absprod: np.ndarray, K: int, dtype: Any) -> np.ndarray:
    """Elementwise bound of FP32 accumulation over K terms (plus the output rounding)."""
    return absprod * (2e-7 * (K + 16) ** 0.5 * 8)


@op("matmul", ("dsc_matmul", "matmul"), ("a", "b", "out", "c", "alpha", "beta", "trans_a", "trans_b"), writes=("out",))
class Matmul:
    def gen(self, c):
        dt = float_dtype(c)
        batched = c.flag(0.3, "batched?")
        M, K, N = c.dims(3, "MKN", budget=1 << 15)
        Bt = c.pick([1, 2, 3, 0], "Bt") if batched else None
        b_batched = batched and c.flag(0.5, "b_batched?")
        ta, tb = c.flag(0.5, "trans_a"), c.flag(0.5, "trans_b")
        sa = (K, M) if ta else (M, K)
        sb = (N, K) if tb else (K, N)
        a = c.randn(((Bt,) if batched else ()) + sa, dt)
        b = c.randn(((Bt,) if b_batched else ()) + sb, dt)
        cshape = ((Bt,) if batched else ()) + (M, N)
        alpha = c.pick([1.0, 1.0, 0.0, -2.5, 0.5], "alpha")
        beta = c.pick([0.0, 0.0, 0.0, 1.0, -0.5], "beta")
        alpha = maybe_param(c, "alpha", alpha, BAD_SCALAR, p=0.06)
        beta = maybe_param(c, "beta", beta, BAD_SCALAR, p=0.06)
        args = dict(a=c.mutate_array("a", a), b=c.mutate_array("b", b), alpha=alpha, beta=beta, ta=ta, tb=tb)
        if isinstance(beta, float) and beta != 0.0 and not (math.isnan(beta)):
            # beta != 0 reads out: give one with values (or, rarely, none)
            if c.flag(0.9, "out_for_beta"):
                args["out"] = c.randn(cshape, dt)
                args["out"] = c.mutate_array("out", args["out"], role="out", p=0.15,
                                             kinds=["dtype", "shape", "layout", "py"])
                if args["out"] is None:
                    c.muts[-1].exc = ANY_DOC
            else:
                args["out"] = None
                c.mut("beta != 0 without out", VALUE)
        else:
            args["out"] = out_arg(c, "out", cshape, dt, args)
        return args

    def call(self, a):
        return dsc.matmul(a["a"], a["b"], trans_a=a["ta"], trans_b=a["tb"], alpha=a["alpha"], beta=a["beta"],
                          out=a["out"])

    def check(self, c, b, out):
        A, B = f64(b["a"]), f64(b["b"])
        alpha, beta = float(b["alpha"]), float(b["beta"])
        C = f64(b["out"]) if beta != 0.0 else None
        want = rd.matmul(A, B, b["ta"], b["tb"], alpha, beta, C)
        if alpha == 0.0:  # BLAS: alpha = 0 does not read a and b (NaN there does not reach out)
            want = beta * C if C is not None else np.zeros_like(want)
        absprod = abs(alpha) * rd.matmul(np.abs(A), np.abs(B), b["ta"], b["tb"])
        if C is not None:
            absprod = absprod + abs(beta) * np.abs(C)
        K = A.shape[-2] if b["ta"] else A.shape[-1]
        rt, _ = tol_for(dtname(out))
        with np.errstate(invalid="ignore"):
            close(out, want, "out", rt, atol=np.nan_to_num(gemm_atol(absprod, K, dtname(out)), posinf=0.0),
                  nonfinite="any")
        written_out(c, c.args["out"], out, "out")


def draw_linear(c: Case):
    dt = float_dtype(c)
    lead = c.dims(c.draw(st.integers(0, 3), "rank_lead"), "lead", budget=1 << 10)
    K, N = c.dims(2, "KN", budget=1 << 14)
    if math.prod(lead) * max(K, 1) > 1 << 21 or math.prod(lead) * max(N, 1) > 1 << 21:
        lead = [1] * len(lead)
    x = c.randn(tuple(lead) + (K,), dt)
    w = c.randn((N, K), dt)
    return dt, x, w


def linear_check(x, w, y, what="y"):
    X, W = f64(x), f64(w)
    want = rd.linear(X, W)
    absprod = np.abs(X) @ np.abs(W).T
    close(y, want, what, tol_for(dtname(y))[0], atol=gemm_atol(absprod, X.shape[-1], dtname(y)), nonfinite="any")


@op("linear", ("dsc_linear_forward", "linear"), ("x", "w", "y", "out"), writes=("out",))
class Linear:
    def gen(self, c):
        dt, x, w = draw_linear(c)
        a = dict(x=c.mutate_array("x", x), w=c.mutate_array("w", w))
        a["out"] = out_arg(c, "out", x.shape[:-1] + (w.shape[0],), dt, a)
        return a

    def call(self, a):
        return dsc.linear(a["x"], a["w"], out=a["out"])

    def check(self, c, b, y):
        linear_check(b["x"], b["w"], y)
        written_out(c, c.args["out"], y, "y")


@op("linear_forward", ("dsc_linear_forward", "linear_forward"), ("x", "w", "y"))
class LinearForward:
    def gen(self, c):
        dt, x, w = draw_linear(c)
        return dict(x=c.mutate_array("x", x), w=c.mutate_array("w", w))

    def call(self, a):
        return dsc.linear_forward(a["x"], a["w"])

    def check(self, c, b, res):
        y, ctx = res
        linear_check(b["x"], b["w"], y)
        if ctx.x is not c.args["x"] or ctx.w is not c.args["w"]:
            fail("ctx does not hold x and w")


@op("linear_backward", ("dsc_linear_backward", "linear_backward"), ("dy", "x", "w", "dx", "dw", "ctx"))
class LinearBackward:
    def gen(self, c):
        dt, x, w = draw_linear(c)
        ctx = dsc.LinearCtx(x, w)
        dy = c.randn(x.shape[:-1] + (w.shape[0],), dt)
        return dict(dy=c.mutate_array("dy", dy), ctx=mutate_ctx(c, ctx, dict(x={}, w={}), "LinearCtx"))

    def call(self, a):
        return dsc.linear_backward(a["dy"], a["ctx"])

    def check(self, c, b, res):
        dx, dw = res
        dy, x, w = f64(b["dy"]), f64(b["ctx"].x), f64(b["ctx"].w)
        rows = math.prod(dy.shape[:-1])
        if x.shape[:-1] != dy.shape[:-1]:
            raise ValueError("dy and x rows differ")
        dy2, x2 = dy.reshape(rows, dy.shape[-1]), x.reshape(rows, x.shape[-1])
        want_dx, want_dw = dy @ w, dy2.T @ x2
        ady, ax = np.abs(dy), np.abs(x)
        close(dx, want_dx, "dx", tol_for(dtname(dx))[0], atol=gemm_atol(ady @ np.abs(w), w.shape[0], ""),
              nonfinite="any")
        absdw = np.abs(dy2).T @ np.abs(x2)
        close(dw, want_dw, "dw", tol_for(dtname(dw))[0], atol=gemm_atol(absdw, math.prod(dy.shape[:-1]), ""),
              nonfinite="any")
        if dtname(dw) != dtname(b["ctx"].w):
            fail(f"dw dtype {dtname(dw)}, want the dtype of w {dtname(b['ctx'].w)}")


# ----------------------------------------------------------------------------- SwiGLU


def draw_swiglu(c: Case):
    dt = float_dtype(c)
    shape = tuple(c.dims(c.draw(st.integers(1, 5), "rank"), "shape"))
    return dt, shape, c.randn(shape, dt, scale=c.pick([1.0, 5.0, 100.0], "gscale")), c.randn(shape, dt)


# silu(g) * u with u = inf: inf, -inf or NaN as silu(g) rounds to a tiny number or to 0
SWIGLU_NF = dict(nonfinite="any")


@op("swiglu", ("dsc_swiglu_forward", "swiglu"), ("gate", "up", "out"), writes=("out",))
class SwiGLU:
    def gen(self, c):
        dt, shape, g, u = draw_swiglu(c)
        a = dict(gate=c.mutate_array("gate", g), up=c.mutate_array("up", u))
        a["out"] = out_arg(c, "out", shape, dt, a, may_alias=("gate", "up"))
        return a

    def call(self, a):
        return dsc.swiglu(a["gate"], a["up"], out=a["out"])

    def check(self, c, b, out):
        close(out, rd.swiglu(f64(b["gate"]), f64(b["up"])), "out", *tol_for(dtname(out)), **SWIGLU_NF)
        written_out(c, c.args["out"], out, "out")


@op("swiglu_forward", ("dsc_swiglu_forward", "swiglu_forward"), ("gate", "up", "out"))
class SwiGLUForward:
    def gen(self, c):
        dt, shape, g, u = draw_swiglu(c)
        return dict(gate=c.mutate_array("gate", g), up=c.mutate_array("up", u))

    def call(self, a):
        return dsc.swiglu_forward(a["gate"], a["up"])

    def check(self, c, b, res):
        close(res[0], rd.swiglu(f64(b["gate"]), f64(b["up"])), "out", *tol_for(dtname(res[0])), **SWIGLU_NF)


@op("swiglu_backward", ("dsc_swiglu_backward", "swiglu_backward"), ("dout", "gate", "up", "dgate", "dup", "ctx"))
class SwiGLUBackward:
    def gen(self, c):
        dt, shape, g, u = draw_swiglu(c)
        ctx = mutate_ctx(c, dsc.SwiGLUCtx(g, u), dict(gate={}, up={}), "SwiGLUCtx")
        return dict(dout=c.mutate_array("dout", c.randn(shape, dt)), ctx=ctx)

    def call(self, a):
        return dsc.swiglu_backward(a["dout"], a["ctx"])

    def check(self, c, b, res):
        wg, wu = rd.swiglu_backward(f64(b["dout"]), f64(b["ctx"].gate), f64(b["ctx"].up))
        close(res[0], wg, "dgate", *tol_for(dtname(res[0])), **SWIGLU_NF)
        close(res[1], wu, "dup", *tol_for(dtname(res[1])), **SWIGLU_NF)


# ----------------------------------------------------------------------------- embedding


def draw_embedding(c: Case):
    dt = float_dtype(c)
    ishape = tuple(c.dims(c.draw(st.integers(0, 4), "ids_rank"), "ids", budget=1 << 12))
    V = c.pick([1, 2, 3, 7, 64, 129, 1000], "V")
    D = c.pick([0, 1, 2, 5, 16, 128], "D")
    if c.flag(0.03, "big_V"):
        V, D = 1 << 20, 1
    ids = c.ints(ishape, 0, V, c.pick([I32, I64], "ids_dtype"))
    table = c.randn((V, D), dt)
    return dt, ids, table


def mutate_ids(c: Case, ids: np.ndarray, V: int, name: str = "ids") -> np.ndarray:
    if ids.size and c.flag(0.1, f"{name}.out_of_range?"):
        ids = ids.copy()
        bad = c.pick([-1, V, V + 1000, -(2 ** 31), 2 ** 31 - 1] + ([2 ** 40] if ids.dtype == I64 else []),
                     f"{name}.bad")
        ids.reshape(-1)[int(c.rng.integers(0, ids.size))] = bad
        c.mut(f"{name}: value {bad} out of [0, {V})", VALUE)
    return c.mutate_array(name, ids, ok_dtypes=(I32, I64), fill=lambda s: c.ints(s, 0, max(V, 1), I32))


def ids_ok(ids: Any, V: int) -> np.ndarray:
    i = np.asarray(ids)
    if i.dtype.kind not in "iu":
        raise ValueError(f"ids dtype {i.dtype}")
    if i.size and (i.min() < 0 or i.max() >= V):
        raise ValueError("ids out of range")
    return i.astype(np.int64)


@op("embedding", ("dsc_embedding_forward", "embedding"), ("ids", "table", "out"), writes=("out",))
class Embedding:
    def gen(self, c):
        dt, ids, table = draw_embedding(c)
        a = dict(ids=mutate_ids(c, ids, table.shape[0]), table=c.mutate_array("table", table))
        a["out"] = out_arg(c, "out", ids.shape + (table.shape[1],), dt, a)
        return a

    def call(self, a):
        return dsc.embedding(a["ids"], a["table"], out=a["out"])

    def check(self, c, b, out):
        t = host(b["table"])
        exact(out, t[ids_ok(b["ids"], t.shape[0])], "out")
        written_out(c, c.args["out"], out, "out")


@op("embedding_forward", ("dsc_embedding_forward", "embedding_forward"), ("ids", "table", "out"))
class EmbeddingForward:
    def gen(self, c):
        dt, ids, table = draw_embedding(c)
        return dict(ids=mutate_ids(c, ids, table.shape[0]), table=c.mutate_array("table", table))

    def call(self, a):
        return dsc.embedding_forward(a["ids"], a["table"])

    def check(self, c, b, res):
        out, ctx = res
        t = host(b["table"])
        exact(out, t[ids_ok(b["ids"], t.shape[0])], "out")
        if (ctx.num_embeddings, ctx.dim) != t.shape:
            fail(f"ctx (num_embeddings, dim) = {(ctx.num_embeddings, ctx.dim)}, want {t.shape}")


@op("embedding_backward", ("dsc_embedding_backward", "embedding_backward"),
    ("ids", "dout", "dtable", "ctx", "num_embeddings", "dim"))
class EmbeddingBackward:
    def gen(self, c):
        dt, ids, table = draw_embedding(c)
        V, D = table.shape
        ctx = dsc.EmbeddingCtx(ids, V, D)
        if c.flag(0.08, "ctx.ids?"):
            ctx = dsc.EmbeddingCtx(mutate_ids(c, ids, V, "ctx.ids"), V, D)
        ctx = mutate_ctx(c, ctx, dict(num_embeddings="int", dim="int"), "EmbeddingCtx")
        dout = c.randn(ids.shape + (D,), dt)
        return dict(dout=c.mutate_array("dout", dout), ctx=ctx)

    def call(self, a):
        return dsc.embedding_backward(a["dout"], a["ctx"])

    def check(self, c, b, dt):
        ctx = b["ctx"]
        V = ctx.num_embeddings
        ids = ids_ok(ctx.ids, V).reshape(-1)
        dout = f64(b["dout"])
        if dout.shape != np.shape(ctx.ids) + (ctx.dim,):
            raise ValueError("dout does not fit ids and dim")
        want = np.zeros((V, ctx.dim))
        np.add.at(want, ids, dout.reshape(ids.size, ctx.dim))
        absum = np.zeros((V, ctx.dim))
        np.add.at(absum, ids, np.abs(dout.reshape(ids.size, ctx.dim)))
        close(dt, want, "dtable", 1e-5, atol=absum * 2e-5)  # float32 sums of many rows


# ----------------------------------------------------------------------------- cross-entropy


@op("cross_entropy", ("dsc_cross_entropy", "cross_entropy"),
    ("logits", "targets", "loss", "dlogits", "ignore_index", "grad_scale", "lse"))
class CrossEntropy:
    def gen(self, c):
        dt = float_dtype(c)
        lead = tuple(c.dims(c.draw(st.integers(0, 3), "rank_lead"), "lead", budget=1 << 10))
        V = c.pick([1, 2, 5, 127, 128, 129, 1000], "V")
        if c.flag(0.03, "big_V"):
            lead, V = (1,), 1 << 20
        logits = c.randn(lead + (V,), dt, scale=c.pick([1.0, 10.0, 1e-3], "lscale"))
        ignore = c.pick([-100, -1, 0, 2 ** 40], "ignore_index")
        t = c.ints(lead, 0, V, c.pick([I32, I64], "targets_dtype"))
        if t.size and c.flag(0.5, "some ignored?"):
            m = c.rng.random(t.shape) < 0.3
            if ignore == 2 ** 40 and t.dtype == I32:
                ignore = -100
            t[m] = ignore
        if t.size and c.flag(0.08, "targets.bad?"):
            bad = c.pick([-2, V, V + 7, -(2 ** 31)], "targets.bad")
            if bad != ignore:
                t.reshape(-1)[int(c.rng.integers(0, t.size))] = bad
                c.mut(f"targets: value {bad} (ignore_index {ignore})", VALUE)
        a = dict(logits=c.mutate_array("logits", logits),
                 targets=c.mutate_array("targets", t, ok_dtypes=(I32, I64), fill=lambda s: c.ints(s, 0, V, I32)))
        a["ignore_index"] = maybe_param(c, "ignore_index", ignore, [(2 ** 70, ANY_DOC), (-(2 ** 70), ANY_DOC)]
                                        + NOT_AN_INT, p=0.06)
        a["grad_scale"] = maybe_param(c, "grad_scale", c.pick([1.0, 0.5, 0.0, 1e3, -1.0], "grad_scale"),
                                      BAD_SCALAR, p=0.06)
        a["return_dlogits"] = c.flag(0.8, "return_dlogits")
        return a

    def call(self, a):
        return dsc.cross_entropy(a["logits"], a["targets"], ignore_index=a["ignore_index"],
                                 grad_scale=a["grad_scale"], return_dlogits=a["return_dlogits"])

    def check(self, c, b, res):
        loss, dl = res
        z = f64(b["logits"])
        t = np.asarray(b["targets"])
        if t.dtype.kind not in "iu" or t.shape != z.shape[:-1]:
            raise ValueError("targets do not fit")
        ig = int(b["ignore_index"])
        valid = t != ig
        if valid.any() and (t[valid].min() < 0 or t[valid].max() >= z.shape[-1]):
            raise ValueError("targets out of range")
        want_loss, want_dl = rd.cross_entropy(z, np.where(valid, t, ig), ig, float(b["grad_scale"]))
        if host(loss).shape != ():
            fail(f"loss shape {host(loss).shape}, want ()")
        # an inf logit: lse is inf, and inf - inf makes NaN where the exact value is +-inf
        close(loss, want_loss, "loss", 1e-4 if dtname(b["logits"]) == "float32" else 1e-3, atol=1e-5,
              nonfinite="any")
        if b["return_dlogits"]:
            # a row with an inf or NaN logit has no meaningful softmax: NaN or any value there
            bad_rows = ~np.isfinite(z).all(axis=-1, keepdims=True) & valid[..., None]
            got = np.where(bad_rows, 0.0, f64(host(dl)))
            close(got, np.where(bad_rows, 0.0, want_dl), "dlogits", *tol_for(dtname(dl)))
        elif dl is not None:
            fail("dlogits returned with return_dlogits=False")


# ----------------------------------------------------------------------------- optimizer


def draw_tensor_list(c: Case, name: str, n: int, dtype=F32) -> list:
    return [c.randn(tuple(c.dims(c.draw(st.integers(0, 3), f"{name}{i}.rank"), f"{name}{i}", budget=1 << 12)), dtype)
            for i in range(n)]


def mutate_list(c: Case, name: str, lst: list, ok_dtypes=(F32,), p: float = 0.15, role: str = "in") -> Any:
    if not c.flag(p, f"{name}.list_mutate?"):
        return lst
    how = c.pick(["element", "element", "empty", "None", "tuple", "array", "drop"], f"{name}.list_how")
    if how == "element" and lst:
        i = c.draw(st.integers(0, len(lst) - 1), f"{name}.i")
        lst = list(lst)
        lst[i] = c.mutate_array(f"{name}[{i}]", lst[i], p=1.0, ok_dtypes=ok_dtypes, role=role)
        return lst
    if how == "empty":
        c.mut(f"{name}: empty list", VALUE)
        return []
    if how == "None":
        c.mut(f"{name}: None", TYPE)
        return None
    if how == "tuple":
        c.mut(f"{name}: a tuple", benign=True)
        return tuple(lst)
    if how == "array" and lst:
        c.mut(f"{name}: an array instead of a list", ANY_DOC)
        return lst[0]
    if how == "drop" and lst:
        c.mut(f"{name}: one tensor fewer", VALUE)
        return lst[:-1]
    return lst


@op("global_norm", ("dsc_global_norm", "global_norm"), ("tensors",))
class GlobalNorm:
    def gen(self, c):
        ts = draw_tensor_list(c, "t", c.draw(st.integers(1, 4), "n"))
        if c.flag(0.05, "big?"):
            ts.append(c.randn((BIG,), F32))
        return dict(tensors=mutate_list(c, "tensors", ts))

    def call(self, a):
        return dsc.global_norm(a["tensors"])

    def check(self, c, b, norm):
        ts = b["tensors"]
        if isinstance(ts, np.ndarray):
            ts = list(ts)
        for t in ts:
            if np.asarray(t).dtype != F32:
                raise ValueError(f"a {np.asarray(t).dtype} tensor was accepted")
        want = rd.global_norm([f64(t) for t in ts])
        if not isinstance(norm, float):
            fail(f"global_norm returned {type(norm).__name__}, want float")
        close(np.float64(norm), want, "norm", 1e-5)


@op("adamw_step", ("dsc_adamw_step", "adamw_step"),
    ("params", "grads", "exp_avg", "exp_avg_sq", "lr", "step", "beta1", "beta2", "eps", "weight_decay",
     "max_grad_norm"), writes=("params", "exp_avg", "exp_avg_sq"))
class AdamW:
    def gen(self, c):
        n = c.draw(st.integers(1, 3), "n")
        params = draw_tensor_list(c, "p", n)
        grads = [c.randn(p.shape, F32) for p in params]
        mdt = c.pick([F32, BF16], "moments")
        m = [c.randn(p.shape, mdt, scale=0.1) for p in params]
        v = [cast(np.abs(c.rng.standard_normal(p.shape)) * 0.01, mdt) for p in params]
        kw = dict(lr=c.pick([1e-3, 0.1, 0.0], "lr"), step=c.pick([1, 2, 1000], "step"),
                  beta1=c.pick([0.9, 0.0], "beta1"), beta2=c.pick([0.95, 0.999], "beta2"),
                  eps=c.pick([1e-8, 1e-6], "eps"), weight_decay=c.pick([0.1, 0.0], "wd"),
                  max_grad_norm=c.pick([0.0, 0.0, 1.0, 1e-3], "clip"))
        kw["lr"] = maybe_param(c, "lr", kw["lr"], [(math.nan, VALUE), (math.inf, VALUE), (-1e-3, VALUE)]
                               + NOT_A_NUMBER, p=0.04)
        kw["step"] = maybe_param(c, "step", kw["step"], [(0, VALUE), (-1, VALUE), (True, TYPE)] + NOT_AN_INT
                                 + HUGE_INTS, p=0.06)
        kw["beta1"] = maybe_param(c, "beta1", kw["beta1"], [(1.0, VALUE), (-0.1, VALUE), (math.nan, VALUE)], p=0.04)
        kw["beta2"] = maybe_param(c, "beta2", kw["beta2"], [(1.0, VALUE), (1.5, VALUE), (math.inf, VALUE)], p=0.04)
        kw["eps"] = maybe_param(c, "eps", kw["eps"], [(-1e-8, VALUE), (math.nan, VALUE)] + NOT_A_NUMBER, p=0.04)
        kw["weight_decay"] = maybe_param(c, "weight_decay", kw["weight_decay"], [(-0.1, VALUE), (math.inf, VALUE)],
                                         p=0.04)
        kw["max_grad_norm"] = maybe_param(c, "max_grad_norm", kw["max_grad_norm"], [(-1.0, VALUE), (math.nan, VALUE)],
                                          p=0.04)
        a = dict(params=mutate_list(c, "params", params, role="out"), grads=mutate_list(c, "grads", grads),
                 exp_avg=mutate_list(c, "exp_avg", m, ok_dtypes=(), role="out"),
                 exp_avg_sq=mutate_list(c, "exp_avg_sq", v, ok_dtypes=(), role="out"), **kw)
        if c.flag(0.08, "alias?") and isinstance(a["params"], list) and isinstance(a["grads"], list):
            how = c.pick(["params twice", "m is v", "m is grad", "grads twice", "param is grad"], "alias")
            P, G, M, Vv = (list(a[k]) if isinstance(a[k], (list, tuple)) else a[k]
                           for k in ("params", "grads", "exp_avg", "exp_avg_sq"))
            try:
                if how == "params twice" and len(P) > 1 and P[0].shape == P[1].shape:
                    P[1] = P[0]
                    c.mut("params[1] is params[0]", VALUE)
                elif how == "m is v" and M[0].dtype == Vv[0].dtype:
                    M[0] = Vv[0]
                    c.mut("exp_avg[0] is exp_avg_sq[0]", VALUE)
                elif how == "m is grad" and M[0].dtype == F32:
                    M[0] = G[0]
                    c.mut("exp_avg[0] is grads[0]", VALUE)
                elif how == "grads twice" and len(G) > 1 and G[0].shape == G[1].shape:
                    G[1] = G[0]
                    c.mut("grads[1] is grads[0]", benign=True)
                elif how == "param is grad":
                    P[0] = G[0]
                    c.mut("params[0] is grads[0]", VALUE)
            except (TypeError, IndexError, AttributeError):
                pass
            a.update(params=P, grads=G, exp_avg=M, exp_avg_sq=Vv)
        return a

    def call(self, a):
        return dsc.adamw_step(a["params"], a["grads"], a["exp_avg"], a["exp_avg_sq"], lr=a["lr"], step=a["step"],
                              beta1=a["beta1"], beta2=a["beta2"], eps=a["eps"], weight_decay=a["weight_decay"],
                              max_grad_norm=a["max_grad_norm"])

    def check(self, c, b, norm):
        if not all(isinstance(b[k], (list, tuple)) for k in ("params", "grads", "exp_avg", "exp_avg_sq")):
            raise ValueError("not lists")
        b = dict(b)
        for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm"):
            b[k] = float(np.float32(b[k]))  # the C ABI takes float32 parameters
        after = c.args
        P, M, Vs, want_norm = [], [], [], None
        for i in range(len(b["params"])):
            bf = np.asarray(b["exp_avg"][i]).dtype == BF16
            p_, m_, v_, nrm = rd.adamw_step([b["params"][i]], [b["grads"][i]], [b["exp_avg"][i]],
                                            [b["exp_avg_sq"][i]], lr=b["lr"], step=b["step"], beta1=b["beta1"],
                                            beta2=b["beta2"], eps=b["eps"], weight_decay=b["weight_decay"],
                                            max_grad_norm=0.0, moments_bf16=bf)
            P.append(p_[0])
            M.append(m_[0])
            Vs.append(v_[0])
        want_norm = rd.global_norm([f64(g) for g in b["grads"]])
        close(np.float64(norm), want_norm, "returned norm", 1e-5)
        if b["max_grad_norm"] > 0:  # recompute with the clipped grads
            cl = min(1.0, b["max_grad_norm"] / (want_norm + 1e-6))
            P, M, Vs, _ = [], [], [], None
            for i in range(len(b["params"])):
                bf = np.asarray(b["exp_avg"][i]).dtype == BF16
                p_, m_, v_, _n = rd.adamw_step([b["params"][i]], [f64(b["grads"][i]) * cl], [b["exp_avg"][i]],
                                               [b["exp_avg_sq"][i]], lr=b["lr"], step=b["step"], beta1=b["beta1"],
                                               beta2=b["beta2"], eps=b["eps"], weight_decay=b["weight_decay"],
                                               max_grad_norm=0.0, moments_bf16=bf)
                P.append(p_[0])
                M.append(m_[0])
                Vs.append(v_[0])
        for i in range(len(P)):
            bf = np.asarray(b["exp_avg"][i]).dtype == BF16
            rt = 1e-2 if bf else 1e-5
            close(after["params"][i], P[i], f"params[{i}]", rt, atol=1e-6 + (b["lr"] * 1e-2 if bf else 0))
            close(after["exp_avg"][i], M[i], f"exp_avg[{i}]", rt, atol=1e-7)
            close(after["exp_avg_sq"][i], Vs[i], f"exp_avg_sq[{i}]", rt, atol=1e-9)


# ============================================================================= FP8

FP8_FMT = {"e4m3": E4M3, "e5m2": E5M2}
FMT_SPELLINGS = {"e4m3": ["e4m3", "float8_e4m3fn", "fp8", E4M3], "e5m2": ["e5m2", "float8_e5m2", E5M2]}
BAD_DTYPE_NAMES = [("int8", TYPE), ("float16", TYPE), (None, TYPE), (5, TYPE), ("e3m4", TYPE)]
BAD_BLOCKS = [((0, 128), VALUE), ((-1, 128), VALUE), ((1, 0), VALUE), ((2 ** 31, 1), VALUE), ((1, 2 ** 40), VALUE),
              ((1,), VALUE), ((1, 2, 3), VALUE), ("ab", ANY_DOC), (None, ANY_DOC), ((1.5, 128), ANY_DOC),
              ((True, 128), ANY_DOC)]
BLOCKS = [(1, 128), (1, 128), (128, 128), (1, 1), (1, 64), (3, 5), (128, 1), (1, 1000), (7, 129)]


def fp8_values(c: Case, shape: tuple, fmt: str) -> np.ndarray:
    """float64 values around the fp8 grid of fmt: normals of several scales, codes, ties
    between neighbouring codes, subnormals, zeros of both signs, huge values."""
    n = math.prod(shape)
    kind = c.pick(["normal", "normal", "grid", "wide"], "values")
    if kind == "normal":
        v = c.rng.standard_normal(n) * c.pick([1.0, 1e-3, 1e3, 1e5, 1e-6], "vscale")
    else:
        codes = np.arange(256, dtype=np.uint8).view(FP8_FMT[fmt]).astype(np.float64)
        codes = np.sort(codes[np.isfinite(codes)])
        mids = (codes[1:] + codes[:-1]) / 2
        pool = np.concatenate([codes, mids, -mids, [0.0, -0.0, 1e30, -1e30, 6e4, 500.0, 449.0, 464.0, 2.0 ** -10]])
        v = c.rng.choice(pool, n)
        if kind == "wide":
            v = v * 2.0 ** c.rng.integers(-20, 20, n)
    return v.reshape(shape)


def fp8_codes(c: Case, shape: tuple, dt: np.dtype = E4M3) -> np.ndarray:
    """Random finite fp8 values (never all zero)."""
    v = c.rng.standard_normal(shape) * c.pick([1.0, 30.0, 0.05], "qscale")
    return cast(v, dt)


def pos_scales(c: Case, shape: tuple) -> np.ndarray:
    return (2.0 ** c.rng.uniform(-12, 4, shape)).astype(np.float32)


def mutate_scale_values(c: Case, name: str, s: np.ndarray) -> np.ndarray:
    """Scales must be finite and > 0: a zero, negative, NaN or inf one is a ValueError."""
    if s.size and c.flag(0.06, f"{name}.badval?"):
        s = s.copy()
        v = c.pick([0.0, -1.0, np.nan, np.inf, -0.0], f"{name}.badval")
        s.reshape(-1)[int(c.rng.integers(0, s.size))] = v
        c.mut(f"{name}: a scale {v}", VALUE)
    return s


@op("fp8_cast", ("dsc_fp8_cast", "fp8_cast"), ("src", "dst", "dtype", "x"))
class FP8Cast:
    def gen(self, c):
        src = c.pick([F32, BF16, E4M3, E5M2], "src")
        shape = tuple(c.dims(c.draw(st.integers(0, 4), "rank"), "x"))
        if src in (E4M3, E5M2):
            x = fp8_codes(c, shape, src)
            dst = c.pick(["float32", "bfloat16", "f32", "bf16", np.float32, BF16], "dst")
        else:
            fmt = c.pick(["e4m3", "e5m2"], "fmt")
            x = cast(fp8_values(c, shape, fmt), src)
            dst = c.pick(FMT_SPELLINGS[fmt], "dst")
        name = np.dtype(dst).name if not isinstance(dst, str) else dst
        if c.flag(0.05, "same_kind?"):  # float -> float or fp8 -> fp8: not a cast this function does
            dst = c.pick(["float32", "bfloat16"] if src in FLOATS else ["e4m3", "e5m2"], "dst2")
            c.mut(f"cast {src.name} -> {dst}", TYPE)
        dst = maybe_param(c, "dtype", dst, BAD_DTYPE_NAMES, p=0.05)
        return dict(x=c.mutate_array("x", x), dtype=dst)

    def call(self, a):
        return dsc.fp8_cast(a["x"], a["dtype"])

    def check(self, c, b, y):
        x = np.asarray(host(b["x"]))
        yd = np.dtype(host(y).dtype)
        if x.dtype in (E4M3, E5M2) and yd in (F32, BF16):
            exact(y, f64(x), "dst")  # exact widening
        elif x.dtype in (F32, BF16) and yd in (E4M3, E5M2):
            fmt = "e4m3" if yd == E4M3 else "e5m2"
            exact(y, rf.fp8_round(f64(x), fmt), "dst")
            gy = host(y)
            want = rf.fp8_round(f64(x), fmt)
            num = ~np.isnan(want)
            if not np.array_equal(np.signbit(f64(gy))[num], np.signbit(want)[num]):
                fail("dst: the sign of a zero differs from the reference")
            # bit-identical to ml_dtypes wherever ml_dtypes does not overflow (it gives NaN / inf
            # past the largest finite; deepseek_c saturates, as documented)
            inside = ~(np.isfinite(f64(x)) & (np.abs(f64(x)) > rf.fp8_max(fmt) * (1 + 2.0 ** -5)))
            ml = np.asarray(x, np.float32).astype(yd)
            if not np.array_equal(gy.view(np.uint8)[inside], ml.view(np.uint8)[inside]):
                i = np.argwhere((gy.view(np.uint8) != ml.view(np.uint8)) & inside)[0]
                fail(f"dst: bits differ from ml_dtypes at {tuple(i)}: x {x[tuple(i)]!r} -> {gy.view(np.uint8)[tuple(i)]}"
                     f" vs {ml.view(np.uint8)[tuple(i)]}")
        else:
            fail(f"cast {x.dtype} -> {yd} was accepted")


def draw_quant(c: Case):
    dt = float_dtype(c)
    block = c.pick(BLOCKS, "block")
    # (the reference loops over blocks in Python: at most a few thousand of them)
    shape = tuple(c.dims(c.draw(st.integers(1, 4), "rank"), "x", budget=min(1 << 14, 2048 * block[0] * block[1])))
    fmt = c.pick(["e4m3", "e5m2"], "fmt")
    x = cast(fp8_values(c, shape, fmt) * c.pick([1.0, 1e-3, 1e3], "qscale"), dt)
    amax_floor = c.pick([1e-4, 1e-4, 1e-30, 1.0, rf.fp8_max(fmt) * 2.0 ** -126], "amax_floor")
    kw = dict(block=maybe_param(c, "block", block, BAD_BLOCKS, p=0.08),
              fmt=maybe_param(c, "fmt", c.pick(FMT_SPELLINGS[fmt], "fmt_spelling"), BAD_DTYPE_NAMES, p=0.04),
              pow2_scale=c.flag(0.3, "pow2"),
              amax_floor=maybe_param(c, "amax_floor", amax_floor, [(0.0, VALUE), (-1.0, VALUE), (math.nan, VALUE),
                                                                   (math.inf, VALUE), (1e-45, VALUE)] + NOT_A_NUMBER,
                                     p=0.06))
    return dt, fmt, c.mutate_array("x", x), kw


def quantize_ref(x, block, fmt, transpose, pow2, amax_floor):
    """rf.quantize (block by block, in Python) for up to 256 blocks; the same arithmetic
    vectorized over all blocks for more; also for an empty x (rf's reshape(-1, K) cannot)."""
    M, K = math.prod(x.shape[:-1]), x.shape[-1]
    R, C = (K, M) if transpose else (M, K)
    br, bc = block
    Rb, Cb = -(-R // br), -(-C // bc)
    if x.size == 0:
        return np.zeros((R, C)), np.zeros((Rb, Cb), np.float32)
    if Rb * Cb <= 256:
        return rf.quantize(x, block, fmt, transpose, pow2, amax_floor)
    x32 = np.asarray(x, np.float32).reshape(M, K)
    if transpose:
        x32 = x32.T
    a = np.where(np.isfinite(x32), np.abs(x32), np.float32(0))
    amax = np.maximum.reduceat(np.maximum.reduceat(a, np.arange(0, R, br), axis=0), np.arange(0, C, bc), axis=1)
    sc = (np.maximum(amax, np.float32(amax_floor)) / np.float32(rf.fp8_max(fmt))).astype(np.float32)
    if pow2:
        m, e = np.frexp(sc.astype(np.float64))
        sc = np.where(m == 0.5, sc, np.ldexp(1.0, e)).astype(np.float32)
    full = expand(sc, R, C, br, bc).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        q = rf.fp8_round((x32 / full).astype(np.float32), fmt)
    return q, sc


def expand(scale, R: int, C: int, br: int, bc: int) -> np.ndarray:
    """rf.expand by indexing (its np.repeat makes blocks x block size elements: 10^9 for
    block (1, 1000) over a million rows)."""
    s = np.asarray(scale, dtype=np.float64)
    return s[np.arange(R) // br][:, np.arange(C) // bc]


def dequantize_ref(q, scale, block):
    R, C = math.prod(q.shape[:-1]), q.shape[-1]
    if np.shape(scale) != (-(-R // block[0]), -(-C // block[1])):
        raise ValueError("scale shape")
    if q.size == 0:
        return np.zeros(q.shape)
    if R * C <= 1 << 12:
        return rf.dequantize(q, scale, block)
    return (np.asarray(q, np.float64).reshape(R, C) * expand(scale, R, C, *block)).reshape(q.shape)


def fmt_name(v: Any) -> str:
    n = v if isinstance(v, str) else np.dtype(v).name
    return "e5m2" if "e5m2" in n else "e4m3"


@op("fp8_quantize", ("dsc_fp8_quantize", "fp8_quantize"),
    ("x", "q", "scale", "block", "fmt", "amax_floor", "block_rows", "block_cols", "transpose", "pow2_scale"))
class FP8Quantize:
    def gen(self, c):
        dt, fmt, x, kw = draw_quant(c)
        return dict(x=x, transpose=c.flag(0.3, "transpose"), **kw)

    def call(self, a):
        return dsc.fp8_quantize(a["x"], block=a["block"], fmt=a["fmt"], transpose=a["transpose"],
                                pow2_scale=a["pow2_scale"], amax_floor=a["amax_floor"])

    def check(self, c, b, res):
        q, s = res
        x = host(b["x"])
        fmt = fmt_name(b["fmt"])
        if x.dtype not in FLOATS or x.ndim < 1:
            raise ValueError("x accepted")
        qw, sw = quantize_ref(x, tuple(b["block"]), fmt, b["transpose"], b["pow2_scale"], b["amax_floor"])
        exact(s, sw, "scale")
        gq = host(q)
        if np.dtype(gq.dtype) != FP8_FMT[fmt]:
            fail(f"q dtype {gq.dtype}, want {fmt}")
        want_shape = (qw.shape if b["transpose"] else x.shape)
        if gq.shape != want_shape:
            fail(f"q shape {gq.shape}, want {want_shape}")
        exact(f64(gq).reshape(qw.shape), qw, "q")


@op("fp8_dequantize", ("dsc_fp8_dequantize", "fp8_dequantize"), ("q", "scale", "block", "dtype", "out",
                                                                 "block_rows", "block_cols"))
class FP8Dequantize:
    def gen(self, c):
        qdt = c.pick([E4M3, E4M3, E5M2], "qdtype")
        shape = tuple(c.dims(c.draw(st.integers(1, 3), "rank"), "q", budget=1 << 14))
        q = fp8_codes(c, shape, qdt)
        block = c.pick(BLOCKS, "block")
        R, C = math.prod(shape[:-1]), shape[-1]
        s = pos_scales(c, (-(-R // block[0]), -(-C // block[1])))
        dtype = c.pick(["float32", "bfloat16", "f32", "bf16", np.float32], "dtype")
        return dict(q=c.mutate_array("q", q), scale=c.mutate_array("scale", mutate_scale_values(c, "scale", s),
                                                                    nonfinite=False),
                    block=maybe_param(c, "block", block, BAD_BLOCKS, p=0.08),
                    dtype=maybe_param(c, "dtype", dtype, BAD_DTYPE_NAMES + [("e4m3", TYPE)], p=0.05))

    def call(self, a):
        return dsc.fp8_dequantize(a["q"], a["scale"], block=a["block"], dtype=a["dtype"])

    def check(self, c, b, out):
        q = host(b["q"])
        if q.dtype not in (E4M3, E5M2) or q.ndim < 1:
            raise ValueError("q accepted")
        want = dequantize_ref(f64(q), f64(b["scale"]), tuple(b["block"]))
        close(out, want, "out", *((4e-3, 0.0) if dtname(out) == "bfloat16" else (1e-7, 0.0)))


@op("fp8_weight_dequant", ("dsc_fp8_dequantize", "fp8_weight_dequant"),
    ("weight", "weight_scale_inv", "q", "scale", "dtype", "out"))
class FP8WeightDequant:
    def gen(self, c):
        N, K = c.dims(2, "NK", budget=1 << 15)
        w = fp8_codes(c, (N, K))
        s = pos_scales(c, (-(-N // 128), -(-K // 128)))
        return dict(w=c.mutate_array("weight", w), s=c.mutate_array("weight_scale_inv", mutate_scale_values(
            c, "weight_scale_inv", s), nonfinite=False), dtype=c.pick(["bfloat16", "float32"], "dtype"))

    def call(self, a):
        return dsc.fp8_weight_dequant(a["w"], a["s"], a["dtype"])

    def check(self, c, b, out):
        q = host(b["w"])
        if q.dtype not in (E4M3, E5M2) or q.ndim < 1:  # (leading dims flatten, as in fp8_dequantize)
            raise ValueError("weight accepted")
        want = dequantize_ref(f64(q), f64(b["s"]), (128, 128))
        close(out, want, "out", *((4e-3, 0.0) if dtname(out) == "bfloat16" else (1e-7, 0.0)))


def gemm_scale(c: Case, rows: int, Kb: int, name: str) -> np.ndarray:
    """[rows, Kb] (1x128 tiles) or [ceil(rows/128), Kb] (128x128 blocks)."""
    per_block = c.flag(0.4, f"{name}.blocks?")
    return pos_scales(c, ((-(-rows // 128)) if per_block else rows, Kb))


def fp8_gemm_atol(a, sa, b, sb, K):
    """|A| |B|^T with the scales (the float32 accumulation bound)."""
    return rf.gemm(np.abs(a), np.abs(sa), np.abs(b), np.abs(sb)) * (1e-6 * (K + 16) ** 0.5 * 4)


FP8_GEMM_ARGS = ("a", "a_scale", "b", "b_scale", "c", "out_dtype")


@op("fp8_gemm", ("dsc_fp8_gemm", "fp8_gemm"), FP8_GEMM_ARGS)
class FP8Gemm:
    def gen(self, c):
        M, K, N = c.dims(3, "MKN", budget=1 << 15)
        Kb = -(-K // 128)
        adt = c.pick([E4M3, E4M3, E5M2], "adtype")
        a, b = fp8_codes(c, (M, K), adt), fp8_codes(c, (N, K), adt)
        sa, sb = gemm_scale(c, M, Kb, "a_scale"), gemm_scale(c, N, Kb, "b_scale")
        return dict(a=c.mutate_array("a", a), a_scale=c.mutate_array("a_scale", mutate_scale_values(c, "a_scale", sa),
                                                                      nonfinite=False),
                    b=c.mutate_array("b", b), b_scale=c.mutate_array("b_scale", mutate_scale_values(c, "b_scale", sb),
                                                                     nonfinite=False),
                    out_dtype=maybe_param(c, "out_dtype", c.pick(["bfloat16", "float32", "bf16"], "out_dtype"),
                                          BAD_DTYPE_NAMES, p=0.04))

    def call(self, a):
        return dsc.fp8_gemm(a["a"], a["a_scale"], a["b"], a["b_scale"], out_dtype=a["out_dtype"])

    def check(self, c, b, out):
        A, B = host(b["a"]), host(b["b"])
        if A.dtype not in (E4M3, E5M2) or B.dtype not in (E4M3, E5M2) or A.ndim != 2 or B.ndim != 2:
            raise ValueError("operands accepted")
        sa, sb = f64(b["a_scale"]), f64(b["b_scale"])
        M, K = A.shape
        N = B.shape[0]
        Kb = -(-K // 128)
        for s, rows in ((sa, M), (sb, N)):
            if s.ndim != 2 or s.shape[1] != Kb or s.shape[0] not in (rows, -(-rows // 128)):
                raise ValueError(f"scale shape {s.shape} accepted")
        want = rf.gemm(f64(A), sa, f64(B), sb)
        close(out, want, "c", tol_for(dtname(out))[0], atol=fp8_gemm_atol(f64(A), sa, f64(B), sb, K))


def list_arg_needs_numpy_a(c: Case, a: Any) -> None:
    """A Python list of ints is taken for NumPy callers only (the list becomes a host array)."""
    if not isinstance(a, np.ndarray):
        for m in c.muts:
            if "a Python list" in m.what and m.benign:
                m.benign = False


def group_offsets(c: Case, M: int, G: int, align: int) -> np.ndarray:
    cuts = np.sort(c.rng.integers(0, M // max(align, 1) + 1, G - 1)) * max(align, 1)
    return np.concatenate([[0], cuts, [M]]).astype(np.int32)


def mutate_offsets(c: Case, o: np.ndarray, M: int, align: int, name: str = "group_offsets",
                   lists: bool = False) -> Any:
    """lists: the function takes a Python list of ints too."""
    if c.flag(0.1, f"{name}.bad?"):
        o = o.copy()
        how = c.pick(["first", "last", "order", "align", "negative", "huge"], f"{name}.how")
        if how == "first":
            o[0] = 1
        elif how == "last":
            o[-1] = M + c.pick([1, -1, 128], f"{name}.by")
        elif how == "order" and len(o) > 2:
            o[1] = M + 1
        elif how == "align" and align > 1 and len(o) > 2:
            o[1] += 1
        elif how == "negative" and len(o) > 2:
            o[1] = -1
        elif how == "huge":
            o[-1] = 2 ** 31 - 1
        if not np.array_equal(o, o) or True:
            c.mut(f"{name}: {how} ({o.tolist()[:6]})", VALUE)
    if c.flag(0.1, f"{name}.as_list?"):
        c.mut(f"{name}: a Python list", TYPE, benign=lists)
        return o.tolist()
    return c.mutate_array(name, o, ok_dtypes=(I32,), fill=lambda s: c.ints(s, 0, max(M, 1), I32))


@op("fp8_grouped_gemm", ("dsc_fp8_grouped_gemm", "fp8_grouped_gemm"), FP8_GEMM_ARGS + ("group_offsets", "alignment"))
class FP8GroupedGemm:
    def gen(self, c):
        G = c.pick([1, 2, 3, 5], "G")
        align = c.pick([1, 1, 0, 4, 128], "alignment")
        M, K, N = c.dims(3, "MKN", budget=1 << 14, big=False)
        if align > 1:
            M = (M // align) * align
        Kb = -(-K // 128)
        a, b = fp8_codes(c, (M, K)), fp8_codes(c, (G, N, K))
        sa, sb = pos_scales(c, (M, Kb)), pos_scales(c, (G, -(-N // 128), Kb))
        offs = group_offsets(c, M, G, align)
        d = dict(a=c.mutate_array("a", a), a_scale=c.mutate_array("a_scale", mutate_scale_values(c, "a_scale", sa),
                                                                   nonfinite=False),
                 b=c.mutate_array("b", b), b_scale=c.mutate_array("b_scale", mutate_scale_values(c, "b_scale", sb),
                                                                  nonfinite=False),
                 group_offsets=mutate_offsets(c, offs, M, align, lists=True),
                 alignment=maybe_param(c, "alignment", align, [(-1, VALUE), (2 ** 31, ANY_DOC), (2 ** 40, ANY_DOC)]
                                       + NOT_AN_INT, p=0.05),
                 out_dtype=c.pick(["bfloat16", "float32"], "out_dtype"))
        list_arg_needs_numpy_a(c, d["a"])
        return d

    def call(self, a):
        return dsc.fp8_grouped_gemm(a["a"], a["a_scale"], a["b"], a["b_scale"], a["group_offsets"],
                                    alignment=a["alignment"], out_dtype=a["out_dtype"])

    def check(self, c, b, out):
        A, B = f64(b["a"]), f64(b["b"])
        o = np.asarray(b["group_offsets"])
        if A.ndim != 2 or B.ndim != 3 or o.shape != (B.shape[0] + 1,) or o[0] != 0 or o[-1] != A.shape[0] \
                or np.any(np.diff(o) < 0):
            raise ValueError("accepted")
        sa, sb = f64(b["a_scale"]), f64(b["b_scale"])
        want = rf.grouped_gemm(A, sa, B, sb, o)
        bound = rf.grouped_gemm(np.abs(A), sa, np.abs(B), sb, o) * (1e-6 * (A.shape[1] + 16) ** 0.5 * 4)
        close(out, want, "c", tol_for(dtname(out))[0], atol=bound)


@op("fp8_grouped_gemm_masked", ("dsc_fp8_grouped_gemm_masked", "fp8_grouped_gemm_masked"),
    FP8_GEMM_ARGS + ("masked_m",))
class FP8GroupedGemmMasked:
    def gen(self, c):
        G = c.pick([1, 2, 3, 5], "G")
        Mmax, K, N = c.dims(3, "MKN", budget=1 << 13, big=False)
        Kb = -(-K // 128)
        a, b = fp8_codes(c, (G, Mmax, K)), fp8_codes(c, (G, N, K))
        sa, sb = pos_scales(c, (G, Mmax, Kb)), pos_scales(c, (G, -(-N // 128), Kb))
        mm = c.ints((G,), 0, Mmax + 1, I32)
        if c.flag(0.08, "masked_m.bad?"):
            mm[int(c.rng.integers(0, G))] = c.pick([-1, Mmax + 1, 2 ** 31 - 1], "masked_m.bad")
            c.mut(f"masked_m: {mm.tolist()} with Mmax {Mmax}", VALUE)
        if c.flag(0.08, "masked_m.list?"):
            mm = mm.tolist()
            c.mut("masked_m: a Python list", TYPE, benign=True)  # (NumPy callers only: see gen's end)
        else:
            mm = c.mutate_array("masked_m", mm, ok_dtypes=(I32,), fill=lambda s: c.ints(s, 0, Mmax + 1, I32))
        a = dict(a=c.mutate_array("a", a), a_scale=c.mutate_array("a_scale", mutate_scale_values(c, "a_scale", sa),
                                                                   nonfinite=False),
                 b=c.mutate_array("b", b), b_scale=c.mutate_array("b_scale", mutate_scale_values(c, "b_scale", sb),
                                                                  nonfinite=False),
                 masked_m=mm, out_dtype=c.pick(["bfloat16", "float32"], "out_dtype"))
        list_arg_needs_numpy_a(c, a["a"])
        return a

    def call(self, a):
        return dsc.fp8_grouped_gemm_masked(a["a"], a["a_scale"], a["b"], a["b_scale"], a["masked_m"],
                                           out_dtype=a["out_dtype"])

    def check(self, c, b, out):
        A, B = f64(b["a"]), f64(b["b"])
        mm = np.asarray(b["masked_m"])
        if A.ndim != 3 or B.ndim != 3 or mm.shape != (A.shape[0],) or mm.min(initial=0) < 0 \
                or mm.max(initial=0) > A.shape[1]:
            raise ValueError("accepted")
        sa, sb = f64(b["a_scale"]), f64(b["b_scale"])
        want = rf.grouped_gemm_masked(A, sa, B, sb, mm)
        bound = rf.grouped_gemm_masked(np.abs(A), sa, np.abs(B), sb, mm) * (1e-6 * (A.shape[2] + 16) ** 0.5 * 4)
        close(out, want, "c", tol_for(dtname(out))[0], atol=bound)


def draw_fp8_linear(c: Case):
    dt = float_dtype(c)
    lead = tuple(c.dims(c.draw(st.integers(0, 2), "rank_lead"), "lead", budget=1 << 9, big=False))
    K, N = c.dims(2, "KN", budget=1 << 13, big=False)
    x = c.randn(lead + (K,), dt)
    w = c.randn((N, K), F32, scale=0.1)
    return dt, x, w


@op("fp8_linear_forward", ("dsc_fp8_linear_forward", "fp8_linear_forward"),
    ("x", "w", "w_master", "y", "xq", "xs", "wq", "ws", "out_dtype"))
class FP8LinearForward:
    def gen(self, c):
        dt, x, w = draw_fp8_linear(c)
        od = c.pick([None, "float32", "bfloat16"], "out_dtype")
        return dict(x=c.mutate_array("x", x), w=c.mutate_array("w_master", w),
                    out_dtype=maybe_param(c, "out_dtype", od, BAD_DTYPE_NAMES[:2] + [("e4m3", TYPE)], p=0.04))

    def call(self, a):
        return dsc.fp8_linear_forward(a["x"], a["w"], a["out_dtype"])

    def check(self, c, b, res):
        y, ctx = res
        x, w = host(b["x"]), host(b["w"])
        if x.dtype not in FLOATS or w.dtype != F32 or x.ndim < 1 or w.ndim != 2:
            raise ValueError("accepted")
        K = x.shape[-1]
        M = math.prod(x.shape[:-1])
        if w.shape[1] != K:
            raise ValueError("w accepted")
        if x.size == 0 or w.size == 0:  # the reference's reshape(-1, K) cannot: shapes only
            for t, shp in ((y, x.shape[:-1] + (w.shape[0],)), (ctx.xq, (M, K)), (ctx.wq, w.shape)):
                if host(t).shape != shp:
                    fail(f"shape {host(t).shape}, want {shp}")
            if w.shape[0] and K == 0 and M and np.any(f64(host(y)) != 0):
                fail("y: K = 0 must give zeros")
            return
        want, (xq, xs, wq, ws) = rf.linear_forward(x.reshape(M, K), w)
        exact(f64(host(ctx.xq)), xq, "xq")
        exact(ctx.xs, xs, "xs")
        exact(f64(host(ctx.wq)), wq, "wq")
        exact(ctx.ws, ws, "ws")
        want_dt = dtname(b["x"]) if b["out_dtype"] is None else b["out_dtype"]
        if dtname(y) != want_dt:
            fail(f"y dtype {dtname(y)}, want {want_dt}")
        bound = fp8_gemm_atol(xq, xs, wq, ws, K)
        close(f64(host(y)).reshape(want.shape), want, "y", tol_for(dtname(y))[0], atol=bound)


@op("fp8_linear_backward", ("dsc_fp8_linear_backward", "fp8_linear_backward"),
    ("dy", "xq", "xs", "wq", "ws", "dx", "dw", "ctx"))
class FP8LinearBackward:
    def gen(self, c):
        dt, x, w = draw_fp8_linear(c)
        _, ctx = dsc.fp8_linear_forward(x, w)
        dy = c.randn(x.shape[:-1] + (w.shape[0],), c.pick([dt, F32, BF16], "dy_dtype"),
                     scale=c.pick([1.0, 1e-3, 1e-8], "dyscale"))
        ctx = mutate_ctx(c, ctx, dict(xq={}, xs=dict(nonfinite=False), wq={}, ws=dict(nonfinite=False)),
                         "FP8LinearCtx")
        a = dict(dy=c.mutate_array("dy", dy), ctx=ctx, need_dx=c.flag(0.85, "need_dx"),
                 need_dw=c.flag(0.85, "need_dw"))
        if not (a["need_dx"] or a["need_dw"]):
            c.mut("neither dx nor dw", VALUE)
        return a

    def call(self, a):
        return dsc.fp8_linear_backward(a["dy"], a["ctx"], need_dx=a["need_dx"], need_dw=a["need_dw"])

    def check(self, c, b, res):
        dx, dw = res
        ctx = b["ctx"]
        dy = host(b["dy"])
        if dy.dtype not in FLOATS:
            raise ValueError("dy accepted")
        if not (b["need_dx"] or b["need_dw"]):
            fail("neither dx nor dw wanted, and no error")
        N = dy.shape[-1]
        dy2 = dy.reshape(math.prod(dy.shape[:-1]), N)
        saved = (f64(host(ctx.xq)), host(ctx.xs), f64(host(ctx.wq)), host(ctx.ws))
        K = saved[2].shape[1]
        if dy2.shape[0] != saved[0].shape[0] or N != saved[2].shape[0]:
            raise ValueError("dy accepted")
        if dy2.size == 0 or K == 0:  # the reference's reshape(-1, K) cannot: zeros or empty
            if b["need_dx"]:
                exact(f64(host(dx)).reshape(-1), np.zeros(math.prod(ctx.x_shape)), "dx")
            if b["need_dw"]:
                exact(dw, np.zeros((N, K)), "dw")
            return
        want_dx, want_dw = rf.linear_backward(dy2, saved)
        if b["need_dx"]:
            dyq, dys = rf.quantize(dy2, (1, 128), amax_floor=rf.GRAD_AMAX_FLOOR)
            bound = fp8_gemm_atol(dyq, dys, saved[2].T, saved[3].T, N) + 2e-2 * rf.gemm(
                np.abs(dyq), dys, np.abs(saved[2]).T, saved[3].T) * 0
            close(f64(host(dx)).reshape(want_dx.shape), want_dx, "dx", tol_for(dtname(dx))[0], atol=bound)
            if host(dx).shape != tuple(ctx.x_shape):
                fail(f"dx shape {host(dx).shape}, want {tuple(ctx.x_shape)}")
        elif dx is not None:
            fail("dx returned with need_dx=False")
        if b["need_dw"]:
            # wgrad re-quantizes both operands along the tokens: the codes match the reference
            # exactly, only the accumulation order differs
            M = dy2.shape[0]
            absdw = np.abs(f64(dy2)).T @ np.abs(rf.dequantize(saved[0], saved[1], (1, 128)))
            close(dw, want_dw, "dw", 1e-4, atol=absdw * (2e-2 if M else 0) + 1e-30)
        elif dw is not None:
            fail("dw returned with need_dw=False")


def clips(r: np.ndarray, fmt: str) -> np.ndarray:
    """|r| rounds (to nearest even, without saturation) beyond the largest finite fp8 value:
    the elements the saturation changes."""
    mbits, _, vmax, _ = rf.FORMATS[fmt]
    a = np.abs(np.asarray(r, np.float64))
    top = 2.0 ** math.floor(math.log2(vmax))  # the top binade [top, 2 top)
    quantum = top * 2.0 ** -mbits
    with np.errstate(invalid="ignore"):
        return (a >= 2 * top) | (np.rint(a / quantum) * quantum > vmax)  # (x / s may overflow to inf)


@op("fp8_stats", ("dsc_fp8_compute_stats", "fp8_stats"),
    ("x", "block", "fmt", "tensor_scale", "amax_floor", "block_rows", "block_cols", "transpose", "pow2_scale"))
class FP8Stats:
    def gen(self, c):
        dt, fmt, x, kw = draw_quant(c)
        ts = None
        if c.flag(0.3, "tensor_scale?"):
            ts = c.pick([1.0, 1e-3, 2.0 ** -20, 100.0], "tensor_scale")
            ts = maybe_param(c, "tensor_scale", ts, [(0.0, VALUE), (-1.0, VALUE), (math.nan, VALUE), (math.inf, VALUE),
                                                     (1e-50, VALUE)] + NOT_A_NUMBER, p=0.1)
        return dict(x=x, tensor_scale=ts, **kw)

    def call(self, a):
        return dsc.fp8_stats(a["x"], block=a["block"], fmt=a["fmt"], tensor_scale=a["tensor_scale"],
                             pow2_scale=a["pow2_scale"], amax_floor=a["amax_floor"])

    def check(self, c, b, st_):
        x = host(b["x"])
        if x.dtype not in FLOATS or x.ndim < 1:
            raise ValueError("x accepted")
        fmt = fmt_name(b["fmt"])
        fmax = rf.fp8_max(fmt)
        x32 = np.asarray(x, np.float32).reshape(-1, x.shape[-1]) if x.size else np.zeros((0, 1), np.float32)
        n = x.size
        if b["tensor_scale"] is None:
            _, s = quantize_ref(x32, tuple(b["block"]), fmt, False, b["pow2_scale"], b["amax_floor"])
            sc = expand(s, *x32.shape, *b["block"]).astype(np.float32)
        else:
            sc = np.full(x32.shape, np.float32(b["tensor_scale"]))
        with np.errstate(all="ignore"):
            r = (x32 / sc).astype(np.float32)
            q = rf.fp8_round(r, fmt)
        fin = np.isfinite(x32)
        want = dict(
            amax=(np.nan if np.isnan(x32).any() else (float(np.abs(x32).max()) if n else 0.0)),
            saturated_fraction=(fin & clips(r, fmt)).sum() / n if n else 0.0,
            underflow_fraction=(fin & (x32 != 0) & (q == 0)).sum() / n if n else 0.0,
            nan_fraction=np.isnan(x32).sum() / n if n else 0.0,
            count=n)
        if set(st_) != set(want):
            fail(f"keys {sorted(st_)}")
        for k, v in want.items():
            close(np.float64(st_[k]), v, k, 1e-12)


# ============================================================================= MoE

ROUTE_ARGS = ("logits", "bias", "indices", "weights", "scores", "top_k", "n_group", "topk_group", "scoring",
              "topk_method", "route_scale", "routed_scaling_factor", "norm_topk_prob")
BAD_K = [(0, VALUE), (-1, VALUE), (2 ** 31, VALUE), (2 ** 40, VALUE), (2.5, TYPE), (None, TYPE), ("2", TYPE),
         (True, TYPE)]


def divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def draw_route_params(c: Case, E: int) -> dict:
    method = c.pick(["noaux_tc", "noaux_tc", "greedy", "group_limited_greedy"], "topk_method")
    scoring = "sigmoid" if method == "noaux_tc" and c.flag(0.8, "v3") else c.pick(["sigmoid", "softmax"], "scoring")
    G = c.pick(divisors(E), "n_group")
    tg = c.draw(st.integers(1, G), "topk_group")
    kept = E if method == "greedy" else tg * (E // G)
    k = c.draw(st.integers(1, kept), "top_k")
    p = dict(top_k=k, n_group=G, topk_group=tg, scoring=scoring, topk_method=method,
             norm_topk_prob=c.flag(0.6, "norm"), route_scale=c.pick([2.5, 1.0, 16.0, 0.0, -1.0], "route_scale"))
    p["top_k"] = maybe_param(c, "top_k", p["top_k"], BAD_K + [(E + 1, VALUE)], p=0.05)
    p["n_group"] = maybe_param(c, "n_group", p["n_group"], BAD_K + [(E + 1, VALUE)]
                               + ([(3, VALUE)] if E % 3 else []), p=0.04)
    p["topk_group"] = maybe_param(c, "topk_group", p["topk_group"], BAD_K[:4] + [(G + 1, VALUE)], p=0.04)
    p["scoring"] = maybe_param(c, "scoring", p["scoring"], [("relu", VALUE), (None, VALUE), (0, VALUE)], p=0.03)
    p["topk_method"] = maybe_param(c, "topk_method", p["topk_method"], [("top2", VALUE), ([], VALUE)], p=0.03)
    p["route_scale"] = maybe_param(c, "route_scale", p["route_scale"], BAD_SCALAR, p=0.04)
    if method != "greedy" and isinstance(p["top_k"], int) and p["top_k"] > kept and not c.muts[-1:]:
        pass
    return p


def select_ref(s32: np.ndarray, b32: Optional[np.ndarray], p: dict) -> np.ndarray:
    """The experts chosen from the affinities s (float32, as the op returned them) with
    the selection rules of deepseek_c.h evaluated in float32 arithmetic (s + bias, the
    top-2 sums of a group); ties to the lower index, NaN below every number."""
    T, E = s32.shape
    k, G, tg, method = p["top_k"], p["n_group"], p["topk_group"], p["topk_method"]
    sel = (s32 + (b32 if b32 is not None else np.float32(0))).astype(np.float32) if method == "noaux_tc" else s32
    per = E // G
    out = np.zeros((T, k), np.int64)

    def ranked(vals, cand):
        return sorted(cand, key=lambda i: (bool(np.isnan(vals[i])), -vals[i] if not np.isnan(vals[i]) else 0, i))

    for t in range(T):
        allowed = list(range(E))
        if method != "greedy":
            gs = np.zeros(G, np.float32)
            for g in range(G):
                mem = list(range(g * per, (g + 1) * per))
                if method == "noaux_tc":
                    top = ranked(sel[t], mem)[:2]
                    gs[g] = sel[t, top[0]] if len(top) == 1 else np.float32(sel[t, top[0]] + sel[t, top[1]])
                else:
                    vals = s32[t, mem]
                    gs[g] = np.nan if np.isnan(vals).all() else np.nanmax(vals)
            kept = ranked(gs, range(G))[:tg]
            allowed = [e for e in range(E) if e // per in kept]
        out[t] = ranked(sel[t], allowed)[:k]
    return out


@op("moe_route", ("dsc_moe_route", "moe_route"), ROUTE_ARGS)
class MoERoute:
    def gen(self, c):
        E = c.pick([1, 2, 3, 4, 6, 8, 16, 64, 256], "E")
        T = c.dim("T", [0, 1, 2, 5, 17, 64, 129])
        if c.flag(0.03, "big_T"):
            T, E = 1 << 17, 2
        dt = float_dtype(c)
        logits = c.randn((T, E), dt, scale=c.pick([1.0, 3.0, 0.1], "lscale"))
        p = draw_route_params(c, E)
        bias = None
        if p["scoring"] == "sigmoid" and p["topk_method"] == "noaux_tc" and c.flag(0.7, "bias"):
            bias = (c.rng.standard_normal(E) * 0.05).astype(np.float32)
        elif c.flag(0.03, "bias.bad?"):
            bias = np.zeros(E, np.float32)
            c.mut("bias without sigmoid + noaux_tc", VALUE)
        if bias is not None:
            bias = c.mutate_array("bias", bias, optional=True, ok_dtypes=(F32,))
        return dict(logits=c.mutate_array("logits", logits), bias=bias, **p)

    def call(self, a):
        return dsc.moe_route(a["logits"], a["bias"], top_k=a["top_k"], n_group=a["n_group"],
                             topk_group=a["topk_group"], scoring=a["scoring"], topk_method=a["topk_method"],
                             norm_topk_prob=a["norm_topk_prob"], route_scale=a["route_scale"])

    def check(self, c, b, r):
        z = f64(b["logits"])
        if z.ndim != 2 or np.asarray(host(b["logits"])).dtype not in FLOATS:
            raise ValueError("logits accepted")
        T, E = z.shape
        want_s = rm.affinities(z, b["scoring"]) if T else np.zeros((0, E))
        s32 = host(r.scores)
        close(s32, want_s, "scores", 1e-5, atol=1e-7, nonfinite="any")
        b32 = None if b["bias"] is None else np.asarray(host(b["bias"]), np.float32)
        want_idx = select_ref(s32, b32, b)
        exact(r.indices, want_idx, "indices")
        sc = np.take_along_axis(want_s, want_idx, axis=1) if T else np.zeros((0, b["top_k"]))
        if b["norm_topk_prob"]:
            sc = sc / (sc.sum(1, keepdims=True) + 1e-20)
        close(r.weights, sc * np.float32(b["route_scale"]), "weights", 1e-5, atol=1e-7, nonfinite="any")
        if host(r.indices).dtype != I32:
            fail(f"indices dtype {host(r.indices).dtype}")


def route_for(c: Case, T: int, E: int, p: Optional[dict] = None):
    """A valid MoERoute of random logits (no mutation)."""
    q = c.quiet
    c.quiet = True
    try:
        p = p or draw_route_params(c, E)
    finally:
        c.quiet = q
    logits = c.randn((T, E), F32)
    return dsc.moe_route(logits, None, top_k=p["top_k"], n_group=p["n_group"], topk_group=p["topk_group"],
                         scoring=p["scoring"], topk_method=p["topk_method"], norm_topk_prob=p["norm_topk_prob"],
                         route_scale=p["route_scale"]), p


@op("moe_route_backward", ("dsc_moe_route_backward", "moe_route_backward"),
    ("dweights", "r", "scores", "indices", "dscores", "dlogits"))
class MoERouteBackward:
    def gen(self, c):
        E = c.pick([1, 2, 4, 8, 16, 64], "E")
        T = c.dim("T", [0, 1, 3, 17, 64])
        r, p = route_for(c, T, E)
        dw = c.randn((T, p["top_k"]), F32)
        ds = c.randn((T, E), F32) if c.flag(0.4, "dscores") else None
        r = mutate_ctx(c, r, dict(scores=dict(nonfinite=False), indices=dict(ok_dtypes=(I32, I64))), "MoERoute")
        return dict(dweights=c.mutate_array("dweights", dw), r=r,
                    dscores=c.mutate_array("dscores", ds, optional=True) if ds is not None else None)

    def call(self, a):
        return dsc.moe_route_backward(a["dweights"], a["r"], a["dscores"])

    def check(self, c, b, dl):
        r = b["r"]
        s = f64(r.scores)
        idx = np.asarray(host(r.indices)).astype(np.int64)
        dw = f64(b["dweights"])
        T, E = s.shape
        if idx.shape != dw.shape or idx.shape[0] != T or (idx.size and (idx.min() < 0 or idx.max() >= E)):
            raise ValueError("accepted")
        k, scale = r.params[0], np.float32(r.params[6])
        sch = np.take_along_axis(s, idx, axis=1)
        if r.params[5]:  # norm_topk_prob
            S = sch.sum(1, keepdims=True) + 1e-20
            dsch = scale * (dw / S - (dw * sch).sum(1, keepdims=True) / S ** 2)
            asch = abs(scale) * (np.abs(dw) / S + (np.abs(dw) * sch).sum(1, keepdims=True) / S ** 2)
        else:
            dsch = scale * dw
            asch = np.abs(dsch)
        ds, ads = np.zeros((T, E)), np.zeros((T, E))
        for j in range(k):
            np.add.at(ds, (np.arange(T), idx[:, j]), dsch[:, j])
            np.add.at(ads, (np.arange(T), idx[:, j]), asch[:, j])
        if b["dscores"] is not None:
            ds = ds + f64(b["dscores"])
            ads = ads + np.abs(f64(b["dscores"]))
        if r.params[3] == 0:  # sigmoid
            want = ds * s * (1 - s)
            terms = ads * s * (1 - s)
        else:
            want = s * (ds - (ds * s).sum(1, keepdims=True))
            terms = s * (ads + (ads * s).sum(1, keepdims=True))
        rt, ar = tol_for(dtname(dl))
        # float32 cancellation (norm_topk_prob with one expert: the terms cancel exactly)
        close(dl, want, "dlogits", rt, atol_rel=ar, atol=terms * (1e-5 if rt < 1e-3 else 1e-2) + 1e-12)


@op("moe_expert_load", ("dsc_moe_expert_load", "moe_expert_load"), ("indices", "counts", "n_experts"))
class MoEExpertLoad:
    def gen(self, c):
        E = c.pick([1, 2, 7, 64, 256], "E")
        if c.flag(0.03, "big_E"):
            E = 1 << 20
        shape = tuple(c.dims(c.draw(st.integers(0, 3), "rank"), "indices", budget=1 << 14))
        idx = mutate_ids(c, c.ints(shape, 0, E, c.pick([I32, I64], "idtype")), E, "indices")
        return dict(indices=idx, n_experts=maybe_param(c, "n_experts", E, BAD_K, p=0.06))

    def call(self, a):
        return dsc.moe_expert_load(a["indices"], a["n_experts"])

    def check(self, c, b, counts):
        E = b["n_experts"]
        ids = ids_ok(b["indices"], E)
        exact(counts, np.bincount(ids.reshape(-1), minlength=E), "counts")
        if host(counts).dtype != I64:
            fail(f"counts dtype {host(counts).dtype}")


@op("moe_update_bias", ("dsc_moe_update_bias", "moe_update_bias"), ("bias", "load", "counts", "rate"),
    writes=("bias",))
class MoEUpdateBias:
    def gen(self, c):
        E = c.pick([1, 2, 7, 64, 256], "E")
        bias = c.randn((E,), F32, scale=0.05)
        load = c.ints((E,), 0, c.pick([1, 5, 1000], "maxload"), c.pick([I32, I64], "ldtype"))
        if c.flag(0.06, "load.negative?"):
            load[int(c.rng.integers(0, E))] = -1
            c.mut("load: a negative count", VALUE)
        return dict(bias=c.mutate_array("bias", bias, role="in", nonfinite=False),
                    load=c.mutate_array("load", load, ok_dtypes=(I32, I64), fill=lambda s: c.ints(s, 0, 9, I32)),
                    rate=maybe_param(c, "rate", c.pick([1e-3, 0.0, 0.5], "rate"),
                                     [(-1e-3, VALUE), (math.nan, VALUE), (math.inf, VALUE)] + NOT_A_NUMBER, p=0.06))

    def call(self, a):
        return dsc.moe_update_bias(a["bias"], a["load"], a["rate"])

    def check(self, c, b, out):
        load = np.asarray(host(b["load"]))
        bias = np.asarray(host(b["bias"]))
        if load.dtype.kind not in "iu" or bias.dtype != F32 or load.shape != bias.shape or load.ndim != 1:
            raise ValueError("accepted")
        mean = load.astype(np.float64).mean()
        want = (bias + np.float32(b["rate"]) * np.sign(mean - load).astype(np.float32)).astype(np.float32)
        exact(out, want, "bias")
        given = c.args["bias"]
        if isinstance(given, (np.ndarray, dsc.Tensor)) and getattr(given, "flags", None) is not None \
                and given.flags.writeable and out is not given:
            fail("a writable bias was not updated in place")


def draw_aux(c: Case):
    E = c.pick([2, 4, 8, 16], "E")
    L = c.pick([1, 2, 4, 16], "L")
    B = c.pick([0, 1, 2, 3], "B")
    T = B * L
    r, p = route_for(c, T, E)
    seq_len = L
    if c.flag(0.06, "seq_len.bad?"):
        seq_len = c.pick([0, -1, T + 1 if T + 1 > 1 and T % (T + 1) else 0, 2 ** 62, 2 ** 70], "bad_seq_len")
        c.mut(f"seq_len = {seq_len} for T = {T}", ANY_DOC)
    return r, p, seq_len


@op("moe_seq_aux_loss", ("dsc_moe_seq_aux_loss", "moe_seq_aux_loss"),
    ("scores", "indices", "seq_len", "alpha", "loss", "dscores"))
class MoESeqAuxLoss:
    def gen(self, c):
        r, p, L = draw_aux(c)
        scores, idx = host(r.scores), host(r.indices)
        if scores.size and c.flag(0.04, "scores.zero_row.bad?"):
            scores = scores.copy()
            scores[0] = 0
            c.mut("scores: a row of zeros", VALUE)
        return dict(scores=c.mutate_array("scores", scores, nonfinite=False),
                    indices=c.mutate_array("indices", idx, ok_dtypes=(I32, I64),
                                           fill=lambda s: c.ints(s, 0, 2, I32)), seq_len=L,
                    alpha=maybe_param(c, "alpha", c.pick([1e-4, 1.0, 0.0, -1.0], "alpha"), BAD_SCALAR, p=0.05))

    def call(self, a):
        return dsc.moe_seq_aux_loss(a["scores"], a["indices"], a["seq_len"], a["alpha"])

    def check(self, c, b, res):
        loss, ctx = res
        s, idx = f64(b["scores"]), np.asarray(host(b["indices"]))
        T = s.shape[0]
        if idx.dtype.kind not in "iu" or idx.ndim != 2 or idx.shape[0] != T or s.ndim != 2:
            raise ValueError("accepted")
        want = rm.seq_aux_loss(s, idx, b["seq_len"], float(np.float32(b["alpha"]))) if T else 0.0
        close(loss, want, "loss", 1e-5, atol=1e-9)


@op("moe_seq_aux_loss_backward", ("dsc_moe_seq_aux_loss", "moe_seq_aux_loss_backward"),
    ("ctx", "grad", "scores", "indices", "seq_len", "alpha", "dscores"))
class MoESeqAuxLossBackward:
    def gen(self, c):
        r, p, L = draw_aux(c)
        ctx = dsc.SeqAuxCtx(r.scores, r.indices, L, c.pick([1e-4, 1.0], "alpha"))
        ctx = mutate_ctx(c, ctx, dict(scores=dict(nonfinite=False), indices=dict(ok_dtypes=(I32, I64))), "SeqAuxCtx")
        return dict(ctx=ctx, grad=maybe_param(c, "grad", c.pick([1.0, 2.0, 0.0], "grad"), BAD_SCALAR, p=0.06))

    def call(self, a):
        return dsc.moe_seq_aux_loss_backward(a["ctx"], a["grad"])

    def check(self, c, b, ds):
        ctx = b["ctx"]
        s, idx = f64(ctx.scores), np.asarray(host(ctx.indices)).astype(np.int64)
        T, E = s.shape
        L = ctx.seq_len
        k = idx.shape[1]
        B = T // L if L else 0
        g = np.zeros((T, E))
        alpha = float(np.float32(ctx.alpha * b["grad"]))
        for bb in range(B):
            seg = slice(bb * L, (bb + 1) * L)
            f = E / (k * L) * np.bincount(idx[seg].reshape(-1), minlength=E)
            g[seg] = alpha * f / (B * L)
        S = s.sum(1, keepdims=True)
        sp = s / S
        want = (g - (g * sp).sum(1, keepdims=True)) / S
        close(ds, want, "dscores", 1e-5, atol=1e-9, atol_rel=1e-6)


def draw_permute(c: Case):
    dt = float_dtype(c)
    E = c.pick([1, 2, 3, 8, 16], "E")
    T = c.dim("T", [0, 1, 2, 5, 33, 128])
    k = c.draw(st.integers(1, min(E, 4)), "k")
    D = c.pick([0, 1, 3, 16, 129], "D")
    x = c.randn((T, D), dt)
    idx = np.stack([c.rng.permutation(E)[:k] for _ in range(T)]).astype(c.pick([I32, I64], "idtype")) if T \
        else np.zeros((0, k), I32)
    align = c.pick([1, 1, 2, 4, 128], "align")
    return dt, E, T, k, D, x, idx, align


BAD_ALIGN = [(0, VALUE), (-1, VALUE), (2 ** 31, VALUE), (2 ** 40, VALUE), (None, TYPE), (2.0, TYPE)]


@op("moe_permute_rows", ("dsc_moe_permute_rows", "moe_permute_rows"), ("indices", "n_experts", "align", "rows"))
class MoEPermuteRows:
    def gen(self, c):
        dt, E, T, k, D, x, idx, align = draw_permute(c)
        if c.flag(0.04, "huge_align"):
            align = 2 ** 30
            if E > 1 or T:
                c.mut("align 2^30: more than 2^31 - 1 rows", (ValueError, dsc.Error))
        return dict(indices=mutate_ids(c, idx, E, "indices"), n_experts=maybe_param(c, "n_experts", E, BAD_K, p=0.05),
                    align=maybe_param(c, "align", align, BAD_ALIGN, p=0.06))

    def call(self, a):
        return dsc.moe_permute_rows(a["indices"], a["n_experts"], a["align"])

    def check(self, c, b, R):
        ids = ids_ok(b["indices"], b["n_experts"])
        cnt = np.bincount(ids.reshape(-1), minlength=b["n_experts"])
        want = int(sum(-(-int(n) // b["align"]) * b["align"] for n in cnt))
        if R != want or not isinstance(R, int):
            fail(f"rows {R!r}, want {want}")


def permute_ref(x: np.ndarray, idx: np.ndarray, E: int, align: int):
    """(out [R, D], group_offsets [E+1], row_map [T, k]) (rm.permute, also for D = 0 or T = 0)."""
    T, k = idx.shape
    D = x.shape[1]
    offs, rm_ = [0], np.zeros((T, k), np.int64)
    rows = []
    for e in range(E):
        pairs = [(t, j) for t in range(T) for j in range(k) if idx[t, j] == e]
        for t, j in pairs:
            rm_[t, j] = len(rows)
            rows.append(x[t])
        rows.extend([np.zeros(D)] * (-len(pairs) % align))
        offs.append(len(rows))
    out = np.array(rows, dtype=np.float64).reshape(len(rows), D)
    return out, np.array(offs), rm_


@op("moe_permute", ("dsc_moe_permute", "moe_permute"), ("x", "indices", "n_experts", "align", "out",
                                                         "group_offsets", "row_map"))
class MoEPermute:
    def gen(self, c):
        dt, E, T, k, D, x, idx, align = draw_permute(c)
        if c.flag(0.03, "huge_align") and len(np.unique(idx)) >= 2:
            align = 2 ** 31 - 1  # two experts with tokens: more rows than int32 offsets hold
            c.mut("align 2^31 - 1: more than 2^31 - 1 rows", (ValueError, dsc.Error, MemoryError))
        return dict(x=c.mutate_array("x", x), indices=mutate_ids(c, idx, E, "indices"),
                    n_experts=maybe_param(c, "n_experts", E, BAD_K, p=0.05),
                    align=maybe_param(c, "align", align, BAD_ALIGN, p=0.06))

    def call(self, a):
        return dsc.moe_permute(a["x"], a["indices"], a["n_experts"], a["align"])

    def check(self, c, b, p):
        x = f64(b["x"])
        E = b["n_experts"]
        idx = ids_ok(b["indices"], E)
        if x.ndim != 2 or idx.ndim != 2 or idx.shape[0] != x.shape[0]:
            raise ValueError("accepted")
        out, offs, rmap = permute_ref(x, idx, E, b["align"])
        exact(p.x, out, "out")
        exact(p.group_offsets, offs, "group_offsets")
        exact(p.row_map, rmap, "row_map")
        exact(p.counts, np.bincount(idx.reshape(-1), minlength=E), "counts")


def permuted(c: Case):
    """A valid MoEPermute (no mutation) and its inputs."""
    dt, E, T, k, D, x, idx, align = draw_permute(c)
    return dt, x, idx, dsc.moe_permute(x, idx, E, align)


PERM_FIELDS = dict(row_map=dict(ok_dtypes=(I32,)), group_offsets=dict(ok_dtypes=(I32,)))


@op("moe_permute_backward", ("dsc_moe_permute_backward", "moe_permute_backward"), ("dout", "p", "row_map", "dx"))
class MoEPermuteBackward:
    def gen(self, c):
        dt, x, idx, p = permuted(c)
        dout = c.randn(host(p.x).shape, dt)
        p = mutate_ctx(c, p, dict(row_map=dict(ok_dtypes=(I32,))), "MoEPermute")
        if isinstance(p, dsc.MoEPermute) and isinstance(p.row_map, np.ndarray) and p.row_map.size and \
                c.flag(0.06, "row_map.bad?"):
            rmp = p.row_map.copy()
            rmp.reshape(-1)[0] = c.pick([-1, dout.shape[0], 2 ** 31 - 1], "rm.bad")
            p = dsc.MoEPermute(p.x, p.group_offsets, rmp, p.counts, p.n_tokens, p.n_experts, p.align)
            c.mut("row_map: out of range", VALUE)
        return dict(dout=c.mutate_array("dout", dout), p=p)

    def call(self, a):
        return dsc.moe_permute_backward(a["dout"], a["p"])

    def check(self, c, b, dx):
        dout, rmap = f64(b["dout"]), np.asarray(host(b["p"].row_map)).astype(np.int64)
        if rmap.size and (rmap.min() < 0 or rmap.max() >= dout.shape[0]):
            raise ValueError("accepted")
        want = dout[rmap].sum(axis=1) if rmap.size else np.zeros((rmap.shape[0], dout.shape[1]))
        close(dx, want, "dx", *tol_for(dtname(dx)))


@op("moe_unpermute", ("dsc_moe_unpermute", "moe_unpermute"), ("expert_out", "p", "row_map", "weights", "y"))
class MoEUnpermute:
    def gen(self, c):
        dt, x, idx, p = permuted(c)
        eo = c.randn(host(p.x).shape, dt)
        w = c.randn(idx.shape, F32)
        p = mutate_ctx(c, p, dict(row_map=dict(ok_dtypes=(I32,))), "MoEPermute")
        return dict(expert_out=c.mutate_array("expert_out", eo), p=p, weights=c.mutate_array("weights", w))

    def call(self, a):
        return dsc.moe_unpermute(a["expert_out"], a["p"], a["weights"])

    def check(self, c, b, y):
        eo, rmap, w = f64(b["expert_out"]), np.asarray(host(b["p"].row_map)).astype(np.int64), f64(b["weights"])
        if w.shape != rmap.shape:
            raise ValueError("accepted")
        want = (w[..., None] * eo[rmap]).sum(axis=1) if rmap.size else np.zeros((rmap.shape[0], eo.shape[1]))
        close(y, want, "y", *tol_for(dtname(y)))


@op("moe_unpermute_backward", ("dsc_moe_unpermute_backward", "moe_unpermute_backward"),
    ("dy", "expert_out", "p", "row_map", "weights", "dexpert_out", "dweights"))
class MoEUnpermuteBackward:
    def gen(self, c):
        dt, x, idx, p = permuted(c)
        eo = c.randn(host(p.x).shape, dt)
        w = c.randn(idx.shape, F32)
        dy = c.randn(x.shape, dt)
        p = mutate_ctx(c, p, dict(row_map=dict(ok_dtypes=(I32,))), "MoEPermute")
        return dict(dy=c.mutate_array("dy", dy), expert_out=c.mutate_array("expert_out", eo), p=p,
                    weights=c.mutate_array("weights", w))

    def call(self, a):
        return dsc.moe_unpermute_backward(a["dy"], a["expert_out"], a["p"], a["weights"])

    def check(self, c, b, res):
        de, dw = res
        dy, eo, w = f64(b["dy"]), f64(b["expert_out"]), f64(b["weights"])
        rmap = np.asarray(host(b["p"].row_map)).astype(np.int64)
        if w.shape != rmap.shape or dy.shape[0] != rmap.shape[0]:
            raise ValueError("accepted")
        want_de = np.zeros(eo.shape)
        T, k = rmap.shape
        for j in range(k):
            np.add.at(want_de, rmap[:, j], w[:, j, None] * dy)
        want_dw = np.einsum("td,tkd->tk", dy, eo[rmap]) if rmap.size else np.zeros(rmap.shape)
        close(de, want_de, "dexpert_out", *tol_for(dtname(de)))
        close(dw, want_dw, "dweights", 1e-4 if dtname(dy) == "float32" else 1e-2, atol_rel=1e-4)


def draw_grouped(c: Case):
    dt = float_dtype(c)
    E = c.pick([1, 2, 3, 8], "E")
    R, K, N = c.dims(3, "RKN", budget=1 << 14, big=False)
    x, w = c.randn((R, K), dt), c.randn((E, N, K), dt)
    offs = group_offsets(c, R, E, 1)
    return dt, x, w, offs


def grouped_ref(x, w, offs):
    y = np.zeros((x.shape[0], w.shape[1]))
    for e in range(w.shape[0]):
        y[offs[e]:offs[e + 1]] = x[offs[e]:offs[e + 1]] @ w[e].T
    return y


def offsets_ok(o: Any, R: int, E: int) -> np.ndarray:
    o = np.asarray(host(o))
    if o.dtype != I32 or o.shape != (E + 1,) or o[0] != 0 or o[-1] != R or np.any(np.diff(o) < 0):
        raise ValueError(f"group_offsets {o} accepted")
    return o.astype(np.int64)


@op("grouped_linear", ("dsc_grouped_linear_forward", "grouped_linear"), ("x", "w", "group_offsets", "y"))
class GroupedLinear:
    def gen(self, c):
        dt, x, w, offs = draw_grouped(c)
        return dict(x=c.mutate_array("x", x), w=c.mutate_array("w", w),
                    group_offsets=mutate_offsets(c, offs, x.shape[0], 1))

    def call(self, a):
        return dsc.grouped_linear(a["x"], a["w"], a["group_offsets"])

    def check(self, c, b, y):
        x, w = f64(b["x"]), f64(b["w"])
        o = offsets_ok(b["group_offsets"], x.shape[0], w.shape[0])
        close(y, grouped_ref(x, w, o), "y", tol_for(dtname(y))[0],
              atol=gemm_atol(grouped_ref(np.abs(x), np.abs(w), o), x.shape[1], ""))


@op("grouped_linear_backward", ("dsc_grouped_linear_backward", "grouped_linear_backward"),
    ("dy", "x", "w", "group_offsets", "dx", "dw"))
class GroupedLinearBackward:
    def gen(self, c):
        dt, x, w, offs = draw_grouped(c)
        dy = c.randn((x.shape[0], w.shape[1]), dt)
        return dict(dy=c.mutate_array("dy", dy), x=c.mutate_array("x", x), w=c.mutate_array("w", w),
                    group_offsets=mutate_offsets(c, offs, x.shape[0], 1), need_dx=c.flag(0.8, "need_dx"))

    def call(self, a):
        return dsc.grouped_linear_backward(a["dy"], a["x"], a["w"], a["group_offsets"], need_dx=a["need_dx"])

    def check(self, c, b, res):
        dx, dw = res
        dy, x, w = f64(b["dy"]), f64(b["x"]), f64(b["w"])
        E = w.shape[0]
        o = offsets_ok(b["group_offsets"], x.shape[0], E)
        if dy.shape != (x.shape[0], w.shape[1]):
            raise ValueError("dy accepted")
        want_dw = np.zeros(w.shape)
        abs_dw = np.zeros(w.shape)
        want_dx = np.zeros(x.shape)
        abs_dx = np.zeros(x.shape)
        for e in range(E):
            s = slice(o[e], o[e + 1])
            want_dw[e] = dy[s].T @ x[s]
            abs_dw[e] = np.abs(dy[s]).T @ np.abs(x[s])
            want_dx[s] = dy[s] @ w[e]
            abs_dx[s] = np.abs(dy[s]) @ np.abs(w[e])
        close(dw, want_dw, "dw", 1e-4, atol=gemm_atol(abs_dw, x.shape[0], ""))
        if b["need_dx"]:
            close(dx, want_dx, "dx", tol_for(dtname(dx))[0], atol=gemm_atol(abs_dx, w.shape[1], ""))
        elif dx is not None:
            fail("dx returned with need_dx=False")


# ============================================================================= the MoE layer


def lin8(x, w):
    """The V3 FP8 projection x @ w^T: x in 1x128 tiles (from float32), w in 128x128 blocks."""
    sh = np.shape(x)
    if math.prod(sh) == 0 or np.size(w) == 0:
        return np.zeros(sh[:-1] + (np.shape(w)[0],))
    y, _ = rf.linear_forward(np.asarray(x, np.float32).reshape(-1, sh[-1]), np.asarray(w, np.float32))
    return y.reshape(*sh[:-1], np.shape(w)[0])


def rel(a, b) -> float:
    a, b = f64(host(a)), np.asarray(b, np.float64)
    d = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / d if d else float(np.linalg.norm(a))


LAYER_ARGS = ("x", "params", "cfg", "align", "y", "counts", "dy", "dx", "grads", "ctx", "w", "top_k", "n_group",
              "topk_group", "gate", "bias", "experts_gate", "experts_up", "experts_down", "shared_gate", "shared_up",
              "shared_down", "num_experts_per_tok", "n_routed_experts", "scoring", "topk_method", "fp8", "mlp")


def draw_layer(c: Case):
    D = c.pick([4, 8, 16, 33], "D")
    E = c.pick([1, 2, 4, 8], "E")
    F = c.pick([1, 3, 6, 16], "F")
    n_shared = c.pick([0, 1, 2], "n_shared")
    lead = tuple(c.dims(c.draw(st.integers(1, 2), "rank_lead"), "lead", budget=48, big=False))
    q = c.quiet
    c.quiet = True
    try:
        p = draw_route_params(c, E)
    finally:
        c.quiet = q
    cfg = dict(n_routed_experts=E, num_experts_per_tok=p["top_k"], n_group=p["n_group"], topk_group=p["topk_group"],
               scoring_func=p["scoring"], topk_method=p["topk_method"], norm_topk_prob=p["norm_topk_prob"],
               routed_scaling_factor=c.pick([2.5, 1.0, 16.0], "scaling"), n_shared_experts=n_shared,
               moe_intermediate_size=F)
    f32 = lambda *s, scale=1.0: (c.rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    params = {"mlp.gate.weight": f32(E, D, scale=0.8)}
    if p["topk_method"] == "noaux_tc" and p["scoring"] == "sigmoid" and c.flag(0.8, "bias"):
        params["mlp.gate.e_score_correction_bias"] = f32(E, scale=0.05)
    stacked = c.flag(0.2, "stacked")
    for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
        ws = [f32(*shape, scale=0.5) for _ in range(E)]
        if stacked:
            params[f"mlp.experts.{proj}.weight"] = np.stack(ws)
        else:
            for e in range(E):
                params[f"mlp.experts.{e}.{proj}.weight"] = ws[e]
    if n_shared:
        Fs = n_shared * F
        params["mlp.shared_experts.gate_proj.weight"] = f32(Fs, D, scale=0.5)
        params["mlp.shared_experts.up_proj.weight"] = f32(Fs, D, scale=0.5)
        params["mlp.shared_experts.down_proj.weight"] = f32(D, Fs, scale=0.5)
    x = f32(*(lead + (D,)))
    return x, params, cfg


def mutate_params(c: Case, params: dict, cfg: dict) -> dict:
    if not c.flag(0.2, "params.mutate?"):
        return params
    params = dict(params)
    k = c.pick(sorted(params), "params.key")
    how = c.pick(["drop", "shape", "dtype", "list"], "params.how")
    if how == "drop":
        optional = k == "mlp.gate.e_score_correction_bias" or (k.startswith("mlp.shared") and False)
        del params[k]
        c.mut(f"params: without {k}", VALUE, benign=optional)
    elif how == "shape":
        params[k] = c.randn(c.mutate_shape(k, params[k].shape), F32)
        c.mut(f"params[{k}]: shape {params[k].shape}", VALUE)
    elif how == "dtype":
        dt = c.pick([np.dtype(np.float64), BF16, I32, E4M3], "params.dtype")
        params[k] = convert(params[k], dt)
        c.mut(f"params[{k}]: dtype {dt.name}", ANY_DOC)
    else:
        params[k] = params[k].tolist()
        c.mut(f"params[{k}]: a list", TYPE)
    return params


def mutate_layer_cfg(c: Case, cfg: dict) -> Any:
    if not c.flag(0.1, "cfg.mutate?"):
        return cfg
    cfg = dict(cfg)
    how = c.pick(["experts", "topk", "group", "scoring", "type", "missing"], "cfg.how")
    if how == "experts":
        cfg["n_routed_experts"] = cfg["n_routed_experts"] + c.pick([1, -1], "by") or 0
        c.mut(f"cfg n_routed_experts = {cfg['n_routed_experts']}", ANY_DOC)
    elif how == "topk":
        cfg["num_experts_per_tok"] = c.pick([0, -1, cfg["n_routed_experts"] + 1, 2 ** 40], "cfg.topk")
        c.mut(f"cfg num_experts_per_tok = {cfg['num_experts_per_tok']}", VALUE)
    elif how == "group":
        cfg["n_group"] = cfg["n_routed_experts"] + 1
        c.mut(f"cfg n_group = {cfg['n_group']}", VALUE)
    elif how == "scoring":
        cfg["scoring_func"] = "relu"
        c.mut("cfg scoring_func = relu", VALUE)
    elif how == "type":
        c.mut("cfg = a list", TYPE)
        return list(cfg.items())
    else:
        del cfg["n_routed_experts"]
        c.mut("cfg without n_routed_experts", VALUE)
    return cfg


def layer_ref(x2: np.ndarray, params: dict, cfg: dict, fp8: bool, fixed=None):
    P = dict(params)
    E = cfg["n_routed_experts"]
    for proj in ("gate_proj", "up_proj", "down_proj"):
        st_ = P.pop(f"mlp.experts.{proj}.weight", None)
        if st_ is not None:
            for e in range(E):
                P[f"mlp.experts.{e}.{proj}.weight"] = st_[e]
    return rm.moe_layer(x2, P, cfg, lin=lin8 if fp8 else rm._matmul_t, fixed_indices=fixed)


def layer_margin(x2: np.ndarray, params: dict, cfg: dict) -> float:
    """The smallest gap between neighbouring selection scores and group scores (a near tie
    may be decided either way by float32 rounding)."""
    z = x2.astype(np.float64) @ np.asarray(params["mlp.gate.weight"], np.float64).T
    s = rm.affinities(z, cfg["scoring_func"]) if z.size else z
    if cfg["topk_method"] == "noaux_tc" and "mlp.gate.e_score_correction_bias" in params:
        s = s + params["mlp.gate.e_score_correction_bias"]
    if s.shape[1] < 2 or s.shape[0] == 0:
        return 1.0
    srt = -np.sort(-s, 1)
    return float(np.abs(np.diff(srt, axis=1)).min())


@op("moe_layer_forward", ("dsc_moe_layer_forward", "moe_layer_forward", "moe_forward"), LAYER_ARGS, examples=30)
class MoELayerForward:
    def gen(self, c):
        x, params, cfg = draw_layer(c)
        # bfloat16 x is documented: widened to float32 for the layer, y rounded back to bfloat16
        return dict(x=c.mutate_array("x", x, ok_dtypes=(BF16,)), params=mutate_params(c, params, cfg),
                    cfg=mutate_layer_cfg(c, cfg),
                    align=maybe_param(c, "align", c.pick([1, 1, 4, 128], "align"), BAD_ALIGN, p=0.04),
                    training=c.flag(0.5, "training"), fp8=c.flag(0.2, "fp8"))

    def call(self, a):
        return dsc.moe_layer_forward(a["x"], a["params"], a["cfg"], align=a["align"], training=a["training"],
                                     fp8=a["fp8"])

    def check(self, c, b, res):
        y, ctx = res
        x = np.asarray(host(b["x"]))
        if x.dtype not in (F32, BF16):
            raise ValueError("x accepted")
        x2 = x.reshape(-1, x.shape[-1]).astype(F32)  # bfloat16 widens exactly
        cfg = b["cfg"]
        want, _, idx = layer_ref(x2, b["params"], cfg, b["fp8"])
        if layer_margin(x2, b["params"], cfg) < 1e-4:
            return  # a near tie: either choice is right (only no crash and the shapes)
        if np.asarray(host(y)).dtype != x.dtype:
            fail(f"y: dtype {np.asarray(host(y)).dtype}, expected x's {x.dtype}")
        if x.dtype == BF16 and not b["fp8"]:  # y rounded to bfloat16 (8 significant bits)
            close(f64(host(y)).reshape(want.shape), want, "y", 1e-2, atol_rel=1e-2)
        elif b["fp8"]:  # + bfloat16 rounding of y when x is bfloat16
            if rel(f64(host(y)).reshape(want.shape), want) > (3e-3 if x.dtype == F32 else 8e-3):
                fail(f"y: relative error {rel(f64(host(y)).reshape(want.shape), want):.3g} vs the FP8 reference")
        else:
            close(f64(host(y)).reshape(want.shape), want, "y", 1e-4, atol_rel=1e-4)
        exact(ctx.load, np.bincount(idx.reshape(-1), minlength=cfg["n_routed_experts"]), "load")


@op("moe_layer_backward", ("dsc_moe_layer_backward", "moe_layer_backward"), LAYER_ARGS, examples=20)
class MoELayerBackward:
    def gen(self, c):
        x, params, cfg = draw_layer(c)
        fp8 = c.flag(0.2, "fp8")
        _, ctx = dsc.moe_layer_forward(x, params, cfg, fp8=fp8)
        dy = c.randn(x.shape, F32)
        if c.flag(0.05, "ctx.inference.bad?"):
            _, ctx = dsc.moe_layer_forward(x, params, cfg, training=False)
            c.mut("ctx of an inference forward", TYPE)
        if c.flag(0.05, "ctx.replace?"):
            ctx = None
            c.mut("ctx = None", TYPE)
        return dict(dy=c.mutate_array("dy", dy), ctx=ctx, x=x, params=params, cfg=cfg, fp8=fp8)

    def call(self, a):
        return dsc.moe_layer_backward(a["dy"], a["ctx"])

    def check(self, c, b, g):
        x2 = b["x"].reshape(-1, b["x"].shape[-1]).astype(np.float64)
        dy = f64(b["dy"])
        if dy.shape != b["x"].shape:
            raise ValueError("dy accepted")
        cfg, params = b["cfg"], b["params"]
        want_keys = {k for k in params if "e_score_correction_bias" not in k and not k.startswith("mlp.experts.")
                     } | {f"mlp.experts.{e}.{p}.weight" for e in range(cfg["n_routed_experts"])
                          for p in ("gate_proj", "up_proj", "down_proj")} | {"x"}
        if set(g) != want_keys:
            fail(f"gradient keys {sorted(set(g) ^ want_keys)} differ")
        if layer_margin(x2, params, cfg) < 1e-3 or not np.isfinite(dy).all():
            return
        _, _, idx = layer_ref(x2, params, cfg, False)
        dy2 = dy.reshape(x2.shape)
        P = {k: np.asarray(v, np.float64) for k, v in params.items()}

        def loss(xx, PP):
            return float((layer_ref(xx, PP, cfg, False, fixed=idx)[0] * dy2).sum())

        keys = ["x", "mlp.gate.weight"] + [k for k in sorted(g) if k not in ("x", "mlp.gate.weight")][:3]
        top = max(float(np.abs(f64(host(v))).sum()) for v in g.values())
        for k in keys:
            G = f64(host(g[k]))
            base = x2 if k == "x" else self._param(P, k)
            V = c.rng.standard_normal(base.shape)
            h = 1e-6 * max(float(np.abs(base).max(initial=0.0)), 1e-3)  # small: saturated softmaxes curve
            fd = (self._eval(loss, x2, P, k, base + h * V) - self._eval(loss, x2, P, k, base - h * V)) / (2 * h)
            gv = float((G.reshape(base.shape) * V).sum())
            scale = float((np.abs(G.reshape(base.shape)) * np.abs(V)).sum()) + 1e-9
            # float32 noise follows the largest gradients of the layer
            tol = 0.25 * scale + 1e-3 * top if b["fp8"] else 2e-3 * scale + 1e-6 * top + 1e-9
            if abs(gv - fd) > tol:
                fail(f"grads[{k}]: <g, v> = {gv:.6g}, finite difference {fd:.6g} (tol {tol:.3g})")

    @staticmethod
    def _param(P, k):
        m = re.match(r"mlp\.experts\.(\d+)\.(\w+)\.weight", k)
        if m and f"mlp.experts.{m.group(2)}.weight" in P:
            return P[f"mlp.experts.{m.group(2)}.weight"][int(m.group(1))]
        return P[k]

    @staticmethod
    def _eval(loss, x2, P, k, v):
        if k == "x":
            return loss(v, P)
        Q = dict(P)
        m = re.match(r"mlp\.experts\.(\d+)\.(\w+)\.weight", k)
        if m and f"mlp.experts.{m.group(2)}.weight" in Q:
            st_ = Q[f"mlp.experts.{m.group(2)}.weight"].copy()
            st_[int(m.group(1))] = v
            Q[f"mlp.experts.{m.group(2)}.weight"] = st_
        else:
            Q[k] = v
        return loss(x2, Q)


# ============================================================================= MLA

MLA_ARGS = ("x", "params", "cfg", "positions", "out", "dout", "dx", "ctx", "grad", "w", "q_a_proj", "q_a_layernorm",
            "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj", "hidden",
            "n_heads", "fp8", "seq_ids", "cache", "layer", "p", "saved")


def draw_mla_cfg(c: Case) -> Any:
    fp8_dims = c.flag(0.1, "fp8_dims")
    keys = dict(hidden_size=c.pick([8, 16, 24, 200] if fp8_dims else [8, 16, 24], "hidden"),
                num_attention_heads=c.pick([1, 2, 3], "heads"),
                q_lora_rank=c.pick([None, 4, 12, 136] if fp8_dims else [None, 4, 12], "q_lora"),
                kv_lora_rank=c.pick([4, 10, 160] if fp8_dims else [4, 10, 16], "kv_lora"),
                qk_nope_head_dim=c.pick([2, 6, 16], "nope"), qk_rope_head_dim=c.pick([2, 4, 8], "rope"),
                v_head_dim=c.pick([2, 5, 16], "v"))
    if c.flag(0.3, "no_yarn"):
        keys["rope_scaling"] = None
    return dsc.ModelConfig.tiny(**keys)


def mla_weights(c: Case, cfg) -> dict:
    return rmla.init_weights(cfg, c.rng)


def mutate_mla_params(c: Case, w: dict) -> dict:
    if not c.flag(0.12, "params.mutate?"):
        return w
    w = dict(w)
    k = c.pick(sorted(w), "params.key")
    how = c.pick(["drop", "shape", "dtype", "list", "short_name"], "params.how")
    if how == "drop":
        del w[k]
        c.mut(f"params: without {k}", VALUE)
    elif how == "shape":
        w[k] = c.randn(c.mutate_shape(k, w[k].shape), F32)
        c.mut(f"params[{k}]: shape {w[k].shape}", VALUE)
    elif how == "dtype":
        dt = c.pick([np.dtype(np.float64), BF16, I32], "params.dtype")
        w[k] = convert(w[k], dt)
        c.mut(f"params[{k}]: dtype {dt.name}", TYPE)
    elif how == "list":
        w[k] = w[k].tolist()
        c.mut(f"params[{k}]: a list", TYPE)
    else:
        w[k.replace(".weight", "")] = w.pop(k)
        c.mut(f"params: {k} without .weight", benign=True)
    return w


@op("mla_forward", ("dsc_mla_forward", "mla_forward"), MLA_ARGS, examples=30)
class MLAForward:
    def gen(self, c):
        cfg = draw_mla_cfg(c)
        B, T = c.pick([0, 1, 2, 3], "B"), c.pick([0, 1, 2, 7, 13], "T")
        x = c.randn((B, T, cfg.hidden_size), F32)
        pos = None
        if c.flag(0.5, "positions"):
            pos = (np.arange(T)[None, :] + c.ints((B, 1), 0, 300, I32)).astype(np.int32)
            if pos.size and c.flag(0.06, "positions.negative?"):
                pos[0, 0] = -1
                c.mut("positions: -1", VALUE)
            pos = c.mutate_array("positions", pos, ok_dtypes=(I32,), fill=lambda s: c.ints(s, 0, 9, I32))
        cfg2 = cfg
        if c.flag(0.04, "cfg.bad?"):
            cfg2 = c.pick(["tiny", 3, None], "cfg.bad")
            c.mut(f"cfg = {cfg2!r}", TYPE)
        return dict(x=c.mutate_array("x", x), params=mutate_mla_params(c, mla_weights(c, cfg)), cfg=cfg2, pos=pos,
                    fp8=c.flag(0.15, "fp8"), need_backward=c.flag(0.5, "need_backward"), _cfg=cfg)

    def call(self, a):
        return dsc.mla_forward(a["x"], a["params"], a["cfg"], a["pos"], need_backward=a["need_backward"], fp8=a["fp8"])

    def check(self, c, b, res):
        out, ctx = res
        x = np.asarray(host(b["x"]))
        if x.dtype != F32 or x.ndim != 3:
            raise ValueError("x accepted")
        cfg = b["_cfg"]
        w = {(k if k.endswith(".weight") else k + ".weight"): np.asarray(v, np.float64) for k, v in b["params"].items()}
        pos = None if b["pos"] is None else np.asarray(host(b["pos"]))
        if x.size == 0 or cfg.hidden_size == 0:
            if host(out).shape != x.shape:
                fail(f"out shape {host(out).shape}")
            return
        if b["fp8"]:
            want = rmla.mla_forward(x, w, cfg, pos, lin=lin8)
            if rel(out, want) > 1e-3:
                fail(f"out: relative error {rel(out, want):.3g} vs the FP8 reference")
        else:
            close(out, rmla.mla_forward(x, w, cfg, pos), "out", 1e-4, atol_rel=1e-4)


@op("mla_backward", ("dsc_mla_backward", "mla_backward"), MLA_ARGS, examples=20)
class MLABackward:
    def gen(self, c):
        fp8 = c.flag(0.15, "fp8")
        if fp8:  # dims past one 128-block (at tiny dims a 1x128 tile holds a few values: no oracle)
            cfg = dsc.ModelConfig.tiny(hidden_size=200, num_attention_heads=4,
                                       q_lora_rank=c.pick([136, None], "q_lora8"), kv_lora_rank=160,
                                       qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=40)
        else:
            cfg = draw_mla_cfg(c)
        B, T = c.pick([1, 2], "B"), c.pick([1, 2, 5], "T") if not fp8 else 9
        x = c.randn((B, T, cfg.hidden_size), F32, scale=1.0 if fp8 else None)
        w = mla_weights(c, cfg)
        out, ctx = dsc.mla_forward(x, w, cfg, fp8=fp8)
        if c.flag(0.05, "ctx.nobackward.bad?"):
            _, ctx = dsc.mla_forward(x, w, cfg, need_backward=False)
            c.mut("ctx of a forward with need_backward=False", VALUE)
        if c.flag(0.04, "ctx.replace?"):
            ctx = c.pick([None, {}], "ctx.other")
            c.mut(f"ctx = {ctx!r}", TYPE)
        dout = c.randn(out.shape, F32)
        return dict(dout=c.mutate_array("dout", dout), ctx=ctx, x=x, w=w, cfg=cfg, fp8=fp8)

    def call(self, a):
        return dsc.mla_backward(a["dout"], a["ctx"])

    def check(self, c, b, g):
        dout = f64(b["dout"])
        if dout.shape != b["x"].shape:
            raise ValueError("dout accepted")
        x, cfg = b["x"].astype(np.float64), b["cfg"]
        W = {k: np.asarray(v, np.float64) for k, v in b["w"].items()}
        if set(g) != set(W) | {"x"}:
            fail(f"gradient keys {sorted(set(g) ^ (set(W) | {'x'}))}")
        if not np.isfinite(dout).all():  # NaN / inf in dout: no finite gradient to compare
            return

        def loss(xx, ww):
            return float((rmla.mla_forward(xx, ww, cfg) * dout).sum())

        if b["fp8"]:
            # the gradient of the FP8 forward (no float64 reference of it): within 25% of the
            # float32 layer's, as tests/test_mla.py states for these dims
            g32 = dsc.mla_backward(b["dout"], dsc.mla_forward(b["x"], b["w"], cfg)[1])
            for k in g32:
                if not np.isfinite(f64(host(g[k]))).all() or rel(g[k], f64(g32[k])) > 0.25:
                    fail(f"grads[{k}] (fp8): relative distance {rel(g[k], f64(g32[k])):.3g} to the float32 gradient")
            return
        scales = {k: float(np.abs(f64(host(g[k]))).sum()) for k in g}
        top = max(scales.values()) if scales else 0.0
        for k in ["x"] + sorted(W):
            G = f64(host(g[k]))
            base = x if k == "x" else W[k]
            V = c.rng.standard_normal(base.shape)
            h = 1e-6 * max(float(np.abs(base).max(initial=0.0)), 1e-3)  # small: saturated softmaxes curve
            if k == "x":
                fd = (loss(x + h * V, W) - loss(x - h * V, W)) / (2 * h)
            else:
                fd = (loss(x, {**W, k: base + h * V}) - loss(x, {**W, k: base - h * V})) / (2 * h)
            gv = float((G * V).sum())
            scale = float((np.abs(G) * np.abs(V)).sum()) + 1e-9
            if os.environ.get("DSC_PROPERTY_DEBUG"):
                for hh in (h * 10, h, h / 10, h / 100):
                    fdd = (loss(x + hh * V, W) - loss(x - hh * V, W)) / (2 * hh) if k == "x" else \
                        (loss(x, {**W, k: base + hh * V}) - loss(x, {**W, k: base - hh * V})) / (2 * hh)
                    print("DEBUG", k, hh, gv, fdd, file=sys.stderr)
            # float32 noise follows the largest gradients of the layer (they feed every other)
            tol = 0.25 * scale if b["fp8"] else 1e-3 * scale + 1e-6 * top + 1e-9
            if fd == 0.0 and not b["fp8"]:
                # the loss does not depend on this weight in float64 at all (T = 1: a softmax
                # over one key is constant, so the query projections get no gradient); the C
                # layer's softmax backward takes D_t = dO_t . o_t, whose float32 rounding leaves
                # noise (relative to the layer's largest gradients) instead of an exact zero
                tol = 1e-2 * scale + 5e-5 * top + 1e-9  # measured: up to 5e-6 * top
            if abs(gv - fd) > tol:
                fail(f"grads[{k}]: <g, v> = {gv:.6g}, finite difference {fd:.6g} (tol {tol:.3g})")


CACHE_FNS = ("dsc_mla_cache_create", "MLACache", "dsc_mla_cache", "dsc_mla_cache_add_sequence",
             "dsc_mla_cache_free_sequence", "dsc_mla_cache_truncate", "dsc_mla_cache_sequence_length",
             "dsc_mla_cache_block_table", "dsc_mla_prefill", "dsc_mla_decode", "mla_prefill", "mla_decode",
             "dsc_mla_cache_read")
CACHE_ARGS = MLA_ARGS + ("max_batch", "max_tokens", "block_size", "dtype", "n_layers", "n_blocks", "device",
                         "seq_id", "length", "opt", "kv_lora_rank", "rope_dim", "latent", "rope", "blocks")


@op("mla_cache", CACHE_FNS, CACHE_ARGS, examples=25)
class MLACacheProp:
    """MLACache + mla_prefill / mla_decode: a prefill then decode steps (one or more tokens
    per sequence, ragged prompts) matches the causal forward over the whole sequence; a bad
    call in between raises and leaves the cache as it was."""

    def gen(self, c):
        cfg = draw_mla_cfg(c)
        dtype = c.pick(["float32", "float32", "bfloat16", "float8_e4m3fn"], "cache_dtype")
        B = c.pick([1, 2, 3], "B")
        max_tokens = c.pick([8, 16, 64], "max_tokens")
        block = c.pick([1, 4, 16, 64], "block_size")
        kw = dict(max_batch=B + c.pick([0, 1], "spare"), max_tokens=max_tokens, block_size=block,
                  n_blocks=c.pick([0, 0, 3], "n_blocks"))
        bad_kw = None
        if c.flag(0.1, "ctor.bad?"):
            k = c.pick(["max_batch", "max_tokens", "block_size", "n_blocks", "n_layers", "dtype", "device"], "ctor.k")
            v, e = c.pick({"max_batch": [(0, VALUE), (-1, VALUE), (2 ** 31, VALUE), (2.5, TYPE)],
                           "max_tokens": [(0, VALUE), (2 ** 40, VALUE), ("8", TYPE)],
                           "block_size": [(0, VALUE), (-4, VALUE), (None, TYPE)],
                           "n_blocks": [(-1, VALUE), (2 ** 33, VALUE)],
                           "n_layers": [(0, VALUE), (2 ** 31, VALUE)],
                           "dtype": [("int8", TYPE), ("float16", TYPE), (None, TYPE)],
                           "device": [("tpu", VALUE), ("cuda:x", VALUE), (3, TYPE)]}[k], "ctor.v")
            bad_kw = {k: v}
            c.mut(f"MLACache({k}={v!r})", e + ((MemoryError,) if e == VALUE else ()))
        steps = []
        n_steps = c.draw(st.integers(1, 4), "steps")
        for i in range(n_steps):
            steps.append(dict(T=c.pick([1, 1, 2, 3] if i else [1, 2, 5], f"T{i}"),
                              ragged=i == 0 and c.flag(0.3, "ragged"),
                              bad=c.pick(["ids", "dup", "start", "overflow", "x", "layer", "unknown_free", "dtype"],
                                         f"bad{i}") if c.flag(0.12, f"step{i}.bad?") else None))
        return dict(cfg=cfg, dtype=dtype, B=B, kw=kw, bad_kw=bad_kw, steps=steps, fp8=c.flag(0.1, "fp8"),
                    w=mla_weights(c, cfg), seed=int(c.rng.integers(0, 2 ** 31)))

    def call(self, a):
        """Runs the whole scenario; returns what the check needs (or raises the first
        error of a deliberately bad constructor)."""
        cfg, B = a["cfg"], a["B"]
        kw = dict(a["kw"], **(a["bad_kw"] or {}))
        dtype = kw.pop("dtype", a["dtype"])
        cache = dsc.MLACache(cfg, dtype=dtype, **kw)
        rng = np.random.default_rng(a["seed"])
        ids = [cache.add_sequence() for _ in range(B)]
        seqs = [[] for _ in range(B)]  # the tokens (rows of x) of each sequence
        outs = []  # (b, position, row of out)
        log = []
        for i, s in enumerate(a["steps"]):
            T = s["T"]
            x = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
            lengths = [cache.length(j) for j in ids]
            if lengths[0] + T > cache.max_tokens:
                break
            pos = np.array([[lengths[b] + t for t in range(T)] for b in range(B)], np.int32)
            n = [T] * B
            if s["ragged"]:
                n = [int(rng.integers(0, T + 1)) for _ in range(B)]
                n[0] = T
                for b in range(B):
                    pos[b, n[b]:] = -1
            if s["bad"] is not None:
                err = self._bad_call(a, cache, ids, x, pos, s["bad"], rng)
                log.append(err)
                if [cache.length(j) for j in ids] != lengths:
                    fail(f"a failed call ({s['bad']}: {err}) changed the cache lengths {lengths} -> "
                         f"{[cache.length(j) for j in ids]}")
            f = dsc.mla_prefill if i == 0 else dsc.mla_decode
            try:
                y = f(x, a["w"], cfg, cache, ids, pos if s["ragged"] else None, fp8=a["fp8"])
            except ValueError as e:  # a small pool (n_blocks) may run out: the cache stays as it was
                if not (a["kw"]["n_blocks"] and "cache full" in str(e)):
                    raise
                if [cache.length(j) for j in ids] != lengths:
                    fail(f"a failed call (cache full) changed the cache lengths")
                log.append(str(e))
                break
            for b in range(B):
                for t in range(n[b]):
                    seqs[b].append(x[b, t])
                    outs.append((b, int(pos[b, t]), y[b, t]))
                for t in range(n[b], T):
                    if np.any(y[b, t] != 0):
                        fail(f"out[{b}, {t}]: a padding row is not zero")
        return seqs, outs, log

    def _bad_call(self, a, cache, ids, x, pos, how, rng):
        cfg = a["cfg"]
        call = lambda xx=x, ii=ids, pp=pos, layer=0: dsc.mla_decode(  # noqa: E731
            xx, a["w"], cfg, cache, ii, pp, layer=layer, fp8=a["fp8"])
        try:
            if how == "ids":
                call(ii=[max(ids) + 100] + ids[1:])
            elif how == "dup" and len(ids) > 1:
                call(ii=[ids[0]] * len(ids))
            elif how == "start":
                p2 = pos.copy()
                p2[0] = p2[0] + 5 - np.minimum(p2[0], 0)
                call(pp=p2)
            elif how == "overflow":
                p2 = pos.copy()
                p2[0] = cache.max_tokens + np.arange(p2.shape[1]) - 1
                p2[0] = np.arange(p2.shape[1]) + cache.max_tokens
                call(pp=p2)
            elif how == "x":
                call(xx=x[..., :-1].copy() if x.shape[-1] > 1 else x[:, :0].copy())
            elif how == "layer":
                call(layer=c_layer if (c_layer := 1) else 1)
            elif how == "unknown_free":
                cache.free_sequence(max(ids) + 1000)
            else:
                call(xx=x.astype(np.float64))
        except BaseException as e:  # noqa: BLE001
            if type(e) not in DOCUMENTED:
                fail(f"bad call ({how}): undocumented {type(e).__name__}: {e}")
            if not any(f in str(e) for f in CACHE_FNS):
                fail(f"bad call ({how}): the message names no function: {e}")
            return f"{type(e).__name__}: {e}"
        if how == "dup" and len(ids) == 1:
            return "skipped"
        fail(f"bad call ({how}) returned without an error")

    def check(self, c, b, res):
        seqs, outs, log = res
        cfg = b["cfg"]
        tol = {"float32": 1e-4, "bfloat16": 3e-2, "float8_e4m3fn": 8e-2}[b["dtype"]]
        W = {k: np.asarray(v, np.float64) for k, v in b["w"].items()}
        lin = rmla._matmul_t
        if b["fp8"]:  # q, kv_a, o in FP8; the absorbed kv_b products on kv_b rounded through E4M3 blocks
            tol += 3e-4
            kvb = W["kv_b_proj.weight"]
            kvb8 = rf.dequantize(*rf.quantize(kvb, (128, 128)), (128, 128))
            lin = lambda a, m: a @ kvb8.T if m.shape == kvb.shape and np.array_equal(m, kvb) else lin8(a, m)  # noqa
        wants = []
        for bb, sq in enumerate(seqs):
            if sq:
                X = np.stack(sq)[None].astype(np.float64)
                wants.append(rmla.mla_forward(X, W, cfg, lin=lin)[0])
            else:
                wants.append(None)
        got = np.stack([o for _, _, o in outs]) if outs else np.zeros((0, cfg.hidden_size))
        want = np.stack([wants[bb][p] for bb, p, _ in outs]) if outs else got
        if outs and rel(got, want) > tol:
            fail(f"prefill/decode outputs: relative error {rel(got, want):.3g} > {tol} ({b['dtype']} cache)")


@op("MLACache", CACHE_FNS, CACHE_ARGS, examples=40)
class MLACacheOps:
    """The MLACache sequence bookkeeping: add / free / truncate / length / block_table / read."""

    def gen(self, c):
        cfg = dsc.ModelConfig.tiny(hidden_size=8, num_attention_heads=1, q_lora_rank=None, kv_lora_rank=4,
                                   qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2)
        ops = []
        for i in range(c.draw(st.integers(1, 8), "n_ops")):
            o = c.pick(["add", "add", "free", "truncate", "length", "blocks", "read"], f"op{i}")
            sid = c.pick([None, 0, 1, 2, 7, -1, 2 ** 40, 2 ** 63, 2 ** 70, "3", 2.0], f"id{i}")
            arg = c.pick([0, 1, 3, -1, 2 ** 62, 2 ** 70, None], f"arg{i}")
            ops.append((o, sid, arg))
        return dict(cfg=cfg, ops=ops, max_batch=c.pick([1, 2, 3], "max_batch"))

    def call(self, a):
        cache = dsc.MLACache(a["cfg"], max_batch=a["max_batch"], max_tokens=8, block_size=2, dtype="float32")
        live = {}
        log = []
        for o, sid, arg in a["ops"]:
            try:
                if o == "add":
                    r = cache.add_sequence(sid)
                    live[r] = 0
                elif o == "free":
                    cache.free_sequence(sid)
                    live.pop(sid, None)
                elif o == "truncate":
                    cache.truncate(sid, arg)
                elif o == "length":
                    n = cache.length(sid)
                    if sid in live and n != live[sid]:
                        fail(f"length({sid}) = {n}, want {live[sid]}")
                elif o == "blocks":
                    cache.block_table(sid)
                else:
                    lat, rope = cache.read(sid, 0 if arg is None else arg)
                log.append((o, sid, arg, "ok"))
            except Failure:
                raise
            except BaseException as e:  # noqa: BLE001
                if type(e) not in DOCUMENTED:
                    fail(f"{o}({sid!r}, {arg!r}): undocumented {type(e).__name__}: {e}")
                if not any(f in str(e) for f in CACHE_FNS):
                    fail(f"{o}({sid!r}, {arg!r}): the message names no function: {e}")
                ok_id = isinstance(sid, int) and not isinstance(sid, bool) and 0 <= sid < 2 ** 63
                if o in ("length", "blocks", "free") and ok_id and sid in live:
                    fail(f"{o}({sid}) of a live sequence raised {type(e).__name__}: {e}")
                log.append((o, sid, arg, type(e).__name__))
        return log

    def check(self, c, b, log):
        pass


# ============================================================================= plumbing

PLUMB_FNS = ("empty", "tensor", "to_numpy", "dsc_memcpy", "copy")


@op("empty", PLUMB_FNS, ("shape", "dtype", "device"))
class Empty:
    def gen(self, c):
        shape = tuple(c.dims(c.draw(st.integers(0, 5), "rank"), "shape"))
        dtype = c.pick(["float32", "bf16", "e4m3", "float8_e5m2", "int32", "int64", "uint8", "bool", "int8",
                        "float64", "float16", np.float32, BF16, np.dtype("int64")], "dtype")
        a = dict(shape=shape, dtype=dtype, device="cpu")
        if c.flag(0.3, "bad?"):
            k = c.pick(["shape", "dtype", "device"], "bad.k")
            v, e = c.pick({"shape": [((-1,), VALUE), ((2 ** 62, 4), VALUE), ((2 ** 70,), VALUE), (5, TYPE),
                                     ((2.5,), TYPE), (("a",), TYPE), ((None,), TYPE), ((1,) * 17, VALUE),
                                     (None, TYPE), ((1 << 40, 1 << 30), VALUE)],
                           "dtype": [("complex64", TYPE), ("object", TYPE), (None, TYPE), (3, TYPE)],
                           "device": [("tpu", VALUE), ("cuda:-1", VALUE), (None, TYPE), (("x", 0), ANY_DOC)]}[k],
                          "bad.v")
            a[k] = v
            c.mut(f"{k} = {v!r}", e + ((MemoryError,) if k == "shape" else ()))
        return a

    def call(self, a):
        return dsc.empty(a["shape"], a["dtype"], a["device"])

    def check(self, c, b, t):
        if not isinstance(t, dsc.Tensor) or t.shape != tuple(b["shape"]):
            fail(f"empty({b['shape']}) -> {t!r}")
        arr = dsc.to_numpy(t)
        want_dt = dsc.numpy_dtype(dsc.parse_dtype(b["dtype"], "x", "y"))
        if arr.dtype != want_dt or arr.shape != tuple(b["shape"]):
            fail(f"to_numpy(empty) is {arr.dtype} {arr.shape}")
        arr[...] = 0  # writable, and big enough
        if not np.shares_memory(arr, dsc.to_numpy(t)) and arr.size:
            fail("to_numpy of a host Tensor is not a view")


@op("tensor", PLUMB_FNS, ("data", "dtype", "device", "src", "dst"))
class TensorProp:
    def gen(self, c):
        shape = tuple(c.dims(c.draw(st.integers(0, 4), "rank"), "shape"))
        dt = c.pick([F32, BF16, E4M3, E5M2, I32, I64, np.dtype(np.uint8), np.dtype(bool), np.dtype(np.float64)],
                    "dtype")
        data = c.randn(shape, dt)
        data = c.mutate_array("data", data, p=0.3, kinds=["layout", "layout", "py", "nonfinite", "readonly"]) \
            if dt not in (E4M3, E5M2) else data
        dtype = None
        if c.flag(0.3, "dtype"):
            dtype = c.pick(["float32", "bf16", "int64", np.float32], "to_dtype")
        for m in c.muts:  # tensor() takes numbers np.asarray takes, in any layout
            if m.what.split(":")[0] == "data":
                m.benign = m.benign or "layout" in m.what or "list" in m.what or "float" in m.what or \
                    "0-d" in m.what
        for m in c.muts:
            if "a str" in m.what:  # NumPy: could not convert string to float (ValueError) or dtype <U1
                m.exc = ANY_DOC
        if c.flag(0.05, "dtype.bad?"):
            dtype = c.pick(["int9", object], "bad_dtype")
            c.mut(f"dtype = {dtype!r}", TYPE)
        return dict(data=data, dtype=dtype)

    def call(self, a):
        return dsc.tensor(a["data"], dtype=a["dtype"])

    def check(self, c, b, t):
        want = np.asarray(b["data"]) if b["dtype"] is None else np.asarray(
            b["data"], dtype=dsc.numpy_dtype(dsc.parse_dtype(b["dtype"], "x", "y")))
        if want.dtype == object or want.dtype.kind in "US":
            raise ValueError(f"{want.dtype} data accepted")
        got = dsc.to_numpy(t)
        if got.shape != want.shape or got.dtype != want.dtype:
            fail(f"tensor: {got.dtype} {got.shape}, want {want.dtype} {want.shape}")
        if got.tobytes() != np.ascontiguousarray(want).tobytes():
            fail("tensor: the values differ from the data")
        back = dsc.to_numpy(dsc.tensor(got))
        if back.tobytes() != got.tobytes():
            fail("tensor(to_numpy(t)) differs from t")


# ============================================================================= reinforcement learning, distillation

from reference import rl as rrl  # noqa: E402

BAD_IGNORE = [(2 ** 70, ANY_DOC), (-(2 ** 70), ANY_DOC)] + NOT_AN_INT


def draw_logits(c: Case, budget: int = 1 << 10):
    """(dtype, lead dims, V, logits [*lead, V])."""
    dt = float_dtype(c)
    lead = tuple(c.dims(c.draw(st.integers(0, 3), "rank_lead"), "lead", budget=budget, big=False))
    V = c.pick([1, 2, 5, 127, 128, 129, 1000], "V")
    if c.flag(0.03, "big_V"):
        lead, V = (1,), 1 << 20
    return dt, lead, V, c.randn(lead + (V,), dt, scale=c.pick([1.0, 10.0, 1e-3, 30.0], "lscale"))


def draw_targets(c: Case, lead: tuple, V: int, name: str = "targets", check_range: bool = True):
    """(targets [*lead] int with some ignore_index, ignore_index); maybe one value out of
    [0, V) (a ValueError when check_range)."""
    ignore = c.pick([-100, -1, 0, 2 ** 40], "ignore_index")
    t = c.ints(lead, 0, V, c.pick([I32, I64], f"{name}_dtype"))
    if ignore == 2 ** 40 and t.dtype == I32:
        ignore = -100
    if t.size and c.flag(0.5, "some ignored"):
        t[c.rng.random(t.shape) < 0.3] = ignore
    if check_range and t.size and c.flag(0.08, f"{name}.bad?"):
        bad = c.pick([-2, V, V + 7, -(2 ** 31)], f"{name}.bad")
        if bad != ignore:
            t.reshape(-1)[int(c.rng.integers(0, t.size))] = bad
            c.mut(f"{name}: value {bad} (ignore_index {ignore})", VALUE)
    return t, ignore


def valid_targets(b: dict, V: int, lead: tuple, check_range: bool = True) -> np.ndarray:
    """The targets of a returned call as int64, refusing what the op should have refused."""
    t = np.asarray(host(b["targets"]))
    if t.dtype.kind not in "iu" or t.shape != lead:
        raise ValueError("targets do not fit")
    ig = int(b["ignore_index"])
    ok = t != ig
    if check_range and ok.any() and (t[ok].min() < 0 or t[ok].max() >= V):
        raise ValueError("targets out of range")
    return t.astype(np.int64)


def finite_rows(z: np.ndarray) -> np.ndarray:
    """[*lead, 1]: rows whose values are all finite (elsewhere a softmax has no exact value)."""
    return np.isfinite(z).all(axis=-1, keepdims=True)


def lp_atol(z: np.ndarray) -> float:
    """float32 log-softmax: errors grow with the size of the logits."""
    fin = z[np.isfinite(z)]
    return 2e-6 + 2e-6 * (float(np.abs(fin).max()) if fin.size else 0.0)


@op("token_logprob", ("dsc_token_logprob", "token_logprob"),
    ("logits", "targets", "ignore_index", "logprobs", "entropy"))
class TokenLogprob:
    def gen(self, c):
        dt, lead, V, logits = draw_logits(c)
        t, ignore = draw_targets(c, lead, V)
        return dict(logits=c.mutate_array("logits", logits),
                    targets=c.mutate_array("targets", t, ok_dtypes=(I32, I64), fill=lambda s: c.ints(s, 0, V, I32)),
                    ignore_index=maybe_param(c, "ignore_index", ignore, BAD_IGNORE, p=0.06),
                    return_entropy=c.flag(0.6, "return_entropy"))

    def call(self, a):
        return dsc.token_logprob(a["logits"], a["targets"], ignore_index=a["ignore_index"],
                                 return_entropy=a["return_entropy"])

    def check(self, c, b, res):
        z = f64(b["logits"])
        t = valid_targets(b, z.shape[-1], z.shape[:-1])
        lp, ent = res if b["return_entropy"] else (res, None)
        want_lp, want_ent = rrl.token_logprob(z, t, int(b["ignore_index"]))
        ok = finite_rows(z)[..., 0] | (t == int(b["ignore_index"]))  # a non-finite row: NaN or any value
        atol = lp_atol(z)
        close(np.where(ok, f64(host(lp)), 0.0), np.where(ok, want_lp, 0.0), "logprobs", 1e-5, atol=atol)
        if dtname(lp) != "float32":
            fail(f"logprobs dtype {dtname(lp)}, want float32")
        if b["return_entropy"]:
            close(np.where(ok, f64(host(ent)), 0.0), np.where(ok, want_ent, 0.0), "entropy", 1e-4, atol=atol)


@op("token_logprob_backward", ("dsc_token_logprob_backward", "token_logprob_backward"),
    ("logits", "targets", "ignore_index", "dlogprobs", "dlogits", "out"), writes=("out",))
class TokenLogprobBackward:
    def gen(self, c):
        dt, lead, V, logits = draw_logits(c)
        t, ignore = draw_targets(c, lead, V)
        dlp = c.randn(lead, F32)
        a = dict(logits=c.mutate_array("logits", logits),
                 targets=c.mutate_array("targets", t, ok_dtypes=(I32, I64), fill=lambda s: c.ints(s, 0, V, I32)),
                 dlogprobs=c.mutate_array("dlogprobs", dlp),
                 ignore_index=maybe_param(c, "ignore_index", ignore, BAD_IGNORE, p=0.06))
        a["out"] = out_arg(c, "out", lead + (V,), dt, a, may_alias=("logits",))
        return a

    def call(self, a):
        return dsc.token_logprob_backward(a["logits"], a["targets"], a["dlogprobs"],
                                          ignore_index=a["ignore_index"], out=a["out"])

    def check(self, c, b, dl):
        z = f64(b["logits"])
        t = valid_targets(b, z.shape[-1], z.shape[:-1])
        g = f64(b["dlogprobs"])
        if g.shape != z.shape[:-1]:
            raise ValueError("dlogprobs does not fit")
        ig = int(b["ignore_index"])
        want = rrl.token_logprob_backward(z, t, g, ig)
        ok = (finite_rows(z)[..., 0] & np.isfinite(g)) | (t == ig)
        got = f64(host(dl))
        rtol, atol_rel = tol_for(dtname(dl))
        # onehot - softmax cancels where p ~ 1: the softmax's absolute error times |dlogprobs|
        atol = 1e-7 + lp_atol(z) * np.abs(np.where(ok & np.isfinite(g), g, 0.0))[..., None]
        close(np.where(ok[..., None], got, 0.0), np.where(ok[..., None], want, 0.0), "dlogits", rtol,
              atol=atol, atol_rel=atol_rel)
        if dtname(dl) != dtname(b["logits"]):
            fail(f"dlogits dtype {dtname(dl)}, want {dtname(b['logits'])}")
        written_out(c, c.args["out"], dl, "dlogits")


BAD_STD_EPS = [(0.0, VALUE), (-1e-4, VALUE), (math.nan, VALUE), (math.inf, VALUE)] + NOT_A_NUMBER


def mutate_nonfinite(c: Case, name: str, a: np.ndarray, exc: tuple = VALUE) -> np.ndarray:
    """Maybe NaN/inf values in an array that must be finite."""
    if a.size and c.flag(0.06, f"{name}.badval?"):
        a = a.copy()
        v = c.pick([np.nan, np.inf, -np.inf], f"{name}.nonfinite")
        a.reshape(-1)[int(c.rng.integers(0, a.size))] = v
        c.mut(f"{name}: a value {v}", exc)
    return a


@op("grpo_advantages", ("dsc_grpo_advantages", "grpo_advantages"),
    ("rewards", "group_size", "scale_rewards", "std_eps", "drop_zero_std_groups", "advantages", "keep"))
class GRPOAdvantages:
    def gen(self, c):
        G = c.pick([2, 2, 3, 4, 8, 16], "G")
        groups = c.pick([1, 1, 2, 3, 7, 64], "groups")
        n = G * groups
        if c.flag(0.05, "n.bad?"):
            n = c.pick([0, n + 1, n - 1], "n.bad")
            if n % G == 0 and n > 0:
                n += 1
            c.mut(f"rewards: n = {n}, not a positive multiple of group_size {G}", VALUE)
        kind = c.pick(["binary", "normal", "few"], "rewards_kind")
        if kind == "binary":
            r = c.ints((n,), 0, 2, F32)
        elif kind == "few":
            r = c.ints((n,), -2, 3, F32) * np.float32(0.5)
        else:
            r = c.randn((n,), F32)
        r = mutate_nonfinite(c, "rewards", r)
        scale = c.pick(["group", "batch", "none", True, False], "scale_rewards")
        if c.flag(0.05, "scale_rewards.bad?"):
            scale = c.pick(["std", None, 1, "GROUP"], "scale_rewards.bad")
            c.mut(f"scale_rewards = {scale!r}", VALUE)
        drop = c.pick([False, True, np.bool_(True)], "drop")
        if c.flag(0.04, "drop_zero_std_groups.bad?"):
            drop = c.pick([1, "yes", None], "drop.bad")
            c.mut(f"drop_zero_std_groups = {drop!r}", TYPE)
        return dict(rewards=c.mutate_array("rewards", r, nonfinite=False),
                    group_size=maybe_param(c, "group_size", G, [(1, VALUE), (0, VALUE), (-2, VALUE), (2.5, VALUE),
                                                                ("2", VALUE), (None, VALUE), (True, VALUE)], p=0.06),
                    scale_rewards=scale, std_eps=maybe_param(c, "std_eps", c.pick([1e-4, 1e-6, 1.0], "std_eps"),
                                                             BAD_STD_EPS, p=0.06),
                    drop_zero_std_groups=drop)

    def call(self, a):
        return dsc.grpo_advantages(a["rewards"], a["group_size"], scale_rewards=a["scale_rewards"],
                                   std_eps=a["std_eps"], drop_zero_std_groups=a["drop_zero_std_groups"])

    def check(self, c, b, res):
        adv, keep = res
        r = f64(b["rewards"])
        G = int(b["group_size"])
        if r.ndim != 1 or r.size == 0 or r.size % G or not np.isfinite(r).all():
            raise ValueError("rewards should have been refused")
        scale = {True: "group", False: "none"}.get(b["scale_rewards"], b["scale_rewards"]) \
            if isinstance(b["scale_rewards"], bool) else b["scale_rewards"]
        want, wkeep = rrl.grpo_advantages(r, G, scale, float(np.float32(b["std_eps"])),
                                          bool(b["drop_zero_std_groups"]))
        # the error of r - mean in float32, divided by the denominator
        g = r.reshape(-1, G)
        den = np.ones_like(g) if scale == "none" else \
            (g.std(1, ddof=1, keepdims=True) if scale == "group" else r.std(ddof=1)) + float(b["std_eps"])
        atol = (2e-6 * np.abs(g).max(1, keepdims=True) / den * np.ones_like(g)).reshape(-1)
        close(adv, want, "advantages", 1e-5, atol=atol)
        exact(keep, wkeep, "keep")
        if dtname(adv) != "float32" or dtname(keep) != "int32":
            fail(f"dtypes {dtname(adv)}, {dtname(keep)}, want float32, int32")


BAD_EPSILON = [(0.0, VALUE), (1.0, VALUE), (-0.1, VALUE), (math.nan, VALUE), (math.inf, VALUE)] + NOT_A_NUMBER


@op("grpo_loss", ("dsc_grpo_loss", "grpo_loss"),
    ("logprobs", "advantages", "mask", "targets", "ignore_index", "old_logprobs", "ref_logprobs", "loss_type",
     "epsilon", "epsilon_high", "beta", "max_completion_length", "keep", "loss", "dlogprobs", "stats"))
class GRPOLoss:
    def gen(self, c):
        B = c.pick([1, 2, 3, 5, 16], "B")
        T = c.pick([1, 2, 7, 33, 129], "T")
        lp = (-np.abs(c.rng.standard_normal((B, T))) - 0.05).astype(np.float32)
        spread = c.pick([0.0, 0.1, 0.3, 1.0], "spread")
        old = (lp + spread * c.rng.standard_normal((B, T))).astype(np.float32)
        ref = (lp + spread * c.rng.standard_normal((B, T))).astype(np.float32)
        adv = c.randn((B,), F32, scale=1.0)
        m = (c.rng.random((B, T)) < c.pick([0.0, 0.3, 0.8, 1.0], "density")).astype(np.int32)
        beta = c.pick([0.0, 0.0, 0.04, 1.0], "beta")
        a = dict(logprobs=c.mutate_array("logprobs", lp, nonfinite=False),
                 advantages=c.mutate_array("advantages", adv, nonfinite=False))
        a["old_logprobs"] = c.mutate_array("old_logprobs", old, nonfinite=False, optional=True) \
            if c.flag(0.5, "with_old") else None
        with_ref = beta > 0 or c.flag(0.5, "with_ref")
        a["ref_logprobs"] = c.mutate_array("ref_logprobs", ref, nonfinite=False, optional=beta == 0) \
            if with_ref else None
        if a["ref_logprobs"] is None and beta > 0 and with_ref:
            c.muts[-1].exc = ANY_DOC  # ref None with beta > 0: a ValueError naming ref_logprobs
        if c.flag(0.5, "use_targets"):
            V = 50
            ignore = c.pick([-100, -1, 2 ** 40], "ignore_index")
            t = c.ints((B, T), 0, V, c.pick([I32, I64], "targets_dtype"))
            if ignore == 2 ** 40 and t.dtype == I32:
                ignore = -100
            t[m == 0] = ignore
            a["mask"] = None
            a["targets"] = c.mutate_array("targets", t, ok_dtypes=(I32, I64), kinds=["dtype", "shape", "layout",
                                                                                      "tensor"])
            a["ignore_index"] = maybe_param(c, "ignore_index", ignore, BAD_IGNORE, p=0.06)
        else:
            a["mask"] = c.mutate_array("mask", m, ok_dtypes=(I32, I64, np.dtype(bool), np.dtype(np.uint8),
                                                             np.dtype(np.int8)),
                                       kinds=["dtype", "shape", "layout", "tensor"])
            a["targets"], a["ignore_index"] = None, -100
            if c.flag(0.03, "mask_and_targets?"):
                a["targets"] = m.copy()
                c.mut("both mask and targets", VALUE)
        if c.flag(0.3, "with_keep"):
            keep = (c.rng.random(B) < 0.7).astype(np.int32)
            a["keep"] = c.mutate_array("keep", keep, ok_dtypes=(I32,), optional=True)
        else:
            a["keep"] = None
        a["loss_type"] = c.pick(["grpo", "dr_grpo", "dapo"], "loss_type")
        if c.flag(0.04, "loss_type.bad?"):
            a["loss_type"] = c.pick(["ppo", None, 0], "loss_type.bad")
            c.mut(f"loss_type = {a['loss_type']!r}", VALUE)
        a["epsilon"] = maybe_param(c, "epsilon", c.pick([0.2, 0.1, 0.5], "epsilon"), BAD_EPSILON, p=0.05)
        a["epsilon_high"] = maybe_param(c, "epsilon_high", c.pick([None, 0.28, 2.0], "epsilon_high"),
                                        [(0.0, VALUE), (-1.0, VALUE), (math.nan, VALUE), ("x", TYPE)], p=0.05)
        a["beta"] = maybe_param(c, "beta", beta, [(-0.1, VALUE), (math.nan, VALUE), (None, TYPE)], p=0.05)
        a["max_completion_length"] = maybe_param(c, "max_completion_length",
                                                 c.pick([None, T, T + 3], "max_completion_length"),
                                                 [(0, VALUE), (-1, VALUE), (2.5, VALUE), ("3", VALUE)], p=0.05)
        a["return_grad"] = c.flag(0.8, "return_grad")
        return a

    def call(self, a):
        return dsc.grpo_loss(a["logprobs"], a["advantages"], a["mask"], targets=a["targets"],
                             ignore_index=a["ignore_index"], old_logprobs=a["old_logprobs"],
                             ref_logprobs=a["ref_logprobs"], loss_type=a["loss_type"], epsilon=a["epsilon"],
                             epsilon_high=a["epsilon_high"], beta=a["beta"],
                             max_completion_length=a["max_completion_length"], keep=a["keep"],
                             return_grad=a["return_grad"])

    def check(self, c, b, res):
        loss, dl, stats = res
        lp = f64(b["logprobs"])
        if lp.ndim != 2:
            raise ValueError("logprobs should have been refused")
        B, T = lp.shape
        if b["targets"] is not None:
            mask = np.asarray(host(b["targets"])) != int(b["ignore_index"])
        else:
            mask = np.asarray(host(b["mask"])) != 0
        adv = f64(b["advantages"])
        old = None if b["old_logprobs"] is None else f64(b["old_logprobs"])
        ref = None if b["ref_logprobs"] is None else f64(b["ref_logprobs"])
        keep = None if b["keep"] is None else np.asarray(host(b["keep"]))
        if mask.shape != (B, T) or adv.shape != (B,) or (keep is not None and keep.shape != (B,)):
            raise ValueError("an argument does not fit")
        # the C layer takes float32 parameters
        e_lo = float(np.float32(b["epsilon"]))
        e_hi = e_lo if b["epsilon_high"] is None else float(np.float32(b["epsilon_high"]))
        beta = float(np.float32(b["beta"]))
        kw = dict(old=old, ref=ref, loss_type=b["loss_type"], eps_low=e_lo, eps_high=e_hi, beta=beta,
                  Lmax=b["max_completion_length"], keep=keep)
        want = rrl.grpo_loss(lp, adv, mask, **kw)
        if host(loss).shape != ():
            fail(f"loss shape {host(loss).shape}, want ()")
        close(loss, want, "loss", 1e-4, atol=1e-6)
        if b["return_grad"]:
            wg = rrl.grpo_loss_grad(lp, adv, mask, **kw)
            close(dl, wg, "dlogprobs", 1e-4, atol_rel=1e-6, atol=1e-9)
        elif dl is not None:
            fail("dlogprobs returned with return_grad=False")
        ws = rrl.grpo_stats(lp, adv, mask, old, ref, e_lo, e_hi, keep=keep)
        if stats["loss"] != float(host(loss)):
            fail(f"stats['loss'] {stats['loss']} != loss {float(host(loss))}")
        for k, v in ws.items():
            close(np.float64(stats[k]), v, f"stats[{k!r}]", 1e-4, atol=1e-5)


@op("logits_topk", ("dsc_logits_topk", "logits_topk"), ("logits", "k", "index_dtype", "values", "indices"))
class LogitsTopk:
    def gen(self, c):
        dt, lead, V, logits = draw_logits(c)
        if dt == F32 and c.flag(0.2, "ties"):  # repeated values: ties go to the lower index
            logits = np.round(logits).astype(F32)
        # (the CPU top-k inserts into a sorted list: O(V k) a row, so no k ~ V of a 2^20 vocabulary)
        k = c.pick([1, 2, 8, V, max(V // 2, 1)] if V <= 4096 else [1, 2, 8, 64], "k")
        k = min(max(k, 1), max(V, 1))
        k = maybe_param(c, "k", k, [(0, VALUE), (V + 1, VALUE), (-1, VALUE), (2.5, TYPE), (None, TYPE),
                                    (True, TYPE), ("2", TYPE)], p=0.08)
        idt = c.pick(["int32", "int64"], "index_dtype")
        if c.flag(0.04, "index_dtype.bad?"):
            idt = c.pick(["float32", "int8", None], "index_dtype.bad")
            c.mut(f"index_dtype = {idt!r}", VALUE)
        return dict(logits=c.mutate_array("logits", logits), k=k, index_dtype=idt)

    def call(self, a):
        return dsc.logits_topk(a["logits"], a["k"], index_dtype=a["index_dtype"])

    def check(self, c, b, res):
        vals, idx = res
        z = f64(b["logits"])
        wv, wi = rrl.logits_topk(z, int(b["k"]))
        exact(vals, wv, "values")
        exact(idx, wi, "indices")
        if dtname(vals) != "float32" or dtname(idx) != b["index_dtype"]:
            fail(f"dtypes {dtname(vals)}, {dtname(idx)}, want float32, {b['index_dtype']}")


@op("topk_kl", ("dsc_topk_kl", "topk_kl"),
    ("logits", "teacher_indices", "teacher_logits", "targets", "temperature", "ignore_index", "grad_scale", "loss",
     "dlogits"))
class TopkKL:
    def gen(self, c):
        dt, lead, V, logits = draw_logits(c)
        K = min(c.pick([1, 2, 4, 8, 64], "K"), V) if V else c.pick([1, 2], "K")
        teacher = c.randn(lead + (V,), F32, scale=c.pick([1.0, 5.0], "tscale"))
        if V and c.flag(0.8, "topk_indices"):
            tl, ti = rrl.logits_topk(teacher, K)
            tl = tl.astype(F32)
        else:  # any indices, repeats allowed
            ti = c.rng.integers(0, max(V, 1), lead + (K,))
            tl = c.randn(lead + (K,), F32, scale=1.0)
        ti = ti.astype(c.pick([I32, I64], "ti_dtype"))
        if V == 0 and math.prod(lead) > 0:
            c.mut("logits: V = 0", VALUE)
        if ti.size and c.flag(0.08, "teacher_indices.out_of_range?"):
            ti = ti.copy()
            bad = c.pick([-1, V, V + 5, -(2 ** 31)], "teacher_indices.bad")
            ti.reshape(-1)[int(c.rng.integers(0, ti.size))] = bad
            c.mut(f"teacher_indices: value {bad} out of [0, {V})", VALUE)
        t, ignore = draw_targets(c, lead, max(V, 1), check_range=False)
        a = dict(logits=c.mutate_array("logits", logits),
                 teacher_indices=c.mutate_array("teacher_indices", ti, ok_dtypes=(I32, I64),
                                                fill=lambda s: c.ints(s, 0, max(V, 1), I32)),
                 teacher_logits=c.mutate_array("teacher_logits", tl),
                 targets=c.mutate_array("targets", t, ok_dtypes=(I32, I64)),
                 ignore_index=maybe_param(c, "ignore_index", ignore, BAD_IGNORE, p=0.05),
                 temperature=maybe_param(c, "temperature", c.pick([1.0, 2.0, 0.5], "temperature"),
                                         [(0.0, VALUE), (-1.0, VALUE), (math.nan, VALUE), (math.inf, VALUE),
                                          (1e39, VALUE)] + NOT_A_NUMBER, p=0.06),
                 grad_scale=maybe_param(c, "grad_scale", c.pick([1.0, 0.5, 0.0, -1.0, 1e3], "grad_scale"),
                                        BAD_SCALAR, p=0.06),
                 return_dlogits=c.flag(0.8, "return_dlogits"))
        return a

    def call(self, a):
        return dsc.topk_kl(a["logits"], a["teacher_indices"], a["teacher_logits"], a["targets"],
                           temperature=a["temperature"], ignore_index=a["ignore_index"], grad_scale=a["grad_scale"],
                           return_dlogits=a["return_dlogits"])

    def check(self, c, b, res):
        loss, dl = res
        z = f64(b["logits"])
        V = z.shape[-1]
        ti = np.asarray(host(b["teacher_indices"]))
        tl = f64(b["teacher_logits"])
        t = valid_targets(b, V, z.shape[:-1], check_range=False)
        if ti.dtype.kind not in "iu" or ti.shape != tl.shape or ti.shape[:-1] != z.shape[:-1]:
            raise ValueError("teacher arrays do not fit")
        if ti.size and (ti.min() < 0 or ti.max() >= V):
            raise ValueError("teacher_indices out of range")
        tau = float(np.float32(b["temperature"]))
        gs = float(np.float32(b["grad_scale"]))
        ig = int(b["ignore_index"])
        ok = t != ig
        fin = (finite_rows(z) & finite_rows(tl))[..., 0]
        want = rrl.topk_kl(z, ti, tl, t, tau, ig)
        if host(loss).shape != ():
            fail(f"loss shape {host(loss).shape}, want ()")
        scale = max(lp_atol(z), lp_atol(tl)) / tau
        poisoned = ((np.isnan(z) | (z == np.inf)).any(-1) | (np.isnan(tl) | (tl == np.inf)).any(-1))[ok]
        if poisoned.any():  # a NaN or +inf logit of a counted row: no finite loss
            if np.isfinite(f64(host(loss))):
                fail(f"loss {float(host(loss))} is finite, but a counted row has a NaN or +inf logit")
        elif fin[ok].all():
            close(loss, want, "loss", 1e-4, atol=10 * scale)
        # (else a -inf logit: the op takes 0 log 0 = 0 where the reference's float64 gives NaN; not compared)
        if b["return_dlogits"]:
            wg = rrl.topk_kl_grad(z, ti, tl, t, tau, ig, gs)
            rows = (fin | ~ok)[..., None]
            rtol, atol_rel = tol_for(dtname(dl))
            # q - p cancels where the student matches the teacher: an absolute error of the
            # softmaxes' (scale), times the factor grad_scale / n_valid / tau
            nv = max(int(ok.sum()), 1)
            close(np.where(rows, f64(host(dl)), 0.0), np.where(rows, wg, 0.0), "dlogits", rtol, atol_rel=atol_rel,
                  atol=1e-9 + scale * abs(gs) / nv / tau)
            if dtname(dl) != dtname(b["logits"]):
                fail(f"dlogits dtype {dtname(dl)}, want {dtname(b['logits'])}")
        elif dl is not None:
            fail("dlogits returned with return_dlogits=False")


# ============================================================================= token sampling

from reference import sample as rsmp  # noqa: E402

BAD_TEMPERATURE = [(-1.0, VALUE), (math.nan, VALUE), (math.inf, VALUE)] + NOT_A_NUMBER
BAD_TOP_K = [(-1, VALUE), (2 ** 31, VALUE), (2.5, TYPE), (None, TYPE), (True, TYPE)]
BAD_TOP_P = [(0.0, VALUE), (1.5, VALUE), (-0.1, VALUE), (math.nan, VALUE)] + NOT_A_NUMBER


@op("sample_tokens", ("dsc_sample_tokens", "sample_tokens"),
    ("logits", "rng", "active", "tokens", "out", "temperature", "top_k", "top_p"), writes=("rng", "out"))
class SampleTokens:
    def gen(self, c):
        B = c.pick([0, 1, 2, 5, 17], "B")
        V = c.pick([1, 2, 5, 127, 129, 1000], "V")
        logits = c.randn((B, V), F32, scale=c.pick([1.0, 10.0, 1e-3], "lscale"))
        if c.flag(0.3, "ties"):
            logits = np.round(logits).astype(F32)
        rng = rsmp.keys(int(c.rng.integers(0, 1 << 30)), B)
        rng[:, 1] = c.ints((B,), 0, 1 << 20, I64)
        active = c.ints((B,), 0, 2, I32) if c.flag(0.4, "active?") else None
        a = dict(logits=c.mutate_array("logits", logits),
                 rng=c.mutate_array("rng", rng, role="out", kinds=["dtype", "shape", "layout", "py"]),
                 active=c.mutate_array("active", active, optional=True, fill=lambda s: c.ints(s, 0, 2, I32)),
                 temperature=maybe_param(c, "temperature", c.pick([0.0, 0.5, 1.0, 2.0], "temperature"),
                                         BAD_TEMPERATURE, p=0.08),
                 top_k=maybe_param(c, "top_k", c.pick([0, 1, 3, V, V + 4], "top_k"), BAD_TOP_K, p=0.08),
                 top_p=maybe_param(c, "top_p", c.pick([1.0, 0.9, 0.5, 0.05], "top_p"), BAD_TOP_P, p=0.08))
        a["out"] = out_arg(c, "out", (B,), I32, a)
        return a

    def call(self, a):
        return dsc.sample_tokens(a["logits"], a["rng"], temperature=a["temperature"], top_k=a["top_k"],
                                 top_p=a["top_p"], active=a["active"], out=a["out"])

    def check(self, c, b, tok):
        written_out(c, c.args["out"], tok, "tokens")
        z = np.asarray(b["logits"], np.float32)
        act = None if b["active"] is None else np.asarray(b["active"])
        want, want_rng = rsmp.sample(z, np.asarray(b["rng"], np.int64), b["temperature"], b["top_k"], b["top_p"],
                                     act)
        got = host(tok)
        if dtname(tok) != "int32" or got.shape != (z.shape[0],):
            fail(f"tokens: {dtname(tok)} {got.shape}, want int32 ({z.shape[0]},)")
        live = np.ones(z.shape[0], bool) if act is None else act != 0
        exact(got[live], want[live], "tokens")
        if b["out"] is not None:  # rows not sampled keep what out held
            exact(got[~live], np.asarray(b["out"])[~live], "tokens (inactive rows)")
        exact(host(c.args["rng"]), want_rng, "rng")


# ============================================================================= self-tests of the oracle

if os.environ.get("DSC_PROPERTY_SELFTEST"):
    # Broken stand-ins for an op, to show that the oracle and the runner catch each kind of
    # failure (tests/test_properties.py runs them and expects them to fail).

    def _selftest(kind: str):
        def call(a):
            try:
                y = dsc.rms_norm(a["x"], a["w"], a["eps"], out=a["out"])
            except ValueError:
                if kind == "unclear":
                    raise ValueError("bad value") from None
                raise
            if kind == "wrong" and isinstance(y, np.ndarray) and y.size and y.dtype == F32:
                y.reshape(-1)[0] += 0.5  # a silent wrong answer
            if kind == "exception":
                raise IndexError("list index out of range")
            if kind == "crash":
                import ctypes

                ctypes.string_at(0)  # SIGSEGV
            if kind == "modifies" and isinstance(a["x"], np.ndarray) and a["x"].size and a["x"].flags.writeable:
                a["x"].reshape(-1)[0] = 7
            return y
        return call

    for _k in ("wrong", "exception", "unclear", "crash", "modifies"):
        OPS[f"selftest_{_k}"] = Op(f"selftest_{_k}", RMSNorm().gen, _selftest(_k), RMSNorm().check,
                                   ("dsc_rms_norm_forward", "rms_norm"), ("x", "w", "y", "eps", "out"), ("out",), 20)


# ============================================================================= the driver


def run(name: str, n: int, seed: Optional[int] = None, verbose: bool = False) -> dict:
    o = OPS[name]
    stats: collections.Counter = collections.Counter()

    phases = None if os.environ.get("DSC_PROPERTY_SHRINK", "1") != "0" else \
        [Phase.explicit, Phase.reuse, Phase.generate]

    @settings(max_examples=n, deadline=None, derandomize=seed is None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              **({} if phases is None else {"phases": phases}))
    @given(st.data())
    def prop(data):
        stats[run_case(o, data)] += 1

    if seed is not None:
        prop = hseed(seed)(prop)
    t0 = time.perf_counter()
    prop()
    return dict(op=name, examples=sum(stats.values()), outcomes=dict(stats), seconds=round(time.perf_counter() - t0, 2))


def main(argv: list) -> int:
    # an output too large for the machine is a MemoryError, not a process the kernel kills
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
    except (ImportError, ValueError, OSError):
        pass
    if argv[:1] == ["--list"]:
        print(" ".join(OPS))
        return 0
    name, n = argv[0], int(argv[1])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else None
    print(json.dumps(run(name, n, seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
