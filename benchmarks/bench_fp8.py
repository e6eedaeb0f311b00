"""FP8 benchmarks: block quantization (GB/s) and the block-scaled FP8 GEMMs (TFLOP/s) against
a baseline measured in the same run, one line per case.

CPU (default): baseline NumPy -- a NumPy 1x128 quantizer (abs-max, divide, ml_dtypes cast)
and a float32 GEMM through NumPy's BLAS. The CPU FP8 GEMM dequantizes both operands to
float32 and runs one sgemm (exact FP32 accumulation), so expect about float32 speed: its
job is being the reference, not being fast. Shapes are the DeepSeek-V3 ones scaled down
(M/8, N/4, K/4) unless --full.
GPU (--device cuda, needs PyTorch with CUDA; skips cleanly without a GPU): inputs are torch
tensors; baselines torch bf16 matmul (cuBLAS BF16 on the same shape: the "speedup" column,
speedup_vs_bf16 in the JSON, is the FP8 / BF16 ratio of PERFORMANCE.md's target) and a torch per-token quantizer; the
fraction of the H100/H200 FP8 dense roofline (1979 TFLOP/s) and of each case's published
anchor (PERFORMANCE.md: DeepGEMM 1550 TFLOP/s plain, 1346 contiguous grouped, 932 masked)
are shown. A build without FP8 CUDA kernels reports those cases as unsupported. The GPU run
uses the full shapes (well under a minute on an H100/H200) unless --quick.

    python benchmarks/bench_fp8.py [--device cpu|cuda] [--quick | --full] [--out PATH]

Full shapes (M x N x K): 4096x7168x16384, 4096x4096x7168, 64x2112x7168; a grouped GEMM of
8 groups x 4096 rows with N=4096, K=7168 (DeepGEMM's contiguous layout); on the GPU also a
masked grouped GEMM of 4 groups x 256 rows, N=4096, K=7168 (DeepGEMM's masked layout).
Writes benchmarks/results/fp8_<device>_<date>.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import numpy as np

import deepseek_c as dsc
from _bench import git_commit, timeit

FP8_FLOPS = 1979e12  # H100 SXM dense FP8
HBM_BYTES_PER_S = 3.35e12

FULL_GEMMS = [(4096, 7168, 16384), (4096, 4096, 7168), (64, 2112, 7168)]
FULL_GROUPED = (8, 4096, 4096, 7168)  # groups, rows per group, N, K
FULL_MASKED = (4, 256, 4096, 7168)  # groups, rows per group (all used), N, K
# Published anchors (PERFORMANCE.md), TFLOP/s: DeepGEMM on H800
ANCHOR = {"fp8_gemm": 1550.0, "fp8_grouped_gemm": 1346.0, "fp8_grouped_masked": 932.0}






def scaled(m: int, n: int, k: int, mode: str) -> tuple[int, int, int]:
    if mode == "full":
        return m, n, k
    if mode == "quick":
        return max(32, m // 32), max(64, n // 16), max(128, k // 16)
    return max(64, m // 8), max(64, n // 4), max(128, k // 4)


# ----------------------------------------------------------------------------- CPU


def np_quant_1x128(x: np.ndarray):
    """The NumPy baseline quantizer (K a multiple of 128)."""
    import ml_dtypes

    M, K = x.shape
    xb = x.reshape(M, K // 128, 128)
    amax = np.maximum(np.abs(xb).max(-1, keepdims=True), np.float32(1e-4))
    s = amax / np.float32(448.0)
    q = np.clip(xb / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    return q.reshape(M, K), s[..., 0]


def cpu_cases(mode: str):
    """(op, shape, dsc call, baseline call, bytes, flops)"""
    rng = np.random.default_rng(0)
    sync = lambda: None  # noqa: E731
    qm, qk = {"quick": (256, 1024), "default": (1024, 7168), "full": (4096, 7168)}[mode]
    x = rng.standard_normal((qm, qk)).astype(np.float32)
    nb = qm * qk * 5 + qm * (qk // 128) * 4
    yield ("quantize 1x128", f"{qm}x{qk}", lambda: dsc.fp8_quantize(x), lambda: np_quant_1x128(x), nb, 0, sync, None)
    w = rng.standard_normal((qm, qk)).astype(np.float32)
    nbw = qm * qk * 5 + (qm // 128) * (qk // 128) * 4
    yield ("quantize 128x128", f"{qm}x{qk}", lambda: dsc.fp8_quantize(w, block=(128, 128)), None, nbw, 0, sync, None)
    yield ("quantize 1x128 T", f"{qm}x{qk}", lambda: dsc.fp8_quantize(x, transpose=True), None, nb, 0, sync, None)

    for (m0, n0, k0) in FULL_GEMMS:
        m, n, k = scaled(m0, n0, k0, mode)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = (rng.standard_normal((n, k)) * k ** -0.5).astype(np.float32)
        aq, as_ = dsc.fp8_quantize(a)
        bq, bs = dsc.fp8_quantize(b, block=(128, 128))
        yield ("fp8_gemm", f"{m}x{n}x{k}", lambda aq=aq, as_=as_, bq=bq, bs=bs: dsc.fp8_gemm(aq, as_, bq, bs),
               lambda a=a, b=b: a @ b.T, m * k + n * k + 2 * m * n, 2 * m * n * k, sync, None)

    g, rows, n0, k0 = FULL_GROUPED
    _, n, k = scaled(rows, n0, k0, mode)
    rows = scaled(rows, n0, k0, mode)[0]
    M = g * rows
    a = rng.standard_normal((M, k)).astype(np.float32)
    b = (rng.standard_normal((g, n, k)) * k ** -0.5).astype(np.float32)
    aq, as_ = dsc.fp8_quantize(a)
    qs = [dsc.fp8_quantize(b[i], block=(128, 128)) for i in range(g)]
    bq, bs = np.stack([q for q, _ in qs]), np.stack([s for _, s in qs])
    offs = np.arange(g + 1, dtype=np.int32) * rows

    def base_grouped():
        return [a[i * rows:(i + 1) * rows] @ b[i].T for i in range(g)]

    yield ("fp8_grouped_gemm", f"{g}x{rows}x{n}x{k}", lambda: dsc.fp8_grouped_gemm(aq, as_, bq, bs, offs),
           base_grouped, M * k + g * n * k + 2 * M * n, 2 * M * n * k, sync, None)


# ----------------------------------------------------------------------------- CUDA


def cuda_cases(mode: str):
    import torch

    sync = torch.cuda.synchronize
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=gen) * scale

    def torch_quant(x):
        M, K = x.shape
        xb = x.view(M, K // 128, 128)
        s = xb.abs().amax(-1, keepdim=True).clamp(min=1e-4) / 448.0
        return (xb / s).to(torch.float8_e4m3fn).view(M, K), s.squeeze(-1)

    def experts(g, n, k):
        b = randn(g, n, k, scale=k ** -0.5)
        qs = [dsc.fp8_quantize(b[i], block=(128, 128)) for i in range(g)]
        return b.bfloat16(), torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])

    qm, qk = {"quick": (256, 1024), "default": (4096, 7168), "full": (4096, 7168)}[mode]
    x = randn(qm, qk)
    nb = qm * qk * 5 + qm * (qk // 128) * 4
    yield ("quantize 1x128", f"{qm}x{qk}", lambda: dsc.fp8_quantize(x), lambda: torch_quant(x), nb, 0, sync, None)
    shapes = FULL_GEMMS if mode != "quick" else [scaled(*s, "quick") for s in FULL_GEMMS]
    for (m, n, k) in shapes:
        a, b = randn(m, k), randn(n, k, scale=k ** -0.5)
        ab, bb = a.bfloat16(), b.bfloat16()
        try:
            aq, as_ = dsc.fp8_quantize(a)
            bq, bs = dsc.fp8_quantize(b, block=(128, 128))
            f = (lambda aq=aq, as_=as_, bq=bq, bs=bs: dsc.fp8_gemm(aq, as_, bq, bs))
        except dsc.Error as e:
            f = e
        yield ("fp8_gemm", f"{m}x{n}x{k}", f, lambda ab=ab, bb=bb: ab @ bb.T, m * k + n * k + 2 * m * n,
               2 * m * n * k, sync, ANCHOR["fp8_gemm"] if m >= 1024 else None)

    # contiguous layout: every group's rows a multiple of 128 (DeepGEMM's alignment)
    g, rows, n, k = FULL_GROUPED if mode != "quick" else (4, 128, 256, 512)
    M = g * rows
    a = randn(M, k)
    ab = a.bfloat16()
    try:
        bb, bq, bs = experts(g, n, k)
        aq, as_ = dsc.fp8_quantize(a)
        offs = torch.arange(g + 1, dtype=torch.int32, device="cuda") * rows
        f = lambda: dsc.fp8_grouped_gemm(aq, as_, bq, bs, offs, alignment=128)  # noqa: E731
    except dsc.Error as e:
        bb, f = randn(g, n, k).bfloat16(), e

    def base():
        return [ab[i * rows:(i + 1) * rows] @ bb[i].T for i in range(g)]

    yield ("fp8_grouped_gemm", f"{g}x{rows}x{n}x{k}", f, base, M * k + g * n * k + 2 * M * n, 2 * M * n * k, sync,
           ANCHOR["fp8_grouped_gemm"] if mode != "quick" else None)

    # masked layout (decode): G groups of Mmax rows, all used
    g, rows, n, k = FULL_MASKED if mode != "quick" else (2, 64, 256, 512)
    a3 = randn(g, rows, k)
    a3b = a3.bfloat16()
    try:
        bb3, bq3, bs3 = experts(g, n, k)
        qs = [dsc.fp8_quantize(a3[i]) for i in range(g)]
        aq3, as3 = torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])
        mm = torch.full((g,), rows, dtype=torch.int32, device="cuda")
        f = lambda: dsc.fp8_grouped_gemm_masked(aq3, as3, bq3, bs3, mm)  # noqa: E731
    except dsc.Error as e:
        bb3, f = randn(g, n, k).bfloat16(), e
    yield ("fp8_grouped_masked", f"{g}x{rows}x{n}x{k}", f, lambda: torch.bmm(a3b, bb3.transpose(1, 2)),
           g * rows * k + g * n * k + 2 * g * rows * n, 2 * g * rows * n * k, sync,
           ANCHOR["fp8_grouped_masked"] if mode != "quick" else None)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small shapes (CI smoke run)")
    size.add_argument("--full", action="store_true", help="the full DeepSeek-V3 shapes (slow on CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full" if args.full else "default"

    if args.device == "cuda":
        try:
            import torch
        except ImportError:
            print("skipped: --device cuda needs PyTorch")
            return
        if not torch.cuda.is_available() or dsc.cuda_device_count() == 0:
            print("skipped: no CUDA GPU visible (to PyTorch or to deepseek_c)")
            return
        name, base_name, cases = torch.cuda.get_device_name(), "torch", cuda_cases(mode)
    else:
        name, base_name, cases = platform.processor() or platform.machine(), "NumPy", cpu_cases(mode)

    print(f"deepseek_c {dsc.__version__} bench_fp8 on {args.device} ({name}), {mode} shapes, "
          f"threads {dsc.info()['max_threads']}")
    print(f"{'op':<20} {'shape':<22} {'dsc us':>11} {base_name + ' us':>12} {'speedup':>8} {'GB/s':>8} "
          f"{'TFLOP/s':>8} {'base TF/s':>9} {'roofline':>8} {'anchor':>7}")
    rows = []
    for op, shape, f, base, nbytes, flops, sync, anchor in cases:
        if isinstance(f, Exception):
            print(f"{op:<20} {shape:<22} unsupported: {f}")
            rows.append(dict(op=op, shape=shape, unsupported=str(f)))
            continue
        try:
            t = timeit(f, sync)
        except dsc.Error as e:  # e.g. a build without the CUDA FP8 kernels
            print(f"{op:<20} {shape:<22} unsupported: {e}")
            rows.append(dict(op=op, shape=shape, unsupported=str(e)))
            continue
        tb = timeit(base, sync) if base is not None else float("nan")
        gbs = nbytes / t / 1e9
        tfl = flops / t / 1e12 if flops else 0.0
        btf = flops / tb / 1e12 if flops and base is not None else 0.0
        roof = ""
        if args.device == "cuda":
            bound = max(nbytes / HBM_BYTES_PER_S, flops / FP8_FLOPS)
            roof = f"{bound / t * 100:.0f}%"
        sp = f"{tb / t:7.2f}x" if base is not None else "      -"
        pct = tfl / anchor * 100 if anchor else None
        print(f"{op:<20} {shape:<22} {t * 1e6:11.1f} {tb * 1e6:12.1f} {sp:>8} {gbs:8.2f} {tfl:8.3f} {btf:9.3f} "
              f"{roof:>8} {f'{pct:.0f}%' if pct is not None else '-':>7}")
        sys.stdout.flush()
        rows.append(dict(op=op, shape=shape, us=t * 1e6, baseline_us=tb * 1e6 if base is not None else None,
                         speedup=tb / t if base is not None else None,
                         # the GPU baselines are torch bf16 (cuBLAS BF16 on the same shape)
                         speedup_vs_bf16=tb / t if base is not None and args.device == "cuda" else None,
                         gb_s=gbs, tflop_s=tfl,
                         baseline_tflop_s=btf, roofline=roof, anchor_tflop_s=anchor, pct_of_anchor=pct))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"fp8_{args.device}_{_dt.date.today().isoformat()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(device=args.device, device_name=name, date=_dt.date.today().isoformat(), commit=git_commit(),
                       baseline=base_name, shapes=mode, threads=dsc.info()["max_threads"], results=rows), fh,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
