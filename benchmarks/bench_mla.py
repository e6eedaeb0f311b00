"""Multi-head Latent Attention benchmarks: one line per case.

  * training forward and forward+backward time (CPU: vs the NumPy float64 reference
    forward of tests/reference/mla.py, the only NumPy MLA we have);
  * decode over the paged latent cache: GB/s of latent cache read and GFLOP/s of the
    absorbed attention (batch x context x heads at V3 head dims);
  * the cache-size table MLA vs MHA vs GQA vs MQA for the DeepSeek-V3 config.

    python benchmarks/bench_mla.py [--device cpu|cuda] [--quick]

--device cuda skips cleanly (with the reason) where there is no GPU or no MLA kernels yet.
Writes benchmarks/results/mla_<device>_<date>.json with machine, commit and numbers.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/mla_<device>_<date>.json)")
    args = ap.parse_args()
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

    from reference import mla as ref

    rng = np.random.default_rng(0)
    # ---- training: V3 head dims, fewer heads and a small hidden so a CPU finishes quickly
    train_cases = [(1, 128, 4)] if args.quick else [(1, 128, 4), (2, 256, 8), (1, 512, 16)]
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
    dec_cases = [(4, 1024, 16)] if args.quick else [(4, 1024, 16), (8, 2048, 16), (4, 1024, 128)]
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

    path = args.out or os.path.join(HERE, "results", f"mla_{args.device}_{results['date']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
