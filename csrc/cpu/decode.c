/*
 * cpu/decode.c -- the small per-step ops of generation's device-resident decode loop
 * (csrc/model/generate.c), on the CPU; twins of kernels/decode.cu. backend.h states them.
 *
 * Legend: B rows (sequences), n rows of a plan, max_new the tokens each row may emit,
 * bs block_size, max_blk blocks per sequence of the cache's tables.
 */
#include "cpu_common.h"

dsc_status dsc_cpu_decode_plan(dsc_context *ctx, int64_t n, const int32_t *pos /* [n] */,
                               const int64_t *slot /* [n] */, const int32_t *tables /* [*, max_blk] */,
                               int64_t max_blk, int64_t block_size, int64_t *meta /* [3n] */) {
  (void)ctx;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t p = pos[r], off = slot[r] * max_blk;
    meta[r] = p < 0 ? -1 : (int64_t)tables[off + p / block_size] * block_size + p % block_size;
    meta[n + r] = p < 0 ? 0 : p + 1;
    meta[2 * n + r] = off;
  }
  return DSC_OK;
}

dsc_status dsc_cpu_decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,
                                  const int32_t *tok /* [B] */, int32_t *ids /* [B] */,
                                  int32_t *pos /* [B] */, int32_t *state /* [2B] */,
                                  int32_t *out /* [B, max_new] */) {
  (void)ctx;
  for (int64_t b = 0; b < B; ++b) {
    if (!state[b]) continue;
    const int32_t t = tok[b], n = state[B + b];
    out[b * max_new + n] = t;
    state[B + b] = n + 1;
    if (t < 0 || t == eos || n + 1 >= max_new) {
      state[b] = 0;
      pos[b] = -1;
    } else {
      ids[b] = t;
      pos[b] += 1;
    }
  }
  return DSC_OK;
}
