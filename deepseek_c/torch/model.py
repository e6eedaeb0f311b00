"""DeepseekV3ForCausalLM: the C model (deepseek_c.Model) as a torch.nn.Module.

    model = dst.DeepseekV3ForCausalLM(cfg)                     # or .from_pretrained("ckpt/")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(tokens, labels=tokens)                         # HF convention: labels shifted inside
    out.loss.backward(); opt.step(); model.update_bias(); opt.zero_grad()

Parameters are ``nn.Parameter``s that *view* the C model's float32 arena (zero-copy, Hugging
Face names: ``model.layers.3.mlp.experts.7.up_proj.weight``, experts one by one, MTP modules
as ``model.layers.{num_hidden_layers + d}.*``); the correction biases are buffers viewing it
too. A torch optimizer therefore updates the C model's weights in place, and
``state_dict()`` / ``load_state_dict()`` read and write them by name. The forward is
``dsc_model_forward_train`` (one C call for the whole network, MTP depths included), the
backward ``dsc_model_backward`` (one C call) from dL/dlogits computed by autograd -- any loss
PyTorch can differentiate works.

Gradients: the backward writes into the C model's gradient arena and hands autograd views
of it (no copy). When a parameter's ``.grad`` is None (the default ``zero_grad()``), autograd
adopts the view, so ``.grad`` *is* the arena. When ``.grad`` already is that view (gradient
accumulation over micro-batches, ``zero_grad(set_to_none=False)``), the C backward adds into
it and autograd receives zeros; when ``.grad`` is some other tensor, autograd adds the
view's values into it. Each works; the C arena is the cheap case. Caveats: the arena is
shared with ``deepseek_c.Model``'s own ``loss_and_grads`` / ``train_step`` (do not mix them
with a torch loop on one model); a ``.grad`` kept across the *next* backward from a copy made
with ``p.grad.clone()`` is yours, not the arena's.

The C model keeps the activations of its last training forward only: call backward before
the next forward (micro-batches: forward, backward, forward, backward, ...). A backward of an
older forward raises RuntimeError. Parameters cannot be moved or cast (``.to()``, ``.half()``,
``.cuda()``): build the model on its device (``device="cuda"``); dtype is float32 (FP8 GEMMs
with ``fp8=True``). The sequence-wise balance loss is not in the composable C API yet
(dsc_model_forward_train has none): use ``deepseek_c.Model.train_step(aux_alpha=...)`` for it.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.library import custom_op, register_autograd

import deepseek_c as _dsc
from deepseek_c import _C
from deepseek_c.model import IGNORE_INDEX

from . import _ops
from . import functional as F

__all__ = ["DeepseekV3ForCausalLM", "CausalLMOutput"]

_MODELS: dict[int, "weakref.ref[DeepseekV3ForCausalLM]"] = {}
_KEYS = itertools.count(1)


def _model(key: int, fn: str) -> "DeepseekV3ForCausalLM":
    ref = _MODELS.get(int(key))
    m = ref() if ref is not None else None
    if m is None:
        raise RuntimeError(f"{fn}: model: expected a live DeepseekV3ForCausalLM (key {key}), got none")
    return m


def _as_torch(view: Any) -> Tensor:
    """A torch tensor on the same memory as a C model view (NumPy on CPU, dsc.Tensor on CUDA)."""
    if isinstance(view, np.ndarray):
        return torch.from_numpy(view)
    return torch.from_dlpack(view)


class _Pending:
    """A training forward whose backward is due: the model's forward serial at the time."""

    def __init__(self, serial: int) -> None:
        self.serial = serial


# ----------------------------------------------------------------------------- the ops


@custom_op(f"{_ops.NS}::model_forward_train", mutates_args=())
def model_forward_train(key: int, tokens: Tensor, n_mtp: int, params: list[Tensor]) -> list[Tensor]:
    """[logits [B, T, V], mtp logits [B, T-d-1, V] for d < n_mtp, handle] of
    dsc_model_forward_train. params: the module's parameters (they are the C arena; passed so
    that autograd routes their gradients here)."""
    fn = "dsc_model_forward_train"
    m = _model(key, fn)
    m._check_views(params, fn)
    t = m._tokens(tokens, fn)
    B, T = int(t.shape[0]), int(t.shape[1])
    V = int(m.config.vocab_size)
    lg = torch.empty((B, T, V), dtype=torch.float32, device=m._device)
    mtp = [torch.empty((B, T - d - 1, V), dtype=torch.float32, device=m._device) for d in range(n_mtp)]
    m._serial += 1
    _C.model_forward_train(m.dsc_model._cap, t, lg, mtp)
    return [lg, *mtp, _ops.make_handle(_Pending(m._serial))]


@model_forward_train.register_fake
def _(key, tokens, n_mtp, params):
    m = _model(key, "dsc_model_forward_train")
    B, T, V = tokens.shape[0], tokens.shape[1], int(m.config.vocab_size)
    dev = torch.device(m._device)
    return ([torch.empty((B, T, V), dtype=torch.float32, device=dev)]
            + [torch.empty((B, T - d - 1, V), dtype=torch.float32, device=dev) for d in range(n_mtp)]
            + [_ops._handle_fake()])


@custom_op(f"{_ops.NS}::model_backward", mutates_args=())
def model_backward(key: int, handle: Tensor, dlogits: Tensor, dmtp: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """The gradient of every parameter (float32 views of the C gradient arena, or zeros for a
    parameter whose .grad already is that view and got the backward added in place)."""
    fn = "dsc_model_backward"
    m = _model(key, fn)
    pend = _ops.take_handle(handle, fn)
    if pend.serial != m._serial:
        raise RuntimeError(f"{fn}: model: expected the backward of the model's last training forward (the C model "
                           f"keeps the activations of one forward: run backward before the next forward), got the "
                           f"backward of an older forward")
    dl = _ops._in(dlogits)
    dm = [None if (g is None or g.numel() == 0) else _ops._in(g) for g in dmtp]
    views = m._grad_views
    own = [views is not None and p.grad is not None and p.grad.data_ptr() == v.data_ptr() and p.grad.is_contiguous()
           and p.grad.shape == v.shape for p, v in zip(m._plist, views or [None] * len(m._plist))]
    acc = any(own)
    if acc:  # the arena holds .grad of `own` parameters: add there, start the others from zero
        for o, v in zip(own, views):
            if not o:
                v.zero_()
    m.dsc_model.backward(dl, dm, accumulate=acc)
    m._note_load(acc)
    if views is None:
        views = m._make_grad_views()
    return [torch.zeros_like(v) if o else v.view(v.shape) for o, v in zip(own, views)]


@model_backward.register_fake
def _(key, handle, dlogits, dmtp, params):
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


def _fwd_setup(ctx, inputs, output):
    key, _tokens, n_mtp, params = inputs
    ctx.key, ctx.n_mtp, ctx.logits_shape = key, n_mtp, tuple(output[0].shape)
    ctx.save_for_backward(output[-1], *params)
    ctx.mark_non_differentiable(output[-1])


def _fwd_bwd(ctx, grads):
    handle, *params = ctx.saved_tensors
    dl = grads[0]
    if dl is None:  # only MTP logits reached the loss
        dl = params[0].new_zeros(ctx.logits_shape)
    dmtp = [g if g is not None else dl.new_empty((0,)) for g in grads[1:1 + ctx.n_mtp]]
    g = model_backward(ctx.key, handle, dl, dmtp, params)
    return None, None, None, list(g)


register_autograd(f"{_ops.NS}::model_forward_train", _fwd_bwd, setup_context=_fwd_setup)


@custom_op(f"{_ops.NS}::model_logits", mutates_args=())
def model_logits(key: int, tokens: Tensor, depth: int) -> Tensor:
    """Inference logits (dsc_model_forward; depth >= 0: MTP depth `depth`, [B, T-depth-1, V])."""
    fn = "dsc_model_forward"
    m = _model(key, fn)
    t = m._tokens(tokens, fn)
    B, T, V = int(t.shape[0]), int(t.shape[1]), int(m.config.vocab_size)
    out = torch.empty((B, T - depth - 1 if depth >= 0 else T, V), dtype=torch.float32, device=m._device)
    m._serial += 1  # it may reuse the training activations
    _C.model_forward(m.dsc_model._cap, t, out, int(depth))
    return out


@model_logits.register_fake
def _(key, tokens, depth):
    m = _model(key, "dsc_model_forward")
    B, T = tokens.shape[0], tokens.shape[1]
    return torch.empty((B, T - depth - 1 if depth >= 0 else T, int(m.config.vocab_size)), dtype=torch.float32,
                       device=torch.device(m._device))


for _dev in ("cpu", "cuda"):
    torch.library.register_autocast(f"{_ops.NS}::model_forward_train", _dev, torch.float32)


# ----------------------------------------------------------------------------- the module


class CausalLMOutput(NamedTuple):
    """loss: main + mtp_lambda / D * sum of the MTP depths' losses (None without labels);
    logits [B, T, V] float32; mtp_logits: per MTP depth d, [B, T-d-1, V] (predicting token
    i+d+2 at i; empty outside training); main_loss, mtp_loss: the parts (mtp_loss: mean over
    the depths run)."""

    loss: Optional[Tensor]
    logits: Tensor
    mtp_logits: list
    main_loss: Optional[Tensor]
    mtp_loss: Optional[Tensor]


class _Node(nn.Module):
    """A container of the parameter tree (``model.layers[3].mlp``): children by name, and by
    index for the numbered ones."""

    def __getitem__(self, i: int) -> nn.Module:
        return self._modules[str(int(i))]

    def __len__(self) -> int:
        return len(self._modules)


class DeepseekV3ForCausalLM(nn.Module):
    """A DeepSeek-V3-architecture causal LM (MLA, DeepSeekMoE, MTP; optional FP8 GEMMs) run by
    the C core, as an nn.Module with Hugging Face parameter names (see the module docstring).

    DeepseekV3ForCausalLM(cfg, device="cpu", fp8=False, seed=0, num_threads=None) builds a
    new C model (V3 init from seed); a deepseek_c.Model in place of cfg (or ``model=``) is
    wrapped as it is;
    ``from_pretrained(path)`` loads a checkpoint directory (HF layout, DeepSeek FP8 included).
    mtp_lambda: the MTP loss weight (default the config's, else 0.3, as Model.train_step);
    bias_update_rate: gamma of update_bias."""

    _dsc_balances_experts = True

    def __init__(self, cfg: Any = None, *, device: str = "cpu", fp8: bool = False, seed: int = 0,
                 num_threads: Optional[int] = None, model: Optional[_dsc.Model] = None,
                 mtp_lambda: Optional[float] = None, bias_update_rate: float = 1e-3) -> None:
        super().__init__()
        if isinstance(cfg, _dsc.Model) and model is None:
            cfg, model = None, cfg
        if model is None:
            if cfg is None:
                raise TypeError("DeepseekV3ForCausalLM: cfg: expected a deepseek_c.ModelConfig or a config dict "
                                "(or model=a deepseek_c.Model), got None")
            model = _dsc.Model(cfg, device=device, fp8=fp8, seed=seed, num_threads=num_threads)
        if not isinstance(model, _dsc.Model):
            raise TypeError(f"DeepseekV3ForCausalLM: model: expected a deepseek_c.Model, got {type(model).__name__}")
        if model.frozen:
            raise ValueError("DeepseekV3ForCausalLM: model: expected a trainable model, got an inference-only FP8 "
                             "one (frozen): generate with deepseek_c.Model.generate")
        self.dsc_model = model
        self.config = model.cfg
        self.mtp_lambda = model._lambda(mtp_lambda)
        self.bias_update_rate = float(bias_update_rate)
        self._device = model.device
        self._serial = 0
        self._grad_views: Optional[list[Tensor]] = None
        self._pnames: list[str] = []
        self._plist: list[nn.Parameter] = []
        self._bias: dict[int, Tensor] = {}
        self._moe_layers = [i for i in range(model.n_layers + model.n_mtp) if model.is_moe_layer(i)]
        self._load: dict[int, np.ndarray] = {}       # load of the backward passes since update_bias
        self._last_read: dict[int, np.ndarray] = {}  # the C model's load at the last backward
        for name, view in model.parameters().items():
            t = _as_torch(view)
            *path, leaf = name.split(".")
            mod: nn.Module = self
            for part in path:
                sub = mod._modules.get(part)
                if sub is None:
                    sub = _Node()
                    mod.add_module(part, sub)
                mod = sub
            if leaf == "e_score_correction_bias":
                mod.register_buffer(leaf, t)
                self._bias[int(path[2])] = t  # model.layers.{i}.mlp.gate.e_score_correction_bias
            else:
                p = nn.Parameter(t)
                mod.register_parameter(leaf, p)
                self._pnames.append(name)
                self._plist.append(p)
        self._ptrs = [p.data_ptr() for p in self._plist]
        self._key = next(_KEYS)
        _MODELS[self._key] = weakref.ref(self)
        self.register_load_state_dict_pre_hook(DeepseekV3ForCausalLM._hf_layout)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path: Any, *, device: str = "cpu", fp8: bool = False, **kw: Any
                        ) -> "DeepseekV3ForCausalLM":
        """Load config.json + *.safetensors (see deepseek_c.Model.from_pretrained for the
        options: init_missing_mtp, strict, seed, num_threads, moments) and wrap it."""
        mk = {k: kw.pop(k) for k in ("mtp_lambda", "bias_update_rate") if k in kw}
        return cls(model=_dsc.Model.from_pretrained(path, device=device, fp8=fp8, **kw), **mk)

    def save_pretrained(self, path: Any) -> None:
        """config.json + model.safetensors (Hugging Face names; deepseek_c.Model.save without
        its optimizer state: a torch optimizer keeps its own)."""
        self.dsc_model.save(path, optimizer=False)

    @property
    def n_mtp(self) -> int:
        return self.dsc_model.n_mtp

    # ------------------------------------------------------------------ plumbing

    def _check_views(self, params: list, fn: str) -> None:
        if len(params) != len(self._ptrs) or any(p.data_ptr() != q for p, q in zip(params, self._ptrs)):
            raise RuntimeError(f"{fn}: parameters: expected the views of the C model's weights this module was "
                               f"built with, got other tensors (was a parameter replaced, or its .data set?)")

    def _tokens(self, tokens: Tensor, fn: str) -> Tensor:
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(np.asarray(tokens))
        if tokens.dim() == 1:
            tokens = tokens[None, :]
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"{fn}: tokens: expected a [batch, seq] integer tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        return tokens.detach().to(device=self._device, dtype=torch.int32).contiguous()

    def _note_load(self, accumulated: bool) -> None:
        """Add the last backward's expert load (the C model's load is this pass's, or the sum
        since its last overwrite when accumulated) to the load since update_bias."""
        E = int(self.config.n_routed_experts)
        for i in self._moe_layers:
            cur = np.asarray(_C.model_expert_load(self.dsc_model._cap, i), np.int64)
            prev = self._last_read.get(i) if accumulated else None
            delta = cur - prev if prev is not None else cur
            self._load[i] = self._load.get(i, np.zeros(E, np.int64)) + delta
            self._last_read[i] = cur

    def _make_grad_views(self) -> list[Tensor]:
        self._grad_views = [_as_torch(self.dsc_model.grad(n)) for n in self._pnames]
        return self._grad_views

    def _apply(self, fn: Any, recurse: bool = True) -> "DeepseekV3ForCausalLM":
        probe = torch.empty(0, dtype=torch.float32, device=self._device)
        r = fn(probe)
        if r.dtype != probe.dtype or r.device != probe.device:
            raise TypeError(f"DeepseekV3ForCausalLM: its parameters are the C model's float32 arena on "
                            f"{self._device} and cannot be moved or cast (to {r.dtype} on {r.device}): build the "
                            f"model with device=... (and fp8=True for FP8 GEMMs)")
        return self

    @staticmethod
    def _hf_layout(module: "DeepseekV3ForCausalLM", state_dict: dict, prefix: str, _meta: Any, _strict: bool,
                   _missing: list, _unexpected: list, error_msgs: list) -> None:
        """Accept transformers 5's in-memory layout: fused experts.gate_up_proj [E, 2F, D] and
        experts.down_proj [E, D, F] per layer; rotary inv_freq buffers are dropped."""
        for k in [k for k in state_dict if k.endswith("rotary_emb.inv_freq")]:
            state_dict.pop(k)
        for k in [k for k in state_dict if k.endswith(".mlp.experts.gate_up_proj")]:
            base = k[: -len("gate_up_proj")]
            gu = state_dict.pop(k)
            Fi = gu.shape[1] // 2
            for e in range(gu.shape[0]):
                state_dict[f"{base}{e}.gate_proj.weight"] = gu[e, :Fi]
                state_dict[f"{base}{e}.up_proj.weight"] = gu[e, Fi:]
        for k in [k for k in state_dict if k.endswith(".mlp.experts.down_proj")]:
            base = k[: -len("down_proj")]
            d = state_dict.pop(k)
            for e in range(d.shape[0]):
                state_dict[f"{base}{e}.down_proj.weight"] = d[e]
        lm = prefix + "lm_head.weight"
        if lm in state_dict and module.config.tie_word_embeddings:
            state_dict.pop(lm)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None, *, targets: Optional[Tensor] = None,
                n_mtp: Optional[int] = None, ignore_index: int = IGNORE_INDEX) -> CausalLMOutput:
        """input_ids [B, T] (or [T]) int; labels [B, T]: Hugging Face's convention (the loss of
        position i is against labels[i + 1]; pass labels=input_ids); or targets [B, T] already
        aligned (targets[i] is the token after position i, as deepseek_c.Model.train_step).
        With either, loss = CE(main) + mtp_lambda / D * sum_d CE(MTP depth d) (D = the model's
        MTP depths; depth d's targets are targets[:, d+1:]), the train_step objective.
        n_mtp: MTP depths to run (default: all when training with a gradient, else none).
        Without gradients (eval / no_grad) the logits come from the inference forward."""
        ids = input_ids if input_ids.dim() == 2 else input_ids[None, :]
        if labels is not None and targets is not None:
            raise ValueError("DeepseekV3ForCausalLM.forward: labels, targets: expected one of them, got both")
        if labels is not None:
            lab = labels if labels.dim() == 2 else labels[None, :]
            targets = torch.cat([lab[:, 1:], lab.new_full((lab.shape[0], 1), ignore_index)], dim=1)
        T = int(ids.shape[1])
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._plist)
        if n_mtp is None:
            n_mtp = min(self.n_mtp, T - 1) if (grad and targets is not None and self.mtp_lambda > 0) else 0
        if grad:
            outs = model_forward_train(self._key, ids, int(n_mtp), self._plist)
            logits, mtp = outs[0], list(outs[1:-1])
        else:
            logits = model_logits(self._key, ids, -1)
            mtp = [model_logits(self._key, ids, d) for d in range(int(n_mtp))]
        loss = main = mtp_loss = None
        if targets is not None:
            tg = targets.to(device=logits.device)
            main = F.cross_entropy(logits, tg, ignore_index)
            loss = main
            if mtp:
                parts = [F.cross_entropy(lg, tg[:, d + 1:], ignore_index) for d, lg in enumerate(mtp)]
                total = parts[0]
                for p in parts[1:]:
                    total = total + p
                mtp_loss = total / len(parts)
                loss = main + (self.mtp_lambda / max(self.n_mtp, 1)) * total
        return CausalLMOutput(loss, logits, mtp, main, mtp_loss)

    # ------------------------------------------------------------------ balancing

    @torch.no_grad()
    def update_bias(self, rate: Optional[float] = None) -> None:
        """The aux-loss-free balancing step of every MoE layer (MTP blocks included) from the
        expert load of the backward passes since the last update: bias += rate * sign(mean
        load - load), as Model.train_step does after AdamW; then the load is cleared. rate:
        bias_update_rate by default."""
        r = self.bias_update_rate if rate is None else float(rate)
        load, self._load = self._load, {}
        if r <= 0:
            return
        for i, b in self._bias.items():
            if i in load and load[i].sum() > 0:
                F.moe_update_bias(b, torch.from_numpy(load[i]).to(b.device), r)

    def expert_load(self) -> dict[int, np.ndarray]:
        """{MoE layer: tokens per expert} of the backward passes since the last update_bias."""
        return {i: v.copy() for i, v in self._load.items()}

    def extra_repr(self) -> str:
        return repr(self.dsc_model)
