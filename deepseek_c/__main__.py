"""Command line: ``python -m deepseek_c info`` (build and devices) and
``python -m deepseek_c ops-demo`` (a short tour of the dense ops against NumPy)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def cmd_info(args: argparse.Namespace) -> int:
    import deepseek_c as dsc

    d = dsc.info()
    print(f"deepseek_c {d['version']}")
    print(f"  library   : {dsc.get_library()}")
    print(f"  include   : {dsc.get_include()}")
    print(f"  BLAS      : {d['blas']}")
    print(f"  OpenMP    : {'yes' if d['openmp'] else 'no'} ({d['max_threads']} threads)")
    if d["cuda"]:
        print(f"  CUDA      : yes (built with CUDA {d['cuda_version']}, archs {d['cuda_archs']}, "
              f"cuBLASLt {'yes' if d['cublaslt'] else 'no'}, NCCL {'yes' if d['nccl'] else 'no'})")
    else:
        print("  CUDA      : no (built without nvcc or with DSC_CUDA=0)")
    if d["devices"]:
        for dev in d["devices"]:
            print(f"  device    : cuda:{dev['index']} {dev['name']} (sm_{dev['compute_capability'].replace('.', '')})")
    else:
        print(f"  devices   : none ({d['cuda_unavailable_reason']})")
    return 0


def cmd_ops_demo(args: argparse.Namespace) -> int:
    """Run each dense op once on random data and compare with NumPy."""
    import deepseek_c as dsc

    rng = np.random.default_rng(args.seed)
    B, T, D, V = 4, 32, 256, 1000
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    def show(name: str, got: np.ndarray, want: np.ndarray, t: float) -> None:
        err = float(np.max(np.abs(np.asarray(got, np.float64) - want)) / (np.max(np.abs(want)) + 1e-30))
        print(f"  {name:<22} max rel err vs NumPy {err:.2e}   {t * 1e3:7.3f} ms")

    print("deepseek_c ops demo (CPU, float32)")
    t0 = time.perf_counter(); y = dsc.rms_norm(x, w); t1 = time.perf_counter()
    xd = x.astype(np.float64)
    show("rms_norm", y, w * xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6), t1 - t0)

    W = (rng.standard_normal((512, D)) / np.sqrt(D)).astype(np.float32)
    t0 = time.perf_counter(); h = dsc.linear(x, W); t1 = time.perf_counter()
    show("linear", h, xd @ W.astype(np.float64).T, t1 - t0)

    g, u = h[..., :256], h[..., 256:]
    g, u = np.ascontiguousarray(g), np.ascontiguousarray(u)
    t0 = time.perf_counter(); s = dsc.swiglu(g, u); t1 = time.perf_counter()
    gd = g.astype(np.float64)
    show("swiglu", s, gd / (1 + np.exp(-gd)) * u, t1 - t0)

    q = rng.standard_normal((B, T, 8, 64)).astype(np.float32)
    pos = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    t0 = time.perf_counter(); qr = dsc.rope(q, pos); t1 = time.perf_counter()
    back = dsc.rope_backward(qr, pos)
    show("rope (inverse = id)", back, q.astype(np.float64), t1 - t0)

    logits = rng.standard_normal((B * T, V)).astype(np.float32)
    tgt = rng.integers(0, V, B * T).astype(np.int32)
    t0 = time.perf_counter(); loss, _ = dsc.cross_entropy(logits, tgt); t1 = time.perf_counter()
    ld = logits.astype(np.float64)
    m = ld.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(ld - m).sum(-1, keepdims=True)))[:, 0]
    show("cross_entropy", np.array(float(loss)), np.array((lse - ld[np.arange(B * T), tgt]).mean()), t1 - t0)
    print(f"  YaRN softmax scale for DeepSeek-V3 (192 dims, factor 40): "
          f"{dsc.rope_softmax_scale(192, scaling={'type': 'yarn', 'factor': 40, 'mscale': 1.0, 'mscale_all_dim': 1.0}):.7f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepseek_c", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, build (CUDA, archs, cuBLASLt, BLAS) and devices").set_defaults(fn=cmd_info)
    d = sub.add_parser("ops-demo", help="run the dense ops once against NumPy")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_ops_demo)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
