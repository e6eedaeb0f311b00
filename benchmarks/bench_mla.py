"""Multi-head Latent Attention benchmarks: one line per case.

  * training forward and forward+backward time (CPU: vs the NumPy float64 reference
    forward of tests/reference/mla.py, the only NumPy MLA we have);
  * decode over the paged latent cache: GB/s of latent cache read and GFLOP/s of the
    absorbed attention (batch x context x heads at V3 head dims);
  * the cache-size table MLA vs MHA vs GQA vs MQA for the DeepSeek-V3 config.

    python benchmarks/bench_mla.py [--device cpu|cuda] [--quick]
    python benchmarks/bench_mla.py --gpu-suite [--out FILE]     # the GPU case of gpu_suite

--gpu-suite (CUDA): decode at batch 128, context 4096 and 8192, 128 heads, R 512, dr 64, BF16
and FP8 caches: cache GB/s and attention TFLOP/s of the attention core, and % of FlashMLA's
published 3000 GB/s (H800, memory bound); training attention forward+backward TFLOP/s at a
V3 head shape (128 heads, dqk 192, dv 128, T 4096), float32 SIMT and BF16 tensor cores
(mla_forward(..., bf16_operands=True): the context math mode DSC_MATH_BF16_OPERANDS, which
also runs the projections as FAST_16BF GEMMs). The attention core is not callable on
its own from Python: its time is the layer's step time minus the same step over a 32-token
context (projections and absorbed products, equal in both), so the figures are of the
attention kernels plus the per-step host work that grows with the context (none does).

--device cuda skips cleanly (with the reason) where there is no GPU or no MLA kernels yet.
Writes benchmarks/results/mla_<device>_<date>.json with machine, commit and numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from typing import Callable

import numpy as np

import deepseek_c as dsc
from _bench import git_commit, timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))






def cache_table(cfg: dsc.ModelConfig) -> list[dict]:
    """Per-token KV cache of the whole model (all layers) in bf16, MLA vs alternatives."""
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    dh, dqk, dv = cfg.v_head_dim, cfg.qk_head_dim, cfg.v_head_dim
    rows = [
        ("MLA (kv_lora_rank + rope)", cfg.kv_lora_rank + cfg.qk_rope_head_dim),
        ("MHA, same heads (K 192, V 128)", H * (dqk + dv)),
        ("MHA, d_h 128", 2 * H * dh),
        ("GQA, 8 groups, d_h 128", 2 * 8 * dh),
        ("MQA, d_h 128", 2 * dh),
    ]
    mla = rows[0][1]
    out = []
    for name, elems in rows:
        out.append({"variant": name, "elements_per_layer": elems, "elements_per_token": elems * L,
                    "bf16_bytes_per_token": 2 * elems * L, "ratio_to_mla": elems / mla})
    return out


FLASHMLA_GBPS = 3000.0  # FlashMLA's published decode figure (H800 SXM5, memory-bound config)


def gpu_suite(results: dict, quick: bool) -> None:
    """The issue's GPU case (see the module docstring); appends to results['cases']."""
    from reference import mla as ref

    rng = np.random.default_rng(0)
    out_box: list = [None]

    def sync() -> None:  # the outputs come back to the host: the stream has finished
        if out_box[0] is not None:
            dsc.to_numpy(out_box[0])

    cuda = lambda a: dsc.tensor(a, device="cuda")  # noqa: E731
    # ---- decode: hidden 256 keeps the projections small next to the attention
    B, H = (16, 128) if quick else (128, 128)
    cfg = dsc.ModelConfig(hidden_size=256, num_attention_heads=H, q_lora_rank=128)
    assert cfg.kv_lora_rank == 512 and cfg.qk_rope_head_dim == 64
    w = {k: cuda(v) for k, v in ref.init_weights(cfg, rng).items()}
    cfg1 = cfg.replace(num_attention_heads=1)  # fills the cache: the latents do not depend on H
    w1 = {k: cuda(v) for k, v in ref.init_weights(cfg1, rng).items()}
    xd = cuda(rng.standard_normal((B, 1, cfg.hidden_size)).astype(np.float32))
    for dtype in ("bfloat16", "float8_e4m3fn"):
        for ctx_len in ((1024,) if quick else (4096, 8192)):
            times = {}
            for L in (32, ctx_len):
                cache = dsc.MLACache(cfg, max_batch=B, max_tokens=L + 1, block_size=64, dtype=dtype, device="cuda")
                ids = [cache.add_sequence() for _ in range(B)]
                for s0 in range(0, L, 1024):
                    n = min(1024, L - s0)
                    x = cuda(rng.standard_normal((B, n, cfg.hidden_size)).astype(np.float32))
                    out_box[0] = dsc.mla_prefill(x, w1, cfg1, cache, ids)
                sync()
                pos = np.full((B, 1), L, np.int32)

                def step() -> None:  # position L again each time: the same context, no new blocks
                    out_box[0] = dsc.mla_decode(xd, w, cfg, cache, ids, pos)

                times[L] = timeit(step, sync, min_time=0.5)
                del cache
            t_attn = max(times[ctx_len] - times[32], 1e-9)
            S = ctx_len + 1
            bpt = 656 if dtype == "float8_e4m3fn" else 2 * 576
            read = B * (S - 33) * bpt  # the extra keys of the long context
            flops = 2 * B * H * (S - 33) * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            case = {"kind": "gpu_decode", "B": B, "context": ctx_len, "H": H, "R": 512, "dr": 64,
                    "cache_dtype": dtype, "step_s": times[ctx_len], "step_ctx32_s": times[32],
                    "attn_s_est": t_attn, "cache_GBps": read / t_attn / 1e9,
                    "attn_TFLOPs": flops / t_attn / 1e12,
                    "pct_of_flashmla_3000GBps": 100.0 * read / t_attn / 1e9 / FLASHMLA_GBPS}
            results["cases"].append(case)
            print(f"gpu decode B={B} ctx={ctx_len} H={H} {dtype:14s}: step {times[ctx_len] * 1e3:7.3f} ms "
                  f"(ctx 32: {times[32] * 1e3:6.3f}) attention {t_attn * 1e3:7.3f} ms  {case['cache_GBps']:7.1f} GB/s "
                  f"({case['pct_of_flashmla_3000GBps']:4.1f}% of FlashMLA)  {case['attn_TFLOPs']:6.2f} TFLOP/s")
    train_case(results, quick)
    try:
        train_case(results, quick, bf16=True)
    except Exception as e:  # noqa: BLE001 -- the suite records the failure and goes on
        print(f"bf16 training case failed: {e!r}")
        results["cases"].append({"kind": "gpu_train_attention", "attention_path": "bf16 tensor cores",
                                 "error": repr(e)[-2000:]})


def train_case(results: dict, quick: bool, bf16: bool = False) -> None:
    """Training attention at V3's heads (128 x dqk 192 / dv 128), one 4096-token sequence
    (bf16: in the BF16-operand math mode, the attention on tensor cores)."""
    from reference import mla as ref

    rng = np.random.default_rng(1)
    out_box: list = [None]

    def sync() -> None:
        if out_box[0] is not None:
            dsc.to_numpy(out_box[0])

    cuda = lambda a: dsc.tensor(a, device="cuda")  # noqa: E731
    T, Ht = (1024, 16) if quick else (4096, 128)
    cfg = dsc.ModelConfig(hidden_size=1024, num_attention_heads=Ht, q_lora_rank=512)
    w = {k: cuda(v) for k, v in ref.init_weights(cfg, rng).items()}
    x = cuda(rng.standard_normal((1, T, cfg.hidden_size)).astype(np.float32))
    Tp = 128  # a short sequence of the same layer: its time is the projections' share
    xs = cuda(rng.standard_normal((1, Tp, cfg.hidden_size)).astype(np.float32))

    def fb(xx):
        def run() -> None:
            out, ctx = dsc.mla_forward(xx, w, cfg, bf16_operands=bf16)
            out_box[0] = dsc.mla_backward(out, ctx)["x"]
        return run

    def f(xx):
        def run() -> None:
            out_box[0] = dsc.mla_forward(xx, w, cfg, need_backward=False, bf16_operands=bf16)[0]
        return run

    t_f, t_fb = timeit(f(x), sync, min_time=0.5, reps=3), timeit(fb(x), sync, min_time=0.5, reps=3)
    t_fs, t_fbs = timeit(f(xs), sync, min_time=0.3, reps=3), timeit(fb(xs), sync, min_time=0.3, reps=3)
    scale = T / Tp  # projections are linear in T
    a_f, a_fb = max(t_f - t_fs * scale, 1e-9), max(t_fb - t_fbs * scale, 1e-9)
    fl_f = 2 * Ht * (T * (T + 1) / 2) * (cfg.qk_head_dim + cfg.v_head_dim)  # causal QK^T and PV
    fl_fb = 3.5 * fl_f  # backward: 5 products of the forward's 2 (with the recomputed P)
    case = {"kind": "gpu_train_attention", "B": 1, "T": T, "H": Ht, "dqk": cfg.qk_head_dim, "dv": cfg.v_head_dim,
            "layer_fwd_s": t_f, "layer_fwd_bwd_s": t_fb, "attn_fwd_s_est": a_f, "attn_fwd_bwd_s_est": a_fb,
            "attn_fwd_TFLOPs": fl_f / a_f / 1e12, "attn_fwd_bwd_TFLOPs": fl_fb / a_fb / 1e12,
            "attention_path": "bf16 tensor cores (kernels/mla_attn_tc.cu), FAST_16BF projections" if bf16
            else "float32 SIMT (kernels/mla.cu)"}
    case["summary"] = (f"gpu train attention T={T} H={Ht} [{case['attention_path']}]: layer fwd {t_f * 1e3:8.2f} ms, "
                       f"fwd+bwd {t_fb * 1e3:8.2f} ms; attention ~{case['attn_fwd_TFLOPs']:6.2f} TFLOP/s fwd, "
                       f"~{case['attn_fwd_bwd_TFLOPs']:6.2f} fwd+bwd")
    results["cases"].append(case)
    print(case["summary"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu-suite", action="store_true", help="only the GPU case of gpu_suite (implies --device cuda)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/mla_<device>_<date>.json)")
    args = ap.parse_args()
    if args.gpu_suite:
        args.device = "cuda"
    results: dict = {"device": args.device, "date": _dt.date.today().isoformat(), "commit": git_commit(),
                     "machine": platform.processor() or platform.machine(),
                     "threads": dsc.info().get("max_threads"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                     "cases": []}

    v3 = dsc.ModelConfig.v3()
    print("KV cache per token, DeepSeek-V3 (61 layers, bf16):")
    results["cache_table"] = cache_table(v3)
    for r in results["cache_table"]:
        print(f"  {r['variant']:32s} {r['elements_per_layer']:7d} /layer  {r['bf16_bytes_per_token'] / 1024:10.1f} KiB"
              f"  x{r['ratio_to_mla']:.1f}")

    if args.device == "cuda":
        if not dsc.has_cuda():
            print("skip: --device cuda: no CUDA device visible to this build "
                  f"({dsc.info()['cuda_unavailable_reason']})")
            return
        try:
            dsc.MLACache(dsc.ModelConfig.tiny(), max_batch=1, max_tokens=64, device="cuda")
        except (dsc.Error, ValueError) as e:
            print(f"skip: --device cuda: {e}")
            return

    if args.gpu_suite:
        gpu_suite(results, args.quick)
    else:
        cpu_cases(results, args.quick)
    path = args.out or os.path.join(HERE, "results", f"mla_{args.device}_{results['date']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {path}")


def cpu_cases(results: dict, quick: bool) -> None:
    """The CPU-sized training and decode cases (numpy inputs, the default device)."""
    from reference import mla as ref

    rng = np.random.default_rng(0)
    # ---- training: V3 head dims, fewer heads and a small hidden so a CPU finishes quickly
    train_cases = [(1, 128, 4)] if quick else [(1, 128, 4), (2, 256, 8), (1, 512, 16)]
    for B, T, H in train_cases:
        cfg = dsc.ModelConfig(hidden_size=512, num_attention_heads=H, q_lora_rank=256)
        w = ref.init_weights(cfg, rng)
        x = rng.standard_normal((B, T, cfg.hidden_size)).astype(np.float32)
        out, ctx = dsc.mla_forward(x, w, cfg)
        dout = np.ones_like(out)
        t_f = timeit(lambda: dsc.mla_forward(x, w, cfg, need_backward=False))
        t_fb = timeit(lambda: dsc.mla_backward(dout, dsc.mla_forward(x, w, cfg)[1]))
        t_ref = timeit(lambda: ref.mla_forward(x, w, cfg), min_time=0.2, reps=1)
        # attention core FLOPs (causal: half of T^2) + projections, forward
        N = B * T
        proj = 2 * N * (cfg.hidden_size * cfg.q_lora_rank + cfg.q_lora_rank * H * cfg.qk_head_dim
                        + cfg.hidden_size * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
                        + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim)
                        + H * cfg.v_head_dim * cfg.hidden_size)
        attn = 2 * B * H * (T * (T + 1) / 2) * (cfg.qk_head_dim + cfg.v_head_dim)
        case = {"kind": "train", "B": B, "T": T, "H": H, "hidden": cfg.hidden_size, "fwd_s": t_f,
                "fwd_bwd_s": t_fb, "numpy_ref_fwd_s": t_ref, "fwd_gflops": (proj + attn) / t_f / 1e9,
                "speedup_fwd_vs_numpy": t_ref / t_f}
        results["cases"].append(case)
        print(f"train  B={B} T={T:4d} H={H:3d}: fwd {t_f * 1e3:8.2f} ms ({case['fwd_gflops']:6.1f} GFLOP/s)  "
              f"fwd+bwd {t_fb * 1e3:8.2f} ms   numpy ref fwd {t_ref * 1e3:8.1f} ms  (x{t_ref / t_f:.1f})")

    # ---- decode: one new token per sequence over a cache of `ctx_len` tokens
    dec_cases = [(4, 1024, 16)] if quick else [(4, 1024, 16), (8, 2048, 16), (4, 1024, 128)]
    for B, ctx_len, H in dec_cases:
        cfg = dsc.ModelConfig(hidden_size=256, num_attention_heads=H, q_lora_rank=128)
        w = ref.init_weights(cfg, rng)
        cfg1 = cfg.replace(num_attention_heads=1)
        w1 = ref.init_weights(cfg1, rng)
        for dtype in ("bfloat16", "float8_e4m3fn"):
            cache = dsc.MLACache(cfg, max_batch=B, max_tokens=ctx_len + 1, block_size=64, dtype=dtype)
            ids = [cache.add_sequence() for _ in range(B)]
            # fill the cache with a 1-head layer of the same latent dims (prefill cost / H):
            # the cache holds only the latents, which do not depend on the head count
            chunk = 512
            for s in range(0, ctx_len, chunk):
                n = min(chunk, ctx_len - s)
                dsc.mla_prefill(rng.standard_normal((B, n, cfg.hidden_size)).astype(np.float32), w1, cfg1, cache, ids)
            xd = rng.standard_normal((B, 1, cfg.hidden_size)).astype(np.float32)
            pos = np.full((B, 1), ctx_len, np.int32)
            t = timeit(lambda: dsc.mla_decode(xd, w, cfg, cache, ids, pos))
            read = B * (ctx_len + 1) * cache.bytes_per_token
            flops = 2 * B * H * (ctx_len + 1) * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            case = {"kind": "decode", "B": B, "context": ctx_len, "H": H, "cache_dtype": dtype, "step_s": t,
                    "cache_read_GBps": read / t / 1e9, "attn_gflops": flops / t / 1e9,
                    "bytes_per_token": cache.bytes_per_token}
            results["cases"].append(case)
            print(f"decode B={B:3d} ctx={ctx_len:5d} H={H:3d} {dtype:14s}: {t * 1e3:8.2f} ms/step  "
                  f"{case['cache_read_GBps']:6.2f} GB/s cache read  {case['attn_gflops']:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
