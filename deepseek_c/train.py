"""Training helpers behind ``python -m deepseek_c demo`` and ``python -m deepseek_c train``:
the demo config, a training loop with a progress bar, exact-match evaluation by greedy
generation, and the plots. The training step itself is dsc.Model.train_step: one call into
the C core (dsc_model_train_step).

    from deepseek_c import train
    model, hist = train.fit(model, batches, steps=600, lr=3e-3)
    acc = train.evaluate(model, task, tok, n=200)
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator, Optional

import numpy as np

from . import data as D
from .config import ModelConfig
from .model import Model, lr_schedule

__all__ = ["demo_config", "fit", "evaluate", "save_plots", "save_history", "load_history", "make_task"]


def demo_config(vocab_size: int, **overrides: Any) -> ModelConfig:
    """The demo model: 2 layers (1 dense + 1 MoE) + 1 MTP depth, MLA with query compression,
    16 routed experts in 4 groups (top-2 groups, top-4 experts, sigmoid + noaux_tc) plus one
    shared expert, YaRN RoPE. Its rotary base is 100, not DeepSeek-V3's 10000: each head has
    16 rotary dimensions (8 frequencies) and an answer digit looks back at most ~10 positions.
    After YaRN's interpolation the wavelengths are 13, 65, 251, 795, ... positions with base
    10000 -- one frequency that turns across 10 positions -- against 13, 31, 65, 131, ... with
    base 100. With base 10000 the model told its operand digits apart by position slowly and
    some seeds sat for the whole run on a loss plateau with one answer digit at chance."""
    keys = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, moe_intermediate_size=96,
        num_hidden_layers=2, num_nextn_predict_layers=1, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        first_k_dense_replace=1, max_position_embeddings=256, initializer_range=0.02, rope_theta=100.0,
        bos_token_id=1, eos_token_id=2,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        torch_dtype="float32",
    )
    keys.update(overrides)
    return ModelConfig.tiny(**keys)


def make_task(name: str) -> D.Task:
    """A built-in task by name: addition (2 digits), addition3, sorting, copy, reverse, mixture."""
    n = name.lower()
    if n in ("addition", "add", "addition2"):  # fixed width: "07+42=049"; 1 in 25 problems held out
        return D.Addition(digits=2, pad=True, holdout=25)
    if n == "addition3":
        return D.Addition(digits=3, pad=True, holdout=25)
    if n == "mixture":
        return D.Mixture([D.Addition(digits=2, pad=True), D.Sorting(length=5), D.Reverse(length=5)])
    if n in D.TASKS:
        return D.TASKS[n]()
    raise ValueError(f"train: data: expected a built-in task (addition, addition3, sorting, copy, reverse, "
                     f"mixture) or a text file path, got {name!r}")


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, dynamic_ncols=True, file=sys.stdout)
    except ImportError:
        return None


def fit(model: Model, batches: Iterator, steps: int, lr: float = 3e-3, warmup: Optional[int] = None,
        min_lr: Optional[float] = None, progress: bool = True, log_every: int = 50, **step_kw: Any) -> dict:
    """Run `steps` train steps with warmup + cosine LR; returns the history: per step loss,
    mtp_loss, grad_norm, load_imbalance, lr, tokens, step_seconds (the train_step call) and
    expert_load; and for the whole run seconds (wall time, batches included), tokens and
    tokens_per_s = tokens / seconds."""
    warmup = max(1, steps // 20) if warmup is None else warmup
    hist: dict[str, Any] = {k: [] for k in ("loss", "mtp_loss", "grad_norm", "load_imbalance", "lr", "tokens",
                                             "step_seconds")}
    hist["expert_load"] = []
    hist["num_hidden_layers"] = int(model.cfg.num_hidden_layers)
    bar = _bar(steps, progress)
    t0 = time.perf_counter()
    start = model.step
    done = 0
    for s in range(steps):
        b = next(batches)
        st = model.train_step(b.tokens, b.targets,
                              lr=lambda k: lr_schedule(k - start, lr, warmup, steps, min_lr), **step_kw)
        for k in ("loss", "mtp_loss", "grad_norm", "load_imbalance", "lr"):
            hist[k].append(st[k])
        hist["tokens"].append(int(st["tokens"]))
        hist["step_seconds"].append(float(st["seconds"]))
        hist["expert_load"].append({int(i): np.asarray(c).tolist() for i, c in st["expert_load"].items()})
        done += int(st["tokens"])
        tps = done / max(time.perf_counter() - t0, 1e-9)  # so far: total tokens / total wall time
        if bar is not None:
            bar.set_postfix(loss=f"{st['loss']:.3f}", mtp=f"{st['mtp_loss']:.3f}", tok_s=f"{tps:.0f}",
                            imb=f"{st['load_imbalance']:.2f}")
            bar.update(1)
        elif progress and (s % log_every == 0 or s == steps - 1):
            print(f"step {s + 1:5d}/{steps}  loss {st['loss']:.4f}  mtp {st['mtp_loss']:.4f}  "
                  f"tokens/s {tps:.0f}  load max/mean {st['load_imbalance']:.2f}", flush=True)
    if bar is not None:
        bar.close()
    hist["seconds"] = time.perf_counter() - t0
    hist["total_tokens"] = done
    hist["tokens_per_s"] = done / hist["seconds"] if hist["seconds"] > 0 else 0.0
    return hist


def save_history(hist: dict, out: str) -> str:
    """history.json: what fit() returned, so that plots can be redrawn without training
    (``python -m deepseek_c plot DIR``)."""
    p = os.path.join(out, "history.json")
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(hist, fh)
    return p


def load_history(out: str) -> dict:
    p = os.path.join(out, "history.json")
    with open(p, encoding="utf-8") as fh:
        hist = json.load(fh)
    hist["expert_load"] = [{int(k): v for k, v in d.items()} for d in hist.get("expert_load", [])]
    return hist


def evaluate(model: Model, task: D.Task, tok, n: int = 200, seed: int = 12345, max_new_tokens: Optional[int] = None,
             examples: int = 0, speculative: Optional[str] = None, batch: Optional[int] = None) -> dict:
    """Exact-match accuracy of greedy generation on n held-out problems (all prompts in
    one batched call, or `batch` at a time), with the generation statistics: tokens,
    seconds, tokens_per_s, accept_rate (MTP speculative decoding) and the outputs."""
    probs = D.heldout(task, n, seed=seed)
    prompts = [[tok.bos_id] + tok.encode(p) for p, _ in probs]
    mnt = max_new_tokens or (max(len(a) for _, a in probs) + 2)
    step = batch or len(prompts)
    outs: list = []
    new = drafted = accepted = 0
    secs = 0.0
    for i in range(0, len(prompts), step):
        g = model.generate(prompts[i:i + step], max_new_tokens=mnt, temperature=0.0, eos_token_id=tok.eos_id,
                           speculative=speculative)
        outs += list(g.tokens)
        new, secs = new + g.new_tokens, secs + g.seconds
        drafted, accepted = drafted + g.drafted, accepted + g.accepted
    right, shown = 0, []
    for (p, a), o in zip(probs, outs):
        text = tok.decode(o)
        ok = task.verify(p, text)
        right += ok
        if len(shown) < examples:
            shown.append((p, text, a, ok))
    return dict(accuracy=right / max(1, len(probs)), n=len(probs), examples=shown, outputs=outs, tokens=new,
                seconds=secs, tokens_per_s=new / secs if secs > 0 else 0.0,
                accept_rate=accepted / drafted if drafted else None)


def save_plots(hist: dict, out: str) -> list[str]:
    """loss_curve.png and expert_load.png (when matplotlib is installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(hist["loss"], label="main loss", lw=1)
    if any(hist["mtp_loss"]):
        ax.plot(hist["mtp_loss"], label="MTP loss", lw=1)
    ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (answer tokens)"); ax.set_yscale("log"); ax.legend()
    ax.set_title("deepseek_c demo: training loss")
    fig.tight_layout(); p = os.path.join(out, "loss_curve.png"); fig.savefig(p, dpi=100); plt.close(fig)
    paths.append(p)
    loads = hist["expert_load"]
    if loads and loads[0]:
        layers = sorted(loads[0])
        L = int(hist.get("num_hidden_layers", max(layers) + 1))

        def label(i: int) -> str:  # blocks L.. are the MTP modules' (depth 1, 2, ...)
            return f"layer {i}" if i < L else f"MTP depth {i - L + 1}"

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i in layers:
            imb = [max(l[i]) / (np.mean(l[i]) or 1) for l in loads]
            axes[0].plot(imb, lw=1, label=label(i))
        axes[0].set_xlabel("step"); axes[0].set_ylabel("max / mean expert load"); axes[0].legend()
        axes[0].set_title("load imbalance (aux-loss-free bias update)")
        last = np.array([np.sum([l[i] for l in loads[-50:]], 0) for i in layers], float)
        im = axes[1].imshow(last / last.mean(1, keepdims=True), aspect="auto", cmap="viridis")
        axes[1].set_yticks(range(len(layers))); axes[1].set_yticklabels([label(i) for i in layers])
        axes[1].set_xlabel("expert"); axes[1].set_title("load / mean, last 50 steps")
        fig.colorbar(im, ax=axes[1])
        fig.tight_layout(); p = os.path.join(out, "expert_load.png"); fig.savefig(p, dpi=100); plt.close(fig)
        paths.append(p)
    return paths


def write_summary(out: str, summary: dict) -> None:
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
