"""MoE benchmarks: routing time, permute / unpermute bandwidth, and the whole MoE layer,
each against a baseline measured in the same run. One line per case.

  routing:            T x 256 experts, top-8, 8 groups, top-4 groups (DeepSeek-V3), T = 4096, 16384
  permute/unpermute:  hidden 7168, top-8 of 256 (CPU default: 512 tokens; --full: 4096)
  moe layer:          forward (+ backward) of a small layer vs a NumPy loop over experts

CPU (default): baseline NumPy (vectorized routing, fancy-index dispatch, loop over experts).
GPU (--device cuda, needs PyTorch with CUDA and a CUDA build): baseline PyTorch eager;
cases whose ops have no CUDA kernels in this build are reported as skipped.

    python benchmarks/bench_moe.py [--device cpu|cuda] [--full] [--out PATH]

Writes benchmarks/results/moe_<device>_<date>.json with machine, commit and numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys

import numpy as np

import deepseek_c as dsc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ops import HBM_BYTES_PER_S, git_commit, timeit  # noqa: E402


# ----------------------------------------------------------------------------- NumPy baselines


def np_route_v3(logits, bias, k=8, G=8, TG=4, scale=2.5):
    s = 1.0 / (1.0 + np.exp(-logits))
    sel = s + bias
    T, E = sel.shape
    grp = np.sort(sel.reshape(T, G, E // G), axis=-1)[..., -2:].sum(-1)
    keep = np.argpartition(-grp, TG - 1, axis=1)[:, :TG]
    mask = np.full((T, G), -np.inf, np.float32)
    np.put_along_axis(mask, keep, 0.0, axis=1)
    masked = (sel.reshape(T, G, E // G) + mask[..., None]).reshape(T, E)
    idx = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    w = np.take_along_axis(s, idx, 1)
    return idx, w / w.sum(1, keepdims=True) * scale


def np_moe_layer(x, wg, ge, ue, de, sg, su, sd, k, G, TG):
    logits = x @ wg.T
    idx, w = np_route_v3(logits, np.zeros(wg.shape[0], np.float32), k, G, TG)
    y = np.zeros_like(x)
    for e in range(wg.shape[0]):
        tok, slot = np.nonzero(idx == e)
        if tok.size == 0:
            continue
        xe = x[tok]
        g = xe @ ge[e].T
        h = (g / (1 + np.exp(-g)) * (xe @ ue[e].T)) @ de[e].T
        np.add.at(y, tok, w[tok, slot][:, None] * h)
    g = x @ sg.T
    return y + (g / (1 + np.exp(-g)) * (x @ su.T)) @ sd.T


# ----------------------------------------------------------------------------- cases


def cases(device: str, full: bool):
    """(name, shape, dsc fn, baseline fn or None, bytes moved)"""
    rng = np.random.default_rng(0)
    cuda = device == "cuda"
    if cuda:
        import torch

        to = lambda a: torch.from_numpy(a).cuda()
    else:
        to = lambda a: a

    E, k, G, TG = 256, 8, 8, 4
    for T in (4096, 16384):
        logits = rng.standard_normal((T, E)).astype(np.float32)
        bias = (rng.standard_normal(E) * 0.01).astype(np.float32)
        L, B = to(logits), to(bias)
        base = (lambda logits=logits, bias=bias: np_route_v3(logits, bias)) if not cuda else None
        yield ("route", f"{T}x{E} top{k} g{G}/{TG}",
               lambda L=L, B=B: dsc.moe_route(L, B, top_k=k, n_group=G, topk_group=TG), base,
               T * E * 4 + T * k * 8)

    D = 7168
    T = 4096 if (full or cuda) else 512
    x = rng.standard_normal((T, D)).astype(np.float32)
    idx = np.stack([rng.choice(E, k, replace=False) for _ in range(T)]).astype(np.int32)
    w = rng.random((T, k)).astype(np.float32)
    X, I, W = to(x), to(idx), to(w)
    p = dsc.moe_permute(X, I, E, align=1) if not cuda else None
    order = np.argsort(idx.ravel(), kind="stable")
    base_perm = (lambda: x[order // k]) if not cuda else None
    yield ("permute", f"{T}x{D} top{k}", lambda: dsc.moe_permute(X, I, E, align=1), base_perm,
           (T * D + T * k * D) * 4)
    if p is not None:
        eo = p.x.copy()
        rm = np.asarray(p.row_map)
        base_un = lambda: np.einsum("tk,tkd->td", w, eo[rm])
        yield ("unpermute", f"{T}x{D} top{k}", lambda: dsc.moe_unpermute(eo, p, w), base_un,
               (T * D + T * k * D) * 4)

    # whole layer (small: the CPU baseline loops over experts in NumPy)
    if full:
        T, D, E, F, k, G, TG = 2048, 2048, 64, 512, 6, 8, 4
    else:
        T, D, E, F, k, G, TG = 512, 1024, 16, 256, 4, 4, 2
    f32 = lambda *s: (rng.standard_normal(s) * s[-1] ** -0.5).astype(np.float32)
    x = f32(T, D)
    params = {"mlp.gate.weight": f32(E, D), "mlp.gate.e_score_correction_bias": np.zeros(E, np.float32)}
    ge, ue, de = f32(E, F, D), f32(E, F, D), f32(E, D, F)
    for e in range(E):
        params[f"mlp.experts.{e}.gate_proj.weight"] = ge[e]
        params[f"mlp.experts.{e}.up_proj.weight"] = ue[e]
        params[f"mlp.experts.{e}.down_proj.weight"] = de[e]
    # pre-stacked expert weights (what a model keeps) avoid restacking every call
    params["mlp.experts.gate_proj.weight"], params["mlp.experts.up_proj.weight"], \
        params["mlp.experts.down_proj.weight"] = ge, ue, de
    sg, su, sd = f32(F, D), f32(F, D), f32(D, F)
    params.update({"mlp.shared_experts.gate_proj.weight": sg, "mlp.shared_experts.up_proj.weight": su,
                   "mlp.shared_experts.down_proj.weight": sd})
    cfg = dict(n_routed_experts=E, num_experts_per_tok=k, n_group=G, topk_group=TG, scoring_func="sigmoid",
               topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5, n_shared_experts=1,
               moe_intermediate_size=F)
    if cuda:
        import torch

        x = torch.from_numpy(x).cuda()
        params = {n: torch.from_numpy(np.ascontiguousarray(v)).cuda() for n, v in params.items()}
    base = (lambda: np_moe_layer(x, params["mlp.gate.weight"], ge, ue, de, sg, su, sd, k, G, TG)) if not cuda else None
    yield ("moe_layer fwd", f"T{T} D{D} E{E} F{F} k{k}", lambda: dsc.moe_forward(x, params, cfg), base, 0)

    def fwd_bwd():
        out, ctx = dsc.moe_forward(x, params, cfg)
        return dsc.moe_backward(out, ctx)

    yield ("moe_layer fwd+bwd", f"T{T} D{D} E{E} F{F} k{k}", fwd_bwd, None, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--full", action="store_true", help="full-size shapes on CPU (slow)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()
    if args.device == "cuda":
        try:
            import torch
        except ImportError:
            print("skipped: --device cuda needs PyTorch")
            return
        if not torch.cuda.is_available() or not dsc.has_cuda():
            print("skipped: no CUDA device visible to PyTorch and deepseek_c "
                  f"({dsc.info().get('cuda_unavailable_reason') or 'CPU-only build'})")
            return
        sync, name = torch.cuda.synchronize, torch.cuda.get_device_name()
    else:
        sync, name = (lambda: None), platform.processor() or platform.machine()
    print(f"deepseek_c {dsc.__version__} bench_moe on {args.device} ({name}), threads {dsc.info()['max_threads']}")
    print(f"{'case':<20} {'shape':<26} {'dsc us':>11} {'baseline us':>12} {'speedup':>8} {'GB/s':>8} {'HBM %':>6}")
    rows = []
    for case, shape, f, base, nbytes in cases(args.device, args.full):
        try:
            t = timeit(f, sync, min_time=0.5, reps=3)
        except (dsc.Error, ValueError) as e:
            if "no CUDA kernels" in str(e):
                print(f"{case:<20} {shape:<26} skipped: {e}")
                rows.append(dict(case=case, shape=shape, skipped=str(e)))
                continue
            raise
        tb = timeit(base, sync, min_time=0.5, reps=3) if base is not None else None
        gbs = nbytes / t / 1e9 if nbytes else 0.0
        hbm = f"{nbytes / t / HBM_BYTES_PER_S * 100:.0f}%" if (nbytes and args.device == "cuda") else ""
        print(f"{case:<20} {shape:<26} {t * 1e6:11.1f} "
              f"{(f'{tb * 1e6:12.1f}' if tb else f'{chr(45):>12}')} "
              f"{(f'{tb / t:7.2f}x' if tb else f'{chr(45):>8}')} {gbs:8.2f} {hbm:>6}")
        rows.append(dict(case=case, shape=shape, us=t * 1e6, baseline_us=tb * 1e6 if tb else None,
                         speedup=tb / t if tb else None, gb_s=gbs, hbm_fraction=hbm))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"moe_{args.device}_{_dt.date.today().isoformat()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(device=args.device, device_name=name, date=_dt.date.today().isoformat(), commit=git_commit(),
                       baseline="NumPy" if args.device == "cpu" else "PyTorch", full=args.full,
                       threads=dsc.info()["max_threads"], results=rows), fh, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
