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
 * Determinism: every output element is produced by one thread with a fixed order of
 * operations; dw sums over rows in row order per column (parallel over columns), so
 * the result does not depend on the number of threads.
 */
#include <math.h>

#include "cpu_common.h"

/* 1/sqrt(mean(x^2) + eps) of one row, the sum of squares accumulated in double. */
static float row_rstd(dsc_dtype dt, int64_t D, const void *x /* [D] */, float eps) {
  double ss = 0.0;
  for (int64_t j = 0; j < D; ++j) {
    const double v = dsc_cpu_ld(dt, x, j);
    ss += v * v;
  }
  return (float)(1.0 / sqrt(ss / (double)D + (double)eps));
}

dsc_status dsc_cpu_rms_norm_fwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                const void *x /* [N,D] dt */, const void *w /* [D] dt */,
                                float eps, void *y /* [N,D] dt, may alias x */,
                                float *rstd /* [N] or NULL */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, n, N,
    const void *xr = (const char *)x + n * D * es; /* [D] */
    void *yr = (char *)y + n * D * es;             /* [D] */
    const float r = row_rstd(dt, D, xr, eps);
    /* Each x_j is read before y_j is written, so y may alias x. */
    for (int64_t j = 0; j < D; ++j) {
      dsc_cpu_st(dt, yr, j, dsc_cpu_ld(dt, w, j) * (dsc_cpu_ld(dt, xr, j) * r));
    }
    if (rstd) rstd[n] = r;
  );
  return DSC_OK;
}

/* Columns per task of the dw reduction: wide enough for contiguous row reads. */
#define DW_BLOCK 64

dsc_status dsc_cpu_rms_norm_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t D,
                                const void *dy /* [N,D] dt */, const void *x /* [N,D] dt */,
                                const void *w /* [D] dt */, const float *rstd /* [N] or NULL */,
                                float eps, void *dx /* [N,D] dt */, float *dw /* [D] f32 */) {
  const int64_t es = dsc_cpu_esize(dt);
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
      r_ws[n] = row_rstd(dt, D, (const char *)x + n * D * es, eps);
    );
    r_all = r_ws;
  }

  /* dw: parallel over blocks of DW_BLOCK columns; within a block the rows are summed in
   * row order (double accumulators), so the sum order never depends on the threads. */
  const int64_t nblk = (D + DW_BLOCK - 1) / DW_BLOCK;
  DSC_CPU_FOR(N * D >= DSC_CPU_PAR_MIN, ctx->num_threads, b, nblk,
    const int64_t j0 = b * DW_BLOCK;
    const int64_t nj = D - j0 < DW_BLOCK ? D - j0 : DW_BLOCK;
    double acc[DW_BLOCK]; /* [nj] */
    for (int64_t k = 0; k < nj; ++k) acc[k] = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const void *dyr = (const char *)dy + n * D * es; /* [D] */
      const void *xr = (const char *)x + n * D * es;   /* [D] */
      const float r = r_all[n];
      for (int64_t k = 0; k < nj; ++k) {
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
    double dot = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      const float g = dsc_cpu_ld(dt, dyr, j) * dsc_cpu_ld(dt, w, j);
      dot += (double)g * (double)dsc_cpu_ld(dt, xr, j);
    }
    const float c = (float)(dot / (double)D) * r * r; /* r^2 * mean(g x) */
    for (int64_t j = 0; j < D; ++j) {
      const float g = dsc_cpu_ld(dt, dyr, j) * dsc_cpu_ld(dt, w, j);
      dsc_cpu_st(dt, dxr, j, r * (g - dsc_cpu_ld(dt, xr, j) * c));
    }
  );
  return DSC_OK;
}
