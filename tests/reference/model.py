"""Independent NumPy float64 reference of the DeepSeek-V3-style model (DEEPSEEK_V3.md 0.3,
1, 4): embedding, blocks (RMSNorm -> MLA -> residual, RMSNorm -> dense SwiGLU MLP or MoE
-> residual), final norm, head; MTP depths with the embedding-first concat
[enorm(Emb(t_{i+d})) ; hnorm(h^{d-1}_i)] -> eh_proj -> block -> shared_head.norm -> head.

Built from a {Hugging Face name: array} dict (what model.safetensors holds) and a
deepseek_c.ModelConfig; reuses the MLA and MoE references of this directory.

`rnd` (optional, default none): a rounding applied where a BF16-compute model rounds
activations (csrc/model/model_layers.c, "BF16 compute": the attention / FFN / head / eh_proj
inputs, the attention output, the dense MLP's gate, up, SwiGLU and down outputs, the MoE
output, the logits); with bf16-rounded weights it emulates Model(dtype="bfloat16")."""

from __future__ import annotations

import numpy as np

from . import mla as ref_mla
from . import moe as ref_moe


def rms_norm(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def is_moe(cfg, i):
    return bool(cfg.n_routed_experts) and i >= cfg.first_k_dense_replace and i % cfg.moe_layer_freq == 0


def _same(x):
    return x


def block(h, P, cfg, i, rnd=None):
    r = rnd or _same
    p = f"model.layers.{i}."
    eps = cfg.rms_norm_eps
    a = r(rms_norm(h, P[p + "input_layernorm.weight"], eps))
    attn = {k[len(p + "self_attn."):]: v for k, v in P.items() if k.startswith(p + "self_attn.")}
    h = h + r(ref_mla.mla_forward(a, attn, cfg))
    b = r(rms_norm(h, P[p + "post_attention_layernorm.weight"], eps))
    if is_moe(cfg, i):
        mlp = {k[len(p):]: v for k, v in P.items() if k.startswith(p + "mlp.")}
        B, T, D = b.shape
        y, _, _ = ref_moe.moe_layer(b.reshape(-1, D), mlp, cfg.to_dict())
        m = r(y.reshape(B, T, D))
    else:
        g = r(b @ P[p + "mlp.gate_proj.weight"].T)
        u = r(b @ P[p + "mlp.up_proj.weight"].T)
        m = r(r(g / (1 + np.exp(-g)) * u) @ P[p + "mlp.down_proj.weight"].T)
    return h + m


def forward(params, cfg, tokens, with_mtp=False, rnd=None):
    """Main logits [B, T, V] (and the MTP logits list when with_mtp), float64."""
    r = rnd or _same
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    tokens = np.asarray(tokens)
    eps = cfg.rms_norm_eps
    emb = P["model.embed_tokens.weight"]
    head = emb if cfg.tie_word_embeddings else P["lm_head.weight"]
    h = emb[tokens]
    for i in range(cfg.num_hidden_layers):
        h = block(h, P, cfg, i, rnd)
    hn = r(rms_norm(h, P["model.norm.weight"], eps))
    logits = r(hn @ head.T)
    if not with_mtp:
        return logits
    T = tokens.shape[1]
    prev, mtp = hn, []
    for d in range(1, (cfg.num_nextn_predict_layers or 0) + 1):
        i = cfg.num_hidden_layers + d - 1
        p = f"model.layers.{i}."
        e = r(rms_norm(emb[tokens[:, d:]], P[p + "enorm.weight"], eps))
        hh = r(rms_norm(prev[:, : T - d], P[p + "hnorm.weight"], eps))
        x = r(np.concatenate([e, hh], -1) @ P[p + "eh_proj.weight"].T)
        x = block(x, P, cfg, i, rnd)
        xn = r(rms_norm(x, P[p + "shared_head.norm.weight"], eps))
        mtp.append(r(xn @ head.T))
        prev = xn
    return logits, mtp


def cross_entropy(logits, targets, ignore_index=-100):
    z = logits.reshape(-1, logits.shape[-1])
    t = np.asarray(targets).reshape(-1)
    ok = t != ignore_index
    if not ok.any():
        return 0.0
    z = z[ok]
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(z.shape[0]), t[ok]]))


def loss(params, cfg, tokens, targets, mtp_lambda=0.3, ignore_index=-100, rnd=None):
    """Main cross-entropy + mtp_lambda / D * sum_d CE_d (targets shifted by d)."""
    logits, mtp = forward(params, cfg, tokens, with_mtp=True, rnd=rnd)
    L = cross_entropy(logits, targets, ignore_index)
    D = max(1, cfg.num_nextn_predict_layers or 0)
    targets = np.asarray(targets)
    for d, lg in enumerate(mtp, start=1):
        L += mtp_lambda / D * cross_entropy(lg, targets[:, d:], ignore_index)
    return L
