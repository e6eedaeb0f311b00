/*
 * model/model_train.c -- training of dsc_model: the backward pass of the forward in
 * model_layers.c, the losses, the gradient bookkeeping, the data-parallel gradient sums,
 * the global norm, clipping and AdamW, and the training API (train_step, loss_and_grad,
 * the composable forward_train / backward / optimizer_step), composed from the public ops.
 *
 *   loss = CE(logits, targets) + lambda / Dm * sum_d CE(logits_d, targets[:, d+1:])
 *
 * BF16 compute (m->wc != NULL): the forward rounds its activations at F1-F8
 * (model_layers.c). The backward rounds the gradient of each of those activations once it
 * is complete, before it is consumed: dlogits, d hn / d xn_d (after the MTP contributions
 * are added), d x (MTP block input), dcat, the FFN's incoming gradient (a rounded copy: the
 * residual keeps float32), dA, dG, dU, d xn2, the attention's incoming gradient (a rounded
 * copy), d xn1. Weight gradients stay float32. The backward runs in the model's math mode
 * like the forward (dsc_model_math_enter / _leave).
 *
 * The backward reads the activations the forward kept (model_acts.c, one arena per (B, T)
 * shape); the MLA / MoE ops keep their own saved state in handles owned per block.
 * Host reads: a pass leaves what the host needs (losses, expert counts, balance losses) in
 * its read-back slot. loss_and_grad reads it at the end of the pass (one wait on a GPU); a
 * train_step on a GPU in one process reads nothing until its statistics are asked for (the
 * step without the host, below train_step_device); the host-driven step (the CPU, data or
 * expert parallelism) reads each pass and computes the norm on the host.
 * Legend: B batch, T tokens per row, Tb tokens per row of a block's input, N = B*T,
 * V vocab, D hidden, I dense intermediate, L main layers, Dm MTP depths, E routed experts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/backend.h"
#include "model_layers.h"

/* Run a step only while every earlier step succeeded. */
#define STEP(call)                 \
  do {                             \
    if (st == DSC_OK) st = (call); \
  } while (0)
#define F32 DSC_DTYPE_FLOAT32
#define I32 DSC_DTYPE_INT32

/* ------------------------------------------------------------------ gradient slots */

/* Where the gradient of storage entry e goes in this pass: the first contribution straight
 * into m->grads, later ones (shared embedding/head, accumulation) into the scratch region
 * and then added. */
typedef struct {
  tv v;
  int32_t e;
  int via_scratch;
} gslot;

static DLTensor *gs_begin(dsc_model *m, gslot *g, int32_t e) {
  g->e = e;
  g->via_scratch = 0;
  if (e < 0) return NULL;
  const dsc_model_entry *en = &m->storage[e];
  float *data = m->grads + en->offset;
  if (m->touched[e]) {
    g->via_scratch = 1;
    data = m->scratch + (en->offset - m->regions[en->region].offset);
  }
  g->v.t = dsc_model_storage_view(m, e, m->grads);
  g->v.t.data = data;
  return &g->v.t;
}

static dsc_status gs_end(dsc_model *m, gslot *g) {
  if (g->e < 0) return DSC_OK;
  if (g->via_scratch) {
    DLTensor dst = dsc_model_storage_view(m, g->e, m->grads);
    DSC_TRY(dsc_add(m->ctx, &dst, &g->v.t, &dst));
  }
  m->touched[g->e] = 1;
  return DSC_OK;
}

static int32_t slot_entry(const dsc_model *m, int32_t b, int s) { return m->block_entries[b * S_COUNT + s]; }

/* ------------------------------------------------------------------ backward of one block */

/* The backward of the dense FFN (model_layers.c, dense_fwd): dy [rows, D] -> dx [rows, D]
 * (t1), weight gradients; t2 scratch [rows, D]. */
static dsc_status dense_bwd(dsc_model *m, int32_t b, blk_acts *k, int64_t rows, const DLTensor *x,
                            const DLTensor *dy, DLTensor *dx, DLTensor *t2) {
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  const dsc_model_block *w = &m->blocks[b];
  const int64_t I = m->cfg.intermediate_size, D = m->cfg.hidden_size;
  tv g, u, a, dA, dG, dU;
  tv_make(&g, m, k->g, F32, 2, rows, I, 0);
  tv_make(&u, m, k->u, F32, 2, rows, I, 0);
  tv_make(&a, m, k->a, F32, 2, rows, I, 0);
  tv_make(&dA, m, A->dI0, F32, 2, rows, I, 0);
  tv_make(&dG, m, A->dI1, F32, 2, rows, I, 0);
  tv_make(&dU, m, A->dI2, F32, 2, rows, I, 0);
  gslot gd, gg, gu;
  dsc_status st = DSC_OK;
  if (m->fp8) {
    tv xq[3], xs[3], wq[3], ws[3];
    dsc_model_ffn_fp8_views(m, k, rows, xq, xs, wq, ws);
    STEP(dsc_fp8_linear_backward(ctx, dy, &xq[2].t, &xs[2].t, &wq[2].t, &ws[2].t, &dA.t,
                                 gs_begin(m, &gd, slot_entry(m, b, S_MD))));
    STEP(gs_end(m, &gd));
    STEP(dsc_model_round(m, A->dI0, rows * I));
    STEP(dsc_swiglu_backward(ctx, &dA.t, &g.t, &u.t, &dG.t, &dU.t));
    STEP(dsc_model_round(m, A->dI1, rows * I));
    STEP(dsc_model_round(m, A->dI2, rows * I));
    STEP(dsc_fp8_linear_backward(ctx, &dG.t, &xq[0].t, &xs[0].t, &wq[0].t, &ws[0].t, dx,
                                 gs_begin(m, &gg, slot_entry(m, b, S_MG))));
    STEP(gs_end(m, &gg));
    STEP(dsc_fp8_linear_backward(ctx, &dU.t, &xq[1].t, &xs[1].t, &wq[1].t, &ws[1].t, t2,
                                 gs_begin(m, &gu, slot_entry(m, b, S_MU))));
    STEP(gs_end(m, &gu));
  } else {
    STEP(dsc_linear_backward(ctx, dy, &a.t, &w->mlp_down, &dA.t, gs_begin(m, &gd, slot_entry(m, b, S_MD))));
    STEP(gs_end(m, &gd));
    STEP(dsc_model_round(m, A->dI0, rows * I));
    STEP(dsc_swiglu_backward(ctx, &dA.t, &g.t, &u.t, &dG.t, &dU.t));
    STEP(dsc_model_round(m, A->dI1, rows * I));
    STEP(dsc_model_round(m, A->dI2, rows * I));
    STEP(dsc_linear_backward(ctx, &dG.t, x, &w->mlp_gate, dx, gs_begin(m, &gg, slot_entry(m, b, S_MG))));
    STEP(gs_end(m, &gg));
    /* the up projection's input gradient accumulates into dx in its GEMM (beta 1) */
    DLTensor *dwu = gs_begin(m, &gu, slot_entry(m, b, S_MU));
    STEP(dsc_matmul(ctx, &dU.t, x, dwu, 1, 0, 1.0f, 0.0f));
    STEP(dsc_matmul(ctx, &dU.t, &w->mlp_up, dx, 0, 0, 1.0f, 1.0f));
    STEP(gs_end(m, &gu));
    STEP(dsc_model_round(m, (float *)dsc_data(dx), rows * D)); /* d xn2 */
    return st;
  }
  STEP(dsc_add(ctx, dx, t2, dx));
  STEP(dsc_model_round(m, (float *)dsc_data(dx), rows * D)); /* d xn2 */
  return st;
}

/* The backward of moe_fwd: dy [B, Tb, D] -> dx, the block's MoE weight gradients. */
static dsc_status moe_bwd(dsc_model *m, int32_t b, blk_acts *k, int64_t B, int64_t Tb, const DLTensor *x,
                          const DLTensor *dy, DLTensor *dx) {
  dsc_context *ctx = m->ctx;
  dsc_moe_layer_weights ew;
  dsc_model_moe_weights(m, b, &ew);
  const dsc_moe_exchange *ex = dsc_model_exchange(m, b);
  dsc_status st = DSC_OK;
  static const int SLOTS[7] = {S_EG, S_EU, S_ED, S_SG, S_SU, S_SD, S_ROUTER};
  gslot gs[7];
  dsc_moe_layer_grads g;
  memset(&g, 0, sizeof g);
  g.size = sizeof g;
  if (moe_mbs(m, b) == 1) {
    DLTensor *t[7];
    for (int i = 0; i < 7; ++i) t[i] = gs_begin(m, &gs[i], slot_entry(m, b, SLOTS[i]));
    g.experts_gate = t[0], g.experts_up = t[1], g.experts_down = t[2];
    g.shared_gate = t[3], g.shared_up = t[4], g.shared_down = t[5], g.gate = t[6];
    STEP(ex ? dsc_moe_layer_backward_ex(ctx, &m->route, &ew, x, dy, k->moe, dx, &g, ex, 0, DSC_MOE_PHASE_ALL)
            : dsc_moe_layer_backward(ctx, &m->route, &ew, x, dy, k->moe, dx, &g));
    for (int i = 0; i < 7; ++i) STEP(gs_end(m, &gs[i]));
    return st;
  }
  dsc_moe_layer_saved *sv[2] = {k->moe, k->moe2};
  tv xh[2], dyh[2], dxh[2];
  for (int h = 0; h < 2; ++h) {
    half_view(&xh[h], m, x, B, Tb, h);
    half_view(&dyh[h], m, dy, B, Tb, h);
    half_view(&dxh[h], m, dx, B, Tb, h);
  }
  /* BEGIN writes no gradient; MIDDLE the experts' and shared experts'; END the router's. The
   * second micro-batch's go through the scratch and are added (gs_begin after gs_end). */
  for (int h = 0; h < 2; ++h)
    STEP(dsc_moe_layer_backward_ex(ctx, &m->route, &ew, &xh[h].t, &dyh[h].t, sv[h], &dxh[h].t, &g, ex, h,
                                   DSC_MOE_PHASE_BEGIN));
  for (int h = 0; h < 2 && st == DSC_OK; ++h) {
    dsc_moe_layer_grads gm = g;
    DLTensor *t[6];
    for (int i = 0; i < 6; ++i) t[i] = gs_begin(m, &gs[i], slot_entry(m, b, SLOTS[i]));
    gm.experts_gate = t[0], gm.experts_up = t[1], gm.experts_down = t[2];
    gm.shared_gate = t[3], gm.shared_up = t[4], gm.shared_down = t[5];
    STEP(dsc_moe_layer_backward_ex(ctx, &m->route, &ew, &xh[h].t, &dyh[h].t, sv[h], &dxh[h].t, &gm, ex, h,
                                   DSC_MOE_PHASE_MIDDLE));
    for (int i = 0; i < 6; ++i) STEP(gs_end(m, &gs[i]));
  }
  for (int h = 0; h < 2 && st == DSC_OK; ++h) {
    dsc_moe_layer_grads ge = g;
    ge.gate = gs_begin(m, &gs[6], slot_entry(m, b, S_ROUTER));
    STEP(dsc_moe_layer_backward_ex(ctx, &m->route, &ew, &xh[h].t, &dyh[h].t, sv[h], &dxh[h].t, &ge, ex, h,
                                   DSC_MOE_PHASE_END));
    STEP(gs_end(m, &gs[6]));
  }
  return st;
}

/* out = res + the RMSNorm input gradient of dy at x (weight w; its gradient into storage
 * entry e's slot): fused on the CPU, else rms_norm_backward into tmp and an add. */
static dsc_status norm_bwd_add(dsc_model *m, const DLTensor *dy, const DLTensor *x, const DLTensor *w,
                               int32_t e, const DLTensor *res, DLTensor *tmp, DLTensor *out) {
  const float eps = m->cfg.rms_norm_eps;
  gslot g;
  DLTensor *dw = gs_begin(m, &g, e);
  if (!dsc_ctx_is_cuda(m->ctx)) {
    DSC_TRY(dsc_cpu_rms_norm_bwd_add(m->ctx, dsc_rows(x), dsc_last_dim(x), (const float *)dsc_data(dy),
                                     (const float *)dsc_data(x), (const float *)dsc_data(w), NULL, eps,
                                     (const float *)dsc_data(res), (float *)dsc_data(out),
                                     (float *)dsc_data(dw)));
  } else {
    DSC_TRY(dsc_rms_norm_backward(m->ctx, dy, x, w, NULL, eps, tmp, dw));
    DSC_TRY(dsc_add(m->ctx, res, tmp, out));
  }
  return gs_end(m, &g);
}

/* dh [B, Tb, D]: in d(out), out d(x_in), in place. Uses tA, tB, tC. */
static dsc_status block_bwd(dsc_model *m, int32_t b, int64_t B, int64_t Tb, const int32_t *positions,
                            float *dh) {
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  blk_acts *k = &A->blk[b];
  const dsc_model_block *w = &m->blocks[b];
  const int64_t D = m->cfg.hidden_size, rows = B * Tb;
  tv dy, x, xn1, hmid, xn2, t1, t2, t3, pos;
  tv_make(&dy, m, dh, F32, 3, B, Tb, D);
  tv_make(&x, m, k->x_in, F32, 3, B, Tb, D);
  tv_make(&xn1, m, k->xn1, F32, 3, B, Tb, D);
  tv_make(&hmid, m, k->hmid, F32, 3, B, Tb, D);
  tv_make(&xn2, m, k->xn2, F32, 3, B, Tb, D);
  tv_make(&t1, m, A->tA, F32, 3, B, Tb, D);
  tv_make(&t2, m, A->tB, F32, 3, B, Tb, D);
  tv_make(&t3, m, A->tC, F32, 3, B, Tb, D);
  tv_make(&pos, m, positions, I32, 2, B, Tb, 0);
  dsc_status st = DSC_OK;

  /* FFN: dy -> d xn2 (t1). BF16: the FFN reads a rounded copy of dy (tE), the residual
   * keeps dy in float32 */
  float *dyf = dh;
  if (m->wc) {
    STEP(dsc_model_round_copy(m, dh, A->tE, rows * D));
    dyf = A->tE;
  }
  tv dyr;
  tv_make(&dyr, m, dyf, F32, 3, B, Tb, D);
  if (w->is_moe) {
    STEP(moe_bwd(m, b, k, B, Tb, &xn2.t, &dyr.t, &t1.t));
    STEP(dsc_model_round(m, A->tA, rows * D)); /* d xn2 */
  } else {
    tv x2, dy2, d1, d2;
    tv_make(&x2, m, k->xn2, F32, 2, rows, D, 0);
    tv_make(&dy2, m, dyf, F32, 2, rows, D, 0);
    tv_make(&d1, m, A->tA, F32, 2, rows, D, 0);
    tv_make(&d2, m, A->tB, F32, 2, rows, D, 0);
    STEP(dense_bwd(m, b, k, rows, &x2.t, &dy2.t, &d1.t, &d2.t));
  }
  /* post-attention norm, residual: t3 = d hmid = dy + norm backward */
  STEP(norm_bwd_add(m, &t1.t, &hmid.t, &w->post_norm, slot_entry(m, b, S_POST_NORM), &dy.t, &t2.t, &t3.t));
  /* attention */
  dsc_mla_weights mw;
  dsc_model_mla_weights(m, b, &mw);
  gslot ga[8];
  dsc_mla_grads g;
  memset(&g, 0, sizeof g);
  g.size = sizeof g;
  g.q_a_proj = gs_begin(m, &ga[0], slot_entry(m, b, S_QA));
  g.q_a_layernorm = gs_begin(m, &ga[1], slot_entry(m, b, S_QA_NORM));
  g.q_b_proj = gs_begin(m, &ga[2], slot_entry(m, b, S_QB));
  g.q_proj = gs_begin(m, &ga[3], slot_entry(m, b, S_Q));
  g.kv_a_proj_with_mqa = gs_begin(m, &ga[4], slot_entry(m, b, S_KVA));
  g.kv_a_layernorm = gs_begin(m, &ga[5], slot_entry(m, b, S_KVA_NORM));
  g.kv_b_proj = gs_begin(m, &ga[6], slot_entry(m, b, S_KVB));
  g.o_proj = gs_begin(m, &ga[7], slot_entry(m, b, S_O));
  float *dattn = A->tC;
  if (m->wc) { /* the attention reads a rounded copy of d hmid */
    STEP(dsc_model_round_copy(m, A->tC, A->tE, rows * D));
    dattn = A->tE;
  }
  tv da;
  tv_make(&da, m, dattn, F32, 3, B, Tb, D);
  STEP(dsc_mla_backward(ctx, &m->mla, &mw, k->mla, &xn1.t, &pos.t, &da.t, &t1.t, &g));
  for (int j = 0; j < 8; ++j) STEP(gs_end(m, &ga[j]));
  STEP(dsc_model_round(m, A->tA, rows * D)); /* d xn1 */
  STEP(norm_bwd_add(m, &t1.t, &x.t, &w->input_norm, slot_entry(m, b, S_IN_NORM), &t3.t, &t2.t, &dy.t));
  return st;
}

/* ------------------------------------------------------------------ whole model */

/* dst[b, 0:n) += src[b] for dst [B, rows_dst, D], src [B, n, D]; tmp [B, n, D] scratch. */
static dsc_status add_rows(dsc_model *m, int64_t B, int64_t n, int64_t D, float *dst, int64_t rows_dst,
                           const float *src, float *tmp) {
  const size_t rb = (size_t)(n * D) * sizeof(float);
  DSC_TRY(dsc_model_copy2d(m, B, rb, dst, (size_t)(rows_dst * D) * sizeof(float), tmp, rb));
  tv a, s;
  tv_make(&a, m, tmp, F32, 2, B * n, D, 0);
  tv_make(&s, m, src, F32, 2, B * n, D, 0);
  DSC_TRY(dsc_add(m->ctx, &a.t, &s.t, &a.t));
  return dsc_model_copy2d(m, B, rb, tmp, rb, dst, (size_t)(rows_dst * D) * sizeof(float));
}

/* ------------------------------------------------------------------ options, statistics */

void dsc_train_options_default(dsc_train_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->lr = 1e-3f;
  o->beta1 = 0.9f;
  o->beta2 = 0.95f;
  o->eps = 1e-8f;
  o->weight_decay = 0.1f;
  o->max_grad_norm = 1.0f;
  o->mtp_lambda = 0.3f;
  o->aux_alpha = 0.0f;
  o->bias_update_rate = 1e-3f;
  o->grad_accum = 1;
  o->ignore_index = -100;
}

static dsc_status check_train_options(const char *fn, const dsc_train_options *o) {
  DSC_CHECK(o != NULL && o->size >= sizeof(dsc_train_options), DSC_ERR_INVALID_ARGUMENT, fn,
            "opt: expected a dsc_train_options with size = %zu (dsc_train_options_default)",
            sizeof(dsc_train_options));
#define NONNEG(f)                                                                               \
  DSC_CHECK(isfinite(o->f) && o->f >= 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,                       \
            "opt->" #f ": expected a finite number >= 0, got %g", (double)o->f)
  NONNEG(lr);
  NONNEG(weight_decay);
  NONNEG(max_grad_norm);
  NONNEG(mtp_lambda);
  NONNEG(aux_alpha);
  NONNEG(bias_update_rate);
#undef NONNEG
  DSC_CHECK(o->beta1 >= 0.0f && o->beta1 < 1.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->beta1: expected [0, 1), got %g", (double)o->beta1);
  DSC_CHECK(o->beta2 >= 0.0f && o->beta2 < 1.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "opt->beta2: expected [0, 1), got %g", (double)o->beta2);
  DSC_CHECK(isfinite(o->eps) && o->eps > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn, "opt->eps: expected > 0, got %g",
            (double)o->eps);
  DSC_CHECK(o->grad_accum >= 1, DSC_ERR_INVALID_ARGUMENT, fn, "opt->grad_accum: expected >= 1, got %d",
            (int)o->grad_accum);
  return DSC_OK;
}

/* The training step without the host (train_step_device below): on a GPU in one process
 * (DSC_DEVICE_STEP=0 in the environment: the host-driven step), and on the CPU when
 * DSC_DEVICE_STEP=1 (how the CPU tests run it). */
static int device_step(const dsc_model *m) {
  if (m->dist) return 0;
  const char *v = getenv("DSC_DEVICE_STEP");
  if (dsc_ctx_is_cuda(m->ctx)) return !(v && strcmp(v, "0") == 0);
  return v && strcmp(v, "1") == 0;
}

static float load_imbalance(const dsc_model *m) {
  const int64_t E = m->cfg.n_routed_experts;
  double sum = 0.0;
  int n = 0;
  for (int32_t b = 0; b < m->n_blocks; ++b) {
    if (!m->blocks[b].is_moe) continue;
    int64_t tot = 0, mx = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t c = m->load[(int64_t)b * E + e];
      tot += c;
      mx = c > mx ? c : mx;
    }
    if (tot == 0) continue;
    sum += (double)mx / ((double)tot / (double)E);
    ++n;
  }
  return n ? (float)(sum / n) : 1.0f;
}


/* ------------------------------------------------------------------ data parallel */

/* The communicator that sums storage entry e's gradients: the world for replicated tensors,
 * the ranks holding the same experts for an expert stack (NULL: nothing to sum). */
static dsc_comm *grad_comm(const dsc_model *m, int64_t e) {
  const dsc_model_dist *d = m->dist;
  dsc_comm *c = d->ep > 1 && dsc_model_entry_is_expert(m, e) ? d->dpg : d->grad;
  return dsc_comm_size(c) > 1 ? c : NULL;
}

/* Start the sum over the ranks of region r's gradients (asynchronous; in place): one
 * operation per run of entries with the same communicator. */
static dsc_status dist_reduce_region(dsc_model *m, int32_t r) {
  dsc_model_dist *d = m->dist;
  if (!d || d->launched[r]) return DSC_OK;
  d->launched[r] = 1;
  int32_t j = 0;
  int64_t e = 0;
  while (e < m->n_storage && m->storage[e].region != r) ++e;
  while (e < m->n_storage && m->storage[e].region == r) {
    dsc_comm *c = grad_comm(m, e);
    const int64_t off = m->storage[e].offset;
    int64_t n = 0;
    while (e < m->n_storage && m->storage[e].region == r && grad_comm(m, e) == c) n += m->storage[e++].numel;
    if (!c || n == 0) continue;
    if (j >= 4) return dsc_error(DSC_ERR_INTERNAL, "dsc_model", "region %d: more than 4 gradient runs", (int)r);
    DSC_TRY(dsc_comm_iall_reduce(c, m->ctx, m->grads + off, n, DSC_DTYPE_FLOAT32, DSC_REDUCE_SUM,
                                 &d->req[(int64_t)r * 4 + j]));
    ++j;
  }
  return DSC_OK;
}

/* A region of the backward is complete: with overlap, its sum starts now. */
static dsc_status dist_region_done(dsc_model *m, int32_t r) {
  if (!m->dist || !m->dist->reduce_in_backward || !m->dist->overlap) return DSC_OK;
  return dist_reduce_region(m, r);
}

/* Sum every region not started yet, wait for all: m->grads then hold the sums. */
static dsc_status dist_reduce_all(dsc_model *m) {
  dsc_model_dist *d = m->dist;
  if (!d || d->grads_reduced) return DSC_OK;
  dsc_status st = DSC_OK;
  for (int32_t r = 0; r < m->n_regions && st == DSC_OK; ++r) st = dist_reduce_region(m, r);
  for (int64_t i = 0; i < d->n_req; ++i) {
    if (!d->req[i]) continue;
    const dsc_status w = dsc_comm_wait(d->grad, d->req[i]);
    d->req[i] = NULL;
    if (st == DSC_OK) st = w;
  }
  if (m->n_regions > 0) memset(d->launched, 0, (size_t)m->n_regions);
  if (st != DSC_OK) {
    char msg[768];
    snprintf(msg, sizeof msg, "%s", dsc_last_error());
    return dsc_error(st, "dsc_model", "the sum of the gradients over the ranks failed: %s", msg);
  }
  d->grads_reduced = 1;
  return DSC_OK;
}

/* Start a backward pass: gradients overwritten (accumulate 0) or added to (1, after a
 * completed pass), the expert-load statistics reset with them. */
static dsc_status grads_begin(dsc_model *m, int accumulate) {
  if (!m->grads) {
    DSC_TRY(dsc_model_alloc(m, (size_t)m->n_params * sizeof(float), (void **)&m->grads));
    DSC_TRY(dsc_model_fill_zero(m, m->grads, m->n_params));
  }
  const int acc = accumulate && m->have_grads;
  memset(m->touched, acc ? 1 : 0, (size_t)m->n_storage);
  if (!acc)
    memset(m->load, 0, (size_t)m->n_blocks * (size_t)(m->cfg.n_routed_experts ? m->cfg.n_routed_experts : 1) *
                           sizeof(int64_t));
  m->have_grads = 0;
  if (m->dist) {
    if (m->dist->grads_reduced && acc)
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, "dsc_model",
                       "accumulate: the gradients were already summed over the ranks (an optimizer step or "
                       "train_step reduced them): accumulate into fresh gradients (accumulate 0) first");
    m->dist->grads_reduced = 0;
    m->dist->load_reduced = 0;
  }
  return DSC_OK;
}

/* The backward of dsc_model_run_forward from the gradients in A->logits [N, V] and A->mtp_logits[d]
 * (d < nd), over tokens [B, T] (device memory); then the gradients of parameters nothing
 * reached are zeros and the pass is complete. */
static dsc_status backward_logits_(dsc_model *m, const DLTensor *tokens, int32_t nd) {
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  const int64_t B = tokens->shape[0], T = tokens->shape[1];
  const int64_t D = m->cfg.hidden_size, V = m->cfg.vocab_size, N = B * T, L = m->n_layers;
  const float eps = m->cfg.rms_norm_eps;
  dsc_status st = DSC_OK;
  (void)V;
  /* MTP depths, deepest first: each hands d(prev) [B, Td, D] to the one before */
  for (int32_t d = nd - 1; d >= 0 && st == DSC_OK; --d) {
    const int64_t Td = T - d - 1;
    const int32_t b = (int32_t)L + d;
    const dsc_model_mtp *mt = &m->mtp[d];
    tv dlg, xn, dx, xo, tD, cat, dcat, dA, dB, e, dC, hp, dprev, tok;
    tv_make(&dlg, m, A->mtp_logits[d], F32, 3, B, Td, V);
    tv_make(&xn, m, A->mtp_xn[d], F32, 3, B, Td, D);
    tv_make(&dx, m, A->dh, F32, 3, B, Td, D);
    gslot gh, gsn, geh, gen, gemb, ghn;
    STEP(dsc_model_round(m, A->mtp_logits[d], B * Td * V)); /* dlogits_d */
    STEP(dsc_linear_backward(ctx, &dlg.t, &xn.t, &m->head, &dx.t, gs_begin(m, &gh, m->head_entry)));
    STEP(gs_end(m, &gh));
    if (d + 1 < nd) STEP(add_rows(m, B, Td - 1, D, A->dh, Td, A->dprev, A->tC));
    STEP(dsc_model_round(m, A->dh, B * Td * D)); /* d xn_d */
    tv_make(&xo, m, A->mtp_xo[d], F32, 3, B, Td, D);
    tv_make(&tD, m, A->tD, F32, 3, B, Td, D);
    STEP(dsc_rms_norm_backward(ctx, &dx.t, &xo.t, &mt->head_norm, NULL, eps, &tD.t,
                               gs_begin(m, &gsn, m->mtp_entries[d][3])));
    STEP(gs_end(m, &gsn));
    STEP(block_bwd(m, b, B, Td, A->mtp_pos[d], A->tD));
    STEP(dsc_model_round(m, A->tD, B * Td * D)); /* d x */
    tv_make(&cat, m, A->mtp_cat[d], F32, 3, B, Td, 2 * D);
    tv_make(&dcat, m, A->dcat, F32, 3, B, Td, 2 * D);
    STEP(dsc_linear_backward(ctx, &tD.t, &cat.t, &mt->eh_proj, &dcat.t, gs_begin(m, &geh, m->mtp_entries[d][2])));
    STEP(gs_end(m, &geh));
    STEP(dsc_model_round(m, A->dcat, B * Td * 2 * D)); /* dcat */
    tv_make(&dA, m, A->tA, F32, 3, B, Td, D);
    tv_make(&dB, m, A->tB, F32, 3, B, Td, D);
    STEP(dsc_model_split2(m, &dcat.t, &dA.t, &dB.t));
    tv_make(&e, m, A->mtp_e[d], F32, 3, B, Td, D);
    tv_make(&dC, m, A->tC, F32, 3, B, Td, D);
    STEP(dsc_rms_norm_backward(ctx, &dA.t, &e.t, &mt->enorm, NULL, eps, &dC.t,
                               gs_begin(m, &gen, m->mtp_entries[d][0])));
    STEP(gs_end(m, &gen));
    tv_make(&tok, m, A->mtp_tok[d], I32, 2, B, Td, 0);
    STEP(dsc_embedding_backward(ctx, &tok.t, &dC.t, gs_begin(m, &gemb, m->emb_entry)));
    STEP(gs_end(m, &gemb));
    tv_make(&hp, m, A->mtp_hp[d], F32, 3, B, Td, D);
    tv_make(&dprev, m, A->dprev, F32, 3, B, Td, D);
    STEP(dsc_rms_norm_backward(ctx, &dB.t, &hp.t, &mt->hnorm, NULL, eps, &dprev.t,
                               gs_begin(m, &ghn, m->mtp_entries[d][1])));
    STEP(gs_end(m, &ghn));
    STEP(dist_region_done(m, m->mtp[d].region));
  }

  /* main: head, final norm (+ d(prev) of MTP depth 0), blocks, embedding */
  {
    tv dlg, hn, dhn, hL, tD;
    tv_make(&dlg, m, A->logits, F32, 3, B, T, V);
    tv_make(&hn, m, A->hn, F32, 3, B, T, D);
    tv_make(&dhn, m, A->dh, F32, 3, B, T, D);
    gslot gh, gn, gemb;
    STEP(dsc_model_round(m, A->logits, N * V)); /* dlogits */
    STEP(dsc_linear_backward(ctx, &dlg.t, &hn.t, &m->head, &dhn.t, gs_begin(m, &gh, m->head_entry)));
    STEP(gs_end(m, &gh));
    if (nd > 0) STEP(add_rows(m, B, T - 1, D, A->dh, T, A->dprev, A->tC));
    STEP(dsc_model_round(m, A->dh, N * D)); /* d hn */
    tv_make(&hL, m, A->h + L * N * D, F32, 3, B, T, D);
    tv_make(&tD, m, A->tD, F32, 3, B, T, D);
    STEP(dsc_rms_norm_backward(ctx, &dhn.t, &hL.t, &m->final_norm, NULL, eps, &tD.t,
                               gs_begin(m, &gn, m->norm_entry)));
    STEP(gs_end(m, &gn));
    for (int32_t b = (int32_t)L - 1; b >= 0 && st == DSC_OK; --b) {
      st = block_bwd(m, b, B, T, A->pos, A->tD);
      if (st == DSC_OK) st = dist_region_done(m, m->blocks[b].region); /* its sum runs while b-1 computes */
    }
    STEP(dsc_embedding_backward(ctx, tokens, &tD.t, gs_begin(m, &gemb, m->emb_entry)));
    STEP(gs_end(m, &gemb));
  }
  /* parameters nothing reached this pass (e.g. MTP with lambda 0) get zero gradients */
  for (int64_t e = 0; e < m->n_storage && st == DSC_OK; ++e) {
    if (!m->touched[e] && m->storage[e].train) {
      st = dsc_model_fill_zero(m, m->grads + m->storage[e].offset, m->storage[e].numel);
      m->touched[e] = 1;
    }
  }
  if (st == DSC_OK && m->dist && m->dist->reduce_in_backward) st = dist_reduce_all(m);
  if (st == DSC_OK) m->have_grads = 1;
  return st;
}

static dsc_status settle(dsc_model *m);
static dsc_status loss_and_grad_run(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                                    const DLTensor *targets, int32_t accumulate, float grad_scale,
                                    dsc_train_stats *stats);

static dsc_status backward_logits(dsc_model *m, const DLTensor *tokens, int32_t nd) {
  const int32_t mm = dsc_model_math_enter(m);
  const dsc_status st = backward_logits_(m, tokens, nd);
  dsc_model_math_leave(m, mm);
  return st;
}

/* tokens and targets of a training call. On a GPU their range checks are deferred: queued
 * with no host wait, read with the step's one copy of its losses (loss_and_grad_run), before
 * any optimizer update; the embedding and the cross-entropy skip a bad id meanwhile. A bad id
 * then fails the call there, and the gradients of that call are dropped (have_grads = 0). On
 * the CPU the check costs no wait and stays immediate: nothing is touched before it. */
static dsc_status checked_ids(dsc_model *m, const char *fn, const dsc_train_options *opt,
                              const DLTensor *tokens, const DLTensor *targets) {
  const int defer = dsc_ctx_is_cuda(m->ctx) || device_step(m);
  const int32_t cm = dsc_ctx_check_mode_push(m->ctx, defer ? DSC_CHECK_DEFERRED : DSC_CHECK_IMMEDIATE);
  dsc_status st = dsc_model_check_ids(m, fn, "tokens", tokens, NULL, 0, 0);
  if (st == DSC_OK) st = dsc_model_check_ids(m, fn, "targets", targets, tokens, opt->ignore_index, 1);
  dsc_ctx_check_mode_pop(m->ctx, cm);
  return st;
}

dsc_status dsc_model_loss_and_grad(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                                   const DLTensor *targets, int32_t accumulate, float grad_scale,
                                   dsc_train_stats *stats) {
  static const char *const FN = "dsc_model_loss_and_grad";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(settle(m)); /* a step without the host before: its read (and any failure) first */
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(check_train_options(FN, opt));
  DSC_TRY(checked_ids(m, FN, opt, tokens, targets));
  DSC_CHECK(isfinite(grad_scale) && grad_scale > 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "grad_scale: expected a finite number > 0, got %g", (double)grad_scale);
  DSC_CHECK(accumulate == 0 || accumulate == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "accumulate: expected 0 or 1, got %d", (int)accumulate);
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_train_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected size = %zu", sizeof(dsc_train_stats));
  /* tokens and targets are checked: the ops below need not copy them (or what is made of
   * them: shifted rows, positions) back to check them again (DSC_DEBUG_CHECKS=1 does) */
  m->ctx->trusted_indices++;
  const dsc_status st = loss_and_grad_run(m, opt, tokens, targets, accumulate, grad_scale, stats);
  m->ctx->trusted_indices--;
  return st;
}

/* The MTP depths a pass trains. */
static int32_t pass_depths(const dsc_model *m, const dsc_train_options *opt, int64_t T) {
  return (opt->mtp_lambda > 0.0f) ? (int32_t)(m->n_mtp < T - 1 ? m->n_mtp : T - 1) : 0;
}

/* One pass (forward, losses, backward) with nothing read back: the losses, expert counts and
 * balance losses stay in the selected read-back slot. */
static dsc_status pass_run(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                           const DLTensor *targets, int32_t accumulate, float grad_scale) {
  dsc_context *ctx = m->ctx;
  DSC_TRY(grads_begin(m, accumulate));

  const int64_t B = tokens->shape[0], T = tokens->shape[1];
  const int64_t V = m->cfg.vocab_size, N = B * T;
  const int32_t nd = pass_depths(m, opt, T);
  fwd_opts o = {1, opt->aux_alpha * grad_scale, 0.0, 1}; /* read back by the caller */
  DSC_TRY(dsc_model_run_forward(m, tokens, nd, &o, NULL));
  dsc_model_acts *A = m->acts;
  A->fwd_mtp = -1; /* this backward is the forward's: no other may follow */
  dsc_status st = DSC_OK;

  /* losses; the logits become their gradients in place */
  tv lg, tg, loss0;
  tv_make(&lg, m, A->logits, F32, 2, N, V, 0);
  tv_make(&tg, m, dsc_data(targets), I32, 1, N, 0, 0);
  tv_make(&loss0, m, A->loss, F32, 1, 1, 0, 0);
  STEP(dsc_cross_entropy(ctx, &lg.t, &tg.t, opt->ignore_index, grad_scale, &loss0.t, &lg.t, NULL));
  const float lam = opt->mtp_lambda / (float)(m->n_mtp > 0 ? m->n_mtp : 1);
  for (int32_t d = 0; d < nd && st == DSC_OK; ++d) {
    const int64_t Td = T - d - 1;
    tv lgd, tgd, ld;
    STEP(dsc_model_slice_rows(m, B, Td, 1, sizeof(int32_t), dsc_data(targets), T, d + 1, A->mtp_tgt[d]));
    tv_make(&lgd, m, A->mtp_logits[d], F32, 2, B * Td, V, 0);
    tv_make(&tgd, m, A->mtp_tgt[d], I32, 1, B * Td, 0, 0);
    tv_make(&ld, m, A->loss + 1 + d, F32, 1, 1, 0, 0);
    STEP(dsc_cross_entropy(ctx, &lgd.t, &tgd.t, opt->ignore_index, grad_scale * lam, &ld.t, &lgd.t, NULL));
  }
  STEP(backward_logits(m, tokens, nd));
  if (st != DSC_OK) m->have_grads = 0;
  return st;
}

static dsc_status loss_and_grad_run(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                                    const DLTensor *targets, int32_t accumulate, float grad_scale,
                                    dsc_train_stats *stats) {
  dsc_context *ctx = m->ctx;
  const int64_t N = tokens->shape[0] * tokens->shape[1];
  const int32_t nd = pass_depths(m, opt, tokens->shape[1]);
  fwd_opts o = {1, opt->aux_alpha * grad_scale, 0.0, 1};
  dsc_status st = pass_run(m, opt, tokens, targets, accumulate, grad_scale);
  float losses[1 + DSC_MODEL_MAX_MTP];
  /* the one host wait of the pass: the losses, the expert load and balance losses (the
   * read-back region), and the deferred checks' record */
  STEP(dsc_ctx_check_begin_read(ctx));
  STEP(dsc_model_read_back(m, &o, losses, 1 + nd));
  STEP(dsc_ctx_check_end_read(ctx));
  if (st != DSC_OK) {
    m->have_grads = 0;
    return st;
  }
  if (stats) {
    stats->loss = losses[0];
    double s = 0.0;
    for (int32_t d = 0; d < nd; ++d) s += losses[1 + d];
    stats->mtp_loss = nd ? (float)(s / nd) : 0.0f;
    stats->aux_loss = (float)(o.aux_sum / grad_scale);
    stats->grad_norm = 0.0f;
    stats->step = m->step;
    stats->load_imbalance = load_imbalance(m);
    stats->tokens = N;
  }
  return DSC_OK;
}

/* ------------------------------------------------------------------ composable training */

dsc_status dsc_model_forward_train(dsc_model *m, const DLTensor *tokens, int32_t n_mtp, DLTensor *logits,
                                   DLTensor *const *mtp_logits) {
  static const char *const FN = "dsc_model_forward_train";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(settle(m)); /* a step without the host before: its read (and any failure) first */
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  const int64_t B = tokens->shape[0], T = tokens->shape[1], V = m->cfg.vocab_size;
  DSC_CHECK(n_mtp >= 0 && n_mtp <= m->n_mtp && n_mtp <= T - 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_mtp: expected 0..%d (the model's MTP depths, and fewer than the %lld tokens per row), got %d",
            (int)(m->n_mtp < T - 1 ? m->n_mtp : T - 1), (long long)T, (int)n_mtp);
  if (logits) {
    DSC_TRY(dsc_check_tensor(m->ctx, FN, "logits", logits, DSC_DT(DSC_DTYPE_FLOAT32)));
    const int64_t shp[3] = {B, T, V};
    DSC_TRY(dsc_check_shape(FN, "logits", logits, 3, shp));
  }
  for (int32_t d = 0; d < n_mtp; ++d) {
    const DLTensor *t = mtp_logits ? mtp_logits[d] : NULL;
    if (!t) continue;
    char arg[32];
    snprintf(arg, sizeof arg, "mtp_logits[%d]", (int)d);
    DSC_TRY(dsc_check_tensor(m->ctx, FN, arg, t, DSC_DT(DSC_DTYPE_FLOAT32)));
    const int64_t shp[3] = {B, T - d - 1, V};
    DSC_TRY(dsc_check_shape(FN, arg, t, 3, shp));
  }
  /* this forward's expert load goes aside (m->load keeps the last backward's until the
   * backward of this forward takes it over) */
  const size_t lb = (size_t)m->n_blocks * (size_t)(m->cfg.n_routed_experts ? m->cfg.n_routed_experts : 1) *
                    sizeof(int64_t);
  int64_t *keep = (int64_t *)malloc(lb);
  if (!keep) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  memcpy(keep, m->load, lb);
  memset(m->load, 0, lb);
  fwd_opts o = {1, 0.0f, 0.0, 0};
  dsc_status fst = dsc_model_run_forward(m, tokens, n_mtp, &o, NULL);
  dsc_model_acts *A = m->acts;
  if (fst == DSC_OK && !A->fwd_load) {
    A->fwd_load = (int64_t *)malloc(lb);
    if (!A->fwd_load) fst = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  if (fst == DSC_OK) memcpy(A->fwd_load, m->load, lb);
  memcpy(m->load, keep, lb);
  free(keep);
  DSC_TRY(fst);
  A->fwd_mtp = -1;
  const size_t row = (size_t)V * sizeof(float);
  DSC_TRY(dsc_memcpy(m->ctx, A->tok, m->ctx->device, dsc_data(tokens), tokens->device,
                     (size_t)(B * T) * sizeof(int32_t)));
  if (logits)
    DSC_TRY(dsc_memcpy(m->ctx, dsc_data(logits), logits->device, A->logits, m->ctx->device, (size_t)(B * T) * row));
  for (int32_t d = 0; d < n_mtp; ++d)
    if (mtp_logits && mtp_logits[d])
      DSC_TRY(dsc_memcpy(m->ctx, dsc_data(mtp_logits[d]), mtp_logits[d]->device, A->mtp_logits[d],
                         m->ctx->device, (size_t)(B * (T - d - 1)) * row));
  A->fwd_mtp = n_mtp;
  return DSC_OK;
}

dsc_status dsc_model_backward(dsc_model *m, const DLTensor *dlogits, int32_t n_mtp,
                              const DLTensor *const *dmtp_logits, int32_t accumulate) {
  static const char *const FN = "dsc_model_backward";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(settle(m)); /* a step without the host before: its read (and any failure) first */
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  dsc_model_acts *A = m->acts;
  DSC_CHECK(A != NULL && A->fwd_mtp >= 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "model: expected a dsc_model_forward_train before (one backward per forward), got none pending");
  DSC_CHECK(accumulate == 0 || accumulate == 1, DSC_ERR_INVALID_ARGUMENT, FN,
            "accumulate: expected 0 or 1, got %d", (int)accumulate);
  DSC_CHECK(n_mtp >= 0 && n_mtp <= A->fwd_mtp, DSC_ERR_INVALID_ARGUMENT, FN,
            "n_mtp: expected 0..%d (the depths the forward ran), got %d", (int)A->fwd_mtp, (int)n_mtp);
  const int64_t B = A->B, T = A->T, V = m->cfg.vocab_size;
  DSC_TRY(dsc_check_tensor(m->ctx, FN, "dlogits", dlogits, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shp[3] = {B, T, V};
  DSC_TRY(dsc_check_shape(FN, "dlogits", dlogits, 3, shp));
  for (int32_t d = 0; d < n_mtp; ++d) {
    const DLTensor *t = dmtp_logits ? dmtp_logits[d] : NULL;
    if (!t) continue;
    char arg[32];
    snprintf(arg, sizeof arg, "dmtp_logits[%d]", (int)d);
    DSC_TRY(dsc_check_tensor(m->ctx, FN, arg, t, DSC_DT(DSC_DTYPE_FLOAT32)));
    const int64_t s3[3] = {B, T - d - 1, V};
    DSC_TRY(dsc_check_shape(FN, arg, t, 3, s3));
  }
  /* the gradients go where the forward kept the logits; an MTP depth without one gets zeros */
  const size_t row = (size_t)V * sizeof(float);
  DSC_TRY(dsc_memcpy(m->ctx, A->logits, m->ctx->device, dsc_data(dlogits), dlogits->device, (size_t)(B * T) * row));
  for (int32_t d = 0; d < n_mtp; ++d) {
    if (dmtp_logits && dmtp_logits[d])
      DSC_TRY(dsc_memcpy(m->ctx, A->mtp_logits[d], m->ctx->device, dsc_data(dmtp_logits[d]), dmtp_logits[d]->device,
                         (size_t)(B * (T - d - 1)) * row));
    else
      DSC_TRY(dsc_model_fill_zero(m, A->mtp_logits[d], B * (T - d - 1) * V));
  }
  /* the expert load of this pass is its forward's (added to the previous passes' when
   * accumulating, as loss_and_grad does) */
  dsc_status st = grads_begin(m, accumulate);
  A->fwd_mtp = -1;
  if (st != DSC_OK) return st;
  const int64_t nl = (int64_t)m->n_blocks * (m->cfg.n_routed_experts ? m->cfg.n_routed_experts : 1);
  for (int64_t i = 0; i < nl; ++i) m->load[i] += A->fwd_load[i];
  tv tok;
  tv_make(&tok, m, A->tok, I32, 2, B, T, 0);
  st = backward_logits(m, &tok.t, n_mtp);
  if (st != DSC_OK) m->have_grads = 0;
  return st;
}

/* Rows [r0, r0 + n) of a [B, T] int32 tensor, as a view. */
static DLTensor *row_view(tv *v, const dsc_model *m, const DLTensor *t, int64_t r0, int64_t n) {
  return tv_make(v, m, (const int32_t *)dsc_data(t) + r0 * t->shape[1], I32, 2, n, t->shape[1], 0);
}

static dsc_status finish_step(dsc_model *m, const dsc_train_options *opt, dsc_train_stats *stats,
                              int64_t tokens, double loss, double mtp, double aux, float gn);

/* Runs of consecutive trained entries with one weight decay (the flat arenas' order). */
static int32_t trained_runs(const dsc_model *m, float decay_on, dsc_param_run *runs) {
  int32_t nr = 0;
  for (int64_t e = 0; e < m->n_storage; ++e) {
    const dsc_model_entry *en = &m->storage[e];
    if (!en->train || en->numel == 0) continue;
    const float wd = en->decay ? decay_on : 0.0f;
    if (nr > 0 && runs[nr - 1].off + runs[nr - 1].n == en->offset && runs[nr - 1].weight_decay == wd) {
      runs[nr - 1].n += en->numel;
    } else {
      runs[nr].off = en->offset;
      runs[nr].n = en->numel;
      runs[nr].weight_decay = wd;
      ++nr;
    }
  }
  return nr;
}

/* CPU: the global norm over the trained parameters, clipping and AdamW as two passes over
 * the flat arenas (runs of consecutive trained entries with one weight decay) instead of a
 * parallel region per tensor; the clip coefficient scales the gradients inside the update
 * (g * c, the same multiply the in-place scaling did; m->grads keep the unclipped values).
 * *gn: the norm before clipping. */
static dsc_status cpu_clip_adamw(dsc_model *m, const dsc_train_options *opt, float *gn) {
  static const char *const FN = "dsc_model_train_step";
  dsc_param_run *runs = (dsc_param_run *)malloc((size_t)(m->n_storage ? m->n_storage : 1) * sizeof *runs);
  if (!runs) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  const int32_t nr = trained_runs(m, opt->weight_decay, runs);
  double ss = 0.0;
  dsc_status st = DSC_OK;
  if (m->dist && m->dist->ep > 1) {
    /* expert stacks are split over the expert-parallel group: their squares are summed there
     * (in rank order, the same bits on every rank); everything else is replicated */
    dsc_param_run *r2 = (dsc_param_run *)malloc((size_t)(m->n_storage ? m->n_storage : 1) * sizeof *r2);
    if (!r2) st = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
    double part[2] = {0.0, 0.0};
    for (int kind = 0; kind < 2 && st == DSC_OK; ++kind) {
      int32_t n2 = 0;
      for (int64_t e = 0; e < m->n_storage; ++e) {
        const dsc_model_entry *en = &m->storage[e];
        if (!en->train || en->numel == 0 || dsc_model_entry_is_expert(m, e) != kind) continue;
        r2[n2].off = en->offset;
        r2[n2].n = en->numel;
        r2[n2].weight_decay = 0.0f;
        ++n2;
      }
      st = dsc_cpu_sumsq_runs(m->ctx, n2, r2, m->grads, &part[kind]);
    }
    free(r2);
    if (st == DSC_OK)
      st = dsc_comm_all_reduce_raw(m->dist->epc, m->ctx, &part[1], &part[1], 1, DSC_DTYPE_FLOAT64, DSC_REDUCE_SUM);
    ss = part[0] + part[1];
  } else {
    st = dsc_cpu_sumsq_runs(m->ctx, nr, runs, m->grads, &ss);
  }
  const double norm = sqrt(ss);
  *gn = (float)norm;
  float gscale = 1.0f;
  if (opt->max_grad_norm > 0.0f && *gn > opt->max_grad_norm)
    gscale = (float)((double)opt->max_grad_norm / ((double)*gn + 1e-6));
  if (st == DSC_OK) {
    m->step += 1;
    const float bc1 = (float)(1.0 - pow((double)opt->beta1, (double)m->step));
    const float bc2 = (float)(1.0 - pow((double)opt->beta2, (double)m->step));
    st = dsc_cpu_adamw_runs(m->ctx, nr, runs, m->params, m->grads, m->mom_dtype, m->exp_avg, m->exp_avg_sq,
                            opt->lr, opt->beta1, opt->beta2, opt->eps, bc1, bc2, gscale);
  }
  free(runs);
  return st;
}

/* The optimizer part of a step on m->grads: the global norm (*gn_out, before clipping),
 * clipping, AdamW (step + 1). */
static dsc_status optimize(dsc_model *m, const dsc_train_options *opt, float *gn_out) {
  static const char *const FN = "dsc_model_train_step";
  dsc_context *ctx = m->ctx;
  if (!dsc_ctx_is_cuda(ctx)) {
    DSC_TRY(dsc_model_ensure_moments(m));
    return cpu_clip_adamw(m, opt, gn_out);
  }

  /* global norm over the trained tensors, clipping, AdamW (decay on matrices only) */
  DLTensor *views = (DLTensor *)calloc((size_t)m->n_storage * 4, sizeof(DLTensor));
  DLTensor **ptrs = (DLTensor **)calloc((size_t)m->n_storage * 4, sizeof(DLTensor *));
  dsc_status st = (views && ptrs) ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  STEP(dsc_model_ensure_moments(m));
  float gn = 0.0f;
  const int split = m->dist && m->dist->ep > 1; /* expert stacks: their squares summed over the group */
  double part[2] = {0.0, 0.0};
  for (int kind = 0; kind < 1 + split && st == DSC_OK; ++kind) {
    int32_t n = 0;
    for (int64_t e = 0; e < m->n_storage; ++e) {
      if (!m->storage[e].train || (split && dsc_model_entry_is_expert(m, e) != kind)) continue;
      views[n] = dsc_model_storage_view(m, e, m->grads);
      ptrs[n] = &views[n];
      ++n;
    }
    float g = 0.0f;
    if (n) st = dsc_global_norm(ctx, n, (const DLTensor *const *)ptrs, &g);
    part[kind] = (double)g * (double)g;
    if (!split) gn = g;
  }
  if (split && st == DSC_OK) {
    /* host doubles through the device for NCCL */
    void *dev = NULL;
    st = dsc_malloc(ctx, sizeof(double), &dev);
    const DLDevice host = {kDLCPU, 0};
    if (st == DSC_OK) st = dsc_memcpy(ctx, dev, ctx->device, &part[1], host, sizeof(double));
    if (st == DSC_OK) st = dsc_comm_all_reduce_raw(m->dist->epc, ctx, dev, dev, 1, DSC_DTYPE_FLOAT64, DSC_REDUCE_SUM);
    if (st == DSC_OK) st = dsc_comm_synchronize(m->dist->epc, ctx);
    if (st == DSC_OK) st = dsc_memcpy(ctx, &part[1], host, dev, ctx->device, sizeof(double));
    if (dev) dsc_free(ctx, dev);
    gn = (float)sqrt(part[0] + part[1]);
  }
  if (st == DSC_OK && opt->max_grad_norm > 0.0f && gn > opt->max_grad_norm)
    st = dsc_model_scale(m, m->grads, m->n_params, (float)((double)opt->max_grad_norm / ((double)gn + 1e-6)));
  if (st == DSC_OK) m->step += 1;
  for (int decay = 1; decay >= 0 && st == DSC_OK; --decay) {
    int32_t n = 0;
    const int64_t S = m->n_storage;
    for (int64_t e = 0; e < S; ++e) {
      const dsc_model_entry *en = &m->storage[e];
      if (!en->train || en->decay != decay) continue;
      views[n] = dsc_model_storage_view(m, e, m->params);
      views[S + n] = dsc_model_storage_view(m, e, m->grads);
      views[2 * S + n] = dsc_model_moment_view(m, en, 0);
      views[3 * S + n] = dsc_model_moment_view(m, en, 1);
      for (int j = 0; j < 4; ++j) ptrs[j * S + n] = &views[j * S + n];
      ++n;
    }
    if (!n) continue;
    dsc_adamw_params p;
    memset(&p, 0, sizeof p);
    p.size = sizeof p;
    p.lr = opt->lr;
    p.beta1 = opt->beta1;
    p.beta2 = opt->beta2;
    p.eps = opt->eps;
    p.weight_decay = decay ? opt->weight_decay : 0.0f;
    p.step = m->step;
    p.max_grad_norm = 0.0f;
    st = dsc_adamw_step(ctx, &p, n, ptrs, (const DLTensor *const *)(ptrs + S), ptrs + 2 * S, ptrs + 3 * S, NULL);
  }
  free(views);
  free(ptrs);

  *gn_out = gn;
  return st;
}

dsc_status dsc_model_optimizer_step(dsc_model *m, const dsc_train_options *opt, dsc_train_stats *stats) {
  static const char *const FN = "dsc_model_optimizer_step";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(settle(m)); /* a step without the host before: its read (and any failure) first */
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(check_train_options(FN, opt));
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_train_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected size = %zu", sizeof(dsc_train_stats));
  DSC_CHECK(m->have_grads, DSC_ERR_INVALID_ARGUMENT, FN,
            "model: expected gradients (dsc_model_backward or dsc_model_loss_and_grad before), got none");
  float gn = 0.0f;
  DSC_TRY(dist_reduce_all(m)); /* gradients of this rank's passes, summed over the ranks */
  DSC_TRY(optimize(m, opt, &gn));
  dsc_train_options o1 = *opt;
  o1.grad_accum = 1; /* the losses are the caller's: report none */
  return finish_step(m, &o1, stats, 0, 0.0, 0.0, 0.0, gn);
}

/* ------------------------------------------------------------------ the step without the host
 *
 * On a GPU a training step needs the host for nothing: every pass leaves its losses, expert
 * counts and balance losses in its own read-back slot; the global norm and the clip
 * coefficient are made on the device (sumsq_list_dev, step_ctl) into the step's control
 * block, which AdamW and the bias update read (the coefficient, and whether to skip); the
 * bias update sums the passes' counts on the device. The deferred checks of tokens and
 * targets (checked_ids) set the context's error record; step_ctl turns a failure into
 * skip = 1, so a step with a bad id (or any step after it before the record is read)
 * changes no weight, moment or bias. The host reads once, and only for statistics: at the
 * end of the step when stats are asked for, else later (dsc_model_train_stats, or the next
 * step that reads). That read also reports a recorded failure and sets the step count to
 * the last update applied. Everything the host flow computes, in the same order: the same
 * losses, loads and statistics; the norm is summed per run of trained parameters instead
 * of per tensor (the same value to float64 rounding). */

/* Norm, clipping, AdamW and the bias update of a step of `passes` passes, on the device. */
static dsc_status optimize_device(dsc_model *m, const dsc_train_options *opt, int32_t passes) {
  static const char *const FN = "dsc_model_train_step";
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  DSC_TRY(dsc_model_ensure_moments(m));
  const size_t nrmax = (size_t)(m->n_storage ? m->n_storage : 1);
  dsc_param_run *runs = (dsc_param_run *)malloc(nrmax * sizeof *runs);
  const float **g = (const float **)malloc(nrmax * sizeof *g);
  int64_t *numel = (int64_t *)malloc(nrmax * sizeof *numel);
  dsc_status st = (runs && g && numel) ? DSC_OK : dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  const int32_t nr = st == DSC_OK ? trained_runs(m, opt->weight_decay, runs) : 0;
  for (int32_t r = 0; r < nr; ++r) {
    g[r] = m->grads + runs[r].off;
    numel[r] = runs[r].n;
  }
  STEP(DSC_DISPATCH(sumsq_list_dev, ctx, nr, g, numel, A->rb_sumsq));
  /* a recorded failure of a deferred check: nothing below changes anything */
  const int64_t *failed = ctx->check_record ? &ctx->check_record->status : NULL;
  STEP(DSC_DISPATCH(step_ctl, ctx, A->rb_sumsq, opt->max_grad_norm, m->step + 1, failed, A->rb_ctl));
  if (st == DSC_OK) m->step += 1;
  const float bc1 = (float)(1.0 - pow((double)opt->beta1, (double)m->step));
  const float bc2 = (float)(1.0 - pow((double)opt->beta2, (double)m->step));
  const size_t ms = dsc_dtype_size(m->mom_dtype);
  for (int32_t r = 0; r < nr && st == DSC_OK; ++r) {
    const int64_t o = runs[r].off;
    st = DSC_DISPATCH(adamw, ctx, runs[r].n, m->params + o, m->grads + o, m->mom_dtype,
                      (char *)m->exp_avg + (size_t)o * ms, (char *)m->exp_avg_sq + (size_t)o * ms, opt->lr,
                      opt->beta1, opt->beta2, opt->eps, runs[r].weight_decay, bc1, bc2, 1.0f, A->rb_ctl);
  }
  free(runs);
  free(g);
  free(numel);
  if (st == DSC_OK && opt->bias_update_rate > 0.0f && m->cfg.topk_method == DSC_MOE_TOPK_NOAUX_TC) {
    const int64_t E = m->cfg.n_routed_experts;
    STEP(DSC_DISPATCH(moe_sum_counts, ctx, passes, m->n_blocks, E, A->rb_load,
                      (int64_t)(A->rb_stride / sizeof(int64_t)), A->rb_dload));
    for (int32_t b = 0; b < m->n_blocks && st == DSC_OK; ++b) {
      if (!m->blocks[b].is_moe || !m->blocks[b].bias.data) continue;
      st = DSC_DISPATCH(moe_update_bias, ctx, E, (float *)m->blocks[b].bias.data, 1, A->rb_dload + (int64_t)b * E,
                        opt->bias_update_rate, A->rb_ctl);
    }
  }
  return st;
}

/* The one read of a step without the host: the control block and every pass's slot, with
 * the deferred checks' record. Fills m->defer.last (and m->load) from the pending step. */
static dsc_status settle(dsc_model *m) {
  if (!m->defer.pending) return DSC_OK;
  m->defer.pending = 0;
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  const int32_t P = m->defer.passes, nd = m->defer.n_mtp;
  dsc_status st = dsc_ctx_check_begin_read(ctx);
  STEP(dsc_memcpy(ctx, A->rb_host, (DLDevice){kDLCPU, 0}, A->rb, ctx->device, A->rb_head + (size_t)P * A->rb_stride));
  const dsc_status chk = dsc_ctx_check_end_read(ctx);
  if (st != DSC_OK) return st;
  dsc_step_ctl c;
  memcpy(&c, A->rb_host, sizeof c);
  if (chk != DSC_OK) {
    m->step = c.applied; /* the updates since the failure were skipped */
    m->have_grads = 0;
    m->defer.have_last = 0;
    return chk;
  }
  /* per pass, as loss_and_grad reads one: losses, then aux and counts block by block */
  const int64_t E = m->cfg.n_routed_experts;
  memset(m->load, 0, (size_t)m->n_blocks * (size_t)(E ? E : 1) * sizeof(int64_t));
  double loss = 0.0, mtp = 0.0, aux = 0.0;
  for (int32_t k = 0; k < P; ++k) {
    const char *slot = (const char *)A->rb_host + A->rb_head + (size_t)k * A->rb_stride;
    const float *losses = (const float *)slot;
    const float *ax = (const float *)(slot + A->rb_aux_off);
    const int64_t *ld = (const int64_t *)(slot + A->rb_load_off);
    double aux_sum = 0.0, s = 0.0;
    for (int32_t b = 0; b < m->n_blocks; ++b) {
      if (!m->blocks[b].is_moe) continue;
      for (int h = 0; h < 2; ++h) {
        aux_sum += ax[2 * b + h];
        for (int64_t e = 0; e < E; ++e) m->load[(int64_t)b * E + e] += ld[(2 * (int64_t)b + h) * E + e];
      }
    }
    for (int32_t d = 0; d < nd; ++d) s += losses[1 + d];
    loss += losses[0];
    mtp += nd ? (float)(s / nd) : 0.0f;
    aux += (float)(aux_sum / m->defer.grad_scale);
  }
  dsc_train_stats *o = &m->defer.last;
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->loss = (float)(loss / m->defer.grad_accum);
  o->mtp_loss = (float)(mtp / m->defer.grad_accum);
  o->aux_loss = (float)(aux / m->defer.grad_accum);
  o->grad_norm = c.norm;
  o->step = m->step;
  o->load_imbalance = load_imbalance(m);
  o->tokens = m->defer.tokens;
  m->defer.have_last = 1;
  return DSC_OK;
}

dsc_status dsc_model_settle(dsc_model *m) { return m ? settle(m) : DSC_OK; }

static dsc_status train_step_device(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                                    const DLTensor *targets, dsc_train_stats *stats) {
  const int64_t B = tokens->shape[0], T = tokens->shape[1];
  const int32_t P = opt->grad_accum;
  const int64_t mb = B / P;
  const float scale = (float)(1.0 / (double)P);
  /* an unread earlier step: its statistics are dropped (a failure it recorded stays in the
   * record, read below or later) */
  m->defer.pending = 0;
  dsc_model_acts *A = NULL;
  DSC_TRY(dsc_model_acts_for(m, mb, T, &A));
  DSC_TRY(dsc_model_rb_reserve(m, P));
  dsc_status st = DSC_OK;
  m->ctx->trusted_indices++; /* checked (deferred) by the caller */
  for (int32_t k = 0; k < P && st == DSC_OK; ++k) {
    tv tk, tg;
    dsc_model_rb_select(m->acts, k);
    st = pass_run(m, opt, row_view(&tk, m, tokens, k * mb, mb), row_view(&tg, m, targets, k * mb, mb), k > 0,
                  scale);
  }
  m->ctx->trusted_indices--;
  dsc_model_rb_select(m->acts, 0);
  STEP(optimize_device(m, opt, P));
  if (st != DSC_OK) return st;
  m->defer.pending = 1;
  m->defer.passes = P;
  m->defer.n_mtp = pass_depths(m, opt, T);
  m->defer.grad_accum = P;
  m->defer.grad_scale = scale;
  m->defer.tokens = B * T;
  m->defer.have_last = 0;
  if (!stats) return DSC_OK;
  DSC_TRY(settle(m));
  *stats = m->defer.last;
  return DSC_OK;
}

dsc_status dsc_model_expert_load(const dsc_model *m, int32_t layer, int64_t *counts, int32_t n) {
  static const char *const FN = "dsc_model_expert_load";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(layer >= 0 && layer < m->n_blocks, DSC_ERR_INVALID_ARGUMENT, FN,
            "layer: expected 0..%d (main layers then MTP blocks), got %d", (int)m->n_blocks - 1, (int)layer);
  DSC_CHECK(m->blocks[layer].is_moe, DSC_ERR_INVALID_ARGUMENT, FN, "layer: %d is a dense layer, not MoE",
            (int)layer);
  DSC_CHECK(counts != NULL && n >= m->cfg.n_routed_experts, DSC_ERR_INVALID_ARGUMENT, FN,
            "counts: expected room for n_routed_experts = %d values, got n = %d", (int)m->cfg.n_routed_experts,
            (int)n);
  DSC_TRY(settle((dsc_model *)m)); /* a step without the host: its counts (a read, no visible change) */
  memcpy(counts, m->load + (int64_t)layer * m->cfg.n_routed_experts,
         (size_t)m->cfg.n_routed_experts * sizeof(int64_t));
  return DSC_OK;
}

dsc_status dsc_model_train_stats(dsc_model *m, dsc_train_stats *stats) {
  static const char *const FN = "dsc_model_train_stats";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_CHECK(stats != NULL && stats->size >= sizeof(dsc_train_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected a dsc_train_stats with size = %zu", sizeof(dsc_train_stats));
  DSC_TRY(settle(m));
  DSC_CHECK(m->defer.have_last, DSC_ERR_INVALID_ARGUMENT, FN,
            "model: expected a dsc_model_train_step before (its statistics are kept until the next step), got "
            "none");
  *stats = m->defer.last;
  return DSC_OK;
}

dsc_status dsc_model_train_step(dsc_model *m, const dsc_train_options *opt, const DLTensor *tokens,
                                const DLTensor *targets, dsc_train_stats *stats) {
  static const char *const FN = "dsc_model_train_step";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "training"));
  DSC_TRY(check_train_options(FN, opt));
  DSC_CHECK(stats == NULL || stats->size >= sizeof(dsc_train_stats), DSC_ERR_INVALID_ARGUMENT, FN,
            "stats: expected size = %zu", sizeof(dsc_train_stats));
  DSC_TRY(checked_ids(m, FN, opt, tokens, targets));
  const int64_t B = tokens->shape[0];
  DSC_CHECK(B % opt->grad_accum == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "opt->grad_accum: expected a divisor of the batch size %lld, got %d", (long long)B,
            (int)opt->grad_accum);
  if (device_step(m)) return train_step_device(m, opt, tokens, targets, stats);
  DSC_TRY(settle(m));
  m->defer.have_last = 0;
  const int64_t mb = B / opt->grad_accum;
  double loss = 0.0, mtp = 0.0, aux = 0.0;
  /* data parallel: each rank's micro-batches are 1/W of the global batch, and the last one's
   * backward sums the gradients over the ranks as its layers complete */
  const int32_t W = m->dist ? m->dist->world : 1;
  const float scale = (float)(1.0 / ((double)opt->grad_accum * (double)W));
  for (int32_t k = 0; k < opt->grad_accum; ++k) {
    tv tk, tg;
    dsc_train_stats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    if (m->dist) m->dist->reduce_in_backward = k + 1 == opt->grad_accum;
    const dsc_status ls = dsc_model_loss_and_grad(m, opt, row_view(&tk, m, tokens, k * mb, mb),
                                                  row_view(&tg, m, targets, k * mb, mb), k > 0, scale, &s);
    if (m->dist) m->dist->reduce_in_backward = 0;
    DSC_TRY(ls);
    loss += s.loss;
    mtp += s.mtp_loss;
    aux += s.aux_loss;
  }

  float gn = 0.0f;
  DSC_TRY(optimize(m, opt, &gn));
  dsc_train_stats s;
  memset(&s, 0, sizeof s);
  s.size = sizeof s;
  DSC_TRY(finish_step(m, opt, &s, B * tokens->shape[1], loss, mtp, aux, gn));
  m->defer.last = s; /* dsc_model_train_stats reads it */
  m->defer.have_last = 1;
  if (stats) *stats = s;
  return DSC_OK;
}

static dsc_status dist_host_sum(dsc_model *m, dsc_comm *c, void *x, int64_t n, dsc_dtype dt) {
  return dsc_model_host_all_reduce(m, c, x, n, dt, DSC_REDUCE_SUM);
}

/* After an optimizer step: the replicated parameters (everything but the expert stacks) must
 * be bitwise the same on every rank, an expert stack on the ranks holding it. A 64-bit hash
 * of each, all-gathered and compared. */
static dsc_status dist_check_params(dsc_model *m) {
  static const char *const FN = "dsc_model_train_step";
  dsc_model_dist *d = m->dist;
  dsc_context *ctx = m->ctx;
  uint64_t h[2] = {0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full};
  float *host = NULL;
  dsc_status st = DSC_OK;
  if (dsc_ctx_is_cuda(ctx)) {
    host = (float *)malloc((size_t)m->scratch_numel * sizeof(float) + 1);
    if (!host) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  }
  for (int64_t e = 0; e < m->n_storage && st == DSC_OK; ++e) {
    const dsc_model_entry *en = &m->storage[e];
    const int kind = dsc_model_entry_is_expert(m, e) && d->ep > 1;
    const float *p = m->params + en->offset;
    if (host) {
      st = dsc_memcpy(ctx, host, (DLDevice){kDLCPU, 0}, p, ctx->device, (size_t)en->numel * sizeof(float));
      p = host;
    }
    if (st == DSC_OK) h[kind] = dsc_dist_hash(p, (size_t)en->numel * sizeof(float), h[kind]);
  }
  free(host);
  for (int kind = 0; kind < 2 && st == DSC_OK; ++kind) {
    dsc_comm *c = kind ? d->dpg : d->grad;
    if (dsc_comm_size(c) < 2) continue;
    static const char *const names[2] = {"the replicated parameters (all but the routed experts)",
                                         "the routed experts of the ranks holding the same experts"};
    const int64_t f = (int64_t)h[kind];
    st = dsc_dist_agree(c, ctx, FN, 1, &f, &names[kind]);
    if (st != DSC_OK && dsc_last_error()[0]) {
      char msg[768];
      snprintf(msg, sizeof msg, "%s", dsc_last_error());
      st = dsc_error(st, FN, "after optimizer step %lld the ranks' parameters diverged (a 64-bit hash of each "
                     "rank's copy): %s", (long long)m->step, msg);
    }
  }
  return st;
}

/* After the update: the aux-loss-free bias update, then the step's statistics. */
static dsc_status finish_step(dsc_model *m, const dsc_train_options *opt, dsc_train_stats *stats,
                              int64_t tokens, double loss, double mtp, double aux, float gn) {
  dsc_context *ctx = m->ctx;
  dsc_status st = DSC_OK;
  if (m->dist) {
    /* the global expert load (every rank's tokens) for the bias update and the statistics;
     * the losses and tokens of every rank (the world's mean, the world's total) */
    dsc_model_dist *d = m->dist;
    const int64_t nl = (int64_t)m->n_blocks * (m->cfg.n_routed_experts ? m->cfg.n_routed_experts : 1);
    double acc[4] = {loss, mtp, aux, (double)tokens};
    st = dist_host_sum(m, d->grad, acc, 4, DSC_DTYPE_FLOAT64);
    if (st == DSC_OK && !d->load_reduced) st = dist_host_sum(m, d->grad, m->load, nl, DSC_DTYPE_INT64);
    if (st == DSC_OK) {
      d->load_reduced = 1;
      loss = acc[0] / d->world, mtp = acc[1] / d->world, aux = acc[2] / d->world;
      tokens = (int64_t)acc[3];
    }
  }
  /* auxiliary-loss-free balancing: bias += gamma * sign(mean load - load) */
  if (st == DSC_OK && opt->bias_update_rate > 0.0f && m->cfg.topk_method == DSC_MOE_TOPK_NOAUX_TC) {
    const int64_t E = m->cfg.n_routed_experts;
    /* every block's load in one upload (into the read-back region: read already), and the
     * counts are the library's own: no per-block copy or range check */
    int64_t *dload = m->acts->rb_load; /* [n_blocks, E] of its [2 * n_blocks, E] */
    st = dsc_memcpy(ctx, dload, ctx->device, m->load, (DLDevice){kDLCPU, 0},
                    (size_t)m->n_blocks * (size_t)E * sizeof(int64_t));
    ctx->trusted_indices++;
    for (int32_t b = 0; b < m->n_blocks && st == DSC_OK; ++b) {
      if (!m->blocks[b].is_moe || !m->blocks[b].bias.data) continue;
      tv cnt;
      tv_make(&cnt, m, dload + (int64_t)b * E, DSC_DTYPE_INT64, 1, E, 0, 0);
      DLTensor bias = m->blocks[b].bias;
      STEP(dsc_moe_update_bias(ctx, &bias, &cnt.t, opt->bias_update_rate));
    }
    ctx->trusted_indices--;
  }
  if (st != DSC_OK) return st;
  if (m->dist) {
    m->dist->steps++;
    if (m->dist->check_every > 0 && m->dist->steps % m->dist->check_every == 0) DSC_TRY(dist_check_params(m));
  }
  if (stats) {
    stats->loss = (float)(loss / opt->grad_accum);
    stats->mtp_loss = (float)(mtp / opt->grad_accum);
    stats->aux_loss = (float)(aux / opt->grad_accum);
    stats->grad_norm = gn;
    stats->step = m->step;
    stats->load_imbalance = load_imbalance(m);
    stats->tokens = tokens;
  }
  return DSC_OK;
}
