/*
 * kernels/grouped_linear.cu -- the MoE expert GEMM over the contiguous (permuted) layout on
 * the GPU; the twin of csrc/cpu/grouped_linear.c.
 *
 * Legend: E experts, R rows (all experts, padding included), K in features, N out
 *         features; expert e owns rows offs_h[e] .. offs_h[e+1]-1 (M_e rows, r0 = offs_h[e]).
 *
 *   forward:  y_e  = x_e @ w_e^T          [M_e, N]
 *   backward: dx_e = dy_e @ w_e           [M_e, K]
 *             dw_e = dy_e^T @ x_e         [N, K]   (0 when M_e = 0)
 *
 * One cuBLASLt GEMM per non-empty expert through dsc_cuda_gemm / dsc_cuda_gemm_f32out
 * (kernels/gemm.cu: FP32 accumulation, deterministic algorithm choice), on the row slice
 * the host copy of the offsets names; all on ctx->stream, no host sync. Empty experts launch
 * nothing, except that their dw block is zero-filled (the CPU's K = 0 GEMM writes zeros).
 * Every GEMM writes a disjoint slice of the output, so the result does not depend on the
 * order of the experts. The device copy `offsets` is not needed: the slices are host-known.
 *
 * Rows of different experts are independent, so padding rows (zeros from dsc_moe_permute)
 * simply produce zero rows in y and dx and add nothing to dw. Rows from offs_h[E] to R
 * (the MoE layer's row bound, ops/moe_internal.h) belong to no expert: y and dx get zeros.
 *
 * BF16-operand math mode (DSC_MATH_BF16_OPERANDS, the BF16 model) on float32 tensors: the
 * project's BF16 tensor-core grouped GEMM (bf16_grouped_mma.cu) instead, one launch per
 * product reading the device offsets (offs_h unused, may be NULL): the MoE layer of a BF16
 * model then never copies its offsets back. The float32 reference model (DSC_MATH_FP32)
 * keeps cuBLASLt per expert on the host copy (one host wait per layer forward: the layer
 * copies the offsets once, ops/moe_layer.c host_offsets_once).
 */
#include "common.cuh"
#include "bf16_grouped_tile.cuh"

dsc_status dsc_bf16_grouped_launch(dsc_context *ctx, const char *fn, const Bf16GroupedArgs &p);

/* 1: the BF16 tensor-core kernel, reading the offsets on the device, runs these tensors
 * (float32 in the BF16-operand mode; ops/grouped_linear.c asks the same before copying). */
extern "C" int dsc_cuda_grouped_linear_on_device(const dsc_context *ctx, dsc_dtype dt, dsc_dtype dw_dt) {
  return ctx->math_mode == DSC_MATH_BF16_OPERANDS && dt == DSC_DTYPE_FLOAT32 &&
         (dw_dt == DSC_DTYPE_FLOAT32 || dw_dt == DSC_DTYPE_INVALID);
}

static Bf16GroupedArgs bg_args(int mode, int64_t G, int64_t M, int64_t N, int64_t K, const void *a, int64_t sam,
                               int64_t sak, const void *b, int64_t sbk, int64_t sbn, int64_t b_group, void *c,
                               const int32_t *offsets) {
  Bf16GroupedArgs p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.a = (const float *)a;
  p.sam = sam;
  p.sak = sak;
  p.b = (const float *)b;
  p.sbk = sbk;
  p.sbn = sbn;
  p.b_group = b_group;
  p.c = (float *)c;
  p.mode = mode;
  p.G = G;
  p.offsets = offsets;
  return p;
}

static inline int64_t gl_esize(dsc_dtype dt) { return dt == DSC_DTYPE_BFLOAT16 ? 2 : 4; }

extern "C" dsc_status dsc_cuda_grouped_linear_fwd(dsc_context *ctx, dsc_dtype dt, int64_t E,
                                                  int64_t R, int64_t N, int64_t K,
                                                  const void *x /* [R,K] dt */,
                                                  const void *w /* [E,N,K] dt */,
                                                  const int32_t *offsets /* [E+1] device */,
                                                  const int32_t *offs_h /* [E+1] host */,
                                                  void *y /* [R,N] dt */) {
  static const char *const FN = "dsc_cuda_grouped_linear_fwd";
  if (E <= 0 || R <= 0 || N <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (dsc_cuda_grouped_linear_on_device(ctx, dt, DSC_DTYPE_INVALID)) {
    /* y [R,N] = x [R,K] @ W_g^T: A = x, B(k, n) = W_g[n, k] */
    return dsc_bf16_grouped_launch(ctx, FN, bg_args(BG_ROWS, E, R, N, K, x, K, 1, w, 1, K, N * K, y, offsets));
  }
  if (!offs_h) return dsc_error(DSC_ERR_INTERNAL, FN, "offs_h: the host offsets are needed here, got NULL");
  const int64_t es = gl_esize(dt);
  if (offs_h[E] < R) /* rows past every expert (the layer's row bound): zeros */
    DSC_CUDA_TRY(cudaMemsetAsync((char *)y + offs_h[E] * N * es, 0, (size_t)((R - offs_h[E]) * N * es),
                                 dsc_cuda_stream(ctx)), FN);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offs_h[e], M = (int64_t)offs_h[e + 1] - r0;
    if (M <= 0) continue;
    const char *x_e = (const char *)x + r0 * K * es;  /* [M, K] */
    const char *w_e = (const char *)w + e * N * K * es; /* [N, K] */
    char *y_e = (char *)y + r0 * N * es;              /* [M, N] */
    /* K == 0 is handled by dsc_cuda_gemm (y_e = 0) */
    DSC_TRY(dsc_cuda_gemm(ctx, dt, 0, 1, M, N, K, 1.0f, x_e, K, w_e, K, 0.0f, y_e, N, 1, 0, 0, 0));
  }
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_grouped_linear_bwd(dsc_context *ctx, dsc_dtype dt, int64_t E,
                                                  int64_t R, int64_t N, int64_t K,
                                                  const void *dy /* [R,N] dt */,
                                                  const void *x /* [R,K] dt */,
                                                  const void *w /* [E,N,K] dt */,
                                                  const int32_t *offsets /* [E+1] device */,
                                                  const int32_t *offs_h /* [E+1] host */,
                                                  void *dx /* [R,K] dt or NULL */, dsc_dtype dw_dt,
                                                  void *dw /* [E,N,K] dw_dt or NULL */) {
  static const char *const FN = "dsc_cuda_grouped_linear_bwd";
  if (E <= 0 || N <= 0 || K <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (dsc_cuda_grouped_linear_on_device(ctx, dt, dw ? dw_dt : DSC_DTYPE_INVALID)) {
    if (dx && R > 0) /* dx [R,K] = dy [R,N] @ W_g: A = dy, B(k=n, n=k) = W_g[n, k] */
      DSC_TRY(dsc_bf16_grouped_launch(ctx, FN, bg_args(BG_ROWS, E, R, K, N, dy, N, 1, w, K, 1, N * K,
                                                        dx, offsets)));
    if (dw) /* dW_g [N,K] = dy_g^T x_g: A(m=n, k=r) = dy[r, n], B(k=r, n=k) = x[r, k]; K-grouped */
      DSC_TRY(dsc_bf16_grouped_launch(ctx, FN, bg_args(BG_KROWS, E, N, K, R, dy, 1, N, x, K, 1, 0, dw, offsets)));
    return DSC_OK;
  }
  if (!offs_h) return dsc_error(DSC_ERR_INTERNAL, FN, "offs_h: the host offsets are needed here, got NULL");
  const int64_t es = gl_esize(dt), wes = dw ? gl_esize(dw_dt) : 0;
  if (dx && offs_h[E] < R) /* rows past every expert (the layer's row bound): zeros */
    DSC_CUDA_TRY(cudaMemsetAsync((char *)dx + offs_h[E] * K * es, 0, (size_t)((R - offs_h[E]) * K * es), s),
                 FN);
  const size_t dw_bytes = (size_t)(N * K * wes); /* one expert's dw block */
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offs_h[e], M = (int64_t)offs_h[e + 1] - r0;
    const char *dy_e = (const char *)dy + r0 * N * es;  /* [M, N] */
    const char *x_e = (const char *)x + r0 * K * es;    /* [M, K] */
    const char *w_e = (const char *)w + e * N * K * es; /* [N, K] */
    if (dx && M > 0) {
      DSC_TRY(dsc_cuda_gemm(ctx, dt, 0, 0, M, K, N, 1.0f, dy_e, N, w_e, K, 0.0f,
                            (char *)dx + r0 * K * es, K, 1, 0, 0, 0));
    }
    if (!dw) continue;
    void *dw_e = (char *)dw + e * (int64_t)dw_bytes; /* [N, K] dw_dt */
    if (M <= 0) { /* an empty sum: zeros (all-zero bytes in float32 and bfloat16) */
      DSC_CUDA_TRY(cudaMemsetAsync(dw_e, 0, dw_bytes, s), FN);
    } else if (dw_dt == dt) {
      DSC_TRY(dsc_cuda_gemm(ctx, dt, 1, 0, N, K, M, 1.0f, dy_e, N, x_e, K, 0.0f, dw_e, K, 1, 0, 0,
                            0));
    } else {
      DSC_TRY(dsc_cuda_gemm_f32out(ctx, dt, 1, 0, N, K, M, 1.0f, dy_e, N, x_e, K, 0.0f,
                                   (float *)dw_e, K));
    }
  }
  return DSC_OK;
}
