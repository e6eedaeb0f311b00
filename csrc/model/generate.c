/*
 * model/generate.c -- dsc_model_generate: batched inference with the paged latent cache,
 * greedy / temperature / top-k / top-p sampling, and MTP speculative decoding.
 *
 * Flow of one call (every buffer is allocated once, before the first step):
 *   validate everything -> create the cache (L layers, + 1 for the MTP module) ->
 *   prefill: all prompts as one padded [B, Tp] batch through every block
 *            (dsc_mla_prefill per block), logits of each prompt's last token, sample;
 *   step:    the alive sequences as a ragged [B, 1 + k] batch: the pending token (sampled,
 *            not yet fed) and its k drafts at positions P .. P + k (dsc_mla_decode per
 *            block); verification; cache truncated to the kept prefix.
 * Speculation (MTP module 0, cache layer L), per sequence and step:
 *   catch-up: the MTP block over the positions the main model just kept, P .. P + a, from
 *             the main model's normalized hidden states there and the tokens one ahead
 *             (t_{i+1}); this writes the MTP layer's latents of every kept position (and
 *             overwrites the chained ones below) and its last row drafts token 1 (the
 *             block's FFN half runs on that row only: the others only feed the cache);
 *   chain:    drafts 2 .. k: the same module one position further, its own normalized
 *             output as the hidden state and its last draft as the token (these latents
 *             are provisional: kept positions are rewritten by the next catch-up,
 *             rejected ones truncated).
 * The cache's length is per sequence (shared by the layers): each call below ends exactly
 * at the length the sequence must have afterwards, so no call truncates another's rows.
 *
 * Legend: B prompts (batch rows), T tokens per row, N = B*T, D hidden, V vocab, L main
 * layers, K num_draft (0 without speculation), P the position of a sequence's pending token.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model_internal.h"

static const char *const FN = "dsc_model_generate";
static const DLDevice HOST = {kDLCPU, 0};

#define GEN_MAX_DRAFT 16

void dsc_generate_options_default(dsc_generate_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->max_new_tokens = 16;
  o->temperature = 0.0f;
  o->top_k = 0;
  o->top_p = 1.0f;
  o->seed = 0;
  o->eos_token_id = DSC_GENERATE_EOS_FROM_CONFIG;
  o->speculative = 0;
  o->num_draft = 1;
  o->cache_dtype = DSC_DTYPE_FLOAT32;
  o->block_size = 64;
  o->max_batch = 0;
}

/* ---- views ----------------------------------------------------------------------- */

/* A row-major DLTensor over `data` on `dev`; shape/stride storage in the struct. */
typedef struct {
  DLTensor t;
  int64_t shape[3];
  int64_t strides[3];
} gview;

static DLTensor *mkview(gview *v, DLDevice dev, void *data, dsc_dtype dt, int ndim, int64_t d0,
                        int64_t d1, int64_t d2) {
  memset(v, 0, sizeof *v);
  v->t.data = data;
  v->t.device = dev;
  v->t.ndim = ndim;
  v->t.dtype = dsc_dtype_to_dlpack(dt);
  const int64_t d[3] = {d0, d1, d2};
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    v->shape[i] = d[i];
    v->strides[i] = s;
    s *= d[i];
  }
  v->t.shape = v->shape;
  v->t.strides = v->strides;
  return &v->t;
}

/* ---- random numbers: a counter-based stream per sequence (splitmix64) --------------- */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* ---- the state of one call ------------------------------------------------------------ */

typedef struct {
  dsc_model *m;
  dsc_context *ctx;
  DLDevice dev;
  int host; /* the model lives on the CPU: device buffers are host memory */
  dsc_generate_options o;
  int32_t eos; /* -1: none */
  int greedy;
  int32_t B, D, V, L, K, Tp, Tv;
  int64_t Nmax, LRmax; /* rows of the activation buffers, rows of the logits buffer */
  int all_logits;      /* dsc_model_forward of a frozen model: logits of every prefill row */
  const int32_t *const *prompts;
  const int32_t *plen;
  int32_t *out; /* [B, max_new] host (the caller's) */
  dsc_token_fn on_token;
  void *user;
  int stop_all;
  dsc_mla_cache *cache;
  dsc_model_fp8w w8;        /* fp8 models: the block matrices held in E4M3 for this call */
  const dsc_model_fp8w *hw; /* the held weights used: &w8, the frozen model's, or NULL */

  /* device */
  void *dmem;
  float *h, *xn, *tmp, *hn, *e, *cat, *mo, *logits;
  int32_t *d_ids, *d_pos, *d_gidx;
  int64_t *d_seq;
  /* host */
  void *hmem;
  int32_t *h_ids, *h_pos, *h_gidx, *h_last;
  int64_t *h_seq;
  float *h_logits; /* NULL on the CPU (logits read in place) */
  /* per sequence */
  int32_t *ngen, *alive, *nd, *drafts /* [B, K] */, *row /* row in the last batch */,
      *acc /* accepted in the last step */, *mrow /* row in the last MTP batch */,
      *kn /* drafts wanted for the next step */;
  uint64_t *rkey, *rctr;
  double *q;     /* [B, K, V] draft distributions (sampling with speculation) */
  double *pbuf;  /* [V] */
  double *rbuf;  /* [V] */
  struct pair { double p; int32_t id; } *pairs; /* [V] */
  /* stats */
  int64_t new_tokens, drafted, accepted;
  int32_t main_forwards;
} gen;

static double urand(gen *g, int32_t b) {
  const uint64_t r = mix64(g->rkey[b] + (++g->rctr[b]) * 0x9e3779b97f4a7c15ull);
  return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

static int32_t tok_at(const gen *g, int32_t b, int64_t i) {
  return i < g->plen[b] ? g->prompts[b][i]
                        : g->out[(int64_t)b * g->o.max_new_tokens + (i - g->plen[b])];
}

/* Position of the pending token (the last emitted one, not yet fed to the model). */
static int64_t pending_pos(const gen *g, int32_t b) { return (int64_t)g->plen[b] + g->ngen[b] - 1; }

static void release(gen *g) {
  if (g->cache) dsc_mla_cache_destroy(g->cache);
  if (g->dmem) dsc_free(g->ctx, g->dmem);
  free(g->hmem);
  free(g->q);
  free(g->pairs);
}

/* ---- sampling ------------------------------------------------------------------------- */

static int32_t argmax_row(const float *l, int32_t V) {
  int32_t best = -1;
  float bv = 0.0f;
  for (int32_t v = 0; v < V; ++v)
    if (l[v] == l[v] && (best < 0 || l[v] > bv)) { /* NaN never wins; ties: lowest id */
      best = v;
      bv = l[v];
    }
  return best;
}

static int pair_cmp(const void *a, const void *b) {
  const struct pair *x = (const struct pair *)a, *y = (const struct pair *)b;
  if (x->p > y->p) return -1;
  if (x->p < y->p) return 1;
  return (x->id > y->id) - (x->id < y->id);
}

/* The sampling distribution of one logits row into p[V] (sums to 1, zeros outside the kept
 * set): softmax(l / temperature), then top_k, then top_p. Non-finite logits other than
 * +inf get probability 0; +inf logits share the mass. Returns 0, or -1 when nothing is
 * left (every logit NaN or -inf). */
static int sampling_dist(gen *g, const float *l, double *p) {
  const int32_t V = g->V;
  const double invT = 1.0 / (double)g->o.temperature;
  int any_inf = 0;
  double mx = -INFINITY;
  for (int32_t v = 0; v < V; ++v) {
    if (isinf(l[v]) && l[v] > 0) any_inf = 1;
    else if (isfinite(l[v]) && (double)l[v] > mx) mx = l[v];
  }
  int32_t n = 0;
  for (int32_t v = 0; v < V; ++v) {
    double pv;
    if (any_inf) pv = (isinf(l[v]) && l[v] > 0) ? 1.0 : 0.0;
    else pv = isfinite(l[v]) ? exp(((double)l[v] - mx) * invT) : 0.0;
    p[v] = pv;
    n += pv > 0.0;
  }
  if (n == 0) return -1;
  const int use_k = g->o.top_k > 0 && g->o.top_k < n;
  const int use_p = g->o.top_p < 1.0f;
  if (use_k || use_p) {
    int32_t c = 0;
    for (int32_t v = 0; v < V; ++v)
      if (p[v] > 0.0) {
        g->pairs[c].p = p[v];
        g->pairs[c].id = v;
        ++c;
      }
    qsort(g->pairs, (size_t)c, sizeof *g->pairs, pair_cmp);
    int32_t keep = use_k ? g->o.top_k : c;
    if (use_p) {
      double tot = 0.0;
      for (int32_t i = 0; i < keep; ++i) tot += g->pairs[i].p;
      const double target = (double)g->o.top_p * tot;
      double cum = 0.0;
      int32_t i = 0;
      while (i < keep) {
        cum += g->pairs[i++].p;
        if (cum >= target) break;
      }
      keep = i;
    }
    for (int32_t i = keep; i < c; ++i) p[g->pairs[i].id] = 0.0;
  }
  double s = 0.0;
  for (int32_t v = 0; v < V; ++v) s += p[v];
  const double inv = 1.0 / s;
  for (int32_t v = 0; v < V; ++v) p[v] *= inv;
  return 0;
}

/* A draw from p[V] (non-negative, any positive total) with u in [0, 1). */
static int32_t draw(const double *p, int32_t V, double u) {
  double tot = 0.0;
  int32_t last = 0;
  for (int32_t v = 0; v < V; ++v)
    if (p[v] > 0.0) {
      tot += p[v];
      last = v;
    }
  const double target = u * tot;
  double c = 0.0;
  for (int32_t v = 0; v < V; ++v) {
    if (p[v] <= 0.0) continue;
    c += p[v];
    if (target < c) return v;
  }
  return last;
}

static dsc_status bad_logits(gen *g, int32_t b) {
  (void)g;
  return dsc_error(DSC_ERR_INTERNAL, FN,
                   "the logits of sequence %d are all NaN or -inf (a diverged model?)", (int)b);
}

/* Sample a token of sequence b from a logits row (plain decoding, the bonus token). */
static dsc_status sample_row(gen *g, int32_t b, const float *l, int32_t *tok) {
  if (g->greedy) {
    *tok = argmax_row(l, g->V);
    return *tok < 0 ? bad_logits(g, b) : DSC_OK;
  }
  if (sampling_dist(g, l, g->pbuf) != 0) return bad_logits(g, b);
  *tok = draw(g->pbuf, g->V, urand(g, b));
  return DSC_OK;
}

/* ---- emission ------------------------------------------------------------------------- */

static void finish(gen *g, int32_t b) {
  if (!g->alive[b]) return;
  g->alive[b] = 0;
  (void)dsc_mla_cache_free_sequence(g->cache, b); /* known id: cannot fail */
}

/* Append a token to sequence b; returns 1 when the sequence is done after it. */
static int emit(gen *g, int32_t b, int32_t tok) {
  g->out[(int64_t)b * g->o.max_new_tokens + g->ngen[b]] = tok;
  g->ngen[b] += 1;
  g->new_tokens += 1;
  int done = (tok == g->eos) || g->ngen[b] >= g->o.max_new_tokens;
  if (g->on_token) {
    const int32_t r = g->on_token(g->user, b, tok);
    if (r < 0) g->stop_all = 1;
    if (r != 0) done = 1;
  }
  return done;
}

/* ---- model pieces ---------------------------------------------------------------------- */

static dsc_status up(gen *g, void *dst, const void *src, size_t bytes) {
  return dsc_memcpy(g->ctx, dst, g->dev, src, HOST, bytes);
}

/* rows dst[i] = src[idx[i]] for i < n: the embedding lookup with `src` as the table. */
static dsc_status gather(gen *g, const float *src, int64_t src_rows, const int32_t *d_idx,
                         int64_t n, float *dst) {
  gview vi, vs, vd;
  DLTensor *ids = mkview(&vi, g->dev, (void *)d_idx, DSC_DTYPE_INT32, 1, n, 0, 0);
  DLTensor *tab = mkview(&vs, g->dev, (void *)src, DSC_DTYPE_FLOAT32, 2, src_rows, g->D, 0);
  DLTensor *out = mkview(&vd, g->dev, dst, DSC_DTYPE_FLOAT32, 2, n, g->D, 0);
  return dsc_embedding_forward(g->ctx, ids, tab, out);
}

/* One decoder block (main layer or MTP block) on g->h [nb, T, D], in place:
 * h += MLA(norm(h)); h += FFN(norm(h)). d_seq / d_pos hold the batch.
 * d_last != NULL (the MTP block: only one row per sequence drafts): the FFN half runs on
 * rows d_last[0 .. nb) of h only, gathered into g->e [nb, D] (the block's output rows
 * there); the other rows need only their attention latents, which the MLA half has
 * written to the cache. Rows are independent in the FFN, so the drafting rows are what
 * they would be with every row computed. */
static dsc_status block(gen *g, int32_t bi, int32_t layer, int32_t nb, int32_t T, int prefill,
                        const int32_t *d_last /* [nb] device, or NULL */) {
  dsc_model *m = g->m;
  const dsc_model_block *bk = &m->blocks[bi];
  const int64_t N = (int64_t)nb * T, D = g->D;
  const float eps = m->cfg.rms_norm_eps;
  gview vh, vx, vt, vx3, vt3, vs, vp;
  DLTensor *h = mkview(&vh, g->dev, g->h, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *xn = mkview(&vx, g->dev, g->xn, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *t = mkview(&vt, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *xn3 = mkview(&vx3, g->dev, g->xn, DSC_DTYPE_FLOAT32, 3, nb, T, D);
  DLTensor *t3 = mkview(&vt3, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 3, nb, T, D);
  DLTensor *seq = mkview(&vs, g->dev, g->d_seq, DSC_DTYPE_INT64, 1, nb, 0, 0);
  DLTensor *pos = mkview(&vp, g->dev, g->d_pos, DSC_DTYPE_INT32, 2, nb, T, 0);
  /* BF16 compute: the training forward's rounding points F1-F3, F5 (model_train.c) */
  DSC_TRY(dsc_rms_norm_forward(g->ctx, h, &bk->input_norm, eps, xn, NULL));
  DSC_TRY(dsc_model_round(m, g->xn, N * D));
  dsc_mla_weights w;
  dsc_model_mla_weights_fp8(m, bi, g->hw, &w);
  DSC_TRY(prefill ? dsc_mla_prefill(g->ctx, &m->mla, &w, g->cache, layer, xn3, seq, pos, t3)
                  : dsc_mla_decode(g->ctx, &m->mla, &w, g->cache, layer, xn3, seq, pos, t3));
  DSC_TRY(dsc_model_round(m, g->tmp, N * D));
  DSC_TRY(dsc_add(g->ctx, h, t, h));
  gview ve, vx1, vt1; /* the d_last rows' views (outlive the branch: h, xn, t point here) */
  if (d_last) {
    DLTensor *e = mkview(&ve, g->dev, g->e, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
    DLTensor *x1 = mkview(&vx1, g->dev, g->xn, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
    DLTensor *t1 = mkview(&vt1, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
    DSC_TRY(gather(g, g->h, N, d_last, nb, g->e));
    h = e, xn = x1, t = t1;
  }
  DSC_TRY(dsc_rms_norm_forward(g->ctx, h, &bk->post_norm, eps, xn, NULL));
  DSC_TRY(dsc_model_round(m, (float *)xn->data, dsc_numel(xn)));
  DSC_TRY(dsc_model_ffn_infer(g->m, bi, xn, t, NULL, g->hw)); /* rounds its output */
  DSC_TRY(dsc_add(g->ctx, h, t, h));
  return DSC_OK;
}

/* logits [nr, V] = head(x [nr, D]); returns the host copy. */
static dsc_status head(gen *g, const float *x, int64_t nr, const float **lh) {
  gview vx, vl;
  DLTensor *xt = mkview(&vx, g->dev, (void *)x, DSC_DTYPE_FLOAT32, 2, nr, g->D, 0);
  DLTensor *lt = mkview(&vl, g->dev, g->logits, DSC_DTYPE_FLOAT32, 2, nr, g->V, 0);
  DSC_TRY(dsc_linear_forward(g->ctx, xt, &g->m->head, lt));
  DSC_TRY(dsc_model_round(g->m, g->logits, nr * g->V)); /* F7 */
  if (g->host) {
    *lh = g->logits;
    return DSC_OK;
  }
  DSC_TRY(dsc_memcpy(g->ctx, g->h_logits, HOST, g->logits, g->dev,
                     (size_t)nr * (size_t)g->V * sizeof(float)));
  *lh = g->h_logits;
  return DSC_OK;
}

/* The main model on the batch in h_ids / h_pos / h_seq ([nb, T]): g->hn = RMSNorm(h;
 * model.norm) for every row, then the logits of rows h_gidx[0 .. nr) of hn. */
static dsc_status main_forward_(gen *g, int32_t nb, int32_t T, int prefill, int64_t nr,
                                const float **lh) {
  dsc_model *m = g->m;
  const int64_t N = (int64_t)nb * T, D = g->D;
  DSC_TRY(up(g, g->d_ids, g->h_ids, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_pos, g->h_pos, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_seq, g->h_seq, (size_t)nb * sizeof(int64_t)));
  gview vi, vh, vn;
  DLTensor *ids = mkview(&vi, g->dev, g->d_ids, DSC_DTYPE_INT32, 1, N, 0, 0);
  DLTensor *h = mkview(&vh, g->dev, g->h, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *hn = mkview(&vn, g->dev, g->hn, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DSC_TRY(dsc_embedding_forward(g->ctx, ids, &m->embed, h));
  for (int32_t b = 0; b < g->L; ++b) DSC_TRY(block(g, b, b, nb, T, prefill, NULL));
  DSC_TRY(dsc_rms_norm_forward(g->ctx, h, &m->final_norm, m->cfg.rms_norm_eps, hn, NULL));
  DSC_TRY(dsc_model_round(m, g->hn, N * D)); /* F6 */
  g->main_forwards += 1;
  int identity = nr == N;
  for (int64_t i = 0; identity && i < nr; ++i) identity = g->h_gidx[i] == i;
  if (identity) return head(g, g->hn, nr, lh);
  DSC_TRY(up(g, g->d_gidx, g->h_gidx, (size_t)nr * sizeof(int32_t)));
  DSC_TRY(gather(g, g->hn, N, g->d_gidx, nr, g->xn));
  return head(g, g->xn, nr, lh);
}

/* Decode and verify steps run with every GEMM row independent of the row count (cpu/gemm.c):
 * verifying 1 + num_draft tokens per sequence then gives plain decoding's logits bit for bit.
 * A BF16 model's passes run in BF16-operand math (dsc_model_math_enter). */
static dsc_status main_forward(gen *g, int32_t nb, int32_t T, int prefill, int64_t nr,
                               const float **lh) {
  const int32_t inv = g->ctx->row_invariant;
  g->ctx->row_invariant = !prefill;
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = main_forward_(g, nb, T, prefill, nr, lh);
  dsc_model_math_leave(g->m, mm);
  g->ctx->row_invariant = inv;
  return st;
}

/* MTP module 0 on the batch [nb, T]: h_ids the tokens one ahead (t_{i+1}), h_pos the
 * positions i, h_seq the sequences, h_gidx [N] the rows of `hsrc` ([hrows, D] on the
 * device) holding the hidden inputs, h_last [nb] the row (b*T + j) whose output drafts.
 * g->mo [nb, D] = the normalized outputs of those rows; logits [nb, V] = head(mo). */
static dsc_status mtp_forward_(gen *g, int32_t nb, int32_t T, int prefill, const float *hsrc,
                               int64_t hrows, const float **lh) {
  dsc_model *m = g->m;
  const dsc_model_mtp *mt = &m->mtp[0];
  const int64_t N = (int64_t)nb * T, D = g->D;
  const float eps = m->cfg.rms_norm_eps;
  DSC_TRY(up(g, g->d_ids, g->h_ids, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_pos, g->h_pos, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_seq, g->h_seq, (size_t)nb * sizeof(int64_t)));
  DSC_TRY(up(g, g->d_gidx, g->h_gidx, (size_t)N * sizeof(int32_t)));
  gview vi, ve, vt, vc, vh, vx, vo;
  DLTensor *ids = mkview(&vi, g->dev, g->d_ids, DSC_DTYPE_INT32, 1, N, 0, 0);
  DLTensor *e = mkview(&ve, g->dev, g->e, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *t = mkview(&vt, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *cat = mkview(&vc, g->dev, g->cat, DSC_DTYPE_FLOAT32, 2, N, 2 * D, 0);
  DLTensor *h = mkview(&vh, g->dev, g->h, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DSC_TRY(dsc_embedding_forward(g->ctx, ids, &m->embed, e));
  DSC_TRY(dsc_rms_norm_forward(g->ctx, e, &mt->enorm, eps, e, NULL));
  DSC_TRY(gather(g, hsrc, hrows, g->d_gidx, N, g->tmp));
  DSC_TRY(dsc_rms_norm_forward(g->ctx, t, &mt->hnorm, eps, t, NULL));
  DSC_TRY(dsc_model_round(m, g->e, N * D)); /* F8 */
  DSC_TRY(dsc_model_round(m, g->tmp, N * D));
  DSC_TRY(dsc_model_concat2(m, e, t, cat)); /* [enorm(emb) ; hnorm(h)]: embedding first */
  DSC_TRY(dsc_linear_forward(g->ctx, cat, &mt->eh_proj, h));
  DSC_TRY(dsc_model_round(m, g->h, N * D));
  DSC_TRY(up(g, g->d_gidx, g->h_last, (size_t)nb * sizeof(int32_t)));
  DSC_TRY(block(g, g->L, g->L, nb, T, prefill, g->d_gidx)); /* the drafting rows -> g->e */
  DLTensor *x = mkview(&vx, g->dev, g->e, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
  DLTensor *mo = mkview(&vo, g->dev, g->mo, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
  DSC_TRY(dsc_rms_norm_forward(g->ctx, x, &mt->head_norm, eps, mo, NULL));
  DSC_TRY(dsc_model_round(m, g->mo, nb * D));
  return head(g, g->mo, nb, lh);
}

static dsc_status mtp_forward(gen *g, int32_t nb, int32_t T, int prefill, const float *hsrc,
                              int64_t hrows, const float **lh) {
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = mtp_forward_(g, nb, T, prefill, hsrc, hrows, lh);
  dsc_model_math_leave(g->m, mm);
  return st;
}

/* ---- drafting ------------------------------------------------------------------------- */

/* Draft token j (0-based) of sequence b from an MTP logits row. */
static dsc_status take_draft(gen *g, int32_t b, int32_t j, const float *l) {
  int32_t tok;
  if (g->greedy) {
    tok = argmax_row(l, g->V);
    if (tok < 0) return bad_logits(g, b);
  } else {
    double *q = g->q + ((int64_t)b * g->K + j) * g->V;
    if (sampling_dist(g, l, q) != 0) return bad_logits(g, b);
    tok = draw(q, g->V, urand(g, b));
  }
  g->drafts[(int64_t)b * g->K + j] = tok;
  g->nd[b] = j + 1;
  return DSC_OK;
}

/* The drafts of every alive sequence b with kn[b] > 0. Catch-up: the MTP block over
 * positions first[b] .. P-1 (P: the pending token's position), the hidden input of position
 * first[b] + j being row hrow0[b] + j of hsrc ([hrows, D], main-model rows after
 * model.norm) and the token input the one a position ahead; its last row drafts token 1.
 * Chain: drafts 2 .. kn[b], one MTP call per draft over the sequences still drafting. */
static dsc_status draft_all(gen *g, const int64_t *first, const int64_t *hrow0, int prefill,
                            const float *hsrc, int64_t hrows) {
  /* catch-up (or the MTP prefill) */
  int32_t nb = 0, T = 0;
  for (int32_t b = 0; b < g->B; ++b) {
    g->nd[b] = 0;
    if (!g->alive[b] || g->kn[b] <= 0) continue;
    const int32_t n = (int32_t)(pending_pos(g, b) - first[b]);
    if (n > T) T = n;
    ++nb;
  }
  if (nb == 0) return DSC_OK;
  int32_t r = 0;
  for (int32_t b = 0; b < g->B; ++b) {
    if (!g->alive[b] || g->kn[b] <= 0) continue;
    const int64_t P = pending_pos(g, b);
    const int32_t n = (int32_t)(P - first[b]);
    for (int32_t j = 0; j < T; ++j) {
      const int64_t k = (int64_t)r * T + j;
      const int valid = j < n;
      g->h_ids[k] = valid ? tok_at(g, b, first[b] + j + 1) : 0;
      g->h_pos[k] = valid ? (int32_t)(first[b] + j) : -1;
      g->h_gidx[k] = valid ? (int32_t)(hrow0[b] + j) : 0;
    }
    g->h_seq[r] = b;
    g->h_last[r] = (int32_t)((int64_t)r * T + n - 1);
    g->mrow[b] = r;
    ++r;
  }
  const float *lh;
  DSC_TRY(mtp_forward(g, nb, T, prefill, hsrc, hrows, &lh));
  for (int32_t b = 0; b < g->B; ++b)
    if (g->alive[b] && g->kn[b] > 0)
      DSC_TRY(take_draft(g, b, 0, lh + (int64_t)g->mrow[b] * g->V));
  /* chain: draft j+1 from draft j, one position further */
  for (int32_t j = 1; j < g->K; ++j) {
    nb = 0;
    for (int32_t b = 0; b < g->B; ++b) {
      if (!g->alive[b] || g->kn[b] <= j) continue;
      g->h_ids[nb] = g->drafts[(int64_t)b * g->K + j - 1];
      g->h_pos[nb] = (int32_t)(pending_pos(g, b) + j - 1);
      g->h_gidx[nb] = g->mrow[b];
      g->h_seq[nb] = b;
      g->h_last[nb] = nb;
      g->mrow[b] = nb; /* the next row (read above before being replaced) */
      ++nb;
    }
    if (nb == 0) break;
    DSC_TRY(mtp_forward(g, nb, 1, 0, g->mo, g->B, &lh));
    for (int32_t b = 0; b < g->B; ++b)
      if (g->alive[b] && g->kn[b] > j) DSC_TRY(take_draft(g, b, j, lh + (int64_t)g->mrow[b] * g->V));
  }
  return DSC_OK;
}

/* Drafts wanted for the next step: never past max_new_tokens. */
static void plan_drafts(gen *g) {
  for (int32_t b = 0; b < g->B; ++b) {
    int32_t k = g->K;
    const int32_t room = g->o.max_new_tokens - g->ngen[b] - 1;
    if (k > room) k = room;
    g->kn[b] = g->alive[b] ? (k > 0 ? k : 0) : 0;
  }
}

/* ---- verification ----------------------------------------------------------------------- */

/* Sequence b's step: its rows of logits (base: the pending token's, then one per draft).
 * Emits the accepted drafts and the correction / bonus token; sets acc[b]. */
static dsc_status verify(gen *g, int32_t b, const float *lrows) {
  const int32_t V = g->V, kb = g->nd[b];
  int32_t a = 0;
  g->drafted += kb;
  for (int32_t j = 0; j <= kb; ++j) {
    const float *l = lrows + (int64_t)j * V;
    int32_t tok;
    int accepted = 0;
    if (j < kb) {
      const int32_t x = g->drafts[(int64_t)b * g->K + j];
      if (g->greedy) {
        tok = argmax_row(l, V);
        if (tok < 0) return bad_logits(g, b);
        accepted = tok == x;
      } else {
        double *p = g->pbuf, *r = g->rbuf;
        const double *q = g->q + ((int64_t)b * g->K + j) * V;
        if (sampling_dist(g, l, p) != 0) return bad_logits(g, b);
        const double u = urand(g, b);
        accepted = u * q[x] < p[x]; /* u < p(x) / q(x); q(x) > 0: x was drawn from q */
        if (accepted) {
          tok = x;
        } else {
          double s = 0.0;
          for (int32_t v = 0; v < V; ++v) {
            r[v] = p[v] > q[v] ? p[v] - q[v] : 0.0;
            s += r[v];
          }
          tok = draw(s > 0.0 ? r : p, V, urand(g, b));
        }
      }
      if (accepted) ++a;
    } else {
      DSC_TRY(sample_row(g, b, l, &tok));
    }
    if (accepted) g->accepted += 1;
    if (emit(g, b, tok)) {
      g->acc[b] = a;
      finish(g, b);
      return DSC_OK;
    }
    if (!accepted) break;
  }
  g->acc[b] = a;
  return DSC_OK;
}

/* ---- validation ------------------------------------------------------------------------- */

/* Host arrays [a, a + na) and [b, b + nb) (bytes) share a byte. */
static int host_overlap(const void *a, size_t na, const void *b, size_t nb) {
  const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return na > 0 && nb > 0 && x < y + nb && y < x + na;
}

/* The outputs (out_tokens, out_lens) are written while the prompts, their lengths and the
 * pointer array are still read (out_tokens is filled with -1 first, and decoding reads the
 * prompts back): no sharing. */
static dsc_status check_host_aliasing(int32_t n_prompts, const int32_t *const *prompts,
                                      const int32_t *prompt_lens, const int32_t *out_tokens,
                                      int32_t max_new, const int32_t *out_lens) {
  const size_t nb = (size_t)n_prompts * sizeof(int32_t);
  const size_t tb = out_tokens ? (size_t)n_prompts * (size_t)max_new * sizeof(int32_t) : 0;
  const struct { const char *name; const void *p; size_t n; } outs[2] = {
      {"out_tokens", out_tokens, tb}, {"out_lens", out_lens, nb}};
  DSC_CHECK(!host_overlap(out_tokens, tb, out_lens, nb), DSC_ERR_INVALID_ARGUMENT, FN,
            "out_lens: expected memory that does not overlap out_tokens, got an overlapping range");
  for (int k = 0; k < 2; ++k) {
    DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompt_lens, nb), DSC_ERR_INVALID_ARGUMENT, FN,
              "%s: expected memory that does not overlap prompt_lens, got an overlapping range",
              outs[k].name);
    DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompts, (size_t)n_prompts * sizeof *prompts),
              DSC_ERR_INVALID_ARGUMENT, FN,
              "%s: expected memory that does not overlap prompts (the pointer array), got an "
              "overlapping range",
              outs[k].name);
    for (int32_t i = 0; i < n_prompts; ++i)
      DSC_CHECK(!host_overlap(outs[k].p, outs[k].n, prompts[i], (size_t)prompt_lens[i] * sizeof(int32_t)),
                DSC_ERR_INVALID_ARGUMENT, FN,
                "%s: expected memory that does not overlap prompts[%d], got an overlapping range "
                "(pass separate output arrays)",
                outs[k].name, (int)i);
  }
  return DSC_OK;
}

static dsc_status validate(const dsc_model *m, const dsc_generate_options *o, int32_t n_prompts,
                           const int32_t *const *prompts, const int32_t *prompt_lens,
                           const int32_t *out_tokens, const int32_t *out_lens,
                           const dsc_generate_stats *stats) {
  const dsc_model_config *c = &m->cfg;
  const int32_t V = c->vocab_size;
  DSC_CHECK(o->size >= sizeof(dsc_generate_options), DSC_ERR_INVALID_ARGUMENT, FN,
            "o: expected options with size = %zu (dsc_generate_options_default), got %zu",
            sizeof(dsc_generate_options), o->size);
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_generate_stats), DSC_ERR_INVALID_ARGUMENT,
            FN, "stats: expected stats->size = %zu, got %zu", sizeof(dsc_generate_stats),
            stats ? stats->size : (size_t)0);
  DSC_CHECK(o->max_new_tokens >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->max_new_tokens: expected >= 0, got %d", (int)o->max_new_tokens);
  DSC_CHECK(isfinite(o->temperature) && o->temperature >= 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->temperature: expected a finite value >= 0 (0: greedy), got %g",
            (double)o->temperature);
  DSC_CHECK(o->top_k >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->top_k: expected >= 0 (0: off), got %d", (int)o->top_k);
  DSC_CHECK(o->top_p > 0.0f && o->top_p <= 1.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->top_p: expected a value in (0, 1] (1: off), got %g", (double)o->top_p);
  DSC_CHECK(o->eos_token_id == DSC_GENERATE_EOS_FROM_CONFIG || o->eos_token_id == -1 ||
                (o->eos_token_id >= 0 && o->eos_token_id < V),
            DSC_ERR_INVALID_ARGUMENT, FN,
            "o->eos_token_id: expected an id in [0, %d), -1 (none) or "
            "DSC_GENERATE_EOS_FROM_CONFIG (-2), got %d",
            (int)V, (int)o->eos_token_id);
  DSC_CHECK(o->speculative == 0 || o->speculative == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->speculative: expected 0 (none) or 1 (MTP), got %d", (int)o->speculative);
  if (o->speculative) {
    DSC_CHECK(m->n_mtp >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "o->speculative: MTP drafts need a model with MTP modules, got "
              "num_nextn_predict_layers = 0");
    DSC_CHECK(o->num_draft >= 1 && o->num_draft <= GEN_MAX_DRAFT, DSC_ERR_INVALID_ARGUMENT, FN,
              "o->num_draft: expected a value in [1, %d], got %d", GEN_MAX_DRAFT,
              (int)o->num_draft);
  }
  const dsc_dtype cd = (dsc_dtype)o->cache_dtype;
  DSC_CHECK(cd == DSC_DTYPE_FLOAT32 || cd == DSC_DTYPE_BFLOAT16 || cd == DSC_DTYPE_FLOAT8_E4M3FN,
            DSC_ERR_INVALID_ARGUMENT, FN,
            "o->cache_dtype: expected float32, bfloat16 or float8_e4m3fn, got %s (%d)",
            dsc_dtype_name(cd), (int)o->cache_dtype);
  DSC_CHECK(o->block_size >= 1 && o->block_size <= (1 << 16), DSC_ERR_INVALID_ARGUMENT, FN,
            "o->block_size: expected a value in [1, 65536], got %d", (int)o->block_size);
  DSC_CHECK(o->max_batch >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "o->max_batch: expected >= 0 (0: n_prompts), got %d", (int)o->max_batch);
  DSC_CHECK(n_prompts >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_prompts: expected at least one prompt, got %d", (int)n_prompts);
  DSC_CHECK(o->max_batch == 0 || n_prompts <= o->max_batch, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_prompts: expected at most o->max_batch = %d prompts, got %d", (int)o->max_batch,
            (int)n_prompts);
  DSC_CHECK(prompts != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "prompts: expected an array, got NULL");
  DSC_CHECK(prompt_lens != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
            "prompt_lens: expected an array, got NULL");
  DSC_CHECK(out_lens != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out_lens: expected an array, got NULL");
  DSC_CHECK(out_tokens != NULL || o->max_new_tokens == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "out_tokens: expected an array of n_prompts * max_new_tokens ids, got NULL");
  for (int32_t i = 0; i < n_prompts; ++i) {
    const int32_t n = prompt_lens[i];
    DSC_CHECK(n >= 1, DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: expected at least one token, got prompt_lens[%d] = %d", (int)i, (int)i,
              (int)n);
    DSC_CHECK(prompts[i] != NULL, DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: expected %d token ids, got NULL", (int)i, (int)n);
    DSC_CHECK((int64_t)n + o->max_new_tokens <= c->max_position_embeddings,
              DSC_ERR_INVALID_ARGUMENT, FN,
              "prompts[%d]: prompt length %d + max_new_tokens %d exceeds "
              "max_position_embeddings = %d",
              (int)i, (int)n, (int)o->max_new_tokens, (int)c->max_position_embeddings);
    for (int32_t j = 0; j < n; ++j)
      DSC_CHECK(prompts[i][j] >= 0 && prompts[i][j] < V, DSC_ERR_INVALID_ARGUMENT, FN,
                "prompts[%d]: expected ids in [0, %d), got %d at index %d", (int)i, (int)V,
                (int)prompts[i][j], (int)j);
  }
  return check_host_aliasing(n_prompts, prompts, prompt_lens, out_tokens, o->max_new_tokens, out_lens);
}

/* ---- setup ------------------------------------------------------------------------------ */


static dsc_status setup(gen *g) {
  dsc_model *m = g->m;
  const int64_t B = g->B, D = g->D, V = g->V;
  int32_t Tp = 0;
  for (int32_t b = 0; b < g->B; ++b)
    if (g->plen[b] > Tp) Tp = g->plen[b];
  g->Tp = Tp;
  g->Tv = 1 + g->K;
  const int64_t Tm = Tp > g->Tv ? Tp : g->Tv;
  g->Nmax = B * Tm;
  g->LRmax = g->all_logits ? g->Nmax : B * g->Tv; /* >= B: the prefill's and the MTP's rows */

  /* the cache: L layers, + the MTP block's */
  dsc_mla_cache_options co;
  memset(&co, 0, sizeof co);
  co.size = sizeof co;
  co.n_layers = g->L + (g->K > 0 ? 1 : 0);
  co.max_batch = g->B;
  co.max_tokens = Tp + g->o.max_new_tokens;
  co.block_size = g->o.block_size;
  co.n_blocks = 0;
  co.kv_lora_rank = m->cfg.kv_lora_rank;
  co.rope_dim = m->cfg.qk_rope_head_dim;
  co.dtype = g->o.cache_dtype;
  DSC_TRY(dsc_mla_cache_create(g->ctx, &co, &g->cache));

  /* device buffers: one allocation; sizes checked (many prompts x long prompts x a wide
   * model can exceed 64 bits) */
  const int64_t N = g->Nmax;
  const int spec = g->K > 0;
  int ok = 1;
  const size_t nd4 = dsc_cbytes(dsc_cmul(N, D, &ok), 4, &ok);
  size_t sz[12] = {
      nd4,                                              /* h */
      nd4,                                              /* xn */
      nd4,                                              /* tmp */
      nd4,                                              /* hn */
      spec ? nd4 : 0,                                   /* e */
      spec ? dsc_cbytes(dsc_cmul3(N, 2, D, &ok), 4, &ok) : 0, /* cat */
      spec ? dsc_cbytes(dsc_cmul(B, D, &ok), 4, &ok) : 0,     /* mo */
      dsc_cbytes(dsc_cmul(g->LRmax, V, &ok), 4, &ok),   /* logits */
      dsc_cbytes(N, 4, &ok),                            /* ids */
      dsc_cbytes(N, 4, &ok),                            /* pos */
      dsc_cbytes(N, 4, &ok),                            /* gidx */
      dsc_cbytes(B, 8, &ok),                            /* seq */
  };
  size_t tot = 0, off[12];
  for (int i = 0; i < 12; ++i) {
    off[i] = tot;
    tot = dsc_caddz(tot, dsc_calign(sz[i], 256, &ok), &ok);
  }
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN,
            "the buffers for %lld prompts of up to %lld tokens do not fit in 64 bits", (long long)B,
            (long long)Tm);
  DSC_TRY(dsc_malloc(g->ctx, tot, &g->dmem));
  char *d = (char *)g->dmem;
  g->h = (float *)(d + off[0]);
  g->xn = (float *)(d + off[1]);
  g->tmp = (float *)(d + off[2]);
  g->hn = (float *)(d + off[3]);
  g->e = spec ? (float *)(d + off[4]) : NULL;
  g->cat = spec ? (float *)(d + off[5]) : NULL;
  g->mo = spec ? (float *)(d + off[6]) : NULL;
  g->logits = (float *)(d + off[7]);
  g->d_ids = (int32_t *)(d + off[8]);
  g->d_pos = (int32_t *)(d + off[9]);
  g->d_gidx = (int32_t *)(d + off[10]);
  g->d_seq = (int64_t *)(d + off[11]);

  /* host memory */
  const int64_t K1 = g->K > 0 ? g->K : 1;
  size_t hs[17] = {
      (size_t)N * 4,                                /* ids */
      (size_t)N * 4,                                /* pos */
      (size_t)N * 4,                                /* gidx */
      (size_t)B * 4,                                /* last */
      (size_t)B * 8,                                /* seq */
      g->host ? 0 : sz[7],                          /* logits (the device's, checked) */
      (size_t)B * 4, (size_t)B * 4, (size_t)B * 4,  /* ngen, alive, nd */
      (size_t)(B * K1) * 4,                         /* drafts (K1 <= 16) */
      (size_t)B * 4, (size_t)B * 4, (size_t)B * 4, (size_t)B * 4, /* row, acc, mrow, kn */
      (size_t)B * 8, (size_t)B * 8,                 /* rkey, rctr */
      (size_t)(2 * V) * 8,                          /* pbuf, rbuf */
  };
  size_t htot = 0, hoff[17];
  for (int i = 0; i < 17; ++i) {
    hoff[i] = htot;
    htot = dsc_caddz(htot, dsc_calign(hs[i], 256, &ok), &ok);
  }
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "the host buffers do not fit in 64 bits");
  g->hmem = calloc(1, htot);
  g->pairs = (struct pair *)malloc((size_t)V * sizeof *g->pairs);
  if (!g->hmem || !g->pairs)
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %zu bytes of host buffers", htot);
  char *hp = (char *)g->hmem;
  g->h_ids = (int32_t *)(hp + hoff[0]);
  g->h_pos = (int32_t *)(hp + hoff[1]);
  g->h_gidx = (int32_t *)(hp + hoff[2]);
  g->h_last = (int32_t *)(hp + hoff[3]);
  g->h_seq = (int64_t *)(hp + hoff[4]);
  g->h_logits = g->host ? NULL : (float *)(hp + hoff[5]);
  g->ngen = (int32_t *)(hp + hoff[6]);
  g->alive = (int32_t *)(hp + hoff[7]);
  g->nd = (int32_t *)(hp + hoff[8]);
  g->drafts = (int32_t *)(hp + hoff[9]);
  g->row = (int32_t *)(hp + hoff[10]);
  g->acc = (int32_t *)(hp + hoff[11]);
  g->mrow = (int32_t *)(hp + hoff[12]);
  g->kn = (int32_t *)(hp + hoff[13]);
  g->rkey = (uint64_t *)(hp + hoff[14]);
  g->rctr = (uint64_t *)(hp + hoff[15]);
  g->pbuf = (double *)(hp + hoff[16]);
  g->rbuf = g->pbuf + V;
  if (spec && !g->greedy) {
    const size_t qb = dsc_cbytes(dsc_cmul3(B, g->K, V, &ok), sizeof(double), &ok);
    g->q = ok ? (double *)malloc(qb) : NULL;
    if (!g->q)
      return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the draft distributions");
  }
  const uint64_t base = mix64(g->o.seed ^ 0x6a09e667f3bcc908ull);
  for (int32_t b = 0; b < g->B; ++b) {
    g->rkey[b] = mix64(base + mix64((uint64_t)b + 1));
    g->rctr[b] = 0;
  }
  return DSC_OK;
}

static double now_s(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- expert parallel ------------------------------------------------------------------- */

/* The model's MoE layers exchange tokens with other ranks: every rank of the group must run
 * the same sequence of them. */
static int ep_generation(const dsc_model *m) {
  for (int32_t b = 0; m->dist && b < m->n_blocks; ++b)
    if (dsc_model_exchange(m, b)) return 1;
  return 0;
}

/* A decode step of a rank without sequences: each main MoE layer on no tokens (its experts
 * still serve the other ranks' rows). */
static dsc_status idle_step(gen *g) {
  dsc_model *m = g->m;
  gview vx, vy;
  DLTensor *x = mkview(&vx, g->dev, g->xn, DSC_DTYPE_FLOAT32, 2, 0, g->D, 0);
  DLTensor *y = mkview(&vy, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, 0, g->D, 0);
  for (int32_t b = 0; b < g->L; ++b)
    if (m->blocks[b].is_moe) DSC_TRY(dsc_model_ffn_infer(m, b, x, y, NULL, g->hw));
  return DSC_OK;
}

/* ---- the loop --------------------------------------------------------------------------- */

static dsc_status run(gen *g, int64_t *first /* [2B] host scratch */) {
  const int32_t B = g->B, V = g->V;
  int64_t *hrow0 = first + B;
  DSC_TRY(setup(g));

  /* prefill: [B, Tp], -1 padded; logits of each prompt's last token */
  const int32_t Tp = g->Tp;
  for (int32_t b = 0; b < B; ++b) {
    DSC_TRY(dsc_mla_cache_add_sequence(g->cache, b));
    g->alive[b] = 1;
    for (int32_t j = 0; j < Tp; ++j) {
      const int valid = j < g->plen[b];
      g->h_ids[(int64_t)b * Tp + j] = valid ? g->prompts[b][j] : 0;
      g->h_pos[(int64_t)b * Tp + j] = valid ? j : -1;
    }
    g->h_seq[b] = b;
    g->h_gidx[b] = (int32_t)((int64_t)b * Tp + g->plen[b] - 1);
  }
  const float *lh;
  DSC_TRY(main_forward(g, B, Tp, 1, B, &lh));
  for (int32_t b = 0; b < B && !g->stop_all; ++b) {
    int32_t tok;
    DSC_TRY(sample_row(g, b, lh + (int64_t)b * V, &tok));
    if (emit(g, b, tok)) finish(g, b);
  }
  if (g->stop_all)
    for (int32_t b = 0; b < B; ++b) finish(g, b);
  if (g->K > 0) {
    /* the MTP prefill: positions 0 .. plen-1 from the prefill's hidden rows b*Tp + i */
    for (int32_t b = 0; b < B; ++b) {
      first[b] = 0;
      hrow0[b] = (int64_t)b * Tp;
    }
    plan_drafts(g);
    DSC_TRY(draft_all(g, first, hrow0, 1, g->hn, (int64_t)B * Tp));
  }

  /* decode steps: the pending token + its drafts at P .. P + nd, ragged, -1 padded */
  const int ep = ep_generation(g->m);
  for (;;) {
    int32_t nb = 0, T = 1;
    for (int32_t b = 0; b < B; ++b)
      if (g->alive[b]) {
        ++nb;
        if (1 + g->nd[b] > T) T = 1 + g->nd[b];
      }
    if (ep) {
      /* expert parallel: a rank whose sequences are all done still computes its experts for
       * the others' tokens, until every rank of the group is done */
      int64_t any = nb > 0;
      DSC_TRY(dsc_model_host_all_reduce(g->m, g->m->dist->epc, &any, 1, DSC_DTYPE_INT64, DSC_REDUCE_MAX));
      if (!any) break;
      if (nb == 0) {
        DSC_TRY(idle_step(g));
        continue;
      }
    }
    if (nb == 0) break;
    int32_t r = 0;
    int64_t nr = 0;
    for (int32_t b = 0; b < B; ++b) {
      if (!g->alive[b]) continue;
      const int64_t P = pending_pos(g, b);
      for (int32_t j = 0; j < T; ++j) {
        const int64_t k = (int64_t)r * T + j;
        const int valid = j <= g->nd[b];
        g->h_ids[k] = !valid ? 0 : j == 0 ? tok_at(g, b, P) : g->drafts[(int64_t)b * g->K + j - 1];
        g->h_pos[k] = valid ? (int32_t)(P + j) : -1;
        if (valid) g->h_gidx[nr++] = (int32_t)k;
      }
      g->h_seq[r] = b;
      g->row[b] = r;
      first[b] = P;
      ++r;
    }
    DSC_TRY(main_forward(g, nb, T, 0, nr, &lh));
    /* verification in batch order; the logits rows are the valid rows, packed */
    int64_t lrow = 0;
    for (int32_t b = 0; b < B; ++b) {
      if (!g->alive[b]) continue;
      const int64_t base = lrow;
      lrow += 1 + g->nd[b];
      hrow0[b] = (int64_t)g->row[b] * T; /* hn rows of positions P, P+1, .. */
      if (g->stop_all) {
        finish(g, b);
        continue;
      }
      DSC_TRY(verify(g, b, lh + base * V));
      if (g->alive[b]) DSC_TRY(dsc_mla_cache_truncate(g->cache, b, first[b] + g->acc[b] + 1));
    }
    if (g->stop_all)
      for (int32_t b = 0; b < B; ++b) finish(g, b);
    if (g->K > 0) {
      plan_drafts(g);
      DSC_TRY(draft_all(g, first, hrow0, 0, g->hn, (int64_t)nb * T));
    }
  }
  return DSC_OK;
}

/* The fields every call sets alike: model, context, device, sizes, and the held FP8 weights
 * of a frozen model (a non-frozen fp8 model builds its own per call, into w8). */
static dsc_status gen_init(gen *g, dsc_model *m, int32_t B) {
  memset(g, 0, sizeof *g);
  g->m = m;
  g->ctx = m->ctx;
  DSC_TRY(dsc_context_get_device(g->ctx, &g->dev));
  g->host = g->dev.device_type == kDLCPU;
  g->B = B;
  g->D = m->cfg.hidden_size;
  g->V = m->cfg.vocab_size;
  g->L = m->n_layers;
  g->hw = m->frozen ? &m->held : NULL;
  return DSC_OK;
}

/* dsc_model_forward of a frozen model (its training forward needs the float32 masters): the
 * inference prefill of tokens [B, T] on a fresh latent cache, with the logits of every row,
 * i.e. what generation computes for those positions. tokens and logits are checked by the
 * caller (model_train.c). */
dsc_status dsc_model_forward_infer(dsc_model *m, const DLTensor *tokens, DLTensor *logits) {
  static const char *const FNF = "dsc_model_forward";
  /* T <= max_position_embeddings (checked by the caller); B feeds int32 batch indices */
  DSC_CHECK(tokens->shape[0] <= (1 << 24), DSC_ERR_SHAPE, FNF,
            "tokens: expected at most 2^24 rows for a frozen model's forward, got %lld",
            (long long)tokens->shape[0]);
  const int32_t B = (int32_t)tokens->shape[0], T = (int32_t)tokens->shape[1];
  const int64_t N = (int64_t)B * T;
  gen g;
  DSC_TRY(gen_init(&g, m, B));
  dsc_generate_options_default(&g.o);
  g.o.max_new_tokens = 0;
  g.eos = -1;
  g.greedy = 1;
  g.all_logits = 1;
  int32_t *ids = (int32_t *)malloc((size_t)N * sizeof(int32_t));         /* [B, T] host */
  int32_t *lens = (int32_t *)malloc((size_t)B * sizeof(int32_t));        /* [B] */
  const int32_t **rows = (const int32_t **)malloc((size_t)B * sizeof *rows);
  dsc_status st = ids && lens && rows ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, FNF, "out of host memory");
  const DLDevice host = {kDLCPU, 0};
  if (st == DSC_OK)
    st = dsc_memcpy(g.ctx, ids, host, dsc_data(tokens), tokens->device, (size_t)N * sizeof(int32_t));
  for (int32_t b = 0; st == DSC_OK && b < B; ++b) {
    rows[b] = ids + (int64_t)b * T;
    lens[b] = T;
  }
  g.prompts = rows;
  g.plen = lens;
  if (st == DSC_OK) st = setup(&g);
  for (int32_t b = 0; st == DSC_OK && b < B; ++b) {
    st = dsc_mla_cache_add_sequence(g.cache, b);
    for (int32_t j = 0; j < T; ++j) {
      g.h_ids[(int64_t)b * T + j] = rows[b][j];
      g.h_pos[(int64_t)b * T + j] = j;
    }
    g.h_seq[b] = b;
  }
  for (int64_t i = 0; st == DSC_OK && i < N; ++i) g.h_gidx[i] = (int32_t)i; /* every row's logits */
  const float *lh = NULL;
  if (st == DSC_OK) st = main_forward(&g, B, T, 1, N, &lh);
  if (st == DSC_OK) /* g.logits holds them on the device (and lh a host copy off the CPU) */
    st = dsc_memcpy(g.ctx, dsc_data(logits), logits->device, g.logits, g.dev,
                    (size_t)N * (size_t)g.V * sizeof(float));
  release(&g);
  free(ids);
  free(lens);
  free(rows);
  return st;
}

/* The public forward: the training forward's logits, or for a frozen model (no float32
 * masters to run it with) the inference prefill's. Here, above both. */
dsc_status dsc_model_forward(dsc_model *m, const DLTensor *tokens, DLTensor *logits) {
  static const char *const FNF = "dsc_model_forward";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FNF, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_ids(m, FNF, "tokens", tokens, NULL, 0, 0));
  DSC_TRY(dsc_check_tensor(m->ctx, FNF, "logits", logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shp[3] = {tokens->shape[0], tokens->shape[1], m->cfg.vocab_size};
  DSC_TRY(dsc_check_shape(FNF, "logits", logits, 3, shp));
  DSC_TRY(dsc_check_no_overlap(FNF, "logits", logits, "tokens", tokens));
  return m->frozen ? dsc_model_forward_infer(m, tokens, logits) : dsc_model_forward_logits(m, tokens, logits);
}

dsc_status dsc_model_generate(dsc_model *model, const dsc_generate_options *o, int32_t n_prompts,
                              const int32_t *const *prompts, const int32_t *prompt_lens,
                              int32_t *out_tokens, int32_t *out_lens, dsc_token_fn on_token,
                              void *user, dsc_generate_stats *stats) {
  DSC_CHECK(model != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  dsc_generate_options defaults;
  if (!o) {
    dsc_generate_options_default(&defaults);
    o = &defaults;
  }
  const dsc_status vs = validate(model, o, n_prompts, prompts, prompt_lens, out_tokens, out_lens, stats);
  if (ep_generation(model)) {
    /* every rank of the expert-parallel group must take part in the same steps: they compare
     * first (a rank with bad arguments would otherwise leave the others waiting) */
    char vmsg[1024];
    snprintf(vmsg, sizeof vmsg, "%s", dsc_last_error());
    static const char *const names[3] = {"whether their arguments are valid", "o->speculative",
                                         "whether o->max_new_tokens > 0"};
    const int64_t f[3] = {vs != DSC_OK, vs == DSC_OK ? o->speculative : 0,
                          vs == DSC_OK ? o->max_new_tokens > 0 : 0};
    const dsc_status as = dsc_dist_agree(model->dist->epc, model->ctx, FN, 3, f, names);
    if (vs != DSC_OK) return dsc_error_set(vs, vmsg);
    DSC_TRY(as);
    DSC_CHECK(!o->speculative, DSC_ERR_UNSUPPORTED, FN,
              "o->speculative: MTP speculative decoding is not supported with expert parallelism (the ranks' "
              "draft steps would differ); generate with speculative = 0");
  }
  DSC_TRY(vs);
  const double t0 = now_s();

  gen g;
  DSC_TRY(gen_init(&g, model, n_prompts));
  g.o = *o;
  g.o.size = sizeof g.o;
  g.eos = o->eos_token_id == DSC_GENERATE_EOS_FROM_CONFIG ? model->cfg.eos_token_id : o->eos_token_id;
  if (g.eos < -1 || g.eos >= model->cfg.vocab_size) g.eos = -1;
  g.greedy = o->temperature == 0.0f;
  g.K = o->speculative ? o->num_draft : 0;
  g.prompts = prompts;
  g.plen = prompt_lens;
  g.out = out_tokens;
  g.on_token = on_token;
  g.user = user;

  if (o->max_new_tokens > 0)
    for (int64_t i = 0; i < (int64_t)n_prompts * o->max_new_tokens; ++i) out_tokens[i] = -1;
  dsc_status s = DSC_OK;
  if (o->max_new_tokens > 0) s = dsc_model_refresh_compute(model); /* BF16: this call's weights */
  if (o->max_new_tokens > 0 && s == DSC_OK) {
    /* fp8: every block matrix to E4M3 once, so that no token re-quantizes a weight (a
     * frozen model holds them already: g.hw) */
    if (!model->frozen && model->fp8) {
      s = dsc_model_fp8w_build(model, &g.w8);
      g.hw = &g.w8;
    }
    int64_t *first = (int64_t *)malloc((size_t)(2 * n_prompts) * sizeof(int64_t));
    if (s == DSC_OK)
      s = first ? run(&g, first)
                : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %d rows", (int)n_prompts);
    free(first);
    dsc_model_fp8w_free(model, &g.w8);
  }
  for (int32_t b = 0; b < n_prompts; ++b) out_lens[b] = g.ngen ? g.ngen[b] : 0;
  const double dt = now_s() - t0;
  if (stats) {
    int64_t pt = 0;
    for (int32_t b = 0; b < n_prompts; ++b) pt += prompt_lens[b];
    stats->prompt_tokens = pt;
    stats->new_tokens = g.new_tokens;
    stats->drafted = g.drafted;
    stats->accepted = g.accepted;
    stats->main_forwards = g.main_forwards;
    stats->seconds = dt;
    stats->tokens_per_s = dt > 0.0 ? (double)g.new_tokens / dt : 0.0;
  }
  release(&g);
  return s;
}
