/*
 * ops/fp8_layers.h -- internal: the pieces of a block-scaled FP8 linear layer on raw,
 * contiguous device pointers, for the layers that run their projections in FP8 (the FP8
 * linear op, MLA, the MoE layer). Nothing here validates user input: the callers have.
 *
 * The V3 recipe: E4M3 everywhere; activations and output gradients in 1x128 tiles along
 * the inner dim, weights in 128x128 blocks, one float32 multiplier per tile/block
 * (scale = max(amax, 1e-4) / 448), FP32 accumulation with the scales applied per 128-wide
 * K block.
 *   fprop  y  = x @ w^T     x 1x128, w 128x128
 *   dgrad  dx = dy @ w      dy 1x128, w^T 128x128 (the same blocks, transposed)
 *   wgrad  dw = dy^T @ x    dy and x both 1x128 along the tokens
 *
 * Legend: M rows (tokens), K inner dim, N output features, G matrices (experts),
 * Kb = ceil(K/128), Nb = ceil(N/128). Grouped calls: rows offs[g]..offs[g+1]-1 use
 * matrix g (offs on the device, offs_h the same values on the host); G == 1 with
 * offs == NULL is a plain layer.
 *
 * Every function takes the context's workspace for its own scratch (dsc_workspace), so no
 * pointer passed in may point into it.
 */
#ifndef DSC_OPS_FP8_LAYERS_H
#define DSC_OPS_FP8_LAYERS_H

#include "backend.h"

/* DeepSeek's online scaling of activations: amax clamped to >= 1e-4 before
 * scale = amax / 448. */
#define DSC_FP8_AMAX_FLOOR 1e-4f
/* Output gradients (dgrad's dy tiles, wgrad's dy^T tiles) get no such floor, only one that
 * keeps an all-zero tile's scale a normal float: late in training whole tiles of dy sit far
 * below 1e-4, and a 1e-4 floor rounds them onto a coarse absolute grid that AdamW then
 * amplifies (measured: the demo's FP8 run stalled at loss 0.32 / 60% exact match with it,
 * reached 0.033 / 94.5% without; FP32: 0.076 / 91.5%). */
#define DSC_FP8_GRAD_AMAX_FLOOR 1e-30f

/* 1x128 tiles: x [M,K] (xt float32|bfloat16) -> q [M,K] e4m3, s [M,Kb]. */
dsc_status dsc_fp8l_quant_act(dsc_context *ctx, dsc_dtype xt, int64_t M, int64_t K,
                              const void *x, uint8_t *q, float *s);

/* 128x128 blocks of each of G float32 matrices w [G,N,K] -> q [G,N,K], s [G,Nb,Kb];
 * transpose: q [G,K,N], s [G,Kb,Nb] (exactly the transposed blocks: same amax, same q). */
dsc_status dsc_fp8l_quant_weight(dsc_context *ctx, int64_t G, int64_t N, int64_t K,
                                 const float *w, int transpose, uint8_t *q, float *s);

/* out [N,K] float32 = q [N,K] e4m3 dequantized with the 128x128 block scales s [Nb,Kb]. */
dsc_status dsc_fp8l_dequant_weight(dsc_context *ctx, int64_t N, int64_t K, const uint8_t *q,
                                   const float *s, float *out);

/* y [M,N] (yt float32|bfloat16) = xq [M,K] (s [M,Kb]) @ (wq [G,N,K] (s [G,Nb,Kb]))^T. */
dsc_status dsc_fp8l_fprop(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          const uint8_t *xq, const float *xs, const uint8_t *wq,
                          const float *ws, const int32_t *offs, const int32_t *offs_h,
                          dsc_dtype yt, void *y);

/* dx [M,K] (dtype dyt) = dy [M,N] (dyt float32|bfloat16, quantized here, gradient floor)
 * @ w, with w as
 * quantized by dsc_fp8l_quant_weight: w_transposed 0: wq [G,N,K], ws [G,Nb,Kb] (transposed
 * here); 1: wq [G,K,N], ws [G,Kb,Nb]. */
dsc_status dsc_fp8l_dgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          dsc_dtype dyt, const void *dy, dsc_dtype wt, const uint8_t *wq,
                          const float *ws, int w_transposed, const int32_t *offs,
                          const int32_t *offs_h, void *dx);

/* dw [G,N,K] float32 (overwritten; 0 for a group without rows) = per group dy_g^T @ x_g,
 * dy [M,N] (dyt) and x [M,K] re-quantized 1x128 along the tokens (tiles from each group's
 * first row). x: xt float32|bfloat16 (xs NULL), or fp8 1x128 tiles with scales xs [M,Kb]
 * (dequantized first, the V3 way). Rows past offsets[G] (<= M) belong to no group.
 * Grouped, two ways:
 *  - offs_h != NULL (host offsets): a loop over the groups, each quantized and multiplied
 *    on its own (any offsets; the expert-parallel path, whose rows are not aligned);
 *  - offs_h == NULL, offs != NULL (device offsets, each a multiple of 128: the FP8 layer's
 *    expert alignment, so a group's token tiles are the 128-blocks of all M rows): both
 *    operands quantized along the tokens in one launch each, then one K-grouped GEMM launch
 *    reading the offsets on the device (no host round trip). The same bits as the loop.
 * G == 1 with offs_h NULL: a plain layer. */
dsc_status dsc_fp8l_wgrad(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                          dsc_dtype dyt, const void *dy, dsc_dtype xt, const void *x,
                          const float *xs, const int32_t *offs_h, float *dw);
/* The same with the groups' offsets offs [G+1] on the device only (the second way above). */
dsc_status dsc_fp8l_wgrad_dev(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                              dsc_dtype dyt, const void *dy, dsc_dtype xt, const void *x,
                              const float *xs, const int32_t *offs, float *dw);

/* The K-grouped GEMM under the device-offset wgrad (csrc/cpu/fp8.c, kernels/fp8_gemm.cu):
 * c [G,M,N] float32, c_g = sum over the 128-blocks kb of group g's K range [offsets[g],
 * offsets[g+1]) (multiples of 128, offsets[G] <= K) of (a[:,kb] . b[:,kb]) * as[m,kb] *
 * bs[n,kb]; a [M,K], b [N,K] E4M3 with per-row 1x128 scales as [M,Kb], bs [N,Kb]; an
 * empty group gets zeros. offs_h: the offsets on the host (the CPU reads them; CUDA
 * ignores it and may get NULL). work: fp8_gemm_work(1, M, N, K). */
dsc_status dsc_cpu_fp8_kgrouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                                     const uint8_t *a, const float *as, const uint8_t *b,
                                     const float *bs, const int32_t *offsets, const int32_t *offs_h,
                                     float *c, void *work);
#ifdef DSC_WITH_CUDA
dsc_status dsc_cuda_fp8_kgrouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N, int64_t K,
                                      const uint8_t *a, const float *as, const uint8_t *b,
                                      const float *bs, const int32_t *offsets, const int32_t *offs_h,
                                      float *c, void *work);
#endif

#endif
