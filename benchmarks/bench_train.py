"""Training throughput of the C model (dsc_model_train_step): tokens/s, step time, peak
memory and (on GPU) model FLOP utilization, for the demo config and a ~100M-parameter
config, FP32 vs FP8.

    python benchmarks/bench_train.py                    # CPU, demo config: FP32, FP32 + BF16 AdamW moments, FP8
    python benchmarks/bench_train.py --full             # + the ~100M config (slow on a small CPU)
    python benchmarks/bench_train.py --device cuda --full

Writes benchmarks/results/train_<device>_<date>.json (machine, commit, numbers).
FLOPs per token = 6 * active parameters (the routed experts a token does not visit are
not counted; embedding lookups neither) + the attention score/value products
(12 * layers * heads * (dqk + dv) / 2 * seq, causal). MFU is against the dense FP32 peak
given by --peak-tflops (H100 SXM: 67 TFLOP/s FP32; the tensor-core BF16/FP8 peaks are
989 / 1979 TFLOP/s, which the current FP32-compute kernels do not target).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import time

import numpy as np

import deepseek_c as dsc
from deepseek_c import data as D, train as TR
from _bench import HERE, git_commit


def config_100m(vocab: int) -> dsc.ModelConfig:
    return TR.demo_config(vocab, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                          num_hidden_layers=6, num_attention_heads=8, q_lora_rank=256, kv_lora_rank=128,
                          qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32,
                          num_experts_per_tok=6, n_group=8, topk_group=4, max_position_embeddings=1024)


def active_params(m: dsc.Model) -> int:
    """Parameters one token's forward multiplies by (embedding excluded, k of E experts)."""
    c = m.cfg
    n = 0
    for k, v in m.parameters().items():
        if k == "model.embed_tokens.weight" and not c.tie_word_embeddings:
            continue
        size = int(np.prod(v.shape))
        if ".mlp.experts." in k:
            size = size * c.num_experts_per_tok / c.n_routed_experts
        n += size
    return int(n)


def flops_per_token(m: dsc.Model, seq: int) -> float:
    c = m.cfg
    blocks = c.num_hidden_layers + (c.num_nextn_predict_layers or 0)
    attn = 6 * blocks * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * seq  # fwd+bwd, causal half
    return 6.0 * active_params(m) + attn


def bench(cfg, device: str, fp8: bool, batch: int, seq: int, steps: int, warmup: int = 2,
          moments: str = "float32") -> dict:
    m = dsc.Model(cfg, device=device, seed=0, fp8=fp8, moments=moments)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    y = np.roll(tok, -1, 1)
    if device != "cpu":
        tok, y = dsc.tensor(tok, device=device), dsc.tensor(y, device=device)
    for _ in range(warmup):
        m.train_step(tok, y, lr=1e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        s = m.train_step(tok, y, lr=1e-3)  # returns host stats: the step has finished
    dt = time.perf_counter() - t0
    tps = batch * seq * steps / dt
    row = dict(params_M=round(m.num_parameters() / 1e6, 2), active_params_M=round(active_params(m) / 1e6, 2),
               fp8=fp8, moments=moments,
               optimizer_MB=round(2 * m.num_parameters() * (2 if moments == "bfloat16" else 4) / 2**20, 1),
               batch=batch, seq=seq, steps=steps, tokens_per_s=round(tps, 1),
               step_ms=round(1e3 * dt / steps, 1), final_loss=round(float(s["loss"]), 4),
               activation_MB=round(m.activation_bytes() / 2**20, 1),
               peak_rss_MB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               tflops=round(tps * flops_per_token(m, seq) / 1e12, 3))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--full", action="store_true", help="also the ~100M-parameter config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=67.0, help="FP32 peak of the GPU, for MFU")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_<device>_<date>.json)")
    a = ap.parse_args()
    V = D.CharTokenizer().vocab_size
    dev = a.device.split(":")[0]
    res = {"device": a.device, "machine": platform.node(), "cpu_count": os.cpu_count(),
           "date": _dt.date.today().isoformat(), "commit": git_commit(),
           "threads": os.environ.get("OMP_NUM_THREADS", "default"), "rows": []}
    if dev == "cuda":
        res["gpu"] = [d["name"] for d in dsc.info()["devices"]]
    cases = [("demo", TR.demo_config(V), 32, 48, a.steps)]
    if a.full:
        big_steps = a.steps if dev == "cuda" else max(2, a.steps // 5)
        cases.append(("100M", config_100m(16000), 8 if dev == "cuda" else 4, 256, big_steps))
    for name, cfg, batch, seq, steps in cases:
        for fp8, moments in ((False, "float32"), (False, "bfloat16"), (True, "float32")):
            row = dict(config=name, **bench(cfg, a.device, fp8, batch, seq, steps, moments=moments))
            if dev == "cuda":
                row["mfu_fp32_peak"] = round(row["tflops"] / a.peak_tflops, 4)
            res["rows"].append(row)
            print(row, flush=True)
    path = a.out or os.path.join(HERE, "results", f"train_{dev}_{res['date']}.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
