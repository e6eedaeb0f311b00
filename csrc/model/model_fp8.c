/*
 * model/model_fp8.c -- FP8-held inference weights of an fp8 model: every block matrix as
 * E4M3 codes with 128x128 block scales (per expert for the stacked experts), quantized once
 * from the float32 masters, and the MLA weight struct that points at them. The training
 * step keeps quantizing the masters per call (they change every step); generation holds
 * these for the whole call, so a decoded token runs FP8 GEMMs without re-quantizing.
 *
 * dsc_model_freeze_fp8 makes that the model's only copy: the float32 masters of the held
 * matrices are dropped (the arena is compacted to the rest), and the model serves inference
 * and checkpoints in DeepSeek's FP8 form.
 *
 * Legend: b block, slot a block slot (S_*), G matrices of a slot (experts or 1), N x K one
 * matrix, Nb = ceil(N/128), Kb = ceil(K/128).
 */
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

static int64_t cdiv128(int64_t a) { return (a + 127) / 128; }

/* G, N, K of storage entry e (a [N,K] matrix or [G,N,K] stacked experts). */
static void gnk(const dsc_model_entry *e, int64_t *G, int64_t *N, int64_t *K) {
  *G = e->ndim == 3 ? e->shape[0] : 1;
  *N = e->ndim == 3 ? e->shape[1] : e->shape[0];
  *K = e->ndim == 3 ? e->shape[2] : e->shape[1];
}

dsc_status dsc_model_fp8w_build(dsc_model *m, dsc_model_fp8w *h) {
  static const char *const FN = "dsc_model_generate";
  memset(h, 0, sizeof *h);
  const int64_t n = (int64_t)m->n_blocks * S_COUNT;
  h->q = (DLTensor *)calloc((size_t)n, sizeof(DLTensor));
  h->s = (DLTensor *)calloc((size_t)n, sizeof(DLTensor));
  h->dims = (int64_t *)calloc((size_t)n * 12, sizeof(int64_t));
  if (!h->q || !h->s || !h->dims) {
    dsc_model_fp8w_free(m, h);
    return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory (FP8 weight views)");
  }
  /* sizes: codes first (bytes), then scales (floats, 64-byte aligned); each entry's
   * G * N * K is part of the parameter count that dsc_model_config_validate bounded */
  size_t qbytes = 0, sfloats = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = m->block_entries[i];
    if (e < 0 || !dsc_model_held_slot((int)(i % S_COUNT))) continue;
    int64_t G, N, K;
    gnk(&m->storage[e], &G, &N, &K);
    qbytes += (size_t)(G * N * K);
    sfloats += (size_t)(G * cdiv128(N) * cdiv128(K));
  }
  const size_t soff = (qbytes + 63u) & ~(size_t)63u;
  h->bytes = soff + sfloats * sizeof(float);
  dsc_status st = dsc_model_alloc(m, h->bytes, &h->mem);
  if (st != DSC_OK) {
    dsc_model_fp8w_free(m, h);
    return st;
  }
  uint8_t *qp = (uint8_t *)h->mem;
  float *sp = (float *)((char *)h->mem + soff);
  dsc_fp8_quant_params qpar;
  dsc_fp8_quant_params_default(&qpar);
  qpar.block_rows = 128;
  qpar.block_cols = 128;
  for (int64_t i = 0; i < n && st == DSC_OK; ++i) {
    const int32_t e = m->block_entries[i];
    if (e < 0 || !dsc_model_held_slot((int)(i % S_COUNT))) continue;
    const dsc_model_entry *en = &m->storage[e];
    int64_t G, N, K;
    gnk(en, &G, &N, &K);
    const int64_t nb = cdiv128(N), kb = cdiv128(K);
    int64_t *d = h->dims + i * 12;
    const int64_t qs[3] = {G, N, K}, ss[3] = {G, nb, kb};
    const int nd = en->ndim == 3 ? 3 : 2;
    h->q[i] = dsc_model_view(m, qp, DSC_DTYPE_FLOAT8_E4M3FN, nd, qs + (3 - nd), d, d + 3);
    h->s[i] = dsc_model_view(m, sp, DSC_DTYPE_FLOAT32, nd, ss + (3 - nd), d + 6, d + 9);
    /* one 128x128-blocked quantization per matrix (a block never spans two experts) */
    for (int64_t g = 0; g < G && st == DSC_OK; ++g) {
      int64_t a0[2], a1[2], b0[2], b1[2], c0[2], c1[2];
      const int64_t s2[2] = {N, K}, sb[2] = {nb, kb};
      DLTensor src = dsc_model_view(m, (m->wc ? m->wc : m->params) + en->offset + g * N * K, DSC_DTYPE_FLOAT32, 2,
                                    s2, a0, a1);
      DLTensor q = dsc_model_view(m, qp + g * N * K, DSC_DTYPE_FLOAT8_E4M3FN, 2, s2, b0, b1);
      DLTensor sc = dsc_model_view(m, sp + g * nb * kb, DSC_DTYPE_FLOAT32, 2, sb, c0, c1);
      st = dsc_fp8_quantize(m->ctx, &qpar, &src, &q, &sc);
    }
    qp += G * N * K;
    sp += G * nb * kb;
  }
  if (st != DSC_OK) dsc_model_fp8w_free(m, h);
  return st;
}

/* ---- freezing ------------------------------------------------------------------------ */

dsc_status dsc_model_freeze_fp8(dsc_model *m) {
  static const char *const FN = "dsc_model_freeze_fp8";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  if (m->frozen) return DSC_OK;
  DSC_CHECK(m->compute_dtype == DSC_DTYPE_FLOAT32, DSC_ERR_INVALID_ARGUMENT, FN,
            "model: expected a float32-compute model (a frozen model computes in FP8 from its E4M3 "
            "weights), got compute_dtype BFLOAT16");
  /* which storage entry each held block slot quantizes */
  int32_t *held_of = (int32_t *)malloc((size_t)(m->n_storage ? m->n_storage : 1) * sizeof(int32_t));
  DSC_CHECK(held_of != NULL, DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  for (int64_t e = 0; e < m->n_storage; ++e) held_of[e] = -1;
  for (int64_t i = 0; i < (int64_t)m->n_blocks * S_COUNT; ++i) {
    const int32_t e = m->block_entries[i];
    if (e >= 0 && dsc_model_held_slot((int)(i % S_COUNT))) held_of[e] = (int32_t)i;
  }
  /* the compacted arena: every storage entry that is not held, in the old order */
  int64_t *new_off = (int64_t *)malloc((size_t)(m->n_storage ? m->n_storage : 1) * sizeof(int64_t));
  int64_t keep = 0;
  for (int64_t e = 0; new_off && e < m->n_storage; ++e) {
    new_off[e] = held_of[e] < 0 ? keep : -1;
    if (held_of[e] < 0) keep += m->storage[e].numel;
  }
  dsc_model_fp8w h;
  memset(&h, 0, sizeof h);
  float *arena = NULL;
  dsc_status st = new_off ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  if (st == DSC_OK) st = dsc_model_fp8w_build(m, &h);
  if (st == DSC_OK) st = dsc_model_alloc(m, (size_t)keep * sizeof(float), (void **)&arena);
  for (int64_t e = 0; e < m->n_storage && st == DSC_OK; ++e)
    if (held_of[e] < 0 && m->storage[e].numel > 0)
      st = dsc_memcpy(m->ctx, arena + new_off[e], m->ctx->device, m->params + m->storage[e].offset,
                      m->ctx->device, (size_t)m->storage[e].numel * sizeof(float));
  if (st == DSC_OK) st = dsc_context_synchronize(m->ctx);
  if (st != DSC_OK) { /* the model is unchanged */
    if (arena) dsc_free(m->ctx, arena);
    dsc_model_fp8w_free(m, &h);
    free(new_off);
    free(held_of);
    return st;
  }
  /* commit: named entries move with their storage entry (held ones keep their offsets,
   * which only locate an expert inside its stack) */
  for (int64_t i = 0; i < m->n_named; ++i) {
    dsc_model_entry *n = &m->named[i];
    if (held_of[n->storage] < 0) n->offset += new_off[n->storage] - m->storage[n->storage].offset;
  }
  for (int64_t e = 0; e < m->n_storage; ++e)
    if (held_of[e] < 0) m->storage[e].offset = new_off[e];
  free(new_off);
  dsc_free(m->ctx, m->params);
  m->params = arena;
  m->arena_numel = keep;
  m->held = h;
  m->held_of = held_of;
  m->frozen = 1;
  m->fp8 = 1;
  m->mla.fp8 = 1;
  /* training state has no use any more (and its layout was the old arena's) */
  if (m->grads) dsc_free(m->ctx, m->grads);
  if (m->exp_avg) dsc_free(m->ctx, m->exp_avg);
  if (m->exp_avg_sq) dsc_free(m->ctx, m->exp_avg_sq);
  if (m->scratch) dsc_free(m->ctx, m->scratch);
  m->grads = NULL;
  m->exp_avg = m->exp_avg_sq = NULL;
  m->scratch = NULL;
  m->scratch_numel = 0;
  m->have_grads = 0;
  dsc_model_drop_acts(m);
  dsc_model_bind_views(m);
  return DSC_OK;
}

void dsc_model_mla_weights_fp8(const dsc_model *m, int32_t b, const dsc_model_fp8w *h,
                               dsc_mla_weights *w) {
  dsc_model_mla_weights(m, b, w);
  if (!h || !h->mem) return;
  const DLTensor *q = h->q + (int64_t)b * S_COUNT, *s = h->s + (int64_t)b * S_COUNT;
  /* (weight, scale) field pairs of the projections present in this block */
  struct { const DLTensor **w, **s; int slot; } pr[6] = {
      {&w->q_a_proj, &w->q_a_proj_scale_inv, S_QA},
      {&w->q_b_proj, &w->q_b_proj_scale_inv, S_QB},
      {&w->q_proj, &w->q_proj_scale_inv, S_Q},
      {&w->kv_a_proj_with_mqa, &w->kv_a_proj_with_mqa_scale_inv, S_KVA},
      {&w->kv_b_proj, &w->kv_b_proj_scale_inv, S_KVB},
      {&w->o_proj, &w->o_proj_scale_inv, S_O}};
  for (int i = 0; i < 6; ++i) {
    if (!q[pr[i].slot].data) continue;
    *pr[i].w = &q[pr[i].slot];
    *pr[i].s = &s[pr[i].slot];
  }
}

/* The MoE weights of block b with its expert matrices held in FP8 (h != NULL). */
static void moe_weights_fp8(const dsc_model *m, int32_t b, const dsc_model_fp8w *h,
                            dsc_moe_layer_weights *w) {
  dsc_model_moe_weights(m, b, w);
  const DLTensor *q = h->q + (int64_t)b * S_COUNT, *s = h->s + (int64_t)b * S_COUNT;
  struct { const DLTensor **w, **s; int slot; } pr[6] = {
      {&w->experts_gate, &w->experts_gate_scale_inv, S_EG},
      {&w->experts_up, &w->experts_up_scale_inv, S_EU},
      {&w->experts_down, &w->experts_down_scale_inv, S_ED},
      {&w->shared_gate, &w->shared_gate_scale_inv, S_SG},
      {&w->shared_up, &w->shared_up_scale_inv, S_SU},
      {&w->shared_down, &w->shared_down_scale_inv, S_SD}};
  for (int i = 0; i < 6; ++i) {
    if (!q[pr[i].slot].data) continue;
    *pr[i].w = &q[pr[i].slot];
    *pr[i].s = &s[pr[i].slot];
  }
}

/* y [rows,N] = x [rows,K] @ W^T with W held in FP8: x quantized in 1x128 tiles into
 * xq [rows,K] / xs [rows,Kb], then the block-scaled GEMM (as dsc_fp8_linear_forward). */
static dsc_status held_linear(dsc_model *m, const DLTensor *x, const DLTensor *wq,
                              const DLTensor *ws, uint8_t *xq, float *xs, DLTensor *y) {
  const int64_t rows = x->shape[0], K = x->shape[1];
  const int64_t s2[2] = {rows, K}, sb[2] = {rows, cdiv128(K)};
  int64_t a0[2], a1[2], b0[2], b1[2];
  DLTensor q = dsc_model_view(m, xq, DSC_DTYPE_FLOAT8_E4M3FN, 2, s2, a0, a1);
  DLTensor sc = dsc_model_view(m, xs, DSC_DTYPE_FLOAT32, 2, sb, b0, b1);
  dsc_fp8_quant_params p;
  dsc_fp8_quant_params_default(&p); /* 1x128 tiles, amax floor 1e-4: the linear layer's */
  DSC_TRY(dsc_fp8_quantize(m->ctx, &p, x, &q, &sc));
  return dsc_fp8_gemm(m->ctx, &q, &sc, wq, ws, y);
}

dsc_status dsc_model_ffn_infer_fp8(dsc_model *m, int32_t b, const DLTensor *x, DLTensor *y,
                                   DLTensor *counts, const dsc_model_fp8w *h) {
  const dsc_model_block *k = &m->blocks[b];
  if (k->is_moe) {
    dsc_moe_layer_weights mw;
    moe_weights_fp8(m, b, h, &mw);
    const dsc_moe_exchange *ex = dsc_model_exchange(m, b);
    DSC_TRY(ex ? dsc_moe_layer_forward_ex(m->ctx, &m->route, 1, &mw, x, y, counts, NULL, ex, 0, DSC_MOE_PHASE_ALL)
               : dsc_moe_layer_forward(m->ctx, &m->route, 1, &mw, x, y, counts, NULL));
    return dsc_model_round(m, (float *)dsc_data(y), dsc_numel(y)); /* BF16 compute: F5 */
  }
  /* dense SwiGLU MLP: g, u, a [rows, I] float32; the FP8 copy of x or a [rows, max(D,I)] */
  const int64_t rows = dsc_rows(x), D = m->cfg.hidden_size, I = m->cfg.intermediate_size;
  const int64_t kmax = D > I ? D : I;
  int ok = 1;
  const size_t al = dsc_calign(dsc_cbytes(dsc_cmul(rows, I, &ok), sizeof(float), &ok), 64, &ok);
  const size_t qb = dsc_calign(dsc_cbytes(dsc_cmul(rows, kmax, &ok), 1, &ok), 64, &ok);
  const size_t sb = dsc_cbytes(dsc_cmul(rows, cdiv128(kmax), &ok), sizeof(float), &ok);
  const size_t total = dsc_caddz(dsc_caddz(dsc_cbytes((int64_t)al, 3, &ok), qb, &ok), sb, &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_model_generate",
            "the FFN scratch of %lld rows does not fit in 64 bits", (long long)rows);
  void *mem = NULL; /* the context's FFN slot, kept for the next call */
  DSC_TRY(dsc_ctx_slot(m->ctx, DSC_SLOT_FFN, total ? total : 1, &mem));
  char *p = (char *)mem;
  float *g = (float *)p, *u = (float *)(p + al), *a = (float *)(p + 2 * al); /* [rows, I] */
  uint8_t *xq = (uint8_t *)(p + 3 * al);                                    /* [rows, kmax] */
  float *xs = (float *)(p + 3 * al + qb);                                   /* [rows, Kb] */
  const DLTensor *q = h->q + (int64_t)b * S_COUNT, *s = h->s + (int64_t)b * S_COUNT;
  const int64_t sx[2] = {rows, D}, si[2] = {rows, I};
  int64_t d[10][2];
  DLTensor x2 = dsc_model_view(m, dsc_data(x), DSC_DTYPE_FLOAT32, 2, sx, d[0], d[1]);
  DLTensor y2 = dsc_model_view(m, dsc_data(y), DSC_DTYPE_FLOAT32, 2, sx, d[2], d[3]);
  DLTensor gt = dsc_model_view(m, g, DSC_DTYPE_FLOAT32, 2, si, d[4], d[5]);
  DLTensor ut = dsc_model_view(m, u, DSC_DTYPE_FLOAT32, 2, si, d[6], d[7]);
  DLTensor at = dsc_model_view(m, a, DSC_DTYPE_FLOAT32, 2, si, d[8], d[9]);
  /* BF16 compute (fp8 generation of a bfloat16 model): F4's roundings, as the training forward */
  dsc_status st = held_linear(m, &x2, &q[S_MG], &s[S_MG], xq, xs, &gt);
  if (st == DSC_OK) st = held_linear(m, &x2, &q[S_MU], &s[S_MU], xq, xs, &ut);
  if (st == DSC_OK) st = dsc_model_round(m, g, rows * I);
  if (st == DSC_OK) st = dsc_model_round(m, u, rows * I);
  if (st == DSC_OK) st = dsc_swiglu_forward(m->ctx, &gt, &ut, &at);
  if (st == DSC_OK) st = dsc_model_round(m, a, rows * I);
  if (st == DSC_OK) st = held_linear(m, &at, &q[S_MD], &s[S_MD], xq, xs, &y2);
  if (st == DSC_OK) st = dsc_model_round(m, (float *)dsc_data(y), rows * D);
  return st;
}
