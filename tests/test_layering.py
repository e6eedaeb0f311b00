"""The files of csrc/model call only downward (tools/check_layering.py): the order is the list
in csrc/model/model_internal.h, checked on objects compiled with the library's flags (nm);
and the checker itself finds an upward call, an unlisted file and a listed file that is gone
in small made-up trees."""

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "check_layering.py")
CC = os.environ.get("CC", "cc") if shutil.which(os.environ.get("CC", "cc")) else shutil.which("gcc")

pytestmark = pytest.mark.skipif(CC is None or shutil.which("nm") is None,
                                reason="needs a C compiler and nm to build and read the objects")

sys.path.insert(0, os.path.join(ROOT, "tools"))
import check_layering  # noqa: E402


def run(*args):
    r = subprocess.run([sys.executable, TOOL, "--cc", CC, *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def test_model_files_call_only_downward():
    rc, out = run()
    assert rc == 0, out
    assert "no upward call" in out
    rows = [re.match(r"\s*\d+\.\s+(\S+)\s+calls: (.*)$", ln) for ln in out.splitlines()]
    calls = {m.group(1): m.group(2).split(", ") for m in rows if m}
    listed = list(calls)
    # the split of issue #15: storage, activations, layer math, training, inference on top
    for lo, hi in (("model.c", "model_acts.c"), ("model_acts.c", "model_layers.c"),
                   ("model_layers.c", "model_train.c"), ("model_layers.c", "generate.c"),
                   ("model_train.c", "policy.c")):
        assert listed.index(lo) < listed.index(hi), listed
    # every source file of csrc/model is in the list
    srcs = sorted(f for f in os.listdir(os.path.join(ROOT, "csrc", "model")) if f.endswith(".c"))
    assert sorted(listed) == srcs
    # the layer math and inference do not reach into training
    for f in ("model_layers.c", "generate.c"):
        assert "model_train.c" not in calls[f], (f, calls[f])


def _built_object_dirs():
    """setup.py's object directories (CPU and CUDA builds: build/temp.*/dsc_objs_<flags>) holding
    an up-to-date object of every csrc/model source."""
    srcs = glob.glob(os.path.join(ROOT, "csrc", "model", "*.c"))
    out = []
    for d in sorted(glob.glob(os.path.join(ROOT, "build", "temp.*", "dsc_objs_*"))):
        objs = [os.path.join(d, "csrc_model_" + os.path.basename(s) + ".o") for s in srcs]
        if all(os.path.exists(o) and os.path.getmtime(o) >= os.path.getmtime(s) for o, s in zip(objs, srcs)):
            out.append(d)
    return out


def test_built_objects_call_only_downward():
    """The same on the objects the library was linked from (-O3, and with DSC_WITH_CUDA in a
    CUDA build), where a build of this tree is at hand."""
    dirs = _built_object_dirs()
    if not dirs:
        pytest.skip("no up-to-date build/temp.*/dsc_objs_* of this tree (pip install . builds one)")
    for d in dirs:
        rc, out = run("--objects", d)
        assert rc == 0, (d, out)


def test_order_parser_reads_groups_and_continuations():
    text = textwrap.dedent("""\
        /*
         * x.h -- files call only downward in this order:
         *   a.c, b.c     formats
         *   c.c          storage, and a description that runs
         *                on (d.c is named here, not listed)
         *   d.c          the rest
         *
         *   e.c          after the list: not part of it
         */
        """)
    assert check_layering.parse_order(text) == ["a.c", "b.c", "c.c", "d.c"]


def _tree(tmp_path, order, files):
    d = tmp_path / "csrc" / "model"
    d.mkdir(parents=True)
    lines = "\n".join(f" *   {f}    what it holds" for f in order)
    (d / "model_internal.h").write_text(f"/*\n * files in this order:\n{lines}\n *\n */\n")
    for name, body in files.items():
        (d / name).write_text(body)
    return str(tmp_path)


LOW = "int low_fn(int x) { return x + 1; }\n"
HIGH = "int low_fn(int x);\nint high_fn(int x) { return low_fn(x) * 2; }\n"


def test_downward_call_passes(tmp_path):
    root = _tree(tmp_path, ["low.c", "high.c"], {"low.c": LOW, "high.c": HIGH})
    rc, out = run("--root", root)
    assert rc == 0, out
    assert "high.c" in out and "calls: low.c" in out


def test_upward_call_fails(tmp_path):
    up = "int high_fn(int x);\nint low_fn(int x) { return high_fn(x) + 1; }\n"
    root = _tree(tmp_path, ["low.c", "high.c"], {"low.c": up, "high.c": "int high_fn(int x) { return x; }\n"})
    rc, out = run("--root", root)
    assert rc == 1, out
    assert "upward call: low.c (#1) calls high.c (#2): high_fn" in out


def test_unlisted_and_missing_files_fail(tmp_path):
    root = _tree(tmp_path, ["low.c", "gone.c"], {"low.c": LOW, "high.c": HIGH})
    rc, out = run("--root", root)
    assert rc == 1, out
    assert "unlisted: high.c" in out
    assert "missing: gone.c" in out


def test_objects_from_a_directory(tmp_path):
    """--objects reads setup.py's object names (csrc_model_<file>.o) instead of compiling."""
    root = _tree(tmp_path, ["low.c", "high.c"], {"low.c": LOW, "high.c": HIGH})
    objs = tmp_path / "objs"
    objs.mkdir()
    for f in ("low.c", "high.c"):
        subprocess.run([CC, "-c", os.path.join(root, "csrc", "model", f), "-o", str(objs / f"csrc_model_{f}.o")],
                       check=True)
    rc, out = run("--root", root, "--objects", str(objs))
    assert rc == 0, out
    os.remove(objs / "csrc_model_high.c.o")
    rc, out = run("--root", root, "--objects", str(objs))
    assert rc == 2 and "no object for high.c" in out
