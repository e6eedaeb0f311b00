"""deepseek_c for PyTorch: the C core's ops, layers and model as autograd-aware
``torch.library`` custom ops and ``torch.nn`` modules (CPU and CUDA tensors).

    import torch, deepseek_c.torch as dst
    moe = dst.MoE(cfg)                       # DeepSeekMoE: V3 router + bias, routed + shared experts
    mla = dst.MLA(cfg)                       # Multi-head Latent Attention (YaRN); .prefill / .decode
    lin = dst.FP8Linear(4096, 4096)          # block-scaled E4M3 forward and backward, FP32 master
    model = dst.DeepseekV3ForCausalLM.from_pretrained("ckpt/")
    loss = model(tokens, labels=tokens).loss; loss.backward(); opt.step(); dst.update_bias(model)
    torch.compile(model)                     # custom ops with fake kernels: no graph breaks

and differentiable functions: rms_norm, rope, linear, swiglu, embedding, cross_entropy,
moe_route, moe_seq_aux_loss, fp8_linear, moe_layer, mla (plus fp8_quantize, fp8_dequantize,
fp8_cast, fp8_gemm, moe_expert_load, moe_update_bias without gradients). The ops are
registered under the ``deepseek_c`` namespace (``torch.ops.deepseek_c.*``) when this module
is imported; ``import deepseek_c`` alone never imports torch.

Every output is a torch tensor on its inputs' device, written by the C core into memory
PyTorch allocated (no copies); activations a layer keeps for its backward live in C memory
and are freed with the autograd graph. See functional.py for the dtypes each op takes and its
autocast behaviour, modules.py for the layers and their Hugging Face names, model.py for the
model and how its gradients reach ``.grad``.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401  (the real PyTorch: absolute import)
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("deepseek_c.torch needs PyTorch: pip install 'deepseek_c[torch]' (or pip install torch)") from _e

from . import _ops  # noqa: F401  (registers the custom ops)
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _f_all
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _m_all
from .model import CausalLMOutput, DeepseekV3ForCausalLM

__all__ = [*_f_all, *_m_all, "DeepseekV3ForCausalLM", "CausalLMOutput"]
