/*
 * kernels/mla_mma.cuh -- the BF16 mma.sync m16n8k16 tile and its fragment loads from shared
 * memory, shared by the tensor-core MLA decode (mla_decode_tc.cu) and training attention
 * (mla_attn_tc.cu). Fragment ownership is mla_tile.cuh's (tested on the CPU).
 */
#ifndef DSC_KERNELS_MLA_MMA_CUH_
#define DSC_KERNELS_MLA_MMA_CUH_

#include <stdint.h>

#include "mla_tile.cuh"

/* D += A B for one m16n8k16 tile (bf16 x bf16 -> f32). */
__device__ __forceinline__ void mla_mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)c;
  (void)a;
  (void)b;
  __trap(); /* the launcher never picks this path below sm_80 */
#endif
}

/* A fragment of the 16x16 tile at base (row-major, row stride ld); register j holds
 * elements 2j (low half) and 2j+1, neighbours in one row (tested in test_mla_tile.c): one
 * 32-bit load (base, ld and the column are even). */
__device__ __forceinline__ void mla_load_a(uint32_t a[4], const uint16_t *base, int ld, int lane) {
#pragma unroll
  for (int j = 0; j < 4; ++j)
    a[j] = *(const uint32_t *)(base + mla_fa_row(lane, 2 * j) * ld + mla_fa_col(lane, 2 * j));
}

/* B fragment of a 16x8 (k x n) tile stored k-major: B[k][n] = base[k*ld + n]. */
__device__ __forceinline__ void mla_load_b(uint32_t b[2], const uint16_t *base, int ld, int lane) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const uint32_t lo = base[mla_fb_k(lane, 2 * j) * ld + mla_fb_n(lane, 2 * j)];
    const uint32_t hi = base[mla_fb_k(lane, 2 * j + 1) * ld + mla_fb_n(lane, 2 * j + 1)];
    b[j] = lo | (hi << 16);
  }
}

/* B fragment of a 16x8 (k x n) tile stored n-major (K^T): B[k][n] = base[n*ld + k]; the
 * register's two k neighbours are adjacent: one 32-bit load. */
__device__ __forceinline__ void mla_load_bt(uint32_t b[2], const uint16_t *base, int ld, int lane) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
    b[j] = *(const uint32_t *)(base + mla_fb_n(lane, 2 * j) * ld + mla_fb_k(lane, 2 * j));
}

#endif /* DSC_KERNELS_MLA_MMA_CUH_ */
