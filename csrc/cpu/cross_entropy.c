/*
 * cpu/cross_entropy.c -- fused softmax cross-entropy over the vocabulary on the CPU (the
 * reference for kernels/cross_entropy.cu).
 *
 * Legend: N rows (tokens), V vocabulary (classes), t_n the target of row n.
 *
 *   m_n   = max_j x_nj
 *   lse_n = m_n + log(sum_j exp(x_nj - m_n))         (the sum in double)
 *   loss  = sum_{n valid} (lse_n - x_n,t_n) / n_valid   (0 when no row is valid)
 *   dlogits_nj = grad_scale / n_valid * (exp(x_nj - m_n) / sum_n - [j == t_n]),
 *                0 on rows whose target is ignore_index
 *
 * dlogits may alias logits: a row's max, sum and target logit are read before the row
 * is overwritten, and each element is read before it is written.
 * Determinism: rows are independent; the per-row losses are kept (double) and summed
 * serially in row order, whatever the thread count.
 */
#include <math.h>

#include "cpu_common.h"

static inline int64_t target_at(int tgt64, const void *targets, int64_t i) {
  return tgt64 ? ((const int64_t *)targets)[i] : (int64_t)((const int32_t *)targets)[i];
}

dsc_status dsc_cpu_cross_entropy(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                 const void *logits /* [N,V] dt */, int tgt64,
                                 const void *targets /* [N] int32|int64 */,
                                 int64_t ignore_index, float grad_scale,
                                 float *loss /* [1] */,
                                 void *dlogits /* [N,V] dt or NULL, may alias logits */,
                                 float *lse /* [N] or NULL */) {
  const int64_t es = dsc_cpu_esize(dt);
  /* Valid rows first: every gradient is divided by their count. */
  int64_t n_valid = 0;
  for (int64_t n = 0; n < N; ++n) n_valid += target_at(tgt64, targets, n) != ignore_index;
  if (N == 0) {
    loss[0] = 0.0f;
    return DSC_OK;
  }
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)N * sizeof(double), &ws));
  double *row_loss = (double *)ws; /* [N]: lse - x_t, 0 for ignored rows */
  /* The gradient's common factor grad_scale / n_valid (unused when n_valid == 0). */
  const float gscale = n_valid > 0 ? (float)((double)grad_scale / (double)n_valid) : 0.0f;

#ifdef _OPENMP
#pragma omp parallel for num_threads(ctx->num_threads) schedule(static) if (N * V >= DSC_CPU_PAR_MIN)
#endif
  for (int64_t n = 0; n < N; ++n) {
    const void *xr = (const char *)logits + n * V * es; /* [V] */
    const int64_t t = target_at(tgt64, targets, n);
    const int valid = t != ignore_index;
    /* Max first, so every exp argument is <= 0 (no overflow). NaN logits propagate
     * through the sum below. */
    float m = -INFINITY;
    for (int64_t j = 0; j < V; ++j) {
      const float v = dsc_cpu_ld(dt, xr, j);
      if (v > m) m = v;
    }
    double s = 0.0;
    for (int64_t j = 0; j < V; ++j) s += (double)expf(dsc_cpu_ld(dt, xr, j) - m);
    const double lse_d = (double)m + log(s);
    row_loss[n] = valid ? lse_d - (double)dsc_cpu_ld(dt, xr, t) : 0.0;
    if (lse) lse[n] = (float)lse_d;
    if (dlogits) {
      void *dr = (char *)dlogits + n * V * es; /* [V] */
      if (!valid) {
        for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, 0.0f);
      } else {
        const float inv_s = (float)(1.0 / s);
        for (int64_t j = 0; j < V; ++j) {
          const float p = expf(dsc_cpu_ld(dt, xr, j) - m) * inv_s; /* softmax_j */
          dsc_cpu_st(dt, dr, j, (p - (j == t ? 1.0f : 0.0f)) * gscale);
        }
      }
    }
  }

  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) total += row_loss[n]; /* row order: deterministic */
  loss[0] = n_valid > 0 ? (float)(total / (double)n_valid) : 0.0f;
  return DSC_OK;
}
