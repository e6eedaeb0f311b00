#!/usr/bin/env bash
# Fuzzes the safetensors reader and the config.json parser with libFuzzer under
# AddressSanitizer + UndefinedBehaviorSanitizer, for a bounded time. Used by CI.
#
#   bash tests/fuzz/run_fuzz.sh            # 45 s per target
#   FUZZ_SECONDS=600 bash tests/fuzz/run_fuzz.sh
#   bash tests/fuzz/run_fuzz.sh crash-...  # rerun saved inputs through both targets
#
# Targets: fuzz_safetensors.c (dsc_safetensors_open_memory: the reader dsc_safetensors_open
# runs) and fuzz_config.c (the JSON tree reader and dsc_model_config_from_json). Seeds:
# valid files the library writes and regression inputs, made by make_seeds.c; the
# dictionary json.dict. Installs clang, its libFuzzer runtime and libomp (Debian) if they
# are missing. Exits nonzero on any crash, leak, sanitizer report or broken promise; the
# input that did it is left in $FUZZ_OUT (default tests/fuzz/build/findings).
# Environment: FUZZ_SECONDS (per target, default 45), FUZZ_JOBS (compile jobs), CLANG.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${FUZZ_SECONDS:-45}
clang=${CLANG:-clang}
out=tests/fuzz/build
findings=${FUZZ_OUT:-$out/findings}
mkdir -p "$out/obj" "$findings"

have_toolchain() {
  command -v "$clang" >/dev/null 2>&1 || return 1
  printf '#include <omp.h>\n#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return omp_get_max_threads() > 0 && n > 0 && d[0] == 1; }\n' \
    >"$out/probe.c"
  "$clang" -fsanitize=fuzzer,address,undefined -fopenmp "$out/probe.c" -o "$out/probe" >/dev/null 2>&1
}
if ! have_toolchain; then
  echo "== installing clang, libFuzzer and libomp (apt-get)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  v=$(apt-cache search --names-only '^libclang-rt-[0-9]+-dev$' | sed -E 's/^libclang-rt-([0-9]+)-dev.*/\1/' | sort -n | tail -1)
  $sudo apt-get install -y -qq clang libomp-dev ${v:+libclang-rt-$v-dev} >/dev/null
  have_toolchain || { echo "run_fuzz.sh: no working clang -fsanitize=fuzzer with OpenMP" >&2; exit 1; }
fi

python=${PYTHON:-python}
if ! "$python" -c "import scipy_openblas32" 2>/dev/null; then
  "$python" -m pip install -q scipy-openblas32
fi
blas_inc=$("$python" -c "import scipy_openblas32 as s; print(s.get_include_dir())")
blas_lib=$("$python" -c "import scipy_openblas32 as s; print(s.get_lib_dir())")

echo "== building the fuzz targets ($("$clang" --version | head -1))"
flags=(-std=c11 -g -O1 -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -fno-omit-frame-pointer -Wno-unknown-pragmas -DDSC_BLAS_NAME='"scipy-openblas32"'
       -Icsrc/include -Icsrc/core -I"$blas_inc")
# the library once, as objects (instrumented for coverage by -fsanitize=fuzzer), shared by the targets
export clang out
printf '%s\n' "${flags[@]}" >"$out/flags"
ls csrc/core/*.c csrc/ops/*.c csrc/cpu/*.c csrc/model/*.c csrc/dist/*.c |
  xargs -P "${FUZZ_JOBS:-$(nproc)}" -I{} bash -c 'mapfile -t f <"$out/flags"; o="$out/obj/$(echo {} | tr / _).o"; "$clang" "${f[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}" -c {} -o "$o"'
for t in fuzz_safetensors fuzz_config; do
  "$clang" "${flags[@]}" "tests/fuzz/$t.c" "$out"/obj/*.o -L"$blas_lib" -lscipy_openblas \
    -Wl,-rpath,"$blas_lib" -lm -pthread -o "$out/$t"
done
# make_seeds (it only writes files) links the same objects, without libFuzzer's main
"$clang" "${flags[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=address,undefined}" tests/fuzz/make_seeds.c \
  "$out"/obj/*.o -L"$blas_lib" -lscipy_openblas -Wl,-rpath,"$blas_lib" -lm -pthread -o "$out/make_seeds"

export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

if [ $# -gt 0 ]; then # rerun given inputs
  status=0
  for t in fuzz_safetensors fuzz_config; do "$out/$t" "$@" || status=1; done
  exit $status
fi

rm -rf "$out/seeds" "$out/corpus"
"$out/make_seeds" "$out/seeds"
status=0
for t in safetensors config; do
  mkdir -p "$out/corpus/$t"
  echo "== fuzz_$t for ${seconds} s"
  if ! "$out/fuzz_$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
      -dict=tests/fuzz/json.dict -artifact_prefix="$findings/${t}-" -print_final_stats=1 \
      "$out/corpus/$t" "$out/seeds/$t" >"$out/fuzz_$t.log" 2>&1; then
    status=1
    echo "FAIL: fuzz_$t found a crash (input saved under $findings/):"
    grep -E "ERROR|runtime error|broken promise|SUMMARY|Test unit written" "$out/fuzz_$t.log" | head -20
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov:" "$out/fuzz_$t.log" | tail -3
done
[ $status = 0 ] && echo "== fuzzing found nothing"
exit $status
