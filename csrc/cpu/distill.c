/*
 * cpu/distill.c -- logit distillation on the CPU (the reference for kernels/distill.cu):
 * the top-k of each row of logits, and the KL divergence of a student's softmax from a
 * teacher's top-k distribution with its gradient.
 *
 * Legend: N rows (positions), V vocabulary, K kept logits per row, tau the temperature,
 *         x_n the student's logits, (i_nk, y_nk) the teacher's top-k indices and logits.
 *
 *   top-k: the K largest x_nj by (value descending, index ascending), NaN below everything
 *   p_nk = softmax_k(y_nk / tau);  log q_nj = x_nj / tau - logsumexp_j(x_nj / tau)
 *   KL_n = sum_k p_nk (log p_nk - log q_n,i_nk)      (terms with p_nk = 0 skipped)
 *   loss = sum over valid rows of KL_n / n_valid     (double, rows in order)
 *   dlogits_nj = grad_scale / n_valid / tau * (q_nj - sum_{k: i_nk = j} p_nk), 0 on ignored rows
 *
 * Rows are independent (OpenMP over rows), each computed in a fixed order, so the bits do
 * not depend on the thread count. dlogits may alias logits: a row is read completely before
 * it is written.
 */
#include <math.h>

#include "cpu_common.h"
#include "vmath.h"

static inline int64_t idx_at(int i64, const void *p, int64_t i) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

/* (a, ia) ranks before (b, ib): larger value first, then the lower index; NaN last. */
static inline int ranks_before(float a, int64_t ia, float b, int64_t ib) {
  const int na = isnan(a), nb = isnan(b);
  if (na || nb) return na && nb ? ia < ib : nb;
  return a > b || (a == b && ia < ib);
}

dsc_status dsc_cpu_logits_topk(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,
                               const void *logits /* [N,V] dt */, float *values /* [N,K] */,
                               int idx64, void *indices /* [N,K] int32|int64 */) {
  if (N == 0) return DSC_OK;
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)nthr * (size_t)K * sizeof(int64_t), &ws));
  int64_t *bufs = (int64_t *)ws; /* [nthr, K] the kept indices of the row, best first */
  const int64_t es = dsc_cpu_esize(dt);

  DSC_CPU_FOR(N * V >= DSC_CPU_PAR_MIN, nthr, n, N,
#ifdef _OPENMP
    int64_t *top = bufs + (int64_t)omp_get_thread_num() * K; /* [K] */
#else
    int64_t *top = bufs;
#endif
    const void *xr = (const char *)logits + n * V * es; /* [V] */
    float *vr = values + n * K;                         /* [K] the kept values, best first */
    int64_t cnt = 0;
    /* insertion into a sorted list of at most K: j ascending, so an equal value never
     * overtakes an earlier index */
    for (int64_t j = 0; j < V; ++j) {
      const float v = dsc_cpu_ld(dt, xr, j);
      if (cnt == K && !ranks_before(v, j, vr[K - 1], top[K - 1])) continue;
      int64_t pos = cnt < K ? cnt++ : K - 1;
      while (pos > 0 && ranks_before(v, j, vr[pos - 1], top[pos - 1])) {
        vr[pos] = vr[pos - 1];
        top[pos] = top[pos - 1];
        --pos;
      }
      vr[pos] = v;
      top[pos] = j;
    }
    for (int64_t k = 0; k < K; ++k) {
      if (idx64) ((int64_t *)indices)[n * K + k] = top[k];
      else ((int32_t *)indices)[n * K + k] = (int32_t)top[k];
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_topk_kl(dsc_context *ctx, dsc_dtype dt, int64_t N, int64_t V, int64_t K,
                           const void *logits /* [N,V] dt */, int idx64,
                           const void *t_idx /* [N,K] */, const float *t_logits /* [N,K] */,
                           int tgt64, const void *targets /* [N] */, int64_t ignore_index,
                           float temperature, float grad_scale, float *loss /* [1] */,
                           void *dlogits /* [N,V] dt or NULL, may alias logits */) {
  int64_t n_valid = 0;
  for (int64_t n = 0; n < N; ++n) n_valid += idx_at(tgt64, targets, n) != ignore_index;
  if (N == 0) {
    loss[0] = 0.0f;
    return DSC_OK;
  }
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  void *ws = NULL;
  /* [N] row KLs (double), then per thread the scaled row [V], its exps [V], p [K] */
  DSC_TRY(dsc_workspace(ctx, (size_t)N * sizeof(double) + (size_t)nthr * (size_t)(2 * V + K) * sizeof(float),
                        &ws));
  double *row_kl = (double *)ws; /* [N] */
  float *rows = (float *)(row_kl + N); /* [nthr, 2V + K] */
  const int64_t es = dsc_cpu_esize(dt);
  const float inv_tau = 1.0f / temperature;
  /* the gradient's common factor grad_scale / n_valid / tau (unused when n_valid == 0) */
  const float c = n_valid > 0 ? (float)((double)grad_scale / (double)n_valid / (double)temperature) : 0.0f;

  DSC_CPU_FOR(N * V >= DSC_CPU_PAR_MIN, nthr, n, N,
#ifdef _OPENMP
    float *z = rows + (int64_t)omp_get_thread_num() * (2 * V + K); /* [V] x / tau */
#else
    float *z = rows;
#endif
    float *e = z + V;    /* [V] exp(z - m), then q, then q - p scattered */
    float *pk = e + V;   /* [K] the teacher's p */
    const void *xr = (const char *)logits + n * V * es; /* [V] */
    row_kl[n] = 0.0;
    if (idx_at(tgt64, targets, n) == ignore_index) {
      if (dlogits) {
        void *dr = (char *)dlogits + n * V * es;
        for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, 0.0f);
      }
    } else {
      /* the student: log q = z - lse_q */
      float m = -INFINITY;
      for (int64_t j = 0; j < V; ++j) {
        z[j] = dsc_cpu_ld(dt, xr, j) * inv_tau;
        m = z[j] > m ? z[j] : m;
      }
      double s = 0.0;
      for (int64_t j = 0; j < V; ++j) {
        e[j] = dsc_vm_exp(z[j] - m);
        s += (double)e[j];
      }
      const double lse_q = (double)m + log(s);
      /* the teacher: p = softmax(y / tau) over its K */
      const float *y = t_logits + n * K; /* [K] */
      float my = -INFINITY;
      for (int64_t k = 0; k < K; ++k) my = y[k] * inv_tau > my ? y[k] * inv_tau : my;
      double sy = 0.0;
      for (int64_t k = 0; k < K; ++k) sy += (double)dsc_vm_exp(y[k] * inv_tau - my);
      const double lse_p = (double)my + log(sy);
      double kl = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double logp = (double)(y[k] * inv_tau) - lse_p;
        const double pv = exp(logp);
        pk[k] = (float)pv;
        const int64_t j = idx_at(idx64, t_idx, n * K + k);
        /* an index outside [0, V) (only recorded by a deferred range check) is left out of
         * the KL and of the gradient; the teacher's softmax over its K stays as it is */
        if (j < 0 || j >= V) continue;
        if (pv != 0.0 || isnan(pv)) kl += pv * (logp - ((double)z[j] - lse_q));
      }
      row_kl[n] = kl;
      if (dlogits) {
        const float inv_s = (float)(1.0 / s);
        for (int64_t j = 0; j < V; ++j) e[j] *= inv_s; /* q */
        for (int64_t k = 0; k < K; ++k) {
          const int64_t j = idx_at(idx64, t_idx, n * K + k);
          if (j >= 0 && j < V) e[j] -= pk[k];
        }
        void *dr = (char *)dlogits + n * V * es; /* written only now: x was read into z */
        for (int64_t j = 0; j < V; ++j) dsc_cpu_st(dt, dr, j, c * e[j]);
      }
    }
  );
  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) total += row_kl[n]; /* row order: deterministic */
  loss[0] = n_valid > 0 ? (float)(total / (double)n_valid) : 0.0f;
  return DSC_OK;
}
