"""Every notebook in notebooks/ runs top to bottom on the CPU (nbclient), and is stored
executed -- outputs and plots included, so that readers of the repository see them -- from
one clean run: every code cell executed once, in order, without an error, with small images.

Regenerate the stored outputs after a change with
    jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb
(run from the repository root; notebooks write scratch files into notebooks/ only where they
say so). Each run's wall time is printed (pytest -s), not asserted.

A notebook that needs an optional package names it in its metadata
({"deepseek_c": {"requires": ["torch"]}}); where that package is not installed the run is
skipped with that reason (the stored-outputs check still applies)."""

import base64
import glob
import importlib.util
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
MAX_IMAGE_BYTES = 200_000  # a plot at ~70 dpi is 20-80 kB


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    missing = [m for m in nb.metadata.get("deepseek_c", {}).get("requires", []) if not _installed(m)]
    if missing:
        pytest.skip(f"{os.path.basename(path)} needs {', '.join(missing)}, which is not installed "
                    f"(pip install 'deepseek_c[{missing[0]}]')")
    for c in nb.cells:  # run from a clean state, not from the stored outputs
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    # Run from a scratch directory: notebooks may write files there.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    print(f"{os.path.basename(path)}: {time.perf_counter() - t0:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_stored_executed(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    name = os.path.basename(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{name}: execution counts {counts}: run it top to bottom once (see this file's docstring)"
    assert any(c.get("outputs") for c in code), f"{name}: stored without outputs"
    for i, c in enumerate(code):
        for o in c.get("outputs", []):
            assert o.get("output_type") != "error", f"{name}: code cell {i + 1} stored with an error"
            for mime, data in (o.get("data") or {}).items():
                if mime.startswith("image/") and mime != "image/svg+xml":
                    size = len(base64.b64decode(data))
                    assert size <= MAX_IMAGE_BYTES, f"{name}: code cell {i + 1}: a {size}-byte image"
