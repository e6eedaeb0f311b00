/*
 * model/model_layers.c -- the layer math shared by training and inference, composed from
 * the public ops (each validates and dispatches, so the model runs on whatever device its
 * context has kernels for): the dense FFN, the MoE FFN with its expert load, one decoder
 * block, the whole-model forward into the activations of a training shape (model_acts.c),
 * and what inference borrows from it (the FFN of one block, the MTP concat, the logits of
 * a model with masters). The backward, the losses and the optimizer are model_train.c's.
 *
 *   h_0 = Emb(tokens)                                           [B, T, D]
 *   block b:  hmid = h_b + MLA(RMSNorm(h_b));  h_{b+1} = hmid + FFN_b(RMSNorm(hmid))
 *   hn = RMSNorm(h_L);  logits = hn @ head^T                    [B, T, V]
 *   MTP depth d = 0..Dm-1 (Td = T - d - 1 positions; prev_0 = hn, prev_d = xn_{d-1}):
 *     cat = [RMSNorm_e(Emb(tokens[:, d+1:])) ; RMSNorm_h(prev_d[:, :Td])]   [B, Td, 2D]
 *     xo = block_{L+d}(cat @ eh_proj^T);  xn_d = RMSNorm_head(xo);  logits_d = xn_d @ head^T
 *
 * BF16 compute (m->wc != NULL, dsc_model_options.compute_dtype BFLOAT16; DeepSeek-V3's
 * recipe, emulated exactly in float32 buffers holding BF16-rounded values, RNE): the
 * weights are m->wc = bf16(masters), refreshed at the start of every forward. These
 * activations are rounded to BF16 where they are produced (a BF16 stack stores them so):
 *   F1 xn1 = RMSNorm_in(h)          (attention input)
 *   F2 MLA output                   (o_proj GEMM output, the attention output)
 *   F3 xn2 = RMSNorm_post(hmid)     (FFN input)
 *   F4 dense FFN: g, u (GEMM outputs), a = SwiGLU(g, u), y = down(a) (GEMM output)
 *   F5 MoE layer output y (the layer's experts/router inside it run on the BF16 weights
 *      and xn2, with float32 intermediates)
 *   F6 hn = RMSNorm_final(h_L)      (head input)      F7 logits (head GEMM output)
 *   F8 MTP: en, hh (eh_proj input halves), x = eh_proj(cat) (GEMM output), xn (head
 *      input), logits_d
 * The embedding output needs none (rows of BF16 weights). The residual stream (h, hmid,
 * the MTP block input/outputs as they add up) stays float32, as do RMSNorm statistics,
 * softmax, cross-entropy and every GEMM's accumulation. Generation (generate.c) rounds at
 * F1-F8 the same way; the backward's rounding points are listed in model_train.c.
 * Each pass (the forward here, ffn_infer, the backward, generation's forwards) puts the
 * context in DSC_MATH_BF16_OPERANDS and restores the caller's mode after, errors included
 * (dsc_model_math_enter / _leave): on CUDA the float32 GEMMs then run on BF16 tensor cores
 * (cuBLASLt FAST_16BF) and the MLA training attention as mla_attn_tc.cu. On BF16-exact
 * operands (the weights, the activations rounded above) that is the CPU's exact float32
 * GEMM to FP32 accumulation noise; the CPU ignores the mode. So the BF16 model on CPU and
 * GPU differs only where an operand is not BF16-exact: the MLA and MoE intermediates the
 * model does not round (q, the latent kv, the attention's q, k, v, P and their gradients,
 * the experts' hidden activations) take one BF16 rounding on the GPU, a BF16-level
 * difference (tests/test_model_bf16.py, test_cuda_bf16_model_matches_cpu).
 *
 * Legend: B batch, T tokens per row, Tb tokens per row of a block's input, N = B*T,
 * V vocab, D hidden, I dense intermediate, L main layers, Dm MTP depths, E routed experts.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/backend.h"
#include "model_layers.h"

/* Run a step only while every earlier step succeeded. */
#define STEP(call)                 \
  do {                             \
    if (st == DSC_OK) st = (call); \
  } while (0)
#define F32 DSC_DTYPE_FLOAT32
#define I32 DSC_DTYPE_INT32

/* ------------------------------------------------------------------ FFN */

/* Dense SwiGLU MLP forward of block b: xn2 [rows, D] -> y [rows, D], saving g, u, a. */
static dsc_status dense_fwd(dsc_model *m, int32_t b, blk_acts *k, int64_t rows, const DLTensor *x,
                            DLTensor *y) {
  dsc_context *ctx = m->ctx;
  const dsc_model_block *w = &m->blocks[b];
  const int64_t I = m->cfg.intermediate_size, D = m->cfg.hidden_size;
  tv g, u, a;
  tv_make(&g, m, k->g, F32, 2, rows, I, 0);
  tv_make(&u, m, k->u, F32, 2, rows, I, 0);
  tv_make(&a, m, k->a, F32, 2, rows, I, 0);
  dsc_status st = DSC_OK;
  if (m->fp8) {
    tv xq[3], xs[3], wq[3], ws[3];
    dsc_model_ffn_fp8_views(m, k, rows, xq, xs, wq, ws);
    STEP(dsc_fp8_linear_forward(ctx, x, &w->mlp_gate, &g.t, &xq[0].t, &xs[0].t, &wq[0].t, &ws[0].t));
    STEP(dsc_fp8_linear_forward(ctx, x, &w->mlp_up, &u.t, &xq[1].t, &xs[1].t, &wq[1].t, &ws[1].t));
    STEP(dsc_model_round(m, k->g, rows * I)); /* F4 */
    STEP(dsc_model_round(m, k->u, rows * I));
    STEP(dsc_swiglu_forward(ctx, &g.t, &u.t, &a.t));
    STEP(dsc_model_round(m, k->a, rows * I));
    STEP(dsc_fp8_linear_forward(ctx, &a.t, &w->mlp_down, y, &xq[2].t, &xs[2].t, &wq[2].t, &ws[2].t));
  } else {
    STEP(dsc_linear_forward(ctx, x, &w->mlp_gate, &g.t));
    STEP(dsc_linear_forward(ctx, x, &w->mlp_up, &u.t));
    STEP(dsc_model_round(m, k->g, rows * I)); /* F4 */
    STEP(dsc_model_round(m, k->u, rows * I));
    STEP(dsc_swiglu_forward(ctx, &g.t, &u.t, &a.t));
    STEP(dsc_model_round(m, k->a, rows * I));
    STEP(dsc_linear_forward(ctx, &a.t, &w->mlp_down, y));
  }
  STEP(dsc_model_round(m, (float *)dsc_data(y), rows * D));
  return st;
}

static dsc_status ffn_infer_(dsc_model *m, int32_t b, const DLTensor *x, DLTensor *y, DLTensor *counts,
                             const dsc_model_fp8w *h) {
  if (h && h->mem) return dsc_model_ffn_infer_fp8(m, b, x, y, counts, h);
  dsc_context *ctx = m->ctx;
  const dsc_model_block *w = &m->blocks[b];
  if (w->is_moe) {
    dsc_moe_layer_weights mw;
    dsc_model_moe_weights(m, b, &mw);
    const dsc_moe_exchange *ex = dsc_model_exchange(m, b);
    DSC_TRY(ex ? dsc_moe_layer_forward_ex(ctx, &m->route, 1, &mw, x, y, counts, NULL, ex, 0, DSC_MOE_PHASE_ALL)
               : dsc_moe_layer_forward(ctx, &m->route, 1, &mw, x, y, counts, NULL));
    return dsc_model_round(m, (float *)dsc_data(y), dsc_numel(y)); /* F5 */
  }
  /* the dense MLP exactly as the training forward runs it (FP8 GEMMs in fp8 mode), on
   * scratch laid out like a planned block */
  const int64_t rows = dsc_rows(x), D = m->cfg.hidden_size;
  blk_acts k;
  memset(&k, 0, sizeof k);
  size_t off = 0;
  char *base = NULL;
  for (int pass = 0; pass < 2; ++pass) {
    off = 0;
    dsc_model_carve_ffn(m, &k, rows, base, &off);
    /* the context's FFN slot, kept for the next call: a decode step allocates nothing */
    if (pass == 0) DSC_TRY(dsc_ctx_slot(ctx, DSC_SLOT_FFN, off ? off : 1, (void **)&base));
  }
  tv x2, y2;
  tv_make(&x2, m, dsc_data(x), F32, 2, rows, D, 0);
  tv_make(&y2, m, dsc_data(y), F32, 2, rows, D, 0);
  return dense_fwd(m, b, &k, rows, &x2.t, &y2.t);
}

dsc_status dsc_model_ffn_infer(dsc_model *m, int32_t b, const DLTensor *x, DLTensor *y, DLTensor *counts,
                               const dsc_model_fp8w *h) {
  const int32_t mm = dsc_model_math_enter(m);
  const dsc_status st = ffn_infer_(m, b, x, y, counts, h);
  dsc_model_math_leave(m, mm);
  return st;
}

dsc_status dsc_model_concat2(dsc_model *m, const DLTensor *a, const DLTensor *b, DLTensor *out) {
  const int64_t rows = dsc_rows(a), D = dsc_last_dim(a);
  const size_t rb = (size_t)D * sizeof(float);
  DSC_TRY(dsc_model_copy2d(m, rows, rb, dsc_data(a), rb, dsc_data(out), 2 * rb));
  return dsc_model_copy2d(m, rows, rb, dsc_data(b), rb, (char *)dsc_data(out) + rb, 2 * rb);
}

dsc_status dsc_model_split2(dsc_model *m, const DLTensor *in, DLTensor *a, DLTensor *b) {
  const int64_t rows = dsc_rows(a), D = dsc_last_dim(a);
  const size_t rb = (size_t)D * sizeof(float);
  DSC_TRY(dsc_model_copy2d(m, rows, rb, dsc_data(in), 2 * rb, dsc_data(a), rb));
  return dsc_model_copy2d(m, rows, rb, (const char *)dsc_data(in) + rb, 2 * rb, dsc_data(b), rb);
}

/* ------------------------------------------------------------------ MoE FFN */

/* (model_layers.h) */
void dsc_model_ffn_fp8_views(const dsc_model *m, const blk_acts *k, int64_t rows, tv *xq, tv *xs, tv *wq,
                             tv *ws) {
  const int64_t D = m->cfg.hidden_size, I = m->cfg.intermediate_size;
  const int64_t K[3] = {D, D, I}, Nf[3] = {I, I, D}; /* gate, up, down: [Nf, K] */
  for (int j = 0; j < 3; ++j) {
    const int64_t kb = (K[j] + 127) / 128;
    tv_make(&xq[j], m, k->xq[j], DSC_DTYPE_FLOAT8_E4M3FN, 2, rows, K[j], 0);
    tv_make(&xs[j], m, k->xs[j], DSC_DTYPE_FLOAT32, 2, rows, kb, 0);
    tv_make(&wq[j], m, k->wq[j], DSC_DTYPE_FLOAT8_E4M3FN, 2, Nf[j], K[j], 0);
    tv_make(&ws[j], m, k->ws[j], DSC_DTYPE_FLOAT32, 2, (Nf[j] + 127) / 128, kb, 0);
  }
}

/* The balance loss of a MoE layer's forward (`saved`) into read-back slot `slot`, on the
 * device (a device-to-device copy: no wait). */
static dsc_status aux_to_read_back(dsc_model *m, dsc_moe_layer_saved *saved, int64_t Tb, float alpha,
                                   int64_t slot) {
  DSC_TRY(dsc_moe_layer_aux_loss(m->ctx, saved, Tb, alpha, NULL));
  const float *src = dsc_moe_layer_saved_aux_device(saved);
  if (!src) return dsc_error(DSC_ERR_INTERNAL, "dsc_model", "the MoE layer kept no balance loss");
  return dsc_memcpy(m->ctx, m->acts->rb_aux + slot, m->ctx->device, src, m->ctx->device, sizeof(float));
}

/* The MoE FFN of block b: x [B, Tb, D] -> y; its expert load into the read-back region; with
 * o->train the saved state for moe_bwd (model_train.c) and the sequence-wise balance
 * loss. Expert parallel with two micro-batches: the phases of the two interleave, so that
 * the dispatch of the second travels while the first's experts compute, and the first's
 * combine while the second's do. */
static dsc_status moe_fwd(dsc_model *m, int32_t b, blk_acts *k, int64_t B, int64_t Tb, const DLTensor *x,
                          DLTensor *y, fwd_opts *o) {
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  dsc_moe_layer_weights ew;
  dsc_model_moe_weights(m, b, &ew);
  const int64_t E = m->cfg.n_routed_experts;
  /* the expert counts and balance losses go to the read-back region (slot 2b + h), read
   * with the pass's other values: no host wait here */
  tv cnt[2];
  for (int h = 0; h < 2; ++h) tv_make(&cnt[h], m, A->rb_load + (2 * (int64_t)b + h) * E, DSC_DTYPE_INT64, 1, E, 0, 0);
  const dsc_moe_exchange *ex = dsc_model_exchange(m, b);
  dsc_status st = DSC_OK;
  if (moe_mbs(m, b) == 1) {
    dsc_moe_layer_saved *sv = o->train ? k->moe : NULL;
    STEP(ex ? dsc_moe_layer_forward_ex(ctx, &m->route, 1, &ew, x, y, &cnt[0].t, sv, ex, 0, DSC_MOE_PHASE_ALL)
            : dsc_moe_layer_forward(ctx, &m->route, 1, &ew, x, y, &cnt[0].t, sv));
    STEP(dsc_model_round(m, (float *)dsc_data(y), dsc_numel(y))); /* F5 */
    if (o->train && o->aux_alpha > 0.0f) STEP(aux_to_read_back(m, k->moe, Tb, o->aux_alpha, 2 * b));
    return st;
  }
  dsc_moe_layer_saved *sv[2] = {k->moe, k->moe2};
  tv xh[2], yh[2];
  for (int h = 0; h < 2; ++h) {
    half_view(&xh[h], m, x, B, Tb, h);
    half_view(&yh[h], m, y, B, Tb, h);
  }
  static const int32_t phases[3] = {DSC_MOE_PHASE_BEGIN, DSC_MOE_PHASE_MIDDLE, DSC_MOE_PHASE_END};
  for (int ph = 0; ph < 3; ++ph)
    for (int h = 0; h < 2; ++h) {
      STEP(dsc_moe_layer_forward_ex(ctx, &m->route, 1, &ew, &xh[h].t, &yh[h].t, ph == 0 ? &cnt[h].t : NULL, sv[h],
                                    ex, h, phases[ph]));
    }
  STEP(dsc_model_round(m, (float *)dsc_data(y), dsc_numel(y))); /* F5 */
  if (o->train && o->aux_alpha > 0.0f)
    for (int h = 0; h < 2 && st == DSC_OK; ++h) {
      const int64_t Bh = xh[h].t.shape[0];
      if (Bh == 0) continue;
      /* alpha / B_h * sum over its sequences, weighted to alpha / B * sum over all */
      STEP(aux_to_read_back(m, sv[h], Tb, o->aux_alpha * (float)Bh / (float)B, 2 * b + h));
    }
  return st;
}

/* ------------------------------------------------------------------ one block */

/* s = a + b, then y = RMSNorm(s) with weight w (all [rows, D] float32): one pass on the CPU
 * (the same operations: the same bits), the two ops elsewhere. */
static dsc_status add_norm(dsc_model *m, const DLTensor *a, const DLTensor *b, const DLTensor *w,
                           DLTensor *s, DLTensor *y) {
  const float eps = m->cfg.rms_norm_eps;
  if (!dsc_ctx_is_cuda(m->ctx))
    return dsc_cpu_add_rms_norm_fwd(m->ctx, dsc_rows(a), dsc_last_dim(a), (const float *)dsc_data(a),
                                    (const float *)dsc_data(b), (const float *)dsc_data(w), eps,
                                    (float *)dsc_data(s), (float *)dsc_data(y), NULL);
  DSC_TRY(dsc_add(m->ctx, a, b, s));
  return dsc_rms_norm_forward(m->ctx, s, w, eps, y, NULL);
}

/* x_in [B, Tb, D] -> out [B, Tb, D] (out != x_in); positions [B, Tb].
 * xn1_ready: the block's input norm is already in k->xn1 (the previous block fused it);
 * next_w / next_out: the RMSNorm that reads `out` next (the next block's input norm, or the
 * final norm), computed here together with the residual add (NULL: just the add). */
static dsc_status block_fwd(dsc_model *m, int32_t b, int64_t B, int64_t Tb, const int32_t *positions,
                            float *x_in, float *out, fwd_opts *o, int xn1_ready, const DLTensor *next_w,
                            float *next_out) {
  dsc_context *ctx = m->ctx;
  dsc_model_acts *A = m->acts;
  blk_acts *k = &A->blk[b];
  const dsc_model_block *w = &m->blocks[b];
  const int64_t D = m->cfg.hidden_size, rows = B * Tb;
  const float eps = m->cfg.rms_norm_eps;
  k->x_in = x_in;
  k->out = out;
  tv x, xn1, hmid, xn2, y, t, pos;
  tv_make(&x, m, x_in, F32, 3, B, Tb, D);
  tv_make(&xn1, m, k->xn1, F32, 3, B, Tb, D);
  tv_make(&hmid, m, k->hmid, F32, 3, B, Tb, D);
  tv_make(&xn2, m, k->xn2, F32, 3, B, Tb, D);
  tv_make(&y, m, out, F32, 3, B, Tb, D);
  tv_make(&t, m, A->tA, F32, 3, B, Tb, D);
  tv_make(&pos, m, positions, I32, 2, B, Tb, 0);
  dsc_mla_weights mw;
  dsc_model_mla_weights(m, b, &mw);
  dsc_status st = DSC_OK;
  if (!xn1_ready) { /* (else the previous block rounded it) */
    STEP(dsc_rms_norm_forward(ctx, &x.t, &w->input_norm, eps, &xn1.t, NULL));
    STEP(dsc_model_round(m, k->xn1, rows * D)); /* F1 */
  }
  STEP(dsc_mla_forward(ctx, &m->mla, &mw, &xn1.t, &pos.t, &t.t, o->train ? k->mla : NULL));
  STEP(dsc_model_round(m, A->tA, rows * D)); /* F2 */
  STEP(add_norm(m, &x.t, &t.t, &w->post_norm, &hmid.t, &xn2.t));
  STEP(dsc_model_round(m, k->xn2, rows * D)); /* F3 */
  if (w->is_moe) {
    STEP(moe_fwd(m, b, k, B, Tb, &xn2.t, &t.t, o));
  } else {
    tv x2, t2;
    tv_make(&x2, m, k->xn2, F32, 2, rows, D, 0);
    tv_make(&t2, m, A->tA, F32, 2, rows, D, 0);
    STEP(dense_fwd(m, b, k, rows, &x2.t, &t2.t));
  }
  if (next_w) {
    tv nx;
    tv_make(&nx, m, next_out, F32, 3, B, Tb, D);
    STEP(add_norm(m, &hmid.t, &t.t, next_w, &y.t, &nx.t));
    STEP(dsc_model_round(m, next_out, rows * D)); /* F1 of the next block, or F6 */
  } else {
    STEP(dsc_add(ctx, &hmid.t, &t.t, &y.t));
  }
  return st;
}

/* ------------------------------------------------------------------ whole model */

/* (model_layers.h) */
dsc_status dsc_model_slice_rows(dsc_model *m, int64_t B, int64_t n, int64_t W, size_t elem, const void *src,
                                int64_t rows_src, int64_t first, void *dst) {
  const size_t rb = (size_t)(n * W) * elem;
  return dsc_model_copy2d(m, B, rb, (const char *)src + (size_t)(first * W) * elem,
                          (size_t)(rows_src * W) * elem, dst, rb);
}

/* Main model forward (and the MTP depths when n_mtp_run > 0) over tokens [B, T].
 * logits_out: where the main logits go (NULL: the activation arena). */
static dsc_status run_forward_(dsc_model *m, const DLTensor *tokens, int32_t n_mtp_run, fwd_opts *o,
                               float *logits_out) {
  dsc_context *ctx = m->ctx;
  const int64_t B = tokens->shape[0], T = tokens->shape[1];
  const int64_t D = m->cfg.hidden_size, V = m->cfg.vocab_size, N = B * T, L = m->n_layers;
  const float eps = m->cfg.rms_norm_eps;
  dsc_model_acts *A = NULL;
  DSC_TRY(dsc_model_acts_for(m, B, T, &A));
  A->fwd_mtp = -1; /* any forward overwrites what a pending backward would read */
  DSC_TRY(dsc_model_refresh_compute(m)); /* BF16: the weights of this pass */
  dsc_status st = DSC_OK;
  /* the read-back region starts at zero: blocks without MoE (or a micro-batch) leave their
   * slots so (the int64 counts are zero bits too) */
  STEP(dsc_model_fill_zero(m, A->loss, (int64_t)(A->rb_bytes / sizeof(float))));
  tv h0, hL, hn, lg;
  tv_make(&h0, m, A->h, F32, 3, B, T, D);
  STEP(dsc_embedding_forward(ctx, tokens, &m->embed, &h0.t));
  /* each block's residual add also computes the next RMSNorm (the next block's input norm,
   * after the last block the final norm into hn) */
  for (int32_t b = 0; b < L && st == DSC_OK; ++b) {
    const int last = b + 1 == L;
    st = block_fwd(m, b, B, T, A->pos, A->h + b * N * D, A->h + (b + 1) * N * D, o, b > 0,
                   last ? &m->final_norm : &m->blocks[b + 1].input_norm, last ? A->hn : A->blk[b + 1].xn1);
  }
  tv_make(&hL, m, A->h + L * N * D, F32, 3, B, T, D);
  tv_make(&hn, m, A->hn, F32, 3, B, T, D);
  tv_make(&lg, m, logits_out ? logits_out : A->logits, F32, 3, B, T, V);
  (void)hL;
  STEP(dsc_linear_forward(ctx, &hn.t, &m->head, &lg.t));
  STEP(dsc_model_round(m, (float *)lg.t.data, N * V)); /* F7 */

  for (int32_t d = 0; d < n_mtp_run && st == DSC_OK; ++d) {
    const int64_t Td = T - d - 1;
    if (Td < 1) break;
    const int32_t b = (int32_t)L + d;
    const dsc_model_mtp *mt = &m->mtp[d];
    tv tok, e, en, hp, hh, cat, x, xo, xn, lgd;
    tv_make(&tok, m, A->mtp_tok[d], I32, 2, B, Td, 0);
    tv_make(&e, m, A->mtp_e[d], F32, 3, B, Td, D);
    tv_make(&en, m, A->mtp_en[d], F32, 3, B, Td, D);
    tv_make(&hp, m, A->mtp_hp[d], F32, 3, B, Td, D);
    tv_make(&hh, m, A->mtp_hh[d], F32, 3, B, Td, D);
    tv_make(&cat, m, A->mtp_cat[d], F32, 3, B, Td, 2 * D);
    tv_make(&x, m, A->mtp_x[d], F32, 3, B, Td, D);
    tv_make(&xo, m, A->mtp_xo[d], F32, 3, B, Td, D);
    tv_make(&xn, m, A->mtp_xn[d], F32, 3, B, Td, D);
    tv_make(&lgd, m, A->mtp_logits[d], F32, 3, B, Td, V);
    /* tokens shifted by d + 1; prev: hn (T rows) or the previous depth's xn (T - d rows) */
    STEP(dsc_model_slice_rows(m, B, Td, 1, sizeof(int32_t), dsc_data(tokens), T, d + 1, A->mtp_tok[d]));
    STEP(dsc_embedding_forward(ctx, &tok.t, &m->embed, &e.t));
    STEP(dsc_rms_norm_forward(ctx, &e.t, &mt->enorm, eps, &en.t, NULL));
    STEP(dsc_model_round(m, A->mtp_en[d], B * Td * D)); /* F8 */
    STEP(dsc_model_slice_rows(m, B, Td, D, sizeof(float), d == 0 ? A->hn : A->mtp_xn[d - 1], d == 0 ? T : T - d, 0,
                    A->mtp_hp[d]));
    STEP(dsc_rms_norm_forward(ctx, &hp.t, &mt->hnorm, eps, &hh.t, NULL));
    STEP(dsc_model_round(m, A->mtp_hh[d], B * Td * D));
    STEP(dsc_model_concat2(m, &en.t, &hh.t, &cat.t));
    STEP(dsc_linear_forward(ctx, &cat.t, &mt->eh_proj, &x.t));
    STEP(dsc_model_round(m, A->mtp_x[d], B * Td * D));
    STEP(block_fwd(m, b, B, Td, A->mtp_pos[d], A->mtp_x[d], A->mtp_xo[d], o, 0, NULL, NULL));
    STEP(dsc_rms_norm_forward(ctx, &xo.t, &mt->head_norm, eps, &xn.t, NULL));
    STEP(dsc_model_round(m, A->mtp_xn[d], B * Td * D));
    STEP(dsc_linear_forward(ctx, &xn.t, &m->head, &lgd.t));
    STEP(dsc_model_round(m, A->mtp_logits[d], B * Td * V));
  }
  return st;
}

/* run_forward_ with the context in the model's math mode (BF16 operands for a BF16 model). */
dsc_status dsc_model_run_forward(dsc_model *m, const DLTensor *tokens, int32_t n_mtp_run, fwd_opts *o,
                                 float *logits_out) {
  const int32_t mm = dsc_model_math_enter(m);
  dsc_status st = run_forward_(m, tokens, n_mtp_run, o, logits_out);
  dsc_model_math_leave(m, mm);
  if (st == DSC_OK && !o->defer_read) st = dsc_model_read_back(m, o, NULL, 0);
  return st;
}

/* (model_layers.h) */
dsc_status dsc_model_read_back(dsc_model *m, fwd_opts *o, float *losses, int32_t n_losses) {
  dsc_model_acts *A = m->acts;
  DSC_TRY(dsc_memcpy(m->ctx, A->rb_host, (DLDevice){kDLCPU, 0}, A->loss, m->ctx->device, A->rb_bytes));
  const char *base = (const char *)A->rb_host;
  const float *aux = (const float *)(base + ((const char *)A->rb_aux - (const char *)A->loss));
  const int64_t *load = (const int64_t *)(base + ((const char *)A->rb_load - (const char *)A->loss));
  if (losses) memcpy(losses, base, (size_t)n_losses * sizeof(float));
  const int64_t E = m->cfg.n_routed_experts;
  for (int32_t b = 0; b < m->n_blocks; ++b) {
    if (!m->blocks[b].is_moe) continue;
    for (int h = 0; h < 2; ++h) {
      o->aux_sum += aux[2 * b + h];
      for (int64_t e = 0; e < E; ++e) m->load[(int64_t)b * E + e] += load[(2 * (int64_t)b + h) * E + e];
    }
  }
  return DSC_OK;
}

/* The logits of tokens [B, T] by the training forward without keeping anything for a
 * backward (dsc_model_forward of a model with masters; arguments checked by the caller). */
dsc_status dsc_model_forward_logits(dsc_model *m, const DLTensor *tokens, DLTensor *logits) {
  fwd_opts o = {0, 0.0f, 0.0, 0};
  return dsc_model_run_forward(m, tokens, 0, &o, (float *)dsc_data(logits));
}

dsc_status dsc_model_forward_mtp(dsc_model *m, const DLTensor *tokens, int32_t depth, DLTensor *logits) {
  static const char *const FN = "dsc_model_forward_mtp";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "the training forward"));
  DSC_CHECK(depth >= 0 && depth < m->n_mtp, DSC_ERR_INVALID_ARGUMENT, FN,
            "depth: expected 0..%d (num_nextn_predict_layers - 1), got %d", (int)m->n_mtp - 1, (int)depth);
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  const int64_t B = tokens->shape[0], T = tokens->shape[1], Td = T - depth - 1;
  DSC_CHECK(Td >= 1, DSC_ERR_SHAPE, FN, "tokens: expected more than %d tokens per row for depth %d, got %lld",
            (int)depth + 1, (int)depth, (long long)T);
  DSC_TRY(dsc_check_tensor(m->ctx, FN, "logits", logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shp[3] = {B, Td, m->cfg.vocab_size};
  DSC_TRY(dsc_check_shape(FN, "logits", logits, 3, shp));
  fwd_opts o = {0, 0.0f, 0.0, 0};
  DSC_TRY(dsc_model_run_forward(m, tokens, depth + 1, &o, NULL));
  return dsc_memcpy(m->ctx, dsc_data(logits), m->ctx->device, m->acts->mtp_logits[depth], m->ctx->device,
                    (size_t)(B * Td * m->cfg.vocab_size) * sizeof(float));
}

dsc_status dsc_model_routing(dsc_model *m, const DLTensor *tokens, int32_t layer, DLTensor *indices,
                             DLTensor *weights, DLTensor *scores) {
  static const char *const FN = "dsc_model_routing";
  DSC_CHECK(m != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "model: expected a model, got NULL");
  DSC_TRY(dsc_model_check_not_frozen(m, FN, "the training forward"));
  DSC_CHECK(layer >= 0 && layer < m->n_layers && m->blocks[layer].is_moe, DSC_ERR_INVALID_ARGUMENT, FN,
            "layer: expected an MoE layer of the main model (0..%d), got %d", (int)m->n_layers - 1, (int)layer);
  DSC_TRY(dsc_model_check_ids(m, FN, "tokens", tokens, NULL, 0, 0));
  const size_t lb = (size_t)m->n_blocks * (size_t)m->cfg.n_routed_experts * sizeof(int64_t);
  int64_t *keep = (int64_t *)malloc(lb);
  if (!keep) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "out of host memory");
  memcpy(keep, m->load, lb);
  fwd_opts o = {1, 0.0f, 0.0, 0}; /* train: the MoE blocks keep their routing */
  dsc_status st = dsc_model_run_forward(m, tokens, 0, &o, NULL);
  memcpy(m->load, keep, lb);
  free(keep);
  m->have_grads = 0; /* the saved activations now belong to this forward */
  STEP(dsc_moe_layer_saved_routing(m->ctx, m->acts->blk[layer].moe, indices, weights, scores));
  return st;
}

/* ------------------------------------------------------------------ expert load, host sums */

/* (model_internal.h) The training statistics and generation's agreement between ranks. */
dsc_status dsc_model_host_all_reduce(dsc_model *m, dsc_comm *c, void *x, int64_t n, dsc_dtype dt, int op) {
  if (dsc_comm_size(c) == 1 || n == 0) return DSC_OK;
  dsc_context *ctx = m->ctx;
  const size_t bytes = (size_t)n * 8;
  if (!dsc_ctx_is_cuda(ctx)) return dsc_comm_all_reduce_raw(c, ctx, x, x, n, dt, op);
  void *dev = NULL;
  const DLDevice host = {kDLCPU, 0};
  dsc_status st = dsc_malloc(ctx, bytes, &dev);
  if (st == DSC_OK) st = dsc_memcpy(ctx, dev, ctx->device, x, host, bytes);
  if (st == DSC_OK) st = dsc_comm_all_reduce_raw(c, ctx, dev, dev, n, dt, op);
  if (st == DSC_OK) st = dsc_comm_synchronize(c, ctx);
  if (st == DSC_OK) st = dsc_memcpy(ctx, x, host, dev, ctx->device, bytes);
  if (dev) dsc_free(ctx, dev);
  return st;
}

