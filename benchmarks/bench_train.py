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
given by --peak-tflops (H100 SXM: 67 TFLOP/s FP32) for float32 models, and against the dense
BF16 tensor-core peak (--peak-bf16-tflops, 989 TFLOP/s) for bfloat16 models (--dtypes
float32,bfloat16), their FP8 rows included.

Side by side with PyTorch eager (CPU):

    python benchmarks/bench_train.py --vs-torch                       # 3 configs x 1 and 2 threads
    python benchmarks/bench_train.py --vs-torch --configs v3small --threads 1

The same model, batch, sequence and thread count on both sides: our checkpoint of the config
(seed 0) loaded by transformers' DeepseekV3ForCausalLM (float32, train mode; where
transformers is missing, or with --torch-impl plain, a plain PyTorch implementation of the
same architecture below, _TorchV3: the same math without transformers' per-module overhead,
a stricter baseline), then per step: logits, mean cross-entropy over every token, backward, global-norm
clipping to 1.0, AdamW (lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1: torch's AdamW
decays every tensor, ours only the matrices; the cost is the same) -- against
dsc.Model.train_step with the same options. No MTP module (HF's DeepseekV3 has none):
num_nextn_predict_layers = 0 in every comparison config. Configs (batch x seq):
  v3small  vocab 512, hidden 256, 4 layers (1 dense, intermediate 512), 16 routed experts
           (intermediate 128) top-4 in 4 groups (top-2 groups), 1 shared, q_lora 128,
           kv_lora 128, 4 heads of 32+16 / 32; 8 x 128
  demo     the demo model without its MTP depth (train.demo_config, vocab 64); 32 x 48
  100M     config_100m below (vocab 16000, 6 layers), MTP off; 4 x 256
Each side runs in its own process (OMP_NUM_THREADS / torch.set_num_threads = the thread
count; OpenBLAS and MKL get the same), --rounds times in turn (ours, torch, ours, ...): each
run warms up 2 steps and times --cmp-steps steps; the row gives min and median step time
over all timed steps of all rounds, the ratio of medians (torch / ours: > 1 means ours is
faster) and of minimums (less moved by a busy machine), and the first step's loss of each side (the same model and batch: they agree to
~1e-4). The machine load (1-min load average, other processes' CPU share) is recorded:
figures from a busy machine are not comparable.
Writes benchmarks/results/train_vs_torch_cpu_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
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
          moments: str = "float32", dtype: str = "float32") -> dict:
    m = dsc.Model(cfg, device=device, seed=0, fp8=fp8, moments=moments, dtype=dtype)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    y = np.roll(tok, -1, 1)
    if device != "cpu":
        tok, y = dsc.tensor(tok, device=device), dsc.tensor(y, device=device)
    for _ in range(warmup):
        m.train_step(tok, y, lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        # on a GPU the steps before the last queue without a host wait (sync=False); the last
        # returns host stats, so every step has finished when the clock stops
        last = i + 1 == steps
        s = m.train_step(tok, y, lr=1e-3, sync=last or device == "cpu")
    dt = time.perf_counter() - t0
    tps = batch * seq * steps / dt
    row = dict(params_M=round(m.num_parameters() / 1e6, 2), active_params_M=round(active_params(m) / 1e6, 2),
               dtype=dtype, fp8=fp8, moments=moments,
               optimizer_MB=round(2 * m.num_parameters() * (2 if moments == "bfloat16" else 4) / 2**20, 1),
               batch=batch, seq=seq, steps=steps, tokens_per_s=round(tps, 1),
               step_ms=round(1e3 * dt / steps, 1), final_loss=round(float(s["loss"]), 4),
               activation_MB=round(m.activation_bytes() / 2**20, 1),
               peak_rss_MB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               tflops=round(tps * flops_per_token(m, seq) / 1e12, 3))
    return row


# ----------------------------------------------------------------------- vs PyTorch eager

def config_v3small() -> dsc.ModelConfig:
    """The issue's DeepSeek-V3-architecture config (no MTP)."""
    return TR.demo_config(512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                          num_hidden_layers=4, num_nextn_predict_layers=0, num_attention_heads=4,
                          q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
                          v_head_dim=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                          n_group=4, topk_group=2, first_k_dense_replace=1, max_position_embeddings=512)


CMP_CONFIGS = {  # name: (config factory, batch, seq)
    "v3small": (config_v3small, 8, 128),
    "demo": (lambda: TR.demo_config(D.CharTokenizer().vocab_size, num_nextn_predict_layers=0), 32, 48),
    "100M": (lambda: _no_mtp(config_100m(16000)), 4, 256),
}


def _no_mtp(c: dsc.ModelConfig) -> dsc.ModelConfig:
    c.num_nextn_predict_layers = 0
    return c


def _batch(cfg, batch: int, seq: int):
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    return tok, np.roll(tok, -1, 1)


def _torch_v3_class():
    """A plain PyTorch DeepSeek-V3 (MLA with query compression, YaRN RoPE interleaved as the
    checkpoints store it, dense + MoE blocks: sigmoid routing with the correction bias,
    group-limited top-k, normalized and scaled weights, one shared expert) reading our
    checkpoint's tensors by name: the reference where transformers is not installed."""
    import torch
    import torch.nn.functional as F

    class _TorchV3(torch.nn.Module):
        def __init__(self, c: dsc.ModelConfig, sd: dict):
            super().__init__()
            self.c = c
            self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(torch.from_numpy(np.array(v)))
                                             for k, v in sd.items() if "e_score_correction_bias" not in k})
            self.bias = {k: torch.from_numpy(np.array(v)) for k, v in sd.items() if "e_score_correction_bias" in k}
            sc = c.rope_scaling_dict
            self.inv = torch.from_numpy(dsc.rope_inv_freq(c.qk_rope_head_dim, theta=c.rope_theta, scaling=sc))
            self.cs = dsc.rope_cos_sin_scale(scaling=sc)
            self.scale = c.softmax_scale

        def w(self, name):
            return self.p[name.replace(".", "__")]

        def rms(self, x, name):
            return self.w(name) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c.rms_norm_eps))

        def rope(self, x, pos):  # x [B, T, H, dr], interleaved pairs
            ang = pos[:, None].float() * self.inv[None, :]
            cos = (torch.cos(ang) * self.cs)[None, :, None, :]
            sin = (torch.sin(ang) * self.cs)[None, :, None, :]
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

        def mlp(self, x, pre):
            return F.linear(F.silu(F.linear(x, self.w(pre + "gate_proj.weight"))) *
                            F.linear(x, self.w(pre + "up_proj.weight")), self.w(pre + "down_proj.weight"))

        def moe(self, x, i):
            c, pre = self.c, f"model.layers.{i}.mlp."
            T_, D_ = x.shape[0] * x.shape[1], x.shape[2]
            xf = x.reshape(T_, D_)
            s = torch.sigmoid(F.linear(xf, self.w(pre + "gate.weight")))
            sel = s + self.bias[pre + "gate.e_score_correction_bias"]
            g = sel.view(T_, c.n_group, -1).topk(2, -1).values.sum(-1)
            keep = torch.zeros_like(g).scatter_(1, g.topk(c.topk_group, -1).indices, 1.0)
            mask = keep.repeat_interleave(c.n_routed_experts // c.n_group, 1)
            idx = sel.masked_fill(mask == 0, float("-inf")).topk(c.num_experts_per_tok, -1).indices
            wt = s.gather(1, idx)
            wt = wt / (wt.sum(-1, keepdim=True) + 1e-20) * c.routed_scaling_factor
            out = torch.zeros_like(xf)
            for e in range(c.n_routed_experts):
                tok, slot = (idx == e).nonzero(as_tuple=True)
                if tok.numel():
                    xe = xf[tok]
                    ye = F.linear(F.silu(F.linear(xe, self.w(pre + f"experts.{e}.gate_proj.weight"))) *
                                  F.linear(xe, self.w(pre + f"experts.{e}.up_proj.weight")),
                                  self.w(pre + f"experts.{e}.down_proj.weight"))
                    out.index_add_(0, tok, ye * wt[tok, slot, None])
            return (out + self.mlp(xf, pre + "shared_experts.")).view_as(x)

        def attn(self, x, i, pos):
            c, pre = self.c, f"model.layers.{i}.self_attn."
            B_, T_ = x.shape[:2]
            H, dn, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
            q = F.linear(self.rms(F.linear(x, self.w(pre + "q_a_proj.weight")), pre + "q_a_layernorm.weight"),
                         self.w(pre + "q_b_proj.weight")).view(B_, T_, H, dn + dr)
            kva = F.linear(x, self.w(pre + "kv_a_proj_with_mqa.weight"))
            ckv, kpe = kva[..., :c.kv_lora_rank], kva[..., c.kv_lora_rank:]
            kv = F.linear(self.rms(ckv, pre + "kv_a_layernorm.weight"),
                          self.w(pre + "kv_b_proj.weight")).view(B_, T_, H, dn + dv)
            qpe = self.rope(q[..., dn:], pos)
            kpe = self.rope(kpe[:, :, None, :], pos).expand(B_, T_, H, dr)
            qq = torch.cat([q[..., :dn], qpe], -1).transpose(1, 2)
            kk = torch.cat([kv[..., :dn], kpe], -1).transpose(1, 2)
            vv = kv[..., dn:].transpose(1, 2)
            o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=self.scale)
            return F.linear(o.transpose(1, 2).reshape(B_, T_, H * dv), self.w(pre + "o_proj.weight"))

        def forward(self, tokens):
            c = self.c
            pos = torch.arange(tokens.shape[1])
            h = F.embedding(tokens, self.w("model.embed_tokens.weight"))
            for i in range(c.num_hidden_layers):
                pre = f"model.layers.{i}."
                h = h + self.attn(self.rms(h, pre + "input_layernorm.weight"), i, pos)
                x = self.rms(h, pre + "post_attention_layernorm.weight")
                moe = c.n_routed_experts and i >= c.first_k_dense_replace
                h = h + (self.moe(x, i) if moe else self.mlp(x, pre + "mlp."))
            return F.linear(self.rms(h, "model.norm.weight"), self.w("lm_head.weight"))

    return _TorchV3


def _worker(side: str, ckpt: str, cfg_name: str, threads: int, steps: int, impl: str = "auto") -> None:
    """One side of the comparison (a subprocess): prints a JSON line with step times."""
    _, batch, seq = CMP_CONFIGS[cfg_name]
    m0 = dsc.Model.from_pretrained(ckpt) if side == "ours" else None
    cfg = m0.cfg if m0 is not None else dsc.ModelConfig.from_json(ckpt)
    tok, y = _batch(cfg, batch, seq)
    info: dict = {}
    if side == "ours":
        def step():
            return float(m0.train_step(tok, y, lr=1e-3, max_grad_norm=1.0, weight_decay=0.1, betas=(0.9, 0.95),
                                       eps=1e-8, bias_update_rate=1e-3)["loss"])
    else:
        import torch
        torch.set_num_threads(threads)
        info["torch"] = torch.__version__
        try:
            if impl == "plain":
                raise ImportError("--torch-impl plain")
            import transformers
            from transformers import DeepseekV3ForCausalLM
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
            try:
                model = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
            except TypeError:
                model = DeepseekV3ForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
            info["impl"] = f"transformers {transformers.__version__} DeepseekV3ForCausalLM " \
                           f"({model.config._attn_implementation} attention)"
            fwd = lambda t: model(input_ids=t).logits  # noqa: E731
        except ImportError:
            if impl == "hf":
                raise
            sd = dict(dsc.load_safetensors(os.path.join(ckpt, "model.safetensors")))
            model = _torch_v3_class()(cfg, sd)
            info["impl"] = "plain PyTorch (_TorchV3, sdpa attention)"
            fwd = model
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        tt, ty = torch.from_numpy(tok).long(), torch.from_numpy(y).long()

        def step():
            opt.zero_grad(set_to_none=True)
            logits = fwd(tt)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ty.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return float(loss.detach())

    first = step()
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(info, times=times, first_loss=first)), flush=True)


def _load() -> dict:
    la = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(load1=round(la, 2) if la is not None else None)


def vs_torch(configs: list, threads: list, steps: int, rounds: int, impl: str = "auto") -> list:
    rows = []
    here = os.path.abspath(__file__)
    for name in configs:
        factory, batch, seq = CMP_CONFIGS[name]
        tmp = tempfile.mkdtemp(prefix=f"bench_train_{name}_")
        try:
            m = dsc.Model(factory(), seed=0)
            m.save(tmp, optimizer=False)
            params = m.num_parameters()
            del m
            for nt in threads:
                env = dict(os.environ, OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt),
                           MKL_NUM_THREADS=str(nt))
                res = {"ours": [], "torch": []}
                info, first, loads = {}, {}, []
                st = steps if name != "100M" else max(2, steps // 2)
                for _ in range(rounds):
                    for side in ("ours", "torch"):
                        loads.append(_load()["load1"])
                        r = subprocess.run([sys.executable, here, "--worker", side, "--ckpt", tmp, "--configs", name,
                                            "--threads", str(nt), "--cmp-steps", str(st), "--torch-impl", impl],
                                           capture_output=True, text=True, env=env, timeout=3600)
                        if r.returncode != 0:
                            raise RuntimeError(f"{side} worker failed: {r.stderr[-3000:]}")
                        out = json.loads(r.stdout.strip().splitlines()[-1])
                        res[side] += out.pop("times")
                        first[side] = out.pop("first_loss")
                        info.update(out)
                med = {k: float(np.median(v)) for k, v in res.items()}
                row = dict(config=name, params_M=round(params / 1e6, 2), batch=batch, seq=seq, threads=nt,
                           ours_ms_min=round(1e3 * min(res["ours"]), 1), ours_ms_median=round(1e3 * med["ours"], 1),
                           torch_ms_min=round(1e3 * min(res["torch"]), 1),
                           torch_ms_median=round(1e3 * med["torch"], 1),
                           speedup_vs_torch=round(med["torch"] / med["ours"], 2),
                           speedup_vs_torch_of_mins=round(min(res["torch"]) / min(res["ours"]), 2),
                           first_loss_ours=round(first["ours"], 5), first_loss_torch=round(first["torch"], 5),
                           steps_timed_per_side=len(res["ours"]), load1_during=loads, **info)
                rows.append(row)
                print(f"{name:8s} {nt} thr  ours {row['ours_ms_median']:8.1f} ms (min {row['ours_ms_min']:.1f})  "
                      f"torch {row['torch_ms_median']:8.1f} ms (min {row['torch_ms_min']:.1f})  "
                      f"x{row['speedup_vs_torch']:.2f} (mins x{row['speedup_vs_torch_of_mins']:.2f})  "
                      f"first loss {row['first_loss_ours']:.4f} / "
                      f"{row['first_loss_torch']:.4f}  load {loads}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


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
    ap.add_argument("--full", action="store_true", help="also the ~100M-parameter config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=67.0, help="FP32 peak of the GPU, for MFU")
    ap.add_argument("--peak-bf16-tflops", type=float, default=989.0,
                    help="dense BF16 tensor-core peak of the GPU (H100/H200 SXM: 989), the MFU of bfloat16 rows")
    ap.add_argument("--dtypes", default="float32",
                    help="model compute dtypes (comma list of float32, bfloat16); each gets FP32, BF16-moment "
                         "and FP8 rows")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_<device>_<date>.json)")
    ap.add_argument("--vs-torch", action="store_true", help="side by side with PyTorch eager (CPU)")
    ap.add_argument("--configs", default="v3small,demo,100M", help="--vs-torch configs (v3small, demo, 100M)")
    ap.add_argument("--threads", default="1,2", help="--vs-torch thread counts")
    ap.add_argument("--cmp-steps", type=int, default=6, help="--vs-torch timed steps per run (100M: half)")
    ap.add_argument("--rounds", type=int, default=3, help="--vs-torch runs of each side, in turn")
    ap.add_argument("--torch-impl", choices=["auto", "hf", "plain"], default="auto",
                    help="--vs-torch baseline: transformers' DeepseekV3 (hf), the plain PyTorch V3 of this file "
                         "(plain), or hf where transformers imports, else plain (auto)")
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _worker(a.worker, a.ckpt, a.configs, int(a.threads), a.cmp_steps, a.torch_impl)
        return
    if a.vs_torch:
        res = {"device": "cpu", "machine": platform.node(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
               "date": _dt.date.today().isoformat(), "commit": git_commit(),
               "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]), "load_at_start": _load(),
               "rows": vs_torch(a.configs.split(","), [int(t) for t in a.threads.split(",")], a.cmp_steps,
                                a.rounds, a.torch_impl)}
        res["load_at_end"] = _load()
        path = a.out or os.path.join(HERE, "results", f"train_vs_torch_cpu_{res['date']}.json")
        with open(path, "w") as fh:
            json.dump(res, fh, indent=2)
        print("wrote", path)
        return
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
        for dtype in a.dtypes.split(","):
            for fp8, moments in ((False, "float32"), (False, "bfloat16"), (True, "float32")):
                row = dict(config=name, **bench(cfg, a.device, fp8, batch, seq, steps, moments=moments, dtype=dtype))
                if dev == "cuda":
                    # MFU against the peak of the units the rows aim at: FP32 SIMT for float32
                    # models, BF16 tensor cores for bfloat16 ones (FP8 rows too: the stricter peak)
                    peak = a.peak_tflops if dtype == "float32" else a.peak_bf16_tflops
                    row["mfu"] = round(row["tflops"] / peak, 4)
                    row["mfu_peak_tflops"] = peak
            res["rows"].append(row)
            print(row, flush=True)
    path = a.out or os.path.join(HERE, "results", f"train_{dev}_{res['date']}.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
