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
 * Paths (the reason for the one taken goes to the context's debug log):
 *  - cuBLASLt block-scaled FP8 (plain fp8_gemm only) when built with CUDA >= 12.9, run
 *    on compute capability 9.x with cuBLASLt >= 12.9, and the problem fits its rules
 *    (blaslt_host.h, dsc_lt_fp8_block_rule): K a positive multiple of 128, M % 4 == 0,
 *    N % 16 == 0, 16-byte aligned a, b, c, not two E5M2 operands, scales 1x128
 *    (VEC128_32F) or 128x128 (BLK128x128_32F) but not both 128x128, and a `work` buffer
 *    (the size fp8_gemm_work reported). The scales are rewritten into `work` in
 *    cuBLASLt's layout first (VEC128: [Kb, rows], rows contiguous; BLK128x128:
 *    [ceil(rows/128), Kb4] with Kb4 = Kb rounded up to 4). The descriptors and algorithm
 *    are cached per problem in the context (blaslt.cu). If cuBLASLt has no algorithm,
 *    the own kernels run.
 *  - The tensor-core kernel (fp8_grouped_mma.cu: mma.sync m16n8k32 E4M3, sm_89+) for
 *    plain, grouped and masked GEMMs with E4M3 operands, K % 16 == 0, 16-byte aligned a
 *    and b.
 *  - Otherwise the SIMT kernel (any M, N, K, arch): 64x64 output tiles, 256 threads
 *    with 4x4 outputs each, fp8 decoded through a 256-entry table (exact, NaN codes give
 *    NaN) into float32 shared-memory tiles, FP32 FMA partials per 128-wide K block, then
 *    acc += partial * sa * sb. Grouped: one launch; each 64-row tile finds the groups
 *    whose rows it holds (binary search in the device offsets) and computes each group's
 *    rows with that expert's B. Masked: one launch over G x tiles; rows >= masked_m[g]
 *    are written as 0.
 * Deterministic (fixed summation order, no atomics); 64-bit index math; grid-stride.
 */
#include <string.h>

#include "blaslt.cuh"
#include "common.cuh"
#include "fp8_format.h"
#include "fp8_mma_tile.cuh"

/* fp8_grouped_mma.cu: the tensor-core kernel and its rules */
dsc_status dsc_fp8_mma_ok(dsc_context *ctx, const char *fn, const Fp8MmaArgs &p, dsc_dtype at,
                          dsc_dtype bt, dsc_dtype ct, bool *ok, const char **why);
dsc_status dsc_fp8_mma_launch(dsc_context *ctx, const char *fn, const Fp8MmaArgs &p,
                              dsc_dtype ct);

#define G_BM 64   /* output tile rows (M) */
#define G_BN 64   /* output tile columns (N) */
#define G_BK 32   /* K slice staged in shared memory per step */
#define G_KB 128  /* scale block along K */
#define LT_WS_BYTES ((size_t)32 << 20)

/* Output stores; bfloat16 rounds with numeric.h's dsc_f32_to_bf16 (the CPU's rounding). */
__device__ __forceinline__ void st_c(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_c(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = __ushort_as_bfloat16(dsc_f32_to_bf16(v));
}

static inline int is_e5(dsc_dtype t) { return t == DSC_DTYPE_FLOAT8_E5M2 ? 1 : 0; }
static inline __host__ __device__ int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- the project's kernel ---------------------------------------------------------------- */

enum { MODE_PLAIN = 0, MODE_GROUPED = 1, MODE_MASKED = 2, MODE_KGROUPED = 3 };

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

/* One output tile [m0, m0+64) x [n0, n0+64) of batch z (C of batch zc), for its rows
 * [r0, r1) with group g's B, over the K blocks [kb0, kb1) (all but in the K-grouped mode);
 * other rows are neither read nor written. Called uniformly by the whole CTA. */
template <typename TC>
__device__ void gemm_tile(const GemmArgs &p, GemmSmem &sm, int64_t z, int64_t g, int64_t zc, int64_t m0,
                          int64_t n0, int64_t r0, int64_t r1, int64_t kb0, int64_t kb1) {
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

  (void)Kb;
  for (int64_t kb = kb0; kb < kb1; ++kb) {
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

  TC *C = (TC *)p.c + zc * M * N; /* [M, N] */
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

/* KG: the K-grouped mode only (its own instantiation: the other modes keep their registers). */
template <typename TC, bool KG>
__global__ void __launch_bounds__(256) fp8_gemm_kernel(GemmArgs p) {
  __shared__ GemmSmem sm;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sm.lut_a[i] = p.ae5 ? dsc_e5m2_to_f32((uint8_t)i) : dsc_e4m3_to_f32((uint8_t)i);
    sm.lut_b[i] = p.be5 ? dsc_e5m2_to_f32((uint8_t)i) : dsc_e4m3_to_f32((uint8_t)i);
  }
  __syncthreads();
  const int64_t tiles_m = cdiv(p.M, G_BM), tiles_n = cdiv(p.N, G_BN);
  const int64_t batch = (p.mode == MODE_MASKED || p.mode == MODE_KGROUPED) ? p.G : 1;
  const int64_t total = batch * tiles_m * tiles_n;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t tn = t % tiles_n, rest = t / tiles_n;
    const int64_t tm = rest % tiles_m, z = rest / tiles_m;
    const int64_t m0 = tm * G_BM, n0 = tn * G_BN;
    const int64_t mend = m0 + G_BM < p.M ? m0 + G_BM : p.M;
    if (KG) {
      int64_t kb0, kb1; /* group z's 128-token blocks (G_KB == MT_BK) */
      mt_kgroup_blocks(p.gidx, z, &kb0, &kb1);
      gemm_tile<TC>(p, sm, 0, 0, z, m0, n0, m0, mend, kb0, kb1);
    } else if (p.mode == MODE_PLAIN) {
      gemm_tile<TC>(p, sm, 0, 0, 0, m0, n0, m0, mend, 0, p.Kb);
    } else if (p.mode == MODE_MASKED) {
      int64_t mm = p.gidx[z];
      if (mm < m0) mm = m0;
      if (mm > mend) mm = mend;
      if (mm > m0) gemm_tile<TC>(p, sm, z, z, z, m0, n0, m0, mm, 0, p.Kb);
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
        if (s1 > s0) gemm_tile<TC>(p, sm, 0, g, 0, m0, n0, s0, s1, 0, p.Kb);
      }
      /* rows past every group (offsets[G] <= M: the MoE layer's row bound): zeros */
      const int64_t mz = mt_masked_end(p.gidx[p.G], m0, mend);
      TC *C = (TC *)p.c;
      const int64_t nend = n0 + G_BN < p.N ? n0 + G_BN : p.N;
      const int64_t w = nend - n0, cnt = (mend - mz) * w;
      for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) st_c(C, (mz + e / w) * p.N + n0 + e % w, 0.0f);
    }
  }
}

static dsc_status launch_simt(dsc_context *ctx, const char *fn, const GemmArgs &p, dsc_dtype ct) {
  const int64_t batch = (p.mode == MODE_MASKED || p.mode == MODE_KGROUPED) ? p.G : 1;
  const int64_t total = batch * cdiv(p.M, G_BM) * cdiv(p.N, G_BN);
  if (total <= 0) return DSC_OK;
  const unsigned blocks = dsc_cuda_blocks(total, 1, 65535);
  if (p.mode == MODE_KGROUPED) /* the weight gradient: float32 out */
    fp8_gemm_kernel<float, true><<<blocks, 256, 0, dsc_cuda_stream(ctx)>>>(p);
  else if (ct == DSC_DTYPE_BFLOAT16)
    fp8_gemm_kernel<__nv_bfloat16, false><<<blocks, 256, 0, dsc_cuda_stream(ctx)>>>(p);
  else
    fp8_gemm_kernel<float, false><<<blocks, 256, 0, dsc_cuda_stream(ctx)>>>(p);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}

/* The project's kernels: the tensor-core one (fp8_grouped_mma.cu) when its rules hold on
 * this device, else the SIMT one; the reason for the SIMT path goes to the debug log. */
static dsc_status launch_own(dsc_context *ctx, const char *fn, const GemmArgs &p, dsc_dtype ct) {
  Fp8MmaArgs m;
  m.M = p.M;
  m.N = p.N;
  m.K = p.K;
  m.Kb = p.Kb;
  m.a = p.a;
  m.a_scale = p.a_scale;
  m.a_br = p.a_br;
  m.b = p.b;
  m.b_scale = p.b_scale;
  m.b_br = p.b_br;
  m.c = p.c;
  m.mode = p.mode == MODE_PLAIN     ? MT_MODE_PLAIN
           : p.mode == MODE_GROUPED ? MT_MODE_GROUPED
           : p.mode == MODE_MASKED  ? MT_MODE_MASKED
                                    : MT_MODE_KGROUPED;
  m.G = p.G;
  m.gidx = p.gidx;
  bool ok = false;
  const char *why = NULL;
  DSC_TRY(dsc_fp8_mma_ok(ctx, fn, m, p.ae5 ? DSC_DTYPE_FLOAT8_E5M2 : DSC_DTYPE_FLOAT8_E4M3FN,
                         p.be5 ? DSC_DTYPE_FLOAT8_E5M2 : DSC_DTYPE_FLOAT8_E4M3FN, ct, &ok, &why));
  if (ok) {
    dsc_log(ctx, DSC_LOG_DEBUG, "%s: tensor-core FP8 kernel (mma.sync e4m3) for M=%lld N=%lld K=%lld",
            fn, (long long)p.M, (long long)p.N, (long long)p.K);
    return dsc_fp8_mma_launch(ctx, fn, m, ct);
  }
  dsc_log(ctx, DSC_LOG_DEBUG,
          "%s: SIMT FP8 kernel for M=%lld N=%lld K=%lld (tensor-core kernel not used: %s)", fn,
          (long long)p.M, (long long)p.N, (long long)p.K, why);
  return launch_simt(ctx, fn, p, ct);
}

/* ---- cuBLASLt path ------------------------------------------------------------------------- */

/* Compute capability major of the context's device (asked per call: no global state). */
static dsc_status device_major(dsc_context *ctx, const char *fn, int *major) {
  DSC_CUDA_TRY(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor,
                                      dsc_cuda_st(ctx)->device),
               fn);
  return DSC_OK;
}

/* Why cuBLASLt's block-scaled FP8 GEMM cannot run (NULL: it may), blaslt_host.h's rules
 * with this build's CUDA version, the loaded cuBLASLt and the device. */
static const char *lt_rule(int major, int64_t M, int64_t N, int64_t K, int64_t a_br, int64_t b_br,
                           int ae5, int be5, int aligned16, int have_work) {
  return dsc_lt_fp8_block_rule(CUDART_VERSION, (int64_t)cublasLtGetVersion(), major, M, N, K, a_br,
                               b_br, ae5, be5, aligned16, have_work);
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

/* Runs the plain GEMM through cuBLASLt (blaslt.cu, plan cached per problem); *done = false
 * (DSC_OK) when it has no algorithm. Row-major C [M,N] is column-major C^T [N,M]:
 * cuBLASLt's A is our b (column-major [K,N], ld K, op T), its B our a (column-major
 * [K,M], ld K, op N), D our c (column-major [N,M], ld N): the TN layout FP8 requires. */
static dsc_status lt_fp8_gemm(dsc_context *ctx, const char *fn, int64_t M, int64_t N, int64_t K,
                              dsc_dtype at, const uint8_t *a, const float *a_scale, int64_t a_br,
                              dsc_dtype bt, const uint8_t *b, const float *b_scale, int64_t b_br,
                              dsc_dtype ct, void *c, void *work, bool *done) {
#if CUDART_VERSION >= 12090
  *done = false;
  const int64_t Kb = K / G_KB;
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* the rewritten scales, then cuBLASLt's workspace, in `work` */
  char *base = (char *)work + ((256u - (uintptr_t)work % 256u) % 256u);
  float *sa = (float *)base;
  float *sb = (float *)(base + dsc_cuda_round256((size_t)lt_scale_floats(M, Kb) * 4));
  void *ws = (char *)sb + dsc_cuda_round256((size_t)lt_scale_floats(N, Kb) * 4);

  DscLtProblem pr;
  pr.compute = CUBLAS_COMPUTE_32F;
  pr.opa = CUBLAS_OP_T;
  pr.opb = CUBLAS_OP_N;
  pr.ta = is_e5(bt) ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  pr.tb = is_e5(at) ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
  pr.tc = ct == DSC_DTYPE_BFLOAT16 ? CUDA_R_16BF : CUDA_R_32F;
  pr.m = N;
  pr.n = M;
  pr.k = K;
  pr.lda = K;
  pr.ldb = K;
  pr.ldc = N;
  pr.batch = 1;
  pr.sa = pr.sb = pr.sc = 0;
  pr.scale_a = b_br == 1 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                         : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  pr.scale_b = a_br == 1 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                         : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  pr.al_a = dsc_cuda_alignment(b, K);
  pr.al_b = dsc_cuda_alignment(a, K);
  pr.al_c = dsc_cuda_alignment(c, N * (ct == DSC_DTYPE_BFLOAT16 ? 2 : 4));
  pr.ws_bytes = LT_WS_BYTES;
  /* rewrite the scales into cuBLASLt's layouts first (stream-ordered before the GEMM;
   * harmless if cuBLASLt then declines: `work` is scratch) */
  lt_scale_kernel<<<dsc_cuda_blocks(lt_scale_floats(M, Kb), 256), 256, 0, s>>>(M, Kb, a_br,
                                                                               a_scale, sa);
  DSC_CUDA_CHECK_LAUNCH(fn);
  lt_scale_kernel<<<dsc_cuda_blocks(lt_scale_floats(N, Kb), 256), 256, 0, s>>>(N, Kb, b_br,
                                                                               b_scale, sb);
  DSC_CUDA_CHECK_LAUNCH(fn);
  const float alpha = 1.0f, beta = 0.0f;
  /* cuBLASLt A = our b (scales sb), B = our a (scales sa) */
  return dsc_lt_matmul(ctx, fn, pr, &alpha, b, a, &beta, c, sb, sa, ws, done);
#else
  (void)ctx, (void)fn, (void)M, (void)N, (void)K, (void)at, (void)a, (void)a_scale, (void)a_br;
  (void)bt, (void)b, (void)b_scale, (void)b_br, (void)ct, (void)c, (void)work;
  *done = false; /* lt_rule never admits this build */
  return DSC_OK;
#endif
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
  /* the shape rules only: the operands' formats and alignment are known at the call */
  if (!lt_rule(major, M, N, K, 1, 128, 0, 0, 1, 1)) *bytes = lt_work_bytes(M, N, K);
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
  int major = 0;
  DSC_TRY(device_major(ctx, FN, &major));
  const int aligned16 = dsc_cuda_aligned(a, 16) && dsc_cuda_aligned(b, 16) &&
                        dsc_cuda_aligned(c, 16) && dsc_cuda_aligned(work, 16);
  const char *why =
      lt_rule(major, M, N, K, a_br, b_br, is_e5(at), is_e5(bt), aligned16, work != NULL);
  if (!why) {
    bool done = false;
    DSC_TRY(lt_fp8_gemm(ctx, FN, M, N, K, at, a, a_scale, a_br, bt, b, b_scale, b_br, ct, c,
                        work, &done));
    if (done) {
      dsc_log(ctx, DSC_LOG_DEBUG, "%s: cuBLASLt block-scaled FP8 for M=%lld N=%lld K=%lld", FN,
              (long long)M, (long long)N, (long long)K);
      return DSC_OK;
    }
    why = "cuBLASLt has no block-scaled FP8 algorithm for it";
  }
  dsc_log(ctx, DSC_LOG_DEBUG, "%s: M=%lld N=%lld K=%lld not on cuBLASLt: %s", FN, (long long)M,
          (long long)N, (long long)K, why);
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

/* The K-grouped GEMM of the MoE weight gradient (fp8_layers.h): c [G,M,N] float32, group g
 * summing the 128-blocks of its K (token) range offsets[g]..offsets[g+1] (device, multiples
 * of 128: the FP8 layer's alignment) of a [M,K] and b [N,K], both with per-row 1x128 scales
 * [M,Kb] / [N,Kb]. One launch, no host copy of the offsets. */
extern "C" dsc_status dsc_cuda_fp8_kgrouped_gemm(dsc_context *ctx, int64_t G, int64_t M, int64_t N,
                                                 int64_t K, const uint8_t *a /*[M,K]*/,
                                                 const float *a_scale /*[M,Kb]*/,
                                                 const uint8_t *b /*[N,K]*/,
                                                 const float *b_scale /*[N,Kb]*/,
                                                 const int32_t *offsets /*[G+1] device*/,
                                                 const int32_t *offs_h /*unused (CPU twin's)*/,
                                                 float *c /*[G,M,N]*/, void *work) {
  static const char *const FN = "dsc_cuda_fp8_kgrouped_gemm";
  (void)offs_h;
  (void)work;
  static_assert(G_KB == MT_BK, "a K group's blocks are the 128-token scale blocks of both kernels");
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
  p.b_br = 1;
  p.c = c;
  p.mode = MODE_KGROUPED;
  p.G = G;
  p.gidx = offsets;
  p.ae5 = 0;
  p.be5 = 0;
  return launch_own(ctx, FN, p, DSC_DTYPE_FLOAT32);
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

/* ---- scale validation on the device --------------------------------------------------------- */

/* first: [1] the lowest position of a checked scale that is not finite or not > 0 (~0:
 * none so far); checked as in backend.h's fp8_scales_check. */
__global__ void scales_first_bad_kernel(int64_t n, const float *__restrict__ v /* [n] */,
                                        const int32_t *__restrict__ masked_m /* [n/group] */,
                                        int64_t group, int64_t row,
                                        unsigned long long *first /* [1] */) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (masked_m && i % group >= (int64_t)masked_m[i / group] * row) continue;
    const float x = v[i];
    if (!(isfinite(x) && x > 0.0f)) {
      atomicMin(first, (unsigned long long)i);
      return; /* the rest of this thread's slice lies at higher positions */
    }
  }
}

/* value: [1] the bits of v[*first] when one was found. */
__global__ void scales_value_kernel(const float *__restrict__ v,
                                    const unsigned long long *first /* [1] */,
                                    unsigned long long *value /* [1] */) {
  const unsigned long long f = *first;
  if (f != ~0ull) *value = (unsigned long long)__float_as_uint(v[f]);
}

extern "C" dsc_status dsc_cuda_fp8_scales_check(dsc_context *ctx, int64_t n,
                                                const float *v /*[n]*/,
                                                const int32_t *masked_m /*[n/group] or NULL*/,
                                                int64_t group, int64_t row, int64_t *bad_pos,
                                                float *bad_value) {
  static const char *const FN = "dsc_cuda_fp8_scales_check";
  *bad_pos = -1;
  *bad_value = 0.0f;
  if (n <= 0) return DSC_OK;
  DSC_CUDA_ENTER(ctx, FN);
  dsc_cuda_state *st = dsc_cuda_st(ctx);
  cudaStream_t s = dsc_cuda_stream(ctx);
  /* scratch: [0] first bad position, [1] the bits of its value; one 16-byte copy back */
  unsigned long long *first = (unsigned long long *)st->scratch;
  DSC_CUDA_TRY(cudaMemsetAsync(first, 0xff, 2 * sizeof(unsigned long long), s), FN);
  scales_first_bad_kernel<<<dsc_cuda_blocks(n, 256, 4096), 256, 0, s>>>(n, v, masked_m, group,
                                                                        row, first);
  DSC_CUDA_CHECK_LAUNCH(FN);
  scales_value_kernel<<<1, 1, 0, s>>>(v, first, first + 1);
  DSC_CUDA_CHECK_LAUNCH(FN);
  unsigned long long *host = (unsigned long long *)st->pinned; /* [2] */
  DSC_CUDA_TRY(cudaMemcpyAsync(host, first, 2 * sizeof(unsigned long long),
                               cudaMemcpyDeviceToHost, s),
               FN);
  DSC_CUDA_TRY(cudaStreamSynchronize(s), FN);
  if (host[0] != ~0ull) {
    *bad_pos = (int64_t)host[0];
    const uint32_t bits = (uint32_t)host[1];
    memcpy(bad_value, &bits, sizeof bits);
  }
  return DSC_OK;
}
