"""Independent NumPy float64 reference of DeepSeekMoE, written from the formulas of
DEEPSEEK_V3.md section 1 (not from the library's code).

Routing: affinities s = sigmoid(z) (V3) or softmax(z) (V2); selection scores s + bias
(noaux_tc) or s; group score = sum of the two largest selection scores (noaux_tc) or the
max affinity (group_limited_greedy); the topk_group best groups kept, the others
excluded (-inf); top-k among the kept; weights = s of the chosen (normalized with
norm_topk_prob, + 1e-20 in the denominator) times the scaling factor. Every ranking sorts
by (-value, index): ties go to the lower index.
"""

from __future__ import annotations

import numpy as np


def affinities(logits: np.ndarray, scoring: str) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if scoring == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ranked(values, candidates):
    """Candidates sorted best first: larger value, then lower index."""
    return sorted(candidates, key=lambda i: (-values[i], i))


def route(logits, bias=None, *, top_k=8, n_group=8, topk_group=4, scoring="sigmoid",
          topk_method="noaux_tc", norm_topk_prob=True, route_scale=2.5):
    """(indices [T, k] int64 best first, weights [T, k] float64, scores [T, E] float64)."""
    s = affinities(logits, scoring)
    T, E = s.shape
    b = np.zeros(E) if bias is None else np.asarray(bias, dtype=np.float64)
    idx = np.zeros((T, top_k), dtype=np.int64)
    w = np.zeros((T, top_k))
    per = E // n_group
    for t in range(T):
        sel = s[t] + b if topk_method == "noaux_tc" else s[t]
        allowed = list(range(E))
        if topk_method != "greedy":
            gscore = []
            for g in range(n_group):
                members = range(g * per, (g + 1) * per)
                if topk_method == "noaux_tc":
                    top = sorted((sel[e] for e in members), reverse=True)[:2]
                    gscore.append(sum(top))
                else:
                    gscore.append(max(s[t, e] for e in members))
            kept = _ranked(gscore, range(n_group))[:topk_group]
            allowed = [e for e in range(E) if e // per in kept]
        chosen = _ranked(sel, allowed)[:top_k]
        idx[t] = chosen
        wt = s[t, chosen]
        if norm_topk_prob:
            wt = wt / (wt.sum() + 1e-20)
        w[t] = wt * route_scale
    return idx, w, s


def route_weights_from_logits(logits, indices, *, scoring, norm_topk_prob, route_scale):
    """The weights as a function of the logits for a FIXED choice (for finite differences)."""
    s = affinities(logits, scoring)
    wt = np.take_along_axis(s, indices, axis=1)
    if norm_topk_prob:
        wt = wt / (wt.sum(1, keepdims=True) + 1e-20)
    return wt * route_scale


def expert_load(indices, n_experts):
    return np.bincount(np.asarray(indices).ravel(), minlength=n_experts).astype(np.int64)


def update_bias(bias, load, rate):
    load = np.asarray(load, dtype=np.float64)
    return np.asarray(bias, dtype=np.float64) + rate * np.sign(load.mean() - load)


def seq_aux_loss(scores, indices, seq_len, alpha):
    """alpha * sum_i f_i P_i per sequence, averaged over sequences (DeepSeek-V3 eqs. 17-20)."""
    s = np.asarray(scores, dtype=np.float64)
    T, E = s.shape
    k = indices.shape[1]
    B = T // seq_len
    total = 0.0
    for b in range(B):
        seg = s[b * seq_len:(b + 1) * seq_len]
        ids = np.asarray(indices[b * seq_len:(b + 1) * seq_len]).ravel()
        f = E / (k * seq_len) * np.bincount(ids, minlength=E)
        P = (seg / seg.sum(1, keepdims=True)).mean(0)
        total += alpha * float((f * P).sum())
    return total / B


def permute(x, indices, n_experts, align):
    """(out [R, D], group_offsets [E+1], row_map [T, k]): per expert its (token, slot)
    pairs in token order, then zero rows up to a multiple of align."""
    x = np.asarray(x, dtype=np.float64)
    T, k = indices.shape
    rows, offsets, row_map = [], [0], np.zeros((T, k), dtype=np.int64)
    for e in range(n_experts):
        pairs = [(t, j) for t in range(T) for j in range(k) if indices[t, j] == e]
        for (t, j) in pairs:
            row_map[t, j] = len(rows)
            rows.append(x[t])
        pad = -len(pairs) % align
        rows.extend([np.zeros(x.shape[1])] * pad)
        offsets.append(len(rows))
    out = np.array(rows).reshape(len(rows), x.shape[1])
    return out, np.array(offsets), row_map


def unpermute(expert_out, row_map, weights):
    eo = np.asarray(expert_out, dtype=np.float64)
    T, k = row_map.shape
    y = np.zeros((T, eo.shape[1]))
    for t in range(T):
        for j in range(k):
            y[t] += weights[t, j] * eo[row_map[t, j]]
    return y


def silu(v):
    return v / (1.0 + np.exp(-v))


def _matmul_t(x, w):
    return x @ w.T


def swiglu_mlp(x, wg, wu, wd, lin=_matmul_t):
    return lin(silu(lin(x, wg)) * lin(x, wu), wd)


def moe_layer(x, params, cfg, *, fixed_indices=None, seq_len=None, aux_alpha=0.0, lin=_matmul_t):
    """The dense reference MoE layer: loop over experts, each on the tokens routed to it.

    params: HF names -> arrays; cfg: dict of HF keys. fixed_indices: use this routing
    choice instead of recomputing it (finite differences across tiny perturbations).
    lin(x, W) computes each expert projection x @ W^T (the router's stays exact).
    Returns (out [T, D], aux loss, indices)."""
    x = np.asarray(x, dtype=np.float64)
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    E = cfg["n_routed_experts"]
    logits = x @ P["mlp.gate.weight"].T
    method = cfg["topk_method"]
    bias = P.get("mlp.gate.e_score_correction_bias") if method == "noaux_tc" else None
    idx, w, s = route(logits, bias, top_k=cfg["num_experts_per_tok"], n_group=cfg.get("n_group") or 1,
                      topk_group=cfg.get("topk_group") or 1, scoring=cfg["scoring_func"],
                      topk_method=method, norm_topk_prob=cfg["norm_topk_prob"],
                      route_scale=cfg["routed_scaling_factor"])
    if fixed_indices is not None:
        idx = fixed_indices
        w = route_weights_from_logits(logits, idx, scoring=cfg["scoring_func"],
                                      norm_topk_prob=cfg["norm_topk_prob"],
                                      route_scale=cfg["routed_scaling_factor"])
    y = np.zeros_like(x)
    for e in range(E):
        tok, slot = np.nonzero(idx == e)
        if tok.size == 0:
            continue
        h = swiglu_mlp(x[tok], P[f"mlp.experts.{e}.gate_proj.weight"], P[f"mlp.experts.{e}.up_proj.weight"],
                       P[f"mlp.experts.{e}.down_proj.weight"], lin)
        y[tok] += w[tok, slot][:, None] * h
    if cfg.get("n_shared_experts"):
        y += swiglu_mlp(x, P["mlp.shared_experts.gate_proj.weight"], P["mlp.shared_experts.up_proj.weight"],
                        P["mlp.shared_experts.down_proj.weight"], lin)
    aux = seq_aux_loss(s, idx, seq_len, aux_alpha) if aux_alpha else 0.0
    return y, aux, idx
