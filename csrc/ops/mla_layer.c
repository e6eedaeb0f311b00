/*
 * ops/mla_layer.c -- the MLA layer: the orchestration of the projections (gemm, RMSNorm,
 * RoPE backends) around the attention ops of mla.c, for training (forward/backward with a
 * saved-activation handle) and for inference against the paged cache of mla_cache.c.
 *
 * Legend: B batch, T tokens, N = B*T rows, Hd hidden, H heads, Rq q_lora_rank, R
 * kv_lora_rank, dn / dr / dv nope / rope / value head dims, dqk = dn + dr.
 *
 * Forward (float32, all buffers [N, ...] row-major):
 *   cq_raw = x Wqa^T [N,Rq]; cq = RMSNorm(cq_raw); q = cq Wqb^T [N,H,dqk]  (or q = x Wq^T)
 *   q_pe = RoPE(q[..., dn:]) [N,H,dr] (a packed copy: the rope backend wants contiguous rows)
 *   c_raw = x Wkva[:R]^T [N,R]; kpe = RoPE(x Wkva[R:]^T) [N,dr]; ckv = RMSNorm(c_raw)
 *   kv = ckv Wkvb^T [N,H,dn+dv]; o = attention (mla.c) [N,H,dv]; out = o Wo^T
 * Decode/prefill (absorbed): q_lat[:,h] = q_nope[:,h] W_UK[h] [N,H,R] (W_UK[h] = rows
 *   h*(dn+dv) .. +dn of kv_b_proj), attention over the cached [ckv | kpe] rows gives
 *   o_lat [N,H,R], o[:,h] = o_lat[:,h] W_UV[h]^T [N,H,dv], out = o Wo^T.
 * p->fp8: every "x W^T" above (not the absorbed W_UK / W_UV products) is an FP8 GEMM
 *   (fp8_layers.h); kv_a runs as one [N, R+dr] projection (its 128x128 blocks span c and
 *   kpe, as in the checkpoints) split afterwards. Prefill/decode absorb kv_b after an E4M3
 *   128x128 round trip (the weight as an FP8 checkpoint stores it), in float32 GEMMs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla_internal.h"


/* y [M,Nout] = alpha * a [M,K] @ w[Nout,K]^T + beta * y (row strides lda, ldw, ldy). */
static dsc_status lin(dsc_context *ctx, int64_t M, int64_t Nout, int64_t K, const float *a,
                      int64_t lda, const float *w, int64_t ldw, float beta, float *y, int64_t ldy) {
  return DSC_DISPATCH(gemm, ctx, DSC_DTYPE_FLOAT32, 0, 1, M, Nout, K, 1.0f, a, lda, w, ldw, beta, y, ldy, 1,
                      0, 0, 0);
}

/* A projection weight [Nout,K]: float32 w, or (q != NULL) held in E4M3 with its 128x128
 * block scales s. */
typedef struct {
  const float *w;
  const uint8_t *q;
  const float *s;
} wref;

static wref WR(const DLTensor *w, const DLTensor *scale_inv) {
  wref r = {NULL, NULL, NULL};
  if (scale_inv) {
    r.q = (const uint8_t *)dsc_data(w);
    r.s = (const float *)dsc_data(scale_inv);
  } else {
    r.w = F(w);
  }
  return r;
}

/* y [M,Nout] = x [M,K] @ w^T: float32, or FP8 with f8 (x 1x128, w 128x128: quantized here
 * unless held in FP8). */
static dsc_status proj(dsc_context *ctx, fp8_scratch *f8, int64_t M, int64_t Nout,
                       int64_t K, const float *x, wref w, float *y) {
  if (!f8) return lin(ctx, M, Nout, K, x, K, w.w, K, 0.0f, y, Nout);
  if (f8->xq_of != x) {
    DSC_TRY(dsc_fp8l_quant_act(ctx, DSC_DTYPE_FLOAT32, M, K, x, f8->xq, f8->xs));
    f8->xq_of = x;
  }
  if (!w.q) {
    DSC_TRY(dsc_fp8l_quant_weight(ctx, 1, Nout, K, w.w, 0, f8->wq, f8->ws));
    w.q = f8->wq;
    w.s = f8->ws;
  }
  return dsc_fp8l_fprop(ctx, 1, M, Nout, K, f8->xq, f8->xs, w.q, w.s, NULL, NULL,
                        DSC_DTYPE_FLOAT32, y);
}

/* Backward of y = x w^T: dw [Nout,K] = dy^T x (when dw != NULL) and dx [M,K] = dy w, written
 * (beta 0) or added (beta 1). FP8: wgrad along the tokens, dgrad with the transposed
 * weight blocks into f8->tmp2 first when adding. */
static dsc_status proj_bwd(dsc_context *ctx, const fp8_scratch *f8, int64_t M, int64_t Nout,
                           int64_t K, const float *dy, const float *x, const float *w,
                           float *dw, float beta, float *dx) {
  if (!f8) {
    if (dw)
      DSC_TRY(DSC_DISPATCH(gemm_f32out, ctx, DSC_DTYPE_FLOAT32, 1, 0, Nout, K, M, 1.0f, dy, Nout, x, K, 0.0f,
                           dw, K));
    return DSC_DISPATCH(gemm, ctx, DSC_DTYPE_FLOAT32, 0, 0, M, K, Nout, 1.0f, dy, Nout, w, K, beta, dx, K, 1,
                        0, 0, 0);
  }
  const dsc_dtype f32 = DSC_DTYPE_FLOAT32;
  if (dw) DSC_TRY(dsc_fp8l_wgrad(ctx, 1, M, Nout, K, f32, dy, f32, x, NULL, NULL, dw));
  DSC_TRY(dsc_fp8l_quant_weight(ctx, 1, Nout, K, w, 1, f8->wq, f8->ws));
  float *out = beta != 0.0f ? f8->tmp2 : dx;
  DSC_TRY(dsc_fp8l_dgrad(ctx, 1, M, Nout, K, f32, dy, DSC_DTYPE_FLOAT8_E4M3FN, f8->wq, f8->ws, 1,
                         NULL, NULL, out));
  return beta != 0.0f ? DSC_DISPATCH(add, ctx, f32, M * K, dx, out, dx) : DSC_OK;
}

/* ---- activations -------------------------------------------------------------- */

/* The float32 buffers of one forward; sizes in floats. */
enum { A_CQ_RAW, A_RSTD_Q, A_CQ, A_Q, A_Q_PE, A_C_RAW, A_RSTD_KV, A_CKV, A_KPE, A_KV, A_O, A_LSE, A_COUNT };

/* Sticky (*ok cleared on overflow): N = B*T comes from x, the widths from p. */
static void act_sizes(const dsc_mla_params *p, int64_t B, int64_t T, int64_t *sz, int *ok) {
  const int64_t N = dsc_cmul(B, T, ok), H = p->n_heads, Rq = p->q_lora_rank, R = p->kv_lora_rank;
  const int64_t dn = p->qk_nope_head_dim, dr = p->qk_rope_head_dim, dv = p->v_head_dim;
  sz[A_CQ_RAW] = dsc_cmul(N, Rq, ok);
  sz[A_RSTD_Q] = Rq > 0 ? N : 0;
  sz[A_CQ] = dsc_cmul(N, Rq, ok);
  sz[A_Q] = dsc_cmul3(N, H, dn + dr, ok);
  sz[A_Q_PE] = dsc_cmul3(N, H, dr, ok);
  sz[A_C_RAW] = dsc_cmul(N, R, ok);
  sz[A_RSTD_KV] = N;
  sz[A_CKV] = dsc_cmul(N, R, ok);
  sz[A_KPE] = dsc_cmul(N, dr, ok);
  sz[A_KV] = dsc_cmul3(N, H, dn + dv, ok);
  sz[A_O] = dsc_cmul3(N, H, dv, ok);
  sz[A_LSE] = dsc_cmul3(B, H, T, ok);
}

/* Carve n buffers of sz[i] floats (each 16-float aligned) out of one allocation: *mem when
 * it is not NULL and holds *bytes >= the total (reused as is), else a new one. ok = 0 (a
 * size overflowed upstream) or a total beyond 64 bits is DSC_ERR_OUT_OF_MEMORY. */
static dsc_status carve(dsc_context *ctx, int n, const int64_t *sz, int ok, void **mem,
                        size_t *bytes, float **ptr) {
  size_t total = 0;
  for (int i = 0; i < n; ++i)
    total = dsc_caddz(total, dsc_calign(dsc_cbytes(sz[i], sizeof(float), &ok), 64, &ok), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_mla",
            "the activations of this batch do not fit in 64 bits (x too large for these heads)");
  if (!*mem || *bytes < total) {
    *mem = NULL;
    *bytes = total;
    DSC_TRY(dsc_malloc(ctx, *bytes, mem));
  }
  float *b = (float *)*mem;
  for (int i = 0; i < n; ++i) {
    ptr[i] = b;
    b += (sz[i] + 15) / 16 * 16; /* fits: checked above */
  }
  return DSC_OK;
}

/* carve() out of the context's MLA slot (DSC_SLOT_MLA): per-call scratch that stays with
 * the context, so a training or decode step of one shape allocates nothing. */
static dsc_status carve_slot(dsc_context *ctx, int n, const int64_t *sz, int ok, float **ptr) {
  size_t total = 0;
  for (int i = 0; i < n; ++i)
    total = dsc_caddz(total, dsc_calign(dsc_cbytes(sz[i], sizeof(float), &ok), 64, &ok), &ok);
  DSC_CHECK(ok, DSC_ERR_OUT_OF_MEMORY, "dsc_mla",
            "the activations of this batch do not fit in 64 bits (x too large for these heads)");
  void *mem = NULL;
  DSC_TRY(dsc_ctx_slot(ctx, DSC_SLOT_MLA, total ? total : 1, &mem));
  return carve(ctx, n, sz, ok, &mem, &total, ptr); /* reuses mem: it holds total bytes */
}

struct dsc_mla_saved {
  dsc_context *ctx;
  void *mem;
  size_t bytes;
  int valid;
  int64_t B, T;
  dsc_mla_params p;
  float *a[A_COUNT];
};

dsc_status dsc_mla_saved_create(dsc_context *ctx, dsc_mla_saved **out) {
  static const char *const FN = "dsc_mla_saved_create";
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "ctx: expected a context, got NULL");
  DSC_CHECK(out != NULL, DSC_ERR_INVALID_ARGUMENT, FN, "out: expected a pointer, got NULL");
  *out = (dsc_mla_saved *)calloc(1, sizeof(dsc_mla_saved));
  if (!*out) return dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the handle");
  (*out)->ctx = ctx;
  return DSC_OK;
}

void dsc_mla_saved_destroy(dsc_mla_saved *s) {
  if (!s) return;
  dsc_free(s->ctx, s->mem);
  free(s);
}

dsc_status dsc_mla_saved_bytes(const dsc_mla_saved *s, size_t *bytes) {
  DSC_CHECK(s != NULL && bytes != NULL, DSC_ERR_INVALID_ARGUMENT, "dsc_mla_saved_bytes",
            "saved, bytes: expected non-NULL pointers");
  *bytes = s->mem ? s->bytes : 0;
  return DSC_OK;
}

/* RoPE tables of p on the host. */
static dsc_status rope_tab(const dsc_mla_params *p, float *inv_freq, float *cs) {
  DSC_TRY(dsc_rope_inv_freq(&p->rope, inv_freq, p->rope.dim / 2));
  return dsc_rope_cos_sin_scale(&p->rope, cs);
}

/* q [N,H,dqk] and q_pe [N,H,dr] (rotated) from x. cq_raw, rstd_q, cq only with Rq > 0. */
static dsc_status q_path(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                         fp8_scratch *f8, int64_t B, int64_t T, const float *x,
                         const int32_t *pos, float *cq_raw, float *rstd_q, float *cq, float *q,
                         float *q_pe) {
  const int64_t N = B * T, Hd = p->hidden, H = p->n_heads, Rq = p->q_lora_rank;
  const int64_t dn = p->qk_nope_head_dim, dr = p->qk_rope_head_dim, dqk = dn + dr;
  float inv[256], cs;
  DSC_TRY(rope_tab(p, inv, &cs));
  if (Rq > 0) {
    DSC_TRY(proj(ctx, f8, N, Rq, Hd, x, WR(w->q_a_proj, w->q_a_proj_scale_inv), cq_raw));
    DSC_TRY(DSC_DISPATCH(rms_norm_fwd, ctx, DSC_DTYPE_FLOAT32, N, Rq, cq_raw, dsc_data(w->q_a_layernorm),
                         p->rms_norm_eps, cq, rstd_q));
    DSC_TRY(proj(ctx, f8, N, H * dqk, Rq, cq, WR(w->q_b_proj, w->q_b_proj_scale_inv), q));
  } else {
    DSC_TRY(proj(ctx, f8, N, H * dqk, Hd, x, WR(w->q_proj, w->q_proj_scale_inv), q));
  }
  DSC_TRY(DSC_DISPATCH(mla_copy_cols, ctx, N * H, dr, q + dn, dqk, q_pe, dr));
  return DSC_DISPATCH(rope, ctx, DSC_DTYPE_FLOAT32, (int)p->rope.layout, B, T, H, dr, q_pe, pos, inv, cs, 0,
                      q_pe);
}

/* The latent path: c_raw [N,R], rstd_kv [N], ckv [N,R], kpe [N,dr] (rotated). */
static dsc_status kv_path(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                          fp8_scratch *f8, int64_t B, int64_t T, const float *x,
                          const int32_t *pos, float *c_raw, float *rstd_kv, float *ckv,
                          float *kpe) {
  const int64_t N = B * T, Hd = p->hidden, R = p->kv_lora_rank, dr = p->qk_rope_head_dim;
  float inv[256], cs;
  DSC_TRY(rope_tab(p, inv, &cs));
  const wref wa = WR(w->kv_a_proj_with_mqa, w->kv_a_proj_with_mqa_scale_inv); /* [R+dr, Hd] */
  /* one [N, R+dr] projection, then split (a separate [N, dr] product is a slow thin GEMM);
   * float32: into the workspace, free again before the norm and RoPE below use it */
  float *joint = f8 ? f8->tmp : NULL; /* [N, R+dr] */
  if (!joint) {
    void *ws = NULL;
    DSC_TRY(dsc_workspace(ctx, (size_t)(N * (R + dr)) * sizeof(float), &ws));
    joint = (float *)ws;
  }
  DSC_TRY(proj(ctx, f8, N, R + dr, Hd, x, wa, joint));
  DSC_TRY(DSC_DISPATCH(mla_copy_cols, ctx, N, R, joint, R + dr, c_raw, R));
  DSC_TRY(DSC_DISPATCH(mla_copy_cols, ctx, N, dr, joint + R, R + dr, kpe, dr));
  DSC_TRY(DSC_DISPATCH(rms_norm_fwd, ctx, DSC_DTYPE_FLOAT32, N, R, c_raw, dsc_data(w->kv_a_layernorm),
                       p->rms_norm_eps, ckv, rstd_kv));
  return DSC_DISPATCH(rope, ctx, DSC_DTYPE_FLOAT32, (int)p->rope.layout, B, T, 1, dr, kpe, pos, inv, cs, 0,
                      kpe);
}

dsc_status dsc_mla_forward(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                           const DLTensor *x, const DLTensor *positions, DLTensor *out,
                           dsc_mla_saved *saved) {
  static const char *const FN = "dsc_mla_forward";
  DSC_TRY(mla_check_ctx(FN, ctx));
  DSC_TRY(mla_check_params(FN, p));
  DSC_TRY(mla_check_weights(ctx, FN, p, w, 0));
  DSC_TRY(mla_check_x(ctx, FN, p, "x", x, positions));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "out", out, "x", x));
  DSC_TRY(mla_check_positions(ctx, FN, positions));
  if (saved) DSC_CHECK(saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN, "saved: expected a handle created on this context");
  {
    dsc_named_tensor ins[16] = {{"x", x}, {"positions", positions}}, outs[1] = {{"out", out}};
    DSC_TRY(dsc_check_outputs_disjoint(FN, 1, outs, mla_weight_list(w, ins, 2), ins));
  }

  const int64_t B = x->shape[0], T = x->shape[1], N = B * T;
  const int64_t H = p->n_heads, Hd = p->hidden, dn = p->qk_nope_head_dim;
  const int64_t dr = p->qk_rope_head_dim, dv = p->v_head_dim, R = p->kv_lora_rank;
  int64_t sz[A_COUNT];
  int ok = 1;
  act_sizes(p, B, T, sz, &ok);
  void *mem = NULL;
  size_t bytes = 0;
  float *a[A_COUNT];
  if (saved) { /* its memory is reused while large enough (a training step of one shape) */
    saved->valid = 0;
    mem = saved->mem;
    bytes = saved->bytes;
    saved->mem = NULL;
  }
  {
    void *old = mem;
    const dsc_status cs = carve(ctx, A_COUNT, sz, ok, &mem, &bytes, a);
    if (old && mem != old) dsc_free(ctx, old);
    if (cs != DSC_OK) return cs;
  }
  const float *xp = F(x);
  const int32_t *pos = (const int32_t *)dsc_data(positions);
  dsc_status s = DSC_OK;
  fp8_scratch f8s = {0}, *f8 = NULL;
  if (N > 0 && p->fp8) {
    s = mla_fp8_scratch_alloc(ctx, p, N, &f8s);
    f8 = &f8s;
  }
  if (N > 0 && s == DSC_OK) {
    /* kv_a, then q_a (or q): both read x, quantized once in FP8 */
    s = kv_path(ctx, p, w, f8, B, T, xp, pos, a[A_C_RAW], a[A_RSTD_KV], a[A_CKV], a[A_KPE]);
    if (s == DSC_OK)
      s = q_path(ctx, p, w, f8, B, T, xp, pos, a[A_CQ_RAW], a[A_RSTD_Q], a[A_CQ], a[A_Q], a[A_Q_PE]);
    if (s == DSC_OK) s = proj(ctx, f8, N, H * (dn + dv), R, a[A_CKV], WR(w->kv_b_proj, NULL), a[A_KV]);
    if (s == DSC_OK)
      s = mla_attn_fwd(ctx, B, T, H, dn, dr, dv, p->softmax_scale, a[A_Q], a[A_Q_PE], a[A_KV],
             a[A_KPE], a[A_O], a[A_LSE]);
    if (s == DSC_OK) s = proj(ctx, f8, N, Hd, H * dv, a[A_O], WR(w->o_proj, NULL), FO(out));
  }
  if (s != DSC_OK || !saved) {
    dsc_free(ctx, mem);
    return s;
  }
  saved->mem = mem;
  saved->bytes = bytes;
  saved->B = B;
  saved->T = T;
  saved->p = *p;
  memcpy(saved->a, a, sizeof a);
  saved->valid = 1;
  return DSC_OK;
}

/* Backward scratch buffers. */
enum { G_DO, G_DQ, G_DQ_PE, G_DKV, G_DKPE, G_DCKV, G_DC_RAW, G_DCQ, G_DCQ_RAW, G_DGAMMA, G_DX, G_DKVA,
       G_COUNT };

dsc_status dsc_mla_backward(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                            const dsc_mla_saved *saved, const DLTensor *x,
                            const DLTensor *positions, const DLTensor *dout, DLTensor *dx,
                            const dsc_mla_grads *g) {
  static const char *const FN = "dsc_mla_backward";
  DSC_TRY(mla_check_ctx(FN, ctx));
  DSC_TRY(mla_check_params(FN, p));
  DSC_TRY(mla_check_weights(ctx, FN, p, w, 0));
  DSC_TRY(mla_check_x(ctx, FN, p, "x", x, positions));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dout", dout, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "dout", dout, "x", x));
  if (dx) {
    DSC_TRY(dsc_check_tensor(ctx, FN, "dx", dx, DSC_DT(DSC_DTYPE_FLOAT32)));
    DSC_TRY(dsc_check_same_shape(FN, "dx", dx, "x", x));
  }
  DSC_CHECK(saved != NULL && saved->valid, DSC_ERR_INVALID_ARGUMENT, FN,
            "saved: expected a handle filled by dsc_mla_forward, got %s",
            saved ? "an empty one" : "NULL");
  DSC_CHECK(saved->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN, "saved: expected a handle created on this context");
  DSC_CHECK(saved->B == x->shape[0] && saved->T == x->shape[1], DSC_ERR_SHAPE, FN,
            "x: expected the forward's batch and tokens (%lld, %lld), got (%lld, %lld)",
            (long long)saved->B, (long long)saved->T, (long long)x->shape[0], (long long)x->shape[1]);
  DSC_CHECK(memcmp(&saved->p, p, sizeof *p) == 0, DSC_ERR_INVALID_ARGUMENT, FN,
            "p: expected the parameters of the forward that filled `saved`");
  DSC_CHECK(g != NULL && g->size >= sizeof(dsc_mla_grads), DSC_ERR_INVALID_ARGUMENT, FN,
            "grads: expected a dsc_mla_grads with size = %zu", sizeof(dsc_mla_grads));
  {
    const int64_t Hd = p->hidden, H = p->n_heads, Rq = p->q_lora_rank, R = p->kv_lora_rank;
    const int64_t dqk = p->qk_nope_head_dim + p->qk_rope_head_dim, dr = p->qk_rope_head_dim;
    const int64_t dkvw = p->qk_nope_head_dim + p->v_head_dim;
    const int ql = Rq > 0;
    struct { const char *n; DLTensor *t; int use; int nd; int64_t d0, d1; } gs[] = {
        {"grads.q_a_proj", g->q_a_proj, ql, 2, Rq, Hd},
        {"grads.q_a_layernorm", g->q_a_layernorm, ql, 1, Rq, 0},
        {"grads.q_b_proj", g->q_b_proj, ql, 2, H * dqk, Rq},
        {"grads.q_proj", g->q_proj, !ql, 2, H * dqk, Hd},
        {"grads.kv_a_proj_with_mqa", g->kv_a_proj_with_mqa, 1, 2, R + dr, Hd},
        {"grads.kv_a_layernorm", g->kv_a_layernorm, 1, 1, R, 0},
        {"grads.kv_b_proj", g->kv_b_proj, 1, 2, H * dkvw, R},
        {"grads.o_proj", g->o_proj, 1, 2, Hd, H * p->v_head_dim},
    };
    for (size_t i = 0; i < sizeof gs / sizeof gs[0]; ++i) {
      if (!gs[i].t) continue;
      DSC_TRY(mla_check_w(ctx, FN, gs[i].n, gs[i].t, gs[i].use, gs[i].nd, gs[i].d0, gs[i].d1));
    }
    /* gradients are written while x, dout and the weights are still read */
    dsc_named_tensor ins[17] = {{"x", x}, {"positions", positions}, {"dout", dout}}, outs[9];
    outs[0] = (dsc_named_tensor){"dx", dx};
    for (int i = 0; i < 8; ++i) outs[i + 1] = (dsc_named_tensor){gs[i].n, gs[i].t};
    DSC_TRY(dsc_check_outputs_disjoint(FN, 9, outs, mla_weight_list(w, ins, 3), ins));
  }

  const int64_t B = saved->B, T = saved->T, N = B * T;
  const int64_t H = p->n_heads, Hd = p->hidden, Rq = p->q_lora_rank, R = p->kv_lora_rank;
  const int64_t dn = p->qk_nope_head_dim, dr = p->qk_rope_head_dim, dv = p->v_head_dim;
  const int64_t dqk = dn + dr, dkvw = dn + dv;
  const float eps = p->rms_norm_eps;
  float *const *a = saved->a;
  int ok = 1;
  int64_t sz[G_COUNT] = {
      [G_DO] = dsc_cmul3(N, H, dv, &ok),      [G_DQ] = dsc_cmul3(N, H, dqk, &ok),
      [G_DQ_PE] = dsc_cmul3(N, H, dr, &ok),   [G_DKV] = dsc_cmul3(N, H, dkvw, &ok),
      [G_DKPE] = dsc_cmul(N, dr, &ok),        [G_DCKV] = dsc_cmul(N, R, &ok),
      [G_DC_RAW] = dsc_cmul(N, R, &ok),       [G_DCQ] = dsc_cmul(N, Rq, &ok),
      [G_DCQ_RAW] = dsc_cmul(N, Rq, &ok),     [G_DGAMMA] = (R > Rq ? R : Rq),
      [G_DX] = dx ? 0 : dsc_cmul(N, Hd, &ok), [G_DKVA] = p->fp8 ? 0 : dsc_cmul(N, R + dr, &ok)};
  float *b[G_COUNT];
  DSC_TRY(carve_slot(ctx, G_COUNT, sz, ok, b));
  float *dxp = dx ? FO(dx) : b[G_DX];
  const float *xp = F(x), *dy = F(dout);
  const int32_t *pos = (const int32_t *)dsc_data(positions);
  float inv[256], cs;
  dsc_status s = rope_tab(p, inv, &cs);
  fp8_scratch f8s = {0}, *f8 = NULL;
  if (s == DSC_OK && N > 0 && p->fp8) {
    s = mla_fp8_scratch_alloc(ctx, p, N, &f8s);
    f8 = &f8s;
  }
#define STEP(call) \
  if (s == DSC_OK) s = (call)
  /* out = o Wo^T: dO = dout @ Wo [N,H*dv], dWo = dout^T o */
  STEP(proj_bwd(ctx, f8, N, Hd, H * dv, dy, a[A_O], F(w->o_proj), FO(g->o_proj), 0.0f, b[G_DO]));
  STEP(mla_attn_bwd(ctx, B, T, H, dn, dr, dv, p->softmax_scale, a[A_Q], a[A_Q_PE], a[A_KV],
          a[A_KPE], a[A_O], a[A_LSE], b[G_DO], b[G_DQ], b[G_DQ_PE], b[G_DKV], b[G_DKPE]));
  /* RoPE backward, then dq_pe back into dq[..., dn:] */
  STEP(DSC_DISPATCH(rope, ctx, DSC_DTYPE_FLOAT32, (int)p->rope.layout, B, T, H, dr, b[G_DQ_PE], pos, inv, cs,
                    1, b[G_DQ_PE]));
  STEP(DSC_DISPATCH(mla_copy_cols, ctx, N * H, dr, b[G_DQ_PE], dr, b[G_DQ] + dn, dqk));
  STEP(DSC_DISPATCH(rope, ctx, DSC_DTYPE_FLOAT32, (int)p->rope.layout, B, T, 1, dr, b[G_DKPE], pos, inv, cs,
                    1, b[G_DKPE]));
  /* kv = ckv Wkvb^T */
  STEP(proj_bwd(ctx, f8, N, H * dkvw, R, b[G_DKV], a[A_CKV], F(w->kv_b_proj), FO(g->kv_b_proj),
                0.0f, b[G_DCKV]));
  STEP(DSC_DISPATCH(rms_norm_bwd, ctx, DSC_DTYPE_FLOAT32, N, R, b[G_DCKV], a[A_C_RAW],
                    dsc_data(w->kv_a_layernorm), a[A_RSTD_KV], eps, b[G_DC_RAW],
                    g->kv_a_layernorm ? FO(g->kv_a_layernorm) : b[G_DGAMMA]));
  /* [c_raw | kpe_raw] = x Wkva^T: the joint [N, R+dr] gradient, as the forward's one
   * projection (one weight-gradient and one dx product instead of a thin pair each) */
  const float *wa = F(w->kv_a_proj_with_mqa);
  float *djoint = f8 ? f8->tmp : b[G_DKVA]; /* [N, R+dr] */
  STEP(DSC_DISPATCH(mla_copy_cols, ctx, N, R, b[G_DC_RAW], R, djoint, R + dr));
  STEP(DSC_DISPATCH(mla_copy_cols, ctx, N, dr, b[G_DKPE], dr, djoint + R, R + dr));
  STEP(proj_bwd(ctx, f8, N, R + dr, Hd, djoint, xp, wa, FO(g->kv_a_proj_with_mqa), 0.0f, dxp));
  /* query path */
  if (Rq > 0) {
    STEP(proj_bwd(ctx, f8, N, H * dqk, Rq, b[G_DQ], a[A_CQ], F(w->q_b_proj), FO(g->q_b_proj), 0.0f,
                  b[G_DCQ]));
    STEP(DSC_DISPATCH(rms_norm_bwd, ctx, DSC_DTYPE_FLOAT32, N, Rq, b[G_DCQ], a[A_CQ_RAW],
                      dsc_data(w->q_a_layernorm), a[A_RSTD_Q], eps, b[G_DCQ_RAW],
                      g->q_a_layernorm ? FO(g->q_a_layernorm) : b[G_DGAMMA]));
    STEP(proj_bwd(ctx, f8, N, Rq, Hd, b[G_DCQ_RAW], xp, F(w->q_a_proj), FO(g->q_a_proj), 1.0f,
                  dxp));
  } else {
    STEP(proj_bwd(ctx, f8, N, H * dqk, Hd, b[G_DQ], xp, F(w->q_proj), FO(g->q_proj), 1.0f, dxp));
  }
#undef STEP
  return s;
}

/* ---- prefill / decode: scratch and compute (shared by mla_infer, which plans the batch on
 * the host, and dsc_mla_decode_planned, whose plan is already on the device) */
enum { I_CQ_RAW, I_RSTD_Q, I_CQ, I_Q, I_Q_PE, I_QLAT, I_C_RAW, I_RSTD, I_CKV, I_KPE, I_OLAT, I_O, I_COUNT };

static dsc_status infer_scratch(dsc_context *ctx, const dsc_mla_params *p, int64_t N, float **a,
                                fp8_scratch *f8s, fp8_scratch **f8) {
  const int64_t H = p->n_heads, Rq = p->q_lora_rank, R = p->kv_lora_rank;
  const int64_t dr = p->qk_rope_head_dim, dqk = p->qk_nope_head_dim + dr, dv = p->v_head_dim;
  int ok = 1;
  int64_t sz[I_COUNT] = {
      [I_CQ_RAW] = dsc_cmul(N, Rq, &ok),    [I_RSTD_Q] = N,
      [I_CQ] = dsc_cmul(N, Rq, &ok),        [I_Q] = dsc_cmul3(N, H, dqk, &ok),
      [I_Q_PE] = dsc_cmul3(N, H, dr, &ok),  [I_QLAT] = dsc_cmul3(N, H, R, &ok),
      [I_C_RAW] = dsc_cmul(N, R, &ok),      [I_RSTD] = N,
      [I_CKV] = dsc_cmul(N, R, &ok),        [I_KPE] = dsc_cmul(N, dr, &ok),
      [I_OLAT] = dsc_cmul3(N, H, R, &ok),   [I_O] = dsc_cmul3(N, H, dv, &ok)};
  *f8 = NULL;
  DSC_TRY(carve_slot(ctx, I_COUNT, sz, ok, a));
  if (N > 0 && p->fp8) {
    DSC_TRY(mla_fp8_scratch_alloc(ctx, p, N, f8s));
    *f8 = f8s;
  }
  return DSC_OK;
}

/* The projections, the cache write and the attention of x [B,T,Hd] with the batch's plan on
 * the device: dmeta [3N] (pool row, kv_len, table offset per row), the block tables, and
 * max_kv >= every kv_len (the CUDA attention's split size). */
static dsc_status infer_compute(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                                dsc_mla_cache *c, int32_t layer, int64_t B, int64_t T, const DLTensor *x,
                                const DLTensor *positions, float **a, fp8_scratch *f8,
                                const int64_t *dmeta, const int32_t *dtables, int64_t max_kv, DLTensor *out) {
  const int64_t H = p->n_heads, Hd = p->hidden, R = p->kv_lora_rank, N = B * T;
  const int64_t dn = p->qk_nope_head_dim, dr = p->qk_rope_head_dim, dv = p->v_head_dim;
  const int64_t dqk = dn + dr, bs = c->o.block_size;
  dsc_status s = DSC_OK;
  const float *xp = F(x);
  const int32_t *pos = (const int32_t *)dsc_data(positions);
  void *pool = mla_layer_pool(c, layer);
  const float *wkvb = F(w->kv_b_proj); /* [H, dn+dv, R] */
#define STEP(call) \
  if (s == DSC_OK) s = (call)
  if (f8) { /* absorb kv_b as stored in FP8 (128x128 E4M3 blocks), like the checkpoints */
    const int64_t nk = H * (dn + dv);
    const wref kb = WR(w->kv_b_proj, w->kv_b_proj_scale_inv);
    if (kb.q) {
      STEP(dsc_fp8l_dequant_weight(ctx, nk, R, kb.q, kb.s, f8->wkvb));
    } else {
      STEP(dsc_fp8l_quant_weight(ctx, 1, nk, R, wkvb, 0, f8->wq, f8->ws));
      STEP(dsc_fp8l_dequant_weight(ctx, nk, R, f8->wq, f8->ws, f8->wkvb));
    }
    wkvb = f8->wkvb;
  }
  if (N > 0) {
    /* kv_a, then q_a (or q): both read x, quantized once in FP8 */
    STEP(kv_path(ctx, p, w, f8, B, T, xp, pos, a[I_C_RAW], a[I_RSTD], a[I_CKV], a[I_KPE]));
    STEP(q_path(ctx, p, w, f8, B, T, xp, pos, a[I_CQ_RAW], a[I_RSTD_Q], a[I_CQ], a[I_Q],
                a[I_Q_PE]));
    /* q_lat[:, h] = q_nope[:, h] @ W_UK[h]   ([N,dn] @ [dn,R], batched over heads) */
    STEP(DSC_DISPATCH(gemm, ctx, DSC_DTYPE_FLOAT32, 0, 0, N, R, dn, 1.0f, a[I_Q], H * dqk, wkvb, R, 0.0f,
                      a[I_QLAT], H * R, H, dqk, (dn + dv) * R, R));
    STEP(DSC_DISPATCH(mla_cache_write, ctx, c->dt, R, dr, c->row_bytes, N, dmeta, a[I_CKV], a[I_KPE], pool));
    STEP(DSC_DISPATCH(mla_decode_attn, ctx, c->dt, R, dr, c->row_bytes, bs, pool, N, H, max_kv,
                      p->softmax_scale, a[I_QLAT], a[I_Q_PE], dmeta + N, dmeta + 2 * N, dtables, a[I_OLAT]));
    /* o[:, h] = o_lat[:, h] @ W_UV[h]^T   ([N,R] @ [R,dv]) */
    STEP(DSC_DISPATCH(gemm, ctx, DSC_DTYPE_FLOAT32, 0, 1, N, dv, R, 1.0f, a[I_OLAT], H * R, wkvb + dn * R, R,
                      0.0f, a[I_O], H * dv, H, R, (dn + dv) * R, dv));
    STEP(proj(ctx, f8, N, Hd, H * dv, a[I_O], WR(w->o_proj, w->o_proj_scale_inv), FO(out)));
  }
#undef STEP
  return s;
}

/* Prefill and decode: one implementation (see the header). */
static dsc_status mla_infer(const char *FN, dsc_context *ctx, const dsc_mla_params *p,
                            const dsc_mla_weights *w, dsc_mla_cache *c, int32_t layer,
                            const DLTensor *x, const DLTensor *seq_ids, const DLTensor *positions,
                            DLTensor *out) {
  DSC_TRY(mla_check_ctx(FN, ctx));
  DSC_TRY(mla_check_params(FN, p));
  DSC_TRY(mla_check_weights(ctx, FN, p, w, 1));
  CACHE_ARG(FN);
  DSC_CHECK(c->ctx == ctx, DSC_ERR_INVALID_ARGUMENT, FN, "cache: expected a cache of this context");
  DSC_CHECK(layer >= 0 && layer < c->o.n_layers, DSC_ERR_INVALID_ARGUMENT, FN,
            "layer: expected a value in [0, %d), got %d", (int)c->o.n_layers, (int)layer);
  DSC_CHECK(c->o.kv_lora_rank == p->kv_lora_rank && c->o.rope_dim == p->qk_rope_head_dim,
            DSC_ERR_SHAPE, FN,
            "cache: expected kv_lora_rank %d and rope dim %d like p, got %d and %d",
            (int)p->kv_lora_rank, (int)p->qk_rope_head_dim, (int)c->o.kv_lora_rank,
            (int)c->o.rope_dim);
  DSC_TRY(mla_check_x(ctx, FN, p, "x", x, positions));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_same_shape(FN, "out", out, "x", x));
  DSC_TRY(dsc_check_tensor(ctx, FN, "seq_ids", seq_ids, DSC_DT_INDEX));
  const int64_t B = x->shape[0], T = x->shape[1], N = B * T;
  DSC_TRY(dsc_check_shape(FN, "seq_ids", seq_ids, 1, &B));
  DSC_CHECK(B <= c->o.max_batch, DSC_ERR_SHAPE, FN,
            "x: expected a batch <= max_batch = %d, got %lld", (int)c->o.max_batch, (long long)B);
  {
    dsc_named_tensor ins[17] = {{"x", x}, {"seq_ids", seq_ids}, {"positions", positions}},
                     outs[1] = {{"out", out}};
    DSC_TRY(dsc_check_outputs_disjoint(FN, 1, outs, mla_weight_list(w, ins, 3), ins));
  }

  const int64_t bs = c->o.block_size;

  /* ---- host copies of the ids and positions; validate everything before mutating. */
  void *ids_h, *ids_own = NULL, *pos_h, *pos_own = NULL;
  DSC_TRY(mla_host_ints(ctx, seq_ids, &ids_h, &ids_own));
  dsc_status s = mla_host_ints(ctx, positions, &pos_h, &pos_own);
  const int ids64 = dsc_tensor_dtype(seq_ids) == DSC_DTYPE_INT64;
  const int32_t *ph = (const int32_t *)pos_h;
  int64_t *meta = NULL; /* slot [B], start [B], n [B], then slots [N], kv_len [N], toff [N] */
  if (s == DSC_OK) {
    meta = (int64_t *)malloc((size_t)(3 * B + 3 * N + 1) * sizeof(int64_t));
    if (!meta) s = dsc_error(DSC_ERR_OUT_OF_MEMORY, FN, "could not allocate the batch metadata");
  }
  int64_t *bslot = meta, *bstart = meta + B, *bn = meta + 2 * B;
  int64_t *slots = meta + 3 * B, *kvlen = slots + N, *toff = kvlen + N;
  int64_t need = 0;
  for (int64_t b = 0; s == DSC_OK && b < B; ++b) {
    const int64_t id = ids64 ? ((const int64_t *)ids_h)[b] : ((const int32_t *)ids_h)[b];
    bslot[b] = id >= 0 ? mla_find_seq(c, id) : -1;
    if (bslot[b] < 0) {
      s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                    "seq_ids: expected sequences added to the cache, got %lld (unknown) at index %lld",
                    (long long)id, (long long)b);
      break;
    }
    for (int64_t b2 = 0; b2 < b; ++b2)
      if (bslot[b2] == bslot[b]) {
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                      "seq_ids: expected distinct ids, got %lld at indices %lld and %lld",
                      (long long)id, (long long)b2, (long long)b);
        break;
      }
    if (s != DSC_OK) break;
    const int32_t *pr = ph + b * T;
    int64_t n = 0;
    while (n < T && pr[n] >= 0) ++n;
    for (int64_t t = n; t < T && s == DSC_OK; ++t)
      if (pr[t] != -1)
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                      "positions: expected -1 padding after the tokens of row %lld, got %d at "
                      "(%lld, %lld)", (long long)b, (int)pr[t], (long long)b, (long long)t);
    if (s != DSC_OK) break;
    const int64_t len = c->len[bslot[b]], start = n ? pr[0] : len;
    for (int64_t t = 1; t < n && s == DSC_OK; ++t)
      if (pr[t] != start + t)
        s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                      "positions: expected consecutive positions in row %lld, got %d after %d",
                      (long long)b, (int)pr[t], (int)pr[t - 1]);
    if (s != DSC_OK) break;
    if (start > len) {
      s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                    "positions: row %lld starts at %lld, expected <= the sequence's length %lld "
                    "(sequence %lld)", (long long)b, (long long)start, (long long)len, (long long)id);
      break;
    }
    if (start + n > c->o.max_tokens) {
      s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                    "positions: sequence %lld would reach %lld tokens; the cache is full at "
                    "max_tokens = %d per sequence", (long long)id, (long long)(start + n),
                    (int)c->o.max_tokens);
      break;
    }
    bstart[b] = start;
    bn[b] = n;
    if (n > 0) {
      const int64_t nb = (start + n + bs - 1) / bs;
      if (nb > c->nblk[bslot[b]]) need += nb - c->nblk[bslot[b]];
    }
  }
  if (s == DSC_OK && need > c->n_free)
    s = dsc_error(DSC_ERR_INVALID_ARGUMENT, FN,
                  "cache full: the batch needs %lld new blocks of %lld tokens, %d are free",
                  (long long)need, (long long)bs, (int)c->n_free);

  /* ---- scratch, allocated before the cache changes. */
  float *a[I_COUNT];
  fp8_scratch f8s = {0}, *f8 = NULL;
  if (s == DSC_OK) s = infer_scratch(ctx, p, N, a, &f8s, &f8);
  if (s != DSC_OK) {
    free(meta);
    free(ids_own);
    free(pos_own);
    return s;
  }

  /* ---- commit the metadata: lengths, blocks (cannot fail from here on). */
  for (int64_t b = 0; b < B; ++b) {
    if (bn[b] == 0) continue;
    const int64_t sl = bslot[b], newlen = bstart[b] + bn[b];
    const int32_t nb = (int32_t)((newlen + bs - 1) / bs);
    mla_release_blocks(c, sl, nb);
    mla_grow_blocks(c, sl, nb);
    c->len[sl] = newlen;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      const int valid = t < bn[b];
      slots[r] = valid ? mla_slot_of(c, bslot[b], bstart[b] + t) : -1;
      kvlen[r] = valid ? bstart[b] + t + 1 : 0;
      toff[r] = bslot[b] * c->max_blk;
    }

  /* ---- the per-row metadata and the block tables on the device: one upload each (the
   * tables only after they changed); the backends read no host arrays */
  int64_t max_kv = 0;
  for (int64_t r = 0; r < N; ++r) max_kv = kvlen[r] > max_kv ? kvlen[r] : max_kv;
  const int64_t *dmeta = NULL; /* slots [N], kv_len [N], table_off [N] */
  const int32_t *dtables = NULL;
  void *dmeta_own = NULL;
  s = mla_stage_ints(ctx, 3 * N, slots, &dmeta, &dmeta_own);
  if (s == DSC_OK) s = mla_cache_device_tables(c, &dtables);

  if (s == DSC_OK) s = infer_compute(ctx, p, w, c, layer, B, T, x, positions, a, f8, dmeta, dtables, max_kv, out);
  dsc_free(ctx, dmeta_own);
  free(meta);
  free(ids_own);
  free(pos_own);
  return s;
}

dsc_status dsc_mla_prefill(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                           dsc_mla_cache *cache, int32_t layer, const DLTensor *x,
                           const DLTensor *seq_ids, const DLTensor *positions, DLTensor *out) {
  return mla_infer("dsc_mla_prefill", ctx, p, w, cache, layer, x, seq_ids, positions, out);
}

dsc_status dsc_mla_decode(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                          dsc_mla_cache *cache, int32_t layer, const DLTensor *x,
                          const DLTensor *seq_ids, const DLTensor *positions, DLTensor *out) {
  return mla_infer("dsc_mla_decode", ctx, p, w, cache, layer, x, seq_ids, positions, out);
}

dsc_status dsc_mla_decode_planned(dsc_context *ctx, const dsc_mla_params *p, const dsc_mla_weights *w,
                                  dsc_mla_cache *c, int32_t layer, const DLTensor *x,
                                  const DLTensor *positions, const int64_t *dmeta, int64_t max_kv,
                                  DLTensor *out) {
  const int64_t B = x->shape[0], T = x->shape[1];
  const int32_t *dtables = NULL;
  DSC_TRY(mla_cache_device_tables(c, &dtables));
  float *a[I_COUNT];
  fp8_scratch f8s = {0}, *f8 = NULL;
  DSC_TRY(infer_scratch(ctx, p, B * T, a, &f8s, &f8));
  return infer_compute(ctx, p, w, c, layer, B, T, x, positions, a, f8, dmeta, dtables, max_kv, out);
}
