/*
 * ops/distill.c -- validation and dispatch of logit distillation: the top-k of logits
 * (dsc_logits_topk) and the KL of a student from a teacher's top-k (dsc_topk_kl). The
 * formulas are in deepseek_c.h (section "distillation").
 *
 * Checks ctx and every tensor (device, dtype, contiguity), ranks and shapes, aliasing and
 * values (temperature, grad_scale; the teacher's indices through the backend's index_range
 * on the device); then calls dsc_cpu_* or dsc_cuda_*.
 *
 * Legend: N rows (all leading dims of logits), V vocabulary, K kept logits per row.
 */
#include <math.h>

#include "backend.h"

/* t has the leading dims of logits and a last dim K (same rank as logits). */
static dsc_status check_rows_k(const char *fn, const char *arg, const DLTensor *t, const DLTensor *logits,
                               int64_t K) {
  char a[256], b[256];
  int ok = t->ndim == logits->ndim;
  for (int d = 0; ok && d + 1 < logits->ndim; ++d) ok = t->shape[d] == logits->shape[d];
  DSC_CHECK(ok && t->shape[t->ndim - 1] == K, DSC_ERR_SHAPE, fn,
            "%s: expected the leading dims of logits %s and a last dim of %lld, got %s", arg,
            dsc_shape_str(logits, a, sizeof a), (long long)K, dsc_shape_str(t, b, sizeof b));
  return DSC_OK;
}

dsc_status dsc_logits_topk(dsc_context *ctx, const DLTensor *logits, DLTensor *values, DLTensor *indices) {
  static const char *const FN = "dsc_logits_topk";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "values", values, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "indices", indices, DSC_DT_INDEX));
  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 1, 16, "(..., V)"));
  const int64_t V = dsc_last_dim(logits), N = dsc_rows(logits);
  DSC_TRY(dsc_check_ndim(FN, "values", values, logits->ndim, logits->ndim, "(..., K): the rank of logits"));
  const int64_t K = dsc_last_dim(values);
  DSC_CHECK(K >= 1 && K <= V, DSC_ERR_SHAPE, FN, "values: expected a last dim K in [1, V = %lld], got %s",
            (long long)V, dsc_shape_str(values, buf, sizeof buf));
  DSC_TRY(check_rows_k(FN, "values", values, logits, K));
  DSC_TRY(dsc_check_same_shape(FN, "indices", indices, "values", values));
  DSC_TRY(dsc_check_disjoint(FN, "values", values, "logits", logits, "indices", indices, NULL));
  DSC_TRY(dsc_check_no_overlap(FN, "indices", indices, "logits", logits));
  if (N == 0) return DSC_OK;
  const dsc_dtype dt = dsc_tensor_dtype(logits);
  const int idx64 = dsc_tensor_dtype(indices) == DSC_DTYPE_INT64;
  return DSC_DISPATCH(logits_topk, ctx, dt, N, V, K, dsc_data(logits), (float *)dsc_data(values), idx64,
                      dsc_data(indices));
}

dsc_status dsc_topk_kl(dsc_context *ctx, const DLTensor *logits, const DLTensor *teacher_indices,
                       const DLTensor *teacher_logits, const DLTensor *targets, int64_t ignore_index,
                       float temperature, float grad_scale, DLTensor *loss, DLTensor *dlogits) {
  static const char *const FN = "dsc_topk_kl";
  char buf[256];
  DSC_TRY(dsc_check_tensor(ctx, FN, "logits", logits, DSC_DT_FLOAT));
  DSC_TRY(dsc_check_tensor(ctx, FN, "teacher_indices", teacher_indices, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "teacher_logits", teacher_logits, DSC_DT(DSC_DTYPE_FLOAT32)));
  DSC_TRY(dsc_check_tensor(ctx, FN, "targets", targets, DSC_DT_INDEX));
  DSC_TRY(dsc_check_tensor(ctx, FN, "loss", loss, DSC_DT(DSC_DTYPE_FLOAT32)));
  if (dlogits) DSC_TRY(dsc_check_tensor(ctx, FN, "dlogits", dlogits, DSC_DT_FLOAT));
  if (dlogits) DSC_TRY(dsc_check_same_dtype(FN, "dlogits", dlogits, "logits", logits));

  DSC_TRY(dsc_check_ndim(FN, "logits", logits, 1, 16, "(..., V)"));
  const int64_t V = dsc_last_dim(logits), N = dsc_rows(logits);
  DSC_TRY(dsc_check_ndim(FN, "teacher_indices", teacher_indices, logits->ndim, logits->ndim,
                         "(..., K): the rank of logits"));
  const int64_t K = dsc_last_dim(teacher_indices);
  DSC_CHECK(K >= 1, DSC_ERR_SHAPE, FN, "teacher_indices: expected a last dim K >= 1, got %s",
            dsc_shape_str(teacher_indices, buf, sizeof buf));
  DSC_TRY(check_rows_k(FN, "teacher_indices", teacher_indices, logits, K));
  DSC_TRY(dsc_check_same_shape(FN, "teacher_logits", teacher_logits, "teacher_indices", teacher_indices));
  DSC_TRY(dsc_check_shape(FN, "targets", targets, logits->ndim - 1, logits->shape));
  DSC_CHECK((loss->ndim == 0 || (loss->ndim == 1 && loss->shape[0] == 1)), DSC_ERR_SHAPE, FN,
            "loss: expected shape () or (1), got %s", dsc_shape_str(loss, buf, sizeof buf));
  if (dlogits) DSC_TRY(dsc_check_same_shape(FN, "dlogits", dlogits, "logits", logits));
  DSC_CHECK(V > 0 || N == 0, DSC_ERR_SHAPE, FN, "logits: expected a last dim V > 0, got %s",
            dsc_shape_str(logits, buf, sizeof buf));
  DSC_CHECK(isfinite(temperature) && temperature > 0.0f, DSC_ERR_INVALID_ARGUMENT, FN,
            "temperature: expected a finite number > 0, got %g", (double)temperature);
  DSC_CHECK(isfinite(grad_scale), DSC_ERR_INVALID_ARGUMENT, FN, "grad_scale: expected a finite number, got %g",
            (double)grad_scale);
  /* a row is read whole before it is written: dlogits may be logits itself, nothing else */
  DSC_TRY(dsc_check_inplace_or_disjoint(FN, "dlogits", dlogits, "logits", logits));
  DSC_TRY(dsc_check_disjoint(FN, "dlogits", dlogits, "teacher_indices", teacher_indices, "teacher_logits",
                             teacher_logits, "targets", targets, "loss", loss, NULL));
  DSC_TRY(dsc_check_disjoint(FN, "loss", loss, "logits", logits, "teacher_indices", teacher_indices,
                             "teacher_logits", teacher_logits, "targets", targets, NULL));
  const int idx64 = dsc_tensor_dtype(teacher_indices) == DSC_DTYPE_INT64;
  const int tgt64 = dsc_tensor_dtype(targets) == DSC_DTYPE_INT64;
  if (N > 0) {
    /* skip = 0 is in range: no value is skipped. Deferred mode: a bad teacher index's term
     * is left out (its probability, logit and gradient entry contribute nothing). */
    const dsc_index_site site = {FN, "teacher_indices", NULL, DSC_IDX_MSG_RANGE};
    DSC_TRY(dsc_index_check(ctx, &site, N * K, idx64, dsc_data(teacher_indices), 0, V, 0));
  }
  const dsc_dtype dt = dsc_tensor_dtype(logits);
  void *dl = dlogits ? dsc_data(dlogits) : NULL;
  return DSC_DISPATCH(topk_kl, ctx, dt, N, V, K, dsc_data(logits), idx64, dsc_data(teacher_indices),
                      (const float *)dsc_data(teacher_logits), tgt64, dsc_data(targets), ignore_index,
                      temperature, grad_scale, (float *)dsc_data(loss), dl);
}
