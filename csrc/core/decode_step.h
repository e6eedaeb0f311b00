/*
 * core/decode_step.h -- one row of the device-resident decode loop's per-step ops, shared
 * by the CPU (cpu/decode.c) and the CUDA kernels (kernels/decode.cu): both loop over rows
 * and call these, so the CPU tests run the kernels' own row code. backend.h states the ops.
 */
#ifndef DSC_CORE_DECODE_STEP_H_
#define DSC_CORE_DECODE_STEP_H_

#include <stdint.h>

#include "numeric.h" /* DSC_HD */

/* Row r of n: meta [3n] = pool row (-1: padding), kv_len, table offset of the token at
 * pos[r] (-1: padding) of cache slot slot[r]; the paged cache's addressing (mla_cache.c). */
static inline DSC_HD void dsc_decode_plan_row(int64_t r, int64_t n, const int32_t *pos, const int64_t *slot,
                                              const int32_t *tables, int64_t max_blk, int64_t bs,
                                              int64_t *meta) {
  const int64_t p = pos[r], off = slot[r] * max_blk;
  meta[r] = p < 0 ? -1 : (int64_t)tables[off + p / bs] * bs + p % bs;
  meta[n + r] = p < 0 ? 0 : p + 1;
  meta[2 * n + r] = off;
}

/* Row b of B after sampling: an alive row (state[b]) appends tok[b] at ngen = state[B+b]
 * of out [B, max_new] and ends (alive 0, pos -1) on eos, max_new tokens or tok -1; else
 * tok[b] is its next input at the next position. */
static inline DSC_HD void dsc_decode_advance_row(int64_t b, int64_t B, int32_t max_new, int32_t eos,
                                                 const int32_t *tok, int32_t *ids, int32_t *pos,
                                                 int32_t *state, int32_t *out) {
  if (!state[b]) return;
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

#endif /* DSC_CORE_DECODE_STEP_H_ */
