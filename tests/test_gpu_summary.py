"""benchmarks/gpu_summary.py turns a gpu_suite.sh folder into one JSON with each target's %
(checked here on a made-up folder, since no GPU runs in CI)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(d, name, doc):
    with open(os.path.join(d, name), "w") as fh:
        json.dump(doc, fh)


def test_summary_targets(tmp_path):
    d = str(tmp_path)
    with open(os.path.join(d, "gpu_env.txt"), "w") as fh:
        fh.write("date: 2026-12-03T00:00:00Z\ncommit: abc1234\nNVIDIA H200, 570, 143771 MiB, 1980 MHz\nnvcc 13\n")
    with open(os.path.join(d, "stages.tsv"), "w") as fh:
        fh.write("build\t0\t61\ncuda_tests\t1\t90\n")
    with open(os.path.join(d, "cuda_tests.log"), "w") as fh:
        fh.write("....F\n1 failed, 120 passed in 80.0s\n")
    _write(d, "fp8.json", {"results": [
        {"op": "fp8_gemm", "shape": "4096x7168x16384", "tflop_s": 1200.0, "speedup_vs_bf16": 1.2},
        {"op": "fp8_grouped_gemm", "shape": "8x4096x4096x7168", "tflop_s": 450.0},
        {"op": "fp8_grouped_gemm_masked", "shape": "4x256", "tflop_s": 300.0}]})
    _write(d, "moe.json", {"results": [{"case": "route", "shape": "4096x256 top8 g8/4", "us": 40.0}]})
    _write(d, "mla.json", {"cases": [{"kind": "gpu_decode", "B": 128, "H": 128, "cache_GBps": 2000.0},
                                     {"kind": "gpu_decode", "B": 128, "H": 128, "cache_GBps": 1500.0},
                                     {"kind": "gpu_decode", "B": 16, "H": 128, "cache_GBps": 2900.0}]})
    _write(d, "train.json", {"rows": [{"config": "100M", "dtype": "bfloat16", "fp8": False, "moments": "float32",
                                       "mfu": 0.2}]})
    _write(d, "decode.json", {"rows": [{"model": "demo", "batch": 1, "mode": "mtp", "num_draft": 1,
                                        "speedup_vs_plain": 1.7}]})
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_summary.py"), d],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.load(open(os.path.join(d, "gpu_suite.json")))
    assert s["commit"] == "abc1234" and s["device"].startswith("NVIDIA H200")
    assert s["stages"][1] == {"stage": "cuda_tests", "exit_status": 1, "seconds": 90}
    assert s["cuda_tests"] == "1 failed, 120 passed in 80.0s"
    t = {row["target"]: row for row in s["targets"]}
    assert t["FP8 GEMM 4096x7168x16384"]["pct_of_goal"] == 120.0 and t["FP8 GEMM 4096x7168x16384"]["met"]
    assert t["FP8 GEMM vs cuBLASLt BF16, same shape"]["met"] is False
    assert t["grouped FP8 GEMM, contiguous"]["value"] == 450.0
    assert t["grouped FP8 GEMM, masked"]["value"] == 300.0
    assert t["MLA decode, batch 128, 128 heads"]["pct_of_goal"] == 80.0
    assert t["MoE routing 4096 x 256"]["pct_of_goal"] == 50.0  # lower is better: 20 us goal / 40 us
    assert t["training MFU, ~100M config, bfloat16"]["pct_of_goal"] == 50.0
    assert t["MTP decoding speedup, batch 1 (trained demo)"]["met"]
    assert set(s["benchmarks"]) == {"fp8", "moe", "mla", "train", "decode"}


def test_summary_missing_rows_are_named(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_summary.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.load(open(tmp_path / "gpu_suite.json"))
    assert all(row["value"] is None and "no matching row" in row["reason"] for row in s["targets"])
    assert len(s["targets"]) == 8
