/*
 * model/infer.c -- inference with the paged latent cache (infer.h): buffers and cache of a
 * batch, the decoder blocks' prefill/decode passes, the head, MTP module 0's pass, the
 * device-resident passes (the plain decode step [B, 1], the speculative verification
 * [B, 1 + K] and MTP passes [B, 1 + K] / [B, 1]: inputs and cache plan on the device, no
 * host wait or copy), and dsc_model_forward of a frozen model (the prefill with every
 * row's logits). Generation (generate.c) drives these.
 * Where the host waits: the host-staged passes (dsc_infer_main, dsc_infer_mtp: uploads,
 * the MLA ops' checks, the logits copied back) that the prefill, expert-parallel
 * generation and DSC_DEVICE_DECODE=0 use.
 *
 * Passes follow the training forward's BF16 rounding points (model_layers.c: F1-F8).
 * Legend: B batch rows, T tokens per row, N = B*T, D hidden, V vocab, L main layers.
 */
#include <stdlib.h>
#include <string.h>

#include "infer.h"
#include "../ops/mla_internal.h"

static const DLDevice HOST = {kDLCPU, 0};

DLTensor *dsc_gview_make(dsc_gview *v, DLDevice dev, void *data, dsc_dtype dt, int ndim, int64_t d0,
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
#define mkview dsc_gview_make

dsc_status dsc_infer_init(dsc_infer *g, dsc_model *m, int32_t B) {
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

void dsc_infer_release(dsc_infer *g) {
  if (g->cache) dsc_mla_cache_destroy(g->cache);
  if (g->dmem) dsc_free(g->ctx, g->dmem);
  free(g->hmem);
  g->cache = NULL;
  g->dmem = NULL;
  g->hmem = NULL;
}

dsc_status dsc_infer_setup(dsc_infer *g, const char *FN, const int32_t *plen, int32_t max_new, int32_t K,
                           int32_t cache_dtype, int32_t block_size) {
  dsc_model *m = g->m;
  const int64_t B = g->B, D = g->D, V = g->V;
  int32_t Tp = 0;
  for (int32_t b = 0; b < g->B; ++b)
    if (plen[b] > Tp) Tp = plen[b];
  g->K = K;
  g->Tp = Tp;
  g->Tv = 1 + K;
  const int64_t Tm = Tp > g->Tv ? Tp : g->Tv;
  g->Nmax = B * Tm;
  g->LRmax = g->all_logits ? g->Nmax : B * g->Tv; /* >= B: the prefill's and the MTP's rows */

  /* the cache: L layers, + the MTP block's */
  dsc_mla_cache_options co;
  memset(&co, 0, sizeof co);
  co.size = sizeof co;
  co.n_layers = g->L + (K > 0 ? 1 : 0);
  co.max_batch = g->B;
  co.max_tokens = Tp + max_new;
  co.block_size = block_size;
  co.n_blocks = 0;
  co.kv_lora_rank = m->cfg.kv_lora_rank;
  co.rope_dim = m->cfg.qk_rope_head_dim;
  co.dtype = cache_dtype;
  DSC_TRY(dsc_mla_cache_create(g->ctx, &co, &g->cache));
  g->max_kv = co.max_tokens;

  /* device buffers: one allocation; sizes checked (many prompts x long prompts x a wide
   * model can exceed 64 bits) */
  const int64_t N = g->Nmax;
  const int spec = K > 0;
  int ok = 1;
  const size_t nd4 = dsc_cbytes(dsc_cmul(N, D, &ok), 4, &ok);
  const int64_t BT = dsc_cmul(B, g->Tv, &ok); /* the device step's rows: B * (1 + K) */
  enum { NBUF = 15 };
  size_t sz[NBUF] = {
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
      dsc_cbytes(dsc_cadd(B, BT, &ok), 8, &ok),         /* slot [B], slot per row [B*Tv] */
      dsc_cbytes(dsc_cmul(3, BT, &ok), 8, &ok),         /* meta */
      dsc_cbytes(B, 4, &ok),                            /* last */
  };
  size_t tot = 0, off[NBUF];
  for (int i = 0; i < NBUF; ++i) {
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
  g->d_slot = (int64_t *)(d + off[12]);
  g->d_meta = (int64_t *)(d + off[13]);
  g->d_slotv = g->d_slot + B;
  g->d_last = (int32_t *)(d + off[14]);

  /* host staging */
  size_t hs[6] = {
      (size_t)N * 4,       /* ids */
      (size_t)N * 4,       /* pos */
      (size_t)N * 4,       /* gidx */
      (size_t)B * 4,       /* last */
      (size_t)B * 8,       /* seq */
      g->host ? 0 : sz[7], /* logits (the device's, checked) */
  };
  size_t htot = 0, hoff[6];
  for (int i = 0; i < 6; ++i) {
    hoff[i] = htot;
    htot = dsc_caddz(htot, dsc_calign(hs[i], 256, &ok), &ok);
  }
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, FN, "the host buffers do not fit in 64 bits");
  g->hmem = calloc(1, htot);
  if (!g->hmem)
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate %zu bytes of host buffers", htot);
  char *hp = (char *)g->hmem;
  g->h_ids = (int32_t *)(hp + hoff[0]);
  g->h_pos = (int32_t *)(hp + hoff[1]);
  g->h_gidx = (int32_t *)(hp + hoff[2]);
  g->h_last = (int32_t *)(hp + hoff[3]);
  g->h_seq = (int64_t *)(hp + hoff[4]);
  g->h_logits = g->host ? NULL : (float *)(hp + hoff[5]);
  return DSC_OK;
}

/* ---- model pieces ---------------------------------------------------------------------- */

static dsc_status up(dsc_infer *g, void *dst, const void *src, size_t bytes) {
  return dsc_memcpy(g->ctx, dst, g->dev, src, HOST, bytes);
}

/* rows dst[i] = src[idx[i]] for i < n: the embedding lookup with `src` as the table. */
static dsc_status gather(dsc_infer *g, const float *src, int64_t src_rows, const int32_t *d_idx,
                         int64_t n, float *dst) {
  dsc_gview vi, vs, vd;
  DLTensor *ids = mkview(&vi, g->dev, (void *)d_idx, DSC_DTYPE_INT32, 1, n, 0, 0);
  DLTensor *tab = mkview(&vs, g->dev, (void *)src, DSC_DTYPE_FLOAT32, 2, src_rows, g->D, 0);
  DLTensor *out = mkview(&vd, g->dev, dst, DSC_DTYPE_FLOAT32, 2, n, g->D, 0);
  return dsc_embedding_forward(g->ctx, ids, tab, out);
}

/* One decoder block (main layer or MTP block) on g->h [nb, T, D], in place:
 * h += MLA(norm(h)); h += FFN(norm(h)). d_seq / d_pos hold the batch.
 * planned: the device-resident decode step (T = 1, the cache plan in g->d_meta).
 * d_last != NULL (the MTP block: only one row per sequence drafts): the FFN half runs on
 * rows d_last[0 .. nb) of h only, gathered into g->e [nb, D] (the block's output rows
 * there); the other rows need only their attention latents, which the MLA half has
 * written to the cache. Rows are independent in the FFN, so the drafting rows are what
 * they would be with every row computed. */
static dsc_status block(dsc_infer *g, int32_t bi, int32_t layer, int32_t nb, int32_t T, int prefill,
                        int planned, const int32_t *d_last /* [nb] device, or NULL */) {
  dsc_model *m = g->m;
  const dsc_model_block *bk = &m->blocks[bi];
  const int64_t N = (int64_t)nb * T, D = g->D;
  const float eps = m->cfg.rms_norm_eps;
  dsc_gview vh, vx, vt, vx3, vt3, vs, vp;
  DLTensor *h = mkview(&vh, g->dev, g->h, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *xn = mkview(&vx, g->dev, g->xn, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *t = mkview(&vt, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *xn3 = mkview(&vx3, g->dev, g->xn, DSC_DTYPE_FLOAT32, 3, nb, T, D);
  DLTensor *t3 = mkview(&vt3, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 3, nb, T, D);
  DLTensor *seq = mkview(&vs, g->dev, g->d_seq, DSC_DTYPE_INT64, 1, nb, 0, 0);
  DLTensor *pos = mkview(&vp, g->dev, g->d_pos, DSC_DTYPE_INT32, 2, nb, T, 0);
  /* BF16 compute: the training forward's rounding points F1-F3, F5 (model_layers.c) */
  DSC_TRY(dsc_rms_norm_forward(g->ctx, h, &bk->input_norm, eps, xn, NULL));
  DSC_TRY(dsc_model_round(m, g->xn, N * D));
  dsc_mla_weights w;
  dsc_model_mla_weights_fp8(m, bi, g->hw, &w);
  if (planned)
    DSC_TRY(dsc_mla_decode_planned(g->ctx, &m->mla, &w, g->cache, layer, xn3, pos, g->d_meta, g->max_kv, t3));
  else
    DSC_TRY(prefill ? dsc_mla_prefill(g->ctx, &m->mla, &w, g->cache, layer, xn3, seq, pos, t3)
                    : dsc_mla_decode(g->ctx, &m->mla, &w, g->cache, layer, xn3, seq, pos, t3));
  DSC_TRY(dsc_model_round(m, g->tmp, N * D));
  DSC_TRY(dsc_add(g->ctx, h, t, h));
  dsc_gview ve, vx1, vt1; /* the d_last rows' views (outlive the branch: h, xn, t point here) */
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

/* logits [nr, V] = head(x [nr, D]); *lh = the host copy (NULL lh: none made). */
static dsc_status head(dsc_infer *g, const float *x, int64_t nr, const float **lh) {
  dsc_gview vx, vl;
  DLTensor *xt = mkview(&vx, g->dev, (void *)x, DSC_DTYPE_FLOAT32, 2, nr, g->D, 0);
  DLTensor *lt = mkview(&vl, g->dev, g->logits, DSC_DTYPE_FLOAT32, 2, nr, g->V, 0);
  DSC_TRY(dsc_linear_forward(g->ctx, xt, &g->m->head, lt));
  DSC_TRY(dsc_model_round(g->m, g->logits, nr * g->V)); /* F7 */
  if (!lh) return DSC_OK;
  if (g->host) {
    *lh = g->logits;
    return DSC_OK;
  }
  DSC_TRY(dsc_memcpy(g->ctx, g->h_logits, HOST, g->logits, g->dev,
                     (size_t)nr * (size_t)g->V * sizeof(float)));
  *lh = g->h_logits;
  return DSC_OK;
}

/* The main model's blocks, final norm and head on the ids/positions already on the device
 * ([nb, T]); logits of rows d_gidx[0 .. nr) of hn, or of every row when gidx is NULL. */
static dsc_status main_pass(dsc_infer *g, int32_t nb, int32_t T, int prefill, int planned, int64_t nr,
                            const int32_t *d_gidx, const float **lh) {
  dsc_model *m = g->m;
  const int64_t N = (int64_t)nb * T, D = g->D;
  dsc_gview vi, vh, vn;
  DLTensor *ids = mkview(&vi, g->dev, g->d_ids, DSC_DTYPE_INT32, 1, N, 0, 0);
  DLTensor *h = mkview(&vh, g->dev, g->h, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DLTensor *hn = mkview(&vn, g->dev, g->hn, DSC_DTYPE_FLOAT32, 2, N, D, 0);
  DSC_TRY(dsc_embedding_forward(g->ctx, ids, &m->embed, h));
  for (int32_t b = 0; b < g->L; ++b) DSC_TRY(block(g, b, b, nb, T, prefill, planned, NULL));
  DSC_TRY(dsc_rms_norm_forward(g->ctx, h, &m->final_norm, m->cfg.rms_norm_eps, hn, NULL));
  DSC_TRY(dsc_model_round(m, g->hn, N * D)); /* F6 */
  g->main_forwards += 1;
  if (!d_gidx) return head(g, g->hn, N, lh);
  DSC_TRY(gather(g, g->hn, N, d_gidx, nr, g->xn));
  return head(g, g->xn, nr, lh);
}

static dsc_status main_forward_(dsc_infer *g, int32_t nb, int32_t T, int prefill, int64_t nr,
                                const float **lh) {
  const int64_t N = (int64_t)nb * T;
  DSC_TRY(up(g, g->d_ids, g->h_ids, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_pos, g->h_pos, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_seq, g->h_seq, (size_t)nb * sizeof(int64_t)));
  int identity = nr == N;
  for (int64_t i = 0; identity && i < nr; ++i) identity = g->h_gidx[i] == i;
  if (!identity) DSC_TRY(up(g, g->d_gidx, g->h_gidx, (size_t)nr * sizeof(int32_t)));
  return main_pass(g, nb, T, prefill, 0, nr, identity ? NULL : g->d_gidx, lh);
}

/* Decode and verify steps run with every GEMM row independent of the row count (cpu/gemm.c):
 * verifying 1 + num_draft tokens per sequence then gives plain decoding's logits bit for bit
 * (and so does the device step, which keeps finished rows in the batch as padding).
 * A BF16 model's passes run in BF16-operand math (dsc_model_math_enter). */
dsc_status dsc_infer_main(dsc_infer *g, int32_t nb, int32_t T, int prefill, int64_t nr, const float **lh) {
  const int32_t inv = g->ctx->row_invariant;
  g->ctx->row_invariant = !prefill;
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = main_forward_(g, nb, T, prefill, nr, lh);
  dsc_model_math_leave(g->m, mm);
  g->ctx->row_invariant = inv;
  return st;
}

dsc_status dsc_infer_plan_device(dsc_infer *g, const int32_t *total) {
  int64_t *slot = (int64_t *)g->h_seq; /* [B] host staging, free between passes */
  for (int32_t b = 0; b < g->B; ++b) { /* total 0: a finished sequence (not in the cache): padding */
    slot[b] = 0;
    if (total[b] > 0) DSC_TRY(mla_cache_reserve(g->cache, b, total[b], &slot[b]));
  }
  /* slot [B], then the slot of every row of a [B, 1 + K] step (row b*Tv + j: sequence b) */
  const int64_t Tv = g->Tv, n = (int64_t)g->B * (1 + Tv);
  int64_t *sv = (int64_t *)malloc((size_t)n * sizeof(int64_t));
  if (!sv) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_model_generate", "could not allocate %lld slots", (long long)n);
  for (int32_t b = 0; b < g->B; ++b) {
    sv[b] = slot[b];
    for (int64_t j = 0; j < Tv; ++j) sv[g->B + b * Tv + j] = slot[b];
  }
  const dsc_status st = up(g, g->d_slot, sv, (size_t)n * sizeof(int64_t));
  free(sv);
  DSC_TRY(st);
  for (int32_t b = 0; b < g->B; ++b) slot[b] = b;
  DSC_TRY(up(g, g->d_seq, slot, (size_t)g->B * sizeof(int64_t)));
  const int32_t *dtables = NULL;
  return mla_cache_device_tables(g->cache, &dtables); /* the one upload of the tables */
}

/* The main model on [B, T] rows with ids / positions on the device (T = 1: row b is
 * sequence b; T = 1 + K: row b*T + j) and every row's logits. */
static dsc_status main_device(dsc_infer *g, int32_t T) {
  dsc_context *ctx = g->ctx;
  const int64_t n = (int64_t)g->B * T;
  DSC_TRY(mla_cache_plan(ctx, g->cache, n, g->d_pos, T == 1 ? g->d_slot : g->d_slotv, g->d_meta));
  const int32_t inv = ctx->row_invariant;
  ctx->row_invariant = 1;
  ctx->trusted_indices += 1; /* ids and positions are the loop's own: no range checks (waits) */
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = main_pass(g, g->B, T, 0, 1, n, NULL, NULL);
  dsc_model_math_leave(g->m, mm);
  ctx->trusted_indices -= 1;
  ctx->row_invariant = inv;
  return st;
}

dsc_status dsc_infer_decode_device(dsc_infer *g) { return main_device(g, 1); }

dsc_status dsc_infer_verify_device(dsc_infer *g) { return main_device(g, g->Tv); }

/* MTP module 0 on [nb, T] with ids, positions and hidden rows d_gidx on the device;
 * d_last [nb] the drafting rows; planned: the cache plan is in d_meta (else d_seq holds
 * the batch's sequences). */
static dsc_status mtp_pass(dsc_infer *g, int32_t nb, int32_t T, int prefill, int planned, const float *hsrc,
                           int64_t hrows, const int32_t *d_last, const float **lh) {
  dsc_model *m = g->m;
  const dsc_model_mtp *mt = &m->mtp[0];
  const int64_t N = (int64_t)nb * T, D = g->D;
  const float eps = m->cfg.rms_norm_eps;
  dsc_gview vi, ve, vt, vc, vh, vx, vo;
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
  DSC_TRY(block(g, g->L, g->L, nb, T, prefill, planned, d_last)); /* the drafting rows -> g->e */
  DLTensor *x = mkview(&vx, g->dev, g->e, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
  DLTensor *mo = mkview(&vo, g->dev, g->mo, DSC_DTYPE_FLOAT32, 2, nb, D, 0);
  DSC_TRY(dsc_rms_norm_forward(g->ctx, x, &mt->head_norm, eps, mo, NULL));
  DSC_TRY(dsc_model_round(m, g->mo, nb * D));
  return head(g, g->mo, nb, lh);
}

static dsc_status mtp_forward_(dsc_infer *g, int32_t nb, int32_t T, int prefill, const float *hsrc,
                               int64_t hrows, const float **lh) {
  const int64_t N = (int64_t)nb * T;
  DSC_TRY(up(g, g->d_ids, g->h_ids, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_pos, g->h_pos, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_seq, g->h_seq, (size_t)nb * sizeof(int64_t)));
  DSC_TRY(up(g, g->d_gidx, g->h_gidx, (size_t)N * sizeof(int32_t)));
  DSC_TRY(up(g, g->d_last, g->h_last, (size_t)nb * sizeof(int32_t)));
  return mtp_pass(g, nb, T, prefill, 0, hsrc, hrows, g->d_last, lh);
}

/* Decode passes (not the prefill) run row-invariant like the main model's (dsc_infer_main):
 * a drafting row then has the same bits in the host loop's ragged batches and in the device
 * step's fixed [B, 1 + K] / [B, 1] ones. */
dsc_status dsc_infer_mtp(dsc_infer *g, int32_t nb, int32_t T, int prefill, const float *hsrc, int64_t hrows,
                         const float **lh) {
  const int32_t inv = g->ctx->row_invariant;
  g->ctx->row_invariant = !prefill;
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = mtp_forward_(g, nb, T, prefill, hsrc, hrows, lh);
  dsc_model_math_leave(g->m, mm);
  g->ctx->row_invariant = inv;
  return st;
}

dsc_status dsc_infer_mtp_device(dsc_infer *g, int32_t T, const float *hsrc, int64_t hrows) {
  dsc_context *ctx = g->ctx;
  const int64_t n = (int64_t)g->B * T;
  DSC_TRY(mla_cache_plan(ctx, g->cache, n, g->d_pos, T == 1 ? g->d_slot : g->d_slotv, g->d_meta));
  const int32_t inv = ctx->row_invariant;
  ctx->row_invariant = 1;
  ctx->trusted_indices += 1;
  const int32_t mm = dsc_model_math_enter(g->m);
  const dsc_status st = mtp_pass(g, g->B, T, 0, 1, hsrc, hrows, g->d_last, NULL);
  dsc_model_math_leave(g->m, mm);
  ctx->trusted_indices -= 1;
  ctx->row_invariant = inv;
  return st;
}

dsc_status dsc_infer_idle_step(dsc_infer *g) {
  dsc_model *m = g->m;
  dsc_gview vx, vy;
  DLTensor *x = mkview(&vx, g->dev, g->xn, DSC_DTYPE_FLOAT32, 2, 0, g->D, 0);
  DLTensor *y = mkview(&vy, g->dev, g->tmp, DSC_DTYPE_FLOAT32, 2, 0, g->D, 0);
  for (int32_t b = 0; b < g->L; ++b)
    if (m->blocks[b].is_moe) DSC_TRY(dsc_model_ffn_infer(m, b, x, y, NULL, g->hw));
  return DSC_OK;
}

/* dsc_model_forward of a frozen model (its training forward needs the float32 masters): the
 * inference prefill of tokens [B, T] on a fresh latent cache, with the logits of every row,
 * i.e. what generation computes for those positions. tokens and logits are checked by the
 * caller (generate.c: dsc_model_forward). */
dsc_status dsc_model_forward_infer(dsc_model *m, const DLTensor *tokens, DLTensor *logits) {
  static const char *const FNF = "dsc_model_forward";
  /* T <= max_position_embeddings (checked by the caller); B feeds int32 batch indices */
  DSC_CHECK(tokens->shape[0] <= (1 << 24), DSC_ERR_SHAPE, FNF,
            "tokens: expected at most 2^24 rows for a frozen model's forward, got %lld",
            (long long)tokens->shape[0]);
  const int32_t B = (int32_t)tokens->shape[0], T = (int32_t)tokens->shape[1];
  const int64_t N = (int64_t)B * T;
  dsc_infer g;
  DSC_TRY(dsc_infer_init(&g, m, B));
  g.all_logits = 1;
  int32_t *ids = (int32_t *)malloc((size_t)N * sizeof(int32_t));  /* [B, T] host */
  int32_t *lens = (int32_t *)malloc((size_t)B * sizeof(int32_t)); /* [B] */
  dsc_status st = ids && lens ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, FNF, "out of host memory");
  if (st == DSC_OK)
    st = dsc_memcpy(g.ctx, ids, HOST, dsc_data(tokens), tokens->device, (size_t)N * sizeof(int32_t));
  for (int32_t b = 0; st == DSC_OK && b < B; ++b) lens[b] = T;
  if (st == DSC_OK)
    st = dsc_infer_setup(&g, "dsc_model_generate", lens, 0, 0, DSC_DTYPE_FLOAT32, 64);
  for (int32_t b = 0; st == DSC_OK && b < B; ++b) {
    st = dsc_mla_cache_add_sequence(g.cache, b);
    for (int32_t j = 0; j < T; ++j) {
      g.h_ids[(int64_t)b * T + j] = ids[(int64_t)b * T + j];
      g.h_pos[(int64_t)b * T + j] = j;
    }
    g.h_seq[b] = b;
  }
  for (int64_t i = 0; st == DSC_OK && i < N; ++i) g.h_gidx[i] = (int32_t)i; /* every row's logits */
  if (st == DSC_OK) st = dsc_infer_main(&g, B, T, 1, N, NULL);
  if (st == DSC_OK) /* g.logits holds them on the device */
    st = dsc_memcpy(g.ctx, dsc_data(logits), logits->device, g.logits, g.dev,
                    (size_t)N * (size_t)g.V * sizeof(float));
  dsc_infer_release(&g);
  free(ids);
  free(lens);
  return st;
}
