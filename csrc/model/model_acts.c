/*
 * model/model_acts.c -- the activations of a training shape: every buffer the forward keeps
 * for the backward (and the backward's scratch) of one (B, T), planned into one device
 * arena that is reused while the shape stays; the positions 0..T-1 written once; the
 * MLA / MoE saved-state handles owned per block. The model (model.c) frees them through
 * m->acts_free, as it knows no layout. Layout in model_acts.h (struct dsc_model_acts).
 *
 * Legend: B batch, T tokens per row, N = B*T, V vocab, D hidden, I dense intermediate,
 * L main layers, Dm MTP depths, E routed experts.
 */
#include <stdlib.h>
#include <string.h>

#include "model_acts.h"

static void acts_free(dsc_model *m) {
  dsc_model_acts *A = m->acts;
  if (!A) return;
  if (A->arena) dsc_free(m->ctx, A->arena);
  if (A->blk) {
    for (int32_t b = 0; b < m->n_blocks; ++b) {
      dsc_mla_saved_destroy(A->blk[b].mla);
      dsc_moe_layer_saved_destroy(A->blk[b].moe);
      dsc_moe_layer_saved_destroy(A->blk[b].moe2);
    }
    free(A->blk);
  }
  free(A->fwd_load);
  if (A->rb) dsc_free(m->ctx, A->rb);
  free(A->rb_host);
  free(A);
  m->acts = NULL;
}

/* The next 256-byte aligned piece of `bytes` at *off of base (base NULL: only sizes);
 * returns the end. */
static size_t carve(char *base, size_t *off, size_t bytes, void **ptr) {
  *off = (*off + 255) & ~(size_t)255;
  if (base) *ptr = base + *off;
  *off += bytes ? bytes : 1;
  return *off;
}
#define CARVE(p, type, count) carve(base, &off, (size_t)(count) * sizeof(type), (void **)&(p))

/* (model_acts.h) */
void dsc_model_carve_ffn(const dsc_model *m, blk_acts *k, int64_t rows, char *base, size_t *off_io) {
  const int64_t I = m->cfg.intermediate_size, D = m->cfg.hidden_size; /* dense blocks: I >= 1 (validated) */
  size_t off = *off_io;
  CARVE(k->g, float, rows * I);
  CARVE(k->u, float, rows * I);
  CARVE(k->a, float, rows * I);
  if (m->fp8) {
    const int64_t K[3] = {D, D, I}, Nf[3] = {I, I, D};
    for (int j = 0; j < 3; ++j) {
      const int64_t kb = (K[j] + 127) / 128;
      CARVE(k->xq[j], uint8_t, rows * K[j]);
      CARVE(k->xs[j], float, rows * kb);
      CARVE(k->wq[j], uint8_t, Nf[j] * K[j]);
      CARVE(k->ws[j], float, ((Nf[j] + 127) / 128) * kb);
    }
  }
  *off_io = off;
}

/* Lay out (base NULL: size) every activation of shape (B, T). */
static size_t plan(dsc_model *m, dsc_model_acts *A, char *base) {
  const dsc_model_config *c = &m->cfg;
  const int64_t B = A->B, T = A->T, N = B * T, D = c->hidden_size, V = c->vocab_size;
  const int64_t I = c->intermediate_size > 0 ? c->intermediate_size : 1;
  const int64_t E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
  size_t off = 0;
  CARVE(A->pos, int32_t, N);
  CARVE(A->tok, int32_t, N);
  CARVE(A->h, float, (m->n_layers + 1) * N * D);
  CARVE(A->hn, float, N * D);
  CARVE(A->logits, float, N * V);
  for (int32_t b = 0; b < m->n_blocks; ++b) {
    const int32_t d = b - m->n_layers;
    const int64_t rows = d < 0 ? N : B * (T - d - 1);
    if (rows <= 0) continue;
    blk_acts *k = &A->blk[b];
    CARVE(k->xn1, float, rows * D);
    CARVE(k->hmid, float, rows * D);
    CARVE(k->xn2, float, rows * D);
    if (!m->blocks[b].is_moe) dsc_model_carve_ffn(m, k, rows, base, &off);
  }
  for (int32_t d = 0; d < m->n_mtp; ++d) {
    const int64_t Td = T - d - 1, Nd = B * Td;
    if (Td < 1) break;
    CARVE(A->mtp_tok[d], int32_t, Nd);
    CARVE(A->mtp_tgt[d], int32_t, Nd);
    CARVE(A->mtp_pos[d], int32_t, Nd);
    CARVE(A->mtp_e[d], float, Nd * D);
    CARVE(A->mtp_en[d], float, Nd * D);
    CARVE(A->mtp_hp[d], float, Nd * D);
    CARVE(A->mtp_hh[d], float, Nd * D);
    CARVE(A->mtp_cat[d], float, Nd * 2 * D);
    CARVE(A->mtp_x[d], float, Nd * D);
    CARVE(A->mtp_xo[d], float, Nd * D);
    CARVE(A->mtp_xn[d], float, Nd * D);
    CARVE(A->mtp_logits[d], float, Nd * V);
  }
  CARVE(A->dh, float, N * D);
  CARVE(A->tA, float, N * D);
  CARVE(A->tB, float, N * D);
  CARVE(A->tC, float, N * D);
  CARVE(A->tD, float, N * D);
  CARVE(A->dprev, float, N * D);
  if (m->wc) CARVE(A->tE, float, N * D);
  CARVE(A->dI0, float, N * I);
  CARVE(A->dI1, float, N * I);
  CARVE(A->dI2, float, N * I);
  CARVE(A->dcat, float, N * 2 * D);
  CARVE(A->counts, int64_t, E);
  return off;
}

_Static_assert(sizeof(dsc_step_ctl) <= 32, "the region's head keeps the control block in 32 bytes");

/* (model_acts.h) The region's layout depends on the model only (losses, blocks, experts). */
void dsc_model_rb_select(dsc_model_acts *A, int32_t k) {
  char *slot = (char *)A->rb + A->rb_head + (size_t)k * A->rb_stride;
  A->loss = (float *)slot;
  A->rb_aux = (float *)(slot + A->rb_aux_off);
  A->rb_load = (int64_t *)(slot + A->rb_load_off);
}

dsc_status dsc_model_rb_reserve(dsc_model *m, int32_t slots) {
  dsc_model_acts *A = m->acts;
  if (A->rb && A->rb_cap >= slots) {
    dsc_model_rb_select(A, 0);
    return DSC_OK;
  }
  const int64_t E = m->cfg.n_routed_experts ? m->cfg.n_routed_experts : 1, nb = m->n_blocks;
  /* head: ctl, the sum of squares, the summed counts; slot: losses, aux, counts */
  const size_t dload_off = 64, head = ((dload_off + (size_t)(nb * E) * sizeof(int64_t)) + 255) & ~(size_t)255;
  const size_t aux_off = ((size_t)(1 + m->n_mtp) * sizeof(float) + 7) & ~(size_t)7;
  const size_t load_off = (aux_off + (size_t)(2 * nb) * sizeof(float) + 7) & ~(size_t)7;
  const size_t bytes = load_off + (size_t)(2 * nb * E) * sizeof(int64_t);
  const size_t stride = (bytes + 255) & ~(size_t)255;
  const size_t total = head + (size_t)slots * stride;
  void *dev = NULL, *host = malloc(total);
  if (!host) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_model", "out of host memory");
  dsc_status st = dsc_model_alloc(m, total, &dev);
  if (st != DSC_OK) {
    free(host);
    return st;
  }
  if (A->rb) dsc_free(m->ctx, A->rb);
  free(A->rb_host);
  A->rb = dev;
  A->rb_host = host;
  A->rb_head = head;
  A->rb_stride = stride;
  A->rb_cap = slots;
  A->rb_bytes = bytes;
  A->rb_aux_off = aux_off;
  A->rb_load_off = load_off;
  A->rb_ctl = (dsc_step_ctl *)dev;
  A->rb_sumsq = (double *)((char *)dev + 32);
  A->rb_dload = (int64_t *)((char *)dev + dload_off);
  dsc_model_rb_select(A, 0);
  /* the control block starts at zero: applied 0, no skip */
  return dsc_model_fill_zero(m, (float *)dev, (int64_t)(head / sizeof(float)));
}

/* plan() multiplies B*T by config widths in plain int64: make sure nothing there can
 * overflow, with a checked upper bound of the whole plan (every carve is at most
 * 8 * max(N * W, I * D) bytes plus alignment, W the widest per-token row). */
static dsc_status plan_fits(const dsc_model *m, int64_t B, int64_t T) {
  const dsc_model_config *c = &m->cfg;
  const int64_t D = c->hidden_size, V = c->vocab_size, I = c->intermediate_size;
  int64_t W = (int64_t)(m->n_layers + 1) * D; /* <= 2^33 after validation */
  if (V > W) W = V;
  if (2 * D > W) W = 2 * D;
  if (I > W) W = I;
  int ok = 1;
  const int64_t N = dsc_cmul(B, T, &ok);
  const int64_t per = dsc_cadd(dsc_cmul(8, dsc_cadd(dsc_cmul(N, W, &ok), dsc_cmul(I, D, &ok), &ok), &ok),
                               256, &ok);
  const int64_t carves = 64 + 24 * (int64_t)m->n_blocks + 16 * DSC_MODEL_MAX_MTP;
  (void)dsc_cmul(carves, per, &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_model",
            "tokens: the activations of a [%lld, %lld] batch do not fit in 64 bits", (long long)B,
            (long long)T);
  return DSC_OK;
}

/* (model_acts.h) */
dsc_status dsc_model_acts_for(dsc_model *m, int64_t B, int64_t T, dsc_model_acts **out) {
  static const char *const FN = "dsc_model";
  dsc_model_acts *A = m->acts;
  if (A && A->B == B && A->T == T) {
    *out = A;
    return DSC_OK;
  }
  DSC_TRY(plan_fits(m, B, T));
  if (!A) {
    A = (dsc_model_acts *)calloc(1, sizeof *A);
    if (!A) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
    A->blk = (blk_acts *)calloc((size_t)m->n_blocks, sizeof *A->blk);
    A->fwd_mtp = -1;
    m->acts = A;
    m->acts_free = acts_free; /* the model drops them through this (model.c knows no layout) */
    if (!A->blk) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
    for (int32_t b = 0; b < m->n_blocks; ++b) {
      DSC_TRY(dsc_mla_saved_create(m->ctx, &A->blk[b].mla));
      if (m->blocks[b].is_moe) DSC_TRY(dsc_moe_layer_saved_create(m->ctx, &A->blk[b].moe));
      if (m->blocks[b].is_moe && m->dist && m->dist->ex[b])
        DSC_TRY(dsc_moe_layer_saved_create(m->ctx, &A->blk[b].moe2));
    }
  }
  if (A->arena) dsc_free(m->ctx, A->arena);
  A->arena = NULL;
  A->B = A->T = 0;
  /* keep the saved handles, clear the planned pointers */
  for (int32_t b = 0; b < m->n_blocks; ++b) {
    dsc_mla_saved *ms = A->blk[b].mla;
    dsc_moe_layer_saved *mo = A->blk[b].moe, *mo2 = A->blk[b].moe2;
    memset(&A->blk[b], 0, sizeof A->blk[b]);
    A->blk[b].mla = ms;
    A->blk[b].moe = mo;
    A->blk[b].moe2 = mo2;
  }
  for (int d = 0; d < DSC_MODEL_MAX_MTP; ++d) {
    A->mtp_tok[d] = A->mtp_tgt[d] = A->mtp_pos[d] = NULL;
  }
  A->B = B, A->T = T;
  A->bytes = plan(m, A, NULL);
  dsc_status st = dsc_model_alloc(m, A->bytes, &A->arena);
  if (st != DSC_OK) {
    A->B = A->T = 0;
    return st;
  }
  plan(m, A, (char *)A->arena);
  st = dsc_model_rb_reserve(m, 1);
  if (st != DSC_OK) {
    dsc_free(m->ctx, A->arena);
    A->arena = NULL;
    A->B = A->T = 0;
    return st;
  }
  /* positions 0..T-1 per row (and 0..Td-1 for the MTP depths), written once */
  int32_t *host = (int32_t *)malloc((size_t)(B * T) * sizeof(int32_t));
  if (!host) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  const DLDevice cpu = {kDLCPU, 0};
  for (int64_t i = 0; i < B * T; ++i) host[i] = (int32_t)(i % T);
  st = dsc_memcpy(m->ctx, A->pos, m->ctx->device, host, cpu, (size_t)(B * T) * sizeof(int32_t));
  for (int32_t d = 0; d < m->n_mtp && st == DSC_OK && T - d - 1 >= 1; ++d) {
    const int64_t Td = T - d - 1;
    for (int64_t i = 0; i < B * Td; ++i) host[i] = (int32_t)(i % Td);
    st = dsc_memcpy(m->ctx, A->mtp_pos[d], m->ctx->device, host, cpu, (size_t)(B * Td) * sizeof(int32_t));
  }
  free(host);
  if (st != DSC_OK) {
    dsc_free(m->ctx, A->arena);
    A->arena = NULL;
    A->B = A->T = 0;
    return st;
  }
  *out = A;
  return DSC_OK;
}

dsc_status dsc_model_activation_bytes(const dsc_model *m, size_t *bytes) {
  static const char *const FN = "dsc_model_activation_bytes";
  DSC_CHECK(m != NULL && bytes != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model, bytes: expected pointers");
  size_t n = m->acts ? m->acts->bytes : 0;
  if (m->acts)
    for (int32_t b = 0; b < m->n_blocks; ++b) {
      size_t s = 0;
      if (m->acts->blk[b].mla && dsc_mla_saved_bytes(m->acts->blk[b].mla, &s) == DSC_OK) n += s;
    }
  *bytes = n;
  return DSC_OK;
}
