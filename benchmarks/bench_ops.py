"""Dense op benchmarks: one line per op and shape with time, GB/s or GFLOP/s, and the
ratio to a baseline measured in the same run.

CPU (default): baseline NumPy (float32, its own BLAS for GEMMs).
GPU (--device cuda, needs PyTorch with CUDA): baseline PyTorch eager / cuBLAS, plus the
fraction of the H100 SXM roofline (3.35 TB/s HBM3, 989 TFLOP/s BF16 dense).

    python benchmarks/bench_ops.py [--device cpu|cuda] [--dtype float32|bfloat16] [--quick]

Writes benchmarks/results/ops_<device>_<date>.json with machine, commit and numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import time
from typing import Callable

import numpy as np

import deepseek_c as dsc
from _bench import git_commit, timeit

HBM_BYTES_PER_S = 3.35e12
BF16_FLOPS = 989e12
FP32_FLOPS = 67e12  # H100 SXM FP32 non-tensor; FP32 GEMMs here do not use TF32






class Backend:
    """Creates inputs and runs the baseline on the chosen device."""

    def __init__(self, device: str, dtype: str):
        self.device, self.dtype = device, dtype
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("--device cuda needs PyTorch with a visible GPU")
            self.torch = torch
            self.tdtype = getattr(torch, dtype)
            self.sync = torch.cuda.synchronize
            self.name = torch.cuda.get_device_name()
        else:
            self.torch = None
            self.sync = lambda: None
            self.name = platform.processor() or platform.machine()
            if dtype != "float32":
                raise SystemExit("the CPU baseline (NumPy) is float32 only; use --dtype float32")

    def randn(self, rng: np.random.Generator, *shape: int, scale: float = 1.0):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        if self.torch is None:
            return a
        return self.torch.from_numpy(a).to("cuda", self.tdtype)

    def ints(self, rng: np.random.Generator, hi: int, *shape: int):
        a = rng.integers(0, hi, shape).astype(np.int32)
        return a if self.torch is None else self.torch.from_numpy(a).to("cuda")


def cases(be: Backend, quick: bool):
    """(op, shape string, dsc call, baseline call, bytes moved, flops)"""
    rng = np.random.default_rng(0)
    es = 4 if be.dtype == "float32" else 2
    T = be.torch
    n_rows, d = (1024, 2048) if quick else (4096, 7168)

    x = be.randn(rng, n_rows, d)
    w = be.randn(rng, d)
    if T is None:
        base = lambda: w * x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)
    else:
        base = lambda: T.nn.functional.rms_norm(x, (d,), w, 1e-6)
    yield ("rms_norm", f"{n_rows}x{d}", lambda: dsc.rms_norm(x, w), base, 2 * n_rows * d * es, 0)

    B, S, H, R = (2, 256, 16, 64) if quick else (4, 1024, 128, 64)
    q = be.randn(rng, B, S, H, R)
    pos = be.ints(rng, 4096, B, S)
    if T is None:
        inv = dsc.rope_inv_freq(R)
        def base_rope():
            ang = pos[..., None].astype(np.float32) * inv
            c, s = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
            a, b = q[..., 0::2], q[..., 1::2]
            return np.stack([a * c - b * s, a * s + b * c], -1).reshape(q.shape)
    else:
        inv = T.tensor(dsc.rope_inv_freq(R), device="cuda")
        def base_rope():
            ang = pos[..., None].float() * inv
            c, s = ang.cos()[:, :, None, :].to(q.dtype), ang.sin()[:, :, None, :].to(q.dtype)
            a, b = q[..., 0::2], q[..., 1::2]
            return T.stack([a * c - b * s, a * s + b * c], -1).reshape(q.shape)
    yield ("rope", f"{B}x{S}x{H}x{R}", lambda: dsc.rope(q, pos), base_rope, 2 * B * S * H * R * es, 0)

    for (m, n, k) in ([(512, 512, 512), (1024, 1024, 1024)] if quick else
                      [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 7168)]):
        if T is None and m * n * k > 2048 ** 3:
            continue
        a = be.randn(rng, m, k)
        b = be.randn(rng, n, k, scale=k ** -0.5)
        base = (lambda a=a, b=b: a @ b.T)
        yield ("linear", f"{m}x{n}x{k}", lambda a=a, b=b: dsc.linear(a, b), base, (m * k + n * k + m * n) * es,
               2 * m * n * k)

    f = 4096 if quick else 18432
    rows = 512 if quick else 4096
    g = be.randn(rng, rows, f)
    u = be.randn(rng, rows, f)
    base = (lambda: g / (1 + np.exp(-g)) * u) if T is None else (lambda: T.nn.functional.silu(g) * u)
    yield ("swiglu", f"{rows}x{f}", lambda: dsc.swiglu(g, u), base, 3 * rows * f * es, 0)

    V, D, n_ids = (8192, 1024, 2048) if quick else (129280, 7168, 4096)
    table = be.randn(rng, V, D)
    ids = be.ints(rng, V, n_ids)
    base = (lambda: table[ids])
    yield ("embedding", f"{n_ids}x{D} of {V}", lambda: dsc.embedding(ids, table), base, 2 * n_ids * D * es, 0)

    N, V = (512, 8192) if quick else (4096, 32768)
    logits = be.randn(rng, N, V)
    tgt = be.ints(rng, V, N)
    if T is None:
        def base_ce():
            mx = logits.max(-1, keepdims=True)
            e = np.exp(logits - mx)
            s = e.sum(-1, keepdims=True)
            p = e / s
            loss = (np.log(s[:, 0]) + mx[:, 0] - logits[np.arange(N), tgt]).mean()
            p[np.arange(N), tgt] -= 1
            return loss, p / N
    else:
        def base_ce():
            lf = logits.float().requires_grad_(True)
            loss = T.nn.functional.cross_entropy(lf, tgt.long())
            loss.backward()
            return loss, lf.grad
    yield ("cross_entropy+grad", f"{N}x{V}", lambda: dsc.cross_entropy(logits, tgt), base_ce, 2 * N * V * es, 0)

    P = 1 << (20 if quick else 24)
    if T is None:
        p, gr = be.randn(rng, P), be.randn(rng, P)
        m1, m2 = np.zeros(P, np.float32), np.zeros(P, np.float32)
        def base_adam():
            m1[:] = 0.9 * m1 + 0.1 * gr
            m2[:] = 0.95 * m2 + 0.05 * gr * gr
            p[:] -= 1e-3 * (0.1 * p + (m1 / 0.1) / (np.sqrt(m2 / 0.05) + 1e-8))
    else:
        p = T.randn(P, device="cuda")
        gr = T.randn(P, device="cuda")
        m1, m2 = T.zeros_like(p), T.zeros_like(p)
        p.grad = gr
        opt = T.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        base_adam = opt.step
    yield ("adamw", f"{P}", lambda: dsc.adamw_step([p], [gr], [m1], [m2], lr=1e-3, step=1), base_adam,
           7 * P * 4, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="small shapes (CI smoke run)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    be = Backend(args.device, args.dtype)
    base_name = "NumPy" if args.device == "cpu" else "PyTorch"
    print(f"deepseek_c {dsc.__version__} bench_ops on {args.device} ({be.name}), {args.dtype}, "
          f"threads {dsc.info()['max_threads']}")
    print(f"{'op':<20} {'shape':<20} {'dsc us':>10} {base_name + ' us':>12} {'speedup':>8} {'GB/s':>9} "
          f"{'GFLOP/s':>9} {'roofline':>9}")
    rows = []
    for op, shape, f, base, nbytes, flops in cases(be, args.quick):
        t = timeit(f, be.sync)
        tb = timeit(base, be.sync)
        gbs = nbytes / t / 1e9
        gfl = flops / t / 1e9 if flops else 0.0
        roof = ""
        if args.device == "cuda":
            peak = BF16_FLOPS if args.dtype == "bfloat16" else FP32_FLOPS
            bound = max(nbytes / HBM_BYTES_PER_S, flops / peak)
            roof = f"{bound / t * 100:.0f}%"
        print(f"{op:<20} {shape:<20} {t * 1e6:10.1f} {tb * 1e6:12.1f} {tb / t:7.2f}x {gbs:9.2f} "
              f"{gfl:9.1f} {roof:>9}")
        rows.append(dict(op=op, shape=shape, us=t * 1e6, baseline_us=tb * 1e6, speedup=tb / t, gb_s=gbs,
                         gflop_s=gfl, roofline=roof))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"ops_{args.device}_{_dt.date.today().isoformat()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(device=args.device, device_name=be.name, dtype=args.dtype, date=_dt.date.today().isoformat(),
                       commit=git_commit(), baseline=base_name, quick=args.quick, results=rows), fh, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
