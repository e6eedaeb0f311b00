/*
 * kernels/fp8_grouped_mma.cu -- the tensor-core block-scaled FP8 GEMM (E4M3 x E4M3):
 * plain, grouped contiguous (rows grouped by expert, offsets), grouped masked
 * (masked_m) and K-grouped (the MoE weight gradient: group g sums the K blocks of its 128-
 * aligned token range into its own C, fp8_mma_tile.cuh mt_kgroup_blocks), on mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (sm_89 and newer).
 * fp8_gemm.cu calls dsc_fp8_mma_launch when its rules hold; otherwise the SIMT kernel runs.
 *
 * Legend, math and layouts as in fp8_gemm.cu: C[m,n] = sum_kb (sum_{k in kb} A[m,k] B[n,k])
 *   * sa(m,kb) * sb(n,kb). The index math is kernels/fp8_mma_tile.cuh (tested on the CPU by
 *   tests/c/test_fp8_mma_tile.cpp, which simulates this kernel's warps with it).
 *
 * Per CTA (128 threads, 4 warps in 2 x 2): a 64 x 64 tile of C. Per 128-wide K block the
 * A and B tiles [64][128] bytes are copied to shared memory with cp.async (16-byte chunks,
 * zero-filled outside the valid rows and K; double-buffered: block kb+1 loads while kb
 * multiplies); each warp runs 4 k32 steps of 2 x 4 MMAs into FP32 partials, then promotes
 * them: acc += partial * sa * sb (DeepSeek's per-128 promotion, FP32 total). Grouped: each
 * tile computes, per group its rows span, those rows with that group's B (a group aligned
 * to 64 rows, e.g. DeepGEMM's 128, never shares a tile). Masked: rows >= masked_m[g] of
 * group g are written as 0. Deterministic: a fixed order, no atomics.
 * Rules (checked by dsc_fp8_mma_ok): K > 0 and K % 16 == 0 (whole chunks), a and b 16-byte
 * aligned, both operands E4M3, and a kernel binary for sm_89+ (cudaFuncGetAttributes).
 */
#include "common.cuh"
#include "fp8_format.h"
#include "fp8_mma_tile.cuh"

static_assert(MT_BM == MT_BN, "load_stage copies A and B tiles of the same number of rows");
static_assert(MT_THREADS == MT_WARPS * 32 && MT_WARPS == 4, "2 x 2 warps of 32 x 32");

namespace {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define MT_HAS_MMA 1
#endif

struct MmaSmem {
  alignas(16) uint8_t a[2][MT_BM * MT_SROW]; /* [stage][row m][k], padded rows */
  alignas(16) uint8_t b[2][MT_BN * MT_SROW]; /* [stage][row n][k] */
};

#ifdef MT_HAS_MMA
__device__ __forceinline__ void st_out(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_out(__nv_bfloat16 *p, int64_t i, float v) {
  p[i] = __ushort_as_bfloat16(dsc_f32_to_bf16(v)); /* the CPU's rounding */
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int bytes) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* d += a (16x32) * b (32x8), e4m3 inputs, f32 accumulate. */
__device__ __forceinline__ void mma_e4m3(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Copy K block kb of the tile into stage st: A rows [r0, r1) of [m0, m0+64), B rows < N. */
__device__ __forceinline__ void load_stage(MmaSmem &sm, int st, const uint8_t *A /* [M,K] */,
                                           const uint8_t *B /* [N,K] */, int64_t K, int64_t N,
                                           int64_t m0, int64_t n0, int64_t r0, int64_t r1,
                                           int64_t kb) {
  for (int c = threadIdx.x; c < MT_BM * MT_CHUNKS_PER_ROW; c += MT_THREADS) {
    const int row = mt_chunk_row(c), kc = mt_chunk_k(c);
    const int64_t k = kb * MT_BK + kc;
    const int64_t gm = m0 + row, gn = n0 + row;
    const int ba = mt_chunk_bytes(gm, r0, r1, k, K), bb = mt_chunk_bytes(gn, 0, N, k, K);
    /* a zero-byte copy still needs a valid address: the matrix start */
    cp_async16(&sm.a[st][mt_smem_off(row, kc)], ba ? A + gm * K + k : A, ba);
    cp_async16(&sm.b[st][mt_smem_off(row, kc)], bb ? B + gn * K + k : B, bb);
  }
  cp_commit();
}

/* Rows [r0, r1) (inside [m0, m0+64)) of the tile at (m0, n0): A of batch z, B of group g,
 * C of batch zc, over the K blocks [kb0, kb1) (all of them but in the K-grouped mode; an
 * empty range writes zeros). */
template <typename TC>
__device__ void mma_tile(const Fp8MmaArgs &p, MmaSmem &sm, int64_t z, int64_t g, int64_t zc, int64_t m0,
                         int64_t n0, int64_t r0, int64_t r1, int64_t kb0, int64_t kb1) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t M = p.M, N = p.N, K = p.K, Kb = p.Kb;
  const uint8_t *A = p.a + z * M * K;                                 /* [M, K] */
  const float *AS = p.a_scale + z * ((M + p.a_br - 1) / p.a_br) * Kb; /* [ceil(M/a_br), Kb] */
  const uint8_t *B = p.b + g * N * K;                                 /* [N, K] */
  const float *BS = p.b_scale + g * ((N + p.b_br - 1) / p.b_br) * Kb; /* [ceil(N/b_br), Kb] */

  float acc[MT_FM][MT_FN][4];
#pragma unroll
  for (int i = 0; i < MT_FM; ++i)
#pragma unroll
    for (int j = 0; j < MT_FN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  if (kb0 < kb1) load_stage(sm, 0, A, B, K, N, m0, n0, r0, r1, kb0);
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int st = (int)((kb - kb0) & 1);
    if (kb + 1 < kb1) {
      load_stage(sm, st ^ 1, A, B, K, N, m0, n0, r0, r1, kb + 1);
      cp_wait<1>(); /* this block's group is done, the next may still fly */
    } else {
      cp_wait<0>();
    }
    __syncthreads();

    float part[MT_FM][MT_FN][4];
#pragma unroll
    for (int i = 0; i < MT_FM; ++i)
#pragma unroll
      for (int j = 0; j < MT_FN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[i][j][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < MT_BK / 32; ++ks) {
      uint32_t af[MT_FM][4], bf[MT_FN][2];
#pragma unroll
      for (int i = 0; i < MT_FM; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          af[i][r] = *(const uint32_t *)&sm.a[st][mt_a_frag_off(w, i, ks, lane, r)];
#pragma unroll
      for (int j = 0; j < MT_FN; ++j)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          bf[j][r] = *(const uint32_t *)&sm.b[st][mt_b_frag_off(w, j, ks, lane, r)];
#pragma unroll
      for (int i = 0; i < MT_FM; ++i)
#pragma unroll
        for (int j = 0; j < MT_FN; ++j) mma_e4m3(part[i][j], af[i], bf[j]);
    }

    /* promotion: this K block's partial sums, scaled, into the FP32 totals */
    float sa[MT_FM][2], sb[MT_FN][2];
#pragma unroll
    for (int i = 0; i < MT_FM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + mt_warp_m0(w) + i * 16 + mt_c_row(lane, 2 * h);
        sa[i][h] = (m >= r0 && m < r1) ? AS[mt_scale_idx(m, kb, p.a_br, Kb)] : 0.0f;
      }
#pragma unroll
    for (int j = 0; j < MT_FN; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = n0 + mt_warp_n0(w) + j * 8 + mt_c_col(lane, h);
        sb[j][h] = n < N ? BS[mt_scale_idx(n, kb, p.b_br, Kb)] : 0.0f;
      }
#pragma unroll
    for (int i = 0; i < MT_FM; ++i)
#pragma unroll
      for (int j = 0; j < MT_FN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] += part[i][j][e] * sa[i][e >> 1] * sb[j][e & 1];
    __syncthreads(); /* every warp is done with stage st before it is refilled */
  }

  TC *C = (TC *)p.c + zc * M * N; /* [M, N] */
#pragma unroll
  for (int i = 0; i < MT_FM; ++i)
#pragma unroll
    for (int j = 0; j < MT_FN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + mt_warp_m0(w) + i * 16 + mt_c_row(lane, e);
        const int64_t n = n0 + mt_warp_n0(w) + j * 8 + mt_c_col(lane, e);
        if (m >= r0 && m < r1 && n < N) st_out(C, m * N + n, acc[i][j][e]);
      }
}
#endif /* MT_HAS_MMA */

/* KG: the K-grouped mode only (its own instantiation, so the row-grouped kernels keep their
 * registers); else plain, grouped or masked by p.mode. */
template <typename TC, bool KG>
__global__ void __launch_bounds__(MT_THREADS) fp8_mma_kernel(Fp8MmaArgs p) {
#ifdef MT_HAS_MMA
  __shared__ MmaSmem sm;
  const int64_t tiles_m = (p.M + MT_BM - 1) / MT_BM, tiles_n = (p.N + MT_BN - 1) / MT_BN;
  const int64_t batch = (p.mode == MT_MODE_MASKED || p.mode == MT_MODE_KGROUPED) ? p.G : 1;
  const int64_t total = batch * tiles_m * tiles_n;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    int64_t z, tm, tn;
    mt_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
    const int64_t m0 = tm * MT_BM, n0 = tn * MT_BN;
    const int64_t mend = m0 + MT_BM < p.M ? m0 + MT_BM : p.M;
    if (KG) {
      int64_t kb0, kb1;
      mt_kgroup_blocks(p.gidx, z, &kb0, &kb1);
      mma_tile<TC>(p, sm, 0, 0, z, m0, n0, m0, mend, kb0, kb1);
    } else if (p.mode == MT_MODE_PLAIN) {
      mma_tile<TC>(p, sm, 0, 0, 0, m0, n0, m0, mend, 0, p.Kb);
    } else if (p.mode == MT_MODE_MASKED) {
      const int64_t mm = mt_masked_end(p.gidx[z], m0, mend);
      if (mm > m0) mma_tile<TC>(p, sm, z, z, z, m0, n0, m0, mm, 0, p.Kb);
      TC *C = (TC *)p.c + z * p.M * p.N; /* rows [mm, mend): outside the mask, zeros */
      const int64_t nend = n0 + MT_BN < p.N ? n0 + MT_BN : p.N;
      const int64_t wd = nend - n0, cnt = (mend - mm) * wd;
      for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x)
        st_out(C, (mm + e / wd) * p.N + n0 + e % wd, 0.0f);
    } else {
      for (int64_t g = mt_first_group(p.gidx, p.G, m0); g < p.G; ++g) {
        if ((int64_t)p.gidx[g] >= mend) break;
        int64_t s0, s1;
        if (mt_group_rows(p.gidx, g, m0, mend, &s0, &s1)) mma_tile<TC>(p, sm, 0, g, 0, m0, n0, s0, s1, 0, p.Kb);
      }
      /* rows past every group (offsets[G] <= M: the MoE layer's row bound): zeros */
      const int64_t mz = mt_masked_end(p.gidx[p.G], m0, mend);
      TC *C = (TC *)p.c;
      const int64_t nend = n0 + MT_BN < p.N ? n0 + MT_BN : p.N;
      const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
      for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) st_out(C, (mz + e / wd) * p.N + n0 + e % wd, 0.0f);
    }
  }
#else
  __trap(); /* never launched: dsc_fp8_mma_ok checks the binary's architecture */
#endif
}

}  // namespace

/* 1 when the tensor-core kernel runs this problem on ctx's device; *why names the first
 * rule that fails otherwise (for the caller's debug log). */
dsc_status dsc_fp8_mma_ok(dsc_context *ctx, const char *fn, const Fp8MmaArgs &p, dsc_dtype at,
                      dsc_dtype bt, dsc_dtype ct, bool *ok, const char **why) {
  *ok = false;
  *why = NULL;
  if (at != DSC_DTYPE_FLOAT8_E4M3FN || bt != DSC_DTYPE_FLOAT8_E4M3FN) {
    *why = "an E5M2 operand";
  } else if (p.K <= 0 || p.K % 16 != 0) {
    *why = "K is not a positive multiple of 16";
  } else if (!dsc_cuda_aligned(p.a, 16) || !dsc_cuda_aligned(p.b, 16)) {
    *why = "a or b is not 16-byte aligned";
  } else {
    cudaFuncAttributes fa;
    if (ct == DSC_DTYPE_BFLOAT16)
      DSC_CUDA_TRY(cudaFuncGetAttributes(&fa, fp8_mma_kernel<__nv_bfloat16, false>), fn);
    else
      DSC_CUDA_TRY(cudaFuncGetAttributes(&fa, fp8_mma_kernel<float, false>), fn);
    /* binaryVersion: the SASS this device runs (an sm_80 binary on an sm_89 GPU has no
     * FP8 MMA) */
    if (fa.binaryVersion < 89)
      *why = "no sm_89+ kernel binary for this device (FP8 mma.sync needs sm_89)";
    else
      *ok = true;
  }
  return DSC_OK;
}

dsc_status dsc_fp8_mma_launch(dsc_context *ctx, const char *fn, const Fp8MmaArgs &p, dsc_dtype ct) {
  const int64_t batch = (p.mode == MT_MODE_MASKED || p.mode == MT_MODE_KGROUPED) ? p.G : 1;
  const int64_t total = batch * ((p.M + MT_BM - 1) / MT_BM) * ((p.N + MT_BN - 1) / MT_BN);
  if (total <= 0) return DSC_OK;
  const unsigned blocks = dsc_cuda_blocks(total, 1, 65535);
  if (p.mode == MT_MODE_KGROUPED) /* the weight gradient: float32 out */
    fp8_mma_kernel<float, true><<<blocks, MT_THREADS, 0, dsc_cuda_stream(ctx)>>>(p);
  else if (ct == DSC_DTYPE_BFLOAT16)
    fp8_mma_kernel<__nv_bfloat16, false><<<blocks, MT_THREADS, 0, dsc_cuda_stream(ctx)>>>(p);
  else
    fp8_mma_kernel<float, false><<<blocks, MT_THREADS, 0, dsc_cuda_stream(ctx)>>>(p);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}
