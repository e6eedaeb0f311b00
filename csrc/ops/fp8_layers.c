/*
 * ops/fp8_layers.c -- the FP8 linear-layer pieces of fp8_layers.h: quantize activations
 * and weights, then fprop / dgrad / wgrad as block-scaled GEMMs (plain or grouped by
 * expert). The backend kernels do the arithmetic (csrc/cpu/fp8.c, kernels/fp8*.cu); this
 * file only sequences them and carves their scratch out of one workspace.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fp8_layers.h"

static const dsc_dtype E4 = DSC_DTYPE_FLOAT8_E4M3FN;

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
/* Sticky: bytes of n elements of `each` bytes, rounded up to 64 (*ok cleared on overflow). */
static size_t al64n(int64_t n, size_t each, int *ok) { return dsc_calign(dsc_cbytes(n, each, ok), 64, ok); }

static dsc_status scratch_overflow(const char *what, int64_t G, int64_t M, int64_t N, int64_t K) {
  return dsc_error(DSC_ERR_OUT_OF_MEMORY, what,
                   "scratch for G %lld, M %lld, N %lld, K %lld does not fit in 64 bits", (long long)G,
                   (long long)M, (long long)N, (long long)K);
}
static int is_fp8(dsc_dtype t) { return t == DSC_DTYPE_FLOAT8_E4M3FN || t == DSC_DTYPE_FLOAT8_E5M2; }

dsc_status dsc_fp8l_quant_act(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K,
                              const void *x, uint8_t *q, float *s) {
  if (M == 0 || K == 0) return DSC_OK;
  return DSC_DISPATCH(fp8_quantize, ctx, xt, M, K, 1, 128, 0, 0, DSC_FP8_AMAX_FLOOR, E4, x, q, s);
}

dsc_status dsc_fp8l_quant_weight(dsc_context *ctx, int64_t G, int64_t N, int64_t K,
                                 const float *w, int transpose, uint8_t *q, float *s) {
  if (N == 0 || K == 0) return DSC_OK;
  /* one matrix at a time: a 128-row block must not straddle two experts when N % 128 != 0 */
  const int64_t sblk = cdiv(N, 128) * cdiv(K, 128);
  for (int64_t g = 0; g < G; ++g)
    DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, DSC_DTYPE_FLOAT32, N, K, 128, 128, transpose, 0,
                         DSC_FP8_AMAX_FLOOR, E4, w + g * N * K, q + g * N * K, s + g * sblk));
  return DSC_OK;
}

dsc_status dsc_fp8l_dequant_weight(dsc_context *ctx, int64_t N, int64_t K, const uint8_t *q,
                                   const float *s, float *out) {
  if (N == 0 || K == 0) return DSC_OK;
  return DSC_DISPATCH(fp8_dequantize, ctx, E4, N, K, 128, 128, q, s, DSC_DTYPE_FLOAT32, out);
}

/* c [M,N] = a [M,K] (1x128) @ b^T, b [G,N,K] in 128x128 blocks (b_br rows per scale row),
 * plain or grouped; `work` is the GEMM's scratch. */
static dsc_status gemm_any(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                           const uint8_t *a, const float *as, dsc_dtype bt, const uint8_t *b,
                           const float *bs, const int32_t *offs, const int32_t *offs_h,
                           dsc_dtype ct, void *c, void *work) {
  if (offs == NULL)
    return DSC_DISPATCH(fp8_gemm, ctx, M, N, K, E4, a, as, 1, bt, b, bs, 128, ct, c, work);
  return DSC_DISPATCH(fp8_grouped_gemm, ctx, G, M, N, K, E4, a, as, bt, b, bs, offs, offs_h, ct, c, work);
}

dsc_status dsc_fp8l_fprop(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          const uint8_t *xq, const float *xs, const uint8_t *wq,
                          const float *ws, const int32_t *offs, const int32_t *offs_h,
                          dsc_dtype yt, void *y) {
  if (M == 0 || N == 0) return DSC_OK;
  size_t bytes = 0;
  void *work = NULL;
  DSC_TRY(DSC_DISPATCH(fp8_gemm_work, ctx, offs ? G : 1, M, N, K, yt, &bytes));
  DSC_TRY(dsc_workspace(ctx, bytes, &work));
  return gemm_any(ctx, G, M, N, K, xq, xs, E4, wq, ws, offs, offs_h, yt, y, work);
}

dsc_status dsc_fp8l_dgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          dsc_dtype dyt, const void *dy, dsc_dtype wt, const uint8_t *wq,
                          const float *ws, int w_transposed, const int32_t *offs,
                          const int32_t *offs_h, void *dx) {
  if (M == 0 || K == 0) return DSC_OK;
  const int64_t Nb = cdiv(N, 128), Kb = cdiv(K, 128);
  /* scratch: dyq [M,N] fp8, dys [M,Nb], then (w_transposed 0) wT [G,K,N], wsT [G,Kb,Nb] */
  size_t off[5] = {0};
  int ok = 1;
  off[1] = al64n(dsc_cmul(M, N, &ok), 1, &ok);
  off[2] = dsc_caddz(off[1], al64n(dsc_cmul(M, Nb, &ok), 4, &ok), &ok);
  off[3] = dsc_caddz(off[2], w_transposed ? 0 : al64n(dsc_cmul3(G, K, N, &ok), 1, &ok), &ok);
  off[4] = dsc_caddz(off[3], w_transposed ? 0 : al64n(dsc_cmul3(G, Kb, Nb, &ok), 4, &ok), &ok);
  size_t gw = 0;
  DSC_TRY(DSC_DISPATCH(fp8_gemm_work, ctx, offs ? G : 1, M, K, N, dyt, &gw));
  const size_t total = dsc_caddz(off[4], gw, &ok);
  if (!ok) return scratch_overflow("dsc_fp8l_dgrad", G, M, N, K);
  void *base = NULL;
  DSC_TRY(dsc_workspace(ctx, total, &base));
  char *p = (char *)base;
  uint8_t *dyq = (uint8_t *)p;       /* [M,N] */
  float *dys = (float *)(p + off[1]); /* [M,Nb] */
  const uint8_t *wT = wq;             /* [G,K,N] */
  const float *wsT = ws;              /* [G,Kb,Nb] */
  if (N > 0) {
    DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, dyt, M, N, 1, 128, 0, 0, DSC_FP8_GRAD_AMAX_FLOOR, E4, dy, dyq,
                         dys));
    if (!w_transposed) {
      uint8_t *t = (uint8_t *)(p + off[2]);
      float *ts = (float *)(p + off[3]);
      for (int64_t g = 0; g < G; ++g) {
        DSC_TRY(DSC_DISPATCH(fp8_transpose, ctx, N, K, 1, wq + g * N * K, t + g * K * N));
        DSC_TRY(DSC_DISPATCH(fp8_transpose, ctx, Nb, Kb, 4, ws + g * Nb * Kb, ts + g * Kb * Nb));
      }
      wT = t;
      wsT = ts;
    }
  }
  /* N == 0: the backends write zeros (an empty inner dim) */
  return gemm_any(ctx, G, M, K, N, dyq, dys, wt, wT, wsT, offs, offs_h, dyt, dx, p + off[4]);
}

static dsc_status wgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K, dsc_dtype dyt,
                        const void *dy, dsc_dtype xt, const void *x, const float *xs, const int32_t *offs,
                        const int32_t *offs_h, float *dw);

dsc_status dsc_fp8l_wgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          dsc_dtype dyt, const void *dy, dsc_dtype xt, const void *x,
                          const float *xs, const int32_t *offs_h, float *dw) {
  return wgrad(ctx, G, M, N, K, dyt, dy, xt, x, xs, NULL, offs_h, dw);
}

dsc_status dsc_fp8l_wgrad_dev(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                              dsc_dtype dyt, const void *dy, dsc_dtype xt, const void *x,
                              const float *xs, const int32_t *offs, float *dw) {
  return wgrad(ctx, G, M, N, K, dyt, dy, xt, x, xs, offs, NULL, dw);
}

static dsc_status wgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K, dsc_dtype dyt,
                        const void *dy, dsc_dtype xt, const void *x, const float *xs, const int32_t *offs,
                        const int32_t *offs_h, float *dw) {
  if (N == 0 || K == 0) return DSC_OK;
  /* device offsets, groups aligned to 128 rows: all groups at once; the CPU's twin reads
   * them in place (its "device" memory is the host's) */
  const int dev_groups = offs != NULL && offs_h == NULL;
  const int64_t Mb = cdiv(M, 128); /* groups run one after another through the same scratch */
  const int fp8_x = is_fp8(xt);
  /* scratch: xf [M,K] f32 (fp8 x only), xTq [K,M], xTs [K,Mb], dyTq [N,M], dyTs [N,Mb] */
  size_t off[6] = {0};
  int ok = 1;
  off[1] = fp8_x ? al64n(dsc_cmul(M, K, &ok), 4, &ok) : 0;
  off[2] = dsc_caddz(off[1], al64n(dsc_cmul(K, M, &ok), 1, &ok), &ok);
  off[3] = dsc_caddz(off[2], al64n(dsc_cmul(K, Mb, &ok), 4, &ok), &ok);
  off[4] = dsc_caddz(off[3], al64n(dsc_cmul(N, M, &ok), 1, &ok), &ok);
  off[5] = dsc_caddz(off[4], al64n(dsc_cmul(N, Mb, &ok), 4, &ok), &ok);
  size_t gw = 0;
  DSC_TRY(DSC_DISPATCH(fp8_gemm_work, ctx, 1, N, K, M, DSC_DTYPE_FLOAT32, &gw));
  const size_t total = dsc_caddz(off[5], gw, &ok);
  if (!ok) return scratch_overflow("dsc_fp8l_wgrad", G, M, N, K);
  void *base = NULL;
  DSC_TRY(dsc_workspace(ctx, total, &base));
  char *p = (char *)base;
  uint8_t *xTq = (uint8_t *)(p + off[1]);
  float *xTs = (float *)(p + off[2]);
  uint8_t *dyTq = (uint8_t *)(p + off[3]);
  float *dyTs = (float *)(p + off[4]);
  void *work = p + off[5];
  if (fp8_x && M > 0) {
    /* back to float32, then re-tiled along the tokens */
    DSC_TRY(DSC_DISPATCH(fp8_dequantize, ctx, xt, M, K, 1, 128, (const uint8_t *)x, xs, DSC_DTYPE_FLOAT32,
                         p));
    x = p;
    xt = DSC_DTYPE_FLOAT32;
  }
  const size_t xes = dsc_dtype_size(xt), dyes = dsc_dtype_size(dyt);
  if (dev_groups && ctx->debug_checks) {
    /* DSC_DEBUG_CHECKS=1: the invariant the K-grouped GEMM relies on (the layer's permutation
     * makes it so by construction; checking it costs a copy back, one wait) */
    int32_t *h = (int32_t *)malloc((size_t)(G + 1) * sizeof(int32_t));
    if (!h) return dsc_error(DSC_ERR_OUT_OF_MEMORY, "dsc_fp8l_wgrad", "out of host memory");
    dsc_status st = dsc_memcpy(ctx, h, (DLDevice){kDLCPU, 0}, offs, ctx->device, (size_t)(G + 1) * sizeof(int32_t));
    int64_t bad = -1;
    for (int64_t g = 0; st == DSC_OK && g <= G && bad < 0; ++g)
      if (h[g] % 128 != 0 || h[g] > M || (g > 0 ? h[g] < h[g - 1] : h[g] != 0)) bad = g;
    const int32_t v = bad >= 0 ? h[bad] : 0;
    free(h);
    DSC_TRY(st);
    DSC_CHECK(bad < 0, DSC_ERR_INTERNAL, "dsc_fp8l_wgrad",
              "offsets: expected 0 = o_0 <= ... <= o_G <= %lld, each a multiple of 128 (groups aligned to 128 "
              "rows), got [%lld] = %d",
              (long long)M, (long long)bad, (int)v);
  }
  if (dev_groups) {
    /* xT [K,M], dyT [N,M] in 1x128 tiles along all M tokens (a group's tiles, as the groups
     * start at multiples of 128; rows past offsets[G] quantize into tiles no group reads) */
    if (M > 0) {
      DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, xt, M, K, 1, 128, 1, 0, DSC_FP8_AMAX_FLOOR, E4, x, xTq, xTs));
      DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, dyt, M, N, 1, 128, 1, 0, DSC_FP8_GRAD_AMAX_FLOOR, E4, dy, dyTq,
                           dyTs));
    }
    /* dw [G,N,K]: dw_g = dyT[:, group g] @ (xT[:, group g])^T */
    const int32_t *oh = dsc_ctx_is_cuda(ctx) ? NULL : offs;
    return DSC_DISPATCH(fp8_kgrouped_gemm, ctx, G, N, K, M, dyTq, dyTs, xTq, xTs, offs, oh, dw, work);
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = offs_h ? offs_h[g] : 0, m = offs_h ? offs_h[g + 1] - r0 : M;
    if (m > 0) {
      DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, xt, m, K, 1, 128, 1, 0, DSC_FP8_AMAX_FLOOR, E4,
                           (const char *)x + (size_t)(r0 * K) * xes, xTq, xTs));
      DSC_TRY(DSC_DISPATCH(fp8_quantize, ctx, dyt, m, N, 1, 128, 1, 0, DSC_FP8_GRAD_AMAX_FLOOR, E4,
                           (const char *)dy + (size_t)(r0 * N) * dyes, dyTq, dyTs));
    }
    /* dw_g [N,K] = dyT [N,m] @ (xT [K,m])^T; m == 0 writes zeros */
    DSC_TRY(DSC_DISPATCH(fp8_gemm, ctx, N, K, m, E4, dyTq, dyTs, 1, E4, xTq, xTs, 1, DSC_DTYPE_FLOAT32,
                         dw + g * N * K, work));
  }
  return DSC_OK;
}
