/*
 * cpu_common.h -- small helpers shared by the CPU backend files in csrc/cpu.
 *
 * The CPU backend computes in float32: a bfloat16 element is widened exactly when it
 * is loaded and rounded (nearest even) once when the float32 result is stored.
 * `dt` is DSC_DTYPE_FLOAT32 or DSC_DTYPE_BFLOAT16 (the ops layer has checked it).
 */
#ifndef DSC_CPU_COMMON_H_
#define DSC_CPU_COMMON_H_

#include <stdint.h>

#include "backend.h"
#include "numeric.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements of work a parallel region costs more than it saves. */
#define DSC_CPU_PAR_MIN ((int64_t)16384)

/* DSC_CPU_FOR(par, nt, var, n, body...): for (int64_t var = 0; var < n; ++var) { body },
 * split over an OpenMP team of nt threads (schedule(static); DSC_CPU_FOR_DYN:
 * schedule(dynamic, 1)) only when `par`. A region whose if() clause is false still enters
 * libgomp (a team of one: ~0.3 us, and a futex wake when the pool was bigger), which adds
 * up over the ~100 tiny ops of a decode step; here the serial case is a plain loop. The
 * body is the same code either way (it may contain commas). */
#ifdef _OPENMP
#define DSC_CPU_PRAGMA_(x) _Pragma(#x)
#define DSC_CPU_FOR_(par, nt, sched, var, n, ...)                                   \
  do {                                                                              \
    const int64_t dsc_for_n_ = (n);                                                 \
    if (par) {                                                                      \
      DSC_CPU_PRAGMA_(omp parallel for num_threads(nt) schedule(sched))             \
      for (int64_t var = 0; var < dsc_for_n_; ++var) { __VA_ARGS__ }                \
    } else {                                                                        \
      for (int64_t var = 0; var < dsc_for_n_; ++var) { __VA_ARGS__ }                \
    }                                                                               \
  } while (0)
#define DSC_CPU_FOR(par, nt, var, n, ...) DSC_CPU_FOR_(par, nt, static, var, n, __VA_ARGS__)
#define DSC_CPU_FOR_DYN(par, nt, var, n, ...) DSC_CPU_FOR_(par, nt, dynamic, var, n, __VA_ARGS__)
#else
#define DSC_CPU_FOR(par, nt, var, n, ...)                                           \
  do {                                                                              \
    const int64_t dsc_for_n_ = (n);                                                 \
    for (int64_t var = 0; var < dsc_for_n_; ++var) { __VA_ARGS__ }                  \
  } while (0)
#define DSC_CPU_FOR_DYN DSC_CPU_FOR
#endif

/* ---- BLAS inside the backends' own parallel regions (cpu/gemm.c) ----------------------
 * OpenBLAS's thread pool and our OpenMP team must not both split one product: a region that
 * runs many small GEMMs at once (one per head) first calls dsc_cpu_blas_serial() (OpenBLAS
 * then computes each call on the calling thread; the next dsc_cpu_gemm restores the
 * context's count), then dsc_cpu_sgemm_raw from each thread. A single-threaded sgemm's
 * result does not depend on which thread runs it. Row-major, float32, dims < 2^31 (the
 * caller knows), K >= 1. */
void dsc_cpu_blas_serial(void);
/* The float32 GEMM every CPU path takes (small-M kernels or blocked single-threaded sgemm;
 * see gemm.c): row-major C[M,N] = alpha*op(A)@op(B) + beta*C. Its bits do not depend on the
 * thread count nor on being called inside a parallel region (then it runs on the caller's
 * thread), so per-expert GEMMs in a parallel loop equal the sequential ones. */
void dsc_cpu_sgemm(const dsc_context *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                   float *C, int64_t ldc);
void dsc_cpu_sgemm_raw(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                       float *C, int64_t ldc);

/* Element i of a float32 or bfloat16 array, as float32. */
static inline float dsc_cpu_ld(dsc_dtype dt, const void *p, int64_t i) {
  return dt == DSC_DTYPE_BFLOAT16 ? dsc_bf16_to_f32(((const uint16_t *)p)[i])
                                  : ((const float *)p)[i];
}

/* Store float32 v as element i of a float32 or bfloat16 array (bf16: rounded). */
static inline void dsc_cpu_st(dsc_dtype dt, void *p, int64_t i, float v) {
  if (dt == DSC_DTYPE_BFLOAT16)
    ((uint16_t *)p)[i] = dsc_f32_to_bf16(v);
  else
    ((float *)p)[i] = v;
}

/* Bytes per element of a float dtype. */
static inline int64_t dsc_cpu_esize(dsc_dtype dt) { return dt == DSC_DTYPE_BFLOAT16 ? 2 : 4; }

#endif /* DSC_CPU_COMMON_H_ */
