/*
 * kernels/grouped_linear.cu -- the MoE expert GEMM over the contiguous (permuted) layout on
 * the GPU; the twin of csrc/cpu/grouped_linear.c.
 *
 * Legend: E experts, R rows (all experts, padding included), K in features, N out
 *         features; expert e owns rows offsets[e] .. offsets[e+1]-1 (M_e rows).
 *
 *   forward:  y_e  = x_e @ w_e^T          [M_e, N]
 *   backward: dx_e = dy_e @ w_e           [M_e, K]
 *             dw_e = dy_e^T @ x_e         [N, K]   (0 when M_e = 0)
 *
 * Rows of different experts are independent, so padding rows (zeros from dsc_moe_permute)
 * simply produce zero rows in y and dx and add nothing to dw. Rows from offsets[E] to R
 * (the MoE layer's row bound, ops/moe_internal.h) belong to no expert: y and dx get zeros.
 *
 * float32 tensors (every MoE layer's, dsc_cuda_grouped_linear_on_device): one launch per
 * product of a grouped kernel reading the device offsets `offsets` (offs_h unused, may be
 * NULL), so no MoE layer copies its offsets back:
 *   - exact float32 math (DSC_MATH_DEFAULT, the reference model): the SIMT fmaf kernel
 *     kernels/f32_grouped.cu;
 *   - BF16-operand math (DSC_MATH_BF16_OPERANDS, the BF16 model): the BF16 tensor-core
 *     kernel kernels/bf16_grouped_mma.cu.
 * bfloat16 tensors (the public op only): one cuBLASLt GEMM per non-empty expert through
 * dsc_cuda_gemm / dsc_cuda_gemm_f32out (kernels/gemm.cu: FP32 accumulation, deterministic
 * algorithm choice) on the row slices the host copy offs_h names; empty experts launch
 * nothing but get a zero dw block (the CPU's K = 0 GEMM writes zeros). Every launch writes
 * a disjoint slice of the output: the result does not depend on the experts' order.
 * All on ctx->stream, no host sync.
 */
#include "common.cuh"
#include "bf16_grouped_tile.cuh"
#include "f32_grouped_tile.cuh"

dsc_status dsc_bf16_grouped_launch(dsc_context *ctx, const char *fn, const Bf16GroupedArgs &p);
dsc_status dsc_f32_grouped_launch(dsc_context *ctx, const char *fn, const F32GroupedArgs &p);

/* 1: a grouped kernel reading the offsets on the device runs these tensors (float32, with
 * a float32 dw: BF16 tensor cores in the BF16-operand mode, else exact float32 SIMT);
 * ops/grouped_linear.c asks the same before copying. */
extern "C" int dsc_cuda_grouped_linear_on_device(const dsc_context *ctx, dsc_dtype dt, dsc_dtype dw_dt) {
  (void)ctx;
  return dt == DSC_DTYPE_FLOAT32 && (dw_dt == DSC_DTYPE_FLOAT32 || dw_dt == DSC_DTYPE_INVALID);
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

/* The product p on the device offsets: the BF16 tensor-core kernel in the BF16-operand mode,
 * else the exact float32 one (the same operand description). */
static dsc_status grouped_launch(dsc_context *ctx, const char *fn, const Bf16GroupedArgs &p) {
  if (ctx->math_mode == DSC_MATH_BF16_OPERANDS) return dsc_bf16_grouped_launch(ctx, fn, p);
  F32GroupedArgs q;
  q.M = p.M;
  q.N = p.N;
  q.K = p.K;
  q.a = p.a;
  q.sam = p.sam;
  q.sak = p.sak;
  q.b = p.b;
  q.sbk = p.sbk;
  q.sbn = p.sbn;
  q.b_group = p.b_group;
  q.c = p.c;
  q.mode = p.mode == BG_KROWS ? FG_KROWS : FG_ROWS;
  q.G = p.G;
  q.offsets = p.offsets;
  return dsc_f32_grouped_launch(ctx, fn, q);
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
    return grouped_launch(ctx, FN, bg_args(BG_ROWS, E, R, N, K, x, K, 1, w, 1, K, N * K, y, offsets));
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
  if (E <= 0 || K <= 0) return DSC_OK; /* N == 0: dx is an empty sum (zeros), dw empty */
  DSC_CUDA_ENTER(ctx, FN);
  cudaStream_t s = dsc_cuda_stream(ctx);
  if (dsc_cuda_grouped_linear_on_device(ctx, dt, dw ? dw_dt : DSC_DTYPE_INVALID)) {
    if (dx && R > 0) /* dx [R,K] = dy [R,N] @ W_g: A = dy, B(k=n, n=k) = W_g[n, k] */
      DSC_TRY(grouped_launch(ctx, FN, bg_args(BG_ROWS, E, R, K, N, dy, N, 1, w, K, 1, N * K, dx, offsets)));
    if (dw) /* dW_g [N,K] = dy_g^T x_g: A(m=n, k=r) = dy[r, n], B(k=r, n=k) = x[r, k]; K-grouped */
      DSC_TRY(grouped_launch(ctx, FN, bg_args(BG_KROWS, E, N, K, R, dy, 1, N, x, K, 1, 0, dw, offsets)));
    return DSC_OK;
  }
  if (!offs_h) return dsc_error(DSC_ERR_INTERNAL, FN, "offs_h: the host offsets are needed here, got NULL");
  const int64_t es = gl_esize(dt), wes = dw ? gl_esize(dw_dt) : 0;
  if (N <= 0) { /* no cuBLASLt call for an empty inner dim: dx = 0 */
    if (dx && R > 0) DSC_CUDA_TRY(cudaMemsetAsync(dx, 0, (size_t)(R * K * es), s), FN);
    return DSC_OK;
  }
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
