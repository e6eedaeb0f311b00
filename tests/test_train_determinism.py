"""The CPU training step is bitwise deterministic whatever the thread count and the OpenMP
schedule, and independent of the CPU kernels chosen at run time: the demo's model on the
demo's data (large enough that attention, SwiGLU, cross-entropy, the experts and AdamW run
parallel regions, and that some GEMMs are split into blocks) trains three steps in subprocesses with 1, 2, 3 and 4 threads (3 and 4 on a
2-core machine: oversubscribed, other schedules), twice with 2, and with
DSC_CPU_ISA=generic (the portable vector-math, softmax, AdamW and small-GEMM code instead of
the AVX2 one): the losses and every parameter and AdamW moment agree bit for bit (float32
and bfloat16 moments). This is what makes a run reproducible on any machine with the same
CPU kernels, and the demo's result independent of OMP_NUM_THREADS."""

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
from deepseek_c import data as D
tok_ = D.CharTokenizer()
cfg = TR.demo_config(tok_.vocab_size)  # the demo's model and data: one of its GEMMs splits
m = dsc.Model(cfg, seed=3, moments=moments)
batches = D.batches(D.Addition(2), tok_, 32, 48, seed=0)
losses = []
for _ in range(3):
    b = next(batches)
    losses.append(float(m.train_step(b.tokens, b.targets, lr=3e-3)["loss"]))
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
def test_thread_counts_runs_and_isa_give_the_same_bits(moments):
    two = _run({"OMP_NUM_THREADS": "2"}, moments)
    assert _run({"OMP_NUM_THREADS": "2"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "2", "DSC_CPU_ISA": "generic"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "1"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "3"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "4"}, moments) == two
    assert _run({"OMP_NUM_THREADS": "1", "DSC_CPU_ISA": "generic"}, moments) == two
