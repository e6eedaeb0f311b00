/*
 * kernels/fp8_gemm.cu -- DeepSeek-V3 block-scaled FP8 GEMMs on the GPU: plain, grouped
 * contiguous (MoE experts, rows grouped by expert) and grouped masked (decode); the
 * twin of the GEMM part of csrc/cpu/fp8.c.
 *
 * Legend: M rows of A and C (masked: Mmax per group), N rows of B = columns of C, K the
 * inner dim, Kb = ceil(K/128) scale blocks along K, G groups (experts).
 *   a [M,K] fp8 (masked: [G,Mmax,K]), a_scale [ceil(M/a_br),Kb] float32;
 *   b [N,K] fp8 (grouped: [G,N,K]),   b_scale [ceil(N/b_br),Kb] (grouped: per group);
 *   c [M,N] float32|bfloat16 (masked: [G,Mmax,N]).
 *   C[m,n] = sum_kb (sum_{k in kb} A[m,k] B[n,k]) * sa(m,kb) * sb(n,kb)
 * i.e. C = A B^T ("TN"), each 128-wide K block summed in FP32, then scaled and added to
 * an FP32 accumulator (DeepSeek's promotion every 128 products).
 *
 * Paths:
 *  - cuBLASLt block-scaled FP8 (plain fp8_gemm only) on compute capability 9.x, when
 *    the problem fits its rules: K a positive multiple of 128, M % 4 == 0, N % 16 == 0,
 *    16-byte aligned a, b, c, not two E5M2 operands, scales 1x128 (VEC128_32F) or
 *    128x128 (BLK128x128_32F) but not both 128x128, and a `work` buffer (the size
 *    fp8_gemm_work reported). The scales are rewritten into `work` in cuBLASLt's layout
 *    first (VEC128: [Kb, rows], rows contiguous; BLK128x128: [ceil(rows/128), Kb4] with
 *    Kb4 = Kb rounded up to 4). If cuBLASLt has no algorithm, the own kernel runs.
 *  - Otherwise the project's kernel (any M, N, K, arch): 64x64 output tiles, 256 threads
 *    with 4x4 outputs each, fp8 decoded through a 256-entry table (exact, NaN codes give
 *    NaN) into float32 shared-memory tiles, FP32 FMA partials per 128-wide K block, then
 *    acc += partial * sa * sb. Grouped: one launch; each 64-row tile finds the groups
 *    whose rows it holds (binary search in the device offsets) and computes each group's
 *    rows with that expert's B. Masked: one launch over G x tiles; rows >= masked_m[g]
 *    are written as 0.
 * Deterministic (fixed summation order, no atomics); 64-bit index math; grid-stride.
 */
#include <cublasLt.h>

#include "common.cuh"
#include "fp8_format.h"

#define G_BM 64   /* output tile rows (M) */
#define G_BN 64   /* output tile columns (N) */
#define G_BK 32   /* K slice staged in shared memory per step */
#define G_KB 128  /* scale block along K */
#define LT_WS_BYTES ((size_t)32 << 20)

/* Return DSC_ERR_CUDA naming the cuBLASLt status of a failing call. */
#define FP8_LT_TRY(call, fn)                                                              \
  do {                                                                                    \
    cublasStatus_t fp8_lt_s_ = (call);                                                    \
    if (fp8_lt_s_ != CUBLAS_STATUS_SUCCESS)                                               \
      return dsc_error(DSC_ERR_CUDA, (fn), "%s: %s (cublasStatus_t %d)", #call,           \
                       cublasLtGetStatusName(fp8_lt_s_), (int)fp8_lt_s_);                 \
  } while (0)

/* Output stores; bfloat16 rounds with numeric.h's dsc_f32_to_bf16 (the CPU's rounding). */
__device__ __forceinline__ void st_c(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_c(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = __ushort_as_bfloat16(dsc_f32_to_bf16(v));
}

static inline int is_e5(dsc_dtype t) { return t == DSC_DTYPE_FLOAT8_E5M2 ? 1 : 0; }
static inline __host__ __device__ int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- the project's kernel ---------------------------------------------------------------- */

enum { MODE_PLAIN = 0, MODE_GROUPED = 1, MODE_MASKED = 2 };

struct GemmArgs {
  int64_t M, N, K, Kb;  /* M: rows per batch (masked: Mmax) */
  const uint8_t *a;     /* [Bt, M, K] */
  const float *a_scale; /* [Bt, ceil(M/a_br), Kb] */
  int64_t a_br;
  const uint8_t *b;     /* [G or 1, N, K] */
  const float *b_scale; /* [G or 1, ceil(N/b_br), Kb] */
  int64_t b_br;
  void *c;              /* [Bt, M, N] */
  int mode;
  int64_t G;
  const int32_t *gidx;  /* grouped: offsets [G+1]; masked: masked_m [G]; else NULL */
  int ae5, be5;
};

struct GemmSmem {
  float lut_a[256], lut_b[256];  /* fp8 code -> float32 */
  float As[G_BK][G_BM + 1];      /* [k][m]; +1: conflict-free transposed stores */
  float Bs[G_BK][G_BN + 1];      /* [k][n] */
};

/* One output tile [m0, m0+64) x [n0, n0+64) of batch z, for its rows [r0, r1) with group
 * g's B; other rows are neither read nor written. Called uniformly by the whole CTA. */
template <typename TC>
__device__ void gemm_tile(const GemmArgs &p, GemmSmem &sm, int64_t z, int64_t g, int64_t m0,
                          int64_t n0, int64_t r0, int64_t r1) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t M = p.M, N = p.N, K = p.K, Kb = p.Kb;
  const uint8_t *A = p.a + z * M * K;                            /* [M, K] */
  const float *AS = p.a_scale + z * cdiv(M, p.a_br) * Kb;        /* [ceil(M/a_br), Kb] */
  const uint8_t *B = p.b + g * N * K;                            /* [N, K] */
  const float *BS = p.b_scale + g * cdiv(N, p.b_br) * Kb;        /* [ceil(N/b_br), Kb] */
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t kb = 0; kb < Kb; ++kb) {
    float part[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) part[i][j] = 0.0f;
    const int64_t kend = (kb + 1) * G_KB < K ? (kb + 1) * G_KB : K;
    for (int64_t k0 = kb * G_KB; k0 < kend; k0 += G_BK) {
      /* stage 64 x 32 of A and of B (decoded); out-of-range elements are 0 */
#pragma unroll
      for (int e = 0; e < (G_BM * G_BK) / 256; ++e) {
        const int idx = tid + 256 * e;
        const int r = idx / G_BK, kk = idx % G_BK;
        const int64_t gk = k0 + kk;
        const int64_t gm = m0 + r, gn = n0 + r;
        sm.As[kk][r] = (gm >= r0 && gm < r1 && gk < kend) ? sm.lut_a[A[gm * K + gk]] : 0.0f;
        sm.Bs[kk][r] = (gn < N && gk < kend) ? sm.lut_b[B[gn * K + gk]] : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < G_BK; ++kk) {
        float av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = sm.As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = sm.Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
      }
      __syncthreads();
    }
    /* promotion: scale this K block's partial sums and add them in FP32 */
    float sa[4], sb[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      sa[i] = (m >= r0 && m < r1) ? AS[(m / p.a_br) * Kb + kb] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      sb[j] = n < N ? BS[(n / p.b_br) * Kb + kb] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j] * sa[i] * sb[j];
  }

  TC *C = (TC *)p.c + z * M * N; /* [M, N] */
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m < r0 || m >= r1) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < N) st_c(C, m * N + n, acc[i][j]);
    }
  }
}

template <typename TC>
__global__ void __launch_bounds__(256) fp8_gemm_kernel(GemmArgs p) {
  __shared__ GemmSmem sm;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sm.lut_a[i] = p.ae5 ? dsc_e5m2_to_f32((uint8_t)i) : dsc_e4m3_to_f32((uint8_t)i);
    sm.lut_b[i] = p.be5 ? dsc_e5m2_to_f32((uint8_t)i) : dsc_e4m3_to_f32((uint8_t)i);
  }
  __syncthreads();
  const int64_t tiles_m = cdiv(p.M, G_BM), tiles_n = cdiv(p.N, G_BN);
  const int64_t batch = p.mode == MODE_MASKED ? p.G : 1;
  const int64_t total = batch * tiles_m * tiles_n;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t tn = t % tiles_n, rest = t / tiles_n;
    const int64_t tm = rest % tiles_m, z = rest / tiles_m;
    const int64_t m0 = tm * G_BM, n0 = tn * G_BN;
    const int64_t mend = m0 + G_BM < p.M ? m0 + G_BM : p.M;
    if (p.mode == MODE_PLAIN) {
      gemm_tile<TC>(p, sm, 0, 0, m0, n0, m0, mend);
    } else if (p.mode == MODE_MASKED) {
      int64_t mm = p.gidx[z];
      if (mm < m0) mm = m0;
      if (mm > mend) mm = mend;
      if (mm > m0) gemm_tile<TC>(p, sm, z, z, m0, n0, m0, mm);
      /* rows [mm, mend) of this tile are outside the group's mask: zeros */
      TC *C = (TC *)p.c + z * p.M * p.N;
      const int64_t nend = n0 + G_BN < p.N ? n0 + G_BN : p.N;
      const int64_t w = nend - n0, cnt = (mend - mm) * w;
      for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x)
        st_c(C, (mm + e / w) * p.N + n0 + e % w, 0.0f);
    } else {
      /* first group whose row range ends after m0 (offsets are non-decreasing) */
      int64_t lo = 0, hi = p.G; /* answer in [lo, hi] */
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if ((int64_t)p.gidx[mid + 1] > m0) hi = mid;
        else lo = mid + 1;
      }
      for (int64_t g = lo; g < p.G; ++g) {
        const int64_t o0 = p.gidx[g], o1 = p.gidx[g + 1];
        if (o0 >= mend) break;
        const int64_t s0 = o0 > m0 ? o0 : m0, s1 = o1 < mend ? o1 : mend;
        if (s1 > s0) gemm_tile<TC>(p, sm, 0, g, m0, n0, s0, s1);
      }
    }
  }
}

static dsc_status launch_own(dsc_context *ctx, const char *fn, const GemmArgs &p, dsc_dtype ct) {
  const int64_t batch = p.mode == MODE_MASKED ? p.G : 1;
  const int64_t total = batch * cdiv(p.M, G_BM) * cdiv(p.N, G_BN);
  if (total <= 0) return DSC_OK;
  const unsigned blocks = dsc_cuda_blocks(total, 1, 65535);
  if (ct == DSC_DTYPE_BFLOAT16)
    fp8_gemm_kernel<__nv_bfloat16><<<blocks, 256, 0, dsc_cuda_stream(ctx)>>>(p);
  else
    fp8_gemm_kernel<float><<<blocks, 256, 0, dsc_cuda_stream(ctx)>>>(p);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

/* ---- cuBLASLt path ------------------------------------------------------------------------- */

/* Compute capability major of the context's device (asked per call: no global state). */
static dsc_status device_major(dsc_context *ctx, const char *fn, int *major) {
  DSC_CUDA_TRY(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor,
                                      dsc_cuda_st(ctx)->device),
               fn);
  return DSC_OK;
}

/* The shape rules of the cuBLASLt path (shared by fp8_gemm_work and fp8_gemm). */
static bool lt_shape_ok(int major, int64_t M, int64_t N, int64_t K) {
  return major == 9 && K > 0 && K % G_KB == 0 && M > 0 && M % 4 == 0 && N > 0 && N % 16 == 0 &&
         M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX;
}

/* Floats of the rewritten scales of an operand with R rows (either tiling). */
static int64_t lt_scale_floats(int64_t R, int64_t Kb) {
  const int64_t vec = R * Kb, blk = cdiv(R, 128) * (cdiv(Kb, 4) * 4);
  return vec > blk ? vec : blk;
}

static size_t lt_work_bytes(int64_t M, int64_t N, int64_t K) {
  const int64_t Kb = cdiv(K, G_KB);
  /* + 256: `work` may be only 64-byte aligned (the ops layer carves at 64); the arrays
   * start at the next 256-byte boundary */
  return 256 + dsc_cuda_round256((size_t)lt_scale_floats(M, Kb) * 4) +
         dsc_cuda_round256((size_t)lt_scale_floats(N, Kb) * 4) + LT_WS_BYTES;
}

/* br == 1: dst [Kb, R] = src [R, Kb]^T (VEC128_32F: rows contiguous per K block).
 * br == 128: dst [ceil(R/128), Kb4] = src [ceil(R/128), Kb] with the rows padded to a
 * multiple of 4 floats (BLK128x128_32F), the padding 0. */
__global__ void lt_scale_kernel(int64_t R, int64_t Kb, int64_t br, const float *__restrict__ src,
                                float *__restrict__ dst) {
  const int64_t Kb4 = (Kb + 3) / 4 * 4;
  const int64_t n = br == 1 ? R * Kb : ((R + 127) / 128) * Kb4;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (br == 1) {
      const int64_t kb = i / R, r = i % R;
      dst[i] = src[r * Kb + kb];
    } else {
      const int64_t rb = i / Kb4, kb = i % Kb4;
      dst[i] = kb < Kb ? src[rb * Kb + kb] : 0.0f;
    }
  }
}

struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

/* Runs the plain GEMM through cuBLASLt; *done = false (DSC_OK) when it has no algorithm.
 * Row-major C [M,N] = column-major C^T [N,M] = B_lt^T-op ... : cuBLASLt's A is our b
 * (column-major [K,N], ld K, op T), its B our a (column-major [K,M], ld K, op N), D our
 * c (column-major [N,M], ld N): the TN layout FP8 requires. */
static dsc_status lt_fp8_gemm(dsc_context *ctx, const char *fn, int64_t M, int64_t N, int64_t K,
                              dsc_dtype at, const uint8_t *a, const float *a_scale, int64_t a_br,
                              dsc_dtype bt, const uint8_t *b, const float *b_scale, int64_t b_br,
                              dsc_dtype ct, void *c, void *work, bool *done) {
  *done = false;
  const int64_t Kb = K / G_KB;
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* the rewritten scales, then cuBLASLt's workspace, in `work` */
  char *base = (char *)work + ((256u - (uintptr_t)work % 256u) % 256u);
  float *sa = (float *)base;
  float *sb = (float *)(base + dsc_cuda_round256((size_t)lt_scale_floats(M, Kb) * 4));
  void *ws = (char *)sb + dsc_cuda_round256((size_t)lt_scale_floats(N, Kb) * 4);

  dsc_cuda_state *st = dsc_cuda_st(ctx);
  if (!st->lt) {
    cublasLtHandle_t nh = nullptr;
    FP8_LT_TRY(cublasLtCreate(&nh), fn);
    st->lt = (void *)nh;
  }
  cublasLtHandle_t h = (cublasLtHandle_t)st->lt;

  LtDescs d;
  FP8_LT_TRY(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), fn);
  const cublasOperation_t opa = CUBLAS_OP_T, opb = CUBLAS_OP_N;
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), fn);
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), fn);
  const int32_t mode_a = b_br == 1 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                   : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t mode_b = a_br == 1 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                   : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_a,
                                            sizeof mode_a),
             fn);
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_b,
                                            sizeof mode_b),
             fn);
  const void *pa = sb, *pb = sa; /* cuBLASLt A = our b, B = our a */
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pa,
                                            sizeof pa),
             fn);
  FP8_LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pb,
                                            sizeof pb),
             fn);
  const cudaDataType_t ta = is_e5(bt) ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  const cudaDataType_t tb = is_e5(at) ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  const cudaDataType_t tc = ct == DSC_DTYPE_BFLOAT16 ? CUDA_R_16BF : CUDA_R_32F;
  FP8_LT_TRY(cublasLtMatrixLayoutCreate(&d.a, ta, (uint64_t)K, (uint64_t)N, K), fn);
  FP8_LT_TRY(cublasLtMatrixLayoutCreate(&d.b, tb, (uint64_t)K, (uint64_t)M, K), fn);
  FP8_LT_TRY(cublasLtMatrixLayoutCreate(&d.c, tc, (uint64_t)N, (uint64_t)M, N), fn);

  FP8_LT_TRY(cublasLtMatmulPreferenceCreate(&d.pref), fn);
  const uint64_t ws_bytes = LT_WS_BYTES;
  FP8_LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws_bytes, sizeof ws_bytes),
             fn);
  cublasLtMatmulHeuristicResult_t res = {};
  int n_res = 0;
  cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(h, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &res, &n_res);
  if (hs == CUBLAS_STATUS_NOT_SUPPORTED || hs == CUBLAS_STATUS_INVALID_VALUE ||
      (hs == CUBLAS_STATUS_SUCCESS && n_res == 0))
    return DSC_OK; /* no algorithm for this combination: the caller falls back */
  FP8_LT_TRY(hs, fn);

  /* rewrite the scales (only now that cuBLASLt will run) */
  lt_scale_kernel<<<dsc_cuda_blocks(lt_scale_floats(M, Kb), 256), 256, 0, s>>>(M, Kb, a_br,
                                                                               a_scale, sa);
  DSC_CUDA_CHECK_LAUNCH(fn);
  lt_scale_kernel<<<dsc_cuda_blocks(lt_scale_floats(N, Kb), 256), 256, 0, s>>>(N, Kb, b_br,
                                                                               b_scale, sb);
  DSC_CUDA_CHECK_LAUNCH(fn);

  const float alpha = 1.0f, beta = 0.0f;
  cublasStatus_t ms = cublasLtMatmul(h, d.op, &alpha, b, d.a, a, d.b, &beta, c, d.c, c, d.c,
                                     &res.algo, ws, LT_WS_BYTES, s);
  if (ms == CUBLAS_STATUS_NOT_SUPPORTED) return DSC_OK; /* nothing ran: fall back */
  FP8_LT_TRY(ms, fn);
  *done = true;
  return DSC_OK;
}

/* ---- entry points -------------------------------------------------------------------------- */

extern "C" dsc_status dsc_cuda_fp8_gemm_work(dsc_context *ctx, int64_t G, int64_t M, int64_t N,
                                             int64_t K, dsc_dtype ct, size_t *bytes) {
  static const char *const FN = "dsc_cuda_fp8_gemm_work";
  (void)ct;
  *bytes = 0;
  /* Only the plain GEMM's cuBLASLt path needs memory; the own kernel needs none. */
  if (G != 1 || M <= 0 || N <= 0 || K <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  int major = 0;
  DSC_TRY(device_major(ctx, FN, &major));
  if (lt_shape_ok(major, M, N, K)) *bytes = lt_work_bytes(M, N, K);
  return DSC_OK;
}

extern "C" dsc_status dsc_cuda_fp8_gemm(dsc_context *ctx, int64_t M, int64_t N, int64_t K,
                                        dsc_dtype at, const uint8_t *a /*[M,K]*/,
                                        const float *a_scale /*[ceil(M/a_br),Kb]*/,
                                        int64_t a_br, dsc_dtype bt, const uint8_t *b /*[N,K]*/,
                                        const float *b_scale /*[ceil(N/b_br),Kb]*/,
                                        int64_t b_br, dsc_dtype ct, void *c /*[M,N] ct*/,
                                        void *work) {
  static const char *const FN = "dsc_cuda_fp8_gemm";
  if (M <= 0 || N <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  if (work && (a_br == 1 || a_br == 128) && (b_br == 1 || b_br == 128) &&
      !(a_br == 128 && b_br == 128) && !(is_e5(at) && is_e5(bt)) && dsc_cuda_aligned(a, 16) &&
      dsc_cuda_aligned(b, 16) && dsc_cuda_aligned(c, 16) && dsc_cuda_aligned(work, 16)) {
    int major = 0;
    DSC_TRY(device_major(ctx, FN, &major));
    if (lt_shape_ok(major, M, N, K)) {
      bool done = false;
      DSC_TRY(lt_fp8_gemm(ctx, FN, M, N, K, at, a, a_scale, a_br, bt, b, b_scale, b_br, ct, c,
                          work, &done));
      if (done) return DSC_OK;
      dsc_log(ctx, DSC_LOG_DEBUG,
              "%s: cuBLASLt has no block-scaled FP8 algorithm for M=%lld N=%lld K=%lld; using "
              "the own kernel",
              FN, (long long)M, (long long)N, (long long)K);
    }
  }
  GemmArgs p;
  p.M = M;
  p.N = N;
  p.K = K > 0 ? K : 0;
  p.Kb = cdiv(p.K, G_KB);
  p.a = a;
  p.a_scale = a_scale;
  p.a_br = a_br;
  p.b = b;
  p.b_scale = b_scale;
  p.b_br = b_br;
  p.c = c;
  p.mode = MODE_PLAIN;
  p.G = 1;
  p.gidx = NULL;
  p.ae5 = is_e5(at);
  p.be5 = is_e5(bt);
  return launch_own(ctx, FN, p, ct);
}

extern "C" dsc_status dsc_cuda_fp8_grouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N,
                                                int64_t K, dsc_dtype at,
                                                const uint8_t *a /*[M,K]*/,
                                                const float *a_scale /*[M,Kb]*/, dsc_dtype bt,
                                                const uint8_t *b /*[G,N,K]*/,
                                                const float *b_scale /*[G,ceil(N/128),Kb]*/,
                                                const int32_t *offsets /*[G+1] device*/,
                                                const int32_t *offs_h /*[G+1] host*/,
                                                dsc_dtype ct, void *c /*[M,N] ct*/, void *work) {
  static const char *const FN = "dsc_cuda_fp8_grouped_gemm";
  (void)offs_h;
  (void)work;
  if (M <= 0 || N <= 0 || G <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  GemmArgs p;
  p.M = M;
  p.N = N;
  p.K = K > 0 ? K : 0;
  p.Kb = cdiv(p.K, G_KB);
  p.a = a;
  p.a_scale = a_scale;
  p.a_br = 1;
  p.b = b;
  p.b_scale = b_scale;
  p.b_br = 128;
  p.c = c;
  p.mode = MODE_GROUPED;
  p.G = G;
  p.gidx = offsets;
  p.ae5 = is_e5(at);
  p.be5 = is_e5(bt);
  return launch_own(ctx, FN, p, ct);
}

extern "C" dsc_status dsc_cuda_fp8_grouped_gemm_masked(
    dsc_context *ctx, int64_t G, int64_t Mmax, int64_t N, int64_t K, dsc_dtype at,
    const uint8_t *a /*[G,Mmax,K]*/, const float *a_scale /*[G,Mmax,Kb]*/, dsc_dtype bt,
    const uint8_t *b /*[G,N,K]*/, const float *b_scale /*[G,ceil(N/128),Kb]*/,
    const int32_t *masked_m /*[G] device*/, const int32_t *mm_h /*[G] host*/, dsc_dtype ct,
    void *c /*[G,Mmax,N] ct*/, void *work) {
  static const char *const FN = "dsc_cuda_fp8_grouped_gemm_masked";
  (void)mm_h;
  (void)work;
  if (G <= 0 || Mmax <= 0 || N <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  GemmArgs p;
  p.M = Mmax;
  p.N = N;
  p.K = K > 0 ? K : 0;
  p.Kb = cdiv(p.K, G_KB);
  p.a = a;
  p.a_scale = a_scale;
  p.a_br = 1;
  p.b = b;
  p.b_scale = b_scale;
  p.b_br = 128;
  p.c = c;
  p.mode = MODE_MASKED;
  p.G = G;
  p.gidx = masked_m;
  p.ae5 = is_e5(at);
  p.be5 = is_e5(bt);
  return launch_own(ctx, FN, p, ct);
}
