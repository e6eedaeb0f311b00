/*
 * kernels/gemm.cu -- row-major GEMM on the GPU through cuBLASLt; the twin of
 * csrc/cpu/gemm.c.
 *
 * Legend: M rows of C, N columns of C, K the inner dim; Bt the batch (`batch`).
 *   op(A) [M,K] is A stored [M,K] (lda >= K), or A stored [K,M] (lda >= M) with trans_a;
 *   op(B) [K,N] is B stored [K,N] (ldb >= N), or B stored [N,K] (ldb >= K) with trans_b;
 *   C [M,N] (ldc >= N). lda/ldb/ldc are row strides, sA/sB/sC batch strides, in elements.
 *
 *   C = alpha * op(A) @ op(B) + beta * C, FP32 accumulation (CUBLAS_COMPUTE_32F: no TF32,
 *   so float32 results match the CPU's sgemm to rounding), alpha/beta float32 on the host.
 *   beta == 0 overwrites C (C is not read), as BLAS specifies.
 *   Math mode (dsc_context_set_math_mode): with DSC_MATH_BF16_OPERANDS, float32 operands run
 *   as CUBLAS_COMPUTE_32F_FAST_16BF: cuBLASLt rounds A and B to BF16 and runs tensor cores,
 *   accumulating in FP32 (A, B, C and the scale type stay CUDA_R_32F), so on BF16-exact
 *   operands (the BF16 model's weights and rounded activations) the result is a BF16 GEMM's.
 *   The mode is part of the plan key (blaslt_host.h). BF16 operands run the same in both
 *   modes; the fallback kernel computes exact float32 in both.
 *
 * Row-major to cuBLASLt's column-major: a row-major X [r, c] with row stride ld is the
 * column-major X^T [c, r] with leading dim ld. So C^T = op(B)^T op(A)^T is one
 * column-major GEMM with cuBLASLt's "A" = our B (transa = trans_b) and "B" = our A
 * (transb = trans_a), m = N, n = M, k = K, and C^T [N, M] with leading dim ldc.
 *
 * Batches: CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT and STRIDED_BATCH_OFFSET (a shared B has
 * stride 0). A shared B with a plain row-major A and packed batches of A and C is folded
 * into one GEMM with M' = Bt*M instead.
 * Algorithm: the first result of cublasLtMatmulAlgoGetHeuristic with a 32 MiB workspace
 * (from dsc_workspace) and the real alignments of the pointers and strides, asked once
 * per problem: blaslt.cu caches the descriptors and the algorithm in the context. For a fixed
 * problem, device and workspace the same algorithm runs every time, and cuBLASLt's
 * split-K reduction schemes are deterministic, so results are run-to-run reproducible.
 * When cuBLASLt has no algorithm for a problem (e.g. odd strides it cannot handle), a
 * simple tiled kernel of the project computes it (FP32 accumulate, same contract).
 * K == 0: C = beta * C by a small kernel (cuBLASLt rejects k = 0).
 */
#include "blaslt.cuh"

#define LT_WORKSPACE_BYTES ((size_t)32 << 20)
#define LT_MAX_BATCH ((int64_t)65535) /* batches per cuBLASLt call; larger ones are split */
#define FB_TILE 16                    /* fallback kernel tile */

/* One GEMM problem (one or several batches), row-major as in the legend. */
struct GemmProblem {
  int ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  const void *A; /* [Bt] x stored [ra, lda], dt_ab */
  int64_t lda;
  const void *B; /* [Bt or 1] x stored [rb, ldb], dt_ab */
  int64_t ldb;
  void *C; /* [Bt] x [M, ldc], dt_c */
  int64_t ldc;
  int64_t batch, sA, sB, sC;
  dsc_dtype dt_ab, dt_c;
};

static int64_t esize(dsc_dtype dt) { return dt == DSC_DTYPE_BFLOAT16 ? 2 : 4; }
static cudaDataType_t lt_type(dsc_dtype dt) {
  return dt == DSC_DTYPE_BFLOAT16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* ---- kernels -------------------------------------------------------------------------- */

/* C = beta * C over Bt x [M, N] (K == 0: an empty sum); beta == 0 writes zeros. */
template <typename TC>
__global__ void gemm_scale_kernel(int64_t M, int64_t N, float beta, TC *C /* [Bt] x [M, ldc] */,
                                  int64_t ldc, int64_t batch, int64_t sC) {
  const int64_t total = batch * M * N;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t col = idx % N, rest = idx / N;
    const int64_t row = rest % M, b = rest / M;
    const int64_t p = b * sC + row * ldc + col;
    dsc_st(C, p, beta == 0.0f ? 0.0f : beta * dsc_ld(C, p));
  }
}

/* The fallback: one 16x16 block per output tile (grid-stride over Bt x tiles), operands
 * staged through shared memory in float32, FP32 accumulation over K in order. */
template <typename TA, typename TC>
__global__ void __launch_bounds__(FB_TILE *FB_TILE)
    gemm_fallback_kernel(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const TA *__restrict__ A, int64_t lda, const TA *__restrict__ B,
                         int64_t ldb, float beta, TC *__restrict__ C, int64_t ldc, int64_t batch,
                         int64_t sA, int64_t sB, int64_t sC) {
  __shared__ float As[FB_TILE][FB_TILE + 1]; /* [m][k] of op(A) */
  __shared__ float Bs[FB_TILE][FB_TILE + 1]; /* [k][n] of op(B) */
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles_m = (M + FB_TILE - 1) / FB_TILE, tiles_n = (N + FB_TILE - 1) / FB_TILE;
  const int64_t total = batch * tiles_m * tiles_n;
  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    const int64_t tn = tile % tiles_n, rest = tile / tiles_n;
    const int64_t tm = rest % tiles_m, b = rest / tiles_m;
    const TA *Ab = A + b * sA; /* stored [ra, lda] */
    const TA *Bb = B + b * sB; /* stored [rb, ldb] */
    TC *Cb = C + b * sC;       /* [M, ldc] */
    const int64_t row = tm * FB_TILE + ty, col = tn * FB_TILE + tx;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += FB_TILE) {
      const int64_t ka = k0 + tx, kb = k0 + ty;
      As[ty][tx] = (row < M && ka < K) ? dsc_ld(Ab, ta ? ka * lda + row : row * lda + ka) : 0.0f;
      Bs[ty][tx] = (kb < K && col < N) ? dsc_ld(Bb, tb ? col * ldb + kb : kb * ldb + col) : 0.0f;
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < FB_TILE; ++kk) acc += As[ty][kk] * Bs[kk][tx];
      __syncthreads();
    }
    if (row < M && col < N) {
      const int64_t p = row * ldc + col;
      float out = alpha * acc;
      if (beta != 0.0f) out += beta * dsc_ld(Cb, p);
      dsc_st(Cb, p, out);
    }
  }
}

template <typename TC>
static dsc_status launch_scale(dsc_context *ctx, const char *fn, const GemmProblem &g) {
  gemm_scale_kernel<TC><<<dsc_cuda_blocks(g.batch * g.M * g.N, 256), 256, 0,
                          dsc_cuda_stream(ctx)>>>(g.M, g.N, g.beta, (TC *)g.C, g.ldc, g.batch,
                                                  g.sC);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

template <typename TA, typename TC>
static dsc_status launch_fallback(dsc_context *ctx, const char *fn, const GemmProblem &g) {
  const int64_t tiles =
      g.batch * ((g.M + FB_TILE - 1) / FB_TILE) * ((g.N + FB_TILE - 1) / FB_TILE);
  gemm_fallback_kernel<TA, TC><<<dsc_cuda_blocks(tiles, 1, 65536), dim3(FB_TILE, FB_TILE), 0,
                                 dsc_cuda_stream(ctx)>>>(
      g.ta, g.tb, g.M, g.N, g.K, g.alpha, (const TA *)g.A, g.lda, (const TA *)g.B, g.ldb, g.beta,
      (TC *)g.C, g.ldc, g.batch, g.sA, g.sB, g.sC);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

static dsc_status run_fallback(dsc_context *ctx, const char *fn, const GemmProblem &g) {
  const bool a16 = g.dt_ab == DSC_DTYPE_BFLOAT16, c16 = g.dt_c == DSC_DTYPE_BFLOAT16;
  if (a16 && c16) return launch_fallback<__nv_bfloat16, __nv_bfloat16>(ctx, fn, g);
  if (a16) return launch_fallback<__nv_bfloat16, float>(ctx, fn, g);
  return launch_fallback<float, float>(ctx, fn, g);
}

/* ---- cuBLASLt -------------------------------------------------------------------------- */

/* Runs g (batch <= LT_MAX_BATCH) through the shared cuBLASLt layer (blaslt.cu: the plan
 * of a repeated problem is cached, no descriptor or heuristic per call). *done = false
 * (and DSC_OK) when cuBLASLt has no algorithm for it; nothing was launched then. */
static dsc_status lt_matmul(dsc_context *ctx, const char *fn, const GemmProblem &g, bool *done) {
  *done = false;
  void *ws = NULL;
  DSC_TRY(dsc_workspace(ctx, LT_WORKSPACE_BYTES, &ws));
  const int64_t eab = esize(g.dt_ab), ec = esize(g.dt_c);
  const bool batched = g.batch > 1;
  DscLtProblem pr;
  /* BF16 and FP32 inputs both accumulate in FP32 (bf16: tensor cores; fp32: no TF32, or
   * in BF16-operand mode rounded to BF16 for the tensor cores) */
  pr.math_mode = dsc_lt_dense_math(g.dt_ab == DSC_DTYPE_FLOAT32, ctx->math_mode);
  pr.compute = pr.math_mode == DSC_MATH_BF16_OPERANDS ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                       : CUBLAS_COMPUTE_32F;
  pr.opa = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt A = our B */
  pr.opb = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt B = our A */
  pr.ta = pr.tb = lt_type(g.dt_ab);
  pr.tc = lt_type(g.dt_c);
  pr.m = g.N; /* C^T [N, M] column-major */
  pr.n = g.M;
  pr.k = g.K;
  pr.lda = g.ldb;
  pr.ldb = g.lda;
  pr.ldc = g.ldc;
  pr.batch = g.batch;
  pr.sa = g.sB;
  pr.sb = g.sA;
  pr.sc = g.sC;
  pr.scale_a = pr.scale_b = -1;
  /* the real alignment of every matrix (its pointer, rows and batch steps) */
  pr.al_a = dsc_cuda_alignment(g.B, g.ldb * eab, batched ? g.sB * eab : 0);
  pr.al_b = dsc_cuda_alignment(g.A, g.lda * eab, batched ? g.sA * eab : 0);
  pr.al_c = dsc_cuda_alignment(g.C, g.ldc * ec, batched ? g.sC * ec : 0);
  pr.ws_bytes = LT_WORKSPACE_BYTES;
  return dsc_lt_matmul(ctx, fn, pr, &g.alpha, g.B, g.A, &g.beta, g.C, NULL, NULL, ws, done);
}

/* ---- entry points ------------------------------------------------------------------------ */

static dsc_status gemm_run(dsc_context *ctx, const char *fn, GemmProblem g) {
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, fn);
  if (g.K <= 0) { /* an empty sum: C = beta * C */
    return g.dt_c == DSC_DTYPE_BFLOAT16 ? launch_scale<__nv_bfloat16>(ctx, fn, g)
                                        : launch_scale<float>(ctx, fn, g);
  }
  /* A shared B under packed, untransposed A and C batches: one GEMM of Bt*M rows. */
  if (g.batch > 1 && g.sB == 0 && !g.ta && g.sA == g.M * g.lda && g.sC == g.M * g.ldc) {
    g.M *= g.batch;
    g.batch = 1;
  }
  if (g.batch == 1) g.sA = g.sB = g.sC = 0;
  const int64_t eab = esize(g.dt_ab), ec = esize(g.dt_c);
  for (int64_t b0 = 0; b0 < g.batch; b0 += LT_MAX_BATCH) {
    GemmProblem c = g; /* batches [b0, b0 + c.batch) */
    c.batch = g.batch - b0 < LT_MAX_BATCH ? g.batch - b0 : LT_MAX_BATCH;
    c.A = (const char *)g.A + b0 * g.sA * eab;
    c.B = (const char *)g.B + b0 * g.sB * eab;
    c.C = (char *)g.C + b0 * g.sC * ec;
    bool done = false;
    DSC_TRY(lt_matmul(ctx, fn, c, &done));
    if (!done) {
      dsc_log(ctx, DSC_LOG_DEBUG,
              "%s: cuBLASLt has no algorithm for M=%lld N=%lld K=%lld (lda %lld, ldb %lld, "
              "ldc %lld, batch %lld); using the fallback kernel",
              fn, (long long)c.M, (long long)c.N, (long long)c.K, (long long)c.lda,
              (long long)c.ldb, (long long)c.ldc, (long long)c.batch);
      DSC_TRY(run_fallback(ctx, fn, c));
    }
  }
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_gemm(dsc_context *ctx, dsc_dtype dt, int trans_a, int trans_b,
                                    int64_t M, int64_t N, int64_t K, float alpha,
                                    const void *A /* [Bt] x op(A) [M,K], row stride lda, dt */,
                                    int64_t lda,
                                    const void *B /* [Bt or 1] x op(B) [K,N], row stride ldb */,
                                    int64_t ldb, float beta, void *C /* [Bt, M, ldc] dt */,
                                    int64_t ldc, int64_t batch, int64_t sA, int64_t sB,
                                    int64_t sC) {
  GemmProblem g;
  g.ta = trans_a != 0;
  g.tb = trans_b != 0;
  g.M = M;
  g.N = N;
  g.K = K;
  g.alpha = alpha;
  g.beta = beta;
  g.A = A;
  g.lda = lda;
  g.B = B;
  g.ldb = ldb;
  g.C = C;
  g.ldc = ldc;
  g.batch = batch;
  g.sA = sA;
  g.sB = sB;
  g.sC = sC;
  g.dt_ab = dt;
  g.dt_c = dt;
  return gemm_run(ctx, "dsc_cuda_gemm", g);
}

extern "C" dsc_status dsc_cuda_gemm_f32out(dsc_context *ctx, dsc_dtype dt, int trans_a,
                                           int trans_b, int64_t M, int64_t N, int64_t K,
                                           float alpha,
                                           const void *A /* op(A) [M,K], row stride lda, dt */,
                                           int64_t lda,
                                           const void *B /* op(B) [K,N], row stride ldb, dt */,
                                           int64_t ldb, float beta,
                                           float *C /* [M, ldc] float32 */, int64_t ldc) {
  GemmProblem g;
  g.ta = trans_a != 0;
  g.tb = trans_b != 0;
  g.M = M;
  g.N = N;
  g.K = K;
  g.alpha = alpha;
  g.beta = beta;
  g.A = A;
  g.lda = lda;
  g.B = B;
  g.ldb = ldb;
  g.C = C;
  g.ldc = ldc;
  g.batch = 1;
  g.sA = g.sB = g.sC = 0;
  g.dt_ab = dt;
  g.dt_c = DSC_DTYPE_FLOAT32;
  return gemm_run(ctx, "dsc_cuda_gemm_f32out", g);
}
