/*
 * cpu/moe.c -- DeepSeekMoE on the CPU: routing (V3 sigmoid + correction bias +
 * group-limited top-k, V2 softmax + greedy / group-limited greedy) and its backward,
 * expert load, the bias update of auxiliary-loss-free balancing, the sequence-wise
 * balance loss, and dropless dispatch (permute) / combine (unpermute) with backward.
 * The readable reference for kernels/moe.cu.
 *
 * Legend: T tokens, E routed experts, k experts per token, G expert groups (E/G
 *         contiguous experts each), D hidden features, R permuted rows, L sequence length,
 *         B = T/L sequences, n index count.
 *
 * Routing of one token (DEEPSEEK_V3.md 1.1, 1.4):
 *   s   = sigmoid(z) | softmax(z)                    affinities, float32
 *   sel = s + bias (noaux_tc) | s                    selection scores
 *   group score = top-2 sum of sel (noaux_tc) | max of s (group_limited_greedy)
 *   keep the topk_group best groups; the others are excluded (the -inf mask)
 *   top-k of sel among the kept experts; w = s[chosen] (/ sum) * scale
 * Every ranking is by value, ties to the LOWER index, NaN below every number: the
 * candidates are visited in increasing index and a later one only displaces an earlier
 * one when strictly greater. Results do not depend on the thread count.
 */
#include <math.h>
#include <string.h>

#include "cpu_common.h"
#include "vmath.h" /* exp and sigmoid (within 1.2 / 2.5 ulp of float64) */

/* A ranking key: NaN ranks below every number (and ties with -inf, lower index first). */
static inline float rank_key(float v) { return isnan(v) ? -INFINITY : v; }

/* Offer candidate (v, i) to the best-first list (vals, ids) holding *n of at most cap
 * entries. Candidates must come in increasing i: an equal value never displaces an
 * earlier (lower-index) entry. */
static inline void topk_offer(float v, int32_t i, float *vals /* [cap] */,
                              int32_t *ids /* [cap] */, int64_t *n, int64_t cap) {
  int64_t pos;
  if (*n < cap) {
    pos = (*n)++;
  } else {
    if (!(v > vals[cap - 1])) return;
    pos = cap - 1;
  }
  while (pos > 0 && v > vals[pos - 1]) {
    vals[pos] = vals[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  vals[pos] = v;
  ids[pos] = i;
}


static inline int64_t ld_idx(int ids64, const void *p, int64_t i) {
  return ids64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}

static inline int nthreads(const dsc_context *ctx) {
#ifdef _OPENMP
  return ctx->num_threads > 0 ? ctx->num_threads : 1;
#else
  (void)ctx;
  return 1;
#endif
}

static inline int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* ---- routing ------------------------------------------------------------------ */

/* Per-thread scratch of one token's routing, in 4-byte units. */
static int64_t route_scratch_words(int64_t G, int64_t k, int64_t topk_group) {
  return 2 * G /* gscore, keep */ + k /* vals */ + 2 * topk_group /* gvals, gids */;
}

/* Routes token t. s [E] gets the affinities; idx [k], w [k] the choice. */
static void route_token(dsc_dtype dt, int64_t E, int64_t k, int64_t G, int64_t topk_group,
                        int scoring, int method, int norm, float scale,
                        const void *z_row /* [E] dt */, const float *bias /* [E] or NULL */,
                        float *s /* [E] */, int32_t *idx /* [k] */, float *w /* [k] */,
                        float *scratch /* route_scratch_words */) {
  float *gscore = scratch;                          /* [G] */
  int32_t *keep = (int32_t *)(gscore + G);          /* [G] 1: group kept */
  float *vals = (float *)(keep + G);                /* [k] */
  float *gvals = vals + k;                          /* [topk_group] */
  int32_t *gids = (int32_t *)(gvals + topk_group);  /* [topk_group] */

  /* 1. affinities */
  if (scoring == DSC_MOE_SCORING_SIGMOID) {
    for (int64_t e = 0; e < E; ++e) s[e] = dsc_vm_sigmoid(dsc_cpu_ld(dt, z_row, e));
  } else {
    float mx = -INFINITY;
    for (int64_t e = 0; e < E; ++e) {
      const float z = dsc_cpu_ld(dt, z_row, e);
      if (z > mx) mx = z;
    }
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      s[e] = dsc_vm_exp(dsc_cpu_ld(dt, z_row, e) - mx);
      sum += s[e];
    }
    const float inv = 1.0f / sum;
    for (int64_t e = 0; e < E; ++e) s[e] *= inv;
  }
  const int use_bias = method == DSC_MOE_TOPK_NOAUX_TC && bias != NULL;
#define SEL(e) (use_bias ? s[(e)] + bias[(e)] : s[(e)])

  /* 2. group selection (greedy: every group kept) */
  const int64_t per = E / G;
  const int grouped = method != DSC_MOE_TOPK_GREEDY && topk_group < G;
  if (grouped) {
    for (int64_t g = 0; g < G; ++g) {
      float best = -INFINITY, second = -INFINITY;
      for (int64_t e = g * per; e < (g + 1) * per; ++e) {
        const float v = rank_key(method == DSC_MOE_TOPK_NOAUX_TC ? SEL(e) : s[e]);
        if (v > best) {
          second = best;
          best = v;
        } else if (v > second) {
          second = v;
        }
      }
      gscore[g] = (method == DSC_MOE_TOPK_NOAUX_TC && per >= 2) ? rank_key(best + second) : best;
      keep[g] = 0;
    }
    int64_t ng = 0;
    for (int64_t g = 0; g < G; ++g) topk_offer(gscore[g], (int32_t)g, gvals, gids, &ng, topk_group);
    for (int64_t j = 0; j < ng; ++j) keep[gids[j]] = 1;
  }

  /* 3. top-k of the selection scores over the kept experts (the others count as -inf:
   *    they are never candidates) */
  int64_t n = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (grouped && !keep[e / per]) continue;
    topk_offer(rank_key(SEL(e)), (int32_t)e, vals, idx, &n, k);
  }
#undef SEL

  /* 4. weights from the unbiased affinities */
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = s[idx[j]];
    sum += w[j];
  }
  for (int64_t j = 0; j < k; ++j) w[j] = norm ? (w[j] / (sum + 1e-20f)) * scale : w[j] * scale;
}

dsc_status dsc_cpu_moe_route(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t E, int64_t k,
                             int64_t G, int64_t topk_group, int scoring, int method, int norm,
                             float scale, const void *logits /* [T,E] dt */,
                             const float *bias /* [E] or NULL */, int32_t *indices /* [T,k] */,
                             float *weights /* [T,k] */, float *scores /* [T,E] or NULL */) {
  const int nth = nthreads(ctx);
  const int64_t words = route_scratch_words(G, k, topk_group);
  void *ws = NULL;
  /* [nth, words] per-thread scratch, then [T, E] affinities when scores is NULL */
  DSC_TRY(dsc_workspace(ctx, (size_t)(nth * words + (scores ? 0 : T * E)) * sizeof(float), &ws));
  float *scratch = (float *)ws;
  float *s_all = scores ? scores : scratch + nth * words; /* [T, E] */
  const int64_t es = dsc_cpu_esize(dt);
  DSC_CPU_FOR(T * E >= DSC_CPU_PAR_MIN, nth, t, T,
    route_token(dt, E, k, G, topk_group, scoring, method, norm, scale,
                (const char *)logits + t * E * es, bias, s_all + t * E, indices + t * k,
                weights + t * k, scratch + (int64_t)thread_id() * words);
  );
  return DSC_OK;
}

dsc_status dsc_cpu_moe_route_bwd(dsc_context *ctx, int64_t T, int64_t E, int64_t k, int scoring,
                                 int norm, float scale, const float *dweights /* [T,k] */,
                                 const float *scores /* [T,E] */, int ids64,
                                 const void *indices /* [T,k] */,
                                 const float *dscores /* [T,E] or NULL */, dsc_dtype dl_dt,
                                 void *dlogits /* [T,E] dl_dt */) {
  const int nth = nthreads(ctx);
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(nth * E) * sizeof(float), &ws));
  float *scratch = (float *)ws; /* [nth, E]: dL/ds of one token */
  DSC_CPU_FOR(T * E >= DSC_CPU_PAR_MIN, nth, t, T,
    float *ds = scratch + (int64_t)thread_id() * E; /* [E] */
    const float *s = scores + t * E;                /* [E] */
    const float *dw = dweights + t * k;             /* [k] */
    if (dscores)
      memcpy(ds, dscores + t * E, (size_t)E * sizeof(float));
    else
      memset(ds, 0, (size_t)E * sizeof(float));
    /* w_j = c s_j / (S + eps): ds_i = c/Dn (dw_i - sum_j dw_j s_j / Dn); else c dw_i */
    if (norm) {
      float S = 0.0f, dot = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float sj = s[ld_idx(ids64, indices, t * k + j)];
        S += sj;
        dot += dw[j] * sj;
      }
      const float Dn = S + 1e-20f;
      for (int64_t j = 0; j < k; ++j)
        ds[ld_idx(ids64, indices, t * k + j)] += scale / Dn * (dw[j] - dot / Dn);
    } else {
      for (int64_t j = 0; j < k; ++j) ds[ld_idx(ids64, indices, t * k + j)] += scale * dw[j];
    }
    void *dl = (char *)dlogits + t * E * dsc_cpu_esize(dl_dt); /* [E] */
    if (scoring == DSC_MOE_SCORING_SIGMOID) {
      for (int64_t e = 0; e < E; ++e) dsc_cpu_st(dl_dt, dl, e, ds[e] * s[e] * (1.0f - s[e]));
    } else { /* softmax: dz = s * (ds - <ds, s>) */
      float dot = 0.0f;
      for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
      for (int64_t e = 0; e < E; ++e) dsc_cpu_st(dl_dt, dl, e, s[e] * (ds[e] - dot));
    }
  );
  return DSC_OK;
}

/* ---- balancing ------------------------------------------------------------------ */

dsc_status dsc_cpu_moe_expert_load(dsc_context *ctx, int64_t n, int ids64,
                                   const void *ids /* [n] */, int64_t E, int cnt64,
                                   void *counts /* [E] */) {
  (void)ctx; /* one pass over n integers: serial */
  if (cnt64) {
    int64_t *c = (int64_t *)counts;
    memset(c, 0, (size_t)E * sizeof *c);
    for (int64_t i = 0; i < n; ++i) ++c[ld_idx(ids64, ids, i)];
  } else {
    int32_t *c = (int32_t *)counts;
    memset(c, 0, (size_t)E * sizeof *c);
    for (int64_t i = 0; i < n; ++i) ++c[ld_idx(ids64, ids, i)];
  }
  return DSC_OK;
}

dsc_status dsc_cpu_moe_update_bias(dsc_context *ctx, int64_t E, float *bias /* [E] */, int cnt64,
                                   const void *counts /* [E] */, float rate, const dsc_step_ctl *ctl) {
  (void)ctx;
  if (ctl && ctl->skip) return DSC_OK;
  double total = 0.0;
  for (int64_t e = 0; e < E; ++e) total += (double)ld_idx(cnt64, counts, e);
  const double mean = total / (double)E;
  for (int64_t e = 0; e < E; ++e) {
    const double c = (double)ld_idx(cnt64, counts, e);
    const float sgn = mean > c ? 1.0f : (mean < c ? -1.0f : 0.0f);
    bias[e] += rate * sgn;
  }
  return DSC_OK;
}

dsc_status dsc_cpu_moe_sum_counts(dsc_context *ctx, int64_t S, int64_t nb, int64_t E,
                                  const int64_t *src /* [S, slot_stride] */, int64_t slot_stride,
                                  int64_t *dst /* [nb, E] */) {
  (void)ctx;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t e = 0; e < E; ++e) {
      int64_t c = 0;
      for (int64_t sl = 0; sl < S; ++sl)
        for (int64_t h = 0; h < 2; ++h) c += src[sl * slot_stride + (2 * b + h) * E + e];
      dst[b * E + e] = c;
    }
  return DSC_OK;
}

dsc_status dsc_cpu_moe_seq_aux_loss(dsc_context *ctx, int64_t T, int64_t E, int64_t k, int64_t L,
                                    const float *scores /* [T,E] */, int ids64,
                                    const void *indices /* [T,k] */, float alpha,
                                    float *loss /* [1] */, float *dscores /* [T,E] or NULL */) {
  const int64_t B = T / L;
  const int nth = nthreads(ctx);
  void *ws = NULL;
  /* [nth, 2E] doubles (f, P of one sequence), then [B] per-sequence losses */
  DSC_TRY(dsc_workspace(ctx, (size_t)(nth * 2 * E + B) * sizeof(double), &ws));
  double *scratch = (double *)ws;
  double *seq_loss = scratch + nth * 2 * E; /* [B] */
  DSC_CPU_FOR(T * E >= DSC_CPU_PAR_MIN, nth, b, B,
    double *f = scratch + (int64_t)thread_id() * 2 * E; /* [E] */
    double *P = f + E;                                  /* [E] */
    memset(f, 0, (size_t)(2 * E) * sizeof(double));
    for (int64_t t = b * L; t < (b + 1) * L; ++t) {
      const float *s = scores + t * E; /* [E] */
      double S = 0.0;
      for (int64_t i = 0; i < E; ++i) S += s[i];
      for (int64_t i = 0; i < E; ++i) P[i] += s[i] / S;
      for (int64_t j = 0; j < k; ++j) f[ld_idx(ids64, indices, t * k + j)] += 1.0;
    }
    double acc = 0.0;
    for (int64_t i = 0; i < E; ++i) {
      f[i] *= (double)E / ((double)k * (double)L); /* f_i */
      acc += f[i] * (P[i] / (double)L);           /* f_i P_i */
    }
    seq_loss[b] = (double)alpha * acc;
    if (!dscores) continue;
    /* dL/ds'_{t,i} = g_i = alpha f_i / (B L); ds = (g - <g, s'>) / S */
    const double gscale = (double)alpha / ((double)B * (double)L);
    for (int64_t t = b * L; t < (b + 1) * L; ++t) {
      const float *s = scores + t * E; /* [E] */
      double S = 0.0, dot = 0.0;
      for (int64_t i = 0; i < E; ++i) S += s[i];
      for (int64_t i = 0; i < E; ++i) dot += gscale * f[i] * (s[i] / S);
      for (int64_t i = 0; i < E; ++i) dscores[t * E + i] = (float)((gscale * f[i] - dot) / S);
    }
  );
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) total += seq_loss[b];
  *loss = B > 0 ? (float)(total / (double)B) : 0.0f;
  return DSC_OK;
}

/* ---- dispatch / combine ---------------------------------------------------------- */

/* counts [E] (int64) of n indices; returns R. */
static int64_t count_rows(int64_t n, int ids64, const void *ids, int64_t E, int64_t align,
                          int64_t *counts /* [E] */) {
  memset(counts, 0, (size_t)E * sizeof *counts);
  for (int64_t i = 0; i < n; ++i) ++counts[ld_idx(ids64, ids, i)];
  int64_t R = 0;
  for (int64_t e = 0; e < E; ++e) R += (counts[e] + align - 1) / align * align;
  return R;
}

dsc_status dsc_cpu_moe_permute_rows(dsc_context *ctx, int64_t n, int ids64,
                                    const void *ids /* [n] */, int64_t E, int64_t align,
                                    int64_t *rows) {
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)E * sizeof(int64_t), &ws));
  *rows = count_rows(n, ids64, ids, E, align, (int64_t *)ws);
  return DSC_OK;
}

dsc_status dsc_cpu_moe_permute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D, int64_t k,
                               int ids64, const void *indices /* [T,k] */, int64_t E,
                               int64_t align, const void *x /* [T,D] dt */, int64_t R,
                               void *out /* [R,D] dt */, int32_t *group_offsets /* [E+1] */,
                               int32_t *row_map /* [T,k] */) {
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, (size_t)(2 * E) * sizeof(int64_t), &ws));
  int64_t *counts = (int64_t *)ws; /* [E] */
  int64_t *cursor = counts + E;    /* [E] next free row of each expert */
  (void)count_rows(T * k, ids64, indices, E, align, counts);
  int64_t off = 0;
  for (int64_t e = 0; e < E; ++e) {
    group_offsets[e] = (int32_t)off;
    cursor[e] = off;
    off += (counts[e] + align - 1) / align * align;
  }
  group_offsets[E] = (int32_t)off;
  /* R >= off: R == off for the public op; the MoE layer sizes out by a bound (its rows
   * [off, R) are padding, zeroed below with the experts' own) */
  /* rows in (token, slot) order within each expert: a serial pass over T*k integers */
  for (int64_t i = 0; i < T * k; ++i) row_map[i] = (int32_t)cursor[ld_idx(ids64, indices, i)]++;
  const size_t row_bytes = (size_t)(D * dsc_cpu_esize(dt));
  /* zero padding rows: cursor[e] .. group_offsets[e+1], then off .. R */
  for (int64_t e = 0; e < E; ++e) {
    if (group_offsets[e + 1] > cursor[e])
      memset((char *)out + cursor[e] * (int64_t)row_bytes, 0,
             (size_t)(group_offsets[e + 1] - cursor[e]) * row_bytes);
  }
  if (R > off) memset((char *)out + off * (int64_t)row_bytes, 0, (size_t)(R - off) * row_bytes);
  DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, t, T,
    const char *src = (const char *)x + t * (int64_t)row_bytes; /* [D] */
    for (int64_t j = 0; j < k; ++j)
      memcpy((char *)out + (int64_t)row_map[t * k + j] * (int64_t)row_bytes, src, row_bytes);
  );
  return DSC_OK;
}

dsc_status dsc_cpu_moe_permute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,
                                   int64_t k, const void *dout /* [R,D] dt */,
                                   const int32_t *row_map /* [T,k] */, void *dx /* [T,D] dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, t, T,
    const int32_t *rm = row_map + t * k; /* [k] */
    if (dt == DSC_DTYPE_FLOAT32) { /* the same sums (0, then j = 0, 1, ...), row at a time */
      float *dxt = (float *)dx + t * D; /* [D] */
      for (int64_t d = 0; d < D; ++d) dxt[d] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float *src = (const float *)dout + (int64_t)rm[j] * D; /* [D] */
        for (int64_t d = 0; d < D; ++d) dxt[d] += src[d];
      }
      continue;
    }
    for (int64_t d = 0; d < D; ++d) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc += dsc_cpu_ld(dt, dout, (int64_t)rm[j] * D + d);
      dsc_cpu_st(dt, dx, t * D + d, acc);
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_moe_unpermute(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D, int64_t k,
                                 const void *expert_out /* [R,D] dt */,
                                 const int32_t *row_map /* [T,k] */,
                                 const float *weights /* [T,k] */, void *y /* [T,D] dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, t, T,
    const int32_t *rm = row_map + t * k; /* [k] */
    const float *w = weights + t * k;    /* [k] */
    if (dt == DSC_DTYPE_FLOAT32) {
      float *yt = (float *)y + t * D; /* [D] */
      const float *e0 = (const float *)expert_out + (int64_t)rm[0] * D;
      for (int64_t d = 0; d < D; ++d) yt[d] = w[0] * e0[d];
      for (int64_t j = 1; j < k; ++j) {
        const float *ej = (const float *)expert_out + (int64_t)rm[j] * D; /* [D] */
        const float wj = w[j];
        for (int64_t d = 0; d < D; ++d) yt[d] += wj * ej[d];
      }
    } else {
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0.0f;
        for (int64_t j = 0; j < k; ++j)
          acc += w[j] * dsc_cpu_ld(dt, expert_out, (int64_t)rm[j] * D + d);
        dsc_cpu_st(dt, y, t * D + d, acc);
      }
    }
  );
  return DSC_OK;
}

dsc_status dsc_cpu_moe_unpermute_bwd(dsc_context *ctx, dsc_dtype dt, int64_t T, int64_t D,
                                     int64_t k, int64_t R, const void *dy /* [T,D] dt */,
                                     const void *expert_out /* [R,D] dt */,
                                     const int32_t *row_map /* [T,k] */,
                                     const float *weights /* [T,k] */,
                                     void *dexpert_out /* [R,D] dt or NULL */,
                                     float *dweights /* [T,k] or NULL */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  /* The rows of a permute are distinct (one per token and slot): then each is written once,
   * w * dy[t] (the value the accumulation below gives: 0 + w dy), in parallel over tokens,
   * and only the rows nobody names (padding) are zeroed. */
  int distinct = dexpert_out != NULL && dt == DSC_DTYPE_FLOAT32;
  uint8_t *named = NULL;
  if (distinct) {
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, (size_t)(R > 0 ? R : 1), &ws));
    named = (uint8_t *)ws; /* [R] */
    memset(named, 0, (size_t)R);
    for (int64_t i = 0; i < T * k && distinct; ++i) {
      distinct = !named[row_map[i]];
      named[row_map[i]] = 1;
    }
  }
  if (distinct) {
    float *de = (float *)dexpert_out;
    for (int64_t r = 0; r < R; ++r)
      if (!named[r]) memset(de + r * D, 0, (size_t)D * sizeof(float));
    DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, t, T,
      const float *dyt = (const float *)dy + t * D; /* [D] */
      for (int64_t j = 0; j < k; ++j) {
        float *dst = de + (int64_t)row_map[t * k + j] * D; /* [D] */
        const float w = weights[t * k + j];
        for (int64_t d = 0; d < D; ++d) dst[d] = 0.0f + w * dyt[d];
      }
    );
  } else if (dexpert_out) {
    /* Rows not named by row_map (padding) are 0; a row named twice accumulates. The
     * threads split the D columns and each walks every (t, j) in order: no race, and the
     * sum order does not depend on the thread count. */
    memset(dexpert_out, 0, (size_t)(R * D * dsc_cpu_esize(dt)));
    const int64_t CB = 256; /* columns per block */
    const int64_t nb = (D + CB - 1) / CB;
    DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, blk, nb,
      const int64_t d0 = blk * CB, d1 = d0 + CB < D ? d0 + CB : D;
      for (int64_t i = 0; i < T * k; ++i) {
        const int64_t row = row_map[i], t = i / k;
        const float w = weights[i];
        for (int64_t d = d0; d < d1; ++d)
          dsc_cpu_st(dt, dexpert_out, row * D + d,
                     dsc_cpu_ld(dt, dexpert_out, row * D + d) + w * dsc_cpu_ld(dt, dy, t * D + d));
      }
    );
  }
  if (dweights) {
    /* dot products in 8 float32 lanes (lane l: d = l, l + 8, ...) and a fixed tree */
    DSC_CPU_FOR(T * k * D >= DSC_CPU_PAR_MIN, ctx->num_threads, i, T * k,
      const int64_t row = row_map[i], t = i / k;
      float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (dt == DSC_DTYPE_FLOAT32) {
        const float *dyt = (const float *)dy + t * D, *er = (const float *)expert_out + row * D;
        int64_t d = 0;
        for (; d + 8 <= D; d += 8)
          for (int l = 0; l < 8; ++l) a[l] += dyt[d + l] * er[d + l];
        for (int l = 0; d < D; ++d, ++l) a[l] += dyt[d] * er[d];
      } else {
        for (int64_t d = 0; d < D; ++d)
          a[d % 8] += dsc_cpu_ld(dt, dy, t * D + d) * dsc_cpu_ld(dt, expert_out, row * D + d);
      }
      dweights[i] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    );
  }
  return DSC_OK;
}
