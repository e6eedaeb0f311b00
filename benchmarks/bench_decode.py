"""Decode throughput of dsc.Model.generate (paged MLA latent cache), plain greedy vs MTP
speculative decoding (num_draft 1 and 2), at batch 1, 8 and 32:

  * the demo model trained on 2-digit addition (--ckpt DIR, e.g. demo_out/ of
    ``python -m deepseek_c demo``; without it the demo config is trained here for
    --train-steps steps and saved to a temp dir). Prompts: held-out problems (as
    train.evaluate builds them). Two settings: "answer" (generate until <eos>; answers are
    a few tokens) and "long64" (64 new tokens, eos_token_id=-1: where decode speed matters);
  * a ~100M-parameter config (random init, vocab 16000): 32 random prompt tokens, 32 new
    tokens, eos -1; batch 1 and 8 on CPU (+ 32 on CUDA). A random model's drafts are
    almost never accepted: those rows show what drafting costs.

    python benchmarks/bench_decode.py                       # CPU, trains the demo (~2 min)
    python benchmarks/bench_decode.py --ckpt demo_out       # CPU, a trained checkpoint
    python benchmarks/bench_decode.py --quick               # smoke test
    python benchmarks/bench_decode.py --device cuda
    python benchmarks/bench_decode.py --fp8                 # + frozen FP8 copies (E4M3-held weights)

Per row: the median over --reps interleaved rounds (plain, mtp k=1, mtp k=2 in turn, so
load on a shared machine hits every mode alike) of the C call's wall time. tokens_per_s =
new tokens / time of the whole call (prefill included, as GenerateOutput reports it);
decode_tokens_per_s = (new tokens - one per sequence) / (call time - time of the same call
with max_new_tokens=1, i.e. prefill + first token). speedup = plain time / MTP time.
Greedy MTP output must equal plain greedy output; a mismatch is printed as an ERROR and
recorded (matches_plain false).

Hugging Face reference (when torch and transformers import; else the JSON says "not
installed"; --no-hf skips it): transformers' DeepseekV3ForCausalLM (PyTorch, float32, on
CPU, torch.set_num_threads = our OpenMP thread count) runs greedy generate on the same
checkpoint and prompts as the demo "long64" rows and the 100M "rand32" rows, at --hf-batches
(default 1,8; ragged demo prompts are left-padded with an attention mask), right after our
rows of that case. Per case: median over --reps rounds (after a warm-up) of the wall time
of one whole generate call (prefill included), HF's and our plain greedy call timed in turn
in each round (so load hits both alike; ours_tokens_per_s is this Python-call wall time,
hence a little below the plain row's C-call figure); ratio = our tokens/s / HF tokens/s;
and whether HF's greedy tokens equal our plain greedy tokens sequence by sequence
(greedy_identical n/B, first divergence otherwise; a mismatch prints an ERROR and counts in
"errors"). The 100M model is saved to a temp dir for HF with num_key_value_heads =
num_attention_heads (HF's MLA repeats K/V num_attention_heads // num_key_value_heads times).
"machine_load" records the 1-minute load average and the CPU share used by other processes
(/proc/stat minus this process) during each timed part: timings taken with a busy CPU are
not comparable.

"demo_step_macs" / "100M_step_macs": multiply-adds per decoded token of the main model and of
the MTP module (from the config, step_macs): MTP with acceptance a gains at most
(1 + a) / (1 + mtp/main) even where verifying the extra token is free.

Writes benchmarks/results/decode_<device>_<date>.json (machine, commit, rows).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

import deepseek_c as dsc
from deepseek_c import data as D, train as TR
from _bench import HERE, git_commit
from bench_train import config_100m  # the same ~100M-parameter config

DEMO_BATCH, DEMO_SEQ, DEMO_LR = 32, 48, 3e-3  # as `python -m deepseek_c demo`


MODES = (("plain", None, 0), ("mtp", "mtp", 1), ("mtp", "mtp", 2))


def step_macs(cfg) -> dict:
    """Multiply-adds per decoded token of the main model and of the first MTP module (its
    eh_proj, its block, the shared head), from the config: the weights a decode step reads.
    MTP with acceptance a then gains at most (1 + a) / (1 + mtp/main) per step, even where
    verifying the extra token is free (memory-bound decode)."""
    D, H, V = cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size
    dn, dr, dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    rq, rkv = cfg.q_lora_rank or 0, cfg.kv_lora_rank
    q = D * rq + rq * H * (dn + dr) if rq else D * H * (dn + dr)
    attn = q + D * (rkv + dr) + rkv * H * (dn + dv) + H * dv * D
    dense = 3 * D * cfg.intermediate_size
    F = cfg.moe_intermediate_size
    moe = D * cfg.n_routed_experts + (cfg.num_experts_per_tok + cfg.n_shared_experts) * 3 * D * F

    def block(i: int) -> int:
        is_moe = cfg.n_routed_experts and i >= cfg.first_k_dense_replace and i % cfg.moe_layer_freq == 0
        return attn + (moe if is_moe else dense)

    L = cfg.num_hidden_layers
    main = sum(block(i) for i in range(L)) + V * D
    mtp = 2 * D * D + block(L) + V * D
    return dict(main=main, mtp=mtp, ratio=round(mtp / main, 4))


def _gen(m: dsc.Model, prompts: list, mnt: int, eos: int, spec, k: int):
    kw = dict(speculative=spec, num_draft=k) if spec else {}
    return m.generate(prompts, max_new_tokens=mnt, temperature=0.0, eos_token_id=eos, **kw)


def bench_case(m: dsc.Model, model_name: str, setting: str, prompts: list, mnt: int, eos: int,
               reps: int, extra: dict | None = None) -> list[dict]:
    """Rows for plain / mtp k=1 / mtp k=2 on one (model, setting, batch)."""
    B = len(prompts)
    secs: dict[int, list] = {i: [] for i in range(len(MODES))}
    pre: dict[int, list] = {i: [] for i in range(len(MODES))}
    outs: dict[int, object] = {}
    for i, (_, spec, k) in enumerate(MODES):  # warm-up (allocations, page faults)
        outs[i] = _gen(m, prompts, mnt, eos, spec, k)
    with CpuWatch() as watch:
        for _ in range(reps):
            for i, (_, spec, k) in enumerate(MODES):
                o = _gen(m, prompts, mnt, eos, spec, k)
                secs[i].append(o.seconds)
                pre[i].append(_gen(m, prompts, 1, eos, spec, k).seconds)
                if o.tokens != outs[i].tokens:
                    print(f"  ERROR: {model_name}/{setting}/B={B}/{MODES[i][0]} k={k}: greedy output changed "
                          "between repetitions", flush=True)
    rows = []
    plain_s = float(np.median(secs[0]))
    for i, (name, spec, k) in enumerate(MODES):
        o = outs[i]
        s, p = float(np.median(secs[i])), float(np.median(pre[i]))
        match = o.tokens == outs[0].tokens
        if not match:
            bad = sum(a != b for a, b in zip(o.tokens, outs[0].tokens))
            print(f"  ERROR: {model_name}/{setting}/B={B}: greedy MTP (num_draft {k}) output differs from plain "
                  f"greedy output in {bad} of {B} sequences", flush=True)
        dec = (o.new_tokens - B) / (s - p) if s > p and o.new_tokens > B else None
        row = dict(model=model_name, setting=setting, batch=B, mode=name, num_draft=k,
                   max_new_tokens=mnt, eos_token_id=eos, new_tokens=o.new_tokens,
                   mean_new_tokens=round(o.new_tokens / B, 2), main_forwards=o.main_forwards,
                   seconds=round(s, 5), prefill_seconds=round(p, 5),
                   tokens_per_s=round(o.new_tokens / s, 1),
                   decode_tokens_per_s=round(dec, 1) if dec else None,
                   accept_rate=None if o.accept_rate is None else round(o.accept_rate, 4),
                   drafted=o.drafted, accepted=o.accepted,
                   speedup_vs_plain=round(plain_s / s, 3), matches_plain=bool(match), reps=reps,
                   load=watch.as_dict())
        if extra:
            row.update(extra)
        rows.append(row)
        print(f"  {model_name:5s} {setting:7s} B={B:<3d} {name:5s} k={k}  {row['tokens_per_s']:9.1f} tok/s  "
              f"decode {row['decode_tokens_per_s'] or 0:9.1f} tok/s  new {o.new_tokens:5d}  "
              f"fwd {o.main_forwards:3d}  accept {'-' if o.accept_rate is None else f'{o.accept_rate:.3f}':>5s}  "
              f"x{row['speedup_vs_plain']:.2f}{'' if match else '  MISMATCH'}", flush=True)
    return rows


def train_demo(steps: int, device: str, out_dir: str, seed: int = 0) -> dict:
    tok = D.CharTokenizer()
    task = TR.make_task("addition")
    m = dsc.Model(TR.demo_config(tok.vocab_size), device=device, seed=seed)
    hist = TR.fit(m, D.batches(task, tok, DEMO_BATCH, DEMO_SEQ, seed=seed), steps, lr=DEMO_LR, progress=False)
    m.save(out_dir, optimizer=False)
    return dict(steps=steps, batch=DEMO_BATCH, seq=DEMO_SEQ, lr=DEMO_LR, seconds=round(hist["seconds"], 1),
                final_loss=round(float(np.mean(hist["loss"][-20:])), 4),
                final_mtp_loss=round(float(np.mean(hist["mtp_loss"][-20:])), 4))


class CpuWatch:
    """CPU used by other processes while a block runs: (busy jiffies of the whole machine from
    /proc/stat - this process's utime+stime) / (wall * cpus); plus the 1-min load average at
    the start. Linux only; elsewhere other_cpu_frac is None."""

    def __enter__(self):
        self.load1 = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        self.t0, self.j0 = time.perf_counter(), self._jiffies()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        j1 = self._jiffies()
        self.other_cpu_frac = None
        if self.j0 and j1 and wall > 0:
            busy = (j1[0] - self.j0[0]) - (j1[1] - self.j0[1])
            hz = os.sysconf("SC_CLK_TCK")
            self.other_cpu_frac = round(max(0.0, busy / hz / wall / (os.cpu_count() or 1)), 3)

    @staticmethod
    def _jiffies():
        try:
            with open("/proc/stat") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
            with open("/proc/self/stat") as fh:
                mine = fh.read().rsplit(")", 1)[1].split()
            busy = sum(f) - f[3] - f[4]  # all but idle and iowait
            return busy, int(mine[11]) + int(mine[12])  # utime, stime (all threads)
        except Exception:  # noqa: BLE001
            return None

    def as_dict(self) -> dict:
        return dict(load1_at_start=self.load1, other_cpu_frac=self.other_cpu_frac)


def hf_import():
    """(torch, transformers) or a note why not."""
    try:
        import torch
        import transformers
        from transformers import DeepseekV3ForCausalLM  # noqa: F401  (needs transformers >= 4.51)
        return torch, transformers
    except Exception as e:  # noqa: BLE001
        return "not installed" if isinstance(e, ImportError) and "DeepseekV3" not in str(e) else \
            f"failed: {type(e).__name__}: {e}"[:300]


def hf_load(ckpt: str):
    """transformers' DeepseekV3ForCausalLM on the checkpoint (float32, eval); the MTP layer's
    tensors (model.layers.<num_hidden_layers>.*) are not part of it and are ignored."""
    import torch
    from transformers import DeepseekV3ForCausalLM
    from transformers.utils import logging as hf_logging

    verb = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused MTP tensors would be listed as UNEXPECTED
    try:
        try:
            hf = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        except TypeError:  # transformers 4.x spells it torch_dtype
            hf = DeepseekV3ForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verb)
    return hf.eval()


def hf_case(hf, m: dsc.Model, model_name: str, setting: str, prompts: list, mnt: int, reps: int) -> dict:
    """Greedy generate of `mnt` tokens (no eos) with the HF model on `prompts` (left-padded
    with an attention mask when ragged), timed in turn with our plain greedy generate of the
    same prompts (so load on a shared machine hits both alike); tokens compared."""
    import torch

    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    # No eos, like ours with eos_token_id=-1. Fields of a GenerationConfig passed to generate()
    # that equal the global defaults (None) are filled from the checkpoint's generation config
    # (eos_token_id 2 here), so eos is cleared on the model's own config and passed explicitly.
    hf.generation_config.eos_token_id = None
    kw = dict(max_new_tokens=mnt, do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0,
              use_cache=True)

    def run():
        o = hf.generate(input_ids=ids, attention_mask=mask, **kw)
        if o.shape != (B, L + mnt):
            raise RuntimeError(f"HF generate returned shape {tuple(o.shape)}, expected {(B, L + mnt)}")
        return o

    ours = _gen(m, prompts, mnt, -1, None, 0).tokens  # warm-up
    with torch.inference_mode():
        out = run()  # warm-up
        ts, ts_ours = [], []
        with CpuWatch() as w:
            for _ in range(reps):
                t0 = time.perf_counter()
                _gen(m, prompts, mnt, -1, None, 0)
                ts_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                o = run()
                ts.append(time.perf_counter() - t0)
                if not torch.equal(o, out):
                    print(f"  ERROR: HF {model_name}/{setting}/B={B}: greedy output changed between repetitions",
                          flush=True)
    toks = out[:, L:].tolist()
    same = [t == list(o) for t, o in zip(toks, ours)]
    div = [next((j for j, (a, b) in enumerate(zip(t, o)) if a != b), min(len(t), len(o)))
           for t, o in zip(toks, ours)]
    s, so = float(np.median(ts)), float(np.median(ts_ours))
    tps, tps_ours = B * mnt / s, B * mnt / so
    row = dict(model=model_name, setting=setting, batch=B, max_new_tokens=mnt, new_tokens=B * mnt,
               seconds=round(s, 5), tokens_per_s=round(tps, 1), ours_seconds=round(so, 5),
               ours_tokens_per_s=round(tps_ours, 1), ratio_ours_over_hf=round(s / so, 2),
               greedy_identical=f"{sum(same)}/{B}", matches_ours=all(same),
               first_divergence=[d for d, ok in zip(div, same) if not ok] or None, reps=reps, load=w.as_dict())
    print(f"  HF    {setting:7s} B={B:<3d} plain      {row['tokens_per_s']:9.1f} tok/s  "
          f"ours {row['ours_tokens_per_s']:9.1f} tok/s  ours/HF x{row['ratio_ours_over_hf']:.2f}  greedy identical "
          f"{row['greedy_identical']}  other-cpu {w.other_cpu_frac}", flush=True)
    if not row["matches_ours"]:
        print(f"  ERROR: HF {model_name}/{setting}/B={B}: greedy tokens differ from ours in {B - sum(same)} of "
              f"{B} sequences (first divergence at {row['first_divergence']})", flush=True)
    return row


def hf_cases(ckpt: str, m: dsc.Model, model_name: str, setting: str, prompts: list, mnt: int,
             batches: list, reps: int) -> list:
    """hf_case at each batch of `batches` (the first B prompts)."""
    try:
        hf = hf_load(ckpt)
    except Exception as e:  # noqa: BLE001
        return [f"failed: {type(e).__name__}: {e}"[:500]]
    out = []
    for B in batches:
        if B > len(prompts):
            continue
        try:
            out.append(hf_case(hf, m, model_name, setting, prompts[:B], mnt, reps))
        except Exception as e:  # noqa: BLE001
            out.append(dict(model=model_name, setting=setting, batch=B,
                            error=f"failed: {type(e).__name__}: {e}"[:500]))
            print(f"  HF {model_name}/{setting}/B={B}:", out[-1]["error"], flush=True)
    del hf
    return out


def summary(rows: list[dict]) -> None:
    """One line per (model, setting, batch): tokens/s plain | MTP k=1 | MTP k=2."""
    print("\nmodel    setting  batch   plain tok/s | mtp k=1 tok/s accept speedup | mtp k=2 tok/s accept speedup")
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["model"], r["setting"], r["batch"]), {})[r["num_draft"]] = r
    for (mod, st, B), c in cases.items():
        line = f"{mod:8s} {st:8s} {B:5d} {c[0]['tokens_per_s']:13.1f}"
        for k in (1, 2):
            if k in c:
                r = c[k]
                acc = "-" if r["accept_rate"] is None else f"{r['accept_rate']:.3f}"
                line += f" | {r['tokens_per_s']:13.1f} {acc:>6s} {r['speedup_vs_plain']:6.2f}x"
                line += "" if r["matches_plain"] else " MISMATCH"
        print(line)


def summary_hf(hf_rows: list) -> None:
    """One line per HF case: HF tok/s, our plain tok/s, ratio, greedy agreement."""
    rows = [r for r in hf_rows if isinstance(r, dict) and "tokens_per_s" in r]
    if not rows:
        return
    print("\nmodel  setting  batch   HF tok/s  ours tok/s  ours/HF  greedy identical")
    for r in rows:
        print(f"{r['model']:6s} {r['setting']:8s} {r['batch']:5d} {r['tokens_per_s']:10.1f} "
              f"{r['ours_tokens_per_s']:11.1f} {r['ratio_ours_over_hf']:7.2f}x  {r['greedy_identical']}"
              f"{'' if r['matches_ours'] else '  MISMATCH'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--ckpt", default=None, help="a trained demo checkpoint directory (default: train one here)")
    ap.add_argument("--train-steps", type=int, default=None, help="demo training steps without --ckpt "
                    "(default 600, --quick 150)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds per case (default 5, --quick 2)")
    ap.add_argument("--batches", default=None, help="comma list (default 1,8,32; --quick 1,8)")
    ap.add_argument("--big-batches", default=None, help="100M config batches (default 1,8 on CPU, 1,8,32 on CUDA)")
    ap.add_argument("--no-big", action="store_true", help="skip the ~100M-parameter config")
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer steps, batch 1 and 8, 2 reps")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face transformers reference")
    ap.add_argument("--hf-batches", default="1,8", help="batches timed with transformers (default 1,8; "
                    "at most max(--batches) / max(--big-batches))")
    ap.add_argument("--fp8", action="store_true", help="also time frozen FP8 copies (Model.freeze_fp8: block "
                    "matrices held only in E4M3) of both models, long64 / rand32 rows, with their weight bytes")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/decode_<device>_<date>.json)")
    a = ap.parse_args()
    dev = a.device.split(":")[0]
    steps = a.train_steps or (150 if a.quick else 600)
    reps = a.reps or (2 if a.quick else 5)
    batches = [int(x) for x in (a.batches or ("1,8" if a.quick else "1,8,32")).split(",")]
    big_batches = [int(x) for x in (a.big_batches or ("1,8" if a.quick or dev == "cpu" else "1,8,32")).split(",")]
    res = {"device": a.device, "machine": platform.node(), "cpu_count": os.cpu_count(),
           "date": _dt.date.today().isoformat(), "commit": git_commit(),
           "threads": os.environ.get("OMP_NUM_THREADS", "default"), "greedy": True, "rows": []}
    if dev == "cuda":
        res["gpu"] = [d["name"] for d in dsc.info()["devices"]]
    hf_batches = [int(x) for x in a.hf_batches.split(",")]
    hf = "skipped (--no-hf)" if a.no_hf else hf_import()
    if not isinstance(hf, str) and dev != "cpu":
        hf = "skipped: the transformers reference runs on CPU only (--device cpu)"
    if isinstance(hf, str):
        res["transformers"] = hf
    else:
        torch, transformers = hf
        torch.set_num_threads(int(dsc.info()["max_threads"]))  # the same thread count as ours
        res["transformers"] = dict(version=transformers.__version__, torch=torch.__version__,
                                   torch_threads=torch.get_num_threads(),
                                   our_threads=int(dsc.info()["max_threads"]), rows=[])
    run_watch = CpuWatch().__enter__()

    tok = D.CharTokenizer()
    task = TR.make_task("addition")
    tmp = None
    ckpt = a.ckpt
    if ckpt is None:
        tmp = tempfile.mkdtemp(prefix="bench_decode_")
        ckpt = tmp
        print(f"training the demo config on 2-digit addition, {steps} steps ...", flush=True)
        res["train"] = train_demo(steps, a.device, ckpt)
        print("  ", res["train"], flush=True)
    res["ckpt"] = a.ckpt or f"(trained here: {steps} steps)"
    try:
        m = dsc.Model.from_pretrained(ckpt, device=a.device)
        print(m, flush=True)
        probs = D.heldout(task, max(batches), seed=12345)
        prompts = [[tok.bos_id] + tok.encode(p) for p, _ in probs]
        ans_mnt = max(len(ans) for _, ans in probs) + 2
        acc = [task.verify(p, tok.decode(o)) for (p, _), o in
               zip(probs, m.generate(prompts, max_new_tokens=ans_mnt, eos_token_id=tok.eos_id))]
        res["demo_accuracy"] = dict(n=len(acc), exact_match=round(float(np.mean(acc)), 4))
        macs = step_macs(m.cfg)
        res["demo_step_macs"] = macs
        print(f"  multiply-adds per token: main {macs['main']}, MTP module {macs['mtp']} ({100 * macs['ratio']:.0f}%): "
              f"MTP k=1 gains at most {2 / (1 + macs['ratio']):.2f}x even at 100% acceptance and free "
              f"verification", flush=True)
        print(f"  exact-match accuracy on {len(acc)} held-out problems: {100 * np.mean(acc):.1f}%", flush=True)
        for setting, mnt, eos in (("answer", ans_mnt, tok.eos_id), ("long64", 64, -1)):
            for B in batches:
                res["rows"] += bench_case(m, "demo", setting, prompts[:B], mnt, eos, reps)
        if a.fp8:
            f = m.freeze_fp8()
            print(f, f"weights {m.weight_bytes() / 1e6:.2f} MB float32 -> {f.weight_bytes() / 1e6:.2f} MB", flush=True)
            for B in batches:
                res["rows"] += bench_case(f, "demo-fp8", "long64", prompts[:B], 64, -1, reps,
                                          extra=dict(weight_bytes=f.weight_bytes(),
                                                     float32_weight_bytes=m.weight_bytes()))
            del f
        if isinstance(res["transformers"], dict):
            res["transformers"]["rows"] += hf_cases(ckpt, m, "demo", "long64", prompts, 64, hf_batches, reps)
        else:
            print("  transformers:", res["transformers"], flush=True)
        del m
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    if not a.no_big:
        cfg = config_100m(16000)
        # Unused by MLA (ours); HF's attention repeats K/V num_attention_heads // num_key_value_heads
        # times, and config_100m leaves demo_config's 4 with 8 heads (Model.save writes it as is).
        cfg.num_key_value_heads = cfg.num_attention_heads
        m = dsc.Model(cfg, device=a.device, seed=0)
        print(m, flush=True)
        res["100M_step_macs"] = step_macs(cfg)
        rng = np.random.default_rng(0)
        allp = rng.integers(3, cfg.vocab_size, (max(big_batches), 32)).tolist()
        for B in big_batches:
            res["rows"] += bench_case(m, "100M", "rand32", allp[:B], 32, -1, reps,
                                      extra=dict(params_M=round(m.num_parameters() / 1e6, 2),
                                                 weight_bytes=m.weight_bytes()))
        if a.fp8:
            f = m.freeze_fp8()
            print(f, f"weights {m.weight_bytes() / 1e6:.1f} MB float32 -> {f.weight_bytes() / 1e6:.1f} MB", flush=True)
            for B in big_batches:
                res["rows"] += bench_case(f, "100M-fp8", "rand32", allp[:B], 32, -1, reps,
                                          extra=dict(params_M=round(m.num_parameters() / 1e6, 2),
                                                     weight_bytes=f.weight_bytes(),
                                                     float32_weight_bytes=m.weight_bytes()))
            del f
        if isinstance(res["transformers"], dict):
            tmp = tempfile.mkdtemp(prefix="bench_decode_100m_")
            try:
                m.save(tmp, optimizer=False)
                res["transformers"]["rows"] += hf_cases(tmp, m, "100M", "rand32", allp, 32, hf_batches, reps)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        del m

    run_watch.__exit__(None, None, None)
    res["machine_load"] = dict(run_watch.as_dict(), load1_at_end=round(os.getloadavg()[0], 2))
    hf_rows = res["transformers"]["rows"] if isinstance(res["transformers"], dict) else []
    res["errors"] = sum(not r["matches_plain"] for r in res["rows"]) + \
        sum(not (isinstance(r, dict) and r.get("matches_ours")) for r in hf_rows)
    summary(res["rows"])
    summary_hf(hf_rows)
    path = a.out or os.path.join(HERE, "results", f"decode_{dev}_{res['date']}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(res, fh, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
