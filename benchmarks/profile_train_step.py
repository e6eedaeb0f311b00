"""Where the CPU training step's time goes: a few train steps of one of bench_train's
side-by-side configs (demo 32 x 48, v3small 8 x 128, 100M 4 x 256; no MTP) to run under
`perf record`, skipping model creation and warm-up:

    OMP_NUM_THREADS=1 perf record -D 12000 -F 499 -o p.data python benchmarks/profile_train_step.py 100M 8
    perf report -i p.data --sort dso,symbol --stdio

(-D: milliseconds before recording starts; set it past the first printed steps on your
machine.) Prints each step's seconds."""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as B  # noqa: E402
import deepseek_c as dsc  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "100M"
if name not in B.CMP_CONFIGS:
    raise SystemExit(f"profile_train_step: config: expected one of {sorted(B.CMP_CONFIGS)}, got {name!r}")
make, batch, seq = B.CMP_CONFIGS[name]
cfg = make()
m = dsc.Model(cfg, seed=0)
rng = np.random.default_rng(0)
tok = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
    t = time.perf_counter()
    m.train_step(tok[:, :-1], tok[:, 1:])
    print(i, round(time.perf_counter() - t, 4), flush=True)
