"""deepseek_c.torch layers inside a PyTorch model vs the same model with pure-PyTorch layers:
forward + backward time per training step.

    python benchmarks/bench_torch.py                  # CPU, 1 and 2 threads
    python benchmarks/bench_torch.py --quick          # a few seconds: does it run
    python benchmarks/bench_torch.py --save           # also write the JSON into benchmarks/results/
    python benchmarks/bench_torch.py --threads 2 --rounds 5
    python benchmarks/bench_torch.py --device cuda    # GPU

The model: token embedding, N blocks of [RMSNorm -> attention -> residual, RMSNorm -> MoE ->
residual], RMSNorm, linear head, mean cross-entropy -- a small DeepSeek-V3 (MLA with query
compression and YaRN RoPE, 16 routed experts top-4 in 4 groups with the correction bias, one
shared expert). Two variants differ only in the attention and the MoE:
  dsc    deepseek_c.torch.MLA and deepseek_c.torch.MoE (one C call forward, one backward each)
  torch  the same layers in idiomatic PyTorch (below): MLA with torch's scaled_dot_product_attention
         (causal), the MoE as transformers' DeepseekV3 runs it (router, group-limited top-k, a
         loop over the experts that received tokens, index_add; shared expert dense)
Both hold the same weights (the torch variant loads the dsc variant's state_dict, same names),
and the first step's losses are printed side by side (they agree to float32 rounding).

Timing: per thread count one worker process (OMP_NUM_THREADS and torch.set_num_threads set
to it) runs the variants in turn (dsc, torch, dsc, ...) for --rounds rounds, each a warm-up
step then --steps timed steps of zero_grad + forward + backward; a variant's time is its
total timed wall time over its total timed steps, and ratio = torch / dsc (> 1: the
deepseek_c layers are faster). The 1-minute load average before and after each worker is
recorded: numbers from a busy machine are not comparable. Prints a table; with --save (or
--out PATH) also writes benchmarks/results/torch_<device>_<date>.json (machine, threads,
commit, command, load). --quick: a tiny smoke run (1 thread, small batch, 1 round), not a
measurement.
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

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = dict(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
              num_hidden_layers=2, num_nextn_predict_layers=0, num_attention_heads=4, q_lora_rank=128,
              kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16,
              n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=0,
              max_position_embeddings=1024, initializer_range=0.02,
              rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})


def _load1():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def build(variant: str, device: str):
    """(model, cfg) of the benchmark: variant 'dsc' or 'torch'."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import deepseek_c as dsc
    import deepseek_c.torch as dst

    cfg = dsc.ModelConfig(**CONFIG)

    class TorchMoE(nn.Module):
        """DeepSeekMoE in plain PyTorch, the names of dst.MoE (stacked experts)."""

        def __init__(self, c):
            super().__init__()
            E, D, Fi = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
            self.c = c
            self.gate = nn.Module()
            self.gate.weight = nn.Parameter(torch.empty(E, D))
            self.gate.register_buffer("e_score_correction_bias", torch.zeros(E))
            # a holder of the stacked expert weights with dst.MoE's per-expert state-dict names
            # (nn.Parameters only: the computation below is plain PyTorch)
            self.experts = dst.MoEExperts(E, D, Fi)
            S = Fi * c.n_shared_experts
            self.shared_experts = nn.ModuleDict(dict(gate_proj=nn.Linear(D, S, bias=False),
                                                     up_proj=nn.Linear(D, S, bias=False),
                                                     down_proj=nn.Linear(S, D, bias=False)))

        def forward(self, x):
            c, shp = self.c, x.shape
            x = x.reshape(-1, shp[-1])
            T, E = x.shape[0], c.n_routed_experts
            s = torch.sigmoid(F.linear(x, self.gate.weight))
            with torch.no_grad():
                sel = s + self.gate.e_score_correction_bias
                g = sel.view(T, c.n_group, -1).topk(2, -1).values.sum(-1)
                keep = torch.zeros_like(g).scatter_(1, g.topk(c.topk_group, -1).indices, 1.0)
                sel = sel.masked_fill(keep.repeat_interleave(E // c.n_group, 1) == 0, float("-inf"))
                idx = sel.topk(c.num_experts_per_tok, -1).indices
            w = s.gather(1, idx)
            w = w / (w.sum(-1, keepdim=True) + 1e-20) * c.routed_scaling_factor
            y = torch.zeros_like(x)
            hit = torch.bincount(idx.reshape(-1), minlength=E).nonzero().reshape(-1).tolist()
            for e in hit:
                tok, slot = (idx == e).nonzero(as_tuple=True)
                xe = x[tok]
                h = F.linear(F.silu(F.linear(xe, self.experts.gate_proj[e])) * F.linear(xe, self.experts.up_proj[e]),
                             self.experts.down_proj[e])
                y = y.index_add(0, tok, h * w[tok, slot, None])
            se = self.shared_experts
            y = y + se["down_proj"](F.silu(se["gate_proj"](x)) * se["up_proj"](x))
            return y.view(shp)

    class TorchMLA(nn.Module):
        """MLA in plain PyTorch (naive: per-head keys/values, SDPA), the names of dst.MLA."""

        def __init__(self, c):
            super().__init__()
            D, H = c.hidden_size, c.num_attention_heads
            dn, dr, dv, R = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
            self.c = c
            self.q_a_proj = nn.Linear(D, c.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(c.q_lora_rank, eps=c.rms_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, H * (dn + dr), bias=False)
            self.kv_a_proj_with_mqa = nn.Linear(D, R + dr, bias=False)
            self.kv_a_layernorm = nn.RMSNorm(R, eps=c.rms_norm_eps)
            self.kv_b_proj = nn.Linear(R, H * (dn + dv), bias=False)
            self.o_proj = nn.Linear(H * dv, D, bias=False)
            sc = c.rope_scaling_dict
            self.register_buffer("inv", torch.from_numpy(dsc.rope_inv_freq(dr, theta=c.rope_theta, scaling=sc)),
                                 persistent=False)
            self.cs, self.scale = dsc.rope_cos_sin_scale(scaling=sc), c.softmax_scale

        def rope(self, x, cos, sin):  # interleaved pairs
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

        def forward(self, x):
            c = self.c
            B, T, _ = x.shape
            H, dn, dr, dv, R = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, \
                c.kv_lora_rank
            ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * self.inv[None, :]
            cos, sin = torch.cos(ang) * self.cs, torch.sin(ang) * self.cs
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, H, dn + dr)
            q = torch.cat([q[..., :dn], self.rope(q[..., dn:], cos[:, None], sin[:, None])], -1)
            kva = self.kv_a_proj_with_mqa(x)
            kpe = self.rope(kva[..., R:], cos, sin)
            kv = self.kv_b_proj(self.kv_a_layernorm(kva[..., :R])).view(B, T, H, dn + dv)
            k = torch.cat([kv[..., :dn], kpe[:, :, None, :].expand(B, T, H, dr)], -1)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), kv[..., dn:].transpose(1, 2),
                                               is_causal=True, scale=self.scale)
            return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))

    class Block(nn.Module):
        def __init__(self, c, attn, ffn):
            super().__init__()
            self.input_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
            self.self_attn = attn
            self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
            self.mlp = ffn

        def forward(self, h):
            h = h + self.self_attn(self.input_layernorm(h))
            return h + self.mlp(self.post_attention_layernorm(h))

    class LM(nn.Module):
        def __init__(self, c, variant):
            super().__init__()
            mk_attn = (lambda: dst.MLA(c)) if variant == "dsc" else (lambda: TorchMLA(c))
            mk_ffn = (lambda: dst.MoE(c)) if variant == "dsc" else (lambda: TorchMoE(c))
            self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
            self.layers = nn.ModuleList(Block(c, mk_attn(), mk_ffn()) for _ in range(c.num_hidden_layers))
            self.norm = nn.RMSNorm(c.hidden_size, eps=c.rms_norm_eps)
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

        def forward(self, tokens, targets):
            h = self.embed_tokens(tokens)
            for layer in self.layers:
                h = layer(h)
            logits = self.lm_head(self.norm(h))
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    torch.manual_seed(0)
    ref = LM(cfg, "dsc")
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, cfg.initializer_range)
    m = ref if variant == "dsc" else LM(cfg, "torch")
    if variant != "dsc":
        m.load_state_dict(ref.state_dict())
    return m.to(device), cfg


def worker(device: str, threads: int, batch: int, seq: int, steps: int, rounds: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    models = {v: build(v, device)[0] for v in ("dsc", "torch")}
    rng = np.random.default_rng(0)
    tok = torch.from_numpy(rng.integers(0, CONFIG["vocab_size"], (batch, seq))).to(device)
    tg = torch.roll(tok, -1, 1)
    first = {}
    times = {v: 0.0 for v in models}
    n = {v: 0 for v in models}

    def step(m):
        m.zero_grad(set_to_none=True)
        loss = m(tok, tg)
        loss.backward()
        return loss

    for r in range(rounds):
        for v, m in models.items():
            loss = step(m)  # warm-up
            sync()
            first.setdefault(v, float(loss))
            t0 = time.perf_counter()
            for _ in range(steps):
                step(m)
            sync()
            times[v] += time.perf_counter() - t0
            n[v] += steps
    ms = {v: 1e3 * times[v] / n[v] for v in models}
    return dict(threads=threads, batch=batch, seq=seq, tokens=batch * seq, steps_timed_per_variant=n["dsc"],
                dsc_ms_per_step=round(ms["dsc"], 2), torch_ms_per_step=round(ms["torch"], 2),
                ratio_torch_over_dsc=round(ms["torch"] / ms["dsc"], 2),
                dsc_tokens_per_s=round(batch * seq / ms["dsc"] * 1e3, 1),
                torch_tokens_per_s=round(batch * seq / ms["torch"] * 1e3, 1),
                first_loss_dsc=round(first["dsc"], 6), first_loss_torch=round(first["torch"], 6),
                torch_version=torch.__version__)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--threads", default=None, help="comma-separated CPU thread counts (default 1,2 on CPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 thread, batch 2, seq 32, 1 round of 1 step")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/torch_<device>_<date>.json")
    ap.add_argument("--out", default=None, help="write the JSON to this path")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.device, int(a.threads), a.batch, a.seq, a.steps, a.rounds)))
        return
    if a.quick:
        a.threads = a.threads or "1"
        a.batch, a.seq, a.steps, a.rounds = 2, 32, 1, 1
    dev = a.device.split(":")[0]
    if dev == "cuda":
        import torch

        import deepseek_c as dsc

        if not torch.cuda.is_available() or not dsc.has_cuda():
            print("skipped: --device cuda needs a CUDA device visible to PyTorch and deepseek_c")
            return
    threads = [int(t) for t in (a.threads or ("1,2" if dev == "cpu" else str(os.cpu_count()))).split(",")]
    sys.path.insert(0, HERE)
    from _bench import git_commit

    res = dict(device=a.device, machine=platform.node(), cpu=_cpu_name(), cpu_count=os.cpu_count(),
               date=_dt.date.today().isoformat(), commit=git_commit(),
               command="python benchmarks/bench_torch.py " + " ".join(sys.argv[1:]), config=CONFIG, rows=[])
    print(f"{'threads':>7} {'dsc ms/step':>12} {'torch ms/step':>14} {'torch/dsc':>10} {'first loss dsc / torch':>24}"
          f"  load1 before/after")
    for nt in threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt), MKL_NUM_THREADS=str(nt))
        before = _load1()
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--device", a.device,
                            "--threads", str(nt), "--batch", str(a.batch), "--seq", str(a.seq), "--steps",
                            str(a.steps), "--rounds", str(a.rounds)], capture_output=True, text=True, env=env,
                           timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"worker failed: {r.stderr[-3000:]}")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row.update(load1_before=before, load1_after=_load1())
        res["rows"].append(row)
        print(f"{nt:>7} {row['dsc_ms_per_step']:>12.1f} {row['torch_ms_per_step']:>14.1f} "
              f"{row['ratio_torch_over_dsc']:>10.2f} {row['first_loss_dsc']:>11.5f} / {row['first_loss_torch']:<11.5f}"
              f"  {row['load1_before']} / {row['load1_after']}", flush=True)
    if not (a.save or a.out):
        return
    path = a.out or os.path.join(HERE, "results", f"torch_{dev}_{res['date']}.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
