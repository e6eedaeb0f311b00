#!/usr/bin/env python3
"""Check that the files of csrc/model call only downward.

The order is the list at the top of csrc/model/model_internal.h (one line per file or per
group of files, "a.c, b.c   what they hold"; files on one line are in order left to right):
a file may call functions defined in files listed before it, never in one listed after it.
The check reads the compiled objects: each csrc/model/*.c is compiled with the library's
flags (setup.py's, at -O0, so no call is optimized away) into a temporary directory, or
taken from --objects (setup.py's object directory, build/temp.*/dsc_objs_*); `nm` gives
each object's defined and undefined global symbols, and an undefined symbol another model
object defines is a call to that file.

Prints the order, what each file calls below it, and every upward call, unlisted file or
listed file that does not exist; exits 1 on any of those, 2 when it cannot run (no
compiler, no nm, a compile error), 0 otherwise.

    python tools/check_layering.py [--root DIR] [--objects DIR] [--cc CC] [-q]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join("csrc", "model")
HEADER = "model_internal.h"

_LIST_START = re.compile(r"in this order")
_LIST_LINE = re.compile(r"^\s*\*\s+([A-Za-z0-9_]+\.c(?:\s*,\s*[A-Za-z0-9_]+\.c)*)(?:\s|$)")
_LIST_END = re.compile(r"^\s*\*/?\s*$")


def parse_order(header_text: str) -> list[str]:
    """The file order of the list in the header's leading comment (after "in this order",
    up to the first empty comment line)."""
    order: list[str] = []
    in_list = False
    for line in header_text.splitlines():
        if not in_list:
            in_list = bool(_LIST_START.search(line))
            continue
        if _LIST_END.match(line):
            break
        m = _LIST_LINE.match(line)
        if m:
            order += [f.strip() for f in m.group(1).split(",")]
    return order


def library_cflags(root: str) -> list[str]:
    """setup.py's C flags for the library's sources, at -O0 (without CUDA, NCCL or MPI: no
    file of csrc/model reads those defines for anything but device memory info)."""
    inc = [f"-I{os.path.join(root, 'csrc', 'include')}", f"-I{os.path.join(root, 'csrc', 'core')}"]
    try:  # the BLAS headers, as setup.py adds them (the model files do not need them)
        import scipy_openblas32 as ob  # type: ignore

        inc.append(f"-I{ob.get_include_dir()}")
    except ImportError:
        pass
    return ["-std=c11", "-fPIC", "-fopenmp", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra",
            "-Wno-unused-parameter", "-O0", "-DDSC_BUILDING_LIBRARY", '-DDSC_BLAS_NAME="check_layering"', *inc]


def compile_objects(cc: str, sources: list[str], cflags: list[str], out_dir: str) -> dict[str, str]:
    """{file name: object path}; raises RuntimeError with the compiler's output on failure."""
    def one(src: str) -> tuple[str, str, subprocess.CompletedProcess]:
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        r = subprocess.run([cc, *cflags, "-c", src, "-o", obj], capture_output=True, text=True)
        return os.path.basename(src), obj, r

    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, sources))
    bad = [f"{name}:\n{r.stderr}" for name, _, r in results if r.returncode != 0]
    if bad:
        raise RuntimeError("compile failed: " + "\n".join(bad))
    return {name: obj for name, obj, _ in results}


def find_objects(obj_dir: str, names: list[str]) -> dict[str, str]:
    """The objects of `names` in setup.py's object directory (csrc_model_<name>.o) or named
    <name>.o; raises RuntimeError when one is missing."""
    found = {}
    for n in names:
        for cand in (f"csrc_model_{n}.o", f"{n}.o"):
            p = os.path.join(obj_dir, cand)
            if os.path.exists(p):
                found[n] = p
                break
        else:
            raise RuntimeError(f"--objects {obj_dir}: no object for {n} (csrc_model_{n}.o)")
    return found


def symbols(nm: str, obj: str) -> tuple[set[str], set[str]]:
    """(defined global symbols, undefined symbols) of an object."""
    r = subprocess.run([nm, "-P", obj], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nm {obj}: {r.stderr.strip()}")
    defined, undefined = set(), set()
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind in ("U", "w", "v"):
            undefined.add(name)
        elif kind.isupper():
            defined.add(name)
    return defined, undefined


def check(order: list[str], present: list[str], syms: dict[str, tuple[set[str], set[str]]]) -> tuple[list[str], dict]:
    """(problems, {file: {lower file: sorted names}}) of the order against the symbols."""
    problems = []
    for f in present:
        if f not in order:
            problems.append(f"unlisted: {f} is not in the order list of {HEADER} (add its line in its place)")
    for f in order:
        if f not in present:
            problems.append(f"missing: {f} is listed in {HEADER} but {MODEL_DIR}/{f} does not exist")
    dup = sorted({f for f in order if order.count(f) > 1})
    for f in dup:
        problems.append(f"listed twice: {f}")
    rank = {f: i for i, f in enumerate(order)}
    owner: dict[str, str] = {}
    for f in present:
        for s in syms[f][0]:
            if s in owner:
                problems.append(f"defined twice: {s} in {owner[s]} and {f}")
            owner.setdefault(s, f)
    calls: dict[str, dict[str, list[str]]] = {}
    for f in present:
        for s in sorted(syms[f][1]):
            g = owner.get(s)
            if g is None or g == f:
                continue
            calls.setdefault(f, {}).setdefault(g, []).append(s)
    for f in sorted(calls, key=lambda x: rank.get(x, -1)):
        if f not in rank:
            continue
        for g, names in calls[f].items():
            if g in rank and rank[g] > rank[f]:
                problems.append(f"upward call: {f} (#{rank[f] + 1}) calls {g} (#{rank[g] + 1}): {', '.join(names)}")
    return problems, calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=ROOT, help="the repository root (default: this script's)")
    ap.add_argument("--objects", help="take the objects from this directory instead of compiling")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler (default $CC or cc)")
    ap.add_argument("--nm", default=os.environ.get("NM", "nm"))
    ap.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    a = ap.parse_args(argv)

    model_dir = os.path.join(a.root, MODEL_DIR)
    with open(os.path.join(model_dir, HEADER), encoding="utf-8") as fh:
        order = parse_order(fh.read())
    if not order:
        print(f"check_layering: no order list found in {MODEL_DIR}/{HEADER} (a comment line with "
              f"'in this order', then one ' *   file.c   ...' line per file)", file=sys.stderr)
        return 2
    sources = sorted(glob.glob(os.path.join(model_dir, "*.c")))
    present = [os.path.basename(s) for s in sources]
    if not shutil.which(a.nm):
        print(f"check_layering: no nm ({a.nm})", file=sys.stderr)
        return 2
    try:
        if a.objects:
            objs = find_objects(a.objects, present)
            syms = {f: symbols(a.nm, o) for f, o in objs.items()}
        else:
            if not shutil.which(a.cc):
                print(f"check_layering: no C compiler ({a.cc})", file=sys.stderr)
                return 2
            with tempfile.TemporaryDirectory(prefix="dsc_layering_") as tmp:
                objs = compile_objects(a.cc, sources, library_cflags(a.root), tmp)
                syms = {f: symbols(a.nm, o) for f, o in objs.items()}
    except RuntimeError as e:
        print(f"check_layering: {e}", file=sys.stderr)
        return 2

    problems, calls = check(order, present, syms)
    if not a.quiet:
        print(f"{MODEL_DIR}: {len(order)} files, each calls only files above it in this list:")
        for i, f in enumerate(order):
            below = sorted(calls.get(f, {}), key=lambda g: order.index(g) if g in order else -1)
            print(f"  {i + 1:2d}. {f:20s} calls: {', '.join(below) if below else '-'}")
    for p in problems:
        print(p)
    if problems:
        print(f"check_layering: {len(problems)} problem(s)")
        return 1
    if not a.quiet:
        print("check_layering: OK, no upward call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
