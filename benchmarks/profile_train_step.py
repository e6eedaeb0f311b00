"""Where the CPU training step's time goes: a few train steps of bench_train's ~100M config
(batch 4 x 256, no MTP) to run under `perf record`, skipping model creation and warm-up:

    OMP_NUM_THREADS=1 perf record -D 25000 -F 499 -o p.data python benchmarks/profile_train_step.py 9
    perf report -i p.data --sort dso,symbol --stdio

(-D: milliseconds before recording starts; set it past the "1 ..." line on your machine.)
Prints each step's seconds."""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as B  # noqa: E402
import deepseek_c as dsc  # noqa: E402

cfg = B.config_100m(16000)
cfg.num_nextn_predict_layers = 0
m = dsc.Model(cfg, seed=0)
rng = np.random.default_rng(0)
tok = rng.integers(0, 16000, (4, 257)).astype(np.int32)
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    t = time.perf_counter()
    m.train_step(tok[:, :-1], tok[:, 1:])
    print(i, round(time.perf_counter() - t, 3), flush=True)
