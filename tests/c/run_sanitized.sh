#!/usr/bin/env bash
# Builds the CPU core (csrc/core, ops, cpu, model) together with each C test program
# (tests/c/test_core.c, test_model_io.c, test_model_train.c, test_generate.c, test_calc.c) under AddressSanitizer +
# UndefinedBehaviorSanitizer and runs it (test_model_train twice: the host-driven training step
# and, with DSC_DEVICE_STEP=1, the step without the host). Used by CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=tests/c/build
mkdir -p "$out"
blas_inc=$(python -c "import scipy_openblas32 as s; print(s.get_include_dir())")
blas_lib=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
cc=${CC:-gcc}
for t in test_core test_model_io test_model_train test_generate test_calc test_comm; do
  $cc -std=c11 -g -O1 -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=undefined \
      -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter \
      -DDSC_BLAS_NAME='"scipy-openblas32"' -Icsrc/include -Icsrc/core -I"$blas_inc" \
      csrc/core/*.c csrc/ops/*.c csrc/cpu/*.c csrc/model/*.c csrc/dist/*.c "tests/c/$t.c" -pthread \
      -L"$blas_lib" -lscipy_openblas -Wl,-rpath,"$blas_lib" -lm -o "$out/${t}_asan"
  # OpenBLAS's own threads are not instrumented; keep them out of the way.
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=2 ASAN_OPTIONS=detect_leaks=1 "$out/${t}_asan"
done
# The training step without the host (the GPU's flow) on the CPU, under the sanitizers too.
DSC_DEVICE_STEP=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=2 ASAN_OPTIONS=detect_leaks=1 "$out/test_model_train_asan"
