"""Summarize one gpu_suite.sh run into DIR/gpu_suite.json: device, date, commit, the status and
time of each stage, the CUDA tests' closing line, every benchmark's numbers, and each target
of the project (FP8 GEMM, grouped FP8 GEMM, MLA decode, routing, training MFU, MTP decoding)
with the measured value and its % of the target.

    python benchmarks/gpu_summary.py DIR     # DIR: the suite's output folder

A target whose benchmark row is missing is listed with value None and the reason, never
skipped silently. Prints one line per target.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path: str) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _rows(doc: Any, key: str = "results") -> list:
    if not isinstance(doc, dict):
        return []
    for k in (key, "rows", "cases", "results"):
        if isinstance(doc.get(k), list):
            return [r for r in doc[k] if isinstance(r, dict)]
    return []


def _first(rows: list, pred: Callable[[dict], bool]) -> Optional[dict]:
    return next((r for r in rows if pred(r)), None)


def _num(r: Optional[dict], *keys: str) -> Optional[float]:
    for k in keys:
        v = (r or {}).get(k)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def targets(d: str) -> list:
    """(name, value, unit, target, higher_is_better, source) for each target of the project."""
    fp8, moe, mla = (_rows(_load(os.path.join(d, f))) for f in ("fp8.json", "moe.json", "mla.json"))
    train = _rows(_load(os.path.join(d, "train.json")), "rows")
    dec = _rows(_load(os.path.join(d, "decode.json")), "rows")
    out = []

    g = _first(fp8, lambda r: r.get("op") == "fp8_gemm" and "16384" in str(r.get("shape")) and "4096" in str(r.get("shape")))
    out.append(("FP8 GEMM 4096x7168x16384", _num(g, "tflop_s"), "TFLOP/s", 1000.0, True, "fp8.json"))
    out.append(("FP8 GEMM vs cuBLASLt BF16, same shape", _num(g, "speedup_vs_bf16", "speedup"), "x", 1.5, True, "fp8.json"))
    g = _first(fp8, lambda r: str(r.get("op", "")).startswith("fp8_grouped_gemm") and "mask" not in str(r.get("op")))
    out.append(("grouped FP8 GEMM, contiguous", _num(g, "tflop_s"), "TFLOP/s", 900.0, True, "fp8.json"))
    g = _first(fp8, lambda r: "mask" in str(r.get("op", "")))
    out.append(("grouped FP8 GEMM, masked", _num(g, "tflop_s"), "TFLOP/s", 900.0, True, "fp8.json"))
    # the best of the cache dtypes (bf16, fp8) and contexts (4096, 8192) at batch 128, 128 heads
    dec_rows = [r for r in mla if r.get("kind") in ("decode", "gpu_decode") and r.get("H") == 128
                and r.get("B") == 128 and _num(r, "cache_GBps", "gb_s") is not None]
    best = max((_num(r, "cache_GBps", "gb_s") for r in dec_rows), default=None)
    out.append(("MLA decode, batch 128, 128 heads", best, "GB/s", 2500.0, True, "mla.json"))
    g = _first(moe, lambda r: r.get("case") == "route" and str(r.get("shape", "")).startswith("4096x256"))
    out.append(("MoE routing 4096 x 256", _num(g, "us"), "us", 20.0, False, "moe.json"))
    g = _first(train, lambda r: r.get("config") == "100M" and r.get("dtype") == "bfloat16" and not r.get("fp8")
               and r.get("moments") == "float32")
    out.append(("training MFU, ~100M config, bfloat16", _num(g, "mfu"), "of peak", 0.40, True, "train.json"))
    # the trained demo model (MTP acceptance means something only on a trained model)
    mtp = _first(dec, lambda r: r.get("model") == "demo" and r.get("batch") == 1 and r.get("mode") == "mtp"
                 and r.get("num_draft") == 1)
    out.append(("MTP decoding speedup, batch 1 (trained demo)", _num(mtp, "speedup_vs_plain"), "x", 1.6, True,
                "decode.json"))
    return out


def main() -> None:
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: python benchmarks/gpu_summary.py DIR (the gpu_suite.sh output folder)")
    d = sys.argv[1]
    env = {}
    if os.path.exists(os.path.join(d, "gpu_env.txt")):
        with open(os.path.join(d, "gpu_env.txt")) as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
        env = {"lines": lines}
        for ln in lines:
            m = re.match(r"(date|commit): (.*)", ln)
            if m:
                env[m.group(1)] = m.group(2)
    stages = []
    if os.path.exists(os.path.join(d, "stages.tsv")):
        with open(os.path.join(d, "stages.tsv")) as fh:
            for ln in fh:
                p = ln.rstrip("\n").split("\t")
                if len(p) == 3:
                    stages.append(dict(stage=p[0], exit_status=int(p[1]), seconds=int(p[2])))
    tests = None
    if os.path.exists(os.path.join(d, "cuda_tests.log")):
        with open(os.path.join(d, "cuda_tests.log")) as fh:
            tail = [ln.strip() for ln in fh if re.search(r"\d+ (passed|failed|error)", ln)]
        tests = tail[-1] if tail else None
    rows = []
    for name, value, unit, target, higher, src in targets(d):
        if value is None:
            rows.append(dict(target=name, value=None, unit=unit, goal=target, met=None,
                             reason=f"no matching row in {src}"))
            print(f"{name:42s} {'-':>10}  (goal {target} {unit}; no row in {src})")
            continue
        pct = 100 * (value / target if higher else target / value)
        met = value >= target if higher else value <= target
        rows.append(dict(target=name, value=round(value, 4), unit=unit, goal=target, pct_of_goal=round(pct, 1), met=met))
        print(f"{name:42s} {value:10.3f} {unit:8s} goal {'>=' if higher else '<='} {target:<7} {pct:6.1f}%  "
              f"{'met' if met else 'NOT met'}")
    bench = {f[:-5]: _load(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.endswith(".json") and f != "gpu_suite.json"}
    summary = dict(device=env.get("lines", [None, None, None])[2] if len(env.get("lines", [])) > 2 else None,
                   date=env.get("date"), commit=env.get("commit"), env=env.get("lines"), stages=stages,
                   cuda_tests=tests, targets=rows, benchmarks=bench)
    with open(os.path.join(d, "gpu_suite.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print("wrote", os.path.join(d, "gpu_suite.json"))


if __name__ == "__main__":
    main()
