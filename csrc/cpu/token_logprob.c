/*
 * cpu/token_logprob.c -- per-token log-probabilities of targets under softmax(logits), and
 * their backward, on the CPU (the reference for kernels/token_logprob.cu).
 *
 * Legend: N rows (tokens), V vocabulary, t_n the target of row n, x_n the row's logits.
 *
 *   m_n   = max_j x_nj,  s_n = sum_j exp(x_nj - m_n)   (the sum in double)
 *   lse_n = m_n + log(s_n)
 *   logprob_n = x_n,t_n - lse_n                          (0 on ignored rows)
 *   entropy_n = lse_n - sum_j p_nj x_nj,  p_nj = exp(x_nj - m_n) / s_n   (0 on ignored rows;
 *               a term with p_nj = 0 is skipped, so a -inf logit does not make 0 * inf)
 *   backward: dlogits_nj = dlogprobs_n * ([j == t_n] - p_nj)   (0 on ignored rows)
 *
 * Rows are independent (OpenMP over rows); every row's result is computed in one fixed
 * order, so the bits do not depend on the thread count. dlogits may alias logits: a row's
 * max, sum and target logit are read before the row is written, and each element is read
 * before it is written.
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

/* m = max_j x_j (NaN never becomes the max: it propagates through its exp); e [V] =
 * exp(x - m); returns sum_j e_j in double, summed in j order. */
static double row_exp_sum(int64_t V, const float *x /* [V] */, float *e /* [V] */, float *mout) {
  float m = -INFINITY;
  for (int64_t j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  double s = 0.0;
  for (int64_t j = 0; j < V; ++j) {
    e[j] = dsc_vm_exp(x[j] - m);
    s += (double)e[j];
  }
  *mout = m;
  return s;
}

/* The row in float32: x itself (float32) or its widened copy in xw [V]. */
static const float *row_f32(dsc_dtype dt, const void *logits, int64_t n, int64_t V, float *xw) {
  const void *xr = (const char *)logits + n * V * dsc_cpu_esize(dt);
  if (dt == DSC_DTYPE_FLOAT32) return (const float *)xr;
  for (int64_t j = 0; j < V; ++j) xw[j] = dsc_cpu_ld(dt, xr, j);
  return xw;
}

dsc_status dsc_cpu_token_logprob(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                 const void *logits /* [N,V] dt */, int tgt64,
                                 const void *targets /* [N] int32|int64 */, int64_t ignore_index,
                                 float *logprobs /* [N] */, float *entropy /* [N] or NULL */) {
  if (N == 0) return DSC_OK;
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  void *ws = NULL;
  /* per thread: the row in float32 [V] and its exps [V] */
  DSC_TRY(dsc_workspace(ctx, (size_t)nthr * 2 * (size_t)V * sizeof(float), &ws));
  float *rows = (float *)ws; /* [nthr, 2, V] */

  DSC_CPU_FOR(N * V >= DSC_CPU_PAR_MIN, nthr, n, N,
#ifdef _OPENMP
    float *xw = rows + (int64_t)omp_get_thread_num() * 2 * V; /* [V] */
#else
    float *xw = rows;
#endif
    float *e = xw + V; /* [V] exp(x - m) */
    const int64_t t = target_at(tgt64, targets, n, V, ignore_index);
    if (t == ignore_index) {
      logprobs[n] = 0.0f;
      if (entropy) entropy[n] = 0.0f;
    } else {
      const float *x = row_f32(dt, logits, n, V, xw);
      float m;
      const double s = row_exp_sum(V, x, e, &m);
      const double lse = (double)m + log(s);
      logprobs[n] = (float)((double)x[t] - lse);
      if (entropy) {
        double px = 0.0; /* sum_j e_j x_j, then / s */
        for (int64_t j = 0; j < V; ++j)
          if (e[j] != 0.0f) px += (double)e[j] * (double)x[j];
        entropy[n] = (float)(lse - px / s);
      }
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_token_logprob_bwd(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V,
                                     const void *logits /* [N,V] dt */, int tgt64,
                                     const void *targets /* [N] int32|int64 */,
                                     int64_t ignore_index, const float *dlogprobs /* [N] */,
                                     void *dlogits /* [N,V] dt, may alias logits */) {
  if (N == 0) return DSC_OK;
  const int64_t es = dsc_cpu_esize(dt);
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)nthr * 2 * (size_t)V * sizeof(float), &ws));
  float *rows = (float *)ws; /* [nthr, 2, V] */

  DSC_CPU_FOR(N * V >= DSC_CPU_PAR_MIN, nthr, n, N,
#ifdef _OPENMP
    float *xw = rows + (int64_t)omp_get_thread_num() * 2 * V; /* [V] */
#else
    float *xw = rows;
#endif
    float *e = xw + V; /* [V] */
    void *dr = (char *)dlogits + n * V * es; /* [V] */
    const int64_t t = target_at(tgt64, targets, n, V, ignore_index);
    if (t == ignore_index) {
      for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, 0.0f);
    } else {
      /* x may be the very row dr is: everything is read (into e) before the first store */
      const float *x = row_f32(dt, logits, n, V, xw);
      float m;
      const double s = row_exp_sum(V, x, e, &m);
      const float inv_s = (float)(1.0 / s), g = dlogprobs[n];
      for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, -g * (e[j] * inv_s));
      dsc_cpu_st(dt, dr, t, g * (1.0f - e[t] * inv_s));
    }
  );
  return DSC_OK;
}
