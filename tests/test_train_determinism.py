"""The CPU training step is bitwise deterministic for a given thread count, whatever the
OpenMP schedule does, and independent of the CPU kernels chosen at run time: a small model
(sequences of 80 tokens: two attention query blocks; batch x heads large enough that
attention, SwiGLU, cross-entropy and AdamW run parallel regions) trains three steps in
subprocesses: twice with OMP_NUM_THREADS=2, once with 2 and DSC_CPU_ISA=generic (the
portable vector-math, softmax, AdamW and small-GEMM code instead of the AVX2 one), and with
1 thread with and without DSC_CPU_ISA=generic: the losses and every parameter and AdamW
moment agree bit for bit (float32 and bfloat16 moments).

Not compared: 1 thread against 2. OpenBLAS's threaded and single-threaded drivers block K
differently for some K (e.g. the MTP block's 474 rows here: its weight gradients differ in
the last bits between 1 and 2 threads, as they did before the CPU attention used BLAS)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import deepseek_c as dsc
from deepseek_c import train as TR
moments = sys.argv[1]
cfg = TR.demo_config(48, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=128)
m = dsc.Model(cfg, seed=3, moments=moments)
rng = np.random.default_rng(7)
tok = rng.integers(0, 48, (6, 80)).astype(np.int32)
y = np.roll(tok, -1, 1)
losses = [float(m.train_step(tok, y, lr=3e-3)["loss"]) for _ in range(3)]
h = hashlib.sha256()
for k, v in sorted(m.parameters().items()):
    h.update(np.ascontiguousarray(v).tobytes())
    if "e_score_correction_bias" not in k:  # the only tensor without AdamW state
        for s in m.optimizer_state(k):
            h.update(np.ascontiguousarray(s).view(np.uint8).tobytes())
print(json.dumps({"losses": [l.hex() for l in losses], "sha": h.hexdigest()}))
"""


def _run(env_extra, moments):
    env = dict(os.environ, **env_extra)
    r = subprocess.run([sys.executable, "-c", SCRIPT, moments], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("moments", ["float32", "bfloat16"])
def test_runs_and_isa_give_the_same_bits(moments):
    two = _run({"OMP_NUM_THREADS": "2"}, moments)
    assert _run({"OMP_NUM_THREADS": "2"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "2", "DSC_CPU_ISA": "generic"}, moments) == two
    one = _run({"OMP_NUM_THREADS": "1"}, moments)
    assert _run({"OMP_NUM_THREADS": "1", "DSC_CPU_ISA": "generic"}, moments) == one
