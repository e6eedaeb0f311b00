/*
 * cpu/embedding.c -- token embedding lookup and its gradient on the CPU (the reference
 * for kernels/embedding.cu).
 *
 * Legend: n tokens (ids flattened), V vocabulary rows, D features per row.
 *
 *   forward:  out[i, :] = table[ids[i], :]                   (an exact copy)
 *   backward: dtable = 0; dtable[ids[i], :] += dout[i, :]    (float32)
 *
 * An id outside [0, V) (possible only when the ops layer deferred its range check:
 * dsc_context_check reports it) reads and writes nothing: its output row is zeros and it
 * adds nothing to dtable.
 *
 * Determinism: the backward is parallel over blocks of columns; in each column the
 * tokens are added in token order, so the sums do not depend on the thread count
 * (and there are no atomics).
 */
#include <string.h>

#include "cpu_common.h"

/* The id of token i (range-checked by the ops layer, or only recorded in deferred mode:
 * the callers guard with 0 <= id < V). */
static inline int64_t id_at(int ids64, const void *ids, int64_t i) {
  return ids64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
}

dsc_status dsc_cpu_embedding_fwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,
                                 const void *ids /* [n] int32|int64 */, int64_t V, int64_t D,
                                 const void *table /* [V,D] dt */, void *out /* [n,D] dt */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const size_t row_bytes = (size_t)(D * dsc_cpu_esize(dt));
  DSC_CPU_FOR(n * D >= DSC_CPU_PAR_MIN, ctx->num_threads, i, n,
    const int64_t id = id_at(ids64, ids, i);
    if (id >= 0 && id < V)
      memcpy((char *)out + (size_t)i * row_bytes, (const char *)table + (size_t)id * row_bytes,
             row_bytes);
    else
      memset((char *)out + (size_t)i * row_bytes, 0, row_bytes);
  );
  return DSC_OK;
}

/* Columns per task of the scatter-add. */
#define COL_BLOCK 64

dsc_status dsc_cpu_embedding_bwd(dsc_context *ctx, dsc_dtype dt, int64_t n, int ids64,
                                 const void *ids /* [n] int32|int64 */, int64_t V, int64_t D,
                                 const void *dout /* [n,D] dt */,
                                 float *dtable /* [V,D] float32, overwritten */) {
  (void)ctx; /* read only by the OpenMP pragmas */
  const int64_t es = dsc_cpu_esize(dt);
  /* Zero the whole table: rows of ids that never occur get a zero gradient. */
  DSC_CPU_FOR(V * D >= DSC_CPU_PAR_MIN, ctx->num_threads, v, V,
    memset(dtable + v * D, 0, (size_t)D * sizeof(float));
  );

  const int64_t nblk = (D + COL_BLOCK - 1) / COL_BLOCK;
  DSC_CPU_FOR(n * D >= DSC_CPU_PAR_MIN, ctx->num_threads, b, nblk,
    const int64_t j0 = b * COL_BLOCK;
    const int64_t nj = D - j0 < COL_BLOCK ? D - j0 : COL_BLOCK;
    for (int64_t i = 0; i < n; ++i) { /* token order: the fixed summation order */
      const int64_t id = id_at(ids64, ids, i);
      if (id < 0 || id >= V) continue;
      const void *src = (const char *)dout + (i * D + j0) * es; /* [nj] */
      float *dst = dtable + id * D + j0;                        /* [nj] */
      for (int64_t k = 0; k < nj; ++k) dst[k] += dsc_cpu_ld(dt, src, k);
    }
  );
  return DSC_OK;
}
