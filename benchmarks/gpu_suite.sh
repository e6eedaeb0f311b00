#!/usr/bin/env bash
# One call on the GPU machine proves the GPU path: build with CUDA, run the CUDA tests
# (every kernel against the CPU, the zero-sync/zero-allocation step checks), then the GPU
# benchmarks, and leave logs plus one summary JSON (gpu_suite.json) under $OUT (default
# benchmarks/results/gpu_<date>/). Budget: under 8 minutes on an H200; every stage has its
# own time limit, and a failed build or a build without CUDA stops the run at once with a
# line saying why.
#
# The GPU machine reaches no package registry. Carry wheels for what it lacks (at least
# scipy-openblas32, ml_dtypes, pytest) in .whl/ (see CONTRIBUTING.md), then:
#   bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu_$(date -u +%F)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PATH="$PATH:/usr/local/cuda/bin"
t0=$(date +%s)
stages="$out/stages.tsv"
: > "$stages"
say() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
# run NAME LIMIT_S CMD...: one stage, its log in $out/NAME.log, its status in stages.tsv
run() {
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  say "$name (limit ${limit} s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$out/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - s ))" >> "$stages"
  [ "$rc" = 124 ] && echo "!! $name: ran past its ${limit} s limit"
  [ "$rc" != 0 ] && echo "!! $name: exit status $rc (log: $out/$name.log)"
  return "$rc"
}
fail() { echo "!! gpu_suite: $*"; python3 benchmarks/gpu_summary.py "$out" || true; exit 1; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || fail "the carried wheels in .whl/ did not install"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
} | tee "$out/gpu_env.txt"
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this is not a GPU machine"

# 1. Build: only the architecture of this GPU (sm_90a on Hopper) keeps the build short.
run build 300 env DSC_CUDA=1 DSC_CUDA_ARCHS="${DSC_CUDA_ARCHS:-90a}" DSC_NVCC_THREADS=8 \
  python3 -m pip install -q --no-build-isolation --no-deps . || fail "the CUDA build failed (see $out/build.log)"
run info 60 bash -c 'cd /tmp && python3 -m deepseek_c info' || fail "the installed package does not import"
(cd /tmp && python3 -c "import deepseek_c as d, sys; i = d.info(); sys.exit(0 if i.get('cuda') and i.get('devices') else 1)") \
  || fail "the build has no CUDA, or no GPU is visible to it (see $out/info.log)"

# 2. CUDA tests: parity of every kernel with the CPU, the step sync/allocation counters.
run cuda_tests 240 python3 -m pytest -q -ra -m cuda -p no:cacheprovider tests

# 3. Benchmarks, each with its % of the anchor (PERFORMANCE targets) in its JSON.
run bench_fp8 60 python3 benchmarks/bench_fp8.py --device cuda --out "$out/fp8.json"
run bench_moe 45 python3 benchmarks/bench_moe.py --device cuda --out "$out/moe.json"
run bench_mla 90 python3 benchmarks/bench_mla.py --gpu-suite --out "$out/mla.json"
run bench_train 90 python3 benchmarks/bench_train.py --device cuda --full --steps 5 \
  --dtypes float32,bfloat16 --out "$out/train.json"
run bench_decode 90 python3 benchmarks/bench_decode.py --device cuda --quick --no-hf --fp8 --out "$out/decode.json"

# 4. One JSON: device, date, commit, stage statuses and times, every benchmark's numbers,
# the targets and the % reached.
python3 benchmarks/gpu_summary.py "$out"
say "done"
awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$stages" || { echo "!! gpu_suite: some stages failed (stages.tsv)"; exit 1; }
