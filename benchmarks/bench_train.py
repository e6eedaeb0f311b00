"""Training throughput of dsc.Model (ops in the C core, orchestrated from Python) on CPU:
tokens/s and peak RSS for the demo config and (with --full) a ~100M-parameter config,
FP32 vs FP8.

    python benchmarks/bench_train.py            # demo config, FP32 and FP8
    python benchmarks/bench_train.py --full     # + the ~100M config (slow on a small CPU)

GPU numbers need the CUDA training step (a later part of issue 6)."""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

import deepseek_c as dsc
from deepseek_c import data as D, train as TR


def config_100m(vocab: int) -> dsc.ModelConfig:
    return TR.demo_config(vocab, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                          num_hidden_layers=6, num_attention_heads=8, q_lora_rank=256, kv_lora_rank=128,
                          qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=64,
                          num_experts_per_tok=6, n_group=8, topk_group=4, max_position_embeddings=1024)


def bench(cfg, fp8: bool, batch: int, seq: int, steps: int, warmup: int = 2) -> dict:
    m = dsc.Model(cfg, seed=0, fp8=fp8)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    y = np.roll(tok, -1, 1)
    for _ in range(warmup):
        m.train_step(tok, y, lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        m.train_step(tok, y, lr=1e-3)
    dt = time.perf_counter() - t0
    return dict(params_M=round(m.num_parameters() / 1e6, 2), fp8=fp8, batch=batch, seq=seq,
                tokens_per_s=round(batch * seq * steps / dt, 1), step_ms=round(1e3 * dt / steps, 1),
                peak_rss_MB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also the ~100M-parameter config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    V = D.CharTokenizer().vocab_size
    rows = []
    for fp8 in (False, True):
        rows.append(dict(config="demo", **bench(TR.demo_config(V), fp8, 32, 48, a.steps)))
        print(rows[-1], flush=True)
    if a.full:
        for fp8 in (False, True):
            rows.append(dict(config="100M", **bench(config_100m(32000), fp8, 4, 256, max(2, a.steps // 5), 1)))
            print(rows[-1], flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
