/*
 * cpu/rms_norm.c -- RMSNorm forward and backward on the CPU (the reference for
 * kernels/rms_norm.cu).
 *
 * Legend: N rows (all leading dims flattened), D features (the normalized last dim).
 *
 *   forward:  r_n = 1 / sqrt(mean_j(x_nj^2) + eps)          (sum of squares in double)
 *             y_nj = w_j * (x_nj * r_n)
 *   backward: g_nj = dy_nj * w_j
 *             dx_nj = r_n * (g_nj - x_nj * r_n^2 * mean_k(g_nk * x_nk))
 *             dw_j  = sum_n dy_nj * x_nj * r_n                (float32, overwritten)
 *
 * The row sums (sum x^2, sum g x) run in 8 double lanes (lane l adds j = l, l + 8, ...) and
 * then a fixed tree; float32 rows take AVX2 code when ctx->cpu_avx2 with the same operations
 * (the same bits as the portable loops).
 * Determinism: every output element is produced by one thread with a fixed order of
 * operations; dw sums over rows in row order per column (parallel over columns), so
 * the result does not depend on the number of threads.
 */
#include <math.h>

#include "cpu_common.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define RMS_AVX2 1
#define RMS_AVX2_FN __attribute__((target("avx2")))
#endif

static inline double tree8(const double *a) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* sum_j x_j^2 in double, 8 lanes. */
static double row_ss(dsc_dtype dt, int64_t D, const void *x /* [D] */) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < D; ++j) {
    const double v = dsc_cpu_ld(dt, x, j);
    a[j % 8] += v * v;
  }
  return tree8(a);
}

/* sum_j (double)(dy_j w_j) * x_j in double, 8 lanes. */
static double row_gx(dsc_dtype dt, int64_t D, const void *dy, const void *w, const void *x) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < D; ++j) {
    const float g = dsc_cpu_ld(dt, dy, j) * dsc_cpu_ld(dt, w, j);
    a[j % 8] += (double)g * (double)dsc_cpu_ld(dt, x, j);
  }
  return tree8(a);
}

static inline float rstd_of(double ss, int64_t D, float eps) {
  return (float)(1.0 / sqrt(ss / (double)D + (double)eps));
}

#ifdef RMS_AVX2
/* 8 floats widened to two 4-double vectors. */
#define RMS_WIDEN(v, lo, hi)                                  \
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)); \
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))

RMS_AVX2_FN static double row_ss_avx2(int64_t D, const float *x) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= D; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    RMS_WIDEN(v, lo, hi);
    s0 = _mm256_add_pd(s0, _mm256_mul_pd(lo, lo));
    s1 = _mm256_add_pd(s1, _mm256_mul_pd(hi, hi));
  }
  double a[8];
  _mm256_storeu_pd(a, s0);
  _mm256_storeu_pd(a + 4, s1);
  for (int l = 0; j < D; ++j, ++l) a[l] += (double)x[j] * (double)x[j];
  return tree8(a);
}

RMS_AVX2_FN static double row_gx_avx2(int64_t D, const float *dy, const float *w, const float *x) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= D; j += 8) {
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), _mm256_loadu_ps(w + j));
    const __m256 xv = _mm256_loadu_ps(x + j);
    RMS_WIDEN(g, g0, g1);
    RMS_WIDEN(xv, x0, x1);
    s0 = _mm256_add_pd(s0, _mm256_mul_pd(g0, x0));
    s1 = _mm256_add_pd(s1, _mm256_mul_pd(g1, x1));
  }
  double a[8];
  _mm256_storeu_pd(a, s0);
  _mm256_storeu_pd(a + 4, s1);
  for (int l = 0; j < D; ++j, ++l) a[l] += (double)(dy[j] * w[j]) * (double)x[j];
  return tree8(a);
}
#endif

dsc_status dsc_cpu_rms_norm_fwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                const void *x /* [N,D] dt */, const void *w /* [D] dt */,
                                float eps, void *y /* [N,D] dt, may alias x */,
                                float *rstd /* [N] or NULL */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
  const int f32 = dt == DSC_DTYPE_FLOAT32;
#ifdef RMS_AVX2
  const int avx2 = f32 && ctx->cpu_avx2;
#endif
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, n, N,
    const void *xr = (const char *)x + n * D * es; /* [D] */
    void *yr = (char *)y + n * D * es;             /* [D] */
#ifdef RMS_AVX2
    const double ss = avx2 ? row_ss_avx2(D, (const float *)xr) : row_ss(dt, D, xr);
#else
    const double ss = row_ss(dt, D, xr);
#endif
    const float r = rstd_of(ss, D, eps);
    /* Each x_j is read before y_j is written, so y may alias x. */
    if (f32) { /* elementwise: the compiler vectorizes it, the same operations */
      const float *xf = (const float *)xr, *wf = (const float *)w;
      float *yf = (float *)yr;
      for (int64_t j = 0; j < D; ++j) yf[j] = wf[j] * (xf[j] * r);
    } else {
      for (int64_t j = 0; j < D; ++j)
        dsc_cpu_st(dt, yr, j, dsc_cpu_ld(dt, w, j) * (dsc_cpu_ld(dt, xr, j) * r));
    }
    if (rstd) rstd[n] = r;
  );
  return DSC_OK;
}

/* Columns per task of the dw reduction: wide enough for contiguous row reads, narrow enough
 * that the float64 accumulators of a block stay in registers. */
#define DW_BLOCK 32

/* The backward; res [N,D] float32 or NULL: dx = res + (the RMSNorm input gradient). */
static dsc_status rms_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D, const void *dy,
                          const void *x, const void *w, const float *rstd, float eps,
                          const float *res, void *dx, float *dw) {
  const int64_t es = dsc_cpu_esize(dt);
  const int f32 = dt == DSC_DTYPE_FLOAT32;
#ifdef RMS_AVX2
  const int avx2 = f32 && ctx->cpu_avx2;
#endif
  if (N == 0) {
    for (int64_t j = 0; j < D; ++j) dw[j] = 0.0f; /* an empty sum */
    return DSC_OK;
  }
  /* Without a saved rstd, recompute it once per row into the workspace: both the dx and
   * the dw passes need it. */
  const float *r_all = rstd; /* [N] */
  if (!r_all) {
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, (size_t)N * sizeof(float), &ws));
    float *r_ws = (float *)ws; /* [N] */
    DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, n, N,
      const void *xr = (const char *)x + n * D * es;
#ifdef RMS_AVX2
      r_ws[n] = rstd_of(avx2 ? row_ss_avx2(D, (const float *)xr) : row_ss(dt, D, xr), D, eps);
#else
      r_ws[n] = rstd_of(row_ss(dt, D, xr), D, eps);
#endif
    );
    r_all = r_ws;
  }

  /* dw: parallel over blocks of DW_BLOCK columns; within a block the rows are summed in
   * row order (double accumulators), so the sum order never depends on the threads. The
   * float32 loops are elementwise across columns (vectorized by the compiler). */
  const int64_t nblk = (D + DW_BLOCK - 1) / DW_BLOCK;
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, b, nblk,
    const int64_t j0 = b * DW_BLOCK;
    const int64_t nj = D - j0 < DW_BLOCK ? D - j0 : DW_BLOCK;
    double acc[DW_BLOCK]; /* [nj] */
    for (int64_t k = 0; k < DW_BLOCK; ++k) acc[k] = 0.0;
    if (f32 && nj == DW_BLOCK) {
      for (int64_t n = 0; n < N; ++n) {
        const float *dyr = (const float *)dy + n * D + j0, *xr = (const float *)x + n * D + j0;
        const float r = r_all[n];
        for (int64_t k = 0; k < DW_BLOCK; ++k) acc[k] += (double)(dyr[k] * (xr[k] * r));
      }
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const void *dyr = (const char *)dy + n * D * es; /* [D] */
        const void *xr = (const char *)x + n * D * es;   /* [D] */
        const float r = r_all[n];
        for (int64_t k = 0; k < nj; ++k)
          acc[k] += (double)(dsc_cpu_ld(dt, dyr, j0 + k) * (dsc_cpu_ld(dt, xr, j0 + k) * r));
      }
    }
    for (int64_t k = 0; k < nj; ++k) dw[j0 + k] = (float)acc[k];
  );

  /* dx: one row per iteration; each row is read before it is written, so (done after dw)
   * dx may even alias dy or x. */
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, n, N,
    const void *dyr = (const char *)dy + n * D * es; /* [D] */
    const void *xr = (const char *)x + n * D * es;   /* [D] */
    void *dxr = (char *)dx + n * D * es;             /* [D] */
    const float r = r_all[n];
    /* mean_k(g_k x_k) with g = dy * w, accumulated in double like the forward's sum. */
#ifdef RMS_AVX2
    const double dot = avx2 ? row_gx_avx2(D, (const float *)dyr, (const float *)w, (const float *)xr)
                            : row_gx(dt, D, dyr, w, xr);
#else
    const double dot = row_gx(dt, D, dyr, w, xr);
#endif
    const float c = (float)(dot / (double)D) * r * r; /* r^2 * mean(g x) */
    if (f32 && res) { /* the residual's gradient added (res + term: as dsc_add would) */
      const float *dyf = (const float *)dyr, *wf = (const float *)w, *xf = (const float *)xr;
      const float *rr = res + n * D;
      float *dxf = (float *)dxr;
      for (int64_t j = 0; j < D; ++j) dxf[j] = rr[j] + r * (dyf[j] * wf[j] - xf[j] * c);
    } else if (f32) {
      const float *dyf = (const float *)dyr, *wf = (const float *)w, *xf = (const float *)xr;
      float *dxf = (float *)dxr;
      for (int64_t j = 0; j < D; ++j) dxf[j] = r * (dyf[j] * wf[j] - xf[j] * c);
    } else {
      for (int64_t j = 0; j < D; ++j) {
        const float g = dsc_cpu_ld(dt, dyr, j) * dsc_cpu_ld(dt, w, j);
        dsc_cpu_st(dt, dxr, j, r * (g - dsc_cpu_ld(dt, xr, j) * c));
      }
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_rms_norm_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                const void *dy /* [N,D] dt */, const void *x /* [N,D] dt */,
                                const void *w /* [D] dt */, const float *rstd /* [N] or NULL */,
                                float eps, void *dx /* [N,D] dt */, float *dw /* [D] f32 */) {
  return rms_bwd(ctx, dt, N, D, dy, x, w, rstd, eps, NULL, dx, dw);
}

/* ---- fused with the residual add (the model's blocks, float32) ------------------------ */

dsc_status dsc_cpu_add_rms_norm_fwd(dsc_context *ctx, int64_t N, int64_t D,
                                    const float *a /* [N,D] */, const float *b /* [N,D] */,
                                    const float *w /* [D] */, float eps, float *s /* [N,D] */,
                                    float *y /* [N,D] */, float *rstd /* [N] or NULL */) {
  (void)ctx; /* read only by the OpenMP pragmas */
#ifdef RMS_AVX2
  const int avx2 = ctx->cpu_avx2;
#endif
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, n, N,
    const float *ar = a + n * D, *br = b + n * D; /* [D] */
    float *sr = s + n * D, *yr = y + n * D;        /* [D] */
    for (int64_t j = 0; j < D; ++j) sr[j] = ar[j] + br[j];
#ifdef RMS_AVX2
    const double ss = avx2 ? row_ss_avx2(D, sr) : row_ss(DSC_DTYPE_FLOAT32, D, sr);
#else
    const double ss = row_ss(DSC_DTYPE_FLOAT32, D, sr);
#endif
    const float r = rstd_of(ss, D, eps);
    for (int64_t j = 0; j < D; ++j) yr[j] = w[j] * (sr[j] * r);
    if (rstd) rstd[n] = r;
  );
  return DSC_OK;
}

dsc_status dsc_cpu_rms_norm_bwd_add(dsc_context *ctx, int64_t N, int64_t D, const float *dy /* [N,D] */,
                                    const float *x /* [N,D] */, const float *w /* [D] */,
                                    const float *rstd /* [N] or NULL */, float eps,
                                    const float *res /* [N,D] */, float *dx /* [N,D] */,
                                    float *dw /* [D] */) {
  return rms_bwd(ctx, DSC_DTYPE_FLOAT32, N, D, dy, x, w, rstd, eps, res, dx, dw);
}
