/*
 * kernels/f32_grouped_tile.cuh -- the index math of the float32 grouped GEMM
 * (kernels/f32_grouped.cu): the MoE experts' forward, input gradient and weight gradient
 * of the float32 reference model (DSC_MATH_DEFAULT) over the permuted rows, reading the
 * expert offsets on the device. Plain C / C++ inline functions: the kernel calls exactly
 * these, and tests/c/test_f32_grouped_tile.c simulates the kernel's threads with them (run
 * by tests/test_grouped_linear_f32.py).
 *
 * One GEMM shape for the three (as kernels/bf16_grouped_tile.cuh):
 *   C [Bt, M, N] = A [M, K] @ B [K, N],  A(m, k) = a[m * sam + k * sak],
 *                                        B(k, n) = b[k * sbk + n * sbn],
 * float32 in memory and in the arithmetic: one fmaf per product, k ascending (no TF32, no
 * split-K), so each output is the sequential fmaf sum of its products in k order.
 * Two grouped modes, offsets [G+1] int32:
 *   FG_ROWS:  rows of A and C grouped (forward y = x W_g^T, input gradient dx = dy W_g):
 *             rows [offsets[g], offsets[g+1]) use B_g = b + g * b_group; rows from
 *             offsets[G] to M belong to no group and are written as zeros. Bt = 1.
 *   FG_KROWS: the inner dim grouped (weight gradient dW_g = dY_g^T X_g): batch z = group z
 *             sums k in [offsets[z], offsets[z+1]) only, into C_z (zeros when empty);
 *             A and B are shared. Bt = G.
 * Any offsets stay inside the operands (ranges clamped to the tile / to [0, K]); only
 * checked ones (0 = o_0 <= ... <= o_G <= M or K) give the products above.
 * Legend: CTA tile FG_BM x FG_BN of C, FG_BK of K per shared stage; FG_THREADS threads
 * as 16 x 16, thread t owns rows t/16 + 16 i and columns t%16 + 16 j (i, j < 4).
 */
#ifndef DSC_KERNELS_F32_GROUPED_TILE_CUH_
#define DSC_KERNELS_F32_GROUPED_TILE_CUH_

#include <stdint.h>

#if defined(__CUDACC__)
#define FG_HD static __host__ __device__ __forceinline__
#else
#define FG_HD static inline
#endif

#define FG_BM 64
#define FG_BN 64
#define FG_BK 16
#define FG_THREADS 256
#define FG_TDIM 16 /* threads per side of the 16 x 16 thread grid */
#define FG_TM 4    /* outputs per thread along M (FG_BM / FG_TDIM) */
#define FG_TN 4    /* ... along N */
/* floats per shared k-row ([k][row] layout): one pad word, so a k-fast stage store of a
 * warp (2 rows x 16 k) hits at most 2 words per bank */
#define FG_SROW (FG_BM + 1)

enum { FG_ROWS = 0, FG_KROWS = 1 };

struct F32GroupedArgs {
  int64_t M, N, K;
  const float *a; /* A(m, k) = a[m * sam + k * sak] */
  int64_t sam, sak;
  const float *b; /* B(k, n) = b[k * sbk + n * sbn] (+ g * b_group in FG_ROWS) */
  int64_t sbk, sbn, b_group;
  float *c;       /* [Bt, M, N] */
  int mode;       /* FG_ROWS | FG_KROWS */
  int64_t G;
  const int32_t *offsets; /* [G+1] device */
};

/* Output (i, j) of thread t: tile row and column. */
FG_HD int fg_out_row(int t, int i) { return t / FG_TDIM + FG_TDIM * i; }
FG_HD int fg_out_col(int t, int j) { return t % FG_TDIM + FG_TDIM * j; }

/* Element e (0 .. FG_BM * FG_BK - 1) of a staged [64 rows][FG_BK] operand tile: its row
 * (m or n) and its k. kfast: consecutive elements walk k (the operand is contiguous along
 * k), else the row: either way consecutive threads read consecutive addresses. */
FG_HD void fg_stage_coords(int e, int kfast, int *row, int *kk) {
  if (kfast) {
    *row = e / FG_BK;
    *kk = e % FG_BK;
  } else {
    *row = e % FG_BM;
    *kk = e / FG_BM;
  }
}

/* Offset of (row, k) in a staged tile (floats; [k][row] with FG_SROW per k). */
FG_HD int fg_smem_off(int row, int kk) { return kk * FG_SROW + row; }

/* Tiles of the grid: batch x tiles_m x tiles_n, n fastest. */
FG_HD void fg_tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n, int64_t *z, int64_t *tm, int64_t *tn) {
  *tn = t % tiles_n;
  const int64_t rest = t / tiles_n;
  *tm = rest % tiles_m;
  *z = rest / tiles_m;
}

FG_HD int64_t fg_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* FG_KROWS: the inner range [*k0, *k1) of group g, inside [0, K]. */
FG_HD void fg_kgroup_range(const int32_t *offsets, int64_t g, int64_t K, int64_t *k0, int64_t *k1) {
  *k0 = fg_clamp(offsets[g], 0, K);
  *k1 = fg_clamp(offsets[g + 1], *k0, K);
}

/* FG_ROWS: the first group g whose rows end after m0 (G when none). */
FG_HD int64_t fg_first_group(const int32_t *offsets, int64_t G, int64_t m0) {
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

/* FG_ROWS: rows [*s0, *s1) of tile rows [m0, mend) that group g holds; 1 when non-empty. */
FG_HD int fg_group_rows(const int32_t *offsets, int64_t g, int64_t m0, int64_t mend, int64_t *s0, int64_t *s1) {
  const int64_t o0 = offsets[g], o1 = offsets[g + 1];
  *s0 = o0 > m0 ? o0 : m0;
  *s1 = o1 < mend ? o1 : mend;
  return *s1 > *s0;
}

/* FG_ROWS: the first row of tile rows [m0, mend) past every group (rows from it: zeros). */
FG_HD int64_t fg_tail_start(const int32_t *offsets, int64_t G, int64_t m0, int64_t mend) {
  return fg_clamp(offsets[G], m0, mend);
}

#endif /* DSC_KERNELS_F32_GROUPED_TILE_CUH_ */
