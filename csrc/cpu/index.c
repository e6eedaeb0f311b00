/*
 * cpu/index.c -- range check of an index tensor (embedding ids, cross-entropy targets,
 * RoPE positions), used by the ops layer before it dispatches a gather or scatter.
 *
 * Legend: n number of indices.
 */
#include <string.h>

#include "cpu_common.h"

/* Finds the FIRST (lowest) position whose value is outside [lo, hi) and is not `skip`.
 * A serial scan: it is one pass over n integers (tokens, not features), and "first"
 * must not depend on how work is split. */
dsc_status dsc_cpu_index_range(dsc_context *ctx, int64_t n, int ids64,
                               const void *ids /* [n] int32 or int64 */, int64_t lo, int64_t hi,
                               int64_t skip, int64_t *bad_pos, int64_t *bad_value) {
  (void)ctx;
  *bad_pos = -1;
  *bad_value = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = ids64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
    if ((v < lo || v >= hi) && v != skip) {
      *bad_pos = i;
      *bad_value = v;
      return DSC_OK;
    }
  }
  return DSC_OK;
}

/* Deferred mode: the same scan, its first failure written into the context's record unless
 * an earlier check's failure is there already (first failure wins; nothing to scan then). */
dsc_status dsc_cpu_index_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                int ids64, const void *ids /* [n] int32 or int64 */, int64_t lo,
                                int64_t hi, int64_t skip) {
  dsc_check_record *r = ctx->check_record;
  if (r->status != DSC_OK) return DSC_OK;
  int64_t pos = -1, value = 0;
  DSC_TRY(dsc_cpu_index_range(ctx, n, ids64, ids, lo, hi, skip, &pos, &value));
  if (pos < 0) return DSC_OK;
  r->status = DSC_ERR_INVALID_ARGUMENT;
  r->pos = pos;
  r->value = value;
  r->lo = lo;
  r->hi = hi;
  r->skip = skip;
  r->style = site->style;
  r->fn = (uint64_t)(uintptr_t)site->fn;
  r->arg = (uint64_t)(uintptr_t)site->arg;
  r->what = (uint64_t)(uintptr_t)site->what;
  return DSC_OK;
}

/* Deferred mode for float32 values: the first NaN or infinity into the record. */
dsc_status dsc_cpu_finite_record(dsc_context *ctx, const dsc_index_site *site, int64_t n,
                                 const float *x /* [n] */) {
  dsc_check_record *r = ctx->check_record;
  if (r->status != DSC_OK) return DSC_OK;
  int64_t pos = -1;
  DSC_TRY(dsc_cpu_find_nonfinite(ctx, n, x, &pos));
  if (pos < 0) return DSC_OK;
  memset(r, 0, sizeof *r);
  r->status = DSC_ERR_INVALID_ARGUMENT;
  r->pos = pos;
  r->style = site->style;
  r->fn = (uint64_t)(uintptr_t)site->fn;
  r->arg = (uint64_t)(uintptr_t)site->arg;
  r->what = (uint64_t)(uintptr_t)site->what;
  return DSC_OK;
}
