/*
 * kernels/bf16_grouped_mma.cu -- the BF16 tensor-core grouped GEMM of the MoE experts
 * (forward, input gradient, weight gradient) over the permuted rows, reading the expert
 * offsets on the device: no host copy of them, so the BF16 model's MoE layer never waits
 * for the GPU. kernels/grouped_linear.cu calls it for float32 tensors in the BF16-operand
 * math mode (DSC_MATH_BF16_OPERANDS: the BF16 model), where cuBLASLt would round the same
 * operands to BF16 but needs the row slices on the host.
 *
 * Math and layouts: kernels/bf16_grouped_tile.cuh (its index functions are simulated on
 * the CPU by tests/c/test_bf16_grouped_tile.c). Per CTA (128 threads, 4 warps 2 x 2) a
 * 64 x 64 tile of C; per 32-wide K stage the A and B tiles are read from global memory as
 * float32 (bounds-checked: zero outside the group's rows, K range and N), rounded to BF16
 * (RNE, __float2bfloat16_rn: the CPU's dsc_f32_to_bf16) into padded shared rows, then each
 * warp runs 2 k16 steps of 2 x 4 mma.sync.m16n8k16 (mla_mma.cuh's tile and fragment loads)
 * into FP32 accumulators. Deterministic: a fixed order, no atomics, no split-K.
 * Rows of a BG_ROWS output past offsets[G] are written as zeros; a BG_KROWS batch of an
 * empty group is all zeros. Needs sm_80 (the builds target 80 and 90a).
 */
#include "common.cuh"
#include "bf16_grouped_tile.cuh"
#include "mla_mma.cuh"

static_assert(BG_BM == BG_BN, "A and B stage tiles of the same number of rows");
static_assert(BG_THREADS == 128 && BG_WM * 2 == BG_BM && BG_WN * 2 == BG_BN, "2 x 2 warps of 32 x 32");
static_assert(BG_BK % 16 == 0 && BG_SROW % 2 == 0, "k16 steps, 32-bit fragment loads");

namespace {

struct BgSmem {
  alignas(16) uint16_t a[BG_BM * BG_SROW]; /* [m][k] bf16 bits */
  alignas(16) uint16_t b[BG_BN * BG_SROW]; /* [n][k] */
};

__device__ __forceinline__ uint16_t to_bf16_bits(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

/* C rows [r0, r1) of the tile at (m0, n0) of C batch zc, with B at bg (group's B), over the
 * inner range [k0, k1). Called uniformly by the whole CTA. */
__device__ void bg_tile(const Bf16GroupedArgs &p, BgSmem &sm, const float *bg, int64_t zc, int64_t m0,
                        int64_t n0, int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int a_kfast = p.sak == 1, b_kfast = p.sbk == 1;
  float acc[BG_FM][BG_FN][4];
#pragma unroll
  for (int i = 0; i < BG_FM; ++i)
#pragma unroll
    for (int j = 0; j < BG_FN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  for (int64_t ks = k0; ks < k1; ks += BG_BK) {
    for (int e = threadIdx.x; e < BG_BM * BG_BK; e += BG_THREADS) {
      int row, kk;
      bg_stage_coords(e, a_kfast, &row, &kk);
      const int64_t gm = m0 + row, gk = ks + kk;
      const float v = (gm >= r0 && gm < r1 && gk < k1) ? p.a[gm * p.sam + gk * p.sak] : 0.0f;
      sm.a[bg_smem_off(row, kk)] = to_bf16_bits(v);
      bg_stage_coords(e, b_kfast, &row, &kk);
      const int64_t gn = n0 + row, gk2 = ks + kk;
      const float u = (gn < p.N && gk2 < k1) ? bg[gk2 * p.sbk + gn * p.sbn] : 0.0f;
      sm.b[bg_smem_off(row, kk)] = to_bf16_bits(u);
    }
    __syncthreads();
#pragma unroll
    for (int kq = 0; kq < BG_BK / 16; ++kq) {
      uint32_t af[BG_FM][4], bf[BG_FN][2];
#pragma unroll
      for (int i = 0; i < BG_FM; ++i)
        mla_load_a(af[i], sm.a + bg_smem_off(bg_warp_m0(w) + 16 * i, 16 * kq), BG_SROW, lane);
#pragma unroll
      for (int j = 0; j < BG_FN; ++j)
        mla_load_bt(bf[j], sm.b + bg_smem_off(bg_warp_n0(w) + 8 * j, 16 * kq), BG_SROW, lane);
#pragma unroll
      for (int i = 0; i < BG_FM; ++i)
#pragma unroll
        for (int j = 0; j < BG_FN; ++j) mla_mma(acc[i][j], af[i], bf[j]);
    }
    __syncthreads(); /* the tiles are refilled next stage */
  }

  float *C = p.c + zc * p.M * p.N; /* [M, N] */
#pragma unroll
  for (int i = 0; i < BG_FM; ++i)
#pragma unroll
    for (int j = 0; j < BG_FN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + bg_warp_m0(w) + 16 * i + mla_fc_row(lane, e);
        const int64_t n = n0 + bg_warp_n0(w) + 8 * j + mla_fc_col(lane, e);
        if (m >= r0 && m < r1 && n < p.N) C[m * p.N + n] = acc[i][j][e];
      }
}

__global__ void __launch_bounds__(BG_THREADS) bf16_grouped_kernel(Bf16GroupedArgs p) {
  __shared__ BgSmem sm;
  const int64_t tiles_m = (p.M + BG_BM - 1) / BG_BM, tiles_n = (p.N + BG_BN - 1) / BG_BN;
  const int64_t batch = p.mode == BG_KROWS ? p.G : 1;
  for (int64_t t = blockIdx.x; t < batch * tiles_m * tiles_n; t += gridDim.x) {
    int64_t z, tm, tn;
    bg_tile_coords(t, tiles_m, tiles_n, &z, &tm, &tn);
    const int64_t m0 = tm * BG_BM, n0 = tn * BG_BN;
    const int64_t mend = m0 + BG_BM < p.M ? m0 + BG_BM : p.M;
    if (p.mode == BG_KROWS) {
      int64_t k0, k1;
      bg_kgroup_range(p.offsets, z, &k0, &k1);
      bg_tile(p, sm, p.b, z, m0, n0, m0, mend, k0, k1);
      continue;
    }
    for (int64_t g = bg_first_group(p.offsets, p.G, m0); g < p.G; ++g) {
      if ((int64_t)p.offsets[g] >= mend) break;
      int64_t s0, s1;
      if (bg_group_rows(p.offsets, g, m0, mend, &s0, &s1))
        bg_tile(p, sm, p.b + g * p.b_group, 0, m0, n0, s0, s1, 0, p.K);
    }
    /* rows past every group (the MoE layer's row bound): zeros */
    const int64_t mz = bg_tail_start(p.offsets, p.G, m0, mend);
    const int64_t nend = n0 + BG_BN < p.N ? n0 + BG_BN : p.N;
    const int64_t wd = nend - n0, cnt = (mend - mz) * wd;
    for (int64_t e = threadIdx.x; e < cnt; e += blockDim.x) p.c[(mz + e / wd) * p.N + n0 + e % wd] = 0.0f;
  }
}

}  // namespace

/* Launch on ctx's stream (kernels/grouped_linear.cu; the arguments are the caller's). */
dsc_status dsc_bf16_grouped_launch(dsc_context *ctx, const char *fn, const Bf16GroupedArgs &p) {
  const int64_t batch = p.mode == BG_KROWS ? p.G : 1;
  const int64_t total = batch * ((p.M + BG_BM - 1) / BG_BM) * ((p.N + BG_BN - 1) / BG_BN);
  if (total <= 0) return DSC_OK;
  bf16_grouped_kernel<<<dsc_cuda_blocks(total, 1, 65535), BG_THREADS, 0, dsc_cuda_stream(ctx)>>>(p);
  DSC_CUDA_CHECK_LAUNCH(fn);
  return DSC_OK;
}
