/*
 * cpu/sample.c -- token sampling from logits on the CPU: the reference of
 * kernels/sample.cu and the exact rules of dsc_model_generate (which also calls the row
 * functions here for its speculative path).
 *
 * Legend: B rows, V vocabulary, l a logits row [V], p a probability row [V] (double).
 *
 *   greedy (temperature 0): argmax l; NaN never wins, ties: the lowest id.
 *   else: p_v = exp((l_v - max finite l) / T) for finite l_v, 0 for NaN / -inf (when any
 *         logit is +inf: p_v = 1 for those, 0 for the rest); then top_k (the k largest p,
 *         ties by lowest id), then top_p (the shortest prefix of that order whose running
 *         sum reaches top_p times the kept total), renormalized; a draw u in [0, 1) takes
 *         the first id (ascending) whose running sum exceeds u times the total.
 *   A row with no finite or +inf logit gets token -1 (nothing to sample from).
 * Each draw advances the row's counter by one (core/sample_math.h); greedy rows and -1
 * rows draw nothing.
 *
 * Speculative decoding's device-resident step (spec_*; layouts in core/spec_step.h): the
 * same rules as generate.c's host path (take_draft, verify), row by row.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"
#include "sample_math.h"
#include "spec_step.h"

#ifdef _OPENMP
#include <omp.h>
static int thread_id(void) { return omp_get_thread_num(); }
#else
static int thread_id(void) { return 0; }
#endif

int32_t dsc_cpu_sample_argmax(const float *l /* [V] */, int64_t V) {
  int32_t best = -1;
  float bv = 0.0f;
  for (int64_t v = 0; v < V; ++v)
    if (l[v] == l[v] && (best < 0 || l[v] > bv)) { /* NaN never wins; ties: lowest id */
      best = (int32_t)v;
      bv = l[v];
    }
  return best;
}

static int pair_cmp(const void *a, const void *b) {
  const dsc_sample_pair *x = (const dsc_sample_pair *)a, *y = (const dsc_sample_pair *)b;
  if (x->p > y->p) return -1;
  if (x->p < y->p) return 1;
  return (x->id > y->id) - (x->id < y->id);
}

int dsc_cpu_sample_dist(const float *l /* [V] */, int64_t V, float temperature, int32_t top_k,
                        float top_p, double *p /* [V] */, dsc_sample_pair *pairs /* [V] */) {
  const double invT = 1.0 / (double)temperature;
  int any_inf = 0;
  double mx = -INFINITY;
  for (int64_t v = 0; v < V; ++v) {
    if (isinf(l[v]) && l[v] > 0) any_inf = 1;
    else if (isfinite(l[v]) && (double)l[v] > mx) mx = l[v];
  }
  int64_t n = 0;
  for (int64_t v = 0; v < V; ++v) {
    double pv;
    if (any_inf) pv = (isinf(l[v]) && l[v] > 0) ? 1.0 : 0.0;
    else pv = isfinite(l[v]) ? exp(((double)l[v] - mx) * invT) : 0.0;
    p[v] = pv;
    n += pv > 0.0;
  }
  if (n == 0) return -1;
  const int use_k = top_k > 0 && top_k < n;
  const int use_p = top_p < 1.0f;
  if (use_k || use_p) {
    int64_t c = 0;
    for (int64_t v = 0; v < V; ++v)
      if (p[v] > 0.0) {
        pairs[c].p = p[v];
        pairs[c].id = (int32_t)v;
        ++c;
      }
    qsort(pairs, (size_t)c, sizeof *pairs, pair_cmp);
    int64_t keep = use_k ? top_k : c;
    if (use_p) {
      double tot = 0.0;
      for (int64_t i = 0; i < keep; ++i) tot += pairs[i].p;
      const double target = (double)top_p * tot;
      double cum = 0.0;
      int64_t i = 0;
      while (i < keep) {
        cum += pairs[i++].p;
        if (cum >= target) break;
      }
      keep = i;
    }
    for (int64_t i = keep; i < c; ++i) p[pairs[i].id] = 0.0;
  }
  double s = 0.0;
  for (int64_t v = 0; v < V; ++v) s += p[v];
  const double inv = 1.0 / s;
  for (int64_t v = 0; v < V; ++v) p[v] *= inv;
  return 0;
}

int32_t dsc_cpu_sample_draw(const double *p /* [V] */, int64_t V, double u) {
  double tot = 0.0;
  int32_t last = 0;
  for (int64_t v = 0; v < V; ++v)
    if (p[v] > 0.0) {
      tot += p[v];
      last = (int32_t)v;
    }
  const double target = u * tot;
  double c = 0.0;
  for (int64_t v = 0; v < V; ++v) {
    if (p[v] <= 0.0) continue;
    c += p[v];
    if (target < c) return (int32_t)v;
  }
  return last;
}

dsc_status dsc_cpu_sample_tokens(dsc_context *ctx, int64_t B, int64_t V, float temperature,
                                 int32_t top_k, float top_p, const float *logits /* [B,V] */,
                                 int64_t *rng /* [B,2] key, counter */,
                                 const int32_t *active /* [B] or NULL */, int32_t *tokens /* [B] */) {
  if (B <= 0) return DSC_OK;
  const int greedy = temperature == 0.0f;
  const int nthr = ctx->num_threads > 0 ? ctx->num_threads : 1;
  const int par = B > 1 && nthr > 1 && !greedy && V >= 4096;
  const size_t per = (size_t)V * (sizeof(double) + sizeof(dsc_sample_pair)); /* one thread's p, pairs */
  void *ws = NULL;
  if (!greedy) DSC_TRY(dsc_workspace(ctx, per * (size_t)(par ? nthr : 1), &ws));
  DSC_CPU_FOR(par, nthr, b, B,
    if (active && !active[b]) continue;
    const float *l = logits + b * V; /* [V] */
    if (greedy) {
      tokens[b] = dsc_cpu_sample_argmax(l, V);
      continue;
    }
    char *mine = (char *)ws + (par ? (size_t)thread_id() : 0) * per;
    double *p = (double *)mine;                                     /* [V] */
    dsc_sample_pair *pairs = (dsc_sample_pair *)(mine + (size_t)V * sizeof(double)); /* [V] */
    if (dsc_cpu_sample_dist(l, V, temperature, top_k, top_p, p, pairs) != 0) {
      tokens[b] = -1;
      continue;
    }
    uint64_t ctr = (uint64_t)rng[2 * b + 1];
    const double u = dsc_sample_urand((uint64_t)rng[2 * b], &ctr);
    rng[2 * b + 1] = (int64_t)ctr;
    tokens[b] = dsc_cpu_sample_draw(p, V, u);
  );
  return DSC_OK;
}

/* ---- speculative decoding ------------------------------------------------------------- */

dsc_status dsc_cpu_spec_inputs(dsc_context *ctx, int32_t mode, int64_t B, int32_t T, int32_t K, int32_t j,
                               int32_t max_new, const int32_t *plen /* [B] */, const int32_t *state /* [2B] */,
                               const int32_t *out /* [B, max_new] */, const int32_t *drafts /* [B, K] */,
                               const int32_t *nd /* [B] */, const int32_t *acc /* [B] */,
                               int32_t *ids /* [B*T] */, int32_t *pos /* [B*T] */,
                               int32_t *gidx /* [B*T] or NULL */, int32_t *last /* [B] or NULL */) {
  (void)ctx;
  for (int64_t b = 0; b < B; ++b)
    for (int32_t t = 0; t < T; ++t)
      dsc_spec_inputs_row(mode, b, t, T, K, j, max_new, plen, state, B, out, drafts, nd, acc, ids, pos, gidx,
                          last);
  return DSC_OK;
}

dsc_status dsc_cpu_spec_draft(dsc_context *ctx, int64_t B, int32_t K, int32_t j, int64_t V, float temperature,
                              int32_t top_k, float top_p, const float *logits /* [B, V] */,
                              int64_t *rng /* [B, 2] */, const int32_t *nd /* [B] */,
                              int32_t *drafts /* [B, K] */, double *q /* [B, K, V] or NULL */) {
  const int greedy = temperature == 0.0f;
  void *ws = NULL;
  if (!greedy) DSC_TRY(dsc_workspace(ctx, (size_t)V * sizeof(dsc_sample_pair), &ws));
  for (int64_t b = 0; b < B; ++b) {
    if (nd[b] <= j) continue;
    const float *l = logits + b * V; /* [V] */
    int32_t tok;
    if (greedy) {
      tok = dsc_cpu_sample_argmax(l, V);
    } else {
      double *qr = q + (b * K + j) * V; /* [V] */
      if (dsc_cpu_sample_dist(l, V, temperature, top_k, top_p, qr, (dsc_sample_pair *)ws) != 0) {
        tok = -1;
      } else {
        uint64_t ctr = (uint64_t)rng[2 * b + 1];
        tok = dsc_cpu_sample_draw(qr, V, dsc_sample_urand((uint64_t)rng[2 * b], &ctr));
        rng[2 * b + 1] = (int64_t)ctr;
      }
    }
    drafts[b * K + j] = tok;
  }
  return DSC_OK;
}

dsc_status dsc_cpu_spec_verify(dsc_context *ctx, int64_t B, int32_t K, int64_t V, int32_t max_new, int32_t eos,
                               float temperature, int32_t top_k, float top_p,
                               const float *logits /* [B*(1+K), V] */, const int32_t *drafts /* [B, K] */,
                               const double *q /* [B, K, V] or NULL */, int64_t *rng /* [B, 2] */,
                               int32_t *state /* [2B] */, int32_t *out /* [B, max_new] */,
                               int32_t *nd /* [B] */, int32_t *acc /* [B] */, int32_t nrec,
                               int32_t *cnt /* [B] */, int32_t *rec /* [nrec, B] */) {
  const int greedy = temperature == 0.0f;
  const int64_t Tv = 1 + (int64_t)K;
  void *ws = NULL; /* p [V], r [V] (double), pairs [V] */
  if (!greedy) DSC_TRY(dsc_workspace(ctx, (size_t)V * (2 * sizeof(double) + sizeof(dsc_sample_pair)), &ws));
  double *p = (double *)ws, *r = p ? p + V : NULL;
  dsc_sample_pair *pairs = p ? (dsc_sample_pair *)(r + V) : NULL;
  for (int64_t b = 0; b < B; ++b) {
    if (!state[b]) {
      nd[b] = 0;
      continue;
    }
    const int32_t kb = nd[b];
    int32_t n = state[B + b], a = 0, ne = 0, alive = 1;
    uint64_t ctr = (uint64_t)rng[2 * b + 1];
    const uint64_t key = (uint64_t)rng[2 * b];
    for (int32_t jj = 0; jj <= kb; ++jj) {
      const float *l = logits + (b * Tv + jj) * V; /* [V] */
      int32_t tok;
      int accepted = 0;
      if (greedy) {
        tok = dsc_cpu_sample_argmax(l, V);
        if (jj < kb) accepted = tok >= 0 && tok == drafts[b * K + jj];
      } else if (dsc_cpu_sample_dist(l, V, temperature, top_k, top_p, p, pairs) != 0) {
        tok = -1;
      } else if (jj < kb) {
        const int32_t x = drafts[b * K + jj];
        if (x < 0) { /* the draft's logits had nothing to sample */
          tok = -1;
        } else {
          const double *qr = q + (b * K + jj) * V; /* [V] */
          const double u = dsc_sample_urand(key, &ctr);
          accepted = u * qr[x] < p[x];
          if (accepted) {
            tok = x;
          } else {
            double s = 0.0;
            for (int64_t v = 0; v < V; ++v) {
              r[v] = p[v] > qr[v] ? p[v] - qr[v] : 0.0;
              s += r[v];
            }
            tok = dsc_cpu_sample_draw(s > 0.0 ? r : p, V, dsc_sample_urand(key, &ctr));
          }
        }
      } else {
        tok = dsc_cpu_sample_draw(p, V, dsc_sample_urand(key, &ctr));
      }
      if (jj < kb && drafts[b * K + jj] < 0) { /* the draft's logits had nothing to sample */
        tok = -1;
        accepted = 0;
      }
      out[b * max_new + n] = tok;
      ++n;
      ++ne;
      a += accepted;
      if (tok < 0 || tok == eos || n >= max_new) {
        alive = 0;
        break;
      }
      if (!accepted) break;
    }
    rng[2 * b + 1] = (int64_t)ctr;
    state[b] = alive;
    state[B + b] = n;
    acc[b] = a;
    rec[(int64_t)(cnt[b] % nrec) * B + b] = dsc_spec_rec(ne, a, kb);
    cnt[b] += 1;
    nd[b] = dsc_spec_wanted(alive, n, K, max_new);
  }
  return DSC_OK;
}
