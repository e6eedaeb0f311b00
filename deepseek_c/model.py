"""A DeepSeek-V3-architecture model (MLA + DeepSeekMoE + MTP, optional FP8) that trains end to
end from Python, with Hugging Face parameter names and safetensors checkpoints.

    cfg = dsc.ModelConfig.tiny()
    model = dsc.Model(cfg, seed=0)                       # float32 master weights, V3 init
    logits = model.forward(tokens)                       # [B, T] int -> [B, T, vocab] float32
    stats = model.train_step(tokens, targets, lr=1e-3)   # loss, mtp_loss, grad_norm, expert load, ...
    model.save("out/")                                   # config.json + model.safetensors + optimizer.safetensors
    model = dsc.Model.from_pretrained("out/")            # also DeepSeek FP8 checkpoints (weight_scale_inv)
    out = model.generate([[1, 5, 6]], max_new_tokens=8)  # greedy / sampling by full re-forward

Status: every op (embedding, RMSNorm, MLA, dense SwiGLU MLP, the MoE layer, the head,
cross-entropy, AdamW, global norm, the bias update, FP8 GEMMs) runs in the C core; this
module orchestrates them from Python (the residual adds, the MTP concat and the gradient
sums are NumPy). Moving the whole training step into C (``dsc_model``: one parameter
arena, activation memory planned once per shape, CUDA) is a later session's work of
issue 6; the cached and speculative generation is issue 7's. CPU / float32 only for now.

Conventions (DEEPSEEK_V3.md):

* Block (0.3): h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h)); FFN is the dense SwiGLU MLP for
  layers < first_k_dense_replace (or not a multiple of moe_layer_freq), else DeepSeekMoE.
* MTP (4.1-4.3), depth d = 1..D stored as layer ``num_hidden_layers + d - 1``:
  h' = eh_proj([enorm(Emb(t_{i+d})) ; hnorm(h^{d-1}_i)]) (embedding first, as vLLM/SGLang),
  then one full decoder block over positions 0..T-d-1, then ``shared_head.norm`` and the
  shared ``lm_head``. h^0 is the main model's output after ``model.norm`` (the convention
  of the inference engines), h^d the depth-d output after its ``shared_head.norm``. The
  embedding and the head are shared (the checkpoint duplicates
  ``model.layers.{N}.embed_tokens`` / ``shared_head.head`` are accepted on load and not
  written). Depth-d targets are the main targets shifted by d (so answer-only masking
  carries over); L^d is the mean over its valid tokens; loss = L_main + lambda/D * sum L^d.
* Init (7.1): every matrix ~ N(0, initializer_range), norms 1, correction bias 0.
* Optimizer (7.2): AdamW beta1 0.9, beta2 0.95, eps 1e-8, global-norm clipping 1.0; weight
  decay 0.1 on matrices only (every 2-D/3-D weight, the embedding and head included),
  none on norm weights; the correction bias is not a trained parameter: after each step
  it moves by gamma * sign(mean load - load) (1.2).
* FP8 (``fp8=True``): the dense-MLP linears run as real FP8 GEMMs
  (dsc.fp8_linear_forward/backward: 1x128 activation tiles, 128x128 weight blocks, E4M3);
  the projections inside the fused MLA op and the expert weights inside the MoE op see
  their weights round-tripped through E4M3 128x128 blocks (weight-only FP8 simulation, the
  gradient passes straight through to the float32 master). Embedding, head, router, norms,
  eh_proj and the attention core stay float32.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .config import ModelConfig
from .moe import MoEConfig, moe_forward, moe_backward, moe_update_bias, moe_load_stats
from .mla import mla_forward, mla_backward
from .ops import (rms_norm_forward, rms_norm_backward, linear, linear_forward, linear_backward,
                  swiglu_forward, swiglu_backward, embedding_forward, embedding_backward,
                  cross_entropy, global_norm, adamw_step)
from .fp8 import fp8_linear_forward, fp8_linear_backward, fp8_quantize, fp8_dequantize, fp8_weight_dequant

__all__ = ["Model", "lr_schedule"]

IGNORE_INDEX = -100
_PROJ = ("gate_proj", "up_proj", "down_proj")
_MTP_DUPLICATES = ("embed_tokens.weight", "shared_head.head.weight")


def lr_schedule(step: int, max_lr: float, warmup: int, total: int, min_lr: Optional[float] = None) -> float:
    """Linear warmup 0 -> max_lr over `warmup` steps, then cosine decay to min_lr
    (default max_lr / 10, as V3's 2.2e-4 -> 2.2e-5) at step `total`; min_lr after.
    `step` is 1-based (the step about to be taken)."""
    min_lr = max_lr * 0.1 if min_lr is None else min_lr
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def _c(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _fake_fp8(w: np.ndarray) -> np.ndarray:
    """w through E4M3 with 128x128 block scales and back (per expert for stacked weights)."""
    if w.ndim == 3:
        return np.stack([_fake_fp8(w[e]) for e in range(w.shape[0])])
    q, s = fp8_quantize(w, (128, 128))
    return fp8_dequantize(q, s, (128, 128), "float32")


class Model:
    """DeepSeek-V3-style causal LM: float32 master parameters keyed by Hugging Face names.

    Model(cfg, device="cpu", dtype="float32", fp8=False, seed=0). See the module docstring
    for the conventions; ``parameters()`` gives {hf_name: array} (expert weights are views
    of one stacked [E, ., .] array per layer and projection; updates are in place)."""

    def __init__(self, cfg: ModelConfig, device: str = "cpu", dtype: str = "float32", fp8: bool = False,
                 seed: int = 0, _init: bool = True) -> None:
        if isinstance(cfg, Mapping):
            cfg = ModelConfig(**cfg)
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"Model: cfg: expected a deepseek_c.ModelConfig, got {type(cfg).__name__}")
        if str(device) != "cpu":
            raise ValueError(f"Model: device: expected 'cpu' (the CUDA training step is a later part of "
                             f"issue 6), got {device!r}")
        if str(dtype) != "float32":
            raise ValueError(f"Model: dtype: expected 'float32' (float32 master weights and activations), "
                             f"got {dtype!r}")
        self.cfg = cfg
        self.device, self.dtype, self.fp8 = "cpu", "float32", bool(fp8)
        self.seed = int(seed)
        self._moe_cfg = MoEConfig.from_dict(cfg.to_dict()) if cfg.n_routed_experts else None
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_mtp = int(cfg.num_nextn_predict_layers or 0)
        self._shapes = self._storage_shapes()
        self._store: dict[str, np.ndarray] = {}
        if _init:
            rng = np.random.default_rng(self.seed)
            std = float(cfg.initializer_range)
            for name, shape in self._shapes.items():
                if name.endswith("e_score_correction_bias"):
                    self._store[name] = np.zeros(shape, np.float32)
                elif len(shape) == 1:
                    self._store[name] = np.ones(shape, np.float32)
                else:
                    self._store[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        self.step = 0
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}
        self._build_views()

    # ------------------------------------------------------------------ structure

    def is_moe_layer(self, i: int) -> bool:
        c = self.cfg
        return bool(c.n_routed_experts) and i >= c.first_k_dense_replace and i % c.moe_layer_freq == 0

    def _block_shapes(self, i: int) -> dict[str, tuple]:
        c = self.cfg
        D = c.hidden_size
        p = f"model.layers.{i}."
        s: dict[str, tuple] = {p + "input_layernorm.weight": (D,)}
        for n, shp in c.mla_weight_shapes().items():
            s[p + "self_attn." + n] = tuple(shp)
        s[p + "post_attention_layernorm.weight"] = (D,)
        if self.is_moe_layer(i):
            E, F = c.n_routed_experts, c.moe_intermediate_size
            s[p + "mlp.gate.weight"] = (E, D)
            if c.topk_method == "noaux_tc":
                s[p + "mlp.gate.e_score_correction_bias"] = (E,)
            s[p + "mlp.experts.gate_proj.weight"] = (E, F, D)  # stacked storage; HF names are views
            s[p + "mlp.experts.up_proj.weight"] = (E, F, D)
            s[p + "mlp.experts.down_proj.weight"] = (E, D, F)
            if c.n_shared_experts:
                Fs = F * c.n_shared_experts
                s[p + "mlp.shared_experts.gate_proj.weight"] = (Fs, D)
                s[p + "mlp.shared_experts.up_proj.weight"] = (Fs, D)
                s[p + "mlp.shared_experts.down_proj.weight"] = (D, Fs)
        else:
            I = c.intermediate_size
            s[p + "mlp.gate_proj.weight"] = (I, D)
            s[p + "mlp.up_proj.weight"] = (I, D)
            s[p + "mlp.down_proj.weight"] = (D, I)
        return s

    def _storage_shapes(self) -> dict[str, tuple]:
        c = self.cfg
        D, V = c.hidden_size, c.vocab_size
        s: dict[str, tuple] = {"model.embed_tokens.weight": (V, D)}
        for i in range(self.n_layers):
            s.update(self._block_shapes(i))
        s["model.norm.weight"] = (D,)
        if not c.tie_word_embeddings:
            s["lm_head.weight"] = (V, D)
        for d in range(self.n_mtp):
            i = self.n_layers + d
            p = f"model.layers.{i}."
            s[p + "enorm.weight"] = (D,)
            s[p + "hnorm.weight"] = (D,)
            s[p + "eh_proj.weight"] = (D, 2 * D)
            s.update(self._block_shapes(i))
            s[p + "shared_head.norm.weight"] = (D,)
        return s

    def _build_views(self) -> None:
        """HF-named views, and per-layer sub-dicts for the MLA / MoE ops."""
        self._params: dict[str, np.ndarray] = {}
        E = self.cfg.n_routed_experts
        for name, arr in self._store.items():
            if ".mlp.experts." in name:
                pre, proj = name.split(".mlp.experts.")
                proj = proj[: -len(".weight")]
                for e in range(E):
                    self._params[f"{pre}.mlp.experts.{e}.{proj}.weight"] = arr[e]
            else:
                self._params[name] = arr
        self._attn: dict[int, dict] = {}
        self._mlp: dict[int, dict] = {}
        for i in range(self.n_layers + self.n_mtp):
            pa = f"model.layers.{i}.self_attn."
            self._attn[i] = {k[len(pa):]: v for k, v in self._store.items() if k.startswith(pa)}
            pm = f"model.layers.{i}."
            self._mlp[i] = {k[len(pm):]: v for k, v in self._store.items() if k.startswith(pm + "mlp.")}

    @property
    def head_name(self) -> str:
        return "model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"

    def parameters(self) -> dict[str, np.ndarray]:
        """{Hugging Face name: float32 array} (views of the master weights; no MTP duplicates)."""
        return dict(self._params)

    def num_parameters(self) -> int:
        return int(sum(a.size for a in self._store.values()))

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Model({self.num_parameters() / 1e6:.2f}M params: {c.num_hidden_layers} layers "
                f"({c.first_k_dense_replace} dense), hidden {c.hidden_size}, {c.n_routed_experts} experts "
                f"top-{c.num_experts_per_tok} + {c.n_shared_experts} shared, MTP {self.n_mtp}, fp8={self.fp8})")

    # ------------------------------------------------------------------ checks

    def _check_tokens(self, tokens: Any, what: str = "tokens") -> np.ndarray:
        t = np.asarray(tokens)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.shape[1] < 1 or t.shape[0] < 1:
            raise ValueError(f"Model: {what}: expected a [batch, seq] integer array, got shape {t.shape}")
        if t.dtype.kind not in "iu":
            raise ValueError(f"Model: {what}: expected integer token ids, got dtype {t.dtype}")
        V = self.cfg.vocab_size
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"Model: {what}: expected ids in [0, {V}) (vocab_size), got values in [{lo}, {hi}]")
        if t.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"Model: {what}: expected at most max_position_embeddings = "
                             f"{self.cfg.max_position_embeddings} tokens per row, got {t.shape[1]}")
        return np.ascontiguousarray(t, dtype=np.int32)

    def _check_targets(self, targets: Any, shape: tuple, ignore_index: int) -> np.ndarray:
        y = np.asarray(targets)
        if y.ndim == 1 and len(shape) == 2 and shape[0] == 1:
            y = y[None, :]
        if y.shape != shape:
            raise ValueError(f"Model: targets: expected shape {shape} (the shape of tokens), got {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"Model: targets: expected integer ids, got dtype {y.dtype}")
        bad = (y != ignore_index) & ((y < 0) | (y >= self.cfg.vocab_size))
        if bad.any():
            v = int(y[bad][0])
            raise ValueError(f"Model: targets: expected ids in [0, {self.cfg.vocab_size}) or ignore_index "
                             f"{ignore_index}, got {v}")
        return np.ascontiguousarray(y, dtype=np.int32)

    # ------------------------------------------------------------------ layers

    def _weights_for_step(self) -> tuple[dict, dict]:
        """Per-layer attention / MLP weight dicts, FP8 round-tripped when fp8=True."""
        if not self.fp8:
            return self._attn, self._mlp
        attn = {i: {k: (v if v.ndim == 1 else _fake_fp8(v)) for k, v in d.items()} for i, d in self._attn.items()}
        mlp = {}
        for i, d in self._mlp.items():
            mlp[i] = {k: (_fake_fp8(v) if "experts." in k else v) for k, v in d.items()}
        return attn, mlp

    def _dense_mlp_fwd(self, x: np.ndarray, i: int, train: bool):
        pm = self._mlp[i]
        wg, wu, wd = pm["mlp.gate_proj.weight"], pm["mlp.up_proj.weight"], pm["mlp.down_proj.weight"]
        if self.fp8:
            g, cg = fp8_linear_forward(x, wg)
            u, cu = fp8_linear_forward(x, wu)
            a, ca = swiglu_forward(g, u)
            y, cd = fp8_linear_forward(a, wd)
        else:
            g, cg = linear_forward(x, wg)
            u, cu = linear_forward(x, wu)
            a, ca = swiglu_forward(g, u)
            y, cd = linear_forward(a, wd)
        return y, (cg, cu, ca, cd)

    def _dense_mlp_bwd(self, dy: np.ndarray, cache, i: int, grads: dict) -> np.ndarray:
        cg, cu, ca, cd = cache
        p = f"model.layers.{i}.mlp."
        bwd = (lambda d, c: fp8_linear_backward(d, c)) if self.fp8 else linear_backward
        da, dwd = bwd(dy, cd)
        dg, du = swiglu_backward(da, ca)
        dxg, dwg = bwd(dg, cg)
        dxu, dwu = bwd(du, cu)
        _acc(grads, p + "down_proj.weight", dwd)
        _acc(grads, p + "gate_proj.weight", dwg)
        _acc(grads, p + "up_proj.weight", dwu)
        return dxg + dxu

    def _block_fwd(self, h: np.ndarray, i: int, W: tuple, train: bool, aux_alpha: float):
        attn_w, mlp_w = W
        p = f"model.layers.{i}."
        eps = self.cfg.rms_norm_eps
        a, cn1 = rms_norm_forward(h, self._store[p + "input_layernorm.weight"], eps)
        o, catt = mla_forward(a, attn_w[i], self.cfg, need_backward=train)
        h1 = h + o
        b, cn2 = rms_norm_forward(h1, self._store[p + "post_attention_layernorm.weight"], eps)
        if self.is_moe_layer(i):
            m, cm = moe_forward(b, mlp_w[i], self._moe_cfg, seq_len=int(h.shape[1]),
                                aux_alpha=float(aux_alpha) if train else 0.0)
        else:
            m, cm = self._dense_mlp_fwd(b, i, train)
        return h1 + m, (cn1, catt, cn2, cm)

    def _block_bwd(self, dh2: np.ndarray, cache, i: int, grads: dict) -> np.ndarray:
        cn1, catt, cn2, cm = cache
        p = f"model.layers.{i}."
        if self.is_moe_layer(i):
            g = moe_backward(dh2, cm)
            db = g.pop("x")
            stacked: dict[str, list] = {}
            for k, v in g.items():
                if k.startswith("mlp.experts."):
                    e, proj = k[len("mlp.experts."):].split(".", 1)
                    stacked.setdefault(proj, []).append((int(e), v))
                else:
                    _acc(grads, p + k, v)
            for proj, lst in stacked.items():
                lst.sort(key=lambda t: t[0])
                base = lst[0][1].base
                arr = base if (isinstance(base, np.ndarray) and base.shape == (len(lst),) + lst[0][1].shape
                               and base.dtype == np.float32) else np.stack([v for _, v in lst])
                _acc(grads, p + "mlp.experts." + proj, np.ascontiguousarray(arr))
        else:
            db = self._dense_mlp_bwd(dh2, cm, i, grads)
        dh1n, dw2 = rms_norm_backward(db, cn2)
        _acc(grads, p + "post_attention_layernorm.weight", dw2)
        dh1 = dh2 + dh1n
        ga = mla_backward(dh1, catt)
        da = ga.pop("x")
        for k, v in ga.items():
            _acc(grads, p + "self_attn." + k, v)
        dhn, dw1 = rms_norm_backward(da, cn1)
        _acc(grads, p + "input_layernorm.weight", dw1)
        return dh1 + dhn

    # ------------------------------------------------------------------ forward

    def _forward(self, tokens: np.ndarray, train: bool, aux_alpha: float = 0.0, with_mtp: bool = False):
        W = self._weights_for_step()
        eps = self.cfg.rms_norm_eps
        emb = self._store["model.embed_tokens.weight"]
        head = self._store[self.head_name]
        h, cemb = embedding_forward(tokens, emb)
        caches = []
        moe_ctx = {}
        for i in range(self.n_layers):
            h, cache = self._block_fwd(h, i, W, train, aux_alpha)
            caches.append(cache)
            if self.is_moe_layer(i):
                moe_ctx[i] = cache[3]
        hn, cfin = rms_norm_forward(h, self._store["model.norm.weight"], eps)
        logits = linear(hn, head)
        st = dict(W=W, cemb=cemb, caches=caches, cfin=cfin, hn=hn, moe=moe_ctx, mtp=[])
        if with_mtp:
            T = tokens.shape[1]
            prev = hn
            for d in range(1, self.n_mtp + 1):
                if T - d < 1:
                    break
                i = self.n_layers + d - 1
                p = f"model.layers.{i}."
                tk = np.ascontiguousarray(tokens[:, d:])
                e, ce = embedding_forward(tk, emb)
                en, cen = rms_norm_forward(e, self._store[p + "enorm.weight"], eps)
                hp = np.ascontiguousarray(prev[:, : T - d])
                hh, chn = rms_norm_forward(hp, self._store[p + "hnorm.weight"], eps)
                cat = np.concatenate([en, hh], axis=-1)
                x, ceh = linear_forward(cat, self._store[p + "eh_proj.weight"])
                x, cblk = self._block_fwd(x, i, W, train, aux_alpha)
                xn, csh = rms_norm_forward(x, self._store[p + "shared_head.norm.weight"], eps)
                lg = linear(xn, head)
                if self.is_moe_layer(i):
                    moe_ctx[i] = cblk[3]
                st["mtp"].append(dict(d=d, i=i, ce=ce, cen=cen, chn=chn, ceh=ceh, cblk=cblk, csh=csh,
                                      xn=xn, logits=lg))
                prev = xn
        return logits, st

    def forward(self, tokens: Any) -> np.ndarray:
        """Logits [B, T, vocab] float32 of the main model for tokens [B, T] (or [T]) int."""
        t = self._check_tokens(tokens)
        logits, _ = self._forward(t, train=False)
        return logits

    __call__ = forward

    def forward_mtp(self, tokens: Any) -> list[np.ndarray]:
        """The MTP heads' logits: depth d gives [B, T-d, vocab], predicting token i+d+1 at i."""
        t = self._check_tokens(tokens)
        _, st = self._forward(t, train=False, with_mtp=True)
        return [m["logits"] for m in st["mtp"]]

    def routing(self, tokens: Any) -> dict[int, dict[str, np.ndarray]]:
        """Which experts each token goes to: {layer: {"indices": [B, T, k], "weights": [B, T, k],
        "scores": [B, T, E]}} for every MoE layer of the main model."""
        t = self._check_tokens(tokens)
        _, st = self._forward(t, train=False)
        B, T = t.shape
        return {i: {"indices": np.asarray(c.route.indices).reshape(B, T, -1),
                    "weights": np.asarray(c.route.weights).reshape(B, T, -1),
                    "scores": np.asarray(c.route.scores).reshape(B, T, -1)} for i, c in st["moe"].items()}

    # ------------------------------------------------------------------ loss and gradients

    def loss_and_grads(self, tokens: Any, targets: Any, *, mtp_lambda: Optional[float] = None,
                       aux_alpha: float = 0.0, ignore_index: int = IGNORE_INDEX, scale: float = 1.0,
                       grads: Optional[dict] = None) -> tuple[dict, dict]:
        """Forward + backward of one (micro-)batch. Returns (stats, grads) with grads keyed by
        storage name (experts stacked: model.layers.{i}.mlp.experts.{proj}.weight), scaled by
        `scale` and added into `grads` when given."""
        t = self._check_tokens(tokens)
        y = self._check_targets(targets, t.shape, ignore_index)
        lam = self._lambda(mtp_lambda)
        B, T = t.shape
        logits, st = self._forward(t, train=True, aux_alpha=aux_alpha * scale, with_mtp=self.n_mtp > 0 and lam > 0)
        V = self.cfg.vocab_size
        loss, dlogits = cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=ignore_index,
                                      grad_scale=scale)
        grads = {} if grads is None else grads
        head = self._store[self.head_name]
        eps = self.cfg.rms_norm_eps
        dhn = None
        mtp_losses = []
        D = max(1, self.n_mtp)
        dprev = None
        for m in reversed(st["mtp"]):
            d, i = m["d"], m["i"]
            p = f"model.layers.{i}."
            yt = np.ascontiguousarray(y[:, d:]).reshape(-1)
            lk, dlk = cross_entropy(m["logits"].reshape(-1, V), yt, ignore_index=ignore_index,
                                    grad_scale=scale * lam / D)
            mtp_losses.append(float(lk))
            dlk = dlk.reshape(B, T - d, V)
            dxn = linear_backward(dlk, _lin_ctx(m["xn"], head))
            _acc(grads, self.head_name, dxn[1])
            dxn = dxn[0] if dprev is None else dxn[0] + dprev
            dx, dwsh = rms_norm_backward(dxn, m["csh"])
            _acc(grads, p + "shared_head.norm.weight", dwsh)
            dx = self._block_bwd(dx, m["cblk"], i, grads)
            dcat, dweh = linear_backward(dx, m["ceh"])
            _acc(grads, p + "eh_proj.weight", dweh)
            Dm = self.cfg.hidden_size
            den, dhh = np.ascontiguousarray(dcat[..., :Dm]), np.ascontiguousarray(dcat[..., Dm:])
            de, dwen = rms_norm_backward(den, m["cen"])
            _acc(grads, p + "enorm.weight", dwen)
            _acc(grads, "model.embed_tokens.weight", embedding_backward(de, m["ce"]))
            dhp, dwhn = rms_norm_backward(dhh, m["chn"])
            _acc(grads, p + "hnorm.weight", dwhn)
            full = np.zeros((B, T - d + 1, Dm), np.float32)  # d/d(prev) over prev's T-d+1 positions
            full[:, : T - d] = dhp
            dprev = full
        dl3 = dlogits.reshape(B, T, V)
        dhn_, dhead = linear_backward(dl3, _lin_ctx(st["hn"], head))
        _acc(grads, self.head_name, dhead)
        dhn = dhn_ if dprev is None else dhn_ + dprev
        dh, dwn = rms_norm_backward(dhn, st["cfin"])
        _acc(grads, "model.norm.weight", dwn)
        for i in reversed(range(self.n_layers)):
            dh = self._block_bwd(dh, st["caches"][i], i, grads)
        _acc(grads, "model.embed_tokens.weight", embedding_backward(dh, st["cemb"]))
        loads = {i: np.asarray(c.load).astype(np.int64) for i, c in st["moe"].items()}
        aux = sum(float(c.aux_loss) for c in st["moe"].values() if c.aux_loss is not None) / scale \
            if aux_alpha else 0.0
        mtp_loss = float(np.mean(mtp_losses)) if mtp_losses else 0.0
        stats = dict(loss=float(loss), mtp_loss=mtp_loss, aux_loss=aux, expert_load=loads,
                     tokens=int(B * T), valid_tokens=int((y != ignore_index).sum()))
        return stats, grads

    def _lambda(self, mtp_lambda: Optional[float]) -> float:
        if mtp_lambda is not None:
            return float(mtp_lambda)
        return float(self.cfg.extra.get("mtp_lambda", 0.3))

    # ------------------------------------------------------------------ optimizer

    def _decay(self, name: str) -> bool:
        return self._store[name].ndim >= 2

    def trainable_names(self) -> list[str]:
        return [n for n in self._store if not n.endswith("e_score_correction_bias")]

    def train_step(self, tokens: Any, targets: Any, lr: Union[float, Callable[[int], float]] = 1e-3, *,
                   grad_accum: int = 1, mtp_lambda: Optional[float] = None, aux_alpha: float = 0.0,
                   bias_update_rate: float = 1e-3, max_grad_norm: float = 1.0, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                   ignore_index: int = IGNORE_INDEX) -> dict:
        """One optimizer step: forward, backward (split into `grad_accum` micro-batches along
        the batch dim, gradients averaged), global-norm clipping, AdamW, bias update.

        lr: a number or a callable step -> lr (e.g. ``lambda s: dsc.lr_schedule(s, 1e-3, 100, 1000)``).
        mtp_lambda: MTP loss weight (default cfg.extra['mtp_lambda'] or 0.3). aux_alpha: the
        sequence-wise balance loss weight (0 = off; V3 used 1e-4). bias_update_rate: gamma.
        Returns dict(loss, mtp_loss, aux_loss, grad_norm, lr, step, expert_load {layer: counts},
        load_imbalance (mean over MoE layers of max/mean load), load_imbalance_per_layer, tokens_per_s).
        """
        t0 = time.perf_counter()
        tok = self._check_tokens(tokens)
        y = self._check_targets(targets, tok.shape, ignore_index)
        B = tok.shape[0]
        if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1 or B % grad_accum:
            raise ValueError(f"Model.train_step: grad_accum: expected a divisor of the batch size {B}, "
                             f"got {grad_accum!r}")
        mb = B // grad_accum
        grads: dict[str, np.ndarray] = {}
        losses, mtps, auxs = [], [], []
        loads: dict[int, np.ndarray] = {}
        for k in range(grad_accum):
            s, grads = self.loss_and_grads(tok[k * mb:(k + 1) * mb], y[k * mb:(k + 1) * mb], mtp_lambda=mtp_lambda,
                                           aux_alpha=aux_alpha, ignore_index=ignore_index,
                                           scale=1.0 / grad_accum, grads=grads)
            losses.append(s["loss"]); mtps.append(s["mtp_loss"]); auxs.append(s["aux_loss"])
            for i, c in s["expert_load"].items():
                loads[i] = loads[i] + c if i in loads else c
        self.step += 1
        lr_v = float(lr(self.step)) if callable(lr) else float(lr)
        names = self.trainable_names()
        for n in names:  # parameters that got no gradient (e.g. MTP with lambda 0)
            if n not in grads:
                grads[n] = np.zeros_like(self._store[n])
        gl = [grads[n] for n in names]
        gn = float(global_norm(gl))
        if max_grad_norm and gn > max_grad_norm:
            coef = np.float32(max_grad_norm / (gn + 1e-6))
            for g in gl:
                g *= coef
        for n in names:
            if n not in self._m:
                self._m[n] = np.zeros_like(self._store[n])
                self._v[n] = np.zeros_like(self._store[n])
        for decay in (True, False):
            group = [n for n in names if self._decay(n) == decay]
            if group:
                adamw_step([self._store[n] for n in group], [grads[n] for n in group],
                           [self._m[n] for n in group], [self._v[n] for n in group], lr=lr_v, step=self.step,
                           beta1=betas[0], beta2=betas[1], eps=eps,
                           weight_decay=weight_decay if decay else 0.0, max_grad_norm=0.0)
        if bias_update_rate and self.cfg.topk_method == "noaux_tc":
            for i, c in loads.items():
                moe_update_bias(self._store[f"model.layers.{i}.mlp.gate.e_score_correction_bias"], c,
                                float(bias_update_rate))
        imb = {i: moe_load_stats(c)["max_over_mean"] for i, c in loads.items()}
        dt = time.perf_counter() - t0
        return dict(loss=float(np.mean(losses)), mtp_loss=float(np.mean(mtps)), aux_loss=float(np.mean(auxs)),
                    grad_norm=gn, lr=lr_v, step=self.step, expert_load=loads,
                    load_imbalance=float(np.mean(list(imb.values()))) if imb else 1.0,
                    load_imbalance_per_layer=imb, tokens_per_s=tok.size / dt)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Any, max_new_tokens: int = 16, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0,
                 eos_token_id: Optional[int] = None) -> list[list[int]]:
        """New tokens for each prompt (a list of id lists, or a [B, T] array), by full
        re-forward (prompts of equal length are batched). Stops a sequence at eos
        (cfg.eos_token_id unless given; the eos is included) or after max_new_tokens.
        temperature 0 = greedy; otherwise softmax(logits / temperature) restricted to the
        top_k tokens and the top_p nucleus, sampled with a seeded NumPy RNG."""
        if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
            plist = [list(r) for r in prompts]
        else:
            plist = [list(p) for p in prompts]
        if not plist:
            raise ValueError("Model.generate: prompts: expected at least one prompt, got none")
        for j, p in enumerate(plist):
            if len(p) == 0:
                raise ValueError(f"Model.generate: prompts[{j}]: expected at least one token, got an empty prompt")
            self._check_tokens(np.asarray(p, np.int64)[None], f"prompts[{j}]")
        if max_new_tokens < 0:
            raise ValueError(f"Model.generate: max_new_tokens: expected >= 0, got {max_new_tokens}")
        eos = self.cfg.eos_token_id if eos_token_id is None else eos_token_id
        eos_set = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        rng = np.random.default_rng(seed)
        out: list[list[int]] = [[] for _ in plist]
        groups: dict[int, list[int]] = {}
        for j, p in enumerate(plist):
            groups.setdefault(len(p), []).append(j)
        for L, idx in sorted(groups.items()):
            seqs = np.array([plist[j] for j in idx], np.int32)
            alive = np.ones(len(idx), bool)
            for _ in range(max_new_tokens):
                if seqs.shape[1] >= self.cfg.max_position_embeddings:
                    break
                act = np.nonzero(alive)[0]
                logits = self._forward(np.ascontiguousarray(seqs[act]), train=False)[0][:, -1, :]
                nxt = np.zeros(len(idx), np.int32)
                nxt[act] = self._sample(logits, temperature, top_k, top_p, rng)
                seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
                for a in act:
                    out[idx[a]].append(int(nxt[a]))
                    if int(nxt[a]) in eos_set:
                        alive[a] = False
                if not alive.any():
                    break
        return out

    @staticmethod
    def _sample(logits: np.ndarray, temperature: float, top_k, top_p, rng) -> np.ndarray:
        if not temperature or temperature <= 0:
            return np.argmax(logits, axis=-1).astype(np.int32)
        z = logits.astype(np.float64) / float(temperature)
        if top_k:
            kth = np.sort(z, axis=-1)[:, -int(top_k)][:, None]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if top_p is not None and top_p < 1.0:
            order = np.argsort(-p, axis=-1)
            ps = np.take_along_axis(p, order, -1)
            keep = np.cumsum(ps, -1) - ps < float(top_p)
            mask = np.zeros_like(p, bool)
            np.put_along_axis(mask, order, keep, -1)
            p = np.where(mask, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        return np.array([rng.choice(p.shape[1], p=row) for row in p], np.int32)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF-named float32 tensors as written to model.safetensors (experts per expert)."""
        return {k: np.ascontiguousarray(v) for k, v in self._params.items()}

    def save(self, path: str | os.PathLike, optimizer: bool = True) -> None:
        """config.json + model.safetensors (+ optimizer.safetensors: step and AdamW moments),
        each written atomically (temp file + rename)."""
        from .checkpoint import save_safetensors

        d = os.fspath(path)
        os.makedirs(d, exist_ok=True)
        cfgd = self.cfg.to_dict()
        cfgd["torch_dtype"] = "float32"
        tmp = os.path.join(d, ".config.json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(cfgd, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, os.path.join(d, "config.json"))
        save_safetensors(os.path.join(d, "model.safetensors"), self.state_dict(), metadata={"format": "pt"})
        if optimizer and self.step > 0:
            t: dict[str, np.ndarray] = {"step": np.array(self.step, np.int64)}
            for n in self._m:
                t["exp_avg." + n] = self._m[n]
                t["exp_avg_sq." + n] = self._v[n]
            save_safetensors(os.path.join(d, "optimizer.safetensors"), t,
                             metadata={"format": "deepseek_c.adamw", "step": str(self.step)})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", fp8: bool = False,
                        config: Optional[ModelConfig] = None, load_optimizer: bool = True) -> "Model":
        """Load config.json + *.safetensors from a directory (Hugging Face layout, one or
        many shards). bfloat16 weights are widened; DeepSeek FP8 weights (E4M3 `weight`
        + `weight_scale_inv`) are dequantized with dsc.fp8_weight_dequant. Missing or
        unexpected tensors, wrong shapes, or a config that does not match raise ValueError
        naming them. optimizer.safetensors, when present, restores the step and moments."""
        from .checkpoint import load_safetensors

        d = os.fspath(path)
        if not os.path.isdir(d):
            raise ValueError(f"Model.from_pretrained: path: expected a directory with config.json and "
                             f"*.safetensors, got {d!r}")
        if config is None:
            cj = os.path.join(d, "config.json")
            if not os.path.exists(cj):
                raise ValueError(f"Model.from_pretrained: {cj}: missing config.json")
            try:
                config = ModelConfig.from_json(cj)
            except json.JSONDecodeError as e:
                raise ValueError(f"Model.from_pretrained: {cj}: not valid JSON ({e})") from None
        model = cls(config, device=device, fp8=fp8, _init=False)
        files = sorted(f for f in glob.glob(os.path.join(d, "*.safetensors"))
                       if os.path.basename(f) != "optimizer.safetensors")
        if not files:
            raise ValueError(f"Model.from_pretrained: {d}: no *.safetensors weight files")
        raw: dict[str, np.ndarray] = {}
        where: dict[str, str] = {}
        for f in files:
            for k, v in load_safetensors(f).items():
                raw[k] = v
                where[k] = f
        model._load_hf(raw, where)
        opt = os.path.join(d, "optimizer.safetensors")
        if load_optimizer and os.path.exists(opt):
            model._load_optimizer(load_safetensors(opt), opt)
        return model

    def _load_hf(self, raw: Mapping[str, np.ndarray], where: Mapping[str, str]) -> None:
        want = {}
        for name, shape in self._shapes.items():
            if ".mlp.experts." in name:
                pre, proj = name.split(".mlp.experts.")
                proj = proj[: -len(".weight")]
                for e in range(self.cfg.n_routed_experts):
                    want[f"{pre}.mlp.experts.{e}.{proj}.weight"] = tuple(shape[1:])
            else:
                want[name] = tuple(shape)
        scales = {k for k in raw if k.endswith(".weight_scale_inv")}
        dup = {f"model.layers.{self.n_layers + d}.{s}" for d in range(self.n_mtp) for s in _MTP_DUPLICATES}
        extra = sorted(k for k in raw if k not in want and k not in scales and k not in dup)
        missing = sorted(k for k in want if k not in raw)
        if missing:
            raise ValueError(f"Model.from_pretrained: checkpoint: missing {len(missing)} tensor(s) the config "
                             f"needs, e.g. {missing[:5]}")
        if extra:
            raise ValueError(f"Model.from_pretrained: checkpoint: {len(extra)} unexpected tensor(s) for this "
                             f"config, e.g. {extra[:5]}")
        vals: dict[str, np.ndarray] = {}
        for k, shape in want.items():
            v = raw[k]
            if tuple(v.shape) != shape:
                raise ValueError(f"Model.from_pretrained: {k} ({where[k]}): expected shape {shape} from "
                                 f"config.json, got {tuple(v.shape)}")
            dt = str(v.dtype)
            if dt.startswith("float8"):
                si = k[: -len("weight")] + "weight_scale_inv"
                if si not in raw:
                    raise ValueError(f"Model.from_pretrained: {k}: an FP8 weight without its {si}")
                v = np.asarray(fp8_weight_dequant(v, raw[si], "float32"))
            elif dt != "float32":
                if dt not in ("bfloat16", "float16", "float64"):
                    raise ValueError(f"Model.from_pretrained: {k}: expected a float tensor, got dtype {dt}")
                v = v.astype(np.float32)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"Model.from_pretrained: {k} ({where[k]}): non-finite values")
            vals[k] = v
        store = {}
        for name, shape in self._shapes.items():
            if ".mlp.experts." in name:
                pre, proj = name.split(".mlp.experts.")
                proj = proj[: -len(".weight")]
                store[name] = np.ascontiguousarray(np.stack(
                    [vals[f"{pre}.mlp.experts.{e}.{proj}.weight"] for e in range(self.cfg.n_routed_experts)]),
                    dtype=np.float32)
            else:
                store[name] = np.array(vals[name], dtype=np.float32, copy=True, order="C")
        self._store = store
        self._build_views()

    def load_state_dict(self, tensors: Mapping[str, Any]) -> None:
        """Replace the weights from an HF-named mapping (same checks as from_pretrained)."""
        self._load_hf({k: np.asarray(v) for k, v in tensors.items()}, {k: "state_dict" for k in tensors})

    def _load_optimizer(self, t: Mapping[str, np.ndarray], path: str) -> None:
        if "step" not in t:
            raise ValueError(f"Model.from_pretrained: {path}: missing the tensor 'step'")
        m, v = {}, {}
        for n in self.trainable_names():
            for pre, dst in (("exp_avg.", m), ("exp_avg_sq.", v)):
                k = pre + n
                if k not in t:
                    raise ValueError(f"Model.from_pretrained: {path}: missing {k!r}")
                if tuple(t[k].shape) != self._store[n].shape:
                    raise ValueError(f"Model.from_pretrained: {path}: {k}: expected shape "
                                     f"{self._store[n].shape}, got {tuple(t[k].shape)}")
                dst[n] = np.array(t[k], dtype=np.float32, copy=True, order="C")
        extra = sorted(set(t) - {"step"} - {p + n for n in self.trainable_names() for p in ("exp_avg.", "exp_avg_sq.")})
        if extra:
            raise ValueError(f"Model.from_pretrained: {path}: unexpected optimizer tensor(s) {extra[:5]}")
        self.step = int(np.asarray(t["step"]))
        self._m, self._v = m, v


def _lin_ctx(x, w):
    from .ops import LinearCtx

    return LinearCtx(x, w)


def _acc(grads: dict, name: str, g) -> None:
    if name in grads:
        grads[name] += g
    else:
        grads[name] = np.array(g, dtype=np.float32, copy=True, order="C")
