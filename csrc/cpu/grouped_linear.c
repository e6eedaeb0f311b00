/*
 * cpu/grouped_linear.c -- the MoE expert GEMM over the contiguous (permuted) layout on
 * the CPU: one BLAS GEMM per expert on its slice of rows (through dsc_cpu_gemm, so
 * bfloat16 goes through a float32 workspace exactly like dense GEMMs). The reference for
 * the grouped GEMM in kernels/.
 *
 * Legend: E experts, R rows (all experts, padding included), K in features, N out
 *         features; expert e owns rows offs_h[e] .. offs_h[e+1]-1 (M_e rows). Rows from
 *         offs_h[E] to R (the MoE layer's row bound) are no expert's: y and dx get zeros.
 *
 *   forward:  y_e  = x_e @ w_e^T          [M_e, N]
 *   backward: dx_e = dy_e @ w_e           [M_e, K]
 *             dw_e = dy_e^T @ x_e         [N, K]   (0 when M_e = 0)
 */
#include <string.h>

#include "cpu_common.h"

/* With more than one thread, float32 experts run in parallel (each expert's GEMMs on one
 * thread through dsc_cpu_sgemm, the same path as the sequential loop: dynamic schedule over
 * experts, the results do not depend on which thread computes an expert nor on the count) once the layer has enough work: ~2^22
 * multiply-adds (a parallel region costs ~40 us to wake under OMP_WAIT_POLICY=PASSIVE). */
static int experts_in_parallel(const dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R, int64_t N,
                               int64_t K) {
  if (dt != DSC_DTYPE_FLOAT32 || ctx->num_threads <= 1 || E < 2) return 0;
  if (R > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return 0; /* dsc_cpu_gemm reports it */
#ifdef _OPENMP
  if (omp_in_parallel()) return 0;
#endif
  if ((double)R * (double)N * (double)K < 4194304.0) return 0;
  dsc_cpu_blas_serial();
  return 1;
}

/* Rows [offs_h[E], R) of an [R, cols] output belong to no expert (the MoE layer's row
 * bound, moe_internal.h): zeros, as the padding rows inside the experts come out. */
static void zero_tail(int64_t E, int64_t R, int64_t cols, int64_t es, const int32_t *offs_h, void *out) {
  const int64_t r = offs_h[E];
  if (out && r < R) memset((char *)out + r * cols * es, 0, (size_t)((R - r) * cols * es));
}

dsc_status dsc_cpu_grouped_linear_fwd(dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R,
                                      int64_t N, int64_t K, const void *x /* [R,K] dt */,
                                      const void *w /* [E,N,K] dt */,
                                      const int32_t *offsets /* [E+1] */,
                                      const int32_t *offs_h /* [E+1] host */,
                                      void *y /* [R,N] dt */) {
  (void)offsets; /* the same values as offs_h on the CPU */
  const int64_t es = dsc_cpu_esize(dt);
  zero_tail(E, R, N, es, offs_h, y);
  if (experts_in_parallel(ctx, dt, E, R, N, K)) {
    DSC_CPU_FOR_DYN(1, ctx->num_threads, e, E,
      const int64_t r0 = offs_h[e], M = offs_h[e + 1] - r0;
      if (M > 0)
        dsc_cpu_sgemm(ctx, 0, 1, M, N, K, 1.0f, (const float *)x + r0 * K, K, (const float *)w + e * N * K, K,
                      0.0f, (float *)y + r0 * N, N);
    );
    return DSC_OK;
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offs_h[e], M = offs_h[e + 1] - r0;
    if (M == 0) continue;
    DSC_TRY(dsc_cpu_gemm(ctx, dt, 0, 1, M, N, K, 1.0f, (const char *)x + r0 * K * es, K,
                         (const char *)w + e * N * K * es, K, 0.0f, (char *)y + r0 * N * es, N,
                         1, 0, 0, 0));
  }
  return DSC_OK;
}

/* The backward; dx_beta 1: dx += dy_e @ w_e instead of dx = (float32 only). */
static dsc_status grouped_bwd(dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R, int64_t N, int64_t K,
                              const void *dy, const void *x, const void *w, const int32_t *offsets,
                              const int32_t *offs_h, void *dx, float dx_beta, dsc_dtype dw_dt, void *dw) {
  (void)offsets;
  const int64_t es = dsc_cpu_esize(dt), wes = dw ? dsc_cpu_esize(dw_dt) : 0;
  if (dx_beta == 0.0f) zero_tail(E, R, K, es, offs_h, dx); /* accumulated: adds nothing there */
  if (experts_in_parallel(ctx, dt, E, R, N, K) && (!dw || dw_dt == DSC_DTYPE_FLOAT32)) {
    /* float32: each expert's dx and dw on one thread (single-threaded sgemm); dw of an expert
     * with no rows is zeros (beta 0 with K == 0 rows: written here, BLAS would refuse). */
    DSC_CPU_FOR_DYN(1, ctx->num_threads, e, E,
      const int64_t r0 = offs_h[e], M = offs_h[e + 1] - r0;
      const float *dy_e = (const float *)dy + r0 * N, *x_e = (const float *)x + r0 * K;
      if (dx && M > 0)
        dsc_cpu_sgemm(ctx, 0, 0, M, K, N, 1.0f, dy_e, N, (const float *)w + e * N * K, K, dx_beta,
                      (float *)dx + r0 * K, K);
      if (dw) {
        float *dw_e = (float *)dw + e * N * K;
        if (M > 0)
          dsc_cpu_sgemm(ctx, 1, 0, N, K, M, 1.0f, dy_e, N, x_e, K, 0.0f, dw_e, K);
        else
          memset(dw_e, 0, (size_t)(N * K) * sizeof(float));
      }
    );
    return DSC_OK;
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offs_h[e], M = offs_h[e + 1] - r0;
    const char *dy_e = (const char *)dy + r0 * N * es; /* [M, N] */
    const char *x_e = (const char *)x + r0 * K * es;   /* [M, K] */
    if (dx && M > 0) {
      DSC_TRY(dsc_cpu_gemm(ctx, dt, 0, 0, M, K, N, 1.0f, dy_e, N, (const char *)w + e * N * K * es,
                           K, dx_beta, (char *)dx + r0 * K * es, K, 1, 0, 0, 0));
    }
    if (dw) {
      void *dw_e = (char *)dw + e * N * K * wes; /* [N, K]; M == 0 writes zeros */
      if (dw_dt == dt) {
        DSC_TRY(dsc_cpu_gemm(ctx, dt, 1, 0, N, K, M, 1.0f, dy_e, N, x_e, K, 0.0f, dw_e, K, 1, 0,
                             0, 0));
      } else {
        DSC_TRY(dsc_cpu_gemm_f32out(ctx, dt, 1, 0, N, K, M, 1.0f, dy_e, N, x_e, K, 0.0f,
                                    (float *)dw_e, K));
      }
    }
  }
  return DSC_OK;
}

dsc_status dsc_cpu_grouped_linear_bwd(dsc_context *ctx, dsc_dtype dt, int64_t E, int64_t R,
                                      int64_t N, int64_t K, const void *dy /* [R,N] dt */,
                                      const void *x /* [R,K] dt */,
                                      const void *w /* [E,N,K] dt */,
                                      const int32_t *offsets /* [E+1] */,
                                      const int32_t *offs_h /* [E+1] host */,
                                      void *dx /* [R,K] dt or NULL */, dsc_dtype dw_dt,
                                      void *dw /* [E,N,K] dw_dt or NULL */) {
  return grouped_bwd(ctx, dt, E, R, N, K, dy, x, w, offsets, offs_h, dx, 0.0f, dw_dt, dw);
}

dsc_status dsc_cpu_grouped_linear_bwd_acc(dsc_context *ctx, int64_t E, int64_t R, int64_t N, int64_t K,
                                          const float *dy /* [R,N] */, const float *x /* [R,K] */,
                                          const float *w /* [E,N,K] */, const int32_t *offs /* [E+1] */,
                                          float *dx /* [R,K], accumulated */, float *dw /* [E,N,K] or NULL */) {
  return grouped_bwd(ctx, DSC_DTYPE_FLOAT32, E, R, N, K, dy, x, w, offs, offs, dx, 1.0f, DSC_DTYPE_FLOAT32, dw);
}
