"""The README as a new user meets it: the two commands are marked for CI's README run
(.ci/readme_check.py executes every marked block from a fresh clone's root), the measured
sections equal the committed benchmark results, and no document points outside the clone."""

import glob
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def test_the_two_commands_are_run_by_ci():
    check = _load(".ci/readme_check.py", "readme_check")
    code = [c.strip() for _, c, _ in check.blocks(_readme())]
    assert "pip install . && python -m deepseek_c demo" in code, code
    assert "pip install '.[test]' && pytest" in code, code
    assert code.index("pip install . && python -m deepseek_c demo") == 0, "the main job runs first (later blocks use demo_out/)"
    assert any(c.startswith("import numpy as np, deepseek_c as dsc") for c in code), "the Python snippet"
    assert any("cc -std=c11 examples/c/example.c" in c for c in code), "the C build lines"


@pytest.mark.parametrize("key", ["demo", "busy", "dist"])
def test_measured_sections_equal_the_committed_results(key):
    rs = _load("benchmarks/readme_sections.py", "readme_sections")
    assert rs.section(_readme(), key) == rs.render(key), \
        f"README.md's {key} section is not the newest results: python benchmarks/readme_sections.py --write"


def test_readme_demo_numbers_cover_the_issue_grid():
    """The demo's spread is recorded over 5 seeds, two thread counts and two BLAS kernels."""
    import json
    rs = _load("benchmarks/readme_sections.py", "readme_sections")
    with open(rs.newest("demo_cpu"), encoding="utf-8") as fh:
        runs = json.load(fh)["runs"]
    assert {r["seed"] for r in runs} >= {0, 1, 2, 3, 4}
    assert len({r["threads"] for r in runs}) >= 2
    assert len({r["blas_kernel"] for r in runs}) >= 2


def test_docs_stand_alone():
    docs = ["README.md", "CONTRIBUTING.md"] + glob.glob(os.path.join(ROOT, "docs", "*.md"))
    for d in docs:
        with open(os.path.join(ROOT, d), encoding="utf-8") as fh:
            text = fh.read()
        for bad in ("../shared", "/work/shared"):
            assert bad not in text, f"{d} points outside the clone: {bad}"
