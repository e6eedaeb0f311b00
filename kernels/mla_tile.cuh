/*
 * kernels/mla_tile.cuh -- the index math and small numerics of the tensor-core MLA kernels
 * (kernels/mla_decode_tc.cu, kernels/mla_attn_tc.cu), as plain C11 / CUDA C++ inline
 * functions: the kernels call exactly these, and tests/c/test_mla_tile.c runs them on the
 * CPU (fragment ownership of mma.sync m16n8k16 and the reuse of a C tile pair as an A
 * operand, the paged cache's addressing and FP8 row layout, the KV split ranges, the causal
 * key range, the online softmax and the merge of the splits).
 *
 * Legend: R kv_lora_rank, dr rope dim, W = R + dr values of one cache row, S keys of one
 * query row (kv_len), CH keys per split, TK keys per tile, bs block_size, lane 0..31.
 */
#ifndef DSC_KERNELS_MLA_TILE_CUH_
#define DSC_KERNELS_MLA_TILE_CUH_

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MLA_HD static __host__ __device__ __forceinline__
#else
#define MLA_HD static inline
#endif

/* ---- mma.sync.m16n8k16 (bf16 in, f32 accumulate) fragment ownership, per the PTX ISA:
 * groupID g = lane >> 2, thread-in-group t = lane & 3.
 * A (16x16, row-major): element i of 0..7 (4 registers of 2 bf16, low half first) is at
 *   row g + 8*((i >> 1) & 1), column 2t + (i & 1) + 8*(i >> 2).
 * B (16x8, k x n): element i of 0..3 (2 registers) is at k = 2t + (i & 1) + 8*(i >> 1), n = g.
 * C/D (16x8 f32): element i of 0..3 is at row g + 8*(i >> 1), column 2t + (i & 1). */
MLA_HD int mla_fa_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
MLA_HD int mla_fa_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }
MLA_HD int mla_fb_k(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 1); }
MLA_HD int mla_fb_n(int lane, int i) { (void)i; return lane >> 2; }
MLA_HD int mla_fc_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
MLA_HD int mla_fc_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

/* An m16n8 C tile pair as the A operand of the next product (FlashAttention's P stays in
 * registers): element i of the A fragment of k step ks (columns 16ks..16ks+15) is element
 * mla_c2a_elem(i) of C tile 2ks + mla_c2a_tile(i) of the same lane. */
MLA_HD int mla_c2a_tile(int i) { return i >> 2; }
MLA_HD int mla_c2a_elem(int i) { return i & 3; }

/* Causal training attention, query block [q0, q0+BQ) of T rows: keys [0, kend). */
MLA_HD int64_t mla_causal_kend(int64_t q0, int64_t BQ, int64_t T) {
  return q0 + BQ < T ? q0 + BQ : T;
}

/* ---- the cache row ---------------------------------------------------------------- */

/* FP8 row: R e4m3 bytes, ceil(R/128) float32 scales at byte round4(R), dr bf16 after them;
 * the row padded to 4 bytes (R 512, dr 64: 512 + 16 + 128 = 656). */
MLA_HD int64_t mla_fp8_scale_off(int64_t R) { return (R + 3) & ~(int64_t)3; }
MLA_HD int64_t mla_fp8_nscale(int64_t R) { return (R + 127) / 128; }
MLA_HD int64_t mla_fp8_rope_off(int64_t R) { return mla_fp8_scale_off(R) + 4 * mla_fp8_nscale(R); }
MLA_HD int64_t mla_fp8_row_bytes(int64_t R, int64_t dr) {
  return (mla_fp8_rope_off(R) + 2 * dr + 3) & ~(int64_t)3;
}

/* The pool row of key j of a query row whose block table starts at tables[table_off]. */
MLA_HD int64_t mla_page_row(const int32_t *tables, int64_t table_off, int64_t j, int64_t bs) {
  return (int64_t)tables[table_off + j / bs] * bs + j % bs;
}

/* ---- KV splits -------------------------------------------------------------------- */

/* Keys per split for `base` independent (row, head block) tasks on `sms` multiprocessors,
 * the longest row max_kv keys: split only when the tasks cannot fill two waves and rows
 * are long; a multiple of the tile TK, at least 128 keys (or max_kv rounded up to TK). */
MLA_HD int64_t mla_split_chunk(int64_t base, int64_t sms, int64_t max_kv, int64_t TK) {
  const int64_t whole = max_kv > 0 ? (max_kv + TK - 1) / TK * TK : TK;
  if (base <= 0 || base >= 2 * sms || max_kv <= 256) return whole;
  const int64_t want = (2 * sms + base - 1) / base;
  int64_t ch = ((max_kv + want - 1) / want + TK - 1) / TK * TK;
  if (ch < 128) ch = (128 + TK - 1) / TK * TK;
  return ch < whole ? ch : whole;
}

MLA_HD int64_t mla_num_splits(int64_t max_kv, int64_t CH) {
  return max_kv > 0 ? (max_kv + CH - 1) / CH : 1;
}

/* Keys [*j0, *j1) of split sp for a row of S keys (empty when the split lies past S). */
MLA_HD void mla_split_range(int64_t S, int64_t CH, int64_t sp, int64_t *j0, int64_t *j1) {
  const int64_t a = sp * CH, b = a + CH;
  *j0 = a < S ? a : S;
  *j1 = b < S ? b : S;
}

/* Decode task -> (query row r, head block hb, split sp); head blocks vary fastest, so the
 * CTAs that read the same keys run together (the rows come from L2 after the first). */
MLA_HD void mla_decode_task(int64_t task, int64_t nhb, int64_t nsplit, int64_t *r, int64_t *hb,
                            int64_t *sp) {
  *hb = task % nhb;
  *sp = (task / nhb) % nsplit;
  *r = task / (nhb * nsplit);
}

/* ---- online softmax --------------------------------------------------------------- */

/* A new tile whose largest score is tmax (-inf: no valid key) after a running maximum m:
 * returns the new maximum and sets *alpha, the factor of what was accumulated so far
 * (1 while no key has been seen). */
MLA_HD float mla_online_max(float m, float tmax, float *alpha) {
  const float mn = m > tmax ? m : tmax;
  *alpha = mn == -INFINITY ? 1.0f : expf(m - mn);
  return mn;
}

/* exp(s - m) of a score, 0 for a masked one (-inf). */
MLA_HD float mla_prob(float s, float m) { return s == -INFINITY ? 0.0f : expf(s - m); }

/* Merge of nsplit partial results (m_s, l_s; acc_s unnormalized) of one (row, head):
 * M = max over non-empty splits (l_s > 0), weight_s = e^(m_s - M), out = sum acc_s w_s /
 * sum l_s w_s; no non-empty split gives 0. mla_merge_max returns M (-inf when all are
 * empty), mla_merge_weight the weight of one split (0 for an empty one). */
MLA_HD float mla_merge_max(const float *ml /* [nsplit,2] (m, l) */, int64_t nsplit) {
  float M = -INFINITY;
  for (int64_t s = 0; s < nsplit; ++s)
    if (ml[2 * s + 1] > 0.0f && ml[2 * s] > M) M = ml[2 * s];
  return M;
}
MLA_HD float mla_merge_weight(float m_s, float l_s, float M) {
  return l_s > 0.0f ? expf(m_s - M) : 0.0f;
}

#endif /* DSC_KERNELS_MLA_TILE_CUH_ */
