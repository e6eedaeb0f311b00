"""The float32 grouped GEMM of the MoE experts (kernels/f32_grouped.cu: forward, input
gradient and weight gradient over the permuted rows in exact float32, reading the expert
offsets on the device; the reference model's experts on CUDA): its index math simulated on
the CPU (tests/c/test_f32_grouped_tile.c), and on a GPU the public op against the CPU's
(random shapes, empty experts, sizes no multiple of the tile, outputs poisoned with NaN)."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import deepseek_c as dsc
from deepseek_c import _C


def test_f32_grouped_tile_header_on_cpu(tmp_path):
    """kernels/f32_grouped_tile.cuh through tests/c/test_f32_grouped_tile.c: the kernel's
    stage loop, its 256 threads' fmaf accumulation and its stores, for the three MoE
    products (unaligned, empty and many-per-tile groups, rows past the last group), bit for
    bit the sequential fmaf sum in k order and within float32 rounding of a double
    reference; unchecked offsets read and write inside the operands only."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = str(tmp_path / "test_f32_grouped_tile")
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1",
                    os.path.join(root, "tests", "c", "test_f32_grouped_tile.c"),
                    f"-I{dsc.get_include()}", "-lm", "-o", exe], check=True, capture_output=True, text=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed") and int(last.split()[0]) >= 15, r.stdout


def _offsets(rng, E, R, empty):
    """[E+1] int32 offsets of R rows over E experts, the experts in `empty` owning none."""
    cuts = np.sort(rng.integers(0, R + 1, E - 1))
    counts = np.diff(np.concatenate([[0], cuts, [R]]))
    for e in empty:  # move an empty expert's rows to its successor (or the first expert)
        to = (e + 1) % E
        counts[to] += counts[e]
        counts[e] = 0
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def _nan(shape):
    return dsc.tensor(np.full(shape, np.nan, np.float32), device="cuda")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


CASES = [  # E, R, N, K, experts with no rows
    (4, 200, 72, 56, (1,)),
    (5, 130, 33, 17, (0, 4)),
    (8, 45, 65, 1, (2, 3, 7)),
    (2, 256, 64, 128, ()),
    (3, 1, 9, 7, (0, 2)),
    (6, 333, 129, 97, (5,)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("E,R,N,K,empty", CASES)
def test_cuda_f32_grouped_linear_matches_cpu(E, R, N, K, empty):
    """The public op's forward and backward on CUDA (the exact float32 kernel: FP32 math,
    the functional ops' default) against the CPU's BLAS per expert: y, dx and dw within
    float32 accumulation-order noise (2^-19 of the largest |value| for y and dx, 2^-18 for
    dw; a sequential float32 sum differs from the CPU's by ~2^-22 on these cases);
    every output poisoned with NaN before the kernel writes; an empty expert's dw block is
    exactly zero."""
    rng = np.random.default_rng(1000 + E * 7 + R)
    offs = _offsets(rng, E, R, empty)
    x = rng.standard_normal((R, K)).astype(np.float32)
    w = rng.standard_normal((E, N, K)).astype(np.float32)
    dy = rng.standard_normal((R, N)).astype(np.float32)
    y_c = dsc.grouped_linear(x, w, offs)
    dx_c, dw_c = dsc.grouped_linear_backward(dy, x, w, offs)

    xd, wd, dyd = (dsc.tensor(a, device="cuda") for a in (x, w, dy))
    od = dsc.tensor(offs, device="cuda")
    yd, dxd, dwd = _nan((R, N)), _nan((R, K)), _nan((E, N, K))
    _C.grouped_linear_forward(xd, wd, od, yd)
    _C.grouped_linear_backward(dyd, xd, wd, od, dxd, dwd)
    y_g, dx_g, dw_g = dsc.to_numpy(yd), dsc.to_numpy(dxd), dsc.to_numpy(dwd)
    for name, g in (("y", y_g), ("dx", dx_g), ("dw", dw_g)):
        assert np.all(np.isfinite(g)), name
    assert _rel(y_g, y_c) < 2.0 ** -19, _rel(y_g, y_c)
    assert _rel(dx_g, dx_c) < 2.0 ** -19, _rel(dx_g, dx_c)
    assert _rel(dw_g, dw_c) < 2.0 ** -18, _rel(dw_g, dw_c)  # sums of up to R products
    for e in empty:
        assert not dw_g[e].any(), e


@pytest.mark.cuda
def test_cuda_f32_grouped_linear_is_deterministic_and_exact_fp32():
    """Two runs give the same bits (no atomics, no split-K), and the arithmetic is float32
    FMA, not TF32: x = 1 + i 2^-16 (17 significant bits: TF32 keeps 11) times w in {1, 2},
    8 terms: every partial sum < 2^5 on a 2^-16 grid fits float32's 24 bits, so the exact
    sum comes out (TF32 operands would be off by up to ~2^-10 per term)."""
    rng = np.random.default_rng(7)
    E, R, N, K = 3, 150, 40, 8
    offs = np.array([0, 60, 60, R], np.int32)
    x = (1.0 + 2.0 ** -16 * rng.integers(1, 256, (R, K))).astype(np.float32)
    w = (2.0 ** rng.integers(0, 2, (E, N, K))).astype(np.float32)
    xd, wd, od = dsc.tensor(x, device="cuda"), dsc.tensor(w, device="cuda"), dsc.tensor(offs, device="cuda")
    outs = []
    for _ in range(2):
        yd = _nan((R, N))
        dsc.op_counters("cuda", reset=True)
        _C.grouped_linear_forward(xd, wd, od, yd)
        c = dsc.op_counters("cuda", reset=True)
        # the public op's one wait: the check of the caller's offsets (the kernel reads the
        # device copy; the MoE layer's calls skip the check, test_moe_layer)
        assert c["syncs"] == 1 and c["copies_to_host"] == 1, c
        outs.append(dsc.to_numpy(yd))
    assert np.array_equal(outs[0], outs[1])
    want = np.zeros((R, N))
    for e in range(E):
        sl = slice(offs[e], offs[e + 1])
        want[sl] = x[sl].astype(np.float64) @ w[e].astype(np.float64).T
    np.testing.assert_array_equal(outs[0].astype(np.float64), want)
