/*
 * kernels/bf16_grouped_tile.cuh -- the index math of the BF16 tensor-core grouped GEMM
 * (kernels/bf16_grouped_mma.cu): the MoE experts' forward, input gradient and weight
 * gradient over the permuted rows, reading the expert offsets on the device. Plain C /
 * C++ inline functions: the kernel calls exactly these, and
 * tests/c/test_bf16_grouped_tile.c simulates the kernel's tiles with them (run by
 * tests/test_grouped_linear_bf16.py).
 *
 * One GEMM shape for the three: C [Bt, M, N] = A [M, K] @ B [K, N] with strided operands,
 *   A(m, k) = a[m * sam + k * sak],   B(k, n) = b[k * sbk + n * sbn],
 * float32 in memory, rounded to BF16 (RNE) when staged, FP32 accumulation (mma.sync
 * m16n8k16, fragments as kernels/mla_tile.cuh). Two grouped modes, offsets [G+1] int32:
 *   BG_ROWS:  rows of A and C grouped (forward y = x W_g^T, input gradient dx = dy W_g):
 *             rows [offsets[g], offsets[g+1]) use B_g = b + g * b_group; rows from
 *             offsets[G] to M belong to no group and are written as zeros (the MoE layer's
 *             row bound). Bt = 1.
 *   BG_KROWS: the inner dim grouped (weight gradient dW_g = dY_g^T X_g): batch z = group z
 *             sums k in [offsets[z], offsets[z+1]) only, into C_z (zeros when empty);
 *             A and B are shared. Bt = G. Any offsets (no alignment needed).
 * Legend: CTA tile BG_BM x BG_BN of C, BG_BK of K per stage; 4 warps in 2 x 2, each
 * 32 x 32 (2 x 4 MMAs per k16 step); lane 0..31.
 */
#ifndef DSC_KERNELS_BF16_GROUPED_TILE_CUH_
#define DSC_KERNELS_BF16_GROUPED_TILE_CUH_

#include <stdint.h>

#if defined(__CUDACC__)
#define BG_HD static __host__ __device__ __forceinline__
#else
#define BG_HD static inline
#endif

#define BG_BM 64
#define BG_BN 64
#define BG_BK 32
#define BG_WARPS 4
#define BG_THREADS (BG_WARPS * 32)
#define BG_WM 32
#define BG_WN 32
#define BG_FM (BG_WM / 16) /* m16 MMAs per warp along M */
#define BG_FN (BG_WN / 8)  /* n8 MMAs per warp along N */
/* bf16 elements per shared row: BG_BK + 8, so a fragment's 8 rows x 4 words hit 32 banks
 * (row stride 20 words) */
#define BG_SROW (BG_BK + 8)

enum { BG_ROWS = 0, BG_KROWS = 1 };

struct Bf16GroupedArgs {
  int64_t M, N, K;
  const float *a; /* A(m, k) = a[m * sam + k * sak] */
  int64_t sam, sak;
  const float *b; /* B(k, n) = b[k * sbk + n * sbn] (+ g * b_group in BG_ROWS) */
  int64_t sbk, sbn, b_group;
  float *c;       /* [Bt, M, N] */
  int mode;       /* BG_ROWS | BG_KROWS */
  int64_t G;
  const int32_t *offsets; /* [G+1] device */
};

/* First row / column of warp w's 32 x 32 piece of the CTA tile. */
BG_HD int bg_warp_m0(int w) { return (w >> 1) * BG_WM; }
BG_HD int bg_warp_n0(int w) { return (w & 1) * BG_WN; }

/* Element e (0 .. BG_BM * BG_BK - 1) of a staged [64][BG_BK] tile: its row (m or n) and
 * its k. kfast: consecutive elements walk k (the operand is contiguous along k), else the
 * row: either way consecutive threads read consecutive addresses. */
BG_HD void bg_stage_coords(int e, int kfast, int *row, int *kk) {
  if (kfast) {
    *row = e / BG_BK;
    *kk = e % BG_BK;
  } else {
    *row = e % BG_BM;
    *kk = e / BG_BM;
  }
}

/* Offset of (row, k) in a staged tile (bf16 elements). */
BG_HD int bg_smem_off(int row, int kk) { return row * BG_SROW + kk; }

/* Tiles of the grid: batch x tiles_m x tiles_n, n fastest. */
BG_HD void bg_tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n, int64_t *z, int64_t *tm, int64_t *tn) {
  *tn = t % tiles_n;
  const int64_t rest = t / tiles_n;
  *tm = rest % tiles_m;
  *z = rest / tiles_m;
}

/* BG_KROWS: the inner range [*k0, *k1) of group g. */
BG_HD void bg_kgroup_range(const int32_t *offsets, int64_t g, int64_t *k0, int64_t *k1) {
  *k0 = offsets[g];
  *k1 = offsets[g + 1];
}

/* BG_ROWS: the first group g whose rows end after m0 (G when none). */
BG_HD int64_t bg_first_group(const int32_t *offsets, int64_t G, int64_t m0) {
  int64_t lo = 0, hi = G;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if ((int64_t)offsets[mid + 1] > m0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* BG_ROWS: rows [*s0, *s1) of tile rows [m0, mend) that group g holds; 1 when non-empty. */
BG_HD int bg_group_rows(const int32_t *offsets, int64_t g, int64_t m0, int64_t mend, int64_t *s0, int64_t *s1) {
  const int64_t o0 = offsets[g], o1 = offsets[g + 1];
  *s0 = o0 > m0 ? o0 : m0;
  *s1 = o1 < mend ? o1 : mend;
  return *s1 > *s0;
}

/* BG_ROWS: the first row of tile rows [m0, mend) past every group (rows from it: zeros). */
BG_HD int64_t bg_tail_start(const int32_t *offsets, int64_t G, int64_t m0, int64_t mend) {
  const int64_t o = offsets[G];
  return o < m0 ? m0 : (o > mend ? mend : o);
}

#endif /* DSC_KERNELS_BF16_GROUPED_TILE_CUH_ */
