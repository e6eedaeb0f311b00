#!/usr/bin/env bash
# One call on the GPU machine: build with CUDA, run the CUDA tests and CPU-vs-CUDA parity
# tests, run the GPU benchmarks, and leave logs and JSON under $OUT (or benchmarks/results).
#
# The GPU machine reaches no package registry. Carry wheels for what it lacks (at least
# scipy-openblas32, ml_dtypes, pytest) in .whl/ (see CONTRIBUTING.md), then:
#   bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PATH="$PATH:/usr/local/cuda/bin"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
} | tee "$out/gpu_env.txt"

echo "== build"
DSC_CUDA=1 DSC_CUDA_ARCHS="${DSC_CUDA_ARCHS:-90a}" DSC_NVCC_THREADS=8 \
  python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tee "$out/build.log" || exit 1
(cd /tmp && python3 -m deepseek_c info) | tee "$out/info.txt"

echo "== CUDA tests and parity"
python3 -m pytest -q -ra -m cuda tests 2>&1 | tee "$out/pytest_cuda.log"
echo "== full suite"
python3 -m pytest -q -ra tests 2>&1 | tail -5 | tee "$out/pytest_all.log"

echo "== benchmarks"
for dt in float32 bfloat16; do
  python3 benchmarks/bench_ops.py --device cuda --dtype "$dt" --out "$out/ops_cuda_$dt.json" 2>&1 | tee "$out/bench_ops_cuda_$dt.txt"
done
python3 benchmarks/bench_train.py --device cuda --full --out "$out/train_cuda.json" 2>&1 | tee "$out/bench_train_cuda.txt"
python3 benchmarks/bench_torch.py --device cuda --out "$out/torch_cuda.json" 2>&1 | tee "$out/bench_torch_cuda.txt"
if [ -f benchmarks/bench_decode.py ]; then
  python3 benchmarks/bench_decode.py --device cuda --fp8 --out "$out/decode_cuda.json" 2>&1 | tee "$out/bench_decode_cuda.txt"
fi
