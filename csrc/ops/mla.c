/*
 * ops/mla.c -- Multi-head Latent Attention: validation of the MLA arguments and the
 * attention ops (dispatch of the attention cores to csrc/cpu/mla.c or kernels/mla*.cu).
 * The paged latent cache is in mla_cache.c, the projections around the attention (the
 * layer's forward/backward, prefill/decode) in mla_layer.c; mla_internal.h joins them.
 *
 * Legend: B batch, T tokens, N = B*T rows, Hd hidden, H heads, Rq q_lora_rank, R
 * kv_lora_rank, dn / dr / dv nope / rope / value head dims, dqk = dn + dr.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla_internal.h"

static const DLDevice HOST = {kDLCPU, 0};

dsc_status mla_check_ctx(const char *fn, dsc_context *ctx) {
  DSC_CHECK(ctx != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "ctx: expected a context, got NULL");
  if (dsc_ctx_is_cuda(ctx) && !MLA_CUDA_OK)
    return dsc_error(DSC_ERR_UNSUPPORTED, fn, "MLA has no CUDA kernels yet in this build");
  return DSC_OK;
}

dsc_status mla_check_params(const char *fn, const dsc_mla_params *p) {
  DSC_CHECK(p != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "p: expected MLA parameters, got NULL");
  DSC_CHECK(p->size >= sizeof(dsc_mla_params), DSC_ERR_INVALID_ARGUMENT, fn,
            "p->size: expected sizeof(dsc_mla_params) = %zu, got %zu", sizeof(dsc_mla_params),
            p->size);
#define POS(f, lo)                                                                      \
  DSC_CHECK(p->f >= (lo) && p->f <= (1 << 20), DSC_ERR_INVALID_ARGUMENT, fn,            \
            "p->" #f ": expected a value in [%d, 2^20], got %d", (int)(lo), (int)p->f)
  POS(hidden, 1);
  POS(n_heads, 1);
  POS(q_lora_rank, 0);
  POS(kv_lora_rank, 1);
  POS(qk_nope_head_dim, 1);
  POS(qk_rope_head_dim, 2);
  POS(v_head_dim, 1);
#undef POS
  DSC_CHECK(p->rope.dim == p->qk_rope_head_dim, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->rope.dim: expected qk_rope_head_dim = %d, got %d", (int)p->qk_rope_head_dim,
            (int)p->rope.dim);
  DSC_CHECK(isfinite(p->rms_norm_eps) && p->rms_norm_eps >= 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->rms_norm_eps: expected a finite number >= 0, got %g", (double)p->rms_norm_eps);
  DSC_CHECK(isfinite(p->softmax_scale) && p->softmax_scale > 0.0f, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->softmax_scale: expected a finite number > 0, got %g", (double)p->softmax_scale);
  DSC_CHECK(p->fp8 == 0 || p->fp8 == 1, DSC_ERR_INVALID_ARGUMENT, fn,
            "p->fp8: expected 0 or 1, got %d", (int)p->fp8);
  float inv[256];
  dsc_status s = dsc_rope_inv_freq(&p->rope, inv, p->rope.dim / 2);
  if (s != DSC_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", dsc_last_error());
    return dsc_error(s, fn, "p->rope: %s", msg);
  }
  return DSC_OK;
}

/* One weight: present (float32, contiguous, shape) or absent, as the config says. */
dsc_status mla_check_w(dsc_context *ctx, const char *fn, const char *name, const DLTensor *t,
                          int needed, int ndim, int64_t d0, int64_t d1) {
  if (!needed) {
    DSC_CHECK(t == NULL, DSC_ERR_INVALID_ARGUMENT, fn, "%s: expected NULL (unused with this q_lora_rank), got a tensor", name);
    return DSC_OK;
  }
  DSC_CHECK(t != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "%s: expected a tensor, got NULL", name);
  DSC_TRY(dsc_check_tensor(ctx, fn, name, t, DSC_DT(DSC_DTYPE_FLOAT32)));
  const int64_t shape[2] = {d0, d1};
  return dsc_check_shape(fn, name, t, ndim, shape);
}

/* An FP8-held weight: t float8_e4m3fn [d0,d1] (already checked present) with scale
 * float32 [ceil(d0/128), ceil(d1/128)]. */
static dsc_status check_wq(dsc_context *ctx, const char *fn, const char *name, const char *sname,
                           const DLTensor *t, const DLTensor *scale, int64_t d0, int64_t d1) {
  DSC_CHECK(t != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "%s: expected NULL (its weight is unused with this q_lora_rank), got a tensor", sname);
  DSC_TRY(dsc_check_tensor(ctx, fn, name, t, DSC_DT(DSC_DTYPE_FLOAT8_E4M3FN)));
  const int64_t shape[2] = {d0, d1}, ss[2] = {(d0 + 127) / 128, (d1 + 127) / 128};
  DSC_TRY(dsc_check_shape(fn, name, t, 2, shape));
  DSC_TRY(dsc_check_tensor(ctx, fn, sname, scale, DSC_DT(DSC_DTYPE_FLOAT32)));
  return dsc_check_shape(fn, sname, scale, 2, ss);
}

/* Any projection held in FP8 (a *_scale_inv given). */
static int has_fp8_weights(const dsc_mla_weights *w) {
  return w->q_a_proj_scale_inv || w->q_b_proj_scale_inv || w->q_proj_scale_inv ||
         w->kv_a_proj_with_mqa_scale_inv || w->kv_b_proj_scale_inv || w->o_proj_scale_inv;
}

/* infer: prefill/decode, where weights may be held in FP8 (with p->fp8). */
dsc_status mla_check_weights(dsc_context *ctx, const char *fn, const dsc_mla_params *p,
                                const dsc_mla_weights *w, int infer) {
  DSC_CHECK(w != NULL, DSC_ERR_INVALID_ARGUMENT, fn, "w: expected MLA weights, got NULL");
  DSC_CHECK(w->size >= sizeof(dsc_mla_weights), DSC_ERR_INVALID_ARGUMENT, fn,
            "w->size: expected sizeof(dsc_mla_weights) = %zu, got %zu", sizeof(dsc_mla_weights),
            w->size);
  const int64_t Hd = p->hidden, H = p->n_heads, Rq = p->q_lora_rank, R = p->kv_lora_rank;
  const int64_t dqk = p->qk_nope_head_dim + p->qk_rope_head_dim, dr = p->qk_rope_head_dim;
  const int64_t dn = p->qk_nope_head_dim, dv = p->v_head_dim;
  const int ql = Rq > 0;
  if (has_fp8_weights(w)) {
    DSC_CHECK(infer, DSC_ERR_INVALID_ARGUMENT, fn,
              "w: expected float32 master weights for training, got FP8 weights "
              "(*_scale_inv set; those are for dsc_mla_prefill/decode)");
    DSC_CHECK(p->fp8, DSC_ERR_INVALID_ARGUMENT, fn,
              "w: FP8 weights (*_scale_inv set) need p->fp8 = 1, got 0");
  }
  /* the projections (out, in), held in float32 or, with a scale, in FP8 */
  struct { const char *n, *sn; const DLTensor *t, *s; int use; int64_t d0, d1; } pr[6] = {
      {"q_a_proj", "q_a_proj_scale_inv", w->q_a_proj, w->q_a_proj_scale_inv, ql, Rq, Hd},
      {"q_b_proj", "q_b_proj_scale_inv", w->q_b_proj, w->q_b_proj_scale_inv, ql, H * dqk, Rq},
      {"q_proj", "q_proj_scale_inv", w->q_proj, w->q_proj_scale_inv, !ql, H * dqk, Hd},
      {"kv_a_proj_with_mqa", "kv_a_proj_with_mqa_scale_inv", w->kv_a_proj_with_mqa,
       w->kv_a_proj_with_mqa_scale_inv, 1, R + dr, Hd},
      {"kv_b_proj", "kv_b_proj_scale_inv", w->kv_b_proj, w->kv_b_proj_scale_inv, 1,
       H * (dn + dv), R},
      {"o_proj", "o_proj_scale_inv", w->o_proj, w->o_proj_scale_inv, 1, Hd, H * dv}};
  for (int i = 0; i < 6; ++i) {
    if (pr[i].s && pr[i].use)
      DSC_TRY(check_wq(ctx, fn, pr[i].n, pr[i].sn, pr[i].t, pr[i].s, pr[i].d0, pr[i].d1));
    else if (pr[i].s)
      return dsc_error(DSC_ERR_INVALID_ARGUMENT, fn,
                       "%s: expected NULL (its weight is unused with this q_lora_rank), got a tensor",
                       pr[i].sn);
    else
      DSC_TRY(mla_check_w(ctx, fn, pr[i].n, pr[i].t, pr[i].use, 2, pr[i].d0, pr[i].d1));
  }
  DSC_TRY(mla_check_w(ctx, fn, "q_a_layernorm", w->q_a_layernorm, ql, 1, Rq, 0));
  DSC_TRY(mla_check_w(ctx, fn, "kv_a_layernorm", w->kv_a_layernorm, 1, 1, R, 0));
  return DSC_OK;
}

/* The weights of w as named inputs (absent ones NULL) after the n already in l; returns
 * the new count. */
int mla_weight_list(const dsc_mla_weights *w, dsc_named_tensor *l, int n) {
  const dsc_named_tensor all[14] = {
      {"w->q_a_proj", w->q_a_proj}, {"w->q_a_layernorm", w->q_a_layernorm},
      {"w->q_b_proj", w->q_b_proj}, {"w->q_proj", w->q_proj},
      {"w->kv_a_proj_with_mqa", w->kv_a_proj_with_mqa}, {"w->kv_a_layernorm", w->kv_a_layernorm},
      {"w->kv_b_proj", w->kv_b_proj}, {"w->o_proj", w->o_proj},
      {"w->q_a_proj_scale_inv", w->q_a_proj_scale_inv},
      {"w->q_b_proj_scale_inv", w->q_b_proj_scale_inv},
      {"w->q_proj_scale_inv", w->q_proj_scale_inv},
      {"w->kv_a_proj_with_mqa_scale_inv", w->kv_a_proj_with_mqa_scale_inv},
      {"w->kv_b_proj_scale_inv", w->kv_b_proj_scale_inv},
      {"w->o_proj_scale_inv", w->o_proj_scale_inv}};
  memcpy(l + n, all, sizeof all);
  return n + 14;
}

/* x [B,T,Hd] float32 and positions [B,T] int32 (values checked by the caller). */
dsc_status mla_check_x(dsc_context *ctx, const char *fn, const dsc_mla_params *p,
                          const char *xname, const DLTensor *x, const DLTensor *positions) {
  DSC_TRY(dsc_check_tensor(ctx, fn, xname, x, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, fn, "positions", positions, DSC_DT(DSC_DTYPE_INT32)));
  DSC_TRY(dsc_check_ndim(fn, xname, x, 3, 3, "(B, T, hidden)"));
  if (x->shape[2] != p->hidden) {
    char b[256];
    return dsc_error(DSC_ERR_SHAPE, fn, "%s: expected a last dim equal to hidden = %d, got %s",
                     xname, (int)p->hidden, dsc_shape_str(x, b, sizeof b));
  }
  const int64_t bt[2] = {x->shape[0], x->shape[1]};
  return dsc_check_shape(fn, "positions", positions, 2, bt);
}

/* A host view of an index tensor (a copy from the device on CUDA). *owned must be freed. */
dsc_status mla_host_ints(dsc_context *ctx, const DLTensor *t, void **host, void **owned) {
  *owned = NULL;
  const size_t bytes = (size_t)dsc_numel(t) * dsc_dtype_size(dsc_tensor_dtype(t));
  if (!dsc_ctx_is_cuda(ctx)) {
    *host = dsc_data(t);
    return DSC_OK;
  }
  void *h = malloc(bytes ? bytes : 1);
  if (!h) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_mla", "could not allocate %zu bytes", bytes);
  dsc_status s = dsc_memcpy(ctx, h, HOST, dsc_data(t), ctx->device, bytes);
  if (s != DSC_OK) {
    free(h);
    return s;
  }
  *host = *owned = h;
  return DSC_OK;
}

/* positions >= 0 where they live: the backend's index_range scans them on the context's
 * device and returns the first bad one (two scalars come back, not the positions). */
dsc_status mla_check_positions(dsc_context *ctx, const char *fn, const DLTensor *pos) {
  int64_t bad_pos = -1, bad_value = 0;
  DSC_TRY(DSC_DISPATCH(index_range, ctx, dsc_numel(pos), 0, dsc_data(pos), 0, (int64_t)INT32_MAX + 1, 0,
                       &bad_pos, &bad_value));
  DSC_CHECK(bad_pos < 0, DSC_ERR_INVALID_ARGUMENT, fn,
            "positions: expected values >= 0, got %lld at index %lld", (long long)bad_value,
            (long long)bad_pos);
  return DSC_OK;
}

/* ---- attention ops --------------------------------------------------------------- */

/* BF16 tensor-core compute for the float32 training attention on CUDA (kernels/
 * mla_attn_tc.cu) when the context is in DSC_MATH_BF16_OPERANDS mode: q, k, v, dO and P are
 * rounded to BF16 there (scores, softmax and sums FP32). The CPU ignores the flag (exact
 * float32). The mode is read per call: a forward and its backward agree when the caller
 * keeps one mode between them (a BF16 model holds it over all its passes). */
static int attn_bf16(const dsc_context *ctx) { return ctx->math_mode == DSC_MATH_BF16_OPERANDS; }

dsc_status mla_attn_fwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                        int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                        const float *kv, const float *kpe, float *o, float *lse) {
  return DSC_DISPATCH(mla_attn_fwd, ctx, B, T, H, dn, dr, dv, attn_bf16(ctx), scale, q, q_pe, kv, kpe, o,
                      lse);
}

dsc_status mla_attn_bwd(dsc_context *ctx, int64_t B, int64_t T, int64_t H, int64_t dn,
                        int64_t dr, int64_t dv, float scale, const float *q, const float *q_pe,
                        const float *kv, const float *kpe, const float *o, const float *lse,
                        const float *dout, float *dq, float *dq_pe, float *dkv, float *dkpe) {
  return DSC_DISPATCH(mla_attn_bwd, ctx, B, T, H, dn, dr, dv, attn_bf16(ctx), scale, q, q_pe, kv, kpe, o, lse,
                      dout, dq, dq_pe, dkv, dkpe);
}
