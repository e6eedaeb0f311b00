"""The BF16 tensor-core grouped GEMM of the MoE experts (kernels/bf16_grouped_mma.cu: forward,
input gradient and weight gradient over the permuted rows, reading the expert offsets on the
device, run for float32 tensors in the BF16-operand math mode, i.e. the BF16 model): its index
math simulated on the CPU (tests/c/test_bf16_grouped_tile.c), and on a GPU the BF16 MoE model
against the CPU's and the host waits its MoE layers no longer make."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import deepseek_c as dsc
from test_model import data, small_cfg


def test_bf16_grouped_tile_header_on_cpu(tmp_path):
    """kernels/bf16_grouped_tile.cuh through tests/c/test_bf16_grouped_tile.c: the kernel's
    stage loop, fragment loads, an mma.sync m16n8k16 model from the PTX table and its stores,
    for the three MoE products (unaligned and empty groups, rows past the last group), against
    a double reference of the BF16-rounded operands."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on PATH")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = str(tmp_path / "test_bf16_grouped_tile")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-O1", os.path.join(root, "tests", "c", "test_bf16_grouped_tile.c"),
                    f"-I{dsc.get_include()}", "-lm", "-o", exe], check=True, capture_output=True, text=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed") and int(last.split()[0]) >= 10, r.stdout


def moe_cfg(**kw):
    """test_model's tiny V3 config with every block but the first an MoE block."""
    return small_cfg(first_k_dense_replace=1, **kw)


@pytest.mark.cuda
def test_cuda_bf16_moe_model_matches_cpu():
    """A BF16 MoE model on CUDA (its experts on the BF16 grouped kernel, reading the offsets
    on the device) follows the CPU's: logits within 2^-5 of the largest (2^-8 on average, the
    BF16 level test_model_bf16 states for the dense model) and three training steps' losses
    within 1%; the expert loads of the first step agree (the routing is float32 on both)."""
    cfg = moe_cfg()
    a = dsc.Model(cfg, seed=0, dtype="bfloat16")
    b = dsc.Model(cfg, device="cuda", seed=0, dtype="bfloat16")
    b.load_state_dict(a.state_dict())
    tok, y = data(cfg, B=2, T=16)
    la, lb = a.forward(tok), dsc.to_numpy(b.forward(tok))
    err = np.abs(np.asarray(la, np.float64) - np.asarray(lb, np.float64)) / np.abs(la).max()
    assert err.max() <= 2.0 ** -5 and err.mean() <= 2.0 ** -8, (err.max(), err.mean())
    for _ in range(3):
        ra, rb = a.train_step(tok, y, lr=1e-3), b.train_step(tok, y, lr=1e-3)
        assert np.isfinite(rb["loss"]) and abs(ra["loss"] - rb["loss"]) < 1e-2 * ra["loss"], (ra["loss"], rb["loss"])


def _steady_syncs(cfg, **model_kw):
    """Host waits and index checks of one steady-state CUDA training step (steps 3..4 equal)."""
    m = dsc.Model(cfg, device="cuda", seed=0, **model_kw)
    tok, y = data(cfg, B=2, T=16)
    for _ in range(2):
        m.train_step(tok, y, lr=1e-3)
    m.counters(reset=True)
    seen = []
    for _ in range(2):
        m.train_step(tok, y, lr=1e-3)
        seen.append(m.counters(reset=True))
    assert seen[0] == seen[1], seen
    return seen[0]


@pytest.mark.cuda
def test_cuda_moe_blocks_add_no_host_wait_of_the_layer():
    """A MoE block adds no host wait to a steady training step of the float32, BF16 and FP8
    models (the layer keeps its offsets on the device: the float32 experts on
    kernels/f32_grouped.cu, the BF16 ones on bf16_grouped_mma.cu; the model reads its expert
    load and balance loss with the losses, in one copy, and uploads every block's load for
    the bias update in one copy): going from one MoE block to two (same depth; the other
    block dense)."""
    d = {}
    for name, kw in (("fp32", {}), ("bf16", {"dtype": "bfloat16"}), ("fp8", {"fp8": True})):
        one = _steady_syncs(small_cfg(num_hidden_layers=3, first_k_dense_replace=2), **kw)
        two = _steady_syncs(small_cfg(num_hidden_layers=3, first_k_dense_replace=1), **kw)
        d[name] = {k: two[k] - one[k] for k in ("syncs", "copies_to_host", "index_checks")}
    print("per extra MoE block:", d)
    for name in d:
        assert d[name]["syncs"] == 0 and d[name]["copies_to_host"] == 0, d
