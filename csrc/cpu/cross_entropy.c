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
#include "vmath.h"

/* The target of row i; one outside [0, V) (only recorded by a deferred range check:
 * dsc_context_check reports it) is treated as ignore_index. */
static inline int64_t target_at(int tgt64, const void *targets, int64_t i, int64_t V,
                                int64_t ignore_index) {
  const int64_t t = tgt64 ? ((const int64_t *)targets)[i] : (int64_t)((const int32_t *)targets)[i];
  return dsc_guard_index(t, V, ignore_index);
}

/* One float32 row: m = max_j x_j; e_j = exp(x_j - m) into e [V]; returns sum_j e_j in double,
 * accumulated in CE_LANES partial sums (lane l adds j = l, l + 8, ... in increasing j) and
 * then a fixed tree, so the AVX2 version below gives the same bits. A NaN logit never
 * becomes the max (it propagates through its exp into the sum). */
#define CE_LANES 8
static double row_exp_sum(int64_t V, const float *x /* [V] */, float *e /* [V] */, float *mout) {
  float m = -INFINITY;
  for (int64_t j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  double acc[CE_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < V; ++j) {
    e[j] = dsc_vm_exp(x[j] - m);
    acc[j % CE_LANES] += (double)e[j];
  }
  *mout = m;
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

#ifdef DSC_VM_AVX2
DSC_VM_AVX2_FN static double row_exp_sum_avx2(int64_t V, const float *x, float *e, float *mout) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + j), mv); /* NaN: keeps mv */
  float lanes[8];
  _mm256_storeu_ps(lanes, mv);
  float m = -INFINITY;
  for (int l = 0; l < 8; ++l) m = lanes[l] > m ? lanes[l] : m;
  for (; j < V; ++j) m = x[j] > m ? x[j] : m;
  const __m256 mb = _mm256_set1_ps(m);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd(); /* lanes 0-3, 4-7 */
  j = 0;
  for (; j + 8 <= V; j += 8) {
    const __m256 ev = dsc_vm_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mb));
    _mm256_storeu_ps(e + j, ev);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(ev)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(ev, 1)));
  }
  double acc[CE_LANES];
  _mm256_storeu_pd(acc, lo);
  _mm256_storeu_pd(acc + 4, hi);
  for (int l = 0; j < V; ++j, ++l) {
    e[j] = dsc_vm_exp(x[j] - m);
    acc[l] += (double)e[j];
  }
  *mout = m;
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}
#endif

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
  for (int64_t n = 0; n < N; ++n) n_valid += target_at(tgt64, targets, n, V, ignore_index) != ignore_index;
  if (N == 0) {
    loss[0] = 0.0f;
    return DSC_OK;
  }
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  void *ws = NULL;
  /* [N] doubles, then per thread a float32 row [V] (and one for a bfloat16 row's exps) */
  DSC_TRY(dsc_workspace(ctx, (size_t)N * sizeof(double) + (size_t)(nthr * 2 * V) * sizeof(float), &ws));
  double *row_loss = (double *)ws; /* [N]: lse - x_t, 0 for ignored rows */
  float *rows = (float *)(row_loss + N); /* [nthr, 2, V] */
  /* The gradient's common factor grad_scale / n_valid (unused when n_valid == 0). */
  const float gscale = n_valid > 0 ? (float)((double)grad_scale / (double)n_valid) : 0.0f;
  const int avx2 = DSC_VM_USE_AVX2(ctx);
  (void)avx2;

  DSC_CPU_FOR(N * V >= DSC_CPU_PAR_MIN, nthr, n, N,
#ifdef _OPENMP
    float *xw = rows + (int64_t)omp_get_thread_num() * 2 * V; /* [V] the row in float32 */
#else
    float *xw = rows;
#endif
    float *e = xw + V; /* [V] exp(x - m) */
    const void *xr = (const char *)logits + n * V * es; /* [V] */
    const int64_t t = target_at(tgt64, targets, n, V, ignore_index);
    const int valid = t != ignore_index;
    const float *x = (const float *)xr;
    if (dt != DSC_DTYPE_FLOAT32) {
      for (int64_t j = 0; j < V; ++j) xw[j] = dsc_cpu_ld(dt, xr, j);
      x = xw;
    }
    const float xt = valid ? x[t] : 0.0f; /* read before dlogits (may alias) is written */
    float m;
#ifdef DSC_VM_AVX2
    const double s = avx2 ? row_exp_sum_avx2(V, x, e, &m) : row_exp_sum(V, x, e, &m);
#else
    const double s = row_exp_sum(V, x, e, &m);
#endif
    const double lse_d = (double)m + log(s);
    row_loss[n] = valid ? lse_d - (double)xt : 0.0;
    if (lse) lse[n] = (float)lse_d;
    if (dlogits) {
      void *dr = (char *)dlogits + n * V * es; /* [V] */
      if (!valid) {
        for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, 0.0f);
      } else {
        const float inv_s = (float)(1.0 / s);
        /* (softmax_j - [j == t]) * gscale; p - 0 == p, so the target's term is the only
         * special one (vectorized by the compiler). */
        if (dt == DSC_DTYPE_FLOAT32) {
          float *d = (float *)dr;
          for (int64_t j = 0; j < V; ++j) d[j] = (e[j] * inv_s) * gscale;
        } else {
          for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, (e[j] * inv_s) * gscale);
        }
        dsc_cpu_st(dt, dr, t, (e[t] * inv_s - 1.0f) * gscale);
      }
    }
  );

  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) total += row_loss[n]; /* row order: deterministic */
  loss[0] = n_valid > 0 ? (float)(total / (double)n_valid) : 0.0f;
  return DSC_OK;
}
