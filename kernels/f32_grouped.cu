/*
 * kernels/f32_grouped.cu -- the float32 grouped GEMM of the MoE experts (forward, input
 * gradient, weight gradient) over the permuted rows, reading the expert offsets on the
 * device: no host copy of them, so the float32 reference model's MoE layer never waits for
 * the GPU. kernels/grouped_linear.cu calls it for float32 tensors in exact float32 math
 * (DSC_MATH_DEFAULT), where cuBLASLt would need the row slices on the host.
 *
 * Math and layouts: kernels/f32_grouped_tile.cuh (its index functions are simulated on the
 * CPU by tests/c/test_f32_grouped_tile.c). SIMT, exact float32: per CTA (256 threads as
 * 16 x 16) a 64 x 64 tile of C, each thread 4 x 4 outputs; per 16-deep K stage the A and B
 * tiles are read from global memory (bounds-checked: zero outside the group's rows, the K
 * range and N) into shared [k][row] tiles, then every thread runs 16 steps of 4 x 4 fmaf.
 * Each output is the sequential fmaf sum of its products in k order (zero-padded products
 * add +0 and change nothing): deterministic, no atomics, no split-K. Kept simple over fast:
 * this is the reference model's path (the BF16 and FP8 models have tensor-core kernels).
 * Rows of an FG_ROWS output past offsets[G] are written as zeros; an FG_KROWS batch of an
 * empty group is all zeros. A tile of rows spanning several groups is run once per group
 * on that group's rows (as kernels/bf16_grouped_mma.cu).
 */
#include "common.cuh"
#include "f32_grouped_tile.cuh"

static_assert(FG_BM == FG_BN, "A and B stage tiles of the same number of rows");
static_assert(FG_THREADS == FG_TDIM * FG_TDIM && FG_TM * FG_TDIM == FG_BM && FG_TN * FG_TDIM == FG_BN,
              "16 x 16 threads of 4 x 4 outputs cover the tile");
static_assert((FG_BM * FG_BK) % FG_THREADS == 0, "whole stage rounds");

namespace {

struct FgSmem {
  float a[FG_BK * FG_SROW]; /* [k][m] */
  float b[FG_BK * FG_SROW]; /* [k][n] */
};

/* C rows [r0, r1) of the tile at (m0, n0) of C batch zc, with B at bg (the group's B), over
 * the inner range [k0, k1). Called uniformly by the whole CTA. */
__device__ void fg_tile(const F32GroupedArgs &p, FgSmem &sm, const float *bg, int64_t zc, int64_t m0,
                        int64_t n0, int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  const int t = threadIdx.x;
  const int a_kfast = p.sak == 1, b_kfast = p.sbk == 1;
  float acc[FG_TM][FG_TN];
#pragma unroll
  for (int i = 0; i < FG_TM; ++i)
#pragma unroll
    for (int j = 0; j < FG_TN; ++j) acc[i][j] = 0.0f;

  for (int64_t ks = k0; ks < k1; ks += FG_BK) {
#pragma unroll
    for (int e = t; e < FG_BM * FG_BK; e += FG_THREADS) {
      int row, kk;
      fg_stage_coords(e, a_kfast, &row, &kk);
      const int64_t gm = m0 + row, gk = ks + kk;
      sm.a[fg_smem_off(row, kk)] = (gm >= r0 && gm < r1 && gk < k1) ? p.a[gm * p.sam + gk * p.sak] : 0.0f;
      fg_stage_coords(e, b_kfast, &row, &kk);
      const int64_t gn = n0 + row, gk2 = ks + kk;
      sm.b[fg_smem_off(row, kk)] = (gn < p.N && gk2 < k1) ? bg[gk2 * p.sbk + gn * p.sbn] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < FG_BK; ++kk) {
      float av[FG_TM], bv[FG_TN];
#pragma unroll
      for (int i = 0; i < FG_TM; ++i) av[i] = sm.a[fg_smem_off(fg_out_row(t, i), kk)];
#pragma unroll
      for (int j = 0; j < FG_TN; ++j) bv[j] = sm.b[fg_smem_off(fg_out_col(t, j), kk)];
#pragma unroll
      for (int i = 0; i < FG_TM; ++i)
#pragma unroll
        for (int j = 0; j < FG_TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads(); /* the tiles are refilled next stage */
  }

  float *C = p.c + zc * p.M * p.N; /* [M, N] */
#pragma unroll
  for (int i = 0; i < FG_TM; ++i)
#pragma unroll
    for (int j = 0; j < FG_TN; ++j) {
      const int64_t m = m0 + fg_out_row(t, i), n = n0 + fg_out_col(t, j);
      if (m >= r0 && m < r1 && n < p.N) C[m * p.N + n] = acc[i][j];
    }
}

/* 2 CTAs per SM: at most 128 registers a thread (sm_80 spilled at its default choice) */
__global__ void __launch_bounds__(FG_THREADS, 2) f32_grouped_kernel(F32GroupedArgs p) {
  __shared__ FgSmem sm;
  const int64_t tiles_m = (p.M + FG_BM - 1) / FG_BM, tiles_n = (p.N + FG_BN - 1) / FG_BN;
  const int64_t batch = p.mode == FG_KROWS ? p.G : 1;
  for (int64_t t = blockIdx.x; t < batch * tiles_m * tiles_n; t += gridDim.x) {
    int64_t z, tm, tn;
    fg_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
    const int64_t m0 = tm * FG_BM, n0 = tn * FG_BN;
    const int64_t mend = m0 + FG_BM < p.M ? m0 + FG_BM : p.M;
    if (p.mode == FG_KROWS) {
      int64_t k0, k1;
      fg_kgroup_range(p.offsets, z, p.K, &k0, &k1);
      fg_tile(p, sm, p.b, z, m0, n0, m0, mend, k0, k1);
      continue;
    }
    for (int64_t g = fg_first_group(p.offsets, p.G, m0); g < p.G; ++g) {
      if ((int64_t)p.offsets[g] >= mend) break;
      int64_t s0, s1;
      if (fg_group_rows(p.offsets, g, m0, mend, &s0, &s1))
        fg_tile(p, sm, p.b + g * p.b_group, 0, m0, n0, s0, s1, 0, p.K);
    }
    /* rows past every group (the MoE layer's row bound): zeros */
    const int64_t mz = fg_tail_start(p.offsets, p.G, m0, mend);
    const int64_t nend = n0 + FG_BN < p.N ? n0 + FG_BN : p.N;
    const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
    for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) p.c[(mz + e / wd) * p.N + n0 + e % wd] = 0.0f;
  }
}

}  // namespace

/* Launch on ctx's stream (kernels/grouped_linear.cu; the arguments are the caller's). */
dsc_status dsc_f32_grouped_launch(dsc_context *ctx, const char *fn, const F32GroupedArgs &p) {
  const int64_t batch = p.mode == FG_KROWS ? p.G : 1;
  const int64_t total = batch * ((p.M + FG_BM - 1) / FG_BM) * ((p.N + FG_BN - 1) / FG_BN);
  if (total <= 0) return DSC_OK;
  f32_grouped_kernel<<<dsc_cuda_blocks(total, 1, 65535), FG_THREADS, 0, dsc_cuda_stream(ctx)>>>(p);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}
