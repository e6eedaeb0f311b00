"""A DeepSeek-V3-architecture model (MLA + DeepSeekMoE + MTP, optional FP8) whose forward,
backward and training step run in the C core (``dsc_model``), with Hugging Face parameter
names and safetensors checkpoints.

    cfg = dsc.ModelConfig.tiny()
    model = dsc.Model(cfg, seed=0)                       # float32 master weights, V3 init
    logits = model.forward(tokens)                       # [B, T] int -> [B, T, vocab] float32
    stats = model.train_step(tokens, targets, lr=1e-3)   # loss, mtp_loss, grad_norm, expert load, ...
    model.save("out/")                                   # config.json + model.safetensors + optimizer.safetensors
    model = dsc.Model.from_pretrained("out/")            # also DeepSeek FP8 checkpoints (weight_scale_inv)
    out = model.generate([[1, 5, 6]], max_new_tokens=8)  # paged latent cache, optional MTP speculation

This class is thin: every tensor lives in the C model's arenas (``parameters()`` are
zero-copy views), every step is one C call. Conventions (DEEPSEEK_V3.md, and the header
comments of csrc/model/model_layers.c and model_train.c):

* Block: h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h)); FFN is the dense SwiGLU MLP for layers
  < first_k_dense_replace (or not a multiple of moe_layer_freq), else DeepSeekMoE.
* MTP depth d = 1..D (layer ``num_hidden_layers + d - 1``): h' = eh_proj([enorm(Emb(t_{i+d}));
  hnorm(h^{d-1}_i)]) (embedding first), one decoder block, ``shared_head.norm``, the shared
  head. h^0 is the main output after ``model.norm``. loss = L_main + lambda/D * sum_d L^d.
* Init: matrices N(0, initializer_range), norms 1, correction bias 0 (seeded, in C).
* Optimizer: AdamW (0.9, 0.95, eps 1e-8), global-norm clipping 1.0, weight decay on matrices
  only; the correction bias moves by gamma * sign(mean load - load) after each step.
* FP8 (``fp8=True``): every linear layer of the blocks runs the V3 way -- the attention
  projections (q_a/q_b or q, kv_a, kv_b, o), the routed experts (grouped GEMMs), the shared
  experts and the dense MLPs: E4M3 operands, activations in 1x128 tiles, the float32 master
  weights quantized in 128x128 blocks on the fly, FP32 accumulation; backward dgrad with the
  transposed weight blocks, wgrad with both operands quantized along the tokens. Embedding,
  head, router, eh_proj, norms and the attention core stay float32 (as in V3); inference
  keeps the absorbed kv_b products in float32.
* BF16 (``dtype="bfloat16"``, DeepSeek-V3's recipe): float32 master weights, gradients and
  AdamW state; every pass (forward, backward, generate) uses the masters rounded to BF16
  (round-to-nearest-even, refreshed before each pass, so after every optimizer step and
  load) and rounds activations and their gradients to BF16 where a BF16 stack stores them:
  attention and FFN inputs (the RMSNorm outputs), the attention output, the dense MLP's
  gate/up/SwiGLU/down outputs, the MoE layer output, the head input and the logits, the MTP
  eh_proj inputs and output (the exact lists: csrc/model/model_layers.c, model_train.c). GEMMs accumulate in
  float32; RMSNorm statistics, softmax and cross-entropy run in float32; the residual
  stream stays float32. The CPU computes exactly these roundings (float32 buffers holding
  BF16 values). ``fp8=True`` combines with it (FP8 GEMMs on the BF16 values). The dtype is
  a creation/load option like ``fp8``: checkpoints hold the float32 masters, so pass
  ``dtype=`` to ``from_pretrained`` (``copy()`` keeps it).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _C
from ._arrays import as_int
from .streams import stream_handle
from ._C import Error
from ._arrays import parse_dtype
from .config import ModelConfig

__all__ = ["Model", "lr_schedule"]

IGNORE_INDEX = -100


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


def _parse_device(device: Any) -> tuple[int, int, str]:
    s = str(device)
    if s == "cpu":
        return 1, 0, "cpu"
    if s == "cuda" or s.startswith("cuda:"):
        idx = int(s[5:]) if s.startswith("cuda:") and s[5:].isdigit() else 0
        if s.startswith("cuda:") and not s[5:].isdigit():
            raise ValueError(f"Model: device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        n, why = _C.cuda_device_count()
        if idx >= n:
            raise ValueError(f"Model: device: expected a visible CUDA device, got {device!r} "
                             f"({n} visible: {why or 'index out of range'})")
        return 2, idx, f"cuda:{idx}"
    raise ValueError(f"Model: device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _num_threads(v: Any, fn: str) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{fn}: num_threads: expected None (the OpenMP default) or an int >= 1, got {v!r}")
    return int(v)


def _dist_args(fn: str, comm: Any, ep: Optional[int], dp: Optional[int], check_every: int, overlap: bool,
               mbs: int) -> Optional[tuple]:
    """The C model's distributed options, or None without comm (checked here for types; the
    values, which every rank must share, are checked by C after the ranks compared them)."""
    if comm is None:
        for name, v in (("expert_parallel", ep), ("data_parallel", dp)):
            if v not in (None, 1):
                raise ValueError(f"{fn}: {name}: expected None or 1 without comm (one process), got {v!r}")
        return None
    from .dist import Comm
    if not isinstance(comm, Comm):
        raise TypeError(f"{fn}: comm: expected a deepseek_c.Comm (Comm.from_mpi, Comm.from_torch, ...), "
                        f"got {type(comm).__name__}")
    for name, v in (("expert_parallel", ep), ("data_parallel", dp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{fn}: {name}: expected None (derived) or an int >= 1, got {v!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, (int, np.integer)) or check_every < 0:
        raise ValueError(f"{fn}: check_every: expected an int >= 0 (0: never), got {check_every!r}")
    if mbs not in (1, 2) or isinstance(mbs, bool):
        raise ValueError(f"{fn}: ep_micro_batches: expected 1 or 2, got {mbs!r}")
    return (comm._cap, int(ep or 0), int(dp or 0), int(check_every), int(bool(overlap)), int(mbs))


def _copy_tensors(dst_cap: Any, src_cap: Any) -> None:
    """Every parameter of model src into model dst (same config), device to device."""
    for (_, d), (_, s) in zip(_C.model_tensors(dst_cap), _C.model_tensors(src_cap)):
        _C.copy(d, s)


def _compute_dtype(dtype: Any, fn: str) -> str:
    """The compute dtype ('float32' | 'bfloat16'); a string naming anything else is a
    ValueError naming the argument (parse_dtype's TypeError otherwise)."""
    try:
        return parse_dtype(dtype, fn, "dtype", allowed=("float32", "bfloat16"))
    except TypeError as e:
        if isinstance(dtype, str):
            raise ValueError(str(e)) from None
        raise


class Model:
    """DeepSeek-V3-style causal LM backed by a C ``dsc_model``.

    Model(cfg, device="cpu", dtype="float32", fp8=False, seed=0, moments="float32").
    ``parameters()`` gives {hf_name: array} views of the float32 master weights (NumPy on
    CPU, dsc.Tensor on CUDA); writing into them changes the model. ``dtype``: the compute
    dtype, "float32" or "bfloat16" (the V3 BF16 recipe, see the module docstring:
    float32 masters and optimizer state, BF16-rounded weights and activations in every
    pass; ``compute_weight(name)`` shows a weight as the passes use it). ``moments="bfloat16"``
    keeps the AdamW moments in bfloat16 (half the optimizer memory, as DeepSeek-V3).

    A *frozen* model (``freeze_fp8()``, ``from_pretrained(..., inference_only=True)``) is an
    inference-only FP8 model the way DeepSeek ships V3: every block matrix is held only as
    E4M3 codes with 128x128 block scales (``parameters()`` gives float8_e4m3fn views for
    those, ``fp8_scales()`` their scales), about a quarter of the float32 memory; it
    generates, computes logits (``forward``) and saves (E4M3 + ``weight_scale_inv``
    checkpoints) but does not train.

    Threads: each model has its own C context, so different models (and the functional ops)
    run in parallel in different threads, with the GIL released. Calls on one model run one
    at a time: a call from another thread waits for the running one; a call on a model from
    its own ``on_token`` callback (re-entrant) raises deepseek_c.Error instead of waiting
    forever, as does a wait that would close a cycle (two callbacks calling each other's
    model). ``num_threads``: the OpenMP/BLAS threads of this model's CPU work (None: the
    OpenMP default, i.e. OMP_NUM_THREADS or every core); with several models busy in
    parallel give each a share of the cores (e.g. 1 each on a 2-core machine), or they
    oversubscribe the CPU. Results do not depend on it."""

    def __init__(self, cfg: ModelConfig, device: str = "cpu", dtype: str = "float32", fp8: bool = False,
                 seed: int = 0, moments: str = "float32", num_threads: Optional[int] = None, *,
                 comm: Any = None, expert_parallel: Optional[int] = None, data_parallel: Optional[int] = None,
                 check_every: int = 1, overlap: bool = True, ep_micro_batches: int = 1,
                 _init: bool = True, _cap: Any = None) -> None:
        if isinstance(cfg, Mapping):
            cfg = ModelConfig(**cfg)
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"Model: cfg: expected a deepseek_c.ModelConfig, got {type(cfg).__name__}")
        dtype = _compute_dtype(dtype, "Model")
        moments = parse_dtype(moments, "Model", "moments", allowed=("float32", "bfloat16"))
        if not isinstance(fp8, bool):
            raise TypeError(f"Model: fp8: expected a bool, got {type(fp8).__name__}")
        dev_type, dev_id, self.device = _parse_device(device)
        self.num_threads = _num_threads(num_threads, "Model")
        self.dtype, self.fp8, self.seed = str(dtype), fp8, int(seed)
        dist = _dist_args("Model", comm, expert_parallel, data_parallel, check_every, overlap, ep_micro_batches)
        if _cap is None:
            # the C parser reads the config (one parser for every path); cfg then mirrors it
            _cap = _C.model_new(cfg.to_json(indent=None), dev_type, dev_id, self.seed & (2**64 - 1), int(_init),
                                int(fp8), str(moments), self.num_threads or 0, dist, self.dtype)
        self.comm = comm
        self.cfg = ModelConfig._from_canonical(json.loads(_C.model_config_json(_cap)))
        self.n_layers = int(self.cfg.num_hidden_layers)
        self.n_mtp = int(self.cfg.num_nextn_predict_layers or 0)
        self.moments = str(moments)
        self._cap = _cap
        self._dev = (dev_type, dev_id)
        self._names: list[str] = []
        self._params: dict[str, Any] = {}
        for name, t in _C.model_tensors(self._cap):
            self._names.append(name)
            self._params[name] = t.numpy() if dev_type == 1 else t
        self._index = {n: i for i, n in enumerate(self._names)}
        info = _C.model_info(self._cap)
        self.frozen = bool(info["frozen"])
        self.parallel: dict[str, int] = dict(info["parallel"])
        self._scales: dict[str, Any] = {}
        if self.frozen:
            self.fp8 = True
            for i, name in enumerate(self._names):
                if str(getattr(self._params[name], "dtype", "")) == "float8_e4m3fn":
                    t = _C.model_tensor_scale(self._cap, i)
                    self._scales[name] = t.numpy() if dev_type == 1 else t

    # ------------------------------------------------------------------ structure

    def is_moe_layer(self, i: int) -> bool:
        c = self.cfg
        return bool(c.n_routed_experts) and i >= c.first_k_dense_replace and i % c.moe_layer_freq == 0

    @property
    def max_ranks_per_token(self) -> int:
        """The most expert-parallel ranks one token's rows travel to in an MoE layer (0
        without routed experts). Node-limited routing, DeepSeek-V3's "at most M nodes per
        token", is the config's group-limited top-k with groups aligned to the ranks: with
        topk_group < n_group, n_group a multiple of expert_parallel (each rank holds whole
        groups: at most topk_group ranks) or a divisor of it (a group spans
        expert_parallel / n_group ranks, e.g. the GPUs of a node: at most
        topk_group * expert_parallel / n_group). Other layouts are refused at creation."""
        c = self.cfg
        if not c.n_routed_experts:
            return 0
        ep = int(self.parallel.get("expert_parallel", 1))
        bound = min(ep, int(c.num_experts_per_tok))
        g = 1 if c.topk_method == "greedy" else int(c.n_group or 1)
        tg = int(c.topk_group or 1)
        if g > 1 and tg < g:
            bound = min(bound, tg * max(1, ep // g))
        return bound

    @property
    def head_name(self) -> str:
        return "model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored from optimizer.safetensors)."""
        return int(_C.model_info(self._cap)["step"])

    def parameters(self) -> dict[str, Any]:
        """{Hugging Face name: view} (experts one by one; no MTP duplicates): float32, or
        float8_e4m3fn codes for the block matrices of a frozen model."""
        return dict(self._params)

    def fp8_scales(self) -> dict[str, Any]:
        """A frozen model's {name of a held matrix: its float32 block scales [ceil(N/128),
        ceil(K/128)]} (weight = codes * scale per 128x128 block); {} when not frozen."""
        return dict(self._scales)

    def compute_weight(self, name: str) -> np.ndarray:
        """A host copy of weight `name` as the forward/backward use it: for dtype="bfloat16"
        the float32 master rounded to BF16 (RNE) now, as float32 values; for float32 the
        master itself."""
        if name not in self._index:
            raise KeyError(f"Model.compute_weight: name: no tensor {name!r}")
        return np.array(self._host(_C.model_compute_tensor(self._cap, self._index[name])), dtype=np.float32)

    def weight_bytes(self) -> int:
        """Bytes of weights held on the device (float32 arena + E4M3 codes and scales; a
        dtype="bfloat16" model also its BF16-rounded compute copy, held as float32)."""
        return int(_C.model_info(self._cap)["weight_bytes"])

    def freeze_fp8(self) -> "Model":
        """A new inference-only FP8 copy of this model (this one is unchanged): every block
        matrix quantized once to E4M3 with 128x128 block scales and held only in that form
        (dsc_model_freeze_fp8). It generates bitwise like this model would with fp8=True,
        saves DeepSeek-style FP8 checkpoints, and refuses training."""
        if self.frozen:
            return self
        if self.parallel.get("world", 1) > 1:
            raise ValueError("Model.freeze_fp8: model: distributed (comm); load the checkpoint with "
                             "Model.from_pretrained(path, fp8=True, inference_only=True, comm=...) on every rank")
        dev_type, dev_id = self._dev
        cap = _C.model_new(_C.model_config_json(self._cap), dev_type, dev_id, self.seed & (2**64 - 1), 0, 1,
                           "float32", self.num_threads or 0)
        _copy_tensors(cap, self._cap)  # its views die with the call: none may outlive the freeze
        _C.model_set_step(cap, self.step)
        _C.model_freeze(cap)
        return Model(self.cfg, device=self.device, fp8=True, seed=self.seed, num_threads=self.num_threads, _cap=cap)

    def num_parameters(self) -> int:
        """Parameters held by this process (a rank of an expert-parallel model: its experts only)."""
        return int(_C.model_info(self._cap)["n_params"])

    def comm_stats(self, reset: bool = False) -> dict:
        """Communication of this model's own communicators since creation or the last reset:
        dict(ops, bytes_sent, bytes_received, wait_seconds (the time the computation waited
        for it), busy_seconds (time in flight)); zeros for a one-process model."""
        return _C.model_comm_stats(self._cap, int(bool(reset)))

    def activation_bytes(self) -> int:
        """Bytes of the activation memory planned for the last training shape."""
        return int(_C.model_info(self._cap)["activation_bytes"])

    def counters(self, reset: bool = False) -> dict[str, int]:
        """What the model's context made the host wait for or allocate since creation (or the
        last reset): syncs (host waits for the GPU), copies_to_device, copies_to_host, allocs,
        frees, workspace_grows, index_checks (range checks of index tensors: one host wait
        each on the GPU). CPU models have no syncs or copies. reset=True zeroes them
        after reading (e.g. to count one steady-state step)."""
        return dict(_C.context_counters(self._cap, bool(reset)))

    def set_stream(self, stream: Any) -> None:
        """Run the model's work (training, generation, caches) on a CUDA stream: an int handle
        (a cudaStream_t; 0 = the legacy default stream), a torch.cuda.Stream (.cuda_stream),
        a CuPy stream (.ptr), or None (the legacy default stream). The new stream first waits
        for the work already queued on the old one, on the GPU (no host wait). Inputs must be
        ready on that stream, and work reading the model's outputs on another stream must wait
        for it (as with dsc_context_set_stream in C). CPU models accept only None or 0."""
        _C.context_set_stream(self._cap, stream_handle(stream))

    @property
    def cuda_stream(self) -> int:
        """The CUDA stream handle the model runs on (0: the legacy default stream)."""
        return int(_C.context_get_stream(self._cap))

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Model({self.num_parameters() / 1e6:.2f}M params: {c.num_hidden_layers} layers "
                f"({c.first_k_dense_replace} dense), hidden {c.hidden_size}, {c.n_routed_experts} experts "
                f"top-{c.num_experts_per_tok} + {c.n_shared_experts} shared, MTP {self.n_mtp}, "
                f"dtype={self.dtype}, fp8={'frozen' if self.frozen else self.fp8}, "
                f"device={self.device})")

    # ------------------------------------------------------------------ inputs

    def _ids(self, x: Any, what: str, shape: Optional[tuple] = None) -> Any:
        """int32 [B, T] on the model's device; range checks are the C core's."""
        if self._dev[0] != 1 and not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
            return x  # device arrays go straight to C (which checks dtype, device and values)
        t = np.asarray(x)
        if t.ndim == 1:
            t = t[None, :]
        if shape is not None and t.shape != shape:
            raise ValueError(f"Model: {what}: expected shape {shape} (the shape of tokens), got {t.shape}")
        if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f"Model: {what}: expected a [batch, seq] integer array, got shape {t.shape}")
        if t.dtype.kind not in "iu":
            raise ValueError(f"Model: {what}: expected integer token ids, got dtype {t.dtype}")
        if t.size and (t.min() < -2**31 or t.max() >= 2**31):
            raise ValueError(f"Model: {what}: expected ids that fit int32, got values in [{t.min()}, {t.max()}]")
        t = np.ascontiguousarray(t, dtype=np.int32)
        if self._dev[0] == 1:
            return t
        from . import tensor
        return tensor(t, device=self.device)

    def _out(self, shape: tuple) -> Any:
        if self._dev[0] == 1:
            return np.empty(shape, np.float32)
        from . import empty
        return empty(shape, "float32", self.device)

    @staticmethod
    def _host(x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        from . import to_numpy
        return to_numpy(x)

    # ------------------------------------------------------------------ forward

    def forward(self, tokens: Any) -> Any:
        """Logits [B, T, vocab] float32 of the main model for tokens [B, T] (or [T]). A frozen
        model computes them as generation does (prefill on the latent cache, E4M3 weights)."""
        t = self._ids(tokens, "tokens")
        out = self._out((t.shape[0], t.shape[1], self.cfg.vocab_size))
        _C.model_forward(self._cap, t, out, -1)
        return out

    __call__ = forward

    def forward_mtp(self, tokens: Any) -> list[Any]:
        """The MTP heads' logits: depth d = 1..D gives [B, T-d, vocab], predicting token i+d+1 at i."""
        t = self._ids(tokens, "tokens")
        B, T = t.shape
        outs = []
        for d in range(self.n_mtp):
            if T - d - 1 < 1:
                break
            o = self._out((B, T - d - 1, self.cfg.vocab_size))
            _C.model_forward(self._cap, t, o, d)
            outs.append(o)
        return outs

    def routing(self, tokens: Any) -> dict[int, dict[str, np.ndarray]]:
        """Which experts each token goes to: {layer: {"indices": [B, T, k], "weights": [B, T, k],
        "scores": [B, T, E]}} for every MoE layer of the main model."""
        t = self._ids(tokens, "tokens")
        B, T = t.shape
        k, E = self.cfg.num_experts_per_tok, self.cfg.n_routed_experts
        out = {}
        for i in range(self.n_layers):
            if not self.is_moe_layer(i):
                continue
            idx = np.empty((B, T, k), np.int32)
            w = np.empty((B, T, k), np.float32)
            s = np.empty((B, T, E), np.float32)
            if self._dev[0] == 1:
                _C.model_routing(self._cap, t, i, idx, w, s)
            else:
                di, dw, ds = (self._out_like(a) for a in (idx, w, s))
                _C.model_routing(self._cap, t, i, di, dw, ds)
                idx, w, s = (self._host(a) for a in (di, dw, ds))
            out[i] = {"indices": idx, "weights": w, "scores": s}
        return out

    def _out_like(self, a: np.ndarray) -> Any:
        from . import empty
        return empty(a.shape, a.dtype.name, self.device)

    # ------------------------------------------------------------------ training

    def _lambda(self, mtp_lambda: Optional[float]) -> float:
        if mtp_lambda is not None:
            return float(mtp_lambda)
        return float(self.cfg.extra.get("mtp_lambda", 0.3))

    def _options(self, lr: float = 0.0, betas: tuple = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                 max_grad_norm: float = 1.0, mtp_lambda: Optional[float] = None, aux_alpha: float = 0.0,
                 bias_update_rate: float = 1e-3, grad_accum: int = 1, ignore_index: int = IGNORE_INDEX) -> tuple:
        if isinstance(grad_accum, bool) or not isinstance(grad_accum, (int, np.integer)) or grad_accum < 1:
            raise ValueError(f"Model.train_step: grad_accum: expected a positive int, got {grad_accum!r}")
        return (float(lr), float(betas[0]), float(betas[1]), float(eps), float(weight_decay),
                float(max_grad_norm or 0.0), self._lambda(mtp_lambda), float(aux_alpha), float(bias_update_rate or 0.0),
                int(grad_accum), int(ignore_index))

    def _loads(self) -> dict[int, np.ndarray]:
        return {i: np.asarray(_C.model_expert_load(self._cap, i), np.int64)
                for i in range(self.n_layers + self.n_mtp) if self.is_moe_layer(i)}

    def loss_and_grads(self, tokens: Any, targets: Any, *, mtp_lambda: Optional[float] = None,
                       aux_alpha: float = 0.0, ignore_index: int = IGNORE_INDEX, scale: float = 1.0,
                       grads: Optional[dict] = None) -> tuple[dict, dict]:
        """Forward + backward of one (micro-)batch, no update. Returns (stats, grads): grads
        keyed by storage name (experts stacked: ``model.layers.{i}.mlp.experts.{proj}.weight``
        [E, ., .]), scaled by `scale`; with a non-empty `grads` (the previous result) the
        gradients are accumulated (in the C arena)."""
        t = self._ids(tokens, "tokens")
        y = self._ids(targets, "targets", shape=tuple(t.shape))
        acc = int(bool(grads))
        st = _C.model_train(self._cap, t, y, self._options(mtp_lambda=mtp_lambda, aux_alpha=aux_alpha,
                                                           ignore_index=ignore_index), 0, acc, float(scale))
        st["expert_load"] = self._loads()
        out: dict[str, np.ndarray] = {}
        stacked: dict[str, list] = {}
        for i, n in enumerate(self._names):
            if n.endswith("e_score_correction_bias"):
                continue
            g = self._host(_C.model_state(self._cap, i, 0)).copy()
            if ".mlp.experts." in n:
                pre, rest = n.split(".mlp.experts.")
                e, proj = rest.split(".", 1)
                stacked.setdefault(f"{pre}.mlp.experts.{proj}", []).append(g)
            else:
                out[n] = g
        for k, v in stacked.items():
            out[k] = np.stack(v)
        return st, out

    def grad(self, name: str) -> Any:
        """The gradient of parameter `name` from the last loss_and_grads / train_step (a view)."""
        if name not in self._index:
            raise KeyError(f"Model.grad: name: no parameter {name!r}")
        t = _C.model_state(self._cap, self._index[name], 0)
        return t.numpy() if self._dev[0] == 1 else t

    def optimizer_state(self, name: str) -> tuple[Any, Any]:
        """(exp_avg, exp_avg_sq) views of parameter `name`."""
        if name not in self._index:
            raise KeyError(f"Model.optimizer_state: name: no parameter {name!r}")
        i = self._index[name]
        m, v = _C.model_state(self._cap, i, 1), _C.model_state(self._cap, i, 2)
        return (m.numpy(), v.numpy()) if self._dev[0] == 1 else (m, v)

    def train_step(self, tokens: Any, targets: Any, lr: Union[float, Callable[[int], float]] = 1e-3, *,
                   grad_accum: int = 1, mtp_lambda: Optional[float] = None, aux_alpha: float = 0.0,
                   bias_update_rate: float = 1e-3, max_grad_norm: float = 1.0, weight_decay: float = 0.1,
                   betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                   ignore_index: int = IGNORE_INDEX, sync: bool = True) -> Optional[dict]:
        """One optimizer step in C (dsc_model_train_step): forward, backward (split into
        `grad_accum` micro-batches along the batch dim, gradients averaged), global-norm
        clipping, AdamW, the aux-loss-free bias update.

        sync=False (for GPU loops): return None without waiting for the step; on a GPU the
        step then makes no host wait at all. Its statistics come from train_stats() (the one
        wait), which also raises for a bad token id of that step; such a step, and any later
        one before the read, changes no weight.

        lr: a number or a callable step -> lr (e.g. ``lambda s: dsc.lr_schedule(s, 1e-3, 100, 1000)``).
        mtp_lambda: MTP loss weight (default cfg.extra['mtp_lambda'] or 0.3). aux_alpha: the
        sequence-wise balance loss weight (0 = off; V3 used 1e-4). bias_update_rate: gamma.
        Returns dict(loss, mtp_loss, aux_loss, grad_norm, lr, step, expert_load {layer: counts},
        load_imbalance (mean over MoE layers of max/mean load), load_imbalance_per_layer, tokens (B*T),
        seconds (wall time of this call) and tokens_per_s = tokens / seconds of this one step; a
        run's throughput is its total tokens over its total wall time (train.fit does that).
        """
        t0 = time.perf_counter()
        t = self._ids(tokens, "tokens")
        y = self._ids(targets, "targets", shape=tuple(t.shape))
        B = t.shape[0]
        if isinstance(grad_accum, bool) or not isinstance(grad_accum, (int, np.integer)) or grad_accum < 1 \
                or B % grad_accum:
            raise ValueError(f"Model.train_step: grad_accum: expected a divisor of the batch size {B}, "
                             f"got {grad_accum!r}")
        lr_v = float(lr(self.step + 1)) if callable(lr) else float(lr)
        opts = self._options(lr_v, betas, eps, weight_decay, max_grad_norm, mtp_lambda, aux_alpha, bias_update_rate,
                             grad_accum, ignore_index)
        if not sync:
            _C.model_train(self._cap, t, y, opts, 2, 0, 1.0)
            self._last_lr = lr_v
            return None
        st = _C.model_train(self._cap, t, y, opts, 1, 0, 1.0)
        self._last_lr = lr_v
        return self._step_dict(st, lr_v, time.perf_counter() - t0, int(t.shape[0] * t.shape[1]))

    def train_stats(self) -> dict:
        """The statistics of the last train_step, as train_step returns them (without
        seconds / tokens_per_s): after train_step(sync=False) this is where the host waits
        for that step, and where a bad token id of it raises (dsc_model_train_stats)."""
        st = _C.model_train_stats(self._cap)
        return self._step_dict(st, getattr(self, "_last_lr", float("nan")), None, None)

    def _step_dict(self, st: dict, lr_v: float, secs: Optional[float], n_tok: Optional[int]) -> dict:
        loads = self._loads()
        imb = {}
        for i, c in loads.items():
            mean = c.mean()
            imb[i] = float(c.max() / mean) if mean > 0 else 1.0
        st.update(lr=lr_v, expert_load=loads, load_imbalance_per_layer=imb)
        if n_tok is not None and secs is not None:
            st.update(tokens=n_tok, seconds=secs, tokens_per_s=n_tok / secs if secs > 0 else 0.0)
        return st

    # ------------------------------------------------------------------ composable training

    def forward_train(self, tokens: Any, n_mtp: int = 0) -> tuple[Any, list[Any]]:
        """The training forward (dsc_model_forward_train), keeping what backward() needs:
        (logits [B, T, vocab], [mtp logits of depths 1..n_mtp, [B, T-d, vocab]]). For losses
        other than next-token cross-entropy (an autograd framework, RL, distillation)."""
        t = self._ids(tokens, "tokens")
        B, T = t.shape
        if isinstance(n_mtp, bool) or not isinstance(n_mtp, (int, np.integer)) or not 0 <= n_mtp <= self.n_mtp:
            raise ValueError(f"Model.forward_train: n_mtp: expected 0..{self.n_mtp} (the model's MTP depths), "
                             f"got {n_mtp!r}")
        lg = self._out((B, T, self.cfg.vocab_size))
        mtp = [self._out((B, T - d - 1, self.cfg.vocab_size)) for d in range(int(n_mtp))]
        _C.model_forward_train(self._cap, t, lg, mtp)
        return lg, mtp

    def backward(self, dlogits: Any, dmtp_logits: Optional[Sequence[Any]] = None, accumulate: bool = False) -> None:
        """The backward of the last forward_train from dL/dlogits [B, T, vocab] float32 (and
        dL/dmtp_logits per depth; None entries are zero): the gradients (grad()) are
        overwritten, or added to with accumulate=True. One backward per forward_train."""
        _C.model_backward(self._cap, dlogits, list(dmtp_logits or []), int(bool(accumulate)))

    def optimizer_step(self, lr: Union[float, Callable[[int], float]] = 1e-3, *, max_grad_norm: float = 1.0,
                       weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                       bias_update_rate: float = 1e-3) -> dict:
        """The optimizer part of train_step on the gradients there are (after backward() or
        loss_and_grads()): global-norm clipping, AdamW, the aux-loss-free bias update.
        Returns dict(grad_norm, step, load_imbalance, lr)."""
        lr_v = float(lr(self.step + 1)) if callable(lr) else float(lr)
        opts = self._options(lr_v, betas, eps, weight_decay, max_grad_norm, None, 0.0, bias_update_rate, 1,
                             IGNORE_INDEX)
        st = _C.model_optimizer_step(self._cap, opts)
        return dict(grad_norm=st["grad_norm"], step=st["step"], load_imbalance=st["load_imbalance"], lr=lr_v)

    # ------------------------------------------------------------------ RL and distillation

    def token_logprobs(self, tokens: Any, targets: Any, ignore_index: int = IGNORE_INDEX) -> Any:
        """log p(targets[b, t] | tokens[b, :t + 1]) [B, T] float32 by the plain forward
        (dsc_model_token_logprobs), 0 where targets is ignore_index. Any model, frozen too:
        the reference model of GRPO or a teacher."""
        t = self._ids(tokens, "tokens")
        y = self._ids(targets, "targets", shape=tuple(t.shape))
        out = self._out(tuple(t.shape))
        ig = as_int(ignore_index, "Model.token_logprobs", "ignore_index", -(1 << 31), (1 << 31) - 1)
        _C.model_token_logprobs(self._cap, t, y, ig, out)
        return out

    def _vec(self, x: Any, what: str, n: int) -> Any:
        """float32 [n] (rewards) on the model's device; finiteness is the C core's to check."""
        if self._dev[0] != 1 and not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
            return x
        v = np.asarray(x)
        if v.dtype.kind not in "biuf":
            raise ValueError(f"Model.policy_step: {what}: expected numbers, got dtype {v.dtype}")
        v = np.ascontiguousarray(v, dtype=np.float32)
        if v.shape != (n,):
            raise ValueError(f"Model.policy_step: {what}: expected shape ({n},) (one per completion), got {v.shape}")
        if self._dev[0] == 1:
            return v
        from . import tensor
        return tensor(v, device=self.device)

    def _bt(self, x: Any, what: str, shape: tuple) -> Any:
        if x is None:
            return None
        if self._dev[0] != 1 and not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
            return x
        v = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
        if v.shape != shape:
            raise ValueError(f"Model.policy_step: {what}: expected shape {shape} (the shape of tokens), got {v.shape}")
        if self._dev[0] == 1:
            return v
        from . import tensor
        return tensor(v, device=self.device)

    def policy_step(self, tokens: Any, targets: Any, rewards: Any, *, group_size: int,
                    old_logprobs: Any = None, ref_logprobs: Any = None, loss_type: str = "dapo",
                    epsilon: float = 0.2, epsilon_high: Optional[float] = None, beta: float = 0.0,
                    scale_rewards: Any = "group", std_eps: float = 1e-4, drop_zero_std_groups: bool = False,
                    max_completion_length: Optional[int] = None,
                    lr: Union[float, Callable[[int], float]] = 1e-4, max_grad_norm: float = 1.0,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    bias_update_rate: float = 1e-3, ignore_index: int = IGNORE_INDEX) -> dict:
        """One GRPO policy update over given completions, in C (dsc_model_policy_step): the
        training forward, per-token log-probabilities of the completion tokens, group-relative
        advantages of `rewards`, the GRPO loss and its gradient, the backward, clipping, AdamW.

        tokens, targets [B, T] int (targets: the next token at completion positions,
        ignore_index elsewhere; every row needs one), rewards [B] (groups of `group_size`
        adjacent), old_logprobs / ref_logprobs [B, T] float32 (see dsc.grpo_loss; ref needed
        with beta > 0). The rest as dsc.grpo_loss and train_step (weight_decay 0 by default:
        the usual RL setting). Returns dict(loss, policy_loss, kl, clip_low, clip_high,
        clip_region, ratio_mean, entropy, reward_mean, reward_std, grad_norm,
        load_imbalance, step, tokens, sequences, groups_dropped, lr, seconds, tokens_per_s)."""
        from .rl_ops import grpo_params
        t0 = time.perf_counter()
        fn = "Model.policy_step"
        p = grpo_params(fn, group_size=group_size, loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high,
                        beta=beta, max_completion_length=max_completion_length, scale_rewards=scale_rewards,
                        std_eps=std_eps, drop_zero_std_groups=drop_zero_std_groups)
        t = self._ids(tokens, "tokens")
        y = self._ids(targets, "targets", shape=tuple(t.shape))
        shape = tuple(int(s) for s in t.shape)
        r = self._vec(rewards, "rewards", shape[0])
        old = self._bt(old_logprobs, "old_logprobs", shape)
        ref = self._bt(ref_logprobs, "ref_logprobs", shape)
        lr_v = float(lr(self.step + 1)) if callable(lr) else float(lr)
        opts = self._options(lr_v, betas, eps, weight_decay, max_grad_norm, None, 0.0, bias_update_rate, 1,
                             ignore_index)
        st = _C.model_policy_step(self._cap, t, y, r, old, ref, opts, p)
        secs = time.perf_counter() - t0
        n_tok = shape[0] * shape[1]
        st.update(lr=lr_v, seconds=secs, tokens_per_s=n_tok / secs if secs > 0 else 0.0)
        return st

    def distill_step(self, tokens: Any, targets: Any, teacher_indices: Any, teacher_logits: Any, *,
                     temperature: float = 1.0, alpha: float = 0.5,
                     lr: Union[float, Callable[[int], float]] = 1e-3, max_grad_norm: float = 1.0,
                     weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                     bias_update_rate: float = 1e-3, ignore_index: int = IGNORE_INDEX) -> dict:
        """One logit-distillation step in C (dsc_model_distill_step): at the positions whose
        target is not ignore_index, loss = alpha tau^2 KL(teacher top-k || student) + (1 -
        alpha) CE(targets). teacher_indices [B, T, K] int and teacher_logits [B, T, K] float32:
        the teacher's top-k per position (dsc.logits_topk of its logits for the same tokens).
        Returns dict(loss, kl, ce, grad_norm, load_imbalance, step, tokens, lr, seconds)."""
        from .rl_ops import _number
        t0 = time.perf_counter()
        fn = "Model.distill_step"
        tau = _number(fn, "temperature", temperature, 0.0, lo_open=True)
        a = _number(fn, "alpha", alpha, 0.0, 1.0)
        t = self._ids(tokens, "tokens")
        y = self._ids(targets, "targets", shape=tuple(t.shape))
        if self._dev[0] == 1 or isinstance(teacher_indices, np.ndarray):
            ti = np.ascontiguousarray(np.asarray(teacher_indices), dtype=np.int32)
            tl = np.ascontiguousarray(np.asarray(teacher_logits), dtype=np.float32)
            if self._dev[0] != 1:
                from . import tensor
                ti, tl = tensor(ti, device=self.device), tensor(tl, device=self.device)
        else:
            ti, tl = teacher_indices, teacher_logits
        lr_v = float(lr(self.step + 1)) if callable(lr) else float(lr)
        opts = self._options(lr_v, betas, eps, weight_decay, max_grad_norm, None, 0.0, bias_update_rate, 1,
                             ignore_index)
        st = _C.model_distill_step(self._cap, t, y, ti, tl, opts, (tau, a))
        st.update(lr=lr_v, seconds=time.perf_counter() - t0)
        return st

    def copy(self, num_threads: Optional[int] = None) -> "Model":
        """An independent copy: same config, device, dtype, fp8 setting, weights and step (no
        optimizer state). GRPO's frozen reference model is one."""
        if self.frozen:
            raise ValueError("Model.copy: model: frozen for FP8 inference; copy the model it was frozen from")
        dev_type, dev_id = self._dev
        nt = self.num_threads if num_threads is None else _num_threads(num_threads, "Model.copy")
        cap = _C.model_new(_C.model_config_json(self._cap), dev_type, dev_id, self.seed & (2**64 - 1), 0,
                           int(self.fp8), "float32", nt or 0, None, self.dtype)
        _copy_tensors(cap, self._cap)
        _C.model_set_step(cap, self.step)
        return Model(self.cfg, device=self.device, dtype=self.dtype, fp8=self.fp8, seed=self.seed, num_threads=nt,
                     _cap=cap)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Any, max_new_tokens: int = 16, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0,
                 eos_token_id: Optional[int] = None, **kw: Any):
        """Generate with the paged MLA latent cache (dsc_model_generate): batched ragged
        prompts, greedy / temperature / top-k / top-p sampling (seeded), optional MTP
        speculative decoding (``speculative="mtp"``). Returns a GenerateOutput (a list of
        the new tokens per prompt, with ``accept_rate``, ``tokens_per_s``, ...)."""
        from .generation import generate
        return generate(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, eos_token_id=eos_token_id, **kw)

    def stream(self, prompt: Any, **kw: Any):
        """Tokens of one prompt as they are generated (see generate for the options)."""
        from .generation import stream
        return stream(self, prompt, **kw)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF-named copies as written to model.safetensors (experts per expert): float32; a
        frozen model's block matrices as float8_e4m3fn with their "<name>_scale_inv"."""
        out = {}
        for k, v in self._params.items():
            out[k] = np.array(self._host(v), copy=True)
            if k in self._scales:
                out[k + "_scale_inv"] = np.array(self._host(self._scales[k]), copy=True)
        return out

    def load_state_dict(self, tensors: Mapping[str, Any]) -> None:
        """Copy HF-named tensors into the model (every name, the right shapes, finite)."""
        if self.frozen:
            raise ValueError("Model.load_state_dict: model: frozen for FP8 inference (its block matrices are "
                             "E4M3 only); load into a Model and call freeze_fp8() on it")
        missing = sorted(set(self._params) - set(tensors))
        extra = sorted(set(tensors) - set(self._params))
        if missing:
            raise ValueError(f"Model.load_state_dict: tensors: missing {len(missing)}, e.g. {missing[:5]}")
        if extra:
            raise ValueError(f"Model.load_state_dict: tensors: {len(extra)} unexpected, e.g. {extra[:5]}")
        for k, dst in self._params.items():
            v = np.asarray(self._host(tensors[k]), dtype=np.float32)
            if tuple(v.shape) != tuple(dst.shape):
                raise ValueError(f"Model.load_state_dict: {k}: expected shape {tuple(dst.shape)}, got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"Model.load_state_dict: {k}: non-finite values")
        for k, dst in self._params.items():
            v = np.ascontiguousarray(self._host(tensors[k]), dtype=np.float32)
            if isinstance(dst, np.ndarray):
                dst[...] = v
            else:
                _C.copy(dst, v)

    def save(self, path: str | os.PathLike, optimizer: bool = True) -> None:
        """config.json + model.safetensors (+ optimizer.safetensors: step and AdamW moments),
        every file written by the C core (dsc_model_save); config.json holds every key of
        the model's config, the ones deepseek_c does not interpret included.

        The directory is replaced as a whole: the new checkpoint is written into a sibling
        directory (``.<name>.tmp-*``), the other files of `path` (vocab.txt, history.json,
        plots, README.md, ...) are hard-linked into it, and one atomic rename swaps it in.
        A kill or a full disk at any moment leaves `path` with the complete old checkpoint or
        the complete new one, optimizer state included; a failed save raises
        ``deepseek_c.Error`` naming the file and the reason, with the old checkpoint untouched
        and nothing left behind. Leftovers of a killed save are cleaned up by the next save
        or load. ``.<name>.lock`` beside `path` serializes saves (and makes a load wait for a
        save in progress); it stays. The parent directory must be writable, and `path` must
        not be a mount point. The save owns config.json, every ``*.safetensors`` and
        model.safetensors.index.json in `path` (old shards and a stale optimizer file go);
        everything else is kept."""
        _C.model_save(self._cap, os.fspath(path), int(bool(optimizer)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", fp8: bool = False,
                        moments: str = "float32", inference_only: bool = False, *, dtype: str = "float32",
                        init_missing_mtp: bool = False, strict: bool = False, seed: int = 0,
                        num_threads: Optional[int] = None, comm: Any = None, expert_parallel: Optional[int] = None,
                        data_parallel: Optional[int] = None, check_every: int = 1, overlap: bool = True,
                        ep_micro_batches: int = 1) -> "Model":
        """Load config.json + *.safetensors from a directory (Hugging Face layout, one or many
        shards) with the C loader: bfloat16/float16 weights are widened, DeepSeek FP8 weights
        (E4M3 `weight` + `weight_scale_inv`) dequantized; optimizer.safetensors, when present,
        restores the step and moments. Missing or unexpected tensors, wrong shapes and
        corrupt files raise ValueError naming them.

        inference_only=True (needs fp8=True): a frozen model (see freeze_fp8) -- block
        matrices held only in E4M3 with 128x128 scales; an FP8 checkpoint gets its shipped
        codes back bit for bit. num_threads, dtype (the compute dtype: "float32" or
        "bfloat16"; the checkpoint holds float32 masters either way): as for Model.

        Checkpoints saved by transformers: a DeepseekV3 one names MTP layers in config.json
        but holds none (transformers keeps no MTP layer): the model loads with MTP off (no
        MTP loss, no speculative decoding) and one UserWarning, or with fresh MTP modules
        (V3 init from `seed`) to train when ``init_missing_mtp=True``. Tensors the model has
        no use for are skipped with a UserWarning (``strict=True``: a ValueError), except
        rotary ``inv_freq`` buffers and a tied ``lm_head`` equal to the embedding, skipped
        silently."""
        if not isinstance(inference_only, bool):
            raise TypeError(f"Model.from_pretrained: inference_only: expected a bool, got "
                            f"{type(inference_only).__name__}")
        if inference_only and not fp8:
            raise ValueError("Model.from_pretrained: inference_only: expected fp8=True with it (an inference-only "
                             "model holds its block matrices in E4M3), got fp8=False")
        for name, v in (("init_missing_mtp", init_missing_mtp), ("strict", strict)):
            if not isinstance(v, bool):
                raise TypeError(f"Model.from_pretrained: {name}: expected a bool, got {type(v).__name__}")
        d = os.fspath(path)
        cj = os.path.join(d, "config.json")
        dev_type, dev_id, _ = _parse_device(device)
        moments = parse_dtype(moments, "Model.from_pretrained", "moments", allowed=("float32", "bfloat16"))
        dtype = _compute_dtype(dtype, "Model.from_pretrained")
        if inference_only and dtype != "float32":
            raise ValueError("Model.from_pretrained: dtype: expected 'float32' with inference_only=True (a frozen "
                             f"model computes from its E4M3 weights), got {dtype!r}")
        nt = _num_threads(num_threads, "Model.from_pretrained")
        try:
            # C first even for a missing directory: a save killed mid-swap may have left it
            # to be recovered from its old generation (see Model.save)
            dist = _dist_args("Model.from_pretrained", comm, expert_parallel, data_parallel, check_every, overlap,
                              ep_micro_batches)
            cap = _C.model_load(d, dev_type, dev_id, int(bool(fp8)), str(moments), int(init_missing_mtp),
                                int(strict), int(seed) & (2**64 - 1), nt or 0, dist, str(dtype))
        except Error as e:
            if isinstance(e, _C.CommError):
                raise
            if not os.path.isdir(d):
                raise ValueError(f"Model.from_pretrained: path: expected a directory with config.json and "
                                 f"*.safetensors, got {d!r} (no such directory)") from None
            if not os.path.exists(cj):
                raise ValueError(f"Model.from_pretrained: {cj}: missing config.json") from None
            raise ValueError(f"Model.from_pretrained: {e}") from None
        for w in _C.model_warnings(cap):
            warnings.warn(f"Model.from_pretrained: {w}", UserWarning, stacklevel=2)
        if inference_only:
            _C.model_freeze(cap)  # before any view of the float32 arena exists
        cfg = ModelConfig._from_canonical(json.loads(_C.model_config_json(cap)))
        m = cls(cfg, device=device, dtype=dtype, fp8=bool(fp8), seed=int(seed), moments=moments, num_threads=nt,
                _cap=cap)
        m.comm = comm
        return m
