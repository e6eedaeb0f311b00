"""Shared pytest configuration: a per-test seeded RNG, the `cuda` marker that skips with
a reason where no GPU is seen, and tests/ on sys.path so that test files can `from reference import dense` and
`from _util import ...` (helpers) under any import mode."""

import os
import sys
import zlib

import numpy as np
import pytest

import deepseek_c as dsc

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped, with the reason, where none is visible)")


def pytest_collection_modifyitems(config, items):
    n = dsc.cuda_device_count()
    if n > 0:
        return
    reason = dsc.info()["cuda_unavailable_reason"] or "no CUDA device visible"
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's name: fresh per test, reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
