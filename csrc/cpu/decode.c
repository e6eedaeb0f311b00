/*
 * cpu/decode.c -- the small per-step ops of generation's device-resident decode loop
 * (csrc/model/generate.c), on the CPU; twins of kernels/decode.cu (the same row code:
 * core/decode_step.h). backend.h states them.
 *
 * Legend: B rows (sequences), n rows of a plan, max_new the tokens each row may emit,
 * bs block_size, max_blk blocks per sequence of the cache's tables.
 */
#include "cpu_common.h"
#include "decode_step.h"

dsc_status dsc_cpu_decode_plan(dsc_context *ctx, int64_t n, const int32_t *pos /* [n] */,
                               const int64_t *slot /* [n] */, const int32_t *tables /* [*, max_blk] */,
                               int64_t max_blk, int64_t block_size, int64_t *meta /* [3n] */) {
  (void)ctx;
  for (int64_t r = 0; r < n; ++r) dsc_decode_plan_row(r, n, pos, slot, tables, max_blk, block_size, meta);
  return DSC_OK;
}

dsc_status dsc_cpu_decode_advance(dsc_context *ctx, int64_t B, int32_t max_new, int32_t eos,
                                  const int32_t *tok /* [B] */, int32_t *ids /* [B] */,
                                  int32_t *pos /* [B] */, int32_t *state /* [2B] */,
                                  int32_t *out /* [B, max_new] */) {
  (void)ctx;
  for (int64_t b = 0; b < B; ++b) dsc_decode_advance_row(b, B, max_new, eos, tok, ids, pos, state, out);
  return DSC_OK;
}
