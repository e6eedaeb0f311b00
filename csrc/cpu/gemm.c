/*
 * cpu/gemm.c -- row-major GEMM on the CPU through CBLAS (scipy-openblas32, whose symbols
 * carry the scipy_ prefix). The reference for the cuBLASLt path in kernels/gemm.cu.
 *
 * Legend: M rows of C, N columns of C, K the inner dim; Bt the batch (`batch`).
 *   op(A) [M,K] is A stored [M,K] (lda >= K), or A stored [K,M] (lda >= M) with trans_a;
 *   op(B) [K,N] is B stored [K,N] (ldb >= N), or B stored [N,K] (ldb >= K) with trans_b;
 *   C [M,N] (ldc >= N).  lda/ldb/ldc are row strides, sA/sB/sC batch strides, in elements.
 *
 *   C = alpha * op(A) @ op(B) + beta * C, accumulated in float32 by sgemm.
 *   float32: sgemm straight on the caller's memory.
 *   bfloat16: A and B are widened exactly to float32 in the workspace, sgemm writes a
 *   float32 C (widened from C first when beta != 0), which is rounded once to bf16.
 *   beta == 0 overwrites C (a NaN in C does not leak), as BLAS specifies.
 *
 * BLAS integers (blasint) are 32-bit here: dims and strides >= 2^31 are UNSUPPORTED.
 * Determinism: OpenBLAS splits sgemm over M/N, never over K, so a C element's sum order
 * does not depend on the thread count.
 */
#include <cblas.h>

#include "cpu_common.h"

static const char *const FN_GEMM = "dsc_cpu_gemm";

/* OpenBLAS has its own thread pool; make it use the context's thread count. The setting
 * is process-wide, so only touch it when it differs (changing it is not free). */
static void blas_threads(const dsc_context *ctx) {
  if (scipy_openblas_get_num_threads() != ctx->num_threads)
    scipy_openblas_set_num_threads(ctx->num_threads);
}

/* All of a BLAS call's integers must fit in the 32-bit blasint. */
static dsc_status check_blasint(const char *fn, int64_t M, int64_t N, int64_t K, int64_t lda,
                                int64_t ldb, int64_t ldc) {
  const int64_t lim = INT32_MAX;
  if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim)
    return dsc_error(DSC_ERR_UNSUPPORTED, fn,
                     "M, N, K, lda, ldb, ldc: expected values < 2^31 (32-bit BLAS), got %lld, "
                     "%lld, %lld, %lld, %lld, %lld",
                     (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb,
                     (long long)ldc);
  return DSC_OK;
}

/* dst[r, c] = (float)src[r, c] for a rows x cols block; src has row stride ld (elements),
 * dst is packed (row stride cols). */
static void widen(const dsc_context *ctx, dsc_dtype dt, int64_t rows, int64_t cols,
                  const void *src /* [rows, ld] dt */, int64_t ld,
                  float *dst /* [rows, cols] */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (rows * cols >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const void *s = (const char *)src + r * ld * es; /* [cols] */
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = dsc_cpu_ld(dt, s, c);
  }
}

/* dst[r, c] = round(src[r, c]); src packed float32, dst with row stride ld. */
static void narrow(const dsc_context *ctx, dsc_dtype dt, int64_t rows, int64_t cols,
                   const float *src /* [rows, cols] */, void *dst /* [rows, ld] dt */,
                   int64_t ld) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (rows * cols >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    void *d = (char *)dst + r * ld * es; /* [cols] */
    for (int64_t c = 0; c < cols; ++c) dsc_cpu_st(dt, d, c, src[r * cols + c]);
  }
}

/* C = beta * C for a K == 0 product (BLAS would reject lda = 0); beta == 0 writes zeros. */
static void scale_c(dsc_dtype dt, int64_t M, int64_t N, float beta, void *C /* [M, ldc] dt */,
                    int64_t ldc) {
  const int64_t es = dsc_cpu_esize(dt);
  for (int64_t r = 0; r < M; ++r) {
    void *c = (char *)C + r * ldc * es; /* [N] */
    for (int64_t j = 0; j < N; ++j)
      dsc_cpu_st(dt, c, j, beta == 0.0f ? 0.0f : beta * dsc_cpu_ld(dt, c, j));
  }
}

/* The one float32 sgemm call every path ends in. */
static void sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K,
                    alpha, A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

dsc_status dsc_cpu_gemm(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b, int64_t M,
                        int64_t N, int64_t K, float alpha,
                        const void *A /* [Bt] x op(A) [M,K], stored with row stride lda */,
                        int64_t lda,
                        const void *B /* [Bt or 1] x op(B) [K,N], stored with row stride ldb */,
                        int64_t ldb, float beta, void *C /* [Bt, M, ldc] */, int64_t ldc,
                        int64_t batch, int64_t sA, int64_t sB, int64_t sC) {
  if (M == 0 || N == 0 || batch == 0) return DSC_OK;
  const int64_t es = dsc_cpu_esize(dt);
  if (K == 0) { /* an empty sum: C = beta * C */
    for (int64_t b = 0; b < batch; ++b) scale_c(dt, M, N, beta, (char *)C + b * sC * es, ldc);
    return DSC_OK;
  }
  DSC_TRY(check_blasint(FN_GEMM, M, N, K, lda, ldb, ldc));
  blas_threads(ctx);

  if (dt == DSC_DTYPE_FLOAT32) {
    for (int64_t b = 0; b < batch; ++b) {
      sgemm(trans_a, trans_b, M, N, K, alpha, (const float *)A + b * sA, lda,
            (const float *)B + b * sB, ldb, beta, (float *)C + b * sC, ldc);
    }
    return DSC_OK;
  }

  /* bfloat16: stored shapes of one batch item of A and B. */
  const int64_t ra = trans_a ? K : M, ca = trans_a ? M : K; /* A stored [ra, ca] */
  const int64_t rb = trans_b ? N : K, cb = trans_b ? K : N; /* B stored [rb, cb] */
  /* One workspace request, split in three: fA [ra,ca], fB [rb,cb], fC [M,N] (float32).
   * One batch item at a time keeps it small; a shared B (sB == 0) is widened once. */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(ra * ca + rb * cb + M * N) * sizeof(float), &ws));
  float *fA = (float *)ws;  /* [ra, ca] */
  float *fB = fA + ra * ca; /* [rb, cb] */
  float *fC = fB + rb * cb; /* [M, N] */
  for (int64_t b = 0; b < batch; ++b) {
    const void *Ab = (const char *)A + b * sA * es; /* stored [ra, lda] */
    const void *Bb = (const char *)B + b * sB * es; /* stored [rb, ldb] */
    void *Cb = (char *)C + b * sC * es;             /* [M, ldc] */
    widen(ctx, dt, ra, ca, Ab, lda, fA);
    if (b == 0 || sB != 0) widen(ctx, dt, rb, cb, Bb, ldb, fB);
    if (beta != 0.0f) widen(ctx, dt, M, N, Cb, ldc, fC); /* beta == 0: C is not read */
    sgemm(trans_a, trans_b, M, N, K, alpha, fA, ca, fB, cb, beta, fC, N);
    narrow(ctx, dt, M, N, fC, Cb, ldc);
  }
  return DSC_OK;
}

dsc_status dsc_cpu_gemm_f32out(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b,
                               int64_t M, int64_t N, int64_t K, float alpha,
                               const void *A /* op(A) [M,K], stored with row stride lda, dt */,
                               int64_t lda,
                               const void *B /* op(B) [K,N], stored with row stride ldb, dt */,
                               int64_t ldb, float beta, float *C /* [M, ldc] float32 */,
                               int64_t ldc) {
  if (M == 0 || N == 0) return DSC_OK;
  if (K == 0) {
    scale_c(DSC_DTYPE_FLOAT32, M, N, beta, C, ldc);
    return DSC_OK;
  }
  DSC_TRY(check_blasint("dsc_cpu_gemm_f32out", M, N, K, lda, ldb, ldc));
  blas_threads(ctx);
  if (dt == DSC_DTYPE_FLOAT32) {
    sgemm(trans_a, trans_b, M, N, K, alpha, (const float *)A, lda, (const float *)B, ldb, beta,
          C, ldc);
    return DSC_OK;
  }
  /* bfloat16 operands: widen both, then sgemm straight into the float32 C. */
  const int64_t ra = trans_a ? K : M, ca = trans_a ? M : K; /* A stored [ra, ca] */
  const int64_t rb = trans_b ? N : K, cb = trans_b ? K : N; /* B stored [rb, cb] */
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(ra * ca + rb * cb) * sizeof(float), &ws));
  float *fA = (float *)ws;  /* [ra, ca] */
  float *fB = fA + ra * ca; /* [rb, cb] */
  widen(ctx, dt, ra, ca, A, lda, fA);
  widen(ctx, dt, rb, cb, B, ldb, fB);
  sgemm(trans_a, trans_b, M, N, K, alpha, fA, ca, fB, cb, beta, C, ldc);
  return DSC_OK;
}
