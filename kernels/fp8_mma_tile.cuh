/*
 * kernels/fp8_mma_tile.cuh -- the index math of the tensor-core FP8 GEMM
 * (kernels/fp8_grouped_mma.cu): which lane holds which element of an
 * mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 fragment, the CTA/warp tiling, the
 * shared-memory tile layout and its cp.async chunks, the group of a row block, the scale
 * indices. Plain C++ with __host__ __device__ functions: the kernel uses exactly these, and
 * tests/c/test_fp8_mma_tile.cpp (g++, no CUDA) simulates a warp with them against a
 * reference GEMM (run by tests/test_fp8.py).
 *
 * Legend: lane 0..31 of a warp, grp = lane / 4 (0..7), tig = lane % 4 (0..3).
 *   A fragment (16 x 32, row-major): 4 registers of 4 bytes (e4m3 codes, byte j of a
 *     register = element j, little end first);
 *   B fragment (32 x 8, "col": B stored [n][k]): 2 registers of 4 bytes;
 *   C/D fragment (16 x 8, f32): 4 floats.
 *   CTA tile MT_BM x MT_BN of C, MT_BK = 128 (one scale block) of K per stage;
 *   4 warps in 2 x 2, each MT_WM x MT_WN = 32 x 32 (2 x 4 MMAs per k32 step).
 *   Shared tiles: A [MT_BM][MT_SROW] and B [MT_BN][MT_SROW] bytes (row = M or N, column =
 *   the K offset in the stage; MT_SROW = 144 pads 16 bytes so the 8 rows x 4 words a
 *   fragment load touches hit 32 different banks).
 */
#ifndef DSC_KERNELS_FP8_MMA_TILE_CUH_
#define DSC_KERNELS_FP8_MMA_TILE_CUH_

#include <stdint.h>

#ifndef __CUDACC__
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#endif

#define MT_BM 64
#define MT_BN 64
#define MT_BK 128     /* one DeepSeek scale block */
#define MT_WARPS 4    /* 2 x 2 warps */
#define MT_THREADS (MT_WARPS * 32)
#define MT_WM 32      /* rows of C per warp */
#define MT_WN 32      /* columns of C per warp */
#define MT_FM (MT_WM / 16) /* m16 MMAs per warp along M */
#define MT_FN (MT_WN / 8)  /* n8 MMAs per warp along N */
#define MT_SROW 144   /* bytes per shared row: 128 of K + 16 padding */
#define MT_CHUNKS_PER_ROW (MT_BK / 16) /* 16-byte cp.async chunks per tile row */

/* ---- fragments (PTX ISA, mma.m16n8k32 with 8-bit A/B, f32 C/D) ------------------------- */

/* A register r (0..3), byte j (0..3) of `lane` holds A[row][col] of the 16 x 32 fragment. */
static inline __host__ __device__ int mt_a_row(int lane, int r) { return (lane >> 2) + ((r & 1) ? 8 : 0); }
static inline __host__ __device__ int mt_a_col(int lane, int r, int j) {
  return (lane & 3) * 4 + j + ((r & 2) ? 16 : 0);
}
/* B register r (0..1), byte j of `lane` holds B[k][n] of the 32 x 8 fragment. */
static inline __host__ __device__ int mt_b_k(int lane, int r, int j) { return (lane & 3) * 4 + j + r * 16; }
static inline __host__ __device__ int mt_b_n(int lane) { return lane >> 2; }
/* C element i (0..3) of `lane` is C[row][col] of the 16 x 8 fragment. */
static inline __host__ __device__ int mt_c_row(int lane, int i) { return (lane >> 2) + ((i & 2) ? 8 : 0); }
static inline __host__ __device__ int mt_c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }

/* ---- warps and shared tiles ------------------------------------------------------------ */

/* First row / column of warp w's 32 x 32 piece of the CTA tile. */
static inline __host__ __device__ int mt_warp_m0(int w) { return (w >> 1) * MT_WM; }
static inline __host__ __device__ int mt_warp_n0(int w) { return (w & 1) * MT_WN; }

/* Byte offset of (row, k-in-stage) in a shared tile. */
static inline __host__ __device__ int mt_smem_off(int row, int k) { return row * MT_SROW + k; }

/* Byte offset in the A tile of register r of the A fragment of MMA row-block fm, k32 step
 * ks, for `lane` of warp w: 4 consecutive bytes (k .. k+3), so one 32-bit load. */
static inline __host__ __device__ int mt_a_frag_off(int w, int fm, int ks, int lane, int r) {
  return mt_smem_off(mt_warp_m0(w) + fm * 16 + mt_a_row(lane, r), ks * 32 + mt_a_col(lane, r, 0));
}
/* Byte offset in the B tile of register r of the B fragment of MMA column-block fn. */
static inline __host__ __device__ int mt_b_frag_off(int w, int fn, int ks, int lane, int r) {
  return mt_smem_off(mt_warp_n0(w) + fn * 8 + mt_b_n(lane), ks * 32 + mt_b_k(lane, r, 0));
}

/* cp.async chunk c (0 .. MT_BM * MT_CHUNKS_PER_ROW - 1) of a tile: its row and the first
 * K offset (16 bytes). Thread t copies chunks t, t + MT_THREADS, ... */
static inline __host__ __device__ int mt_chunk_row(int c) { return c / MT_CHUNKS_PER_ROW; }
static inline __host__ __device__ int mt_chunk_k(int c) { return (c % MT_CHUNKS_PER_ROW) * 16; }

/* Bytes of a 16-byte chunk at global row `row` (valid rows [r0, r1)), global K `k` (K
 * total) that are real data: 16 or 0 (K % 16 == 0 on this path, so a chunk is never
 * partial). 0 makes cp.async zero-fill the chunk. */
static inline __host__ __device__ int mt_chunk_bytes(int64_t row, int64_t r0, int64_t r1, int64_t k,
                                                     int64_t K) {
  return (row >= r0 && row < r1 && k < K) ? 16 : 0;
}

/* ---- tiles, groups, scales ------------------------------------------------------------- */

/* Tile t of a grid of batch x tiles_m x tiles_n (n fastest). */
static inline __host__ __device__ void mt_tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n,
                                                      int64_t *z, int64_t *tm, int64_t *tn) {
  *tn = t % tiles_n;
  const int64_t rest = t / tiles_n;
  *tm = rest % tiles_m;
  *z = rest / tiles_m;
}

/* The first group g whose rows [offsets[g], offsets[g+1]) end after row m0 (offsets [G+1]
 * non-decreasing, offsets[0] = 0); G when none does. */
static inline __host__ __device__ int64_t mt_first_group(const int32_t *offsets, int64_t G, int64_t m0) {
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

/* Rows [*s0, *s1) of the tile rows [m0, mend) that group g (rows [offsets[g], offsets[g+1]))
 * holds; 1 when non-empty. */
static inline __host__ __device__ int mt_group_rows(const int32_t *offsets, int64_t g, int64_t m0,
                                                    int64_t mend, int64_t *s0, int64_t *s1) {
  const int64_t o0 = offsets[g], o1 = offsets[g + 1];
  *s0 = o0 > m0 ? o0 : m0;
  *s1 = o1 < mend ? o1 : mend;
  return *s1 > *s0;
}

/* Masked layout: the end of the computed rows of tile rows [m0, mend) for a group with mm
 * used rows (rows [end, mend) are written as zeros). */
static inline __host__ __device__ int64_t mt_masked_end(int64_t mm, int64_t m0, int64_t mend) {
  return mm < m0 ? m0 : (mm > mend ? mend : mm);
}

/* Index of the scale of row r (of A or B), K block kb: scales [ceil(R/br), Kb]. */
static inline __host__ __device__ int64_t mt_scale_idx(int64_t r, int64_t kb, int64_t br, int64_t Kb) {
  return (r / br) * Kb + kb;
}

/* K blocks of 128 (the last may be partial). */
static inline __host__ __device__ int64_t mt_k_blocks(int64_t K) { return (K + MT_BK - 1) / MT_BK; }

/* K-grouped (the grouped weight gradient dW_g = dY_g^T X_g): group g owns the K (token)
 * range [offsets[g], offsets[g+1]), every offset a multiple of MT_BK (the FP8 MoE layer's
 * 128-row expert alignment), so its K blocks are [*kb0, *kb1) and no 128-block, nor its one
 * scale per row, straddles two groups; offsets[G] <= K (tokens past it belong to no group).
 * An empty group has kb0 == kb1 (its dW_g is written as zeros). */
static inline __host__ __device__ void mt_kgroup_blocks(const int32_t *offsets, int64_t g, int64_t *kb0,
                                                        int64_t *kb1) {
  *kb0 = (int64_t)offsets[g] / MT_BK;
  *kb1 = (int64_t)offsets[g + 1] / MT_BK;
}


/* ---- the launch arguments (kernels/fp8_grouped_mma.cu) ---------------------------------- */

/* KGROUPED: C [G, M, N], batch z = group z over its K blocks (mt_kgroup_blocks); A [M,K]
 * and B [N,K] shared by all groups, both with per-row scales (a_br = b_br = 1). */
enum { MT_MODE_PLAIN = 0, MT_MODE_GROUPED = 1, MT_MODE_MASKED = 2, MT_MODE_KGROUPED = 3 };

struct Fp8MmaArgs {
  int64_t M, N, K, Kb;  /* M: rows per batch (masked: Mmax); Kb = ceil(K/128) */
  const uint8_t *a;     /* [Bt, M, K] e4m3, Bt = G (masked) or 1 */
  const float *a_scale; /* [Bt, ceil(M/a_br), Kb] */
  int64_t a_br;
  const uint8_t *b;     /* [G or 1, N, K] e4m3 */
  const float *b_scale; /* [G or 1, ceil(N/b_br), Kb] */
  int64_t b_br;
  void *c;              /* [Bt, M, N] float32 | bfloat16 (kgrouped: Bt = G) */
  int mode;             /* MT_MODE_* */
  int64_t G;
  const int32_t *gidx;  /* grouped: offsets [G+1]; masked: masked_m [G]; kgrouped: K offsets
                           [G+1]; plain: NULL */
};

#endif /* DSC_KERNELS_FP8_MMA_TILE_CUH_ */
