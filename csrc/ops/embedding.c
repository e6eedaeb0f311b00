/*
 * ops/embedding.c -- validation and dispatch of the token embedding (forward, backward).
 *
 * Checks ctx and every tensor (device, dtype, contiguity), then ranks and shapes, then
 * the id values (through the backend's index_range, on the device); then calls
 * dsc_cpu_embedding_* or dsc_cuda_embedding_*.
 *
 * Legend: n ids (all dims of ids), V vocabulary rows, D features.
 */
#include <string.h>

#include "backend.h"

/* Every id in [0, V). A table without rows admits no id at all. */
static dsc_status check_ids(dsc_context *ctx, const char *fn, const DLTensor *ids, int64_t V,
                            const char *table_name) {
  const int64_t n = dsc_numel(ids);
  if (n == 0) return DSC_OK;
  DSC_CHECK(V > 0, DSC_ERR_SHAPE, fn, "%s: expected at least one row for %lld ids, got 0 rows",
            table_name, (long long)n);
  /* skip = 0 lies inside [0, V): no exception to the range. Deferred mode: a bad id gives
   * a zero output row (forward) and adds nothing (backward). */
  const dsc_index_site site = {fn, "ids", NULL, DSC_IDX_MSG_RANGE};
  return dsc_index_check(ctx, &site, n, dsc_tensor_dtype(ids) == DSC_DTYPE_INT64, dsc_data(ids), 0,
                         V, 0);
}

dsc_status dsc_embedding_forward(dsc_context *ctx, const DLTensor *ids, const DLTensor *table,
                                 DLTensor *out) {
  static const char *const FN = "dsc_embedding_forward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "ids", ids, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "table", table, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "out", out, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_same_dtype(FN, "out", out, "table", table));

  DSC_TRY(dsc_check_ndim(FN, "ids", ids, 0, 15, "(...)"));
  DSC_TRY(dsc_check_ndim(FN, "table", table, 2, 2, "(V, D)"));
  const int64_t V = table->shape[0], D = table->shape[1], n = dsc_numel(ids);
  int64_t out_shape[16]; /* ids.shape + (D,) */
  memcpy(out_shape, ids->shape, (size_t)ids->ndim * sizeof(int64_t));
  out_shape[ids->ndim] = D;
  DSC_TRY(dsc_check_shape(FN, "out", out, ids->ndim + 1, out_shape));
  DSC_TRY(check_ids(ctx, FN, ids, V, "table"));
  DSC_TRY(dsc_check_disjoint(FN, "out", out, "ids", ids, "table", table, NULL));
  if (n == 0 || D == 0) return DSC_OK;

  const dsc_dtype dt = dsc_tensor_dtype(table);
  const int ids64 = dsc_tensor_dtype(ids) == DSC_DTYPE_INT64;
  return DSC_DISPATCH(embedding_fwd, ctx, dt, n, ids64, dsc_data(ids), V, D, dsc_data(table), dsc_data(out));
}

dsc_status dsc_embedding_backward(dsc_context *ctx, const DLTensor *ids, const DLTensor *dout,
                                  DLTensor *dtable) {
  static const char *const FN = "dsc_embedding_backward";
  DSC_TRY(dsc_check_tensor(ctx, FN, "ids", ids, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dout", dout, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "dtable", dtable, DSC_DT(DSC_DTYPE_FLOAT32)));

  DSC_TRY(dsc_check_ndim(FN, "ids", ids, 0, 15, "(...)"));
  DSC_TRY(dsc_check_ndim(FN, "dtable", dtable, 2, 2, "(V, D)"));
  const int64_t V = dtable->shape[0], D = dtable->shape[1], n = dsc_numel(ids);
  int64_t dout_shape[16]; /* ids.shape + (D,) */
  memcpy(dout_shape, ids->shape, (size_t)ids->ndim * sizeof(int64_t));
  dout_shape[ids->ndim] = D;
  DSC_TRY(dsc_check_shape(FN, "dout", dout, ids->ndim + 1, dout_shape));
  DSC_TRY(check_ids(ctx, FN, ids, V, "dtable"));
  DSC_TRY(dsc_check_disjoint(FN, "dtable", dtable, "ids", ids, "dout", dout, NULL));
  if (V == 0 || D == 0) return DSC_OK;

  /* n == 0 still runs: dtable is overwritten with zeros. */
  const dsc_dtype dt = dsc_tensor_dtype(dout);
  const int ids64 = dsc_tensor_dtype(ids) == DSC_DTYPE_INT64;
  float *dtab = (float *)dsc_data(dtable);
  return DSC_DISPATCH(embedding_bwd, ctx, dt, n, ids64, dsc_data(ids), V, D, dsc_data(dout), dtab);
}
